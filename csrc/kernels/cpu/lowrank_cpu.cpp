// CPU kernel of the GEAR low-rank error: per block R [G, D], subspace iteration
// Y = R W, W = R^T orth(Y), from a seeded +-1 start, orthonormalised by modified
// Gram-Schmidt applied twice; then A = orth(Y), B = R^T A, so R ~= A B^T. fp32 products
// (fused multiply-adds), double Gram-Schmidt sums. Every sum follows the partial-sum
// order of lowrank.h, which the CUDA kernel reproduces with its threads, so the two agree
// bit for bit.
#include <cmath>
#include <vector>
#include "../lowrank.h"
#include "kvcore/rotation.h"

// The products use std::fma. x86-64's baseline has no FMA instruction (std::fma would be
// a libm call), so on glibc the two product loops are also built for FMA hardware and
// picked at load time; the results are the same either way (fma is exactly rounded).
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define KV_FMA_CLONES __attribute__((target_clones("fma", "default")))
#endif
#endif
#ifndef KV_FMA_CLONES
#define KV_FMA_CLONES
#endif

namespace kvcore {
namespace {

constexpr int kMaxRank = 8;
static_assert(kLowRankParts == 4 && kLowRankDotParts == 32, "the combining trees below assume these");

// Sum of the 32 strided partials, pairwise like a warp's xor butterfly (lowrank.h).
double combine_dot_parts(double (&p)[kLowRankDotParts]) {
  for (int w = 1; w < kLowRankDotParts; w <<= 1)
    for (int l = 0; l < kLowRankDotParts; l += 2 * w) p[l] = p[l] + p[l + w];
  return p[0];
}

// sum_i y[i][j] * y[i][k] in double, in the order of lowrank.h (n a multiple of 32).
double dot_columns(const float* y, int n, int r, int j, int k) {
  double p[kLowRankDotParts] = {};
  for (int i = 0; i < n; ++i) {
    double& s = p[i % kLowRankDotParts];
    s = s + (double)y[i * r + j] * (double)y[i * r + k];
  }
  return combine_dot_parts(p);
}

// Orthonormalises the r columns of y [n][r] in place; a column that vanishes becomes 0.
void orthonormalise(float* y, int n, int r) {
  for (int pass = 0; pass < 2; ++pass)
    for (int j = 0; j < r; ++j) {
      for (int k = 0; k < j; ++k) {
        const float dot = (float)dot_columns(y, n, r, j, k);
        for (int i = 0; i < n; ++i) y[i * r + j] = y[i * r + j] - dot * y[i * r + k];
      }
      const double nn = dot_columns(y, n, r, j, j);
      const float inv = nn > 1e-30 ? (float)(1.0 / std::sqrt(nn)) : 0.0f;
      for (int i = 0; i < n; ++i) y[i * r + j] = y[i * r + j] * inv;
    }
}

// Y = R W: four channel partials per output (chunks of kLowRankChunk channels, dealt
// round-robin). Runs over RT = R^T [D][G] with the accumulators laid out
// [partial][column][token], so the inner loop is a contiguous (vectorisable) sweep over
// tokens; each accumulator still takes its channels in increasing order.
KV_FMA_CLONES void times_w(const float* RT, const float* W, float* Y, float* acc, int G, int D, int r) {
  const size_t n = (size_t)r * G;
  for (size_t i = 0; i < kLowRankParts * n; ++i) acc[i] = 0.0f;
  for (int d = 0; d < D; ++d) {
    float* part = acc + (size_t)((d / kLowRankChunk) % kLowRankParts) * n;
    const float* col = RT + (size_t)d * G;
    for (int j = 0; j < r; ++j) {
      const float w = W[(size_t)d * r + j];
      float* s = part + (size_t)j * G;
      for (int t = 0; t < G; ++t) s[t] = std::fma(col[t], w, s[t]);
    }
  }
  for (int t = 0; t < G; ++t)
    for (int j = 0; j < r; ++j) {
      const size_t i = (size_t)j * G + t;
      Y[t * r + j] = (acc[i] + acc[n + i]) + (acc[2 * n + i] + acc[3 * n + i]);
    }
}

// W = R^T Y: four token partials per output (token t feeds partial t % 4), accumulators
// laid out [partial][column][channel] so the inner loop sweeps a row of R.
KV_FMA_CLONES void rt_times_y(const float* R, const float* Y, float* W, float* acc, int G, int D, int r) {
  const size_t n = (size_t)r * D;
  for (size_t i = 0; i < kLowRankParts * n; ++i) acc[i] = 0.0f;
  for (int t = 0; t < G; ++t) {
    float* part = acc + (size_t)(t % kLowRankParts) * n;
    const float* row = R + (size_t)t * D;
    for (int j = 0; j < r; ++j) {
      const float y = Y[t * r + j];
      float* s = part + (size_t)j * D;
      for (int d = 0; d < D; ++d) s[d] = std::fma(row[d], y, s[d]);
    }
  }
  for (int d = 0; d < D; ++d)
    for (int j = 0; j < r; ++j) {
      const size_t i = (size_t)j * D + d;
      W[(size_t)d * r + j] = (acc[i] + acc[n + i]) + (acc[2 * n + i] + acc[3 * n + i]);
    }
}

template <int KIND>
void run(const LowRankArgs& a, int64_t begin, int64_t end) {
  using Bits = typename Storage<KIND>::bits_t;
  const int G = a.group, D = a.D, r = a.rank;
  const Bits* res = static_cast<const Bits*>(a.residual);
  std::vector<float> R((size_t)G * D), RT((size_t)G * D), Y((size_t)G * r), W((size_t)D * r);
  std::vector<float> acc((size_t)kLowRankParts * r * (G > D ? G : D));
  for (int64_t u = begin; u < end; ++u) {
    const int64_t blocks = a.T / G, row0 = (u / blocks) * a.T + (u % blocks) * G;
    for (int t = 0; t < G; ++t)
      for (int d = 0; d < D; ++d) {
        const float v = Storage<KIND>::load(res[(row0 + t) * D + d]);
        R[(size_t)t * D + d] = v;
        RT[(size_t)d * G + t] = v;
      }
    for (int d = 0; d < D; ++d)
      for (int j = 0; j < r; ++j) W[d * r + j] = rotation_sign(a.seed, (int64_t)d * 16 + j);
    times_w(RT.data(), W.data(), Y.data(), acc.data(), G, D, r);
    for (int it = 0; it < a.iters; ++it) {
      orthonormalise(Y.data(), G, r);
      rt_times_y(R.data(), Y.data(), W.data(), acc.data(), G, D, r);
      times_w(RT.data(), W.data(), Y.data(), acc.data(), G, D, r);
    }
    orthonormalise(Y.data(), G, r);
    rt_times_y(R.data(), Y.data(), W.data(), acc.data(), G, D, r);
    uint16_t* A = a.a + u * (int64_t)G * r;
    uint16_t* B = a.b + u * (int64_t)D * r;
    for (int i = 0; i < G * r; ++i) A[i] = float_to_half_bits(Y[i]);
    for (int i = 0; i < D * r; ++i) B[i] = float_to_half_bits(W[i]);
  }
}

}  // namespace

int64_t lowrank_error_cpu_units(const LowRankArgs& a) { return a.outer * (a.T / a.group); }

void lowrank_error_cpu(const LowRankArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case DType::F32: run<0>(a, begin, end); break;
    case DType::F16: run<1>(a, begin, end); break;
    default: run<2>(a, begin, end); break;
  }
}

}  // namespace kvcore
