// Bit-exact conversions between float and the 16-bit storage types, shared by
// the CPU and CUDA kernels so both round identically (IEEE round-to-nearest-even)
// and so metadata can be rounded in a chosen direction (see quant_format.h).
#pragma once
#include <cstdint>
#include <cstring>
#include "kvcore/host_device.h"
#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace kvcore {

KV_HD uint32_t float_as_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

KV_HD float bits_as_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

KV_HD float half_bits_to_float(uint16_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h));  // exact, like the portable path below
#endif
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t man = h & 0x3FFu;
  if (exp == 0x1Fu) return bits_as_float(sign | 0x7F800000u | (man << 13));
  if (exp == 0) {
    if (man == 0) return bits_as_float(sign);
    // subnormal: value = man * 2^-24, exact in float
    float v = (float)man * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_as_float(sign | ((exp + 112u) << 23) | (man << 13));
}

KV_HD uint16_t float_to_half_bits(float f) {
#if defined(__CUDA_ARCH__)
  // Hardware round-to-nearest-even; NaN is canonicalised like the portable path.
  if (f != f) return (uint16_t)((__float_as_uint(f) >> 16 & 0x8000u) | 0x7E00u);
  return __half_as_ushort(__float2half_rn(f));
#endif
  uint32_t x = float_as_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7FFFFFFFu;
  if (ax > 0x7F800000u) return (uint16_t)(sign | 0x7E00u);  // NaN
  if (ax >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);  // rounds to inf
  if (ax < 0x38800000u) {
    // result is subnormal or zero: round(|f| * 2^24) to an integer, ties to even
    if (ax < 0x33000000u) return (uint16_t)sign;  // < 2^-25: rounds to 0
    uint32_t e = ax >> 23;
    uint32_t m = (ax & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = 126u - e;  // 14..24 + ...
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) q += 1u;
    return (uint16_t)(sign | q);
  }
  uint32_t q = (ax >> 13) - (112u << 10);
  uint32_t rem = ax & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) q += 1u;
  return (uint16_t)(sign | q);
}

KV_HD float bf16_bits_to_float(uint16_t b) { return bits_as_float((uint32_t)b << 16); }

KV_HD uint16_t float_to_bf16_bits(float f) {
#if defined(__CUDA_ARCH__)
  if (f != f) return (uint16_t)((__float_as_uint(f) >> 16 & 0x8000u) | 0x7FC0u);
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));  // hardware round-to-nearest-even
#endif
  uint32_t x = float_as_bits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)(((x >> 16) & 0x8000u) | 0x7FC0u);
  uint32_t lsb = (x >> 16) & 1u;
  return (uint16_t)((x + 0x7FFFu + lsb) >> 16);
}

// Storage-type traits: 0 = float32, 1 = float16, 2 = bfloat16.
template <int KIND> struct Storage;
template <> struct Storage<0> {
  using bits_t = uint32_t;
  KV_HD static float load(bits_t b) { return bits_as_float(b); }
  KV_HD static bits_t store(float f) { return float_as_bits(f); }
  KV_HD static bits_t nan() { return 0x7FC00000u; }
};
template <> struct Storage<1> {
  using bits_t = uint16_t;
  KV_HD static float load(bits_t b) { return half_bits_to_float(b); }
  KV_HD static bits_t store(float f) { return float_to_half_bits(f); }
  KV_HD static bits_t nan() { return 0x7E00u; }
};
template <> struct Storage<2> {
  using bits_t = uint16_t;
  KV_HD static float load(bits_t b) { return bf16_bits_to_float(b); }
  KV_HD static bits_t store(float f) { return float_to_bf16_bits(f); }
  KV_HD static bits_t nan() { return 0x7FC0u; }
};

// Next representable value toward +inf / -inf for a finite sign-magnitude bit pattern.
template <typename B>
KV_HD B bits_next_up(B b, int nbits) {
  const B sign = (B)((B)1 << (nbits - 1));
  if (b == sign) return (B)1;  // -0 -> smallest positive subnormal
  return (b & sign) ? (B)(b - 1) : (B)(b + 1);
}
template <typename B>
KV_HD B bits_next_down(B b, int nbits) {
  const B sign = (B)((B)1 << (nbits - 1));
  if (b == 0) return (B)(sign | 1);
  return (b & sign) ? (B)(b + 1) : (B)(b - 1);
}

}  // namespace kvcore
