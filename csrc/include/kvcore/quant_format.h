// The packed KV format shared by every kernel (see docs/FORMAT.md).
//
// Codes: b-bit unsigned integers (b in {2,4,8}) packed into little-endian
// 32-bit words along head_dim within one token. A word holds n = 32/b
// consecutive channels; the even channels of the word fill its low 16 bits
// and the odd channels its high 16 bits, each in increasing order. So
// `(word >> (k*b)) & (mask * 0x00010001)` yields channels (2k, 2k+1) as the
// two 16-bit halves, ready to be OR-ed into the fp16 magic number 0x6400.
//
// Quantization is asymmetric round-to-nearest with (scale, min) stored in the
// input's dtype: code = clamp(rint((x - min) / scale), 0, 2^b - 1),
// x_hat = code * scale + min. min is rounded down and scale rounded up when
// stored, so every finite input lies within scale/2 of x_hat.
#pragma once
#include <cmath>
#include <cstdint>
#include "kvcore/float_bits.h"

namespace kvcore {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };
enum class Axis : int { Token = 0, Channel = 1 };

// Bit offset, inside its 32-bit word, of channel j (0 <= j < 32/bits) of that word.
KV_HD int code_bit_offset(int j, int bits) { return (j & 1) * 16 + (j >> 1) * bits; }

// Multiply and add without FMA contraction, so CPU and CUDA round identically.
KV_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
KV_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// Quantization parameters of one group, as floats read back from storage.
struct GroupQuant {
  float scale;
  float mn;
};

// Accumulates the range of a group. Non-finite inputs poison the group by
// forcing the range to (-inf, +inf), which finite data can never produce.
struct RangeAcc {
  float lo, hi;
  KV_HD RangeAcc() : lo(INFINITY), hi(-INFINITY) {}
  KV_HD void add(float x) {
    if (!(x - x == 0.0f)) {  // NaN or +-inf
      lo = -INFINITY;
      hi = INFINITY;
    } else {
      lo = fminf(lo, x);
      hi = fmaxf(hi, x);
    }
  }
  KV_HD void merge(float olo, float ohi) {
    lo = fminf(lo, olo);
    hi = fmaxf(hi, ohi);
  }
};

// Chooses the stored (scale, min) bit patterns for a group with range [lo, hi].
// A poisoned group (non-finite input) stores NaN for both, so it dequantizes to NaN.
template <int KIND>
KV_HD void choose_group_params(float lo, float hi, int bits,
                               typename Storage<KIND>::bits_t* scale_bits,
                               typename Storage<KIND>::bits_t* mn_bits) {
  using S = Storage<KIND>;
  using B = typename S::bits_t;
  constexpr int NB = (int)sizeof(B) * 8;
  if (lo == -INFINITY || hi == INFINITY) {
    *scale_bits = S::nan();
    *mn_bits = S::nan();
    return;
  }
  const float qmax = (float)((1 << bits) - 1);
  // 1/qmax as a float constant (multiplying is cheaper than dividing; the loop below
  // makes the scale large enough whatever the rounding of this first guess).
  const float inv_qmax = bits == 2 ? 0.333333343f : bits == 4 ? 0.0666666701f : 0.00392156886f;
  B m = S::store(lo);
  if (S::load(m) > lo) m = bits_next_down<B>(m, NB);
  const float mf = S::load(m);
  B s = S::store(mul_rn(hi - mf, inv_qmax));
  // Grow the scale until the top code reaches hi (at most a couple of steps).
  for (int i = 0; i < 4 && add_rn(mul_rn(S::load(s), qmax), mf) < hi; ++i) s = bits_next_up<B>(s, NB);
  *scale_bits = s;
  *mn_bits = m;
}

// Reciprocal of a stored scale; 0 for a constant (scale 0) or poisoned (NaN) group.
KV_HD float inv_scale(float scale) {
#if defined(__CUDA_ARCH__)
  return scale > 0.0f ? __frcp_rn(scale) : 0.0f;  // IEEE round-to-nearest, same as 1.0f / scale
#else
  return scale > 0.0f ? 1.0f / scale : 0.0f;
#endif
}

// Code of x given the group's min and inv_scale(scale). Identical on CPU and
// CUDA: IEEE subtract, multiply without contraction, round half to even.
KV_HD uint32_t encode_code(float x, float inv, float mn, int bits) {
  float q = rintf(mul_rn(x - mn, inv));
  const float qmax = (float)((1 << bits) - 1);
  q = fminf(fmaxf(q, 0.0f), qmax);  // fmaxf also maps NaN to 0
  return (uint32_t)q;
}

KV_HD float decode_code(uint32_t code, float scale, float mn) {
  return add_rn(mul_rn((float)code, scale), mn);
}

}  // namespace kvcore
