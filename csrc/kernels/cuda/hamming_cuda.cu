// CUDA kernel of kvcore.hamming_scores. A warp reads its tokens' signatures as
// consecutive 16-byte chunks, 512 contiguous bytes per load instruction, and writes the
// scores of the tokens it holds with one vector store per chunk. Rows that are not whole
// 16-byte chunks, or signatures at an offset that is not 16-byte aligned, take the
// one-token-per-thread kernel.
//
// Query heads are taken in pairs: per bit, [qa^k] + [qb^k] = [qa^qb] + 2 [(qa^k)&(qb^k)],
// so a pair costs one LOP3 and one popcount a word instead of two of each (popcount
// runs at a quarter of the integer rate). sum popc(qa^qb) does not depend on the token:
// each warp computes it once. Integer arithmetic: the scores equal the CPU's.
#include <algorithm>

#include "../eviction.h"

namespace kvcore {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int64_t valid_len(const HammingArgs& a, int b) {
  const int32_t raw = a.lengths[b];
  return raw < 0 ? 0 : (raw > a.T ? a.T : raw);
}

// The group's query words into shared memory, and every thread gets the token-free
// part of the distance: sum over head pairs and words of popc(qa ^ qb).
template <int W>
__device__ __forceinline__ int load_group_queries(const HammingArgs& a, int b, int g, uint32_t* q_s) {
  const int gq = a.Hq / a.Hkv;
  const uint32_t* q = a.q_sig + ((int64_t)b * a.Hq + (int64_t)g * gq) * W;
  for (int i = threadIdx.x; i < gq * W; i += kThreads) q_s[i] = q[i];
  int pair_bits = 0;
  for (int i = threadIdx.x & 31; i < (gq / 2) * W; i += 32) {
    const int p = i / W, w = i % W;
    pair_bits += __popc(q[(2 * p) * W + w] ^ q[(2 * p + 1) * W + w]);
  }
  __syncthreads();
  return __reduce_add_sync(0xFFFFFFFFu, pair_bits);
}

// Distances (bits differing, summed over the group's heads) of N tokens k[N][W].
template <int W, int N>
__device__ __forceinline__ void distances(const uint32_t* k, const uint32_t* q_s, int gq, int pair_bits, int* diff) {
  int twice[N];
#pragma unroll
  for (int t = 0; t < N; ++t) twice[t] = 0;
#pragma unroll 1
  for (int h = 0; h + 1 < gq; h += 2) {
    uint32_t qa[W], qb[W];
#pragma unroll
    for (int w = 0; w < W; ++w) { qa[w] = q_s[h * W + w]; qb[w] = q_s[(h + 1) * W + w]; }
#pragma unroll
    for (int t = 0; t < N; ++t)
#pragma unroll
      for (int w = 0; w < W; ++w) twice[t] += __popc((qa[w] ^ k[t * W + w]) & (qb[w] ^ k[t * W + w]));
  }
#pragma unroll
  for (int t = 0; t < N; ++t) diff[t] = pair_bits + 2 * twice[t];
  if (gq & 1) {
    const uint32_t* ql = q_s + (gq - 1) * W;
#pragma unroll
    for (int t = 0; t < N; ++t)
#pragma unroll
      for (int w = 0; w < W; ++w) diff[t] += __popc(ql[w] ^ k[t * W + w]);
  }
}

// Coalesced chunks: lane l of a warp loads 16-byte chunks base + 32 i + l (i < kChunks),
// so each load instruction reads 512 contiguous bytes. (Four consecutive tokens a
// thread put its 16-byte loads 16 W bytes apart: at W = 8 a warp's load touched 32
// lines and the 256-bit case reached 70-84% of a same-size copy against 81-93% at
// W <= 4.) A chunk holds 4 / W tokens at W <= 4; at W = 8 a token spans two lanes,
// which add their halves with one shuffle.
constexpr int kChunks = 4;  // 64 bytes in flight a thread

// f(slot, w, word) for every word of the thread's chunks: slot = the token's index among
// the thread's (chunk i, token t of the chunk), w = the word's index within its token.
template <int kTokens, int kWords, typename F>
__device__ __forceinline__ void for_each_word(const uint4 (&chunk)[kChunks], F&& f) {
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const uint32_t kw[4] = {chunk[i].x, chunk[i].y, chunk[i].z, chunk[i].w};
#pragma unroll
    for (int t = 0; t < kTokens; ++t)
#pragma unroll
      for (int w = 0; w < kWords; ++w) f(i * kTokens + t, w, kw[t * kWords + w]);
  }
}

template <int W>
__global__ void __launch_bounds__(kThreads) hamming_chunk_kernel(HammingArgs a, int64_t blocks) {
  constexpr int kTokens = W <= 4 ? 4 / W : 1;  // whole tokens a chunk
  constexpr int kWords = W <= 4 ? W : 4;       // words of one token in a chunk
  extern __shared__ uint32_t q_s[];  // [gq][W]
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x / blocks;  // b * Hkv + g
  const int64_t row_chunks = a.T * W / 4;
  const int64_t c0 = (blockIdx.x % blocks) * (kThreads * kChunks) + (threadIdx.x >> 5) * (32 * kChunks) + lane;
  const int b = (int)(row / a.Hkv), g = (int)(row % a.Hkv);
  const uint4* kp = reinterpret_cast<const uint4*>(a.k_sig + row * a.T * W);
  uint4 chunk[kChunks] = {};
#pragma unroll
  for (int i = 0; i < kChunks; ++i)
    if (c0 + 32 * i < row_chunks) chunk[i] = kp[c0 + 32 * i];
  const int pair_bits = load_group_queries<W>(a, b, g, q_s);
  const int64_t len = valid_len(a, b);
  const int gq = a.Hq / a.Hkv;
  const int w0 = W == 8 ? (lane & 1) * 4 : 0;  // this lane's first word of its token
  int part[kChunks * kTokens] = {};  // distance of each token held, less pair_bits (halves at W = 8)
#pragma unroll 1
  for (int h = 0; h + 1 < gq; h += 2) {
    uint32_t qa[kWords], qb[kWords];
#pragma unroll
    for (int w = 0; w < kWords; ++w) {
      qa[w] = q_s[h * W + w0 + w];
      qb[w] = q_s[(h + 1) * W + w0 + w];
    }
    for_each_word<kTokens, kWords>(chunk, [&](int slot, int w, uint32_t k) {
      part[slot] += 2 * __popc((qa[w] ^ k) & (qb[w] ^ k));
    });
  }
  if (gq & 1) {  // the last head of an odd group, alone
    const uint32_t* ql = q_s + (gq - 1) * W + w0;
    for_each_word<kTokens, kWords>(chunk, [&](int slot, int w, uint32_t k) { part[slot] += __popc(ql[w] ^ k); });
  }
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int64_t c = c0 + 32 * i;
    int s[kTokens];
#pragma unroll
    for (int t = 0; t < kTokens; ++t) {
      int d = part[i * kTokens + t];
      if (W == 8) d += __shfl_xor_sync(0xFFFFFFFFu, d, 1);  // every lane reaches it
      const int64_t token = W == 8 ? c / 2 : c * kTokens + t;
      s[t] = token < len ? gq * 32 * W - (pair_bits + d) : -1;
    }
    if (c >= row_chunks) continue;
    int32_t* out = a.scores + row * a.T;
    if constexpr (W == 1) *reinterpret_cast<int4*>(out + 4 * c) = make_int4(s[0], s[1], s[2], s[3]);
    else if constexpr (W == 2) *reinterpret_cast<int2*>(out + 2 * c) = make_int2(s[0], s[1]);
    else if constexpr (W == 4) out[c] = s[0];
    else if ((lane & 1) == 0) out[c / 2] = s[0];
  }
}

// One token a thread, any T and any W-word alignment. Grid: rows * blocks CTAs.
template <int W>
__global__ void __launch_bounds__(kThreads) hamming_token_kernel(HammingArgs a, int64_t blocks) {
  extern __shared__ uint32_t q_s[];
  const int64_t row = blockIdx.x / blocks;
  const int64_t t = (blockIdx.x % blocks) * kThreads + threadIdx.x;
  const int b = (int)(row / a.Hkv), g = (int)(row % a.Hkv);
  const int pair_bits = load_group_queries<W>(a, b, g, q_s);
  if (t >= a.T) return;
  int32_t s = -1;
  if (t < valid_len(a, b)) {
    uint32_t k[W];
    const uint32_t* kp = a.k_sig + (row * a.T + t) * W;
#pragma unroll
    for (int w = 0; w < W; ++w) k[w] = kp[w];
    const int gq = a.Hq / a.Hkv;
    int diff;
    distances<W, 1>(k, q_s, gq, pair_bits, &diff);
    s = gq * 32 * W - diff;
  }
  a.scores[row * a.T + t] = s;
}

template <int W>
cudaError_t launch(const HammingArgs& a, cudaStream_t st) {
  const int64_t rows = (int64_t)a.B * a.Hkv;
  const size_t smem = (size_t)(a.Hq / a.Hkv) * W * sizeof(uint32_t);
  // whole 16-byte chunks a row, 16-byte aligned rows (the int4/int2 score stores then align too)
  const bool chunked = a.T * W % 4 == 0 && (reinterpret_cast<uintptr_t>(a.k_sig) & 15u) == 0 &&
                       (reinterpret_cast<uintptr_t>(a.scores) & 15u) == 0;
  const int64_t per_row = chunked ? (a.T * W / 4 + kThreads * kChunks - 1) / (kThreads * kChunks)
                                  : (a.T + kThreads - 1) / kThreads;
  if (rows * per_row > INT32_MAX) return cudaErrorInvalidConfiguration;
  if (chunked) hamming_chunk_kernel<W><<<(unsigned)(rows * per_row), kThreads, smem, st>>>(a, per_row);
  else hamming_token_kernel<W><<<(unsigned)(rows * per_row), kThreads, smem, st>>>(a, per_row);
  return cudaGetLastError();
}

}  // namespace

cudaError_t hamming_scores_cuda(const HammingArgs& a, int num_sms, cudaStream_t stream) {
  (void)num_sms;  // one pass of CTAs covers every token: no occupancy-based sizing needed
  if ((int64_t)a.B * a.Hkv == 0 || a.T == 0) return cudaSuccess;
  switch (a.W) {
    case 1: return launch<1>(a, stream);
    case 2: return launch<2>(a, stream);
    case 4: return launch<4>(a, stream);
    default: return launch<8>(a, stream);
  }
}

}  // namespace kvcore
