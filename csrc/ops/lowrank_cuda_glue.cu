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
  // The CUDA kernel keeps a whole block (group_size x D floats) in shared memory.
  const int64_t smem = (group_size * args.D + (group_size + args.D) * rank) * 4;
  TORCH_CHECK(smem <= 220 * 1024, "kvcore.lowrank_error: on CUDA, a block of group_size x D floats must fit in ",
              "shared memory (220 KB with its factors), got group_size = ", group_size, " and D = ", args.D);
  const c10::cuda::CUDAGuard guard(residual.device());
  auto outs = alloc_lowrank_outputs(residual, args);
  const cudaError_t err = lowrank_error_cuda(args, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "kvcore.lowrank_error: CUDA launch failed: ", cudaGetErrorString(err));
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(kvcore, CUDA, m) { m.impl("lowrank_error", &lowrank_error_cuda_op); }

}  // namespace kvcore
