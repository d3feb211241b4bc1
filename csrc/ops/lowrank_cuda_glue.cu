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
  // The CUDA kernel keeps a whole block (group_size x D elements) in shared memory.
  const c10::cuda::CUDAGuard guard(residual.device());
  const size_t smem = lowrank_error_cuda_smem(args);
  int limit = 0;
  TORCH_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, residual.get_device()) ==
                  cudaSuccess,
              "kvcore.lowrank_error: cannot query the device's shared memory");
  TORCH_CHECK(smem <= (size_t)limit, "kvcore.lowrank_error: on CUDA, a block of group_size x D elements must fit in ",
              "shared memory (", limit / 1024, " KB per CTA on this device, with its factors), got group_size = ",
              group_size, " and D = ", args.D, " (", residual.scalar_type(), "), which need ", (smem + 1023) / 1024,
              " KB");
  auto outs = alloc_lowrank_outputs(residual, args);
  const cudaError_t err = lowrank_error_cuda(args, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "kvcore.lowrank_error: CUDA launch failed: ", cudaGetErrorString(err));
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(kvcore, CUDA, m) { m.impl("lowrank_error", &lowrank_error_cuda_op); }

}  // namespace kvcore
