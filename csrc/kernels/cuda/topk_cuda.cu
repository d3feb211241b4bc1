// CUDA kernel of kvcore.topk_select: a CTA per row. Scores map to order-preserving
// 32-bit keys (NaN lowest, -0 == +0); up to four 8-bit radix passes of shared-memory
// histograms find the k-th highest key prefix and how many entries equal to it to keep
// (the last ones by position, as ties go to the later position); a final pass writes
// the kept positions in ascending order through block-wide prefix sums. Rows are read
// with 16-byte loads when 16-byte aligned. No host synchronisation, no workspace.
// The selection is a set defined by (key, position) alone, so it equals the CPU's.
#include <climits>

#include "../eviction.h"

namespace kvcore {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kPerThread = 4;  // consecutive entries per thread in the output pass
constexpr int kTile = kThreads * kPerThread;
static_assert(kThreads >= 256 && kTile < 65536, "a thread per digit; tile counts fit 16 bits");

// Larger score -> larger key; NaN (any sign or payload) -> 0, below -inf (0x007FFFFF);
// -0.0 is read as +0.0 so the two tie and fall back to position, as on the CPU.
template <bool kFloat>
__device__ __forceinline__ uint32_t to_key(uint32_t u) {
  if constexpr (kFloat) {
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0u;
    if (u == 0x80000000u) u = 0u;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  } else {
    return u ^ 0x80000000u;  // int32 two's complement -> offset binary
  }
}

// Exclusive prefix sum of v over the CTA; *total gets the CTA's sum. Every thread must
// call it (it synchronises); warp_s is reused across calls.
__device__ __forceinline__ uint32_t block_exclusive_scan(uint32_t v, uint32_t* warp_s, uint32_t* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint32_t x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t y = __shfl_up_sync(0xFFFFFFFFu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) warp_s[warp] = x;
  __syncthreads();
  if (warp == 0) {
    uint32_t w = lane < kWarps ? warp_s[lane] : 0u;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t y = __shfl_up_sync(0xFFFFFFFFu, w, o);
      if (lane >= o) w += y;
    }
    if (lane < kWarps) warp_s[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  const uint32_t before = (warp ? warp_s[warp - 1] : 0u) + x - v;
  *total = warp_s[kWarps - 1];
  __syncthreads();  // everyone has read warp_s before the next call writes it
  return before;
}

// Keys of entries [base, base + 4) of the row (those < len valid); 16-byte load when
// the row is aligned and all four are in range.
template <bool kFloat>
__device__ __forceinline__ void load4(const uint32_t* row, int64_t base, int64_t len, bool aligned, uint32_t* key,
                                      bool* valid) {
  if (aligned && base + 4 <= len) {
    const uint4 v = *reinterpret_cast<const uint4*>(row + base);
    key[0] = to_key<kFloat>(v.x); key[1] = to_key<kFloat>(v.y);
    key[2] = to_key<kFloat>(v.z); key[3] = to_key<kFloat>(v.w);
    valid[0] = valid[1] = valid[2] = valid[3] = true;
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      valid[j] = base + j < len;
      key[j] = valid[j] ? to_key<kFloat>(row[base + j]) : 0u;
    }
  }
}

template <bool kFloat>
__global__ void __launch_bounds__(kThreads, 1) topk_kernel(TopkArgs a) {
  __shared__ uint32_t hist[256];
  __shared__ uint32_t warp_s[kWarps];
  __shared__ uint32_t pick[3];  // digit, entries still to take in it, entries in it
  const int64_t r = blockIdx.x;
  const int tid = threadIdx.x;
  const int32_t raw = a.lengths[r];
  const int64_t len = raw < 0 ? 0 : (raw > a.L ? a.L : raw);
  const int64_t k = a.k;
  int32_t* out = a.idx + r * k;
  const int64_t n = len < k ? len : k;

  if (len <= k) {  // every valid entry is kept
    for (int64_t i = tid; i < k; i += kThreads) out[i] = i < len ? (int32_t)i : -1;
    if (tid == 0) a.count[r] = (int32_t)n;
    return;
  }

  const uint32_t* row = static_cast<const uint32_t*>(a.scores) + r * a.L;
  const bool aligned = (reinterpret_cast<uintptr_t>(row) & 15u) == 0;
  // Radix select: after each pass, prefix holds the top bits of the k-th highest key
  // (bits under mask) and `remaining` how many of the entries with that prefix to keep.
  uint32_t prefix = 0u, mask = 0u, remaining = (uint32_t)k, in_bucket = 0u;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += kThreads) hist[i] = 0u;
    __syncthreads();
    for (int64_t base = (int64_t)tid * 4; base < len; base += (int64_t)kThreads * 4) {
      uint32_t key[4];
      bool valid[4];
      load4<kFloat>(row, base, len, aligned, key, valid);
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (valid[j] && (key[j] & mask) == prefix) atomicAdd(&hist[(key[j] >> shift) & 255u], 1u);
    }
    __syncthreads();
    // Suffix sums from the highest digit: thread i holds digit 255 - i; exactly one
    // thread sees the remaining-th highest entry fall inside its digit.
    const uint32_t h = tid < 256 ? hist[255 - tid] : 0u;
    uint32_t total;
    const uint32_t above = block_exclusive_scan(h, warp_s, &total);
    if (tid < 256 && above < remaining && remaining <= above + h) {
      pick[0] = 255u - tid;
      pick[1] = remaining - above;
      pick[2] = h;
    }
    __syncthreads();
    prefix |= pick[0] << shift;
    mask |= 255u << shift;
    remaining = pick[1];
    in_bucket = pick[2];
    // pick is rewritten only after the next pass's histogram barrier, when all have read it
    if (remaining == in_bucket) break;  // the whole bucket is kept: lower bits don't matter
  }

  // Output pass: an entry is kept if its masked key is above prefix, or equal to it and
  // among the last `remaining` such entries by position (skip the first `skip` ones).
  // Its slot = (kept-above entries before it) + max(0, equal entries before it - skip).
  const uint32_t skip = in_bucket - remaining;
  uint32_t run_gt = 0u, run_eq = 0u;  // over the previous tiles
  for (int64_t tile = 0; tile < len; tile += kTile) {
    const int64_t base = tile + (int64_t)tid * kPerThread;
    uint32_t key[4];
    bool valid[4];
    load4<kFloat>(row, base, len, aligned, key, valid);
    uint32_t gt = 0u, eq = 0u;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t m = key[j] & mask;
      gt += valid[j] && m > prefix;
      eq += valid[j] && m == prefix;
    }
    uint32_t total;
    const uint32_t before = block_exclusive_scan(gt | (eq << 16), warp_s, &total);  // tile counts <= 4096
    uint32_t g = run_gt + (before & 0xFFFFu), e = run_eq + (before >> 16);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (!valid[j]) continue;
      const uint32_t m = key[j] & mask;
      if (m > prefix) {
        out[g + (e > skip ? e - skip : 0u)] = (int32_t)(base + j);
        ++g;
      } else if (m == prefix) {
        if (e >= skip) out[g + e - skip] = (int32_t)(base + j);
        ++e;
      }
    }
    run_gt += total & 0xFFFFu;
    run_eq += total >> 16;
  }
  if (tid == 0) a.count[r] = (int32_t)n;  // len > k here, so n = k and no -1 padding
}

}  // namespace

cudaError_t topk_select_cuda(const TopkArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  if (a.is_float) topk_kernel<true><<<(unsigned)a.rows, kThreads, 0, stream>>>(a);
  else topk_kernel<false><<<(unsigned)a.rows, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace kvcore
