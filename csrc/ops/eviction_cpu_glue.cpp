// CPU implementations of kvcore.lsh_signature, kvcore.hamming_scores and
// kvcore.topk_select: checks, allocation, rows spread over at::parallel_for.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "eviction_args.h"

namespace kvcore {
namespace {

at::Tensor lsh_signature_cpu_op(const at::Tensor& x, int64_t nbits, int64_t seed) {
  LshArgs a = check_lsh_args(x, nbits, seed);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = nbits / 32;
  at::Tensor sig = at::empty(shape, x.options().dtype(at::kInt));
  std::vector<float> projection((size_t)a.D * a.nbits);
  lsh_projection_matrix(a.seed, a.D, a.nbits, projection.data());
  a.x = x.data_ptr();
  a.sig = reinterpret_cast<uint32_t*>(sig.data_ptr<int32_t>());
  at::parallel_for(0, a.rows, 64, [&](int64_t b, int64_t e) { lsh_signature_cpu(a, projection.data(), b, e); });
  return sig;
}

at::Tensor hamming_scores_cpu_op(const at::Tensor& q_sig, const at::Tensor& k_sig, const at::Tensor& lengths) {
  HammingArgs a = check_hamming_args(q_sig, k_sig, lengths);
  at::Tensor scores = at::empty({a.B, a.Hkv, a.T}, q_sig.options());
  a.q_sig = reinterpret_cast<const uint32_t*>(q_sig.data_ptr<int32_t>());
  a.k_sig = reinterpret_cast<const uint32_t*>(k_sig.data_ptr<int32_t>());
  a.lengths = lengths.data_ptr<int32_t>();
  a.scores = scores.data_ptr<int32_t>();
  at::parallel_for(0, (int64_t)a.B * a.Hkv, 1, [&](int64_t b, int64_t e) { hamming_scores_cpu(a, b, e); });
  return scores;
}

std::tuple<at::Tensor, at::Tensor> topk_select_cpu_op(const at::Tensor& scores, int64_t k, const at::Tensor& lengths) {
  TopkArgs a = check_topk_args(scores, k, lengths);
  at::Tensor idx = at::empty({a.rows, a.k}, scores.options().dtype(at::kInt));
  at::Tensor count = at::empty({a.rows}, scores.options().dtype(at::kInt));
  a.scores = scores.data_ptr();
  a.lengths = lengths.data_ptr<int32_t>();
  a.idx = idx.data_ptr<int32_t>();
  a.count = count.data_ptr<int32_t>();
  at::parallel_for(0, a.rows, 1, [&](int64_t b, int64_t e) { topk_select_cpu(a, b, e); });
  return {idx, count};
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
