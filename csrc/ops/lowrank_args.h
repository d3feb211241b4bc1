// Validation and output allocation for lowrank_error, shared by the CPU (and later
// CUDA) glue.
#pragma once
#include <ATen/core/Tensor.h>
#include <tuple>
#include "../kernels/lowrank.h"

namespace kvcore {

LowRankArgs check_lowrank_args(const at::Tensor& residual, int64_t rank, int64_t group_size, int64_t iters,
                               int64_t seed);
// Allocates (a, b) for checked args and points `args` at them and at the residual.
std::tuple<at::Tensor, at::Tensor> alloc_lowrank_outputs(const at::Tensor& residual, LowRankArgs& args);

}  // namespace kvcore
