#include "eviction_args.h"

#include <ATen/ops/empty.h>

#include <vector>

#include "tensor_checks.h"

namespace kvcore {

LshArgs check_lsh_args(const at::Tensor& x, int64_t nbits, int64_t seed) {
  constexpr const char* op = "kvcore.lsh_signature";
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension (the last one is projected)");
  LshArgs a;
  a.dtype = to_kv_dtype(x.scalar_type(), op, "x");
  TORCH_CHECK(nbits == 32 || nbits == 64 || nbits == 128 || nbits == 256, op,
              ": nbits must be 32, 64, 128 or 256, got ", nbits);
  TORCH_CHECK(seed >= 0, op, ": seed must be >= 0, got ", seed);
  const int64_t D = x.size(-1);
  TORCH_CHECK(D >= 1 && D <= 1024, op, ": the last dimension of x must be between 1 and 1024, got ", D);
  check_contiguous(x, op, "x");
  a.D = (int)D;
  a.rows = x.numel() / D;
  a.nbits = (int)nbits;
  a.seed = (uint64_t)seed;
  return a;
}

HammingArgs check_hamming_args(const at::Tensor& q_sig, const at::Tensor& k_sig, const at::Tensor& lengths) {
  constexpr const char* op = "kvcore.hamming_scores";
  TORCH_CHECK(q_sig.dim() == 3, op, ": q_sig must have shape [B, Hq, W], got ", q_sig.sizes());
  TORCH_CHECK(k_sig.dim() == 4, op, ": k_sig must have shape [B, Hkv, T, W], got ", k_sig.sizes());
  TORCH_CHECK(q_sig.scalar_type() == at::kInt, op, ": q_sig must be int32 (lsh_signature's words), got ",
              q_sig.scalar_type());
  TORCH_CHECK(k_sig.scalar_type() == at::kInt, op, ": k_sig must be int32 (lsh_signature's words), got ",
              k_sig.scalar_type());
  TORCH_CHECK(lengths.scalar_type() == at::kInt, op, ": lengths must be int32, got ", lengths.scalar_type());
  check_same_device(k_sig, q_sig, op, "k_sig", "q_sig");
  check_same_device(lengths, q_sig, op, "lengths", "q_sig");
  check_contiguous(q_sig, op, "q_sig");
  check_contiguous(k_sig, op, "k_sig");
  check_contiguous(lengths, op, "lengths");
  HammingArgs a;
  a.B = (int)q_sig.size(0);
  a.Hq = (int)q_sig.size(1);
  a.W = (int)q_sig.size(2);
  TORCH_CHECK(a.W == 1 || a.W == 2 || a.W == 4 || a.W == 8, op,
              ": q_sig must hold 1, 2, 4 or 8 words (32-256 bits) per head, got ", a.W);
  TORCH_CHECK(k_sig.size(0) == a.B && k_sig.size(3) == a.W, op, ": k_sig must have shape [B, Hkv, T, W] = [",
              a.B, ", *, *, ", a.W, "] to match q_sig, got ", k_sig.sizes());
  a.Hkv = (int)k_sig.size(1);
  TORCH_CHECK(a.Hkv > 0 && a.Hq % a.Hkv == 0, op, ": the query heads Hq=", a.Hq,
              " (q_sig.size(1)) must be a multiple of the KV heads Hkv=", a.Hkv, " (k_sig.size(1))");
  a.T = k_sig.size(2);
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == a.B, op, ": lengths must have shape [B] = [", a.B, "], got ",
              lengths.sizes());
  TORCH_CHECK((int64_t)a.Hq / a.Hkv * 32 * a.W < (int64_t)INT32_MAX, op, ": too many query heads per KV head");
  return a;
}

TopkArgs check_topk_args(const at::Tensor& scores, int64_t k, const at::Tensor& lengths) {
  constexpr const char* op = "kvcore.topk_select";
  TORCH_CHECK(scores.dim() == 2, op, ": scores must have shape [R, L] (one row per sequence and head), got ",
              scores.sizes());
  TORCH_CHECK(scores.scalar_type() == at::kFloat || scores.scalar_type() == at::kInt, op,
              ": scores must be float32 or int32, got ", scores.scalar_type());
  TORCH_CHECK(lengths.scalar_type() == at::kInt, op, ": lengths must be int32, got ", lengths.scalar_type());
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == scores.size(0), op, ": lengths must have shape [R] = [",
              scores.size(0), "], got ", lengths.sizes());
  TORCH_CHECK(k >= 1 && k <= INT32_MAX, op, ": k must be at least 1, got ", k);
  TORCH_CHECK(scores.size(1) < INT32_MAX, op, ": rows longer than 2^31 - 1 are not supported");
  check_same_device(lengths, scores, op, "lengths", "scores");
  check_contiguous(scores, op, "scores");
  check_contiguous(lengths, op, "lengths");
  TopkArgs a;
  a.is_float = scores.scalar_type() == at::kFloat;
  a.rows = scores.size(0);
  a.L = scores.size(1);
  a.k = (int)k;
  return a;
}

CompactArgs check_compact_args(const at::Tensor& x, const at::Tensor& idx, const at::Tensor& count) {
  constexpr const char* op = "kvcore.compact_kv";
  TORCH_CHECK(x.dim() >= 2, op, ": x must have shape [R, T, ...] (rows, tokens, the token's data), got ", x.sizes());
  TORCH_CHECK(idx.dim() == 2 && idx.size(0) == x.size(0), op, ": idx must have shape [R, k] with R = ", x.size(0),
              " (x.size(0)), got ", idx.sizes());
  TORCH_CHECK(idx.scalar_type() == at::kInt, op, ": idx must be int32 (topk_select's output), got ", idx.scalar_type());
  TORCH_CHECK(count.scalar_type() == at::kInt, op, ": count must be int32, got ", count.scalar_type());
  TORCH_CHECK(count.dim() == 1 && count.size(0) == x.size(0), op, ": count must have shape [R] = [", x.size(0),
              "], got ", count.sizes());
  check_same_device(idx, x, op, "idx", "x");
  check_same_device(count, x, op, "count", "x");
  check_contiguous(x, op, "x");
  check_contiguous(idx, op, "idx");
  check_contiguous(count, op, "count");
  CompactArgs a;
  a.rows = x.size(0);
  a.T = x.size(1);
  a.k = idx.size(1);
  a.token_bytes = a.rows * a.T > 0 ? (int64_t)(x.numel() / (a.rows * a.T)) * (int64_t)x.element_size() : 0;
  return a;
}

void check_compact_rows(const CompactArgs& a, int64_t bad) {
  TORCH_CHECK(bad < 0, "kvcore.compact_kv: row ", bad, " of idx/count is invalid: count must be in [0, ", a.k,
              "] and idx[row, :count] strictly increasing within [0, ", a.T, "); nothing was moved");
}

at::Tensor alloc_lsh_signature(const at::Tensor& x, LshArgs& a) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = a.nbits / 32;
  at::Tensor sig = at::empty(shape, x.options().dtype(at::kInt));
  a.x = x.data_ptr();
  a.sig = reinterpret_cast<uint32_t*>(sig.data_ptr<int32_t>());
  return sig;
}

at::Tensor alloc_hamming_scores(const at::Tensor& q_sig, const at::Tensor& k_sig, const at::Tensor& lengths,
                                HammingArgs& a) {
  at::Tensor scores = at::empty({a.B, a.Hkv, a.T}, q_sig.options());
  a.q_sig = reinterpret_cast<const uint32_t*>(q_sig.data_ptr<int32_t>());
  a.k_sig = reinterpret_cast<const uint32_t*>(k_sig.data_ptr<int32_t>());
  a.lengths = lengths.data_ptr<int32_t>();
  a.scores = scores.data_ptr<int32_t>();
  return scores;
}

std::tuple<at::Tensor, at::Tensor> alloc_topk_select(const at::Tensor& scores, const at::Tensor& lengths,
                                                     TopkArgs& a) {
  at::Tensor idx = at::empty({a.rows, a.k}, scores.options().dtype(at::kInt));
  at::Tensor count = at::empty({a.rows}, scores.options().dtype(at::kInt));
  a.scores = scores.data_ptr();
  a.lengths = lengths.data_ptr<int32_t>();
  a.idx = idx.data_ptr<int32_t>();
  a.count = count.data_ptr<int32_t>();
  return {idx, count};
}

}  // namespace kvcore
