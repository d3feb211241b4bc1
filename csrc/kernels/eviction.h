// Torch-free entry points of the token-eviction primitives (issue 5): LSH signatures,
// Hamming scores and ragged top-k selection.
#pragma once
#include <cstdint>
#include "kvcore/quant_format.h"

#if defined(KVCORE_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

namespace kvcore {

// lsh_signature: bit j of row r is [sum_d x[r][d] * P[d][j] > 0] with P = lsh_projection
// (kvcore/lsh.h), summed in float32 over d ascending by fused multiply-adds; bits are
// packed little-endian into 32-bit words (bit j in word j / 32, bit j % 32).
struct LshArgs {
  DType dtype = DType::F32;  // of x
  int64_t rows = 0;
  int D = 0;
  int nbits = 0;  // 32, 64, 128 or 256
  uint64_t seed = 0;
  const void* x = nullptr;  // [rows, D]
  uint32_t* sig = nullptr;  // [rows, nbits / 32]
};
void lsh_signature_cpu(const LshArgs& a, const float* projection, int64_t begin, int64_t end);
void lsh_projection_matrix(uint64_t seed, int D, int nbits, float* out);  // [D][nbits]
#if defined(KVCORE_WITH_CUDA) || defined(__CUDACC__)
// `projection`: device scratch of D * nbits floats, filled by the call (16-byte aligned).
// max_smem_optin: the device's opt-in shared memory per block (P is staged there if it fits).
cudaError_t lsh_signature_cuda(const LshArgs& a, float* projection, int num_sms, int max_smem_optin,
                               cudaStream_t stream);
#endif

// hamming_scores: for sequence b, KV head g and token t < len[b]:
//   score = sum over the query heads h of g of (nbits - popcount(q_sig[b][h] ^ k_sig[b][g][t])),
// the number of matching signature bits summed over the group (higher = closer to the
// current queries); -1 for t >= len[b] (and for every t when len is negative).
struct HammingArgs {
  int B = 0, Hq = 0, Hkv = 0, W = 0;  // W = nbits / 32 words
  int64_t T = 0;
  const uint32_t* q_sig = nullptr;    // [B, Hq, W]
  const uint32_t* k_sig = nullptr;    // [B, Hkv, T, W]
  const int32_t* lengths = nullptr;   // [B]
  int32_t* scores = nullptr;          // [B, Hkv, T]
};
void hamming_scores_cpu(const HammingArgs& a, int64_t row_begin, int64_t row_end);  // rows of B * Hkv
#if defined(KVCORE_WITH_CUDA) || defined(__CUDACC__)
// k_sig rows must be 16-byte aligned for W = 4 or 8 (checked by the glue).
cudaError_t hamming_scores_cuda(const HammingArgs& a, int num_sms, cudaStream_t stream);
#endif

// topk_select: for each row r, the k highest scores among positions [0, min(len[r], L)),
// ties to the later position, NaN below every number; the chosen positions ascending in
// idx[r][0 .. count[r]), the rest of the row -1.
struct TopkArgs {
  bool is_float = true;  // scores float32, else int32
  int64_t rows = 0, L = 0;
  int k = 0;
  const void* scores = nullptr;      // [rows, L]
  const int32_t* lengths = nullptr;  // [rows]
  int32_t* idx = nullptr;            // [rows, k]
  int32_t* count = nullptr;          // [rows]
};
void topk_select_cpu(const TopkArgs& a, int64_t begin, int64_t end);
#if defined(KVCORE_WITH_CUDA) || defined(__CUDACC__)
// A cluster of up to 8 CTAs per row where `clusters` (sm_90 and later), else one CTA
// (rows <= INT32_MAX, checked by the glue); scores 4-byte aligned. max_smem_optin: the
// device's opt-in shared memory per block, for the copy of each row slice.
cudaError_t topk_select_cuda(const TopkArgs& a, int num_sms, bool clusters, int max_smem_optin, cudaStream_t stream);
#endif

// compact_kv: in place, per row r, token idx[r][i] moves to slot i for i < count[r]
// (idx ascending, so every move goes toward the front and never overwrites a token not
// yet moved). A token is `token_bytes` contiguous bytes, so any per-token part of the
// cache compacts alike: codes, per-token scales, outliers, signatures, full-precision
// residual tokens; per-block key metadata compacts with block indices.
struct CompactArgs {
  int64_t rows = 0, T = 0, k = 0;  // x [rows, T, token_bytes]; idx [rows, k]
  int64_t token_bytes = 0;
  uint8_t* x = nullptr;
  const int32_t* idx = nullptr;
  const int32_t* count = nullptr;  // [rows]
};
// The first row whose count is not in [0, k] or whose idx[:count] is not strictly
// increasing within [0, T); -1 if every row is valid. Check before compact_kv_cpu.
int64_t compact_kv_first_bad_cpu(const CompactArgs& a);
// Moves rows [begin, end) (all validated).
void compact_kv_cpu(const CompactArgs& a, int64_t begin, int64_t end);
#if defined(KVCORE_WITH_CUDA) || defined(__CUDACC__)
// Validates every row, then moves the kept tokens in place unless a row is bad. *flag
// (device int32) ends as 0 if every row is valid, else rows - (the first bad row); x is
// then untouched. rows <= INT32_MAX.
cudaError_t compact_kv_cuda(const CompactArgs& a, int32_t* flag, cudaStream_t stream);
#endif

}  // namespace kvcore
