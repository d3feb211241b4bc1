// CPU kernel of the GEAR low-rank error: per block R [G, D], subspace iteration
// Y = R W, W = R^T orth(Y), from a seeded +-1 start, orthonormalised by modified
// Gram-Schmidt applied twice; then A = orth(Y), B = R^T A, so R ~= A B^T. fp32.
#include <cmath>
#include <vector>
#include "../lowrank.h"
#include "kvcore/rotation.h"

namespace kvcore {
namespace {

// Orthonormalises the r columns of y [n][r] in place; a column that vanishes becomes 0.
void orthonormalise(std::vector<float>& y, int n, int r) {
  for (int pass = 0; pass < 2; ++pass)
    for (int j = 0; j < r; ++j) {
      for (int k = 0; k < j; ++k) {
        double dot = 0.0;
        for (int i = 0; i < n; ++i) dot += (double)y[i * r + j] * y[i * r + k];
        for (int i = 0; i < n; ++i) y[i * r + j] -= (float)dot * y[i * r + k];
      }
      double nn = 0.0;
      for (int i = 0; i < n; ++i) nn += (double)y[i * r + j] * y[i * r + j];
      const float inv = nn > 1e-30 ? (float)(1.0 / std::sqrt(nn)) : 0.0f;
      for (int i = 0; i < n; ++i) y[i * r + j] *= inv;
    }
}

template <int KIND>
void run(const LowRankArgs& a, int64_t begin, int64_t end) {
  using Bits = typename Storage<KIND>::bits_t;
  const int G = a.group, D = a.D, r = a.rank;
  const Bits* res = static_cast<const Bits*>(a.residual);
  std::vector<float> R((size_t)G * D), Y((size_t)G * r), W((size_t)D * r);
  for (int64_t u = begin; u < end; ++u) {
    const int64_t blocks = a.T / G, row0 = (u / blocks) * a.T + (u % blocks) * G;
    for (int64_t i = 0; i < (int64_t)G * D; ++i) R[i] = Storage<KIND>::load(res[row0 * D + i]);
    for (int d = 0; d < D; ++d)
      for (int j = 0; j < r; ++j) W[d * r + j] = rotation_sign(a.seed, (int64_t)d * 16 + j);
    auto times_w = [&] {  // Y = R W
      for (int t = 0; t < G; ++t)
        for (int j = 0; j < r; ++j) {
          float s = 0.0f;
          for (int d = 0; d < D; ++d) s += R[t * D + d] * W[d * r + j];
          Y[t * r + j] = s;
        }
    };
    auto rt_times_y = [&] {  // W = R^T Y
      for (int d = 0; d < D; ++d)
        for (int j = 0; j < r; ++j) {
          float s = 0.0f;
          for (int t = 0; t < G; ++t) s += R[t * D + d] * Y[t * r + j];
          W[d * r + j] = s;
        }
    };
    times_w();
    for (int it = 0; it < a.iters; ++it) {
      orthonormalise(Y, G, r);
      rt_times_y();
      times_w();
    }
    orthonormalise(Y, G, r);
    rt_times_y();
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
