// Device helpers for the quantize/dequantize kernels: vector loads of 8 elements,
// range accumulation, a fast encode and decode that round exactly like
// quant_format.h's encode_code / decode_code (so codes match the CPU bit for bit).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <type_traits>
#include "kvcore/quant_format.h"

namespace kvcore {
namespace dev {

template <int KIND>
using Bits = typename Storage<KIND>::bits_t;

constexpr float kMagic = 8388608.0f;  // 2^23: v + 2^23 rounds v in [0, 2^22) to an integer, ties to even

// Raw 16-byte vectors of 8 elements (16-bit types) kept in registers, and their floats.
template <int KIND>
__device__ __forceinline__ uint4 load_raw(const void* base, int64_t e) {
  return __ldcs(reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(base) + e));
}
template <int KIND>
__device__ __forceinline__ void unpack8(const uint4& u, float (&v)[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (KIND == 2) {
      v[2 * i] = __uint_as_float(w[i] << 16);
      v[2 * i + 1] = __uint_as_float(w[i] & 0xFFFF0000u);
    } else {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
      v[2 * i] = f.x;
      v[2 * i + 1] = f.y;
    }
  }
}

// Loads 8 consecutive elements at element index e (16-byte aligned) as floats.
template <int KIND>
__device__ __forceinline__ void load8(const void* base, int64_t e, float (&v)[8]) {
  if constexpr (KIND == 0) {
    const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(base) + e);
    const float4 a = __ldcs(p), b = __ldcs(p + 1);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
  } else {
    unpack8<KIND>(load_raw<KIND>(base, e), v);
  }
}

// Packs two floats into one 32-bit word of the 16-bit storage type (round to nearest even).
template <int KIND>
__device__ __forceinline__ uint32_t pack2(float a, float b) {
  if constexpr (KIND == 1) {
    const __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

// Stores 8 elements at e. For fp32 (32 bytes a lane) the lanes of a pair holding
// neighbouring chunks swap halves first, so that each store instruction writes whole
// 32-byte sectors (partial-sector writes ran at half speed). Callers guarantee that
// lanes 2k and 2k+1 are both active and hold chunks e and e + 8.
template <int KIND>
__device__ __forceinline__ void store8(void* base, int64_t e, const float (&v)[8]) {
  if constexpr (KIND == 0) {
    const unsigned mask = __activemask();
    const bool odd = (threadIdx.x & 1) != 0;
    float send[4], recv[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) send[i] = odd ? v[i] : v[i + 4];
#pragma unroll
    for (int i = 0; i < 4; ++i) recv[i] = __shfl_xor_sync(mask, send[i], 1);
    float* p = static_cast<float*>(base) + (odd ? e - 8 : e);  // the even lane's chunk
    // Branch-free, so both lanes of a pair store in the same instruction.
    const float4 first = odd ? make_float4(recv[0], recv[1], recv[2], recv[3]) : make_float4(v[0], v[1], v[2], v[3]);
    const float4 second = odd ? make_float4(v[4], v[5], v[6], v[7]) : make_float4(recv[0], recv[1], recv[2], recv[3]);
    __stcs(reinterpret_cast<float4*>(p + (odd ? 4 : 0)), first);    // even chunk, 32 bytes per pair
    __stcs(reinterpret_cast<float4*>(p + (odd ? 12 : 8)), second);  // odd chunk, 32 bytes per pair
  } else {
    __stcs(reinterpret_cast<uint4*>(static_cast<uint16_t*>(base) + e),
           make_uint4(pack2<KIND>(v[0], v[1]), pack2<KIND>(v[2], v[3]), pack2<KIND>(v[4], v[5]),
                      pack2<KIND>(v[6], v[7])));
  }
}

// Range of a group with a NaN/Inf flag: `poison` stays 0 for finite data and
// becomes NaN once any x is NaN or +-inf (x * 0 is NaN exactly then).
struct Range {
  float lo = INFINITY, hi = -INFINITY, poison = 0.0f;
  __device__ __forceinline__ void add(float x) {
    lo = fminf(lo, x);
    hi = fmaxf(hi, x);
    poison = __fmaf_rn(x, 0.0f, poison);
  }
  __device__ __forceinline__ void merge(float l, float h, float p) {
    lo = fminf(lo, l);
    hi = fmaxf(hi, h);
    poison += p;
  }
  __device__ __forceinline__ void shfl_merge(int lane_mask) {
    merge(__shfl_xor_sync(0xffffffffu, lo, lane_mask), __shfl_xor_sync(0xffffffffu, hi, lane_mask),
          __shfl_xor_sync(0xffffffffu, poison, lane_mask));
  }
  // Range in the convention of choose_group_params (poisoned -> (-inf, inf)).
  __device__ __forceinline__ float final_lo() const { return poison == 0.0f ? lo : -INFINITY; }
  __device__ __forceinline__ float final_hi() const { return poison == 0.0f ? hi : INFINITY; }
};

// Packed range of pairs of 16-bit values (channels 2i, 2i+1 of a 32-bit word), exact.
template <int KIND>
struct Range2 {
  using T2 = typename std::conditional<KIND == 1, __half2, __nv_bfloat162>::type;
  T2 lo, hi, po;
  __device__ __forceinline__ Range2() {
    const uint32_t inf = KIND == 1 ? 0x7C007C00u : 0x7F807F80u;
    lo = from_bits(inf);
    hi = from_bits(inf | 0x80008000u);
    po = from_bits(0u);
  }
  __device__ __forceinline__ static T2 from_bits(uint32_t u) { return *reinterpret_cast<const T2*>(&u); }
  __device__ __forceinline__ void add(uint32_t word) {
    const T2 x = from_bits(word);
    lo = __hmin2(lo, x);  // a NaN operand is ignored: `po` catches it
    hi = __hmax2(hi, x);
    po = __hfma2(x, from_bits(0u), po);  // becomes NaN once x is NaN or +-inf
  }
  __device__ __forceinline__ static float2 to_float2(T2 v) {
    if constexpr (KIND == 1) return __half22float2(v);
    else return __bfloat1622float2(v);
  }
  // Ranges of the two channels in choose_group_params' convention (poisoned -> (-inf, inf)).
  __device__ __forceinline__ void finals(float (&l)[2], float (&h)[2]) const {
    const float2 fl = to_float2(lo), fh = to_float2(hi), fp = to_float2(po);
    l[0] = fp.x == 0.0f ? fl.x : -INFINITY;
    h[0] = fp.x == 0.0f ? fh.x : INFINITY;
    l[1] = fp.y == 0.0f ? fl.y : -INFINITY;
    h[1] = fp.y == 0.0f ? fh.y : INFINITY;
  }
};

// encode_code(x, inv, mn, bits) computed as the float bits of (v + 2^23), whose low
// `bits` bits are the code: v + 2^23 rounds v to an integer, ties to even, like rint.
// The clamp to [0, qmax] that encode_code applies is a no-op here: the stored (scale,
// min) put v in [0, qmax + 0.04] for 16-bit inputs (min rounded down, scale rounded up;
// fp32 rounding of the range check adds < 0.04), so only fp32 inputs need the upper
// clamp. The lower clamp only matters for NaN (x >= min, so x - min >= 0): callers
// that know their groups are not poisoned pass NAN_SAFE = false and save it.
// Poisoned groups must pass mn = 0, inv = 0 and NAN_SAFE = true.
template <int KIND, int BITS, bool NAN_SAFE = true>
__device__ __forceinline__ uint32_t encode_magic(float x, float inv, float mn) {
  float v = __fmul_rn(x - mn, inv);
  if constexpr (NAN_SAFE) v = fmaxf(v, 0.0f);
  if constexpr (KIND == 0) v = fminf(v, (float)((1 << BITS) - 1));
  return __float_as_uint(__fadd_rn(v, kMagic));
}

// Sum over channels j of a word of (0x4B000000 << offset_j): what the magic bits of
// encode_magic add to a word accumulated as sum(bits_j << offset_j), mod 2^32.
template <int BITS>
__host__ __device__ constexpr uint32_t magic_word_bias(int first, int count) {
  uint32_t b = 0;
  for (int j = first; j < first + count; ++j) b += 0x4B000000u << code_bit_offset(j, BITS);
  return b;
}

// float(code) via the 2^23 trick (cheaper than an int-to-float conversion).
__device__ __forceinline__ float code_to_float(uint32_t code) {
  return __fsub_rn(__uint_as_float(0x4B000000u | code), kMagic);
}

}  // namespace dev
}  // namespace kvcore
