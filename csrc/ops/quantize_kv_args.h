// Validation and output allocation for quantize_kv / dequantize_kv, shared by
// the CPU and CUDA glue so both reject bad input with the same messages.
#pragma once
#include <ATen/core/Tensor.h>
#include <tuple>
#include "../kernels/quantize_kv.h"

namespace kvcore {

// Checks x and fills the shape/dtype fields of QuantizeArgs (not the pointers).
QuantizeArgs check_quantize_args(const at::Tensor& x, int64_t bits, int64_t group_size,
                                 c10::string_view axis);
// Allocates (codes, scale, mn) for checked args and points `a` at them.
std::tuple<at::Tensor, at::Tensor, at::Tensor> alloc_quantize_outputs(const at::Tensor& x,
                                                                      QuantizeArgs& a);

DequantizeArgs check_dequantize_args(const at::Tensor& codes, const at::Tensor& scale,
                                     const at::Tensor& mn, int64_t bits, int64_t group_size,
                                     c10::string_view axis, std::optional<c10::ScalarType> dtype);
// Allocates the output for checked args and points `a` at it (and at the inputs).
at::Tensor alloc_dequantize_output(const at::Tensor& codes, const at::Tensor& scale,
                                   const at::Tensor& mn, std::optional<c10::ScalarType> dtype,
                                   DequantizeArgs& a);

}  // namespace kvcore
