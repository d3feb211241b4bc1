// CPU implementation of kvcore::lowrank_error.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include "lowrank_args.h"

namespace kvcore {
namespace {

std::tuple<at::Tensor, at::Tensor> lowrank_error_cpu_op(const at::Tensor& residual, int64_t rank, int64_t group_size,
                                                        int64_t iters, int64_t seed) {
  LowRankArgs args = check_lowrank_args(residual, rank, group_size, iters, seed);
  auto outs = alloc_lowrank_outputs(residual, args);
  at::parallel_for(0, lowrank_error_cpu_units(args), 1, [&](int64_t b, int64_t e) { lowrank_error_cpu(args, b, e); });
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(kvcore, CPU, m) { m.impl("lowrank_error", &lowrank_error_cpu_op); }

}  // namespace kvcore
