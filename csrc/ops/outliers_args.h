// Validation and output allocation for extract_outliers, shared by the CPU (and later
// CUDA) glue.
#pragma once
#include <ATen/core/Tensor.h>
#include <tuple>
#include "../kernels/outliers.h"

namespace kvcore {

OutlierArgs check_outlier_args(const at::Tensor& x, int64_t count, int64_t group_size, c10::string_view axis);
// Allocates (index, value, dense) for checked args and points `a` at them and at x.
std::tuple<at::Tensor, at::Tensor, at::Tensor> alloc_outlier_outputs(const at::Tensor& x, OutlierArgs& a);

}  // namespace kvcore
