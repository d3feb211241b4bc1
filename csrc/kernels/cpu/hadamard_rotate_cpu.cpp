// CPU kernel of the randomized Hadamard rotation: per row, signs, an in-place fast
// Walsh-Hadamard transform (D log D butterflies) and a 1/sqrt(D) scale, in fp32.
#include <vector>
#include "../hadamard_rotate.h"

namespace kvcore {
namespace {

template <int KIND>
void rotate_rows(const RotateArgs& a, int64_t begin, int64_t end) {
  using Bits = typename Storage<KIND>::bits_t;
  const int D = a.D;
  const float norm = a.norm;
  std::vector<float> sign(D), v(D);
  for (int d = 0; d < D; ++d) sign[d] = rotation_sign(a.seed, d);
  const Bits* x = static_cast<const Bits*>(a.x);
  Bits* out = static_cast<Bits*>(a.out);
  for (int64_t r = begin; r < end; ++r) {
    for (int d = 0; d < D; ++d) {
      const float xv = Storage<KIND>::load(x[r * D + d]);
      v[d] = a.inverse ? xv : xv * sign[d];
    }
    walsh_hadamard_inplace(v.data(), D);
    for (int d = 0; d < D; ++d) {
      const float y = v[d] * norm;
      out[r * D + d] = Storage<KIND>::store(a.inverse ? y * sign[d] : y);
    }
  }
}

}  // namespace

void hadamard_rotate_cpu(const RotateArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case DType::F32: rotate_rows<0>(a, begin, end); break;
    case DType::F16: rotate_rows<1>(a, begin, end); break;
    default: rotate_rows<2>(a, begin, end); break;
  }
}

}  // namespace kvcore
