#include "quantize_kv_args.h"
#include <ATen/ATen.h>
#include "tensor_checks.h"

namespace kvcore {

QuantizeArgs check_quantize_args(const at::Tensor& x, int64_t bits, int64_t group_size,
                                 c10::string_view axis) {
  const char* op = "kvcore.quantize_kv";
  QuantizeArgs a;
  a.dtype = to_kv_dtype(x.scalar_type(), op, "x");
  a.axis = parse_axis(axis, op);
  check_bits_group(bits, group_size, op);
  TORCH_CHECK(x.dim() >= 2, op, ": x must have shape [..., T, D] with at least 2 dims, got ",
              x.sizes());
  check_contiguous(x, op, "x");
  a.bits = (int)bits;
  a.group = (int)group_size;
  a.T = x.size(-2);
  a.D = x.size(-1);
  a.outer = a.T * a.D == 0 ? 0 : x.numel() / (a.T * a.D);
  if (a.axis == Axis::Token) {
    TORCH_CHECK(a.D % group_size == 0, op, ": with axis=\"token\" the last dim of x (D=", a.D,
                ") must be a multiple of group_size=", group_size);
  } else {
    TORCH_CHECK(a.D % 16 == 0, op, ": with axis=\"channel\" the last dim of x (D=", a.D,
                ") must be a multiple of 16");
    TORCH_CHECK(a.T % group_size == 0, op, ": with axis=\"channel\" the token dim of x (T=", a.T,
                ") must be a multiple of group_size=", group_size,
                " (quantize whole blocks; keep the remainder in full precision)");
  }
  return a;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> alloc_quantize_outputs(const at::Tensor& x,
                                                                      QuantizeArgs& a) {
  auto lead = x.sizes().slice(0, x.dim() - 2).vec();
  auto code_shape = lead;
  code_shape.push_back(a.T);
  code_shape.push_back(a.D * a.bits / 8);
  auto meta_shape = lead;
  if (a.axis == Axis::Token) {
    meta_shape.push_back(a.T);
    meta_shape.push_back(a.D / a.group);
  } else {
    meta_shape.push_back(a.T / a.group);
    meta_shape.push_back(a.D);
  }
  auto codes = at::empty(code_shape, x.options().dtype(at::kByte));
  auto scale = at::empty(meta_shape, x.options());
  auto mn = at::empty(meta_shape, x.options());
  a.x = x.data_ptr();
  a.codes = codes.data_ptr<uint8_t>();
  a.scale = scale.data_ptr();
  a.mn = mn.data_ptr();
  return {codes, scale, mn};
}

DequantizeArgs check_dequantize_args(const at::Tensor& codes, const at::Tensor& scale,
                                     const at::Tensor& mn, int64_t bits, int64_t group_size,
                                     c10::string_view axis, std::optional<c10::ScalarType> dtype) {
  const char* op = "kvcore.dequantize_kv";
  DequantizeArgs a;
  a.axis = parse_axis(axis, op);
  check_bits_group(bits, group_size, op);
  TORCH_CHECK(codes.scalar_type() == at::kByte, op, ": codes must be uint8, got ",
              codes.scalar_type());
  a.meta_dtype = to_kv_dtype(scale.scalar_type(), op, "scale");
  TORCH_CHECK(mn.scalar_type() == scale.scalar_type(), op, ": mn must have the dtype of scale (",
              scale.scalar_type(), "), got ", mn.scalar_type());
  a.out_dtype = to_kv_dtype(dtype.value_or(scale.scalar_type()), op, "dtype");
  check_same_device(scale, codes, op, "scale", "codes");
  check_same_device(mn, codes, op, "mn", "codes");
  TORCH_CHECK(codes.dim() >= 2, op, ": codes must have shape [..., T, D*bits/8], got ",
              codes.sizes());
  check_contiguous(codes, op, "codes");
  check_contiguous(scale, op, "scale");
  check_contiguous(mn, op, "mn");
  a.bits = (int)bits;
  a.group = (int)group_size;
  a.T = codes.size(-2);
  a.D = codes.size(-1) * 8 / bits;
  a.outer = a.T * a.D == 0 ? 0 : codes.numel() / (a.T * codes.size(-1));
  auto expected = codes.sizes().slice(0, codes.dim() - 2).vec();
  if (a.axis == Axis::Token) {
    TORCH_CHECK(a.D % group_size == 0, op, ": codes imply D=", a.D,
                " which is not a multiple of group_size=", group_size);
    expected.push_back(a.T);
    expected.push_back(a.D / group_size);
  } else {
    TORCH_CHECK(a.D % 16 == 0, op, ": codes imply D=", a.D, " which is not a multiple of 16");
    TORCH_CHECK(a.T % group_size == 0, op, ": with axis=\"channel\" the token dim of codes (T=",
                a.T, ") must be a multiple of group_size=", group_size);
    expected.push_back(a.T / group_size);
    expected.push_back(a.D);
  }
  TORCH_CHECK(scale.sizes().vec() == expected, op, ": scale must have shape ", at::IntArrayRef(expected),
              " for codes of shape ", codes.sizes(), ", bits=", bits, ", group_size=", group_size,
              ", axis=\"", std::string(axis), "\"; got ", scale.sizes());
  TORCH_CHECK(mn.sizes() == scale.sizes(), op, ": mn must have the shape of scale (", scale.sizes(),
              "), got ", mn.sizes());
  return a;
}

at::Tensor alloc_dequantize_output(const at::Tensor& codes, const at::Tensor& scale,
                                   const at::Tensor& mn, std::optional<c10::ScalarType> dtype,
                                   DequantizeArgs& a) {
  auto shape = codes.sizes().vec();
  shape.back() = a.D;
  auto out = at::empty(shape, scale.options().dtype(dtype.value_or(scale.scalar_type())));
  a.codes = codes.data_ptr<uint8_t>();
  a.scale = scale.data_ptr();
  a.mn = mn.data_ptr();
  a.out = out.data_ptr();
  return out;
}

}  // namespace kvcore
