// Fused decode attention over the packed KV cache (flash-decoding on tensor cores).
//
// Work split: grid (split, KV head x head pass, batch). A CTA owns `chunk` packed tokens
// of one KV head and serves up to 8 of its query heads (one mma N tile), so the cache
// is read once per step for GQA groups up to 8. Its 4 warps take consecutive quarters
// of the chunk; each warp streams its tokens through shared memory with cp.async
// (NS stages of TT tokens), runs online softmax in base 2, and the CTA merges its warps
// into one partial (O, max, sum) per split. The full-precision sinks and residual
// window are one more split (a small CUDA-core kernel); a merge kernel combines the
// splits by log-sum-exp. Nothing reads lengths on the host.
//
// Math (per query head; q' = q * sm_scale * log2(e), SC = 2^bits):
//   codes enter the tensor cores as fp16 values 1 + c/SC, built with one funnel shift
//   and one LOP3 from the packed word (no int->float conversion).
//   S^T = K x Q'^T (M = 16 tokens, K = channels, N = 8 heads). Keys are grouped per
//     channel, so the channel scale folds into the B operand: qs_d = SC * q'_d * ks_d,
//     and q'.k = sum_d qs_d (1 + c_d/SC) + [sum_d q'_d km_d - sum_d qs_d] (per block).
//     qs and the P operand below go to the tensor cores as fp16 hi + lo pairs (two mmas
//     on the same A fragments), which keeps the result as precise as fp32 operands.
//   O^T = V^T x P^T (M = 16 channels of one value group, K = 16 tokens, N = 8 heads).
//     Values are grouped per token, so the token scale folds into P:
//     b_t = SC * p_t * vs_t, o = sum_t b_t (1 + c_t/SC) + sum_t (p_t vm_t - b_t).
//   The P^T operand comes from the S^T accumulators with one movmatrix transpose.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cfloat>
#include <type_traits>

#include "../decode_attention.h"
#include "mma_utils.cuh"
#include "quant_device.cuh"

namespace kvcore {
namespace {

using dev::Bits;

constexpr int kWarps = 4;         // warps per split CTA
constexpr int kHeadsPerPass = 8;  // query heads per CTA (the mma N dimension)
constexpr int kStages = 2;        // cp.async pipeline depth per warp (2 keeps 4+ CTAs per SM)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <int D>
struct TileShape {
  static constexpr int TT = D <= 128 ? 64 : 32;  // tokens per pipeline stage
  static constexpr int MT = TT / 16;             // 16-token m-tiles per stage
};

// Byte layout of one pipeline stage of one warp.
template <int D, int BITS, int G>
struct StageLayout {
  static constexpr int TT = TileShape<D>::TT;
  static constexpr int RB = D * BITS / 8;             // code bytes per token
  static constexpr int NKB = TT >= G ? TT / G : 1;    // key blocks a stage touches
  static constexpr int NG = D / G;                    // value groups per token
  static constexpr int KC = 0;                        // key codes [TT][RB]
  static constexpr int VC = KC + TT * RB;             // value codes [TT][RB]
  static constexpr int KS = VC + TT * RB;             // key scale [NKB][D]
  static constexpr int KM = KS + NKB * D * 2;         // key min [NKB][D]
  static constexpr int VS = KM + NKB * D * 2;         // value scale [TT][NG]
  static constexpr int VM = VS + TT * NG * 2;         // value min [TT][NG]
  static constexpr int BYTES = VM + TT * NG * 2;      // a multiple of 16
};

// fp16 pair (1 + c_even/SC, 1 + c_odd/SC) of pair k of a packed word: rotate the two
// fields to the top of the fp16 mantissas, mask, and OR in the exponent of 1.0.
// `rot` = pair_rotation<BITS>(k), computed once per lane.
template <int BITS>
__device__ __forceinline__ int pair_rotation(int k) { return (k * BITS - (10 - BITS)) & 31; }
template <int BITS>
__device__ __forceinline__ uint32_t code_pair_h2(uint32_t word, int rot) {
  constexpr int TB = 10 - BITS;
  constexpr uint32_t mask = (((1u << BITS) - 1u) << TB) * 0x00010001u;
  return (__funnelshift_r(word, word, rot) & mask) | 0x3C003C00u;
}

template <int KIND>
__device__ __forceinline__ float meta_at(const uint8_t* base, int idx) {
  return Storage<KIND>::load(reinterpret_cast<const Bits<KIND>*>(base)[idx]);
}
// Two consecutive 16-bit metadata values (idx even) as floats, one 32-bit load.
template <int KIND>
__device__ __forceinline__ float2 meta_pair(const uint8_t* base, int idx) {
  const uint32_t w = *reinterpret_cast<const uint32_t*>(base + 2 * idx);
  if constexpr (KIND == 1) return __half22float2(*reinterpret_cast<const __half2*>(&w));
  else return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xFFFF0000u));
}

struct SplitParams {
  int64_t chunk;   // packed tokens per CTA (multiple of kWarps * TT and of the group)
  int nsplit;      // CTAs per (batch, KV head, head pass)
  int passes;      // head passes per KV head: ceil(Gq / 8)
  int np;          // partials per query head: nsplit + 1 (the full-precision split)
  float* ws_o;     // [B, Hq, np, D]
  float* ws_m;     // [B, Hq, np]   running max (base 2)
  float* ws_l;     // [B, Hq, np]   sum of exp2
};

// ------------------------------------------------------------------------------------
template <int KIND, int BITS, int D, int G>
__global__ void __launch_bounds__(kWarps * 32, D <= 128 ? 3 : 2) decode_packed_kernel(DecodeArgs a, SplitParams sp) {
  using L = StageLayout<D, BITS, G>;
  constexpr int TT = L::TT, MT = TileShape<D>::MT, RB = L::RB, NG = L::NG, KT = D / 16;
  constexpr float SC = (float)(1 << BITS);
  extern __shared__ __align__(16) uint8_t smem[];
  // SC * q' of this pass's heads as [D/2 channel pairs][8 heads] float2: the lanes of a
  // warp read 8 heads of one pair at once, conflict-free.
  float2* q_s = reinterpret_cast<float2*>(smem);
  uint8_t* stages = smem + kHeadsPerPass * D * sizeof(float);  // [kWarps][kStages][BYTES]

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int split = blockIdx.x, b = blockIdx.z;
  const int kvh = blockIdx.y / sp.passes, pass = blockIdx.y % sp.passes;
  const int gq = a.Hq / a.Hkv;
  const int h0 = kvh * gq + pass * kHeadsPerPass;
  const int nh = min(kHeadsPerPass, gq - pass * kHeadsPerPass);

  int64_t n = min((int64_t)a.packed_len[b], a.t_cap);
  n = n < 0 ? 0 : n - n % G;
  const int64_t cta_begin = (int64_t)split * sp.chunk;
  const int64_t cta_end = min(cta_begin + sp.chunk, n);

  // Scaled queries of this pass's heads (zeros pad the unused heads).
  const float qscale = a.sm_scale * kLog2e;
  for (int i = threadIdx.x; i < kHeadsPerPass * D / 2; i += blockDim.x) {
    const int h = i % kHeadsPerPass, pr = i / kHeadsPerPass;
    float2 v = make_float2(0.0f, 0.0f);
    if (h < nh) {
      const Bits<KIND>* qh = static_cast<const Bits<KIND>*>(a.q) + ((int64_t)b * a.Hq + h0 + h) * D + 2 * pr;
      v = make_float2(SC * qscale * Storage<KIND>::load(qh[0]), SC * qscale * Storage<KIND>::load(qh[1]));
    }
    q_s[i] = v;
  }
  __syncthreads();

  const int64_t bh = (int64_t)b * a.Hkv + kvh;
  const uint8_t* kc_g = a.k_codes + bh * a.t_cap * RB;
  const uint8_t* vc_g = a.v_codes + bh * a.t_cap * RB;
  const uint8_t* ks_g = static_cast<const uint8_t*>(a.k_scale) + bh * (a.t_cap / G) * D * 2;
  const uint8_t* km_g = static_cast<const uint8_t*>(a.k_mn) + bh * (a.t_cap / G) * D * 2;
  const uint8_t* vs_g = static_cast<const uint8_t*>(a.v_scale) + bh * a.t_cap * NG * 2;
  const uint8_t* vm_g = static_cast<const uint8_t*>(a.v_mn) + bh * a.t_cap * NG * 2;
  uint8_t* my_stages = stages + (size_t)warp * kStages * L::BYTES;

  const int64_t wchunk = sp.chunk / kWarps;
  const int64_t w_begin = cta_begin + warp * wchunk;
  const int64_t w_end = min(w_begin + wchunk, cta_end);
  const int ntiles = w_end > w_begin ? (int)((w_end - w_begin + TT - 1) / TT) : 0;

  auto issue_tile = [&](int i) {
    if (i < ntiles) {
      uint8_t* st = my_stages + (i % kStages) * L::BYTES;
      const int64_t t0 = w_begin + (int64_t)i * TT;
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
        dev::cp_async_16(st + L::KC + c * 16, ok ? kc + c * 16 : kc_g, ok);
        dev::cp_async_16(st + L::VC + c * 16, ok ? vc + c * 16 : vc_g, ok);
      }
#pragma unroll
      for (int c = lane; c < L::NKB * D * 2 / 16; c += 32) {
        const bool ok = c * 16 / (D * 2) < kblocks;
        dev::cp_async_16(st + L::KS + c * 16, ok ? ksb + c * 16 : ks_g, ok);
        dev::cp_async_16(st + L::KM + c * 16, ok ? kmb + c * 16 : km_g, ok);
      }
#pragma unroll
      for (int c = lane; c < TT * NG * 2 / 16; c += 32) {
        const bool ok = c * 16 / (NG * 2) < rows;
        dev::cp_async_16(st + L::VS + c * 16, ok ? vsb + c * 16 : vs_g, ok);
        dev::cp_async_16(st + L::VM + c * 16, ok ? vmb + c * 16 : vm_g, ok);
      }
    }
    dev::cp_async_commit();  // always, so group counting stays uniform
  };

  // Per-thread state. Heads of this lane's S/O columns: 2t and 2t+1.
  float o[KT][4];  // O^T fragments: rows = channels 16*mc + 2g (+1), cols = heads 2t, 2t+1
#pragma unroll
  for (int mc = 0; mc < KT; ++mc) o[mc][0] = o[mc][1] = o[mc][2] = o[mc][3] = 0.0f;
  float corr[NG][2];
#pragma unroll
  for (int gr = 0; gr < NG; ++gr) corr[gr][0] = corr[gr][1] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  // B fragments of qs for head g, split into fp16 hi + lo parts (two mmas share the
  // A fragments) so the scores keep ~22 bits: one fp16 rounding of q'*ks would cost
  // as much as the whole error budget of an fp16 attention.
  uint32_t qsb[KT][2], qsl[KT][2];
  // Rotations that bring this lane's code pairs to the fp16 mantissa tops: keys use
  // pairs t and t+4 (2 bits) or t (4 bits) of a word, values pair g (2 bits) or g%4.
  const int rk0 = pair_rotation<BITS>(t), rk1 = pair_rotation<BITS>(t + 4);
  const int rv = BITS == 2 ? pair_rotation<BITS>(g) : pair_rotation<BITS>(g & 3);
  float cst[2] = {0.0f, 0.0f};  // per-block constant for heads 2t, 2t+1

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) issue_tile(s);

  for (int i = 0; i < ntiles; ++i) {
    dev::cp_async_wait<kStages - 2>();
    __syncwarp();
    issue_tile(i + kStages - 1);
    const uint8_t* st = my_stages + (i % kStages) * L::BYTES;
    const int64_t t0 = w_begin + (int64_t)i * TT;
    const int lim = (int)min((int64_t)TT, w_end - t0);  // valid rows of this stage

    // ---- scores S^T for the stage's MT m-tiles --------------------------------------
    // m-tiles of one key block share the qs fragments; for them the k loop is outer
    // and the m-tile loop inner, so MG independent mma chains interleave.
    constexpr int MG = MT < G / 16 ? MT : G / 16;
    float s[MT][4];
#pragma unroll
    for (int mg = 0; mg < MT; mg += MG) {
      const int64_t tok = t0 + 16 * mg;
      if ((i == 0 && mg == 0) || tok % G == 0) {
        // New key block: B fragments qs = SC * q' * ks and the block constant.
        const int lb = TT >= G ? (16 * mg) / G : 0;
        const uint8_t* ks = st + L::KS + lb * D * 2;
        const uint8_t* km = st + L::KM + lb * D * 2;
        float dot_km = 0.0f, sum_qs = 0.0f;  // sum SC q' km, and sum qs
#pragma unroll
        for (int kt = 0; kt < KT; ++kt) {
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            const int d = 16 * kt + 2 * t + 8 * hf;
            const float2 qv = q_s[(d / 2) * kHeadsPerPass + g];
            const float2 sv = meta_pair<KIND>(ks, d), mv = meta_pair<KIND>(km, d);
            const float px = qv.x * sv.x, py = qv.y * sv.y;
            const uint32_t pk = dev::pack_half2(px, py);
            const float2 pr = __half22float2(*reinterpret_cast<const __half2*>(&pk));
            qsb[kt][hf] = pk;
            qsl[kt][hf] = dev::pack_half2(px - pr.x, py - pr.y);
            dot_km = fmaf(qv.x, mv.x, fmaf(qv.y, mv.y, dot_km));
            sum_qs += px + py;
          }
        }
        float part = dot_km * (1.0f / SC) - sum_qs;
        part += __shfl_xor_sync(0xffffffffu, part, 1);
        part += __shfl_xor_sync(0xffffffffu, part, 2);  // constant of head g, in every lane of the quad
        cst[0] = __shfl_sync(0xffffffffu, part, (2 * t) * 4);
        cst[1] = __shfl_sync(0xffffffffu, part, (2 * t + 1) * 4);
      }
      float acc[MG][4];
#pragma unroll
      for (int m = 0; m < MG; ++m) acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = 0.0f;
#pragma unroll
      for (int v4 = 0; v4 < RB / 16; ++v4) {
        uint32_t r0[MG][4], r1[MG][4];
#pragma unroll
        for (int m = 0; m < MG; ++m) {
          const uint8_t* kr0 = st + L::KC + (16 * (mg + m) + g) * RB + 16 * v4;
          const uint4 w0 = *reinterpret_cast<const uint4*>(kr0);
          const uint4 w1 = *reinterpret_cast<const uint4*>(kr0 + 8 * RB);
          r0[m][0] = w0.x; r0[m][1] = w0.y; r0[m][2] = w0.z; r0[m][3] = w0.w;
          r1[m][0] = w1.x; r1[m][1] = w1.y; r1[m][2] = w1.z; r1[m][3] = w1.w;
        }
        if constexpr (BITS == 2) {  // a word = one 16-channel k-tile
#pragma unroll
          for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int m = 0; m < MG; ++m) {
              const uint32_t af[4] = {code_pair_h2<2>(r0[m][j], rk0), code_pair_h2<2>(r1[m][j], rk0),
                                      code_pair_h2<2>(r0[m][j], rk1), code_pair_h2<2>(r1[m][j], rk1)};
              dev::mma_f16_16816(acc[m], af, qsb[4 * v4 + j][0], qsb[4 * v4 + j][1]);
              dev::mma_f16_16816(acc[m], af, qsl[4 * v4 + j][0], qsl[4 * v4 + j][1]);
            }
        } else {  // two words = one k-tile
#pragma unroll
          for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int m = 0; m < MG; ++m) {
              const uint32_t af[4] = {code_pair_h2<4>(r0[m][2 * j], rk0), code_pair_h2<4>(r1[m][2 * j], rk0),
                                      code_pair_h2<4>(r0[m][2 * j + 1], rk0), code_pair_h2<4>(r1[m][2 * j + 1], rk0)};
              dev::mma_f16_16816(acc[m], af, qsb[2 * v4 + j][0], qsb[2 * v4 + j][1]);
              dev::mma_f16_16816(acc[m], af, qsl[2 * v4 + j][0], qsl[2 * v4 + j][1]);
            }
        }
      }
#pragma unroll
      for (int m = 0; m < MG; ++m) {
        const int mt = mg + m;
        const bool ok0 = 16 * mt + g < lim, ok1 = 16 * mt + g + 8 < lim;
        s[mt][0] = ok0 ? acc[m][0] + cst[0] : -INFINITY;
        s[mt][1] = ok0 ? acc[m][1] + cst[1] : -INFINITY;
        s[mt][2] = ok1 ? acc[m][2] + cst[0] : -INFINITY;
        s[mt][3] = ok1 ? acc[m][3] + cst[1] : -INFINITY;
      }
    }

    // ---- online softmax over the stage (base 2) -------------------------------------
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      mx[0] = fmaxf(mx[0], fmaxf(s[mt][0], s[mt][2]));
      mx[1] = fmaxf(mx[1], fmaxf(s[mt][1], s[mt][3]));
    }
    float alpha[2], m_use[2];
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      mx[c] = fmaxf(mx[c], __shfl_xor_sync(0xffffffffu, mx[c], 4));
      mx[c] = fmaxf(mx[c], __shfl_xor_sync(0xffffffffu, mx[c], 8));
      mx[c] = fmaxf(mx[c], __shfl_xor_sync(0xffffffffu, mx[c], 16));
      const float m_new = fmaxf(m_run[c], mx[c]);
      m_use[c] = m_new == -INFINITY ? 0.0f : m_new;  // all -inf so far: keep exp2 finite
      alpha[c] = exp2f(m_run[c] - m_use[c]);
      m_run[c] = m_new;
      l_run[c] *= alpha[c];
    }
#pragma unroll
    for (int mc = 0; mc < KT; ++mc) {
      o[mc][0] *= alpha[0]; o[mc][1] *= alpha[1];
      o[mc][2] *= alpha[0]; o[mc][3] *= alpha[1];
    }
#pragma unroll
    for (int gr = 0; gr < NG; ++gr) { corr[gr][0] *= alpha[0]; corr[gr][1] *= alpha[1]; }

    // ---- P V ------------------------------------------------------------------------
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      float p[4];
#pragma unroll
      for (int c = 0; c < 4; ++c) p[c] = exp2f(s[mt][c] - m_use[c & 1]);  // 0 for masked tokens
      l_run[0] += p[0] + p[2];
      l_run[1] += p[1] + p[3];
      const int r0 = 16 * mt + g, r1 = r0 + 8;  // stage rows of this lane's two tokens
      const bool ok0 = r0 < lim, ok1 = r1 < lim;
      uint32_t bfr[NG][2], bfl[NG][2];  // P' fragments, fp16 hi + lo parts
      const float sp0 = SC * p[0], sp1 = SC * p[1], sp2 = SC * p[2], sp3 = SC * p[3];
#pragma unroll
      for (int gr = 0; gr < NG; ++gr) {
        const float vs0 = ok0 ? meta_at<KIND>(st + L::VS, r0 * NG + gr) : 0.0f;
        const float vs1 = ok1 ? meta_at<KIND>(st + L::VS, r1 * NG + gr) : 0.0f;
        const float vm0 = ok0 ? meta_at<KIND>(st + L::VM, r0 * NG + gr) : 0.0f;
        const float vm1 = ok1 ? meta_at<KIND>(st + L::VM, r1 * NG + gr) : 0.0f;
        const float b0 = sp0 * vs0, b1 = sp1 * vs0, b2 = sp2 * vs1, b3 = sp3 * vs1;
        const uint32_t top = dev::pack_half2(b0, b1);
        const uint32_t bot = dev::pack_half2(b2, b3);
        const float2 tf = __half22float2(*reinterpret_cast<const __half2*>(&top));
        const float2 bf = __half22float2(*reinterpret_cast<const __half2*>(&bot));
        corr[gr][0] += p[0] * vm0 - b0 + p[2] * vm1 - b2;
        corr[gr][1] += p[1] * vm0 - b1 + p[3] * vm1 - b3;
        bfr[gr][0] = dev::movmatrix_trans(top);  // tokens 2t, 2t+1 of the m-tile, head g
        bfr[gr][1] = dev::movmatrix_trans(bot);  // tokens 2t+8, 2t+9
        bfl[gr][0] = dev::movmatrix_trans(dev::pack_half2(b0 - tf.x, b1 - tf.y));
        bfl[gr][1] = dev::movmatrix_trans(dev::pack_half2(b2 - bf.x, b3 - bf.y));
      }
      // Value codes of this lane's 4 tokens (2t, 2t+1, 2t+8, 2t+9 of the m-tile).
      const uint8_t* vr[4] = {st + L::VC + (16 * mt + 2 * t) * RB, st + L::VC + (16 * mt + 2 * t + 1) * RB,
                              st + L::VC + (16 * mt + 2 * t + 8) * RB, st + L::VC + (16 * mt + 2 * t + 9) * RB};
#pragma unroll
      for (int v4 = 0; v4 < RB / 16; ++v4) {
        uint32_t w[4][4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const uint4 x = *reinterpret_cast<const uint4*>(vr[u] + 16 * v4);
          w[u][0] = x.x; w[u][1] = x.y; w[u][2] = x.z; w[u][3] = x.w;
        }
        constexpr int MC_PER_V4 = BITS == 2 ? 4 : 2;  // channel m-tiles covered by 16 code bytes
#pragma unroll
        for (int j = 0; j < MC_PER_V4; ++j) {
          const int mc = MC_PER_V4 * v4 + j;
          uint32_t x[4];
#pragma unroll
          for (int u = 0; u < 4; ++u) {
            // channel 16*mc + 2g (and +1): 2 bits -> word j, pair g; 4 bits -> word 2j + g/4, pair g%4
            // (a select, not a run-time array index, which would put w in local memory)
            x[u] = BITS == 2 ? code_pair_h2<2>(w[u][j], rv)
                             : code_pair_h2<4>((g >> 2) ? w[u][2 * j + 1] : w[u][2 * j], rv);
          }
          const uint32_t af[4] = {dev::prmt(x[0], x[1], 0x5410u), dev::prmt(x[0], x[1], 0x7632u),
                                  dev::prmt(x[2], x[3], 0x5410u), dev::prmt(x[2], x[3], 0x7632u)};
          const int gr = (16 * mc) / G;
          dev::mma_f16_16816(o[mc], af, bfr[gr][0], bfr[gr][1]);
          dev::mma_f16_16816(o[mc], af, bfl[gr][0], bfl[gr][1]);
        }
      }
    }
    __syncwarp();  // the stage is overwritten by a later issue
  }
  dev::cp_async_wait<0>();

  // ---- finish the warp: reduce over the 8 token lanes, fold the value-min term ---------
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    l_run[c] += __shfl_xor_sync(0xffffffffu, l_run[c], 4);
    l_run[c] += __shfl_xor_sync(0xffffffffu, l_run[c], 8);
    l_run[c] += __shfl_xor_sync(0xffffffffu, l_run[c], 16);
#pragma unroll
    for (int gr = 0; gr < NG; ++gr) {
      corr[gr][c] += __shfl_xor_sync(0xffffffffu, corr[gr][c], 4);
      corr[gr][c] += __shfl_xor_sync(0xffffffffu, corr[gr][c], 8);
      corr[gr][c] += __shfl_xor_sync(0xffffffffu, corr[gr][c], 16);
    }
  }
  __syncthreads();  // all warps done with their stages: reuse them for the merge
  float* wo = reinterpret_cast<float*>(stages);                 // [kWarps][8][D]
  float* wm = wo + kWarps * kHeadsPerPass * D;                  // [kWarps][8]
  float* wl = wm + kWarps * kHeadsPerPass;                      // [kWarps][8]
#pragma unroll
  for (int mc = 0; mc < KT; ++mc) {
    const int gr = (16 * mc) / G, ch = 16 * mc + 2 * g;
    float* base = wo + warp * kHeadsPerPass * D;
    base[(2 * t) * D + ch] = o[mc][0] + corr[gr][0];
    base[(2 * t + 1) * D + ch] = o[mc][1] + corr[gr][1];
    base[(2 * t) * D + ch + 1] = o[mc][2] + corr[gr][0];
    base[(2 * t + 1) * D + ch + 1] = o[mc][3] + corr[gr][1];
  }
  if (g == 0) {
    wm[warp * kHeadsPerPass + 2 * t] = m_run[0];
    wm[warp * kHeadsPerPass + 2 * t + 1] = m_run[1];
    wl[warp * kHeadsPerPass + 2 * t] = l_run[0];
    wl[warp * kHeadsPerPass + 2 * t + 1] = l_run[1];
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
        ov += f * wo[(w * kHeadsPerPass + h) * D + d];
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
}

// ------------------------------------------------------------------------------------
// Sinks and residual window: full-precision tokens, one warp per query head, lanes
// split the channels. Tokens go in batches of 8 whose loads are all issued before
// any use, so the warp waits for memory once per batch, not once per token.
// Writes the last partial slot.
template <int KIND, int D>
__global__ void __launch_bounds__(128) decode_fp_kernel(DecodeArgs a, SplitParams sp) {
  constexpr int CPL = D / 32;  // channels per lane (consecutive)
  constexpr int NB = 8;        // tokens per batch
  const int lane = threadIdx.x & 31;
  const int64_t unit = (int64_t)blockIdx.x * 4 + (threadIdx.x >> 5);
  if (unit >= (int64_t)a.B * a.Hq) return;
  const int b = (int)(unit / a.Hq), h = (int)(unit % a.Hq);
  const int kvh = h / (a.Hq / a.Hkv);
  const float qscale = a.sm_scale * kLog2e;
  float q[CPL], o[CPL];
#pragma unroll
  for (int j = 0; j < CPL; ++j) {
    q[j] = Storage<KIND>::load(static_cast<const Bits<KIND>*>(a.q)[unit * D + lane * CPL + j]) * qscale;
    o[j] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  auto segment = [&](const void* kp, const void* vp, int64_t cap, int64_t len) {
    len = len < 0 ? 0 : min(len, cap);
    const Bits<KIND>* k = static_cast<const Bits<KIND>*>(kp) + ((int64_t)b * a.Hkv + kvh) * cap * D + lane * CPL;
    const Bits<KIND>* v = static_cast<const Bits<KIND>*>(vp) + ((int64_t)b * a.Hkv + kvh) * cap * D + lane * CPL;
    for (int64_t t0 = 0; t0 < len; t0 += NB) {
      float kx[NB][CPL], vx[NB][CPL];
#pragma unroll
      for (int u = 0; u < NB; ++u) {
        const int64_t tk = min(t0 + u, len - 1);  // a valid row; surplus tokens are masked below
#pragma unroll
        for (int j = 0; j < CPL; ++j) {
          kx[u][j] = Storage<KIND>::load(k[tk * D + j]);
          vx[u][j] = Storage<KIND>::load(v[tk * D + j]);
        }
      }
      float sc[NB];
#pragma unroll
      for (int u = 0; u < NB; ++u) {
        float dot = 0.0f;
#pragma unroll
        for (int j = 0; j < CPL; ++j) dot += q[j] * kx[u][j];
        sc[u] = dot;
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1)
#pragma unroll
        for (int u = 0; u < NB; ++u) sc[u] += __shfl_xor_sync(0xffffffffu, sc[u], off);
      float m_new = m;
#pragma unroll
      for (int u = 0; u < NB; ++u) {
        if (t0 + u >= len) sc[u] = -INFINITY;
        m_new = fmaxf(m_new, sc[u]);
      }
      const float alpha = exp2f(m - m_new);  // m_new is finite: the batch holds a real token
      l *= alpha;
#pragma unroll
      for (int j = 0; j < CPL; ++j) o[j] *= alpha;
#pragma unroll
      for (int u = 0; u < NB; ++u) {
        const float p = exp2f(sc[u] - m_new);
        l += p;
#pragma unroll
        for (int j = 0; j < CPL; ++j) o[j] += p * vx[u][j];
      }
      m = m_new;
    }
  };
  if (a.sink_len != nullptr && a.s_cap > 0) segment(a.k_sink, a.v_sink, a.s_cap, a.sink_len[b]);
  if (a.r_cap > 0) segment(a.k_resid, a.v_resid, a.r_cap, a.resid_len[b]);
  const int64_t slot = unit * sp.np + sp.np - 1;
#pragma unroll
  for (int j = 0; j < CPL; ++j) sp.ws_o[slot * D + lane * CPL + j] = o[j];
  if (lane == 0) {
    sp.ws_m[slot] = m;
    sp.ws_l[slot] = l;
  }
}

// Combines the partials of each (sequence, query head) by log-sum-exp.
template <int KIND, int D>
__global__ void __launch_bounds__(128) decode_merge_kernel(DecodeArgs a, SplitParams sp) {
  const int64_t unit = blockIdx.x;
  const float* m = sp.ws_m + unit * sp.np;
  const float* l = sp.ws_l + unit * sp.np;
  float mx = -INFINITY;
  for (int p = 0; p < sp.np; ++p) mx = fmaxf(mx, m[p]);
  float lsum = 0.0f;
  if (mx != -INFINITY)
    for (int p = 0; p < sp.np; ++p) lsum += exp2f(m[p] - mx) * l[p];
  Bits<KIND>* out = static_cast<Bits<KIND>*>(a.out) + unit * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.0f;
    if (lsum > 0.0f) {
      for (int p = 0; p < sp.np; ++p) acc += exp2f(m[p] - mx) * sp.ws_o[(unit * sp.np + p) * D + d];
      acc /= lsum;
    }
    out[d] = Storage<KIND>::store(acc);
  }
  if (threadIdx.x == 0) a.lse[unit] = lsum > 0.0f ? (mx + log2f(lsum)) * kLn2 : -INFINITY;
}

// ------------------------------------------------------------------------------------
// One instantiation of the packed kernel: its shared memory, how many of its CTAs fit
// on an SM (asked of the runtime once), and its launch.
template <int KIND, int BITS, int D, int G>
struct Packed {
  static constexpr int TT = TileShape<D>::TT;
  static size_t smem() {
    using L = StageLayout<D, BITS, G>;
    const size_t stage_bytes = (size_t)kWarps * kStages * L::BYTES;
    const size_t merge_bytes = (size_t)kWarps * kHeadsPerPass * (D + 2) * sizeof(float);
    return kHeadsPerPass * D * sizeof(float) + std::max(stage_bytes, merge_bytes);  // q_s + stages
  }
  static int ctas_per_sm() {
    static const int n = [] {
      int blocks = 1;
      auto kernel = decode_packed_kernel<KIND, BITS, D, G>;
      if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem()) == cudaSuccess)
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kWarps * 32, smem());
      cudaGetLastError();  // a failed query leaves the estimate at 1, never an error for the caller
      return std::max(blocks, 1);
    }();
    return n;
  }
  static cudaError_t launch(const DecodeArgs& a, const SplitParams& sp, cudaStream_t st) {
    auto kernel = decode_packed_kernel<KIND, BITS, D, G>;
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem());
    if (e != cudaSuccess) return e;
    const dim3 grid((unsigned)sp.nsplit, (unsigned)(a.Hkv * sp.passes), (unsigned)a.B);
    kernel<<<grid, kWarps * 32, smem(), st>>>(a, sp);
    return cudaGetLastError();
  }
};

// Calls f(Packed<...>{}) for the instantiation that serves `a` (false: none does).
template <typename F>
bool visit_packed(const DecodeArgs& a, F&& f) {
  auto by_group = [&](auto kind, auto bits, auto dim) {
    constexpr int K = decltype(kind)::value, B = decltype(bits)::value, D = decltype(dim)::value;
    switch (a.group) {
      case 32: f(Packed<K, B, D, 32>{}); return true;
      case 64: f(Packed<K, B, D, 64>{}); return true;
      default:
        if constexpr (D % 128 == 0) {
          f(Packed<K, B, D, 128>{});
          return true;
        }
        return false;  // group 128 needs D >= 128 (the glue rejects it first)
    }
  };
  auto by_dim = [&](auto kind, auto bits) {
    switch (a.D) {
      case 64: return by_group(kind, bits, std::integral_constant<int, 64>{});
      case 128: return by_group(kind, bits, std::integral_constant<int, 128>{});
      default: return by_group(kind, bits, std::integral_constant<int, 256>{});
    }
  };
  auto by_bits = [&](auto kind) {
    return a.bits == 2 ? by_dim(kind, std::integral_constant<int, 2>{}) : by_dim(kind, std::integral_constant<int, 4>{});
  };
  return a.dtype == DType::BF16 ? by_bits(std::integral_constant<int, 2>{}) : by_bits(std::integral_constant<int, 1>{});
}

// Chooses the split size. CTAs run in waves of (SMs x CTAs per SM); a last wave that is
// mostly empty wastes the GPU, so among 1..8 waves' worth of splits take the one whose
// CTA count fills its waves best, keeping at least two tiles per warp.
SplitParams plan_splits(const DecodeArgs& a, int num_sms) {
  SplitParams sp{};
  const int gq = a.Hq / a.Hkv;
  sp.passes = (gq + kHeadsPerPass - 1) / kHeadsPerPass;
  int per_sm = 1, tt = 64;
  visit_packed(a, [&](auto p) {
    per_sm = decltype(p)::ctas_per_sm();
    tt = decltype(p)::TT;
  });
  const int64_t align = std::max<int64_t>((int64_t)kWarps * tt, a.group);  // chunk granularity
  const int64_t min_chunk = std::max<int64_t>(align, 2LL * kWarps * tt);
  const int64_t units = (int64_t)a.B * a.Hkv * sp.passes;
  const int64_t slots = (int64_t)num_sms * per_sm;
  int64_t best_chunk = 0;
  double best_eff = -1.0;
  for (int waves = 1; waves <= 8; ++waves) {
    const int64_t target = std::max<int64_t>(1, (waves * slots + units - 1) / units);
    int64_t chunk = (a.t_cap + target - 1) / target;
    chunk = std::max(min_chunk, (chunk + align - 1) / align * align);
    const int64_t ctas = (a.t_cap + chunk - 1) / chunk * units;
    const double eff = (double)ctas / (double)(((ctas + slots - 1) / slots) * slots);
    if (eff > best_eff + 0.02) {  // prefer fewer, larger splits unless clearly better
      best_eff = eff;
      best_chunk = chunk;
    }
  }
  sp.chunk = best_chunk;
  sp.nsplit = a.t_cap > 0 ? (int)((a.t_cap + best_chunk - 1) / best_chunk) : 0;
  sp.np = sp.nsplit + 1;
  return sp;
}

template <int KIND, int D>
cudaError_t run_all(const DecodeArgs& a, const SplitParams& sp, cudaStream_t st) {
  if (sp.nsplit > 0) {
    cudaError_t e = cudaErrorInvalidValue;
    visit_packed(a, [&](auto p) { e = decltype(p)::launch(a, sp, st); });
    if (e != cudaSuccess) return e;
  }
  const int64_t units = (int64_t)a.B * a.Hq;
  decode_fp_kernel<KIND, D><<<(unsigned)((units + 3) / 4), 128, 0, st>>>(a, sp);
  decode_merge_kernel<KIND, D><<<(unsigned)units, 128, 0, st>>>(a, sp);
  return cudaGetLastError();
}

template <int KIND>
cudaError_t dispatch_dim(const DecodeArgs& a, const SplitParams& sp, cudaStream_t st) {
  switch (a.D) {
    case 64: return run_all<KIND, 64>(a, sp, st);
    case 128: return run_all<KIND, 128>(a, sp, st);
    default: return run_all<KIND, 256>(a, sp, st);
  }
}

}  // namespace

size_t decode_attention_cuda_workspace(const DecodeArgs& a, int num_sms) {
  const SplitParams sp = plan_splits(a, num_sms);
  const size_t slots = (size_t)a.B * a.Hq * sp.np;
  return slots * ((size_t)a.D + 2) * sizeof(float);
}

cudaError_t decode_attention_cuda(const DecodeArgs& a, void* workspace, int num_sms, cudaStream_t stream) {
  if ((int64_t)a.B * a.Hq == 0) return cudaSuccess;
  SplitParams sp = plan_splits(a, num_sms);
  const size_t slots = (size_t)a.B * a.Hq * sp.np;
  sp.ws_o = static_cast<float*>(workspace);
  sp.ws_m = sp.ws_o + slots * a.D;
  sp.ws_l = sp.ws_m + slots;
  return a.dtype == DType::BF16 ? dispatch_dim<2>(a, sp, stream) : dispatch_dim<1>(a, sp, stream);
}

}  // namespace kvcore
