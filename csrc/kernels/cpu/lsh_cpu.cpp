// CPU kernel of kvcore.lsh_signature: one row at a time against the projection matrix.
#include <cmath>
#include <vector>

#include "../eviction.h"
#include "kvcore/float_bits.h"
#include "kvcore/lsh.h"

namespace kvcore {

void lsh_projection_matrix(uint64_t seed, int D, int nbits, float* out) {
  for (int d = 0; d < D; ++d)
    for (int j = 0; j < nbits; ++j) out[(int64_t)d * nbits + j] = lsh_projection(seed, d, j);
}

namespace {

template <int KIND>
void rows_of(const LshArgs& a, const float* P, int64_t begin, int64_t end) {
  using B = typename Storage<KIND>::bits_t;
  const B* x = static_cast<const B*>(a.x);
  std::vector<float> xr(a.D), acc(a.nbits);
  const int W = a.nbits / 32;
  for (int64_t r = begin; r < end; ++r) {
    for (int d = 0; d < a.D; ++d) xr[d] = Storage<KIND>::load(x[r * a.D + d]);
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int d = 0; d < a.D; ++d) {  // d ascending, one fused multiply-add per term (as on CUDA)
      const float* p = P + (int64_t)d * a.nbits;
      for (int j = 0; j < a.nbits; ++j) acc[j] = std::fma(xr[d], p[j], acc[j]);
    }
    for (int w = 0; w < W; ++w) {
      uint32_t word = 0;
      for (int b = 0; b < 32; ++b) word |= (uint32_t)(acc[w * 32 + b] > 0.0f) << b;
      a.sig[r * W + w] = word;
    }
  }
}

}  // namespace

void lsh_signature_cpu(const LshArgs& a, const float* projection, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case DType::F32: return rows_of<0>(a, projection, begin, end);
    case DType::F16: return rows_of<1>(a, projection, begin, end);
    default: return rows_of<2>(a, projection, begin, end);
  }
}

}  // namespace kvcore
