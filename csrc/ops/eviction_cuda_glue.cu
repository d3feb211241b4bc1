// CUDA implementations of the eviction primitives that have a CUDA kernel so far
// (lsh_signature, hamming_scores, topk_select, compact_kv): checks, allocation, launches on the current
// stream. No host synchronisation, except compact_kv's validation (one 4-byte copy).
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "cuda_device.h"
#include "eviction_args.h"

namespace kvcore {
namespace {

at::Tensor lsh_signature_cuda_op(const at::Tensor& x, int64_t nbits, int64_t seed) {
  LshArgs a = check_lsh_args(x, nbits, seed);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor sig = alloc_lsh_signature(x, a);
  at::Tensor projection = at::empty({(int64_t)a.D * a.nbits}, x.options().dtype(at::kFloat));
  const int dev = x.get_device();
  const cudaError_t err = lsh_signature_cuda(a, projection.data_ptr<float>(), sm_count(dev, "kvcore.lsh_signature"),
                                             max_shared_memory_optin(dev, "kvcore.lsh_signature"),
                                             c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "kvcore.lsh_signature: CUDA launch failed: ", cudaGetErrorString(err));
  return sig;
}

at::Tensor hamming_scores_cuda_op(const at::Tensor& q_sig, const at::Tensor& k_sig, const at::Tensor& lengths) {
  HammingArgs a = check_hamming_args(q_sig, k_sig, lengths);
  // any int32 view works: the kernel takes 16-byte loads only where they are aligned
  const c10::cuda::CUDAGuard guard(q_sig.device());
  at::Tensor scores = alloc_hamming_scores(q_sig, k_sig, lengths, a);
  const int sms = sm_count(q_sig.get_device(), "kvcore.hamming_scores");
  const cudaError_t err = hamming_scores_cuda(a, sms, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "kvcore.hamming_scores: CUDA launch failed: ", cudaGetErrorString(err));
  return scores;
}

std::tuple<at::Tensor, at::Tensor> topk_select_cuda_op(const at::Tensor& scores, int64_t k,
                                                       const at::Tensor& lengths) {
  TopkArgs a = check_topk_args(scores, k, lengths);
  TORCH_CHECK(a.rows <= INT32_MAX, "kvcore.topk_select: at most 2^31 - 1 rows on CUDA, got ", a.rows);
  const c10::cuda::CUDAGuard guard(scores.device());
  auto outs = alloc_topk_select(scores, lengths, a);
  const int dev = scores.get_device();
  const cudaError_t err = topk_select_cuda(a, sm_count(dev, "kvcore.topk_select"),
                                           compute_capability_major(dev, "kvcore.topk_select") >= 9,
                                           max_shared_memory_optin(dev, "kvcore.topk_select"),
                                           c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "kvcore.topk_select: CUDA launch failed: ", cudaGetErrorString(err));
  return outs;
}

// A bad row must raise the CPU's error with x untouched: the move kernel moves nothing
// when the validation kernel flagged a row, and one 4-byte device-to-host copy after
// both reads the flag (a synchronisation). compact_kv runs when the cache is evicted,
// not per step.
void compact_kv_cuda_op(const at::Tensor& x, const at::Tensor& idx, const at::Tensor& count) {
  CompactArgs a = check_compact_args(x, idx, count);
  TORCH_CHECK(a.rows <= INT32_MAX, "kvcore.compact_kv: at most 2^31 - 1 rows on CUDA, got ", a.rows);
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  a.x = static_cast<uint8_t*>(x.data_ptr());
  a.idx = idx.data_ptr<int32_t>();
  a.count = count.data_ptr<int32_t>();
  if (a.rows == 0) return;
  at::Tensor flag = at::empty({1}, idx.options());
  const cudaError_t err = compact_kv_cuda(a, flag.data_ptr<int32_t>(), stream);
  TORCH_CHECK(err == cudaSuccess, "kvcore.compact_kv: CUDA launch failed: ", cudaGetErrorString(err));
  const int64_t f = flag.item<int32_t>();  // after the move: the GPU never waits on the host
  check_compact_rows(a, f == 0 ? -1 : a.rows - f);
}

}  // namespace

TORCH_LIBRARY_IMPL(kvcore, CUDA, m) {
  m.impl("lsh_signature", &lsh_signature_cuda_op);
  m.impl("hamming_scores", &hamming_scores_cuda_op);
  m.impl("topk_select", &topk_select_cuda_op);
  m.impl("compact_kv", &compact_kv_cuda_op);
}

}  // namespace kvcore
