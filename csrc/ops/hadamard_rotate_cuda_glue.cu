// CUDA implementation of kvcore::hadamard_rotate: checks, allocation, a launch on the
// current stream. No host synchronisation.
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include "hadamard_rotate_args.h"

namespace kvcore {
namespace {

at::Tensor hadamard_rotate_cuda_op(const at::Tensor& x, int64_t seed, bool inverse) {
  RotateArgs a = check_rotate_args(x, seed, inverse);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  a.x = x.data_ptr();
  a.out = out.data_ptr();
  const cudaError_t err = hadamard_rotate_cuda(a, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "kvcore.hadamard_rotate: CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kvcore, CUDA, m) { m.impl("hadamard_rotate", &hadamard_rotate_cuda_op); }

}  // namespace kvcore
