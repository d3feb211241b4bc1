// CUDA implementations of the eviction primitives that have a CUDA kernel so far
// (hamming_scores): checks, allocation, a launch on the current stream, no host
// synchronisation.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda_device.h"
#include "eviction_args.h"

namespace kvcore {
namespace {

at::Tensor hamming_scores_cuda_op(const at::Tensor& q_sig, const at::Tensor& k_sig, const at::Tensor& lengths) {
  HammingArgs a = check_hamming_args(q_sig, k_sig, lengths);
  const size_t align = a.W >= 4 ? 16 : (size_t)a.W * 4;  // the kernel's vector loads
  TORCH_CHECK(reinterpret_cast<uintptr_t>(k_sig.data_ptr()) % align == 0, "kvcore.hamming_scores: k_sig must be ",
              align, "-byte aligned on CUDA (it is a view at an odd offset); pass k_sig.clone()");
  const c10::cuda::CUDAGuard guard(q_sig.device());
  at::Tensor scores = at::empty({a.B, a.Hkv, a.T}, q_sig.options());
  a.q_sig = reinterpret_cast<const uint32_t*>(q_sig.data_ptr<int32_t>());
  a.k_sig = reinterpret_cast<const uint32_t*>(k_sig.data_ptr<int32_t>());
  a.lengths = lengths.data_ptr<int32_t>();
  a.scores = scores.data_ptr<int32_t>();
  const int sms = sm_count(q_sig.get_device(), "kvcore.hamming_scores");
  const cudaError_t err = hamming_scores_cuda(a, sms, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "kvcore.hamming_scores: CUDA launch failed: ", cudaGetErrorString(err));
  return scores;
}

}  // namespace

TORCH_LIBRARY_IMPL(kvcore, CUDA, m) { m.impl("hamming_scores", &hamming_scores_cuda_op); }

}  // namespace kvcore
