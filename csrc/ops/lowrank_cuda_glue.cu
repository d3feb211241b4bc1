// CUDA implementation of kvcore::lowrank_error: checks, allocation, a launch on the
// current stream. No host synchronisation.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include "lowrank_args.h"

namespace kvcore {
namespace {

std::tuple<at::Tensor, at::Tensor> lowrank_error_cuda_op(const at::Tensor& residual, int64_t rank, int64_t group_size,
                                                         int64_t iters, int64_t seed) {
  LowRankArgs args = check_lowrank_args(residual, rank, group_size, iters, seed);
  const c10::cuda::CUDAGuard guard(residual.device());
  auto outs = alloc_lowrank_outputs(residual, args);
  const cudaError_t err = lowrank_error_cuda(args, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "kvcore.lowrank_error: CUDA launch failed: ", cudaGetErrorString(err));
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(kvcore, CUDA, m) { m.impl("lowrank_error", &lowrank_error_cuda_op); }

}  // namespace kvcore
