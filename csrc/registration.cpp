// Every kvcore operator schema, in one place. Implementations register per
// backend in csrc/ops/*; fake (meta) implementations live in python/kvcore/_fake.py.
#include <torch/library.h>

TORCH_LIBRARY(kvcore, m) {
  // Bit-packs x [..., T, D] into b-bit codes [..., T, D*bits/8] (uint8) with
  // per-group (scale, min) in x's dtype. axis="token": groups of group_size
  // channels per token; axis="channel": groups of group_size tokens per channel.
  m.def("quantize_kv(Tensor x, int bits, int group_size, str axis) -> (Tensor, Tensor, Tensor)");
  // Inverse of quantize_kv; returns [..., T, D] in `dtype` (default: scale's dtype).
  m.def(
      "dequantize_kv(Tensor codes, Tensor scale, Tensor mn, int bits, int group_size, str axis, "
      "ScalarType? dtype=None) -> Tensor");
  // One query token per sequence attends to its sinks + packed (b-bit) + residual KV; returns (out, lse).
  // attn_mass [B, Hkv, S_cap + T_cap + R_cap] (optional, in place): += each token's attention
  // probability summed over its KV head's query heads (H2O).
  m.def(
      "decode_attention(Tensor q, Tensor k_codes, Tensor k_scale, Tensor k_mn, Tensor v_codes, "
      "Tensor v_scale, Tensor v_mn, Tensor k_resid, Tensor v_resid, Tensor packed_len, Tensor resid_len, "
      "int bits, int group_size, float? sm_scale=None, Tensor? k_sink=None, Tensor? v_sink=None, "
      "Tensor? sink_len=None, Tensor? k_outlier_idx=None, Tensor? k_outlier_res=None, "
      "Tensor? v_outlier_idx=None, Tensor? v_outlier_res=None, Tensor? k_lowrank_a=None, "
      "Tensor? k_lowrank_b=None, Tensor? v_lowrank_a=None, Tensor? v_lowrank_b=None, int? v_group_size=None, "
      "Tensor(a!)? attn_mass=None) -> (Tensor, Tensor)");
  // x [..., D] -> x diag(s) H / sqrt(D) (inverse: x H / sqrt(D) diag(s)); s = +-1 from (seed, d).
  m.def("hadamard_rotate(Tensor x, int seed=0, bool inverse=False) -> Tensor");
  // Per token, the `count` channels farthest from their group's median (in MADs):
  // (index uint8 [..., T, count], value [..., T, count], dense x with them set to the median).
  m.def("extract_outliers(Tensor x, int count, int group_size, str axis) -> (Tensor, Tensor, Tensor)");
  // GEAR: residual [..., T, D] ~= A B^T per block of group_size tokens; A [..., T/G, G, rank]
  // (orthonormal columns) and B [..., T/G, D, rank], both fp16.
  m.def("lowrank_error(Tensor residual, int rank, int group_size, int iters=3, int seed=0) -> (Tensor, Tensor)");
  // Eviction primitives (issue 5). x [..., D] -> int32 words [..., nbits/32]: bit j = [x . P[:, j] > 0].
  m.def("lsh_signature(Tensor x, int nbits=64, int seed=0) -> Tensor");
  // q_sig [B, Hq, W], k_sig [B, Hkv, T, W], lengths [B] -> int32 [B, Hkv, T]: matching bits summed
  // over the KV head's query heads (-1 past the length).
  m.def("hamming_scores(Tensor q_sig, Tensor k_sig, Tensor lengths) -> Tensor");
  // scores [R, L] (float32 or int32), lengths [R] -> (idx int32 [R, k] ascending, -1 padded; count [R]).
  m.def("topk_select(Tensor scores, int k, Tensor lengths) -> (Tensor, Tensor)");
  // In place, per row: x[r, idx[r, i]] moves to x[r, i] for i < count[r] (idx ascending).
  m.def("compact_kv(Tensor(a!) x, Tensor idx, Tensor count) -> ()");
}
