// CPU implementations of kvcore::quantize_kv / dequantize_kv.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include "quantize_kv_args.h"

namespace kvcore {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_kv_cpu_op(const at::Tensor& x, int64_t bits,
                                                                  int64_t group_size,
                                                                  c10::string_view axis) {
  QuantizeArgs a = check_quantize_args(x, bits, group_size, axis);
  auto outs = alloc_quantize_outputs(x, a);
  const int64_t units = quantize_kv_cpu_units(a);
  at::parallel_for(0, units, 16, [&](int64_t b, int64_t e) { quantize_kv_cpu(a, b, e); });
  return outs;
}

at::Tensor dequantize_kv_cpu_op(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& mn,
                                int64_t bits, int64_t group_size, c10::string_view axis,
                                std::optional<c10::ScalarType> dtype) {
  DequantizeArgs a = check_dequantize_args(codes, scale, mn, bits, group_size, axis, dtype);
  auto out = alloc_dequantize_output(codes, scale, mn, dtype, a);
  at::parallel_for(0, dequantize_kv_cpu_units(a), 64,
                   [&](int64_t b, int64_t e) { dequantize_kv_cpu(a, b, e); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kvcore, CPU, m) {
  m.impl("quantize_kv", &quantize_kv_cpu_op);
  m.impl("dequantize_kv", &dequantize_kv_cpu_op);
}

}  // namespace kvcore
