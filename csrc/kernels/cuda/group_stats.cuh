// Median and spread of one outlier group held in a thread's registers (the CUDA
// outlier kernels). Host-compilable (KV_HD, no intrinsics), so it can be checked
// against the CPU kernel without a GPU.
#pragma once
#include <cmath>
#include <cstdint>
#include "kvcore/float_bits.h"

namespace kvcore {
namespace outl {

constexpr float kTinySpread = 1.17549435e-38f;  // 2^-126
constexpr uint32_t kNanKey = 0xFFFFFFFFu;
constexpr uint32_t kCanonicalNan = 0x7FC00000u;

// Order-preserving key of a float's bits: unsigned order is the CPU kernel's
// nan_last_less (every NaN equal and above +inf), refined by -0 < +0.
KV_HD uint32_t order_key(uint32_t bits) {
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return kNanKey;
  return bits ^ ((uint32_t)((int32_t)bits >> 31) | 0x80000000u);
}

// The float of a key (kNanKey gives a NaN).
KV_HD float key_value(uint32_t k) { return bits_as_float(k ^ (~(uint32_t)((int32_t)k >> 31) | 0x80000000u)); }

KV_HD uint32_t umin(uint32_t a, uint32_t b) { return a < b ? a : b; }
KV_HD uint32_t umax(uint32_t a, uint32_t b) { return a < b ? b : a; }

// Batcher's odd-even merge sort, ascending. Fully unrolled, so every index is a
// constant and k stays in registers: nvcc does that only for loops of constant trip
// counts (hence exponents, and the innermost loop over every position).
template <int N>
KV_HD void sort_keys(uint32_t (&k)[N]) {
  constexpr int LOG_N = N == 128 ? 7 : N == 64 ? 6 : N == 32 ? 5 : 0;
  static_assert(LOG_N > 0, "N must be 32, 64 or 128");
#pragma unroll
  for (int lp = 0; lp < LOG_N; ++lp) {  // merge sorted runs of p = 2^lp into runs of 2p
    const int p2 = 2 << lp;
#pragma unroll
    for (int lq = lp; lq >= 0; --lq) {  // compare at distance q = p, p/2, ..., 1
      const int q = 1 << lq, r = q % (p2 / 2);
#pragma unroll
      for (int i = 0; i < N; ++i) {
        if (i + q < N && i >= r && (i - r) % (2 * q) < q && i / p2 == (i + q) / p2) {
          const uint32_t a = k[i], b = k[i + q];
          k[i] = umin(a, b);
          k[i + q] = umax(a, b);
        }
      }
    }
  }
}

// Median and spread of the group whose keys k are sorted, as the CPU kernel computes
// them: the lower median, canonical (+0 for a zero, kCanonicalNan for NaN), and the
// lower MAD clamped to >= 2^-126 (a NaN MAD stays NaN, as std::max leaves it).
template <int G>
KV_HD void median_spread_sorted(const uint32_t (&k)[G], float& med, float& spread) {
  constexpr int H = G / 2;  // the lower median is k[H - 1]
  const uint32_t mk = k[H - 1];
  const float m = key_value(mk);
  uint32_t mad;  // bits of the MAD: >= +0 or NaN, so unsigned order is nan_last_less
  if (m - m == 0.0f) {
    // |x - m| falls (weakly) over positions < H and rises over positions >= H: a bitonic
    // sequence, so its H smallest are the pairwise minima of the two halves (half-cleaner)
    // and the lower median is their maximum.
    mad = 0;
#pragma unroll
    for (int j = 0; j < H; ++j) {
      const uint32_t lo = float_as_bits(fabsf(key_value(k[j]) - m));
      const uint32_t hi = float_as_bits(fabsf(key_value(k[j + H]) - m));
      mad = umax(mad, umin(lo, hi));
    }
  } else if (mk == kNanKey) {
    mad = kCanonicalNan;  // every |x - m| is NaN
  } else {
    // m = +-inf: |x - m| is NaN where x is m or NaN and +inf elsewhere.
    int finite = 0;
#pragma unroll
    for (int j = 0; j < G; ++j) finite += k[j] != mk && k[j] != kNanKey;
    mad = finite >= H ? 0x7F800000u : kCanonicalNan;
  }
  med = m == 0.0f ? 0.0f : mk == kNanKey ? bits_as_float(kCanonicalNan) : m;
  spread = mad < 0x00800000u ? kTinySpread : bits_as_float(mad);
}

}  // namespace outl
}  // namespace kvcore
