// CPU implementations of kvcore.lsh_signature, kvcore.hamming_scores and
// kvcore.topk_select: checks, allocation, rows spread over at::parallel_for.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "eviction_args.h"

namespace kvcore {
namespace {

at::Tensor lsh_signature_cpu_op(const at::Tensor& x, int64_t nbits, int64_t seed) {
  LshArgs a = check_lsh_args(x, nbits, seed);
  at::Tensor sig = alloc_lsh_signature(x, a);
  std::vector<float> projection((size_t)a.D * a.nbits);
  lsh_projection_matrix(a.seed, a.D, a.nbits, projection.data());
  at::parallel_for(0, a.rows, 64, [&](int64_t b, int64_t e) { lsh_signature_cpu(a, projection.data(), b, e); });
  return sig;
}

at::Tensor hamming_scores_cpu_op(const at::Tensor& q_sig, const at::Tensor& k_sig, const at::Tensor& lengths) {
  HammingArgs a = check_hamming_args(q_sig, k_sig, lengths);
  at::Tensor scores = alloc_hamming_scores(q_sig, k_sig, lengths, a);
  at::parallel_for(0, (int64_t)a.B * a.Hkv, 1, [&](int64_t b, int64_t e) { hamming_scores_cpu(a, b, e); });
  return scores;
}

std::tuple<at::Tensor, at::Tensor> topk_select_cpu_op(const at::Tensor& scores, int64_t k, const at::Tensor& lengths) {
  TopkArgs a = check_topk_args(scores, k, lengths);
  auto outs = alloc_topk_select(scores, lengths, a);
  at::parallel_for(0, a.rows, 1, [&](int64_t b, int64_t e) { topk_select_cpu(a, b, e); });
  return outs;
}

void compact_kv_cpu_op(const at::Tensor& x, const at::Tensor& idx, const at::Tensor& count) {
  CompactArgs a = check_compact_args(x, idx, count);
  a.x = static_cast<uint8_t*>(x.data_ptr());
  a.idx = idx.data_ptr<int32_t>();
  a.count = count.data_ptr<int32_t>();
  check_compact_rows(a, compact_kv_first_bad_cpu(a));  // before anything moves
  at::parallel_for(0, a.rows, 16, [&](int64_t b, int64_t e) { compact_kv_cpu(a, b, e); });
}

}  // namespace

TORCH_LIBRARY_IMPL(kvcore, CPU, m) {
  m.impl("compact_kv", &compact_kv_cpu_op);
  m.impl("lsh_signature", &lsh_signature_cpu_op);
  m.impl("hamming_scores", &hamming_scores_cpu_op);
  m.impl("topk_select", &topk_select_cpu_op);
}

}  // namespace kvcore
