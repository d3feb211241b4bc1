// The packed split kernel of the fused decode attention (flash-decoding on tensor cores);
// included by decode_packed_*.cu, one (dtype, bits, head_dim) triple each. decode_attention_cuda.cu
// plans the splits and merges them.
//
// Work split: grid (split, KV head x head pass, batch). A CTA owns `chunk` packed tokens
// of one KV head and serves up to 8 of its query heads (one mma N tile), so the cache
// is read once per step for GQA groups up to 8. Its 4 warps take consecutive quarters
// of the chunk; each warp streams its tokens through shared memory with cp.async
// (2 stages of TT tokens), runs online softmax in base 2 (rescaling only when the
// running max grows), and the CTA merges its warps into one partial (O, max, sum) per
// split. The last split of each (batch, KV head, pass) does the full-precision sinks
// and residual window (also on tensor cores), concurrently with the packed splits; a merge
// kernel combines the splits by log-sum-exp. Nothing reads lengths on the host.
//
// Math (per query head; q' = q * sm_scale * log2(e), SC = 2^bits):
//   Codes enter the tensor cores as fp16 subnormals c 2^(pos-24): the BITS-bit field at
//   bit `pos` (pos + BITS <= 10) of both 16-bit halves of a word, everything else masked
//   off (one LOP3, after at most one shift or rotation shared by several fields). The
//   tensor cores multiply fp16 subnormals exactly (checked on the H100), so there is no
//   offset to cancel and a field may sit anywhere in the mantissa.
//   S^T = K x Q'^T (M = 16 tokens, K = channels, N = 8 heads). Keys are grouped per
//     channel, so the channel scale folds into the B operand:
//     qs_d = q'_d ks_d 2^(KF-pos_d), q'.k = 2^(24-KF) sum_d qs_d x_d + sum_d q'_d km_d.
//     The k dimension is permuted (lane t takes its own quarter of the channels) so
//     that every field position is a compile-time constant. qs goes to the tensor
//     cores as fp16 hi + lo (two mmas on the same A fragments): one fp16 rounding of
//     q' ks would cost as much as the whole error budget of an fp16 attention.
//   O^T = V^T x P^T (M = 16 channels of one value group, K = 16 tokens, N = 8 heads).
//     Values are grouped per token, so the token scale folds into P: b_t = SC p_t vs_t
//     (fp16), o = sum_t p_t vm_t + 2^(24-BITS-pos) sum_t b_t x_t. A PRMT pairs two
//     tokens' half-words; the m dimension is permuted so that each lane's codes of a
//     value group sit in one word.
//   The P^T operand comes from the S^T accumulators with one movmatrix transpose.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cfloat>
#include <map>
#include <mutex>
#include <type_traits>

#include "../decode_attention.h"
#include "mma_utils.cuh"
#include "quant_device.cuh"

#include "decode_common.cuh"

namespace kvcore {
namespace {

using namespace decode_detail;

using dev::Bits;


// Tokens per pipeline stage. 32 where 64 would keep the kernel from 4 CTAs per SM by
// shared memory (the H4 4-bit kernel at D = 128 fits 4 CTAs by registers; 64-token
// stages of 4-bit codes would allow only 2). At D = 64 the H4 4-bit kernel's 64-token
// stages fit (H200, keys only 32K 60.0 -> 52.5 us, plain 50.3; session 21).
__host__ __device__ constexpr int tile_tokens(int D, int bits, bool h4) {
  return D == 64 || (D == 128 && !(h4 && bits == 4)) ? 64 : 32;
}
template <int D, int BITS, bool H4>
struct TileShape {
  static constexpr int TT = tile_tokens(D, BITS, H4);
  static constexpr int MT = TT / 16;  // 16-token m-tiles per stage
};

// Byte layout of one pipeline stage of one warp.
template <int D, int BITS, int G, int VG, int TT_ = TileShape<D, BITS, false>::TT>  // G: tokens per key block, VG: channels per value group
struct StageLayout {
  static constexpr int TT = TT_;
  static constexpr int RB = D * BITS / 8;             // code bytes per token
  static constexpr int NKB = TT >= G ? TT / G : 1;    // key blocks a stage touches
  static constexpr int NG = D / VG;                   // value groups per token
  static constexpr int KC = 0;                        // key codes [TT][RB]
  static constexpr int VC = KC + TT * RB;             // value codes [TT][RB]
  static constexpr int KS = VC + TT * RB;             // key scale [NKB][D]
  static constexpr int KM = KS + NKB * D * 2;         // key min [NKB][D]
  static constexpr int VS = KM + NKB * D * 2;         // value scale [TT][NG]
  static constexpr int VM = VS + TT * NG * 2;         // value min [TT][NG]
  static constexpr int BYTES = VM + TT * NG * 2;      // a multiple of 16
};

// Optional corrections (issue 4), appended to each stage after StageLayout::BYTES; sizes
// depend on the runtime outlier counts and ranks, every section a multiple of 16 bytes:
//   key/value outlier indices [TT][c] uint8, residuals [TT][c] (cache dtype),
//   key/value low-rank A rows [TT][r] fp16.
// The low-rank B [D][r] of a block is read once per block straight from global memory
// (staging it too would exceed shared memory at rank 8 with groups of 32).
struct CorrLayout {
  int koi = 0, kor = 0, voi = 0, vor = 0, kla = 0, vla = 0, bytes = 0;
};
__host__ __device__ inline int round16(int x) { return (x + 15) & ~15; }
// The H4 outlier kernel (CK = 1 or 2 outliers a token in keys, CV = 1 or 2 in values)
// has fixed sections: key indices [TT][CK], key residuals [TT][CK], value indices
// [TT][CV], value residuals [TT][CV], all present (zero-filled when a side has none) so
// that every offset is a constant.
template <int D, int BITS, int G, int VG, int TT, int CK = 1, int CV = 1>
struct H4OutlierLayout {
  static constexpr int KOI = StageLayout<D, BITS, G, VG, TT>::BYTES, KOR = KOI + CK * TT, VOI = KOR + 2 * CK * TT,
                       VOR = VOI + CV * TT, BYTES = 3 * (CK + CV) * TT;
};
template <int D, int BITS, int G, int VG, int TT>
__host__ __device__ inline CorrLayout corr_layout(const DecodeArgs& a, bool h4) {
  using L = StageLayout<D, BITS, G, VG, TT>;
  CorrLayout c;
  if (h4) {  // (CK = 2 for two key outliers a token, else 1; CV likewise for values)
    const int ck = a.k_outliers == 2 ? 2 : 1, cv = a.v_outliers == 2 ? 2 : 1;
    c.koi = L::BYTES; c.kor = c.koi + ck * TT;
    c.voi = c.kor + 2 * ck * TT; c.vor = c.voi + cv * TT;
    c.kla = c.vla = c.vor + 2 * cv * TT;
    c.bytes = 3 * (ck + cv) * TT;  // H4OutlierLayout<.., ck, cv>::BYTES
    return c;
  }
  int at = L::BYTES;
  c.koi = at; at += round16(L::TT * a.k_outliers);
  c.kor = at; at += round16(L::TT * a.k_outliers * 2);
  c.voi = at; at += round16(L::TT * a.v_outliers);
  c.vor = at; at += round16(L::TT * a.v_outliers * 2);
  c.kla = at; at += round16(L::TT * a.k_rank * 2);
  c.vla = at; at += round16(L::TT * a.v_rank * 2);
  c.bytes = at - L::BYTES;
  return c;
}
constexpr int kMaxRank = 8;
// Per-CTA shared memory of the corrections, after the stages, in floats and only what the
// given corrections use (every byte counts: 2 or 3 CTAs per SM): q' by channel [D][8]
// (key outliers or rank), the warps' value-correction sums [kWarps][8][D] (value
// outliers or rank), the warps' q'.B of the current key block [kWarps][8][kMaxRank]
// (key rank) and the lanes' value low-rank weights [kWarps][32][2][v_rank] (value rank;
// in shared memory because in registers they made the kernel spill).
// The H4 outlier kernel (h4 = true: outliers only) keeps q' by channel [qo_rows][4]
// (h4_qo_rows), at 4 bits, D >= 128 and one value outlier a token the warps' value-outlier
// sums [kWarps][D + 1][4] (int32; row D: a dump for indices >= D), the warps' reference maxima
// [kWarps][4] of those sums, the lanes' outlier-copy sources [kWarps][32] (uint64) and,
// for two outliers a side at 64-token stages, their second sources [kWarps][32]
// (h4_second_source_table). Otherwise the sums live in
// global memory (SplitParams::ws_vo; h4_value_sums_in_smem): the 2-bit kernel's 64-token
// stages leave no room for them at 4 CTAs per SM (the 4-bit kernel's 32-token stages do).
struct CorrCta {
  int qo = 0, vo = 0, qb = 0, wl = 0, mref = 0, osrc = 0, osrc2 = 0, floats = 0;
};
// The H4 outlier kernel copies a stage's outlier sections as 3 (CK + CV) TT / 16 chunks
// of 16 bytes, one a lane; past 32 chunks lane l also copies chunk 32 + l, a value-residual
// chunk. Its source is lane 32 - (chunks - 32) + l's advanced where that lane copies value
// residuals too; otherwise (CK = CV = 2 at TT = 64: 48 chunks, the value residuals are
// chunks 32-47 exactly) the lanes' second sources have a table of their own.
__host__ __device__ constexpr bool h4_second_source_table(int TT, int CK, int CV) {
  return 3 * (CK + CV) * TT / 16 > 32 && 32 - (3 * (CK + CV) * TT / 16 - 32) < (3 * CK + CV) * TT / 16;
}
// Rows of the H4 kernel's q' by channel, rows >= D zero. 2 bits: 256, so that any index
// byte has a row and a key index needs no clamp (the kernel is issue-bound); 4 bits and
// 2-bit key blocks of 32 tokens (whose stages carry two blocks of key scales): D + 1, so
// that 4 CTAs fit in an SM's shared memory, and indices are clamped to the zero row D.
__host__ __device__ constexpr int h4_qo_rows(int D, int bits, int G) {
  return (bits == 4 || G == 32) && D < 256 ? D + 1 : 256;
}
// The H4 outlier kernel's: a function of the shape only, so that the kernel's offsets are
// compile-time constants (q' by channel even without key outliers: the outlier code runs
// branch-free).
__host__ __device__ constexpr CorrCta corr_cta_h4(int D, int bits, int G, bool second_sources = false, int cv = 1) {
  CorrCta c;
  int at = h4_qo_rows(D, bits, G) * 4;  // a multiple of 4 floats: the sums stay 16-byte aligned
  c.vo = at;
  // h4_value_sums_in_smem, spelled out: through the helper, ptxas allocated the D = 128
  // outlier kernels' registers differently (+-16 instructions) from the measured form
  if (bits == 4 && D >= kVoSmemMinD && cv == 1) at += kWarps * (D + 1) * 4;
  c.qb = c.wl = c.mref = at;
  at += kWarps * 4;
  c.osrc = at;  // the lanes' outlier-copy sources [kWarps][32] (uint64, 8-byte aligned)
  at += kWarps * 32 * 2;
  c.osrc2 = at;  // (h4_second_source_table) their second sources [kWarps][32]
  if (second_sources) at += kWarps * 32 * 2;
  c.floats = at;
  return c;
}
__host__ __device__ inline CorrCta corr_cta(const DecodeArgs& a, int D, bool h4) {
  if (h4)
    return corr_cta_h4(D, a.bits, a.group,
                       h4_second_source_table(tile_tokens(D, a.bits, true), a.k_outliers == 2 ? 2 : 1,
                                              a.v_outliers == 2 ? 2 : 1),
                       a.v_outliers == 2 ? 2 : 1);
  CorrCta c;
  int at = 0;
  c.qo = at; at += (a.k_outliers > 0 || a.k_rank > 0) ? 8 * D : 0;
  c.vo = at; at += (a.v_outliers > 0 || a.v_rank > 0) ? kWarps * 8 * D : 0;
  c.qb = at; at += a.k_rank > 0 ? kWarps * 8 * kMaxRank : 0;
  c.wl = at; at += kWarps * 32 * 2 * a.v_rank;
  c.mref = c.osrc = at;
  c.floats = at;
  return c;
}

// ---- codes -> fp16 tensor-core operands ---------------------------------------------
// A BITS-bit field at bit `pos` (pos + BITS <= 10) of both halves of a word, the rest
// masked off, is the fp16 subnormal pair (c_lo 2^(pos-24), c_hi 2^(pos-24)): one LOP3,
// no int->float conversion. The 2^(pos-24) factors are undone outside the inner loop
// (in the query operand for keys, once per warp for values). (Until session 13 the
// fields carried the exponent of 1.0, whose offsets had to be summed by extra mmas and
// cancelled, and which kept fields high in the mantissa for precision.)
template <int BITS>
__device__ __forceinline__ uint32_t fields_h2(uint32_t w, int pos) {
  const uint32_t mask = (((1u << BITS) - 1u) << pos) * 0x00010001u;
  return w & mask;
}

// *addr += x, addr[1] += y atomically (addr 8-byte aligned, in shared memory): one
// 64-bit compare-and-swap loop for both, since float atomics on shared memory are
// compare-and-swap loops anyway.
__device__ __forceinline__ void atomic_add_pair(float* addr, float x, float y) {
  unsigned long long* p = reinterpret_cast<unsigned long long*>(addr);
  unsigned long long old = *p, assumed;
  do {
    assumed = old;
    const float lo = __uint_as_float((uint32_t)assumed) + x, hi = __uint_as_float((uint32_t)(assumed >> 32)) + y;
    old = atomicCAS(p, assumed, ((unsigned long long)__float_as_uint(hi) << 32) | __float_as_uint(lo));
  } while (old != assumed);
}

// 2^x for the softmax (x <= 0 or -inf) and the outlier sums' reference factors (|x| <= 64):
// one MUFU.EX2 (relative error ~2^-22); results below 2^-126 flush to 0.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Keys. Packed word = channel pairs (even channel in the low half, odd in the high
// half). The mma's k dimension may be permuted freely as long as A and B agree, so
// lane t takes the channel pairs of its own quarter of each row (words t*KW ..) and
// k-tile j uses pairs 2j and 2j+1 of that list. The pair index i inside a word is then
// known at compile time: the fields in bits 0-9 of the halves are used where they are,
// the others after one right shift a word (2 bits: pairs 5-7 >> 6 to bits 4-8; 4 bits:
// pairs 2, 3 >> 8 to bits 0, 4), and the field's 2^(KF-pos) goes into the query operand.
// KF = 6 keeps the largest factor at 64, where the fp16 range of q' ks x 2^(KF-pos) was
// before (the smallest, 2^-2, costs nothing that matters: see round_query_pair).
constexpr int kKeyFactorExp = 6;  // KeyPos::KF
template <int BITS>
struct KeyPos {
  static constexpr int PW = 16 / BITS;  // channel pairs per word
  static constexpr int KF = kKeyFactorExp;
  __host__ __device__ static constexpr int shift(int i) { return BITS == 2 ? (i < 5 ? 0 : 6) : (i < 2 ? 0 : 8); }
  __host__ __device__ static constexpr int pos(int i) { return i * BITS - shift(i); }
  // 2^(KF - pos) as a float (pos may be a runtime value here)
  __device__ static float factor(int i) { return __int_as_float((127 + KF - pos(i)) << 23); }
  __host__ __device__ static constexpr bool class_used(int c) {  // a field sits at bit 2c
    for (int i = 0; i < PW; ++i)
      if (pos(i) == 2 * c) return true;
    return false;
  }
};
// q'.k = kScoreScale x (the score mma's accumulator) + the block constant
constexpr float kScoreScale = (float)(1 << (24 - kKeyFactorExp));
template <int BITS>
__device__ __forceinline__ uint32_t key_pair_h2(uint32_t w, int i) {
  return fields_h2<BITS>(w >> KeyPos<BITS>::shift(i), KeyPos<BITS>::pos(i));
}

// Values. O^T = V^T P^T needs, per register, one channel at two tokens: a PRMT of two
// tokens' words puts their low halves (even channels) or high halves (odd channels)
// side by side. The mma's m dimension (channels) is free, so lane g takes VPL
// consecutive even codes of each value group (and the odd ones beside them): m-tile
// gr*VPL + k, rows g / g+8 = channels gr*VG + 2(g*VPL + k) and +1. One rotation brings
// a code (2 bits: two neighbouring codes) to bit kVPos (and kVPos + 2).
constexpr int kVPos = 6;
template <int BITS, int VPL>
__device__ __forceinline__ int value_rotation(int g, int k) {
  constexpr int CH = 16 / BITS;  // codes per half-word
  const int idx = (g * VPL + k) % CH;
  return (idx * BITS - kVPos) & 31;
}

// Index of channel pair P, head h in the q' table: 4 float2 of padding per quarter of
// the channels so that the 4 lanes t of a quad read different banks.
template <int D>
__host__ __device__ constexpr int q_index(int P, int h) { return P * kHeadsPerPass + h + 4 * (P / (D / 8)); }
template <int D>
constexpr size_t kQBytes = (size_t)(kHeadsPerPass * D / 2 + 16) * sizeof(float2);
// The stage area after the q table: the warps' pipeline stages (`stage` bytes each),
// reused after the loop by the CTA merge (kWarps x 8 x (D + 2) floats) and by the
// full-precision split (its row chunks).
__host__ __device__ constexpr size_t stage_area_bytes(int D, size_t stage) {
  return std::max((size_t)kWarps * kStages * stage, (size_t)kWarps * kHeadsPerPass * (D + 2) * sizeof(float));
}

// N consecutive 32-bit words from shared memory (N * 4 bytes aligned).
template <int N>
__device__ __forceinline__ void load_words(const uint8_t* p, uint32_t (&w)[N]) {
  if constexpr (N == 1) {
    w[0] = *reinterpret_cast<const uint32_t*>(p);
  } else if constexpr (N == 2) {
    const uint2 x = *reinterpret_cast<const uint2*>(p);
    w[0] = x.x; w[1] = x.y;
  } else {
#pragma unroll
    for (int i = 0; i < N / 4; ++i) {
      const uint4 x = reinterpret_cast<const uint4*>(p)[i];
      w[4 * i] = x.x; w[4 * i + 1] = x.y; w[4 * i + 2] = x.z; w[4 * i + 3] = x.w;
    }
  }
}

template <int KIND>
__device__ __forceinline__ float meta_at(const uint8_t* base, int idx) {
  return Storage<KIND>::load(reinterpret_cast<const Bits<KIND>*>(base)[idx]);
}
// Two 16-bit values of the storage type packed in a word (low half first) as floats.
template <int KIND>
__device__ __forceinline__ float2 bits_pair(uint32_t w) {
  if constexpr (KIND == 1) return __half22float2(*reinterpret_cast<const __half2*>(&w));
  else return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xFFFF0000u));
}
// Two consecutive 16-bit query values as a word: one 32-bit load where `aligned` (p
// 4-byte aligned), else two 16-bit loads (a query view at an odd 2-byte offset).
template <int KIND>
__device__ __forceinline__ uint32_t query_pair(const Bits<KIND>* p, bool aligned) {
  return aligned ? __ldg(reinterpret_cast<const uint32_t*>(p)) : (uint32_t)__ldg(p) | ((uint32_t)__ldg(p + 1) << 16);
}
// Two consecutive 16-bit metadata values (idx even) as floats, one 32-bit load.
template <int KIND>
__device__ __forceinline__ float2 meta_pair(const uint8_t* base, int idx) {
  return bits_pair<KIND>(*reinterpret_cast<const uint32_t*>(base + 2 * idx));
}


// One channel pair P of the per-block query operand: q' x ks rounded to an fp16 hi
// pair and its fp16 remainder lo (the key scale folds into the query; one rounding of it
// would cost the whole fp16 error budget), and q'.km added to dk by the pair's field
// position class pos / 2 (the q table holds q' x 2^(KF - pos); the caller scales dk
// back). Where q' ks 2^(KF-pos) is so small that lo is an fp16 subnormal, hi + lo is
// still within 2^-25 of it, i.e. within 2^(pos-KF-25) <= 2^-23 of q' ks: far below the
// score error of an fp16 attention.
// e: the pair's index within its word (mod PW), a constant once unrolled. e_alt >= 0: the
// pair's index is e_alt instead where `alt` (a lane-dependent choice between two constant
// field classes: the H4 kernel at D = 64, whose half quarters split a word).
template <int KIND, int BITS>
__device__ __forceinline__ void round_query_pair(float2 qv, const uint8_t* ks, const uint8_t* km, int P, int e,
                                                 uint32_t& hi, uint32_t& lo, float (&dk)[5], int e_alt = -1,
                                                 bool alt = false) {
  const float2 sv = meta_pair<KIND>(ks, 2 * P), mv = meta_pair<KIND>(km, 2 * P);
  const float px = qv.x * sv.x, py = qv.y * sv.y;
  hi = dev::pack_half2(px, py);
  const float2 pr = __half22float2(*reinterpret_cast<const __half2*>(&hi));
  lo = dev::pack_half2(px - pr.x, py - pr.y);
  const int cls = KeyPos<BITS>::pos(e % KeyPos<BITS>::PW) / 2;  // 2 bits: 0-4; 4 bits: 0, 2
  if (e_alt < 0) {
    dk[cls] = fmaf(qv.x, mv.x, fmaf(qv.y, mv.y, dk[cls]));
  } else {
    const int cls_alt = KeyPos<BITS>::pos(e_alt % KeyPos<BITS>::PW) / 2;
    const float x = fmaf(qv.x, mv.x, qv.y * mv.y);
    dk[cls] += alt ? 0.0f : x;
    dk[cls_alt] += alt ? x : 0.0f;
  }
}

// q'.km from its per-field-position sums (class c: the q table's 2^(KF - 2c)); only
// the classes a width uses, so that no sum of zeros is left to the compiler.
template <int BITS>
__device__ __forceinline__ float field_scaled_sum(const float (&dk)[5]) {
  constexpr int KF = KeyPos<BITS>::KF;
  float sum = 0.0f;
#pragma unroll
  for (int c = 0; c < 5; ++c) {
    if (KeyPos<BITS>::class_used(c)) sum = fmaf(dk[c], __int_as_float((127 + 2 * c - KF) << 23), sum);
  }
  return sum;
}

// mma.m16n8k16 with fp32 accumulation on the cache's 16-bit type.
template <int KIND>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (KIND == 1) dev::mma_f16_16816(d, a, b0, b1);
  else dev::mma_bf16_16816(d, a, b0, b1);
}

// Sinks and residual window (the extra split of each (sequence, KV head, pass)) on the
// tensor cores. The CTA's 128 threads copy up to `buf_tokens` full-precision K and V rows
// into shared memory with one round of 16-byte asynchronous copies (16-byte pieces
// swizzled by the row's low 3 bits, so that ldmatrix reads 8 rows without bank
// conflicts). Then every warp computes the scores of all the pass's heads over all the
// rows, S^T = K x Q^T (16 rows x 8 heads a tile, q's raw 16-bit values as the B operand,
// the softmax scale applied to the fp32 scores), and the output for its quarter of the
// channels, O^T = V^T x P^T, with P as a 16-bit hi + lo pair (two mmas: P's rounding to
// 16 bits would cost as much as the whole error budget of a bf16 attention). The scores
// are recomputed by each warp rather than shared: 8 mmas a 16-row tile at D = 128, no
// barrier. Until session 16 this split ran on CUDA cores, a warp per head in 8-row
// batches with 5 shuffle rounds each (10-14 us a CTA under the packed CTAs' load); on the
// H100 the tensor-core version made the bar shape's step 6-10% faster at 1K-4K (B=8).
// Writes each head's last partial slot.
template <int KIND, int D>
__device__ __forceinline__ void fp_split(const DecodeArgs& a, const SplitParams& sp, int b, int kvh, int h0, int nh,
                                         uint8_t* buf, int buf_tokens, int warp, int lane) {
  constexpr int CHUNKS = D * 2 / 16;    // 16-byte pieces of a row (2-byte elements)
  constexpr int KS = D / 16;            // k steps of a score tile
  constexpr int MTW = D / 16 / kWarps;  // 16-channel tiles of the output per warp
  constexpr int TG = 2;                 // 16-row tiles per online-softmax step (4 perturbed the
                                        // packed loops' registers: a spill in the outlier kernel)
  static_assert(CHUNKS >= 8 && MTW >= 1, "the swizzle and the channel split need D >= 64");
  const int g = lane >> 2, t = lane & 3;
  const float qscale = a.sm_scale * kLog2e;
  const int64_t bh = (int64_t)b * a.Hkv + kvh;
  const int v_off = buf_tokens * D * 2;  // V rows after the K rows
  const uint32_t k_s = static_cast<uint32_t>(__cvta_generic_to_shared(buf)), v_s = k_s + v_off;
  // Rows [0, rows) from global memory; row r's source is (sink row, window row) = src(r).
  auto copy_rows = [&](int rows, auto&& src) {
    for (int i = threadIdx.x; i < rows * CHUNKS; i += kWarps * 32) {
      const int r = i / CHUNKS, part = i % CHUNKS;
      int64_t row;
      const bool sink = src(r, row);
      const int64_t off = row * D * 2 + part * 16;
      const int dst = (r * CHUNKS + (part ^ (r & 7))) * 16;
      dev::cp_async_16(buf + dst, static_cast<const uint8_t*>(sink ? a.k_sink : a.k_resid) + off, true);
      dev::cp_async_16(buf + v_off + dst, static_cast<const uint8_t*>(sink ? a.v_sink : a.v_resid) + off, true);
    }
    dev::cp_async_commit();
  };
  // V rows [r0, r1) set to zero (rows that are not tokens: a zero probability times
  // whatever they hold could be NaN in the mma).
  auto zero_v_rows = [&](int r0, int r1) {
    for (int i = threadIdx.x; i < (r1 - r0) * CHUNKS; i += kWarps * 32)
      *reinterpret_cast<uint4*>(buf + v_off + ((int64_t)r0 * CHUNKS + i) * 16) = make_uint4(0u, 0u, 0u, 0u);
  };
  // Every sink and window row fits (the common case: a 64-token window): all of them are
  // copied in one round, sinks at rows [0, s_cap), the window at [s_cap, s_cap + r_cap),
  // valid or not (the tensors hold them all), before the lengths are read, so that the
  // CTA waits for one memory round trip instead of two (its start is on the step's
  // critical path at short L).
  const bool one_round = a.s_cap + a.r_cap <= buf_tokens;
  if (one_round)
    copy_rows((int)(a.s_cap + a.r_cap), [&](int r, int64_t& row) {
      const bool sink = r < a.s_cap;
      row = sink ? bh * a.s_cap + r : bh * a.r_cap + (r - a.s_cap);
      return sink;
    });

  // The B operand of the scores: q of head g (the lane's mma column; zero past nh) at
  // channels 16 ks + 2t, +1 and 16 ks + 8 + 2t, +1, raw (the scale goes on the fp32
  // scores). Loaded while the rows are in flight.
  uint32_t qf[KS][2];
  {
    const bool q_words = (reinterpret_cast<uintptr_t>(a.q) & 3) == 0;  // else two 16-bit loads a pair
    const Bits<KIND>* qh = static_cast<const Bits<KIND>*>(a.q) + ((int64_t)b * a.Hq + h0 + (g < nh ? g : 0)) * D + 2 * t;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        qf[ks][j] = query_pair<KIND>(qh + 16 * ks + 8 * j, q_words);
      }
    if (g >= nh) {
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) qf[ks][0] = qf[ks][1] = 0u;
    }
  }
  const int64_t slen = a.sink_len != nullptr && a.s_cap > 0 ? max((int64_t)0, min((int64_t)a.sink_len[b], a.s_cap)) : 0;
  const int64_t rlen = a.r_cap > 0 ? max((int64_t)0, min((int64_t)a.resid_len[b], a.r_cap)) : 0;
  const int64_t total = slen + rlen;  // fp token f: sink row f, then residual row f - slen
  const int64_t cols = a.mass_cols();
  float* lg = a.logits != nullptr ? a.logits + ((int64_t)b * a.Hq + h0) * cols : nullptr;  // H2O mass

  // Running state of the lane's two head columns 2t, 2t + 1 (the same in every warp) and
  // its output fragments: o[ct] = (channel 16 c + g, heads 2t, 2t + 1), (channel + 8, ...)
  // with c = warp * MTW + ct.
  float m_run[2] = {-INFINITY, -INFINITY}, l_part[2] = {0.0f, 0.0f};
  float o[MTW][4];
#pragma unroll
  for (int ct = 0; ct < MTW; ++ct) o[ct][0] = o[ct][1] = o[ct][2] = o[ct][3] = 0.0f;

  // Attends rows [0, rows) of the buffer: row r is a token if r < va or vb0 <= r < vb1;
  // its mass column is r + (r < ca ? cb1 : cb2). The V rows from `rows` up to the next
  // multiple of 16 and those of non-tokens are zero.
  auto attend = [&](int rows, int va, int vb0, int vb1, int64_t ca, int64_t cb1, int64_t cb2) {
    const int ntiles = (rows + 15) >> 4;
    for (int t0 = 0; t0 < ntiles; t0 += TG) {
      float s[TG][4];
#pragma unroll
      for (int i = 0; i < TG; ++i) {
        s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
        if (t0 + i < ntiles) {
          const int r = (t0 + i) * 16 + (lane & 7) + (lane & 8);  // matrices: rows 0-7, 8-15 x channels +0, +8
#pragma unroll
          for (int ks = 0; ks < KS; ++ks) {
            uint32_t kf[4];
            dev::ldmatrix_x4(kf, k_s + (r * CHUNKS + ((2 * ks + (lane >> 4)) ^ (r & 7))) * 16);
            mma_16816<KIND>(s[i], kf, qf[ks][0], qf[ks][1]);
          }
        }
      }
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int i = 0; i < TG; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = (t0 + i) * 16 + g + 8 * (e >> 1);
          const bool tok = t0 + i < ntiles && (r < va || (r >= vb0 && r < vb1));
          s[i][e] = tok ? s[i][e] * qscale : -INFINITY;
          const int h = 2 * t + (e & 1);
          if (lg != nullptr && tok && h < nh) lg[h * cols + r + (r < ca ? cb1 : cb2)] = s[i][e];
          mx[e & 1] = fmaxf(mx[e & 1], s[i][e]);
        }
      float m_use[2];
#pragma unroll
      for (int c = 0; c < 2; ++c) {
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) mx[c] = fmaxf(mx[c], __shfl_xor_sync(0xffffffffu, mx[c], off));
        const float m_new = fmaxf(m_run[c], mx[c]);
        m_use[c] = m_new == -INFINITY ? 0.0f : m_new;  // no token yet: everything stays 0
        const float alpha = exp2f(m_run[c] - m_use[c]);
        m_run[c] = m_new;
        l_part[c] *= alpha;
#pragma unroll
        for (int ct = 0; ct < MTW; ++ct) {
          o[ct][c] *= alpha;
          o[ct][2 + c] *= alpha;
        }
      }
#pragma unroll
      for (int i = 0; i < TG; ++i) {
        if (t0 + i >= ntiles) continue;
        float p[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          p[e] = exp2f(s[i][e] - m_use[e & 1]);
          l_part[e & 1] += p[e];
        }
        // P^T fragments (rows = tokens g, g + 8; columns = heads 2t, 2t + 1) transposed
        // into the B operand (tokens 2t, 2t + 1 (+ 8); head g), as hi and lo parts.
        uint32_t hi[2], lo[2];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const uint32_t h = dev::pack2<KIND>(p[2 * j], p[2 * j + 1]);
          const float2 hv = bits_pair<KIND>(h);
          hi[j] = dev::movmatrix_trans(h);
          lo[j] = dev::movmatrix_trans(dev::pack2<KIND>(p[2 * j] - hv.x, p[2 * j + 1] - hv.y));
        }
        const int r = (t0 + i) * 16 + (lane & 7) + ((lane >> 1) & 8);  // rows 0-7, 8-15 (lanes 16-31)
#pragma unroll
        for (int ct = 0; ct < MTW; ++ct) {
          uint32_t vf[4];  // V^T: channels 16 c + (0-7, 8-15: lanes 8-15, 24-31) x the tile's rows
          dev::ldmatrix_x4_trans(vf, v_s + (r * CHUNKS + ((2 * (warp * MTW + ct) + ((lane >> 3) & 1)) ^ (r & 7))) * 16);
          mma_16816<KIND>(o[ct], vf, hi[0], hi[1]);
          mma_16816<KIND>(o[ct], vf, lo[0], lo[1]);
        }
      }
    }
  };

  // One pass over the rows when they all fit (copied above), else rounds of buf_tokens
  // fp tokens (one inlined copy of `attend` either way).
  const int64_t rounds = one_round ? 1 : (total + buf_tokens - 1) / buf_tokens;
  for (int64_t c = 0; c < rounds; ++c) {
    const int64_t f0 = c * buf_tokens;
    int rows, va, vb0, vb1;
    int64_t ca, cb1, cb2;
    if (one_round) {
      rows = (int)(a.s_cap + a.r_cap);
      dev::cp_async_wait<0>();
      __syncthreads();
      zero_v_rows((int)slen, (int)a.s_cap);
      zero_v_rows((int)(a.s_cap + rlen), (rows + 15) & ~15);
      va = (int)slen, vb0 = (int)a.s_cap, vb1 = (int)(a.s_cap + rlen);
      ca = a.s_cap, cb1 = 0, cb2 = a.t_cap;
    } else {
      rows = (int)min((int64_t)buf_tokens, total - f0);
      __syncthreads();  // every warp is done with the previous rows
      copy_rows(rows, [&](int r, int64_t& row) {
        const int64_t f = f0 + r;
        const bool sink = f < slen;
        row = sink ? bh * a.s_cap + f : bh * a.r_cap + (f - slen);
        return sink;
      });
      dev::cp_async_wait<0>();
      zero_v_rows(rows, (rows + 15) & ~15);
      va = rows, vb0 = vb1 = 0;
      ca = slen - f0, cb1 = f0, cb2 = f0 + a.s_cap + a.t_cap - slen;
    }
    __syncthreads();
    attend(rows, va, vb0, vb1, ca, cb1, cb2);
  }

  float l_sum[2];
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    l_sum[c] = l_part[c];
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) l_sum[c] += __shfl_xor_sync(0xffffffffu, l_sum[c], off);
  }
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    const int h = 2 * t + c;
    if (h >= nh) continue;
    const int64_t slot = ((int64_t)b * a.Hq + h0 + h) * sp.np + sp.np - 1;
    float* op = sp.ws_o + slot * D + 16 * warp * MTW + g;
#pragma unroll
    for (int ct = 0; ct < MTW; ++ct) {
      op[16 * ct] = o[ct][c];
      op[16 * ct + 8] = o[ct][2 + c];
    }
    if (warp == 0 && g == 0) {
      sp.ws_m[slot] = m_run[c];
      sp.ws_l[slot] = l_sum[c];
    }
  }
}

// ------------------------------------------------------------------------------------
// H4 (GQA groups of at most 4 heads, no corrections): the mma's N columns 4-7, padding
// otherwise, carry the lo half of q' x k_scale in the scores (so each lane holds and
// builds one fp16 operand set instead of hi and lo, and the score mmas halve) and, in P V,
// the probabilities of the odd value groups (so one P' operand serves two groups).
// Column c of a lane then belongs to head c & 3; the hi and lo score columns are summed
// across lanes t and t ^ 2, which afterwards hold the same scores.
template <int KIND, int BITS, int D, int G, int VG, bool CORR, bool H4, int CK = 1, int CV = 1>
__global__ void __launch_bounds__(kWarps * 32, (D <= 64 || (H4 && D <= 128) ? 16 : D <= 128 ? 12 : 8) / kWarps) decode_packed_kernel(DecodeArgs a, SplitParams sp) {
  // CORR && H4: sparse outliers only (no low rank, no attention mass; see h4_outliers).
  static_assert(!H4 || (D / 16) % KeyPos<BITS>::PW == 0 || D == 64,
                "H4 splits a lane's channel pairs at a word boundary (D = 64: mid-word, see round_query_pair)");
  using L = StageLayout<D, BITS, G, VG, TileShape<D, BITS, H4>::TT>;
  constexpr int TT = L::TT, MT = TileShape<D, BITS, H4>::MT, RB = L::RB, NG = L::NG, KT = D / 16;
  constexpr int KW = D * BITS / 128;  // key words per row and lane (a quarter of the row)
  constexpr int VPL = VG / 16;        // value codes per lane, group and half-word parity
  constexpr float SC = (float)(1 << BITS);
  // value-outlier sums in shared memory (see corr_cta_h4), else in global memory
  constexpr bool VO_SMEM = CORR && H4 && h4_value_sums_in_smem(D, BITS, CV);
  static_assert(!VO_SMEM || CV == 1, "two value outliers a token: sums in global memory");
  extern __shared__ __align__(16) uint8_t smem[];
  // q' of this pass's heads as float2 [D/2 channel pairs][8 heads] (index q_index):
  // the lanes of a warp read 8 heads of 4 pairs a quarter of the channels apart at once.
  float2* q_s = reinterpret_cast<float2*>(smem);
  uint8_t* stages = smem + kQBytes<D>;  // [kWarps][kStages][stage_bytes]
  CorrLayout cl;
  if constexpr (CORR) cl = corr_layout<D, BITS, G, VG, L::TT>(a, H4);
  using OL = H4OutlierLayout<D, BITS, G, VG, L::TT, CK, CV>;  // (CORR && H4; CK key, CV value outliers a token)
  static_assert(CK == 1 || (CK == 2 && CORR && H4), "two key outliers: the H4 outlier kernel only");
  static_assert(CV == 1 || (CV == 2 && CORR && H4), "two value outliers: the H4 outlier kernel only");
  const int stage_bytes = L::BYTES + (CORR && H4 ? OL::BYTES : cl.bytes);  // (H4: a constant, as the offsets)

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  // The CTA's unit and split from the three-phase 1-D grid (see SplitParams).
  // (32-bit: the launch checks that the grid fits in int32.)
  const unsigned units = (unsigned)(a.B * a.Hkv * sp.passes);
  unsigned unit, idx = blockIdx.x;
  int split;
  const unsigned nbig_ctas = units * (unsigned)sp.nbig, fp_at = (unsigned)sp.fp_at;
  if (idx >= fp_at && idx < fp_at + units) {
    unit = idx - fp_at;
    split = sp.nsplit;
  } else {
    if (idx >= fp_at + units) idx -= units;  // (past the full-precision phase)
    if (idx < nbig_ctas) {
      unit = idx % units;
      split = (int)(idx / units);
    } else {
      idx -= nbig_ctas;
      unit = idx % units;
      split = sp.nbig + (int)(idx / units);
    }
  }
  const int pass = (int)(unit % (unsigned)sp.passes), kvh = (int)(unit / (unsigned)sp.passes % (unsigned)a.Hkv);
  const int b = (int)(unit / (unsigned)sp.passes / (unsigned)a.Hkv);
  const int gq = a.Hq / a.Hkv;
  const int h0 = kvh * gq + pass * kHeadsPerPass;
  const int nh = min(kHeadsPerPass, gq - pass * kHeadsPerPass);
  const int64_t tl_rec = (int64_t)a.B * a.Hq + blockIdx.x;
  if (threadIdx.x == 0) timeline_stamp(a.timeline, tl_rec, 0);
  // Every CTA has started: the merge kernel (launched as a programmatic dependent) may
  // now be scheduled; it waits for this grid's completion before reading anything.
  dev::launch_dependents();
  if (split == sp.nsplit) {  // the last split: sinks and residual window
    // (rows of 4 * D bytes, K and V; the merge's share alone holds >= 32)
    const int buf_bytes = (int)stage_area_bytes(D, stage_bytes);
    fp_split<KIND, D>(a, sp, b, kvh, h0, nh, stages, buf_bytes / (4 * D) / 16 * 16, warp, lane);
    if (threadIdx.x == 0) timeline_stamp(a.timeline, tl_rec, 6);
    return;
  }

  // This pass's query words (zeros pad the unused heads), loaded before anything else
  // reads memory, so that their latency overlaps the length's and the first stages' (a
  // CTA's start is on the critical path in the last wave; a loop with one load per
  // iteration made this ~4 round trips, 3-5 us under load). Scaled into the table below.
  constexpr int QPT = kHeadsPerPass * D / 2 / (kWarps * 32);  // channel pairs per thread
  static_assert(QPT * kWarps * 32 == kHeadsPerPass * D / 2, "q table split");
  uint32_t qw[QPT];
  {
    // A thread's head is the same for every u (kWarps * 32 is a multiple of 8); a padding
    // head (h >= nh) loads head 0's pairs and zeroes them, so that no load sits in its
    // own branch: with per-load branches ptxas serialised the round trips (ncu, session 10).
    static_assert(kWarps * 32 % kHeadsPerPass == 0, "one head per thread");
    const bool q_words = (reinterpret_cast<uintptr_t>(a.q) & 3) == 0;  // else two 16-bit loads a pair
    const int hq = (int)threadIdx.x % kHeadsPerPass;
    const Bits<KIND>* qh = static_cast<const Bits<KIND>*>(a.q) + ((int64_t)b * a.Hq + h0 + (hq < nh ? hq : 0)) * D +
                           2 * ((int)threadIdx.x / kHeadsPerPass);
    constexpr int QSTEP = kWarps * 32 / kHeadsPerPass * 2;  // elements between a thread's pairs
    if (q_words) {  // (two loops: the branch stays out of the loads)
#pragma unroll
      for (int u = 0; u < QPT; ++u) qw[u] = query_pair<KIND>(qh + u * QSTEP, true);
    } else {
#pragma unroll
      for (int u = 0; u < QPT; ++u) qw[u] = query_pair<KIND>(qh + u * QSTEP, false);
    }
    if (hq >= nh) {
#pragma unroll
      for (int u = 0; u < QPT; ++u) qw[u] = 0u;
    }
  }

  int64_t n = min((int64_t)a.packed_len[b], a.t_cap);
  n = n < 0 ? 0 : n - n % G;
  const bool big = split < sp.nbig;
  const int tiny_k = split - sp.nbig - sp.nsmall;  // >= 0: a tiny CTA
  const int64_t cta_size = big ? sp.chunk : tiny_k >= 0 ? sp.tiny_chunk : sp.small_chunk;
  const int64_t cta_begin = big ? (int64_t)split * sp.chunk
                            : tiny_k >= 0 ? sp.tiny_at + (int64_t)tiny_k * sp.tiny_chunk
                                          : sp.nbig * sp.chunk + (int64_t)(split - sp.nbig) * sp.small_chunk;
  const int64_t cta_end = min(cta_begin + cta_size, n);

  const int64_t bh = (int64_t)b * a.Hkv + kvh;
  const uint8_t* kc_g = a.k_codes + bh * a.t_cap * RB;
  const uint8_t* vc_g = a.v_codes + bh * a.t_cap * RB;
  const uint8_t* ks_g = static_cast<const uint8_t*>(a.k_scale) + bh * (a.t_cap / G) * D * 2;
  const uint8_t* km_g = static_cast<const uint8_t*>(a.k_mn) + bh * (a.t_cap / G) * D * 2;
  const uint8_t* vs_g = static_cast<const uint8_t*>(a.v_scale) + bh * a.t_cap * NG * 2;
  const uint8_t* vm_g = static_cast<const uint8_t*>(a.v_mn) + bh * a.t_cap * NG * 2;
  uint8_t* my_stages = stages + (size_t)warp * kStages * stage_bytes;

  // The warps split the CTA's tokens below n evenly, in whole stages: a CTA that n cuts
  // short (its unit's last) would otherwise leave its last warps idle.
  const int64_t cta_tokens = cta_end > cta_begin ? cta_end - cta_begin : 0;
  const int64_t wchunk = (cta_tokens + kWarps * TT - 1) / (kWarps * TT) * TT;
  const int64_t w_begin = cta_begin + warp * wchunk;
  const int64_t w_end = min(w_begin + wchunk, cta_end);
  const int ntiles = w_end > w_begin ? (int)((w_end - w_begin + TT - 1) / TT) : 0;
  // Stage copies: the cache is read once a step, so its lines go first from L2, before
  // the partials, the value-outlier sums and whatever the caller reads next (H100, B=8 2-bit:
  // plain 32K 71.3 -> 70.0 us, 128K 236.5 -> 234.8; one outlier a side 128K 275.9 -> 270.2).
  const unsigned long long stage_policy = dev::l2_evict_first_policy();
  auto cp_stage = [&](void* dst, const void* src, bool pred) { dev::cp_async_16_hint(dst, src, pred, stage_policy); };
  // The corrections kernels step through their tokens with 32-bit positions instead (n <
  // 2^31: packed_len is int32), the next tile's passed to issue_at: with the 64-bit index
  // form ptxas spilled in their loops (H100, 2-bit 32K: K2 V1 96 -> 92-93 us, one outlier
  // a side 89.5 -> 88.4-88.9). The plain kernels keep the index form: 32-bit positions
  // there made 2-bit 32K ~1% slower (bench/PERF-NOTES.md, session 14).
  uint32_t w_begin32 = (uint32_t)min(w_begin, n), w_end32 = (uint32_t)max(w_end, (int64_t)0);
  // Dynamic tiles (SplitParams::static_tiles): the warp's static run of max(2, R) tiles,
  // then runs of R tiles by ticket up to n (the loop below).
  constexpr bool DYN = CORR && H4 && h4_dynamic_tiles(D, BITS, G, TT, CV);
  const bool dyn = DYN && sp.static_tiles > 0;
  if (dyn) {
    const int run0 = max(2, sp.tile_run_mask + 1);
    w_begin32 = (uint32_t)min((int64_t)(run0 * (split * kWarps + warp)) * TT, n);
    w_end32 = (uint32_t)n;
  }

  constexpr int KVC = TT * RB / 16;             // 16-byte chunks of codes per stage (a multiple of 32)
  constexpr int KSC = L::NKB * D * 2 / 16;      // of key scales (<= 32)
  constexpr int VSC = TT * NG * 2 / 16;         // of value scales (<= 32)
  static_assert(KVC % 32 == 0 && KSC <= 32 && VSC <= 32, "stage chunk counts");
  // Corrections of a stage: `rows` token rows from t0 and `kblocks` key blocks are in
  // memory, the rest is zero-filled (16-byte chunks never straddle that boundary: t0 and
  // t_cap are multiples of 32 tokens).
  auto copy_part = [&](uint8_t* dst, const uint8_t* src, int64_t first, int unit_bytes, int units, int valid) {
    const int n = units * unit_bytes / 16, n_ok = valid * unit_bytes;
#pragma unroll 1
    for (int c = lane; c < n; c += 32) {
      const bool ok = c * 16 < n_ok;
      cp_stage(dst + c * 16, ok ? src + first * unit_bytes + c * 16 : src, ok);
    }
  };
  auto issue_corrections = [&](uint8_t* st, int64_t t0, int rows) {
    if (a.k_outliers > 0) {
      const int c = a.k_outliers;
      copy_part(st + cl.koi, a.k_out_idx + bh * a.t_cap * c, t0, c, TT, rows);
      copy_part(st + cl.kor, static_cast<const uint8_t*>(a.k_out_res) + bh * a.t_cap * c * 2, t0, 2 * c, TT, rows);
    }
    if (a.v_outliers > 0) {
      const int c = a.v_outliers;
      copy_part(st + cl.voi, a.v_out_idx + bh * a.t_cap * c, t0, c, TT, rows);
      copy_part(st + cl.vor, static_cast<const uint8_t*>(a.v_out_res) + bh * a.t_cap * c * 2, t0, 2 * c, TT, rows);
    }
    if (a.k_rank > 0)
      copy_part(st + cl.kla, reinterpret_cast<const uint8_t*>(a.k_lr_a + bh * a.t_cap * a.k_rank), t0, 2 * a.k_rank,
                TT, rows);
    if (a.v_rank > 0)
      copy_part(st + cl.vla, reinterpret_cast<const uint8_t*>(a.v_lr_a + bh * a.t_cap * a.v_rank), t0, 2 * a.v_rank,
                TT, rows);
  };
  // H4: the four outlier sections of a stage (OL) as 3 (CK + CV) TT / 16 chunks of 16
  // bytes, one per lane (TT <= 64); a side without outliers is zero-filled. Lane q's
  // source at token 0 is worked out once (osrc_s: the 16-byte aligned address, log2 of its
  // bytes per token in bits 0-1, bit 3 (kOutPresent) set if the side is present; an absent side's
  // address is a.k_codes, never read), so a whole stage costs a load, a multiply-add and
  // the copy. Past 32 chunks (36 for CK + CV = 3 at TT = 64, 48 for 4), lane l < kOut2 also
  // copies chunk 32 + l, a value-residual chunk: 36 chunks, the one kOut2 after lane
  // 32 - kOut2 + l's (whose source it reads and advances); 48 chunks, from its own second
  // source (osrc2_s, h4_second_source_table).
  constexpr int kOutChunks = 3 * (CK + CV) * TT / 16;
  constexpr int N1 = CK * TT / 16, N2 = 3 * CK * TT / 16, N3 = N2 + CV * TT / 16;  // chunks before KOR, VOI, VOR
  constexpr int kOut2 = kOutChunks > 32 ? kOutChunks - 32 : 0;
  constexpr bool kOwn2 = h4_second_source_table(TT, CK, CV);  // second sources in a table of their own
  // (CK = CV = 1 keeps the encoding it was measured with: bit 0 for the size, bit 1 present)
  constexpr bool kOneEach = CK == 1 && CV == 1;
  constexpr unsigned long long kOutShift = kOneEach ? 1ull : 3ull, kOutPresent = kOneEach ? 2ull : 8ull;
  static_assert(kOut2 <= 32 && (kOwn2 || 32 - kOut2 >= N3), "second chunks come from value-residual lanes");
  static_assert(!kOwn2 || 32 >= N3, "second chunks are value residuals");
  auto out_chunk = [&]() { return lane - (lane < N1 ? 0 : lane < N2 ? N1 : lane < N3 ? N2 : N3); };  // within its section
  unsigned long long* osrc_s = nullptr;
  unsigned long long* osrc2_s = nullptr;  // (kOwn2)
  uint8_t* corr_base = smem + kQBytes<D> + stage_area_bytes(D, stage_bytes);
  if constexpr (CORR && H4) {
    // (corr_cta_h4 with a.bits, equal to BITS: the form whose SASS was measured; with BITS
    // ptxas allocates the one-key-outlier kernel differently)
    osrc_s = reinterpret_cast<unsigned long long*>(reinterpret_cast<float*>(corr_base) + corr_cta_h4(D, a.bits, G, false, CV).osrc) +
             warp * 32 + lane;
    if (lane < kOutChunks) {
      const int q = lane;
      const bool key = q < N2;
      const bool res = key ? q >= N1 : q >= N3;
      const uint8_t* src = key ? (res ? static_cast<const uint8_t*>(a.k_out_res) : a.k_out_idx)
                               : (res ? static_cast<const uint8_t*>(a.v_out_res) : a.v_out_idx);
      const bool present = (key ? a.k_outliers : a.v_outliers) > 0;
      const int sh = (res ? 1 : 0) + ((key ? CK : CV) == 2 ? 1 : 0);  // log2 of the bytes per token
      *osrc_s = present ? reinterpret_cast<unsigned long long>(src + bh * a.t_cap * (1 << sh) + out_chunk() * 16) |
                              kOutPresent | (unsigned)sh
                        : reinterpret_cast<unsigned long long>(a.k_codes);
    }
    if constexpr (kOwn2) {
      osrc2_s = reinterpret_cast<unsigned long long*>(reinterpret_cast<float*>(corr_base) +
                                                      corr_cta_h4(D, a.bits, G, true, CV).osrc2) +
                warp * 32 + lane;
      if (lane < kOut2) {  // value-residual chunk 32 + lane - N3 (4 bytes a token)
        *osrc2_s = a.v_outliers > 0 ? reinterpret_cast<unsigned long long>(static_cast<const uint8_t*>(a.v_out_res) +
                                                                           bh * a.t_cap * 4 + (32 + lane - N3) * 16) |
                                          kOutPresent | 2ull
                                    : reinterpret_cast<unsigned long long>(a.k_codes);
      }
    } else if constexpr (kOut2 > 0) {
      __syncwarp();  // lanes l < kOut2 read lane 32 - kOut2 + l's source
    }
  }
  // A whole stage in memory (the common case): a present side copies, an absent one
  // writes zeros (src-size 0).
  auto issue_outliers_h4_full = [&](uint8_t* sl, int64_t t0) {
    auto copy = [&](uint8_t* dst, unsigned long long w, unsigned long long advance) {
      const uint32_t unit = kOneEach ? 1u + ((uint32_t)w & 1u) : 1u << ((uint32_t)w & 3u);  // bytes per token (t0 < 2^31)
      cp_stage(dst, reinterpret_cast<const uint8_t*>(dev::mad_wide_u32((uint32_t)t0, unit, (w & ~15ull) + advance)),
               (w & kOutPresent) != 0ull);
    };
    if (lane < kOutChunks) copy(sl + OL::KOI, *osrc_s, 0ull);  // (written by this lane)
    if constexpr (kOwn2) {
      if (lane < kOut2) copy(sl + OL::KOI + 32 * 16, *osrc2_s, 0ull);  // (written by this lane)
    } else if constexpr (kOut2 > 0) {
      if (lane < kOut2) copy(sl + OL::KOI + 32 * 16, osrc_s[32 - kOut2], kOut2 * 16ull);
    }
  };
  auto issue_outliers_h4 = [&](uint8_t* st, int64_t t0, int rows) {
    auto copy = [&](int chunk, unsigned long long w, int in_section) {
      const int sh = (int)(w & kOutShift);
      const bool ok = (w & kOutPresent) != 0ull && in_section * 16 < (rows << sh);
      const uint8_t* src = ok ? reinterpret_cast<const uint8_t*>(w & ~15ull) + (t0 << sh) : a.k_codes;
      cp_stage(st + OL::KOI + chunk * 16, src, ok);
    };
    if (lane < kOutChunks) copy(lane, *osrc_s, out_chunk());
    if constexpr (kOwn2) {
      if (lane < kOut2) copy(32 + lane, *osrc2_s, 32 + lane - N3);
    } else if constexpr (kOut2 > 0) {
      if (lane < kOut2) copy(32 + lane, osrc_s[32 - kOut2] + kOut2 * 16ull, 32 + lane - N3);
    }
  };
  // The copies of the tile at t0 into stage `st` (none if !valid).
  auto issue_at = [&](uint8_t* st, int64_t t0, bool valid) {
    if (valid) {
      if (t0 + TT <= a.t_cap) {
        // Common case, the whole stage exists in memory: lane-relative addresses with
        // constant offsets, no predicates.
        const uint8_t* kc = kc_g + t0 * RB + lane * 16;
        const uint8_t* vc = vc_g + t0 * RB + lane * 16;
        uint8_t* sl = st + lane * 16;
#pragma unroll
        for (int k = 0; k < KVC / 32; ++k) {
          cp_stage(sl + L::KC + k * 512, kc + k * 512, true);
          cp_stage(sl + L::VC + k * 512, vc + k * 512, true);
        }
        if (lane < KSC) {
          const int64_t kb = (t0 / G) * D * 2 + lane * 16;
          cp_stage(sl + L::KS, ks_g + kb, true);
          cp_stage(sl + L::KM, km_g + kb, true);
        }
        if (lane < VSC) {
          const int64_t vb = t0 * NG * 2 + lane * 16;
          cp_stage(sl + L::VS, vs_g + vb, true);
          cp_stage(sl + L::VM, vm_g + vb, true);
        }
        if constexpr (CORR && H4) issue_outliers_h4_full(sl, t0);
        else if constexpr (CORR) issue_corrections(st, t0, TT);
        dev::cp_async_commit();
        return;
      }
      // Rows (and key blocks) that exist in memory; the rest are zero-filled.
      const int rows = (int)min((int64_t)TT, a.t_cap - t0);
      const int64_t kb0 = t0 / G;
      const int kblocks = (int)min((int64_t)L::NKB, a.t_cap / G - kb0);
      const uint8_t* kc = kc_g + t0 * RB;
      const uint8_t* vc = vc_g + t0 * RB;
      const uint8_t* ksb = ks_g + kb0 * D * 2;
      const uint8_t* kmb = km_g + kb0 * D * 2;
      const uint8_t* vsb = vs_g + t0 * NG * 2;
      const uint8_t* vmb = vm_g + t0 * NG * 2;
#pragma unroll
      for (int c = lane; c < TT * RB / 16; c += 32) {
        const bool ok = c * 16 / RB < rows;
        cp_stage(st + L::KC + c * 16, ok ? kc + c * 16 : kc_g, ok);
        cp_stage(st + L::VC + c * 16, ok ? vc + c * 16 : vc_g, ok);
      }
#pragma unroll
      for (int c = lane; c < L::NKB * D * 2 / 16; c += 32) {
        const bool ok = c * 16 / (D * 2) < kblocks;
        cp_stage(st + L::KS + c * 16, ok ? ksb + c * 16 : ks_g, ok);
        cp_stage(st + L::KM + c * 16, ok ? kmb + c * 16 : km_g, ok);
      }
#pragma unroll
      for (int c = lane; c < TT * NG * 2 / 16; c += 32) {
        const bool ok = c * 16 / (NG * 2) < rows;
        cp_stage(st + L::VS + c * 16, ok ? vsb + c * 16 : vs_g, ok);
        cp_stage(st + L::VM + c * 16, ok ? vmb + c * 16 : vm_g, ok);
      }
      if constexpr (CORR && H4) issue_outliers_h4(st, t0, rows);
      else if constexpr (CORR) issue_corrections(st, t0, rows);
    }
    dev::cp_async_commit();  // always, so group counting stays uniform
  };
  // Tile i of the warp's tokens (the plain kernels; see w_begin32 for the corrections').
  auto issue_tile = [&](int i) {
    issue_at(my_stages + (i % kStages) * stage_bytes, w_begin + (int64_t)i * TT, i < ntiles);
  };

  // The first stages' copies go out before the query table is built, so that their
  // memory latency and the query loads' overlap (a CTA's start is on the critical path
  // once per CTA: ~4 CTAs per slot at 32K tokens).
  if constexpr (CORR) {
    issue_at(my_stages, w_begin32, w_begin32 < w_end32);
    if constexpr (DYN) {  // (while the copies are in flight)
      if (dyn && lane == 0) {
        int* unit_tickets = sp.tile_ctr + unit * (unsigned)sp.tile_stride;
        dev::open_tickets(reinterpret_cast<unsigned long long*>(unit_tickets), unit_tickets + 2);
      }
    }
  } else {
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) issue_tile(s);
  }

  // Corrections: q' by channel (no field factor) for the outliers and the low-rank term.
  float* qo = nullptr;
  float* vo_w = nullptr;
  float* qb_w = nullptr;
  float* wl_s = nullptr;  // this warp's [32 lanes][2 heads][kMaxRank] value low-rank weights
  bool write_qo = false;
  float* mref_s = nullptr;  // VO_SMEM: this warp's reference maxima of its value-outlier sums, by head
                            // (2 bits: per lane in registers, mref)
  float* vo_l = nullptr;    // H4, 2 bits: this warp's value-outlier sums [D + 1][4 heads] in global memory (row D: a
                            // dump for indices >= D, never read)
  uint32_t vo_sl = 0u;      // H4, 4 bits: the same sums in shared memory (a 32-bit shared address)
  bool v_red = false;       // H4: this lane adds value outliers (value outliers given)
  if constexpr (CORR) {
    const CorrCta cc = H4 ? corr_cta_h4(D, a.bits, G, kOwn2, CV) : corr_cta(a, D, false);
    float* base = reinterpret_cast<float*>(corr_base);
    qo = base + cc.qo;
    vo_w = base + cc.vo + warp * kHeadsPerPass * D;
    qb_w = base + cc.qb + warp * kHeadsPerPass * kMaxRank;
    wl_s = base + cc.wl + warp * 64 * a.v_rank;
    write_qo = cc.vo > cc.qo;
    if constexpr (H4) {
      mref_s = base + cc.mref + warp * 4;
      if (VO_SMEM && lane < 4) mref_s[lane] = -INFINITY;
      constexpr int QR = h4_qo_rows(D, BITS, G);
      if constexpr (QR > D)  // q' rows D.. are zero
        for (int k = threadIdx.x; k < (QR - D) * 4; k += kWarps * 32) qo[D * 4 + k] = 0.0f;
      if constexpr (VO_SMEM) {
        if (a.v_outliers > 0) {  // zeroed here; the CTA barrier below orders it before the first add
          float4* vs = reinterpret_cast<float4*>(base + cc.vo) + warp * (D + 1);
          for (int k = lane; k < D + 1; k += 32) vs[k] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
          vo_sl = (uint32_t)__cvta_generic_to_shared(reinterpret_cast<float*>(vs) + ((2 * t) & 3));
          v_red = true;
        }
      } else if (a.v_outliers > 0) {  // zeroed here; the CTA barrier below orders it before the first red
        float* vo_g = sp.ws_vo + (((int64_t)unit * sp.nsplit + split) * kWarps + warp) * value_outlier_warp_floats(D);
        vo_l = vo_g;
        v_red = true;
#pragma unroll
        for (int k = 0; k < D / 32; ++k)
          __stcg(reinterpret_cast<float4*>(vo_g) + lane + 32 * k, make_float4(0.0f, 0.0f, 0.0f, 0.0f));
      }
    } else {
#pragma unroll 1
      for (int i = lane; i < 64 * a.v_rank; i += 32) wl_s[i] = 0.0f;
#pragma unroll 4
      for (int i = lane; i < (cc.qb - cc.vo) / kWarps; i += 32) vo_w[i] = 0.0f;
    }
  }

  // Scaled queries of this pass's heads.
  const float qscale = a.sm_scale * kLog2e;
  {
#pragma unroll
    for (int u = 0; u < QPT; ++u) {
      const int i = threadIdx.x + u * kWarps * 32, h = i % kHeadsPerPass, pr = i / kHeadsPerPass;
      const float2 x = bits_pair<KIND>(qw[u]);  // zero bits: 0.0 in both types
      // times 2^(KF - pos) of the channel pair's key field (pair index within a word)
      const float f = KeyPos<BITS>::factor(pr % KeyPos<BITS>::PW);
      q_s[q_index<D>(pr, h)] = make_float2(f * qscale * x.x, f * qscale * x.y);
      if constexpr (CORR) {
        if constexpr (H4) {  // [256][4]: heads 0-3 (rows >= D are zeroed below), in the
                             // units of the score accumulator (1 / kScoreScale)
          if (h < 4) {
            qo[(2 * pr) * 4 + h] = (qscale / kScoreScale) * x.x;
            qo[(2 * pr + 1) * 4 + h] = (qscale / kScoreScale) * x.y;
          }
        } else if (write_qo) {
          qo[(2 * pr) * kHeadsPerPass + h] = qscale * x.x;
          qo[(2 * pr + 1) * kHeadsPerPass + h] = qscale * x.y;
        }
      }
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) timeline_stamp(a.timeline, tl_rec, 1);

  // Per-thread state. Heads of this lane's S/O columns: 2t and 2t+1.
  // o[mc] (mc = gr * VPL + k): rows g / g+8 hold channels gr*VG + 2(g*VPL + k) and +1 (see the value
  // mapping below), accumulated as sum_t b_t c 2^(P-24) with b_t = SC p_t vs_t.
  float o[KT][4];
#pragma unroll
  for (int mc = 0; mc < KT; ++mc) o[mc][0] = o[mc][1] = o[mc][2] = o[mc][3] = 0.0f;
  // P' operand sets: one per value group, or (H4) one per pair of groups, whose even
  // group takes columns 0-3 and odd group columns 4-7.
  constexpr int NS = H4 ? (NG >= 2 ? NG / 2 : 1) : NG;
  float cvm[NS][2];  // sum_t p_t vm_t per operand set, columns 2t and 2t+1 (this lane's tokens)
#pragma unroll
  for (int gr = 0; gr < NS; ++gr) {
    cvm[gr][0] = cvm[gr][1] = 0.0f;
  }
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  float vf[2] = {1.0f, 1.0f};  // VO_SMEM: 2^(m_use - m_ref) of columns 2t, 2t+1 (value outliers)
  // The 2-bit H4 outlier kernels (VO_PAIRS) take every probability relative to m_ref (the
  // column's first finite running max, +inf before it): p' = 2^(s - m_ref) = p vf goes
  // straight into the value-outlier sums, l and cvm (so these need no rescaling when the
  // running max grows, only at a rebase, and become relative to m_run in the epilogue),
  // and the P V operand takes fsc p' = SC p with fsc = SC 2^(m_ref - m_use), set where
  // m_run or m_ref change (the rescale branch). Against p = 2^(s - m_use) and p vf per
  // value-outlier row: 8 FMUL and the 4 instructions of m_use a stage fewer, and m_ref in
  // registers instead of shared memory (no load, store or warp barrier in the rescale).
  constexpr bool VO_PAIRS = CORR && H4 && !VO_SMEM;
  float mref[2] = {INFINITY, INFINITY};  // VO_PAIRS: m_ref of columns 2t, 2t+1
  float fsc[2] = {0.0f, 0.0f};           // VO_PAIRS: SC 2^(m_ref - m_use) (0 while m_ref is unset: p' = 0)
  // B fragments of the scaled queries for head g: qsb[e] holds channels 2P, 2P+1 with
  // P = t * D/8 + e (this lane's quarter of the channels), times 2^(KF - pos).
  // (H4: lanes g < 4 hold the hi half of head g, lanes g >= 4 the lo half of head g - 4.)
  uint32_t qsb[D / 8];
  uint32_t qsl[H4 ? 1 : D / 8];

  float cst[2] = {0.0f, 0.0f};  // per-block constant for heads 2t, 2t+1
  // PRMT selector of the value byte path when a lane's codes are one byte of a half:
  // byte (code index * BITS / 8) of both tokens' low halves (+ 0x2222: high halves).
  const uint32_t vsel_e = 0x4400u + 0x1111u * (((g * VPL) % (16 / BITS)) * BITS / 8);

  // ---- corrections (CORR only) --------------------------------------------------------
  // q'.B of a key block for the 8 heads: lane (head l/4, quarter l%4 of the channels),
  // then a quad sum; kept in the warp's qb_w[8][kMaxRank].
  auto key_lowrank_query = [&](const uint16_t* kb) {
    const int r = a.k_rank, hh = lane >> 2, qq = lane & 3;
    __syncwarp();  // the previous block's values have been read
#pragma unroll 1
    for (int j = 0; j < r; ++j) {  // one rank at a time: few live registers
      float acc = 0.0f;
#pragma unroll 4
      for (int d = qq * (D / 4); d < (qq + 1) * (D / 4); ++d)
        acc = fmaf(qo[d * kHeadsPerPass + hh], half_bits_to_float(__ldg(kb + d * r + j)), acc);
      acc += __shfl_xor_sync(0xffffffffu, acc, 1);
      acc += __shfl_xor_sync(0xffffffffu, acc, 2);
      if (qq == 0) qb_w[hh * kMaxRank + j] = acc;
    }
    __syncwarp();
  };
  // Score corrections of stage rows r0 = row and r0 + 8 (heads 2t, 2t+1), added to the
  // mma accumulator layout (c0, c1: row r0; c2, c3: row r0 + 8).
  auto key_corrections = [&](const uint8_t* st, int row, float (&acc)[4]) {
    const int c = a.k_outliers, r = a.k_rank;
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    auto outlier = [&](int j) {
      const int i0 = st[cl.koi + row * c + j], i1 = st[cl.koi + (row + 8) * c + j];
      float e0 = meta_at<KIND>(st + cl.kor, row * c + j), e1 = meta_at<KIND>(st + cl.kor, (row + 8) * c + j);
      e0 = i0 < D ? e0 : 0.0f;  // an index >= D is ignored
      e1 = i1 < D ? e1 : 0.0f;
      const float2 q0 = *reinterpret_cast<const float2*>(qo + (i0 & (D - 1)) * kHeadsPerPass + 2 * t);
      const float2 q1 = *reinterpret_cast<const float2*>(qo + (i1 & (D - 1)) * kHeadsPerPass + 2 * t);
      s0 = fmaf(q0.x, e0, s0); s1 = fmaf(q0.y, e0, s1);
      s2 = fmaf(q1.x, e1, s2); s3 = fmaf(q1.y, e1, s3);
    };
    if (c == 1) {  // the common case (about 1% of 64-128 channels) as straight-line code
      outlier(0);
    } else {
#pragma unroll 1
      for (int j = 0; j < c; ++j) outlier(j);
    }
#pragma unroll 1
    for (int j = 0; j < r; ++j) {
      const float a0 = meta_at<1>(st + cl.kla, row * r + j), a1 = meta_at<1>(st + cl.kla, (row + 8) * r + j);
      const float qb0 = qb_w[(2 * t) * kMaxRank + j], qb1 = qb_w[(2 * t + 1) * kMaxRank + j];
      s0 = fmaf(a0, qb0, s0); s1 = fmaf(a0, qb1, s1);
      s2 = fmaf(a1, qb0, s2); s3 = fmaf(a1, qb1, s3);
    }
    // (the accumulator is in units of 1 / kScoreScale)
    acc[0] = fmaf(s0, 1.0f / kScoreScale, acc[0]); acc[1] = fmaf(s1, 1.0f / kScoreScale, acc[1]);
    acc[2] = fmaf(s2, 1.0f / kScoreScale, acc[2]); acc[3] = fmaf(s3, 1.0f / kScoreScale, acc[3]);
  };
  // Value low-rank weights w[head][j] = sum_t p_t A[t][j] of the current block (this
  // lane's tokens, heads 2t and 2t+1) live in wl_s; folded into vo_w as w B^T at the
  // block's end.
  // Value corrections of the m-tile whose first token is tok (stage rows r0 = row and
  // r0 + 8 in this lane, probabilities p[0..3] in the accumulator layout): outliers
  // o[h][idx] += p res go to vo_w [D][8] by shared-memory atomics, one 64-bit
  // compare-and-swap per (token, heads 2t and 2t+1) (lanes of one head may hit
  // the same channel); low-rank weights accumulate in wlr.
  auto value_corrections = [&](const uint8_t* st, int row, bool ok0, bool ok1, const float (&p)[4], int64_t tok,
                               int64_t end) {
    const int c = a.v_outliers, r = a.v_rank;
    auto outlier = [&](int j) {
      const int i0 = st[cl.voi + row * c + j], i1 = st[cl.voi + (row + 8) * c + j];
      const float e0 = meta_at<KIND>(st + cl.vor, row * c + j), e1 = meta_at<KIND>(st + cl.vor, (row + 8) * c + j);
      if (ok0 && i0 < D) atomic_add_pair(vo_w + i0 * kHeadsPerPass + 2 * t, p[0] * e0, p[1] * e0);
      if (ok1 && i1 < D) atomic_add_pair(vo_w + i1 * kHeadsPerPass + 2 * t, p[2] * e1, p[3] * e1);
    };
    if (c == 1) {  // straight-line code for the common case
      outlier(0);
    } else {
#pragma unroll 1
      for (int j = 0; j < c; ++j) outlier(j);
    }
    if (r > 0) {
      float* w = wl_s + lane * 2 * r;  // this lane's own slots [2 heads][r]: no other lane writes them
#pragma unroll 1
      for (int j = 0; j < r; ++j) {
        const float a0 = ok0 ? meta_at<1>(st + cl.vla, row * r + j) : 0.0f;
        const float a1 = ok1 ? meta_at<1>(st + cl.vla, (row + 8) * r + j) : 0.0f;
        w[j] = fmaf(p[0], a0, fmaf(p[2], a1, w[j]));
        w[r + j] = fmaf(p[1], a0, fmaf(p[3], a1, w[r + j]));
      }
      // End of a key block, or of this warp's tokens: fold w B^T into vo_w (warp-uniform).
      const int64_t next = tok + 16;
      if (tok < end && (next % G == 0 || next >= end)) {  // (blocks past `end` may hold garbage B)
        const uint16_t* vb = a.v_lr_b + (bh * (a.t_cap / G) + (next - 1) / G) * D * r;
#pragma unroll 1
        for (int j = 0; j < r; ++j) {
          float x0 = w[j], x1 = w[r + j];  // sum over the 8 token lanes of heads 2t, 2t+1
#pragma unroll
          for (int off = 4; off < 32; off <<= 1) {
            x0 += __shfl_xor_sync(0xffffffffu, x0, off);
            x1 += __shfl_xor_sync(0xffffffffu, x1, off);
          }
          w[j] = w[r + j] = 0.0f;
          __syncwarp();
#pragma unroll 4
          for (int d = g; d < D; d += 8) {
            const float bv = half_bits_to_float(__ldg(vb + d * r + j));
            float2* o2 = reinterpret_cast<float2*>(vo_w + d * kHeadsPerPass + 2 * t);
            const float2 cur = *o2;
            *o2 = make_float2(fmaf(x0, bv, cur.x), fmaf(x1, bv, cur.y));
          }
          __syncwarp();
        }
      }
    }
  };

  // ---- H4 outliers (CORR && H4) -------------------------------------------------------
  // Lanes t and t ^ 2 hold the same heads (2t) & 3, +1 once the hi and lo columns are
  // summed; lane t < 2 takes stage row `row` = 16 m + g, lane t ^ 2 row 16 m + g + 8.
  // Scores: q'[idx] x residual for both heads, added to the lane's accumulator of its row
  // before the hi + lo sum (which then counts it once).
  // At most CK outliers a token in keys and one in values (h4_outliers); a side without
  // any reads the zero-filled section (index 0, residual 0) and adds nothing.
  // ob1 = stage + the lane's row in an m-tile (g, or g + 8 for t >= 2), ob2 = stage + twice
  // that (residuals are 2 bytes): every access is then a constant offset from one of them.
  // (qo_l: the shared-memory address of q'[0][(2t) & 3], so that a row costs one LEA)
  const uint32_t qo_l = CORR && H4 ? (uint32_t)__cvta_generic_to_shared(qo + ((2 * t) & 3)) : 0u;
  // CK = 2: the row's two indices are one 16-bit load (from ob2) and its two residuals one
  // 32-bit load (from ob4 = stage + 4 x the row).
  auto key_outliers_h4 = [&](const uint8_t* ob1, const uint8_t* ob2, const uint8_t* ob4, int m, float (&acc)[4]) {
    // q' by channel has rows >= D that are zero: an index >= D adds 0 (its residual
    // finite); with 256 rows (2 bits, D = 256) without a test, else clamped to row D
    constexpr int QR = h4_qo_rows(D, BITS, G);
    auto row_of = [](int i) { return QR == 256 ? i : min(i, D); };
    auto add = [&](int i, float e) {
      const float2 qv = dev::ld_shared_f32x2(qo_l + row_of(i) * 16);
      if (t < 2) {
        acc[0] = fmaf(qv.x, e, acc[0]); acc[1] = fmaf(qv.y, e, acc[1]);
      } else {
        acc[2] = fmaf(qv.x, e, acc[2]); acc[3] = fmaf(qv.y, e, acc[3]);
      }
    };
    if constexpr (CK == 1) {
      add((int)ob1[OL::KOI + 16 * m], meta_at<KIND>(ob2 + OL::KOR + 32 * m, 0));
    } else {
      const uint32_t iw = *reinterpret_cast<const uint16_t*>(ob2 + OL::KOI + 32 * m);
      const float2 e = bits_pair<KIND>(*reinterpret_cast<const uint32_t*>(ob4 + OL::KOR + 64 * m));
      add((int)(iw & 0xFFu), e.x);
      add((int)(iw >> 8), e.y);
    }
  };
  // Values: o[h][idx] += p x residual into the warp's [D + 1][4] sums (row D: a dump for
  // indices >= D, never read). The sums are kept relative to a per-head reference max
  // m_ref (p x 2^(m_use - m_ref); 2 bits: p' of VO_PAIRS), so that they need no rescaling
  // when the running max grows, only a rare rebase when it outgrows m_ref by more than 2^64
  // (see the softmax).
  // Rows past the warp's tokens (row >= lim) have p = 0 and may hold NaN residuals: they
  // add 0 instead of branching.
  // 2 bits: reductions into the sums in global memory (value_outliers_pair_h4 below).
  // 4 bits (VO_SMEM; value_outliers_h4 below, each lane its row's two heads): the sums are
  // in shared memory as 32-bit integers, head h's in units of 1 / vo_sc[h], added by native
  // integer atomics (red.shared.add.s32): the warp does not wait for them and the hardware
  // serialises lanes with the same address, so rows that share a channel need no match,
  // vote or turns. (Sessions 9-23 added floats by load-add-store, peers found by a match
  // taking turns: ~50 instructions a warp and m-tile; float atomics on shared memory are
  // compare-and-swap loops on sm_90; H200 measurements: bench/PERF-NOTES.md, session 24.)
  // Each head's scale follows a bound vo_ub[h] >= |each of its sums| in units: an add is
  // p 2^(m_use - m_ref) e = p vf e with p <= 1, so a stage adds at most 16 vf M to any sum,
  // M the largest lane's sum of |e| over its rows (a sum gets adds from the 16 lanes that
  // hold its head): one warp max a stage for all four heads (vo_fac[h] = 16 vf sc caches the
  // factor). A head's first nonzero stage sets its scale so that the bound is in [2^22,
  // 2^23) units (its sums still zero); where the bound reaches 2^30 units (int32 holds
  // 2^31) the head's sums are shifted right, rounding, so that it lies in [2^26, 2^27).
  // The headroom keeps the shifts rare (a warp's bound grows about as its stages, ~32 at
  // 32K; each shift ~60 instructions and two warp barriers): with [2^29, 2^30) after every
  // shift and a per-head maximum of p vf |e| (four warp maxima), the step was as slow as
  // the float sums (H200, session 24). A scale per head, because heads' sums can differ by
  // up to 2^64 (vf). Rounding an add errs by at most 2^-23 of the bound, a few times 2^-18
  // vf e for a warp's first stages (vs the fp16 output's 2^-11). A bound that is not finite
  // (inf or NaN residuals) makes the epilogue return NaN for the head, as float sums would.
  float vo_ub[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // VO_SMEM, by head (warp-uniform): the bound in units
  // the scale, a power of 2; inf until the head's first nonzero stage (its sums zero)
  float vo_sc[4] = {INFINITY, INFINITY, INFINITY, INFINITY};
  float vo_fac[4] = {0.0f, 0.0f, 0.0f, 0.0f}; // 16 vf sc (0 where vf = 0: padding heads, no scores yet)
  auto pow2i = [](int k) { return __int_as_float((k + 127) << 23); };  // 2^k, k in [-126, 127]
  auto exponent = [](float x) { return (int)((__float_as_uint(x) >> 23) & 0xFFu) - 127; };  // floor(log2 x) of x > 0
  auto vf_of_head = [&](int h) { return __shfl_sync(0xffffffffu, vf[h & 1], h >> 1); };  // (lanes 0, 1 hold heads 0-1, 2-3)
  auto value_outliers_h4 = [&](const uint8_t* ob1, const uint8_t* ob2, const float (&vp)[MT][2],
                               const bool (&row_ok)[MT]) {
    float e[MT], me = 0.0f;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      e[m] = meta_at<KIND>(ob2 + OL::VOR + 32 * m, 0);
      e[m] = row_ok[m] ? e[m] : 0.0f;
      me += fabsf(e[m]);
    }
    // (non-negative floats order as their bits, NaN above inf)
    const float M = __uint_as_float(__reduce_max_sync(0xffffffffu, __float_as_uint(me)));
    if (M != 0.0f) {  // (warp-uniform; NaN too: it poisons the bounds)
#pragma unroll
      for (int h = 0; h < 4; ++h) vo_ub[h] = fmaf(vo_fac[h], M, vo_ub[h]);  // (an unset head: inf)
      if (fmaxf(fmaxf(vo_ub[0], vo_ub[1]), fmaxf(vo_ub[2], vo_ub[3])) >= 0x1p30f) {  // rare: new scales
        int d[4];
        bool shift = false;
#pragma unroll
        for (int h = 0; h < 4; ++h) {
          d[h] = 0;
          const float vh = vf_of_head(h);
          if (!(vo_ub[h] >= 0x1p30f)) continue;
          if (vo_sc[h] == INFINITY) {  // the head's first nonzero stage
            const float b = 16.0f * vh * M;
            const int sx = min(max(22 - exponent(b), -126), 126);
            vo_sc[h] = pow2i(sx);
            vo_ub[h] = b * vo_sc[h];
            vo_fac[h] = 16.0f * vh * vo_sc[h];
          } else if (vo_ub[h] < INFINITY) {  // shift into [2^26, 2^27) (inf: poisoned, left so)
            const int sx = exponent(vo_sc[h]);
            d[h] = sx - max(sx - (exponent(vo_ub[h]) - 26), -126);
            const float f = pow2i(-d[h]);
            vo_sc[h] *= f;
            vo_ub[h] *= f;
            vo_fac[h] *= f;
            shift |= d[h] > 0;
          }
        }
        if (shift) {
          auto rshift = [](float x, int n) {  // the int32 in x's bits / 2^n, rounded
            const int v = __float_as_int(x);
            return __int_as_float(n <= 0 ? v : n > 31 ? 0 : ((v >> (n - 1)) + 1) >> 1);
          };
          __syncwarp();  // every lane's earlier adds are done
#pragma unroll
          for (int k = 0; k < D / 32; ++k) {
            const uint32_t pv = vo_sl - 4u * ((2 * t) & 3) + 16u * (lane + 32 * k);
            const float4 x = dev::ld_shared_f32x4(pv);
            dev::st_shared_f32x4(pv, make_float4(rshift(x.x, d[0]), rshift(x.y, d[1]), rshift(x.z, d[2]),
                                                 rshift(x.w, d[3])));
          }
          __syncwarp();
        }
      }
    }
    const bool odd = (t & 1) != 0;  // this lane's heads: 2, 3 (else 0, 1)
    const float fa = vf[0] * (odd ? vo_sc[2] : vo_sc[0]), fb = vf[1] * (odd ? vo_sc[3] : vo_sc[1]);
#pragma unroll
    for (int m = 0; m < MT; ++m) {  // (an unset scale: 0 x inf, NaN, converts to 0)
      const uint32_t addr = vo_sl + (uint32_t)min((int)ob1[OL::VOI + 16 * m], D) * 16u;  // index >= D: the dump row D
      dev::red_shared_add_s32(addr, __float2int_rn(vp[m][0] * (fa * e[m])));
      dev::red_shared_add_s32(addr + 4u, __float2int_rn(vp[m][1] * (fb * e[m])));
    }
  };
  // 2 bits: one float4 reduction a row (its 4 heads) into the sums in global memory (L2),
  // fire-and-forget. Lanes t and t ^ 2 hold the same probabilities, so the m-tiles go in
  // pairs: lanes t < 2 take m-tile 2k, lanes t >= 2 m-tile 2k + 1, lane t & 1 = 0 row g
  // and 1 row g + 8 (vrow), and each gets the other head pair of its row from lane t ^ 1
  // (two shuffles). Against the float2 reduction per lane and m-tile of sessions 9-18: as
  // many loop instructions, half the reductions, and half the same-address operations
  // when rows share a channel (H100, 2-bit 128K, skewed channels 0.79 -> 0.85x of plain;
  // random channels unchanged: the L2 cost follows the rows, one sector each).
  // pe, pa: p of m-tiles 2k and 2k + 1 (heads (2t) & 3, +1; row g in [0], [1], g + 8 in [2], [3]).
  // CV = 2: one reduction a slot (indices bytes 2 row + j, residuals one 32-bit load from
  // vb4 = stage + 4 x the row).
  auto value_outliers_pair_h4 = [&](const uint8_t* vb1, const uint8_t* vb2, const uint8_t* vb4, int k, bool row_ok,
                                    const float (&pe)[4], const float (&pa)[4]) {
    const bool second = t >= 2, odd = (t & 1) != 0;
    float q[4];  // (p' = p 2^(m_use - m_ref), see VO_PAIRS)
#pragma unroll
    for (int c = 0; c < 4; ++c) q[c] = second ? pa[c] : pe[c];
    // lane t & 1 = 0 holds heads 0, 1 of both rows, t & 1 = 1 heads 2, 3: send the other row's
    const float r0 = __shfl_xor_sync(0xffffffffu, odd ? q[0] : q[2], 1);
    const float r1 = __shfl_xor_sync(0xffffffffu, odd ? q[1] : q[3], 1);
    if constexpr (CV == 1) {
      const int i = min((int)vb1[OL::VOI + 32 * k], D);  // an index >= D goes to the dump row D
      float e = meta_at<KIND>(vb2 + OL::VOR + 64 * k, 0);
      e = row_ok ? e : 0.0f;
      const float4 v = make_float4((odd ? r0 : q[0]) * e, (odd ? r1 : q[1]) * e, (odd ? q[2] : r0) * e,
                                   (odd ? q[3] : r1) * e);
      float* row = reinterpret_cast<float*>(dev::mad_wide_u32(i, 16, reinterpret_cast<unsigned long long>(vo_l)));
      dev::red_add_f32x4(row, v, v_red);
    } else {
      const uint32_t iw = *reinterpret_cast<const uint16_t*>(vb2 + OL::VOI + 64 * k);
      const float2 er = bits_pair<KIND>(*reinterpret_cast<const uint32_t*>(vb4 + OL::VOR + 128 * k));
      const float4 u = make_float4(odd ? r0 : q[0], odd ? r1 : q[1], odd ? q[2] : r0, odd ? q[3] : r1);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int i = min((int)(j == 0 ? iw & 0xFFu : iw >> 8), D);  // an index >= D goes to the dump row D
        const float e = row_ok ? (j == 0 ? er.x : er.y) : 0.0f;
        float* row = reinterpret_cast<float*>(dev::mad_wide_u32(i, 16, reinterpret_cast<unsigned long long>(vo_l)));
        dev::red_add_f32x4(row, make_float4(u.x * e, u.y * e, u.z * e, u.w * e), v_red);
      }
    }
  };

  uint32_t t_cur = w_begin32;       // CORR: this stage's first token
  uint32_t t_next = w_begin32 + TT;  // CORR: the next stage's (dynamic tiles: the second static tile, then tickets)
  int ticket = 0;                    // dynamic tiles, lane 0: the ticket taken for the stage after the next
  for (int i = 0; CORR ? t_cur < w_end32 : i < ntiles; ++i) {
    dev::cp_async_wait<kStages - 2>();
    __syncwarp();
    if constexpr (CORR) {
      static_assert(kStages == 2, "one tile ahead");
      issue_at(my_stages + ((i + 1) % kStages) * stage_bytes, t_next, t_next < w_end32);
      if constexpr (DYN) {
        // A stage ahead of its use, so that the atomic's round trip hides behind this stage;
        // taken when the next stage is its run's last (runs of R tiles start at multiples of R).
        if (dyn && lane == 0 && t_next < w_end32 &&
            ((t_next / TT) & (uint32_t)sp.tile_run_mask) == (uint32_t)sp.tile_run_mask)
          ticket = dev::take_ticket(sp.tile_ctr + unit * (unsigned)sp.tile_stride + 2);  // (opened above)
      }
    } else {
      issue_tile(i + kStages - 1);
    }
    const uint8_t* st = my_stages + (i % kStages) * stage_bytes;
    const int64_t t0 = CORR ? (int64_t)t_cur : w_begin + (int64_t)i * TT;
    const int lim = CORR ? (int)min((uint32_t)TT, w_end32 - t_cur)
                         : (int)min((int64_t)TT, w_end - t0);  // valid rows of this stage
    // Whether stage row r holds a token of this warp. Where a key block spans whole stages
    // (G % TT == 0) every row does: n is cut to whole key blocks and the plan's chunks are
    // multiples of max(kWarps TT, G), so a warp's range is whole stages, and the masks (an
    // ISETP and the FSELs of scores, value scales and outliers) fold away: 2-bit D = 128
    // G = 64 stage loop 1235 -> 1159 instructions, one outlier a side 1514 -> 1452. (Not in
    // the general corrections kernel: without the masks ptxas spilled in three of its forms.)
    auto row_valid = [&](int r) { return (G % TT == 0 && (H4 || !CORR)) || r < lim; };
    const int orow = g + ((t >> 1) << 3);  // CORR && H4: the lane's outlier row in an m-tile
    const uint8_t* ob1 = st + orow;
    const uint8_t* ob2 = st + 2 * orow;
    // (2 bits: the lane's value-outlier row in a pair of m-tiles, see value_outliers_pair_h4)
    const int vrow = g + ((t & 1) << 3) + ((t >> 1) << 4);
    const uint8_t* vb1 = st + vrow;
    const uint8_t* vb2 = st + 2 * vrow;
    const uint8_t* vb4 = st + 4 * vrow;  // (CV = 2 only)
    const uint8_t* ob4 = st + 4 * orow;  // (CK = 2 only)

    // ---- scores S^T for the stage's MT m-tiles --------------------------------------
    // m-tiles of one key block share the qs fragments; for them the k loop is outer
    // and the m-tile loop inner, so MG independent mma chains interleave.
    constexpr int MG = MT < G / 16 ? MT : G / 16;
    float s[MT][4];
#pragma unroll
    for (int mg = 0; mg < MT; mg += MG) {
      const int64_t tok = t0 + 16 * mg;
      if ((i == 0 && mg == 0) || tok % G == 0) {
        // New key block: B fragments qs = q' * ks * 2^(KF-pos) (rounded to fp16 hi + lo)
        // and the block constant sum_d q'_d km_d.
        const int lb = TT >= G ? (16 * mg) / G : 0;
        const uint8_t* ks = st + L::KS + lb * D * 2;
        const uint8_t* km = st + L::KM + lb * D * 2;
        // The q table holds q' * 2^(KF-pos); dot_km is summed per field position (dk)
        // and scaled back once.
        float dk[5] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        if constexpr (H4) {
          // Lanes g and g ^ 4 share head g & 3 and quarter t: each rounds half of the
          // quarter's channel pairs to hi + lo, then they swap what the other keeps.
          constexpr int HE = D / 16;  // pairs per half quarter (a word's or more, but half a word at D = 64)
          constexpr bool MID = HE % KeyPos<BITS>::PW != 0;  // (the second half starts mid-word)
          const int half = g >> 2, hh = g & 3;
          const float2* q_lane = q_s + q_index<D>(t * (D / 8) + half * HE, hh);
          uint32_t mh[HE], ml[HE];
#pragma unroll
          for (int e = 0; e < HE; ++e) {
            round_query_pair<KIND, BITS>(q_lane[e * kHeadsPerPass], ks, km, t * (D / 8) + half * HE + e, e, mh[e], ml[e],
                                         dk, MID ? HE + e : -1, half != 0);
          }
#pragma unroll
          for (int e = 0; e < HE; ++e) {
            const uint32_t got = __shfl_xor_sync(0xffffffffu, half ? mh[e] : ml[e], 16);
            qsb[e] = half ? got : mh[e];
            qsb[e + HE] = half ? ml[e] : got;
          }
          float part = field_scaled_sum<BITS>(dk);
          part += __shfl_xor_sync(0xffffffffu, part, 1);
          part += __shfl_xor_sync(0xffffffffu, part, 2);
          part += __shfl_xor_sync(0xffffffffu, part, 16);  // sum q'.km of head hh, in all 8 of its lanes
          // Column c = 2t + u: head c & 3; the hi columns (t < 2) take the q'.km term.
          const float pc0 = __shfl_sync(0xffffffffu, part, ((2 * t) & 3) * 4);
          const float pc1 = __shfl_sync(0xffffffffu, part, ((2 * t + 1) & 3) * 4);
          cst[0] = t < 2 ? pc0 : 0.0f;
          cst[1] = t < 2 ? pc1 : 0.0f;
        } else {
          const float2* q_lane = q_s + q_index<D>(t * (D / 8), g);  // + e * 8: pair P = t * D/8 + e
#pragma unroll
          for (int e = 0; e < D / 8; ++e) {
            round_query_pair<KIND, BITS>(q_lane[e * kHeadsPerPass], ks, km, t * (D / 8) + e, e, qsb[e], qsl[e], dk);
          }
          float part = field_scaled_sum<BITS>(dk);
          part += __shfl_xor_sync(0xffffffffu, part, 1);
          part += __shfl_xor_sync(0xffffffffu, part, 2);  // sum q'.km of head g, in every lane of the quad
          cst[0] = __shfl_sync(0xffffffffu, part, (2 * t) * 4);
          cst[1] = __shfl_sync(0xffffffffu, part, (2 * t + 1) * 4);
        }
        if constexpr (CORR && !H4) {
          if (a.k_rank > 0) key_lowrank_query(a.k_lr_b + (bh * (a.t_cap / G) + tok / G) * D * a.k_rank);
        }
      }
      float acc[MG][4];
      uint32_t kw0[MG][KW], kw1[MG][KW];  // this lane's words of rows g and g+8
#pragma unroll
      for (int m = 0; m < MG; ++m) {
        acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = 0.0f;
        const uint8_t* kr0 = st + L::KC + (16 * (mg + m) + g) * RB + t * KW * 4;
        load_words<KW>(kr0, kw0[m]);
        load_words<KW>(kr0 + 8 * RB, kw1[m]);
      }
#pragma unroll
      for (int j = 0; j < KT; ++j) {
        constexpr int PW = KeyPos<BITS>::PW;
        const int e0 = 2 * j, wl = e0 / PW, i0 = e0 % PW;
#pragma unroll
        for (int m = 0; m < MG; ++m) {
          const uint32_t af[4] = {key_pair_h2<BITS>(kw0[m][wl], i0), key_pair_h2<BITS>(kw1[m][wl], i0),
                                  key_pair_h2<BITS>(kw0[m][wl], i0 + 1), key_pair_h2<BITS>(kw1[m][wl], i0 + 1)};
          dev::mma_f16_16816(acc[m], af, qsb[e0], qsb[e0 + 1]);
          if constexpr (!H4) dev::mma_f16_16816(acc[m], af, qsl[e0], qsl[e0 + 1]);

        }
      }
      if constexpr (CORR && H4) {
#pragma unroll
        for (int m = 0; m < MG; ++m) key_outliers_h4(ob1, ob2, ob4, mg + m, acc[m]);
      } else if constexpr (CORR) {
#pragma unroll
        for (int m = 0; m < MG; ++m) key_corrections(st, 16 * (mg + m) + g, acc[m]);
      }
#pragma unroll
      for (int m = 0; m < MG; ++m) {
        const int mt = mg + m;
        const bool ok0 = row_valid(16 * mt + g), ok1 = row_valid(16 * mt + g + 8);
        if constexpr (H4) {  // hi + lo: columns c and c ^ 4 live in lanes t and t ^ 2
          float v[4] = {fmaf(acc[m][0], kScoreScale, cst[0]), fmaf(acc[m][1], kScoreScale, cst[1]),
                        fmaf(acc[m][2], kScoreScale, cst[0]), fmaf(acc[m][3], kScoreScale, cst[1])};
#pragma unroll
          for (int c = 0; c < 4; ++c) v[c] += __shfl_xor_sync(0xffffffffu, v[c], 2);
          s[mt][0] = ok0 ? v[0] : -INFINITY;
          s[mt][1] = ok0 ? v[1] : -INFINITY;
          s[mt][2] = ok1 ? v[2] : -INFINITY;
          s[mt][3] = ok1 ? v[3] : -INFINITY;
          continue;
        }
        s[mt][0] = ok0 ? fmaf(acc[m][0], kScoreScale, cst[0]) : -INFINITY;
        s[mt][1] = ok0 ? fmaf(acc[m][1], kScoreScale, cst[1]) : -INFINITY;
        s[mt][2] = ok1 ? fmaf(acc[m][2], kScoreScale, cst[0]) : -INFINITY;
        s[mt][3] = ok1 ? fmaf(acc[m][3], kScoreScale, cst[1]) : -INFINITY;
      }
    }
    if constexpr (CORR && !H4) {
      if (a.logits != nullptr) {  // H2O mass: this lane's tokens g, g+8 of each m-tile, heads 2t, 2t+1
        const int64_t cols = a.mass_cols();
        float* lg = a.logits + ((int64_t)b * a.Hq + h0) * cols + a.s_cap + t0;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          const int r0 = 16 * mt + g, r1 = r0 + 8;
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            const int head = 2 * t + (c & 1), r = c < 2 ? r0 : r1;
            if (head < nh && row_valid(r)) lg[head * cols + r] = s[mt][c];
          }
        }
      }
    }

    // ---- online softmax over the stage (base 2) -------------------------------------
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      mx[0] = fmaxf(mx[0], fmaxf(s[mt][0], s[mt][2]));
      mx[1] = fmaxf(mx[1], fmaxf(s[mt][1], s[mt][3]));
    }
    float m_use[2];
    bool grow = false;
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      mx[c] = fmaxf(mx[c], __shfl_xor_sync(0xffffffffu, mx[c], 4));
      mx[c] = fmaxf(mx[c], __shfl_xor_sync(0xffffffffu, mx[c], 8));
      mx[c] = fmaxf(mx[c], __shfl_xor_sync(0xffffffffu, mx[c], 16));
      grow |= mx[c] > m_run[c];
    }
    // Rescale only when the stage's max passes the running reference (a warp-uniform
    // branch; skipping is exact since alpha would be 1). The reference is set kMaxSlack
    // above the max it grew to, so later stages whose max creeps up a little (random
    // scores: most of them) skip the rescale. (A simulation of N(0, 1.44^2) scores, 4 heads
    // a warp, 8.5 stages as at 32K: a rescale in 0.68 of the stages without the slack, 0.17
    // with it.) p = 2^(s - m_run) still lies in (0, 1] (the same fp16 headroom for P'),
    // only up to 2^-kMaxSlack smaller; m_run is what the merge sees, consistent with o, l.
    if (__any_sync(0xffffffffu, grow)) {
      float alpha[2];
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const float m_new = fmaxf(m_run[c], mx[c] + kMaxSlack);
        alpha[c] = m_new == -INFINITY ? 1.0f : fast_exp2(m_run[c] - m_new);
        m_run[c] = m_new;
        if constexpr (!VO_PAIRS) l_run[c] *= alpha[c];  // (VO_PAIRS: l is relative to m_ref)
      }
#pragma unroll
      for (int mc = 0; mc < KT; ++mc) {
        o[mc][0] *= alpha[0]; o[mc][1] *= alpha[1];
        o[mc][2] *= alpha[0]; o[mc][3] *= alpha[1];
      }
      if constexpr (!VO_PAIRS) {
#pragma unroll
        for (int gr = 0; gr < NS; ++gr) {
          cvm[gr][0] *= alpha[0]; cvm[gr][1] *= alpha[1];
        }
      }
      if constexpr (VO_PAIRS) {
        // m_ref: set by a column's first finite running max; rebased to the running max
        // when that outgrows it by more than 2^64 (every column of the warp at once: the
        // value-outlier sums in global memory, l and cvm x 2^(m_ref - m_run)): rare.
        bool rebase = false;
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          if (mref[c] == INFINITY && m_run[c] != -INFINITY) mref[c] = m_run[c];  // (its sums, l, cvm are zero)
          rebase |= m_run[c] - mref[c] > 64.0f;
        }
        if (__any_sync(0xffffffffu, rebase)) {
          float fr[2];
#pragma unroll
          for (int c = 0; c < 2; ++c) fr[c] = mref[c] == INFINITY ? 1.0f : exp2f(mref[c] - m_run[c]);
          if (a.v_outliers > 0) {  // the sums' heads 0-3 are columns 2t, 2t+1 of lanes 0 and 1
            const float f0 = __shfl_sync(0xffffffffu, fr[0], 0), f1 = __shfl_sync(0xffffffffu, fr[1], 0);
            const float f2 = __shfl_sync(0xffffffffu, fr[0], 1), f3 = __shfl_sync(0xffffffffu, fr[1], 1);
            __threadfence();  // this lane's reductions are performed before any lane reads the sums
            __syncwarp();
#pragma unroll
            for (int k = 0; k < D / 32; ++k) {
              float4* pv = reinterpret_cast<float4*>(vo_l) + lane + 32 * k;
              float4 x = __ldcg(pv);
              x.x *= f0; x.y *= f1; x.z *= f2; x.w *= f3;
              __stcg(pv, x);
            }
            __threadfence();
          }
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            l_run[c] *= fr[c];
#pragma unroll
            for (int gr = 0; gr < NS; ++gr) cvm[gr][c] *= fr[c];
            if (mref[c] != INFINITY) mref[c] = m_run[c];
          }
        }
#pragma unroll
        for (int c = 0; c < 2; ++c)  // (m_ref finite: m_run >= m_ref, finite)
          fsc[c] = mref[c] == INFINITY ? 0.0f : SC * fast_exp2(mref[c] - m_run[c]);
      } else if constexpr (VO_SMEM) {
        if (a.v_outliers > 0) {
          // The value-outlier sums stay relative to m_ref (a head's first running max)
          // until the running max outgrows it by 2^64; then every head is rebased to its
          // running max (sums x 2^(m_ref - m_run) <= 1): rare.
          const int hb = (2 * t) & 3;
          float mr[2] = {mref_s[hb], mref_s[hb + 1]};
          bool rebase = false;
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            if (mr[c] == -INFINITY) mr[c] = m_run[c];  // the head's first tokens: its sums are zero
            rebase |= m_run[c] - mr[c] > 64.0f;
          }
          if (__any_sync(0xffffffffu, rebase)) {
            float fr[2];
#pragma unroll
            for (int c = 0; c < 2; ++c) fr[c] = mr[c] == -INFINITY ? 1.0f : exp2f(mr[c] - m_run[c]);
            const float f0 = __shfl_sync(0xffffffffu, fr[0], 0), f1 = __shfl_sync(0xffffffffu, fr[1], 0);
            const float f2 = __shfl_sync(0xffffffffu, fr[0], 1), f3 = __shfl_sync(0xffffffffu, fr[1], 1);
            // integer sums: x fr of their head, on a new scale that keeps their precision
            // (the bound x fr, into [2^22, 2^23) as at a head's first stage)
            const float fh[4] = {f0, f1, f2, f3};
            float gh[4];
#pragma unroll
            for (int h = 0; h < 4; ++h) {
              gh[h] = fh[h];
              const float nb = vo_ub[h] * fh[h];
              if (vo_sc[h] != INFINITY && nb > 0.0f && nb < INFINITY) {
                const int sx = exponent(vo_sc[h]);
                const int s2 = min(max(sx + 22 - exponent(nb), -126), 126) - sx;
                gh[h] = ldexpf(fh[h], s2);
                vo_sc[h] = pow2i(sx + s2);
                vo_ub[h] = ldexpf(nb, s2);
              } else if (nb < INFINITY) {
                vo_ub[h] = nb;
              }
            }
            __syncwarp();  // every lane's adds are done
#pragma unroll
            for (int k = 0; k < D / 32; ++k) {
              const uint32_t pv = vo_sl - 4u * hb + 16u * (lane + 32 * k);
              const float4 x = dev::ld_shared_f32x4(pv);
              dev::st_shared_f32x4(pv, make_float4(__int_as_float(__float2int_rn(gh[0] * (float)__float_as_int(x.x))),
                                                   __int_as_float(__float2int_rn(gh[1] * (float)__float_as_int(x.y))),
                                                   __int_as_float(__float2int_rn(gh[2] * (float)__float_as_int(x.z))),
                                                   __int_as_float(__float2int_rn(gh[3] * (float)__float_as_int(x.w)))));
            }
            __syncwarp();
            mr[0] = m_run[0];
            mr[1] = m_run[1];
          }
          __syncwarp();  // every lane has read mref_s
          if (g == 0 && t < 2) {
            mref_s[hb] = mr[0];
            mref_s[hb + 1] = mr[1];
          }
#pragma unroll
          for (int c = 0; c < 2; ++c)  // (padding heads contribute nothing)
            vf[c] = m_run[c] == -INFINITY || hb + c >= nh ? 0.0f : fast_exp2(m_run[c] - mr[c]);  // <= 2^64
#pragma unroll
          for (int h = 0; h < 4; ++h) {  // the bounds' factors (see value_outliers_h4)
            const float vh = vf_of_head(h);
            vo_fac[h] = vh > 0.0f ? 16.0f * vh * vo_sc[h] : 0.0f;
          }
        }
      } else if constexpr (CORR) {
#pragma unroll 1
        for (int j = 0; j < a.v_rank; ++j) {
          wl_s[lane * 2 * a.v_rank + j] *= alpha[0];
          wl_s[lane * 2 * a.v_rank + a.v_rank + j] *= alpha[1];
        }
        if (a.v_outliers > 0 || a.v_rank > 0) {
          __syncwarp();
#pragma unroll 4
          for (int d = g; d < D; d += 8) {
            float2* o2 = reinterpret_cast<float2*>(vo_w + d * kHeadsPerPass + 2 * t);
            const float2 cur = *o2;
            *o2 = make_float2(cur.x * alpha[0], cur.y * alpha[1]);
          }
          __syncwarp();
        }
      }
    }
#pragma unroll
    for (int c = 0; c < 2; ++c) m_use[c] = m_run[c] == -INFINITY ? 0.0f : m_run[c];  // keep exp2 finite

    // ---- P V ------------------------------------------------------------------------
    // (2-bit H4 outliers: p' = 2^(s - m_ref) of every m-tile first, in place of the scores,
    // for the paired value-outlier reductions; an unset m_ref, +inf, gives 0)
    static_assert(!VO_PAIRS || MT % 2 == 0, "m-tiles in pairs");
    if constexpr (VO_PAIRS) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int c = 0; c < 4; ++c) s[mt][c] = fast_exp2(s[mt][c] - mref[c & 1]);
      }
    }
    float vp[VO_SMEM ? MT : 1][2];  // VO_SMEM: p of the lane's outlier row, its two heads, by m-tile
    bool vrow_ok[VO_SMEM ? MT : 1];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      float p[4];
#pragma unroll
      for (int c = 0; c < 4; ++c)  // 0 for masked tokens
        p[c] = VO_PAIRS ? s[mt][c] : fast_exp2(s[mt][c] - m_use[c & 1]);
      l_run[0] += p[0] + p[2];
      l_run[1] += p[1] + p[3];
      const int r0 = 16 * mt + g, r1 = r0 + 8;  // stage rows of this lane's two tokens
      const bool ok0 = row_valid(r0), ok1 = row_valid(r1);
      if constexpr (VO_PAIRS) {
        if (mt % 2 == 0)  // (mt + 1 < MT then; the clamp only keeps the unrolled dead branch in bounds)
          value_outliers_pair_h4(vb1, vb2, vb4, mt / 2, row_valid(16 * mt + vrow), s[mt], s[mt + 1 < MT ? mt + 1 : mt]);
      } else if constexpr (CORR && !H4) {
        value_corrections(st, r0, ok0, ok1, p, t0 + 16 * mt, w_end);
      }
      uint32_t bfr[NS][2];  // P' = SC p vs fragments (fp16), one per operand set
      // (VO_PAIRS: SC p = fsc p')
      const float sc0 = VO_PAIRS ? fsc[0] : SC, sc1 = VO_PAIRS ? fsc[1] : SC;
      const float sp0 = sc0 * p[0], sp1 = sc1 * p[1], sp2 = sc0 * p[2], sp3 = sc1 * p[3];
#pragma unroll
      for (int ps = 0; ps < NS; ++ps) {
        // this lane's value group: the set's own (8 columns) or, H4, its even or odd one
        const int gr = !H4 ? ps : NG >= 2 ? 2 * ps + (t >> 1) : 0;
        const float vs0 = ok0 ? meta_at<KIND>(st + L::VS, r0 * NG + gr) : 0.0f;
        const float vs1 = ok1 ? meta_at<KIND>(st + L::VS, r1 * NG + gr) : 0.0f;
        const float vm0 = ok0 ? meta_at<KIND>(st + L::VM, r0 * NG + gr) : 0.0f;
        const float vm1 = ok1 ? meta_at<KIND>(st + L::VM, r1 * NG + gr) : 0.0f;
        cvm[ps][0] += p[0] * vm0 + p[2] * vm1;
        cvm[ps][1] += p[1] * vm0 + p[3] * vm1;
        const float b0 = sp0 * vs0, b1 = sp1 * vs0, b2 = sp2 * vs1, b3 = sp3 * vs1;
        const uint32_t top = dev::pack_half2(b0, b1), bot = dev::pack_half2(b2, b3);
        bfr[ps][0] = dev::movmatrix_trans(top);  // tokens 2t, 2t+1, column g
        bfr[ps][1] = dev::movmatrix_trans(bot);  // tokens 2t+8, 2t+9
      }
      // Value codes: lane g takes CPL consecutive even codes (and the odd ones beside
      // them) of each value group, for its tokens 2t, 2t+1 (A) and 2t+8, 2t+9 (C).
      const uint8_t* vA = st + L::VC + (16 * mt + 2 * t) * RB;
#pragma unroll
      for (int gr = 0; gr < NG; ++gr) {
        constexpr int CPL = VPL, CH = 16 / BITS, NW = CPL > CH ? CPL / CH : 1;
        const int wbase = (gr * (VG / 2) + g * CPL) / CH;
        uint32_t wa[NW], wb[NW], wc[NW], wd[NW];
        load_words<NW>(vA + 4 * wbase, wa);
        load_words<NW>(vA + RB + 4 * wbase, wb);
        load_words<NW>(vA + 8 * RB + 4 * wbase, wc);
        load_words<NW>(vA + 9 * RB + 4 * wbase, wd);
        constexpr int KPW = CPL < CH ? CPL : CH;  // codes of this lane in each half of a word
        if constexpr (KPW * BITS % 8 == 0) {
          // The lane's codes fill whole bytes of each half: one PRMT per byte puts that
          // byte of two tokens at the bottom of both halves (bits 0-7), and each field
          // is one LOP3.
          constexpr int NB = KPW * BITS / 8, CPB = 8 / BITS;
#pragma unroll
          for (int u = 0; u < NW; ++u) {
#pragma unroll
            for (int j = 0; j < NB; ++j) {
              const uint32_t se = NB == 1 ? vsel_e : 0x4400u + 0x1111u * j, so = se + 0x2222u;
              const uint32_t e0 = dev::prmt(wa[u], wb[u], se), o0 = dev::prmt(wa[u], wb[u], so);
              const uint32_t e1 = dev::prmt(wc[u], wd[u], se), o1 = dev::prmt(wc[u], wd[u], so);
#pragma unroll
              for (int k = 0; k < CPB; ++k) {
                const int pos = BITS * k;
                const uint32_t af[4] = {fields_h2<BITS>(e0, pos), fields_h2<BITS>(o0, pos),
                                        fields_h2<BITS>(e1, pos), fields_h2<BITS>(o1, pos)};
                const int mc = gr * CPL + u * CH + j * CPB + k;
                const int ps = H4 ? gr / 2 : gr;
                dev::mma_f16_16816(o[mc], af, bfr[ps][0], bfr[ps][1]);
              }
            }
          }
          continue;
        }
#pragma unroll
        for (int u = 0; u < NW; ++u) {
          const uint32_t ev0 = dev::prmt(wa[u], wb[u], 0x5410u), od0 = dev::prmt(wa[u], wb[u], 0x7632u);
          const uint32_t ev1 = dev::prmt(wc[u], wd[u], 0x5410u), od1 = dev::prmt(wc[u], wd[u], 0x7632u);
          constexpr int STEP = BITS == 2 ? 2 : 1;   // codes per rotation
#pragma unroll
          for (int k0 = 0; k0 < KPW; k0 += STEP) {
            const int rot = value_rotation<BITS, CPL>(g, u * CH + k0);
            const uint32_t e0 = __funnelshift_r(ev0, ev0, rot), o0 = __funnelshift_r(od0, od0, rot);
            const uint32_t e1 = __funnelshift_r(ev1, ev1, rot), o1 = __funnelshift_r(od1, od1, rot);
#pragma unroll
            for (int kk = 0; kk < STEP; ++kk) {
              const int pos = kVPos + 2 * kk;  // 2 bits: codes k0, k0+1 at bits 6, 8; 4 bits: bit 6
              const uint32_t af[4] = {fields_h2<BITS>(e0, pos), fields_h2<BITS>(o0, pos),
                                      fields_h2<BITS>(e1, pos), fields_h2<BITS>(o1, pos)};
              const int mc = gr * CPL + u * CH + k0 + kk;
              const int ps = H4 ? gr / 2 : gr;
              dev::mma_f16_16816(o[mc], af, bfr[ps][0], bfr[ps][1]);
            }
          }
        }
      }
      if constexpr (VO_SMEM) {
        vp[mt][0] = t < 2 ? p[0] : p[2];
        vp[mt][1] = t < 2 ? p[1] : p[3];
        vrow_ok[mt] = row_valid(16 * mt + orow);
      }
    }
    if constexpr (VO_SMEM) {  // after the stage's P V, so that its loads and mmas do not wait behind the adds
      if (v_red) value_outliers_h4(ob1, ob2, vp, vrow_ok);  // (warp-uniform: value outliers given or not)
    }
    __syncwarp();  // the stage is overwritten by a later issue
    if constexpr (CORR) {
      // (a ticket not taken, t_next >= n: t_cur leaves the loop and t_next is not used)
      const uint32_t mask = (uint32_t)sp.tile_run_mask;
      const uint32_t after =
          dyn && ((t_next / TT) & mask) == mask
              ? (uint32_t)(sp.static_tiles + __shfl_sync(0xffffffffu, ticket, 0) * (int)(mask + 1)) * TT
              : t_next + TT;
      t_cur = t_next;
      t_next = after;
    }
  }
  dev::cp_async_wait<0>();
  if (lane == 0) timeline_stamp(a.timeline, tl_rec, 2 + warp);
  // CORR && H4: the warp's value-outlier sums (rows lane + 32 k, 4 heads), loaded now so
  // that their round trip (behind the warp's last reductions) overlaps the CTA barrier
  // below instead of following it (ncu, session 10: ~1% of the 2-bit 32K step).
  float4 vo_x[CORR && H4 ? D / 32 : 1];
  if constexpr (CORR && H4) {
    if (a.v_outliers > 0) {
      // The barrier orders every lane's adds (4 bits) or reductions (2 bits) before these
      // loads; at 2 bits relaxed gpu-scope ones, with no fence (a fence would hold the warp
      // until the last reductions are acknowledged).
      __syncwarp();
#pragma unroll
      for (int k = 0; k < D / 32; ++k) {
        if constexpr (VO_SMEM) vo_x[k] = dev::ld_shared_f32x4(vo_sl - 4u * ((2 * t) & 3) + 16u * (lane + 32 * k));
        else vo_x[k] = dev::ld_relaxed_f32x4(vo_l + 4 * (lane + 32 * k));
      }
    }
  }

  // ---- finish the warp: reduce over the 8 token lanes ----------------------------------
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    l_run[c] += __shfl_xor_sync(0xffffffffu, l_run[c], 4);
    l_run[c] += __shfl_xor_sync(0xffffffffu, l_run[c], 8);
    l_run[c] += __shfl_xor_sync(0xffffffffu, l_run[c], 16);
#pragma unroll
    for (int gr = 0; gr < NS; ++gr) {
      cvm[gr][c] += __shfl_xor_sync(0xffffffffu, cvm[gr][c], 4);
      cvm[gr][c] += __shfl_xor_sync(0xffffffffu, cvm[gr][c], 8);
      cvm[gr][c] += __shfl_xor_sync(0xffffffffu, cvm[gr][c], 16);
    }
  }
  // VO_PAIRS: l, cvm and the value-outlier sums from m_ref to the running max
  float ef[2] = {0.0f, 0.0f};
  if constexpr (VO_PAIRS) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      ef[c] = mref[c] == INFINITY ? 0.0f : fast_exp2(mref[c] - m_run[c]);  // (unset: l, cvm, sums are zero)
      l_run[c] *= ef[c];
#pragma unroll
      for (int gr = 0; gr < NS; ++gr) cvm[gr][c] *= ef[c];
    }
  }
  __syncthreads();  // all warps done with their stages: reuse them for the merge
  float* wo = reinterpret_cast<float*>(stages);                 // [kWarps][8][D]
  float* wm = wo + kWarps * kHeadsPerPass * D;                  // [kWarps][8]
  float* wl = wm + kWarps * kHeadsPerPass;                      // [kWarps][8]
  // o = sum_t p vm + acc * 2^(24 - BITS - pos): the value-min term plus the codes' term
  // with SC and the field position undone.
#pragma unroll
  for (int mc = 0; mc < KT; ++mc) {
    constexpr int CPL = VPL;
    const int gr = mc / CPL, k = mc % CPL;
    const int ch = gr * VG + 2 * (g * CPL + k);
    constexpr int KPW = CPL < 16 / BITS ? CPL : 16 / BITS;
    const int pos = KPW * BITS % 8 == 0 ? BITS * (k % (8 / BITS))  // byte path (see P V)
                                        : kVPos + (BITS == 2 ? 2 * (k & 1) : 0);
    const float f = (float)(1 << (24 - BITS - pos));
    float* base = wo + warp * kHeadsPerPass * D;
    int ps = gr, h0c = 2 * t;  // operand set and head of column 2t
    if constexpr (H4) {  // only the columns of this channel's group (the others hold another group's P')
      if ((NG >= 2 ? (gr & 1) : 0) != (t >> 1)) continue;
      ps = gr / 2;
      h0c = (2 * t) & 3;
    }
    base[h0c * D + ch] = fmaf(f, o[mc][0], cvm[ps][0]);
    base[(h0c + 1) * D + ch] = fmaf(f, o[mc][1], cvm[ps][1]);
    base[h0c * D + ch + 1] = fmaf(f, o[mc][2], cvm[ps][0]);
    base[(h0c + 1) * D + ch + 1] = fmaf(f, o[mc][3], cvm[ps][1]);
  }
  if (g == 0 && (!H4 || t < 2)) {  // (H4: lanes t >= 2 hold the same heads)
    wm[warp * kHeadsPerPass + 2 * t] = m_run[0];
    wm[warp * kHeadsPerPass + 2 * t + 1] = m_run[1];
    wl[warp * kHeadsPerPass + 2 * t] = l_run[0];
    wl[warp * kHeadsPerPass + 2 * t + 1] = l_run[1];
  }
  if constexpr (CORR && H4) {
    if (a.v_outliers > 0) {  // add the warp's value-outlier sums, from m_ref to its running max
      if constexpr (VO_SMEM) {
        const int hb = (2 * t) & 3;
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const float mr = mref_s[hb + c];
          ef[c] = mr == -INFINITY ? 0.0f : fast_exp2(mr - m_run[c]);
        }
      }
      // (VO_SMEM: integer sums in units of 1 / vo_sc; a bound that is not finite gives NaN)
      float u[4] = {1.0f, 1.0f, 1.0f, 1.0f};
      if constexpr (VO_SMEM) {
#pragma unroll
        for (int h = 0; h < 4; ++h) u[h] = 1.0f / vo_sc[h] + (vo_ub[h] - vo_ub[h]);  // (unset: 0, the sums zero)
      }
      const float f0 = u[0] * __shfl_sync(0xffffffffu, ef[0], 0), f1 = u[1] * __shfl_sync(0xffffffffu, ef[1], 0);
      const float f2 = u[2] * __shfl_sync(0xffffffffu, ef[0], 1), f3 = u[3] * __shfl_sync(0xffffffffu, ef[1], 1);
      __syncwarp();  // the warp's o columns are in wo
      float* wb = wo + warp * kHeadsPerPass * D;
#pragma unroll
      for (int k = 0; k < D / 32; ++k) {
        const int d = lane + 32 * k;
        float4 x = vo_x[k];
        if constexpr (VO_SMEM)
          x = make_float4((float)__float_as_int(x.x), (float)__float_as_int(x.y), (float)__float_as_int(x.z),
                          (float)__float_as_int(x.w));
        wb[d] += f0 * x.x;
        wb[D + d] += f1 * x.y;
        wb[2 * D + d] += f2 * x.z;
        wb[3 * D + d] += f3 * x.w;
      }
      // Every lane has its sums: drop the warp's lines from L2 without a write-back (the
      // next user zeroes them first).
      if constexpr (!VO_SMEM) {
        __syncwarp();
        for (int l = lane; l < value_outlier_warp_floats(D) / 32; l += 32) dev::discard_l2_line(vo_l + 32 * l);
      }
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < nh * D; idx += blockDim.x) {
    const int h = idx / D, d = idx % D;
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, wm[w * kHeadsPerPass + h]);
    float ov = 0.0f, lv = 0.0f;
    if (m != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float f = exp2f(wm[w * kHeadsPerPass + h] - m);
        float x = wo[(w * kHeadsPerPass + h) * D + d];
        if constexpr (CORR && !H4) {  // the warp's vo_w
          if (a.v_outliers > 0 || a.v_rank > 0) x += vo_w[(w - warp) * kHeadsPerPass * D + d * kHeadsPerPass + h];
        }
        ov += f * x;
        lv += f * wl[w * kHeadsPerPass + h];
      }
    }
    const int64_t slot = ((int64_t)b * a.Hq + h0 + h) * sp.np + split;
    sp.ws_o[slot * D + d] = ov;
    if (d == 0) {
      sp.ws_m[slot] = m;
      sp.ws_l[slot] = lv;
    }
  }
  if (threadIdx.x == 0) timeline_stamp(a.timeline, tl_rec, 6);
}

// ------------------------------------------------------------------------------------
// One instantiation of the packed kernel: its shared memory, how many of its CTAs fit
// on an SM (asked of the runtime once), and its launch.
template <int KIND, int BITS, int D, int G, int VG, bool CORR, bool H4 = false, int CK = 1, int CV = 1>
struct Packed {
  static constexpr int TT = TileShape<D, BITS, H4>::TT;
  static constexpr int kD = D;
  using H4Variant = Packed<KIND, BITS, D, G, VG, CORR, true>;
  // (CORR: CK key and CV value outliers a token, each 1 or 2; a side without any takes 1)
  template <int CK_, int CV_>
  using H4Outliers = Packed<KIND, BITS, D, G, VG, CORR, true, CK_, CV_>;
  static size_t smem(const DecodeArgs& a) {
    using L = StageLayout<D, BITS, G, VG, TT>;
    const size_t stage = (size_t)L::BYTES + (CORR ? corr_layout<D, BITS, G, VG, TT>(a, H4).bytes : 0);
    return kQBytes<D> + stage_area_bytes(D, stage) +
           (CORR ? (size_t)corr_cta(a, D, H4).floats * sizeof(float) : 0);  // q_s + stages (+ corrections)
  }
  static int ctas_per_sm(const DecodeArgs& a) {
    auto query = [](size_t bytes) {
      int blocks = 1;
      auto kernel = decode_packed_kernel<KIND, BITS, D, G, VG, CORR, H4, CK, CV>;
      if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes) == cudaSuccess)
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kWarps * 32, bytes);
      cudaGetLastError();  // a failed query leaves the estimate at 1, never an error for the caller
      return std::max(blocks, 1);
    };
    if constexpr (CORR) {
      // Shared memory depends on the correction sizes: remember the answer per size (a
      // handful of sizes in practice), so that later calls and graph captures ask nothing.
      static std::mutex mu;
      static std::map<size_t, int> known;
      const size_t bytes = smem(a);
      const std::lock_guard<std::mutex> lock(mu);
      auto it = known.find(bytes);
      if (it == known.end()) it = known.emplace(bytes, query(bytes)).first;
      return it->second;
    } else {
      static const int n = query(smem(a));
      return n;
    }
  }
  static cudaError_t launch(const DecodeArgs& a, const SplitParams& sp, cudaStream_t st) {
    auto kernel = decode_packed_kernel<KIND, BITS, D, G, VG, CORR, H4, CK, CV>;
    const size_t bytes = smem(a);
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (e != cudaSuccess) return e;
    const int64_t ctas = (int64_t)a.B * a.Hkv * sp.passes * sp.np;  // + the fp split
    if (ctas > INT32_MAX) return cudaErrorInvalidConfiguration;
    kernel<<<(unsigned)ctas, kWarps * 32, bytes, st>>>(a, sp);
    return cudaGetLastError();
  }
};

// Calls f(Packed<...>{}) for the instantiation that serves `a` (head_dim D; false: none
// does).
template <int KIND, int BITS, int D, typename F>
bool visit_packed(const DecodeArgs& a, F&& f) {
  // The logits for the attention mass (attn_mass given) are written by the CORR
  // instantiation only, so the plain kernel stays as it is; the workspace sizing
  // (plan_splits) sees the same choice.
  const bool corr = a.k_outliers > 0 || a.v_outliers > 0 || a.k_rank > 0 || a.v_rank > 0 || a.attn_mass != nullptr;
  const bool h4 = a.Hq / a.Hkv <= 4;  // GQA groups of up to 4 heads: the H4 column layout
  auto by_corr = [&](auto p_plain, auto p_corr) {
    using P = decltype(p_plain);
    constexpr int PD = P::kD;
    if (corr) {
      if (h4_outliers(a)) {
        using PC = decltype(p_corr);
        if (a.v_outliers == 2) {
          if (a.k_outliers == 2) f(typename PC::template H4Outliers<2, 2>{});
          else f(typename PC::template H4Outliers<1, 2>{});
        } else if (a.k_outliers == 2) {
          f(typename PC::template H4Outliers<2, 1>{});
        } else {
          f(typename PC::H4Variant{});
        }
        return true;
      }
      f(p_corr);
    } else if constexpr (PD >= 128 || (PD == 64 && BITS == 2)) {
      // (4 bits at D = 64: the 8-column kernel is faster, H200 32K 49.9 vs 51.1 us, 128K
      // 166.5 vs 175.1; 2 bits gains with H4, 128K 151.4 -> 146.4, 8K 20.4 -> 19.6)
      if (h4) f(typename P::H4Variant{});
      else f(p_plain);
    } else {
      f(p_plain);
    }
    return true;
  };
  // (key block, value group) pairs with key block <= value group (the glue rejects the rest).
  auto by_vgroup = [&](auto kgroup) {
    constexpr int K = KIND, B = BITS, KG = decltype(kgroup)::value;
    switch (a.v_group) {
      case 32:
        if constexpr (KG <= 32) return by_corr(Packed<K, B, D, KG, 32, false>{}, Packed<K, B, D, KG, 32, true>{});
        return false;
      case 64:
        if constexpr (KG <= 64) return by_corr(Packed<K, B, D, KG, 64, false>{}, Packed<K, B, D, KG, 64, true>{});
        return false;
      default:
        if constexpr (D % 128 == 0) return by_corr(Packed<K, B, D, KG, 128, false>{}, Packed<K, B, D, KG, 128, true>{});
        return false;
    }
  };
  switch (a.group) {
    case 32: return by_vgroup(std::integral_constant<int, 32>{});
    case 64: return by_vgroup(std::integral_constant<int, 64>{});
    default: return by_vgroup(std::integral_constant<int, 128>{});
  }
}

}  // namespace

namespace decode_detail {

template <int KIND, int BITS, int D>
int packed_ctas_per_sm_d(const DecodeArgs& a) {
  int n = 1;
  visit_packed<KIND, BITS, D>(a, [&](auto p) { n = decltype(p)::ctas_per_sm(a); });
  return n;
}

template <int KIND, int BITS, int D>
int packed_tile_tokens_d(const DecodeArgs& a) {
  int tt = 64;
  visit_packed<KIND, BITS, D>(a, [&](auto p) { tt = decltype(p)::TT; });
  return tt;
}

template <int KIND, int BITS, int D>
cudaError_t packed_launch_d(const DecodeArgs& a, const SplitParams& sp, cudaStream_t st) {
  cudaError_t e = cudaErrorInvalidValue;  // no instantiation serves `a` (the glue rejects that first)
  visit_packed<KIND, BITS, D>(a, [&](auto p) { e = decltype(p)::launch(a, sp, st); });
  return e;
}

}  // namespace decode_detail
}  // namespace kvcore
