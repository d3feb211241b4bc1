#include "outliers_args.h"
#include <ATen/ATen.h>
#include "tensor_checks.h"

namespace kvcore {

OutlierArgs check_outlier_args(const at::Tensor& x, int64_t count, int64_t group_size, c10::string_view axis) {
  constexpr const char* op = "kvcore.extract_outliers";
  TORCH_CHECK(x.dim() >= 2, op, ": x must have shape [..., T, D], got ", x.dim(), " dimension(s)");
  OutlierArgs a;
  a.dtype = to_kv_dtype(x.scalar_type(), op, "x");
  a.axis = parse_axis(axis, op);
  TORCH_CHECK(group_size == 32 || group_size == 64 || group_size == 128, op,
              ": group_size must be 32, 64 or 128, got ", group_size);
  const int64_t T = x.size(-2), D = x.size(-1);
  TORCH_CHECK(D <= 256, op, ": D (the last dimension of x) must be at most 256 (channel indices are uint8), got ", D);
  TORCH_CHECK(count >= 1 && count <= 16 && count < D, op, ": count must be between 1 and min(16, D - 1), got ",
              count, " for D = ", D);
  if (a.axis == Axis::Token) {
    TORCH_CHECK(D % group_size == 0, op, ": with axis=\"token\", D must be a multiple of group_size (",
                group_size, "), got D = ", D);
  } else {
    TORCH_CHECK(T % group_size == 0, op, ": with axis=\"channel\", T must be a multiple of group_size (",
                group_size, "), got T = ", T);
  }
  check_contiguous(x, op, "x");
  a.T = T;
  a.D = (int)D;
  a.outer = T * D > 0 ? x.numel() / (T * D) : 0;
  a.group = (int)group_size;
  a.count = (int)count;
  return a;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> alloc_outlier_outputs(const at::Tensor& x, OutlierArgs& a) {
  auto shape = x.sizes().vec();
  shape.back() = a.count;
  at::Tensor index = at::empty(shape, x.options().dtype(at::kByte));
  at::Tensor value = at::empty(shape, x.options());
  at::Tensor dense = at::empty_like(x);
  a.x = x.data_ptr();
  a.index = index.data_ptr<uint8_t>();
  a.value = value.data_ptr();
  a.dense = dense.data_ptr();
  return {index, value, dense};
}

}  // namespace kvcore
