// Shared by the decode-attention CUDA translation units: the split plan, the
// constants of the work split, and the per-(dtype, bits) entry points of the packed
// kernel (defined in decode_packed.cuh, instantiated in decode_packed_*.cu so that
// the many kernel instantiations compile in parallel).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../decode_attention.h"

namespace kvcore {
namespace decode_detail {

constexpr int kWarps = 4;         // warps per split CTA
constexpr int kHeadsPerPass = 8;  // query heads per CTA (the mma N dimension)
constexpr int kStages = 2;        // cp.async pipeline depth per warp (2 keeps 4+ CTAs per SM)
// The packed kernel's running softmax reference sits this far (base 2) above the max it
// grew to, so that a stage whose max creeps up a little does not rescale (see the kernel).
constexpr float kMaxSlack = 2.0f;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// The split CTAs form a 1-D grid of phases, launched (and so, as slots free up, started)
// in this order, each split-major (CTA k of unit u is the phase's block k * units + u):
// `nbig` chunks of `chunk` tokens per unit, one wave; `nsmall` chunks of `small_chunk`
// tokens; `ntiny` chunks of `tiny_chunk` tokens covering the rest; and the full-precision
// split of every unit (sinks and residual window) at block `fp_at`: last, or first where
// the big chunks are short. A unit is (sequence, KV head, head pass).
// * The small and tiny chunks are there for the tail: CTAs of the last wave start
//   staggered, and while they finish the GPU empties; smaller last CTAs empty it sooner.
// * The first wave is all big chunks, one more per unit than with the full-precision
//   splits first (H100, 2 bits, B=8 Hkv=8: 128K 257 -> 244 us, session 15). Launched last,
//   the full-precision CTAs (tensor cores since session 16, ~7 us under load) start in
//   the tail, where slots free up (32K: 73.6 -> 72.9 us in the torch-free binary against
//   launching them after the big chunks). Where the big chunks are short they go first
//   (`fp_at` = 0): started after them they end in the step's tail (16K: 45.5 -> 47.0 us;
//   bench/PERF-NOTES.md, session 15).
struct SplitParams {
  int64_t chunk;        // packed tokens per big CTA (multiple of kWarps * TT and of the group)
  int64_t small_chunk;  // packed tokens per small CTA (same alignment)
  int64_t tiny_chunk;   // packed tokens per tiny CTA (same alignment)
  int64_t tiny_at;      // first token of the tiny CTAs: nbig * chunk + nsmall * small_chunk
  int nbig, nsmall, ntiny;  // CTAs of each size per unit
  int nsplit;           // packed CTAs per unit: nbig + nsmall + ntiny
  int passes;           // head passes per KV head: ceil(Gq / 8)
  int np;               // partials per query head: nsplit + 1 (the full-precision split, last)
  int fp_at;            // block index of the first full-precision split: 0 or units * nsplit
  float* ws_o;     // [B, Hq, np, D]
  float* ws_m;     // [B, Hq, np]   running max (base 2)
  float* ws_l;     // [B, Hq, np]   sum of exp2
  float* ws_vo;    // h4_outliers with value outliers, 2 bits: [packed CTAs][kWarps][value_outlier_warp_floats(D)] sums
  // Dynamic tiles (static_tiles > 0; the value-outlier kernels with their sums in global
  // memory; tiles of TT tokens, runs of R = tile_run_mask + 1 tiles, R a power of two): a
  // warp takes the static run of S = max(2, R) tiles from S (split kWarps + warp) of its
  // unit, then runs by ticket: tiles static_tiles + R dev::take_ticket(tile_ctr + unit *
  // tile_stride + 2) onwards, until the sequence's end, so that the CTAs of a unit end
  // together whatever their SM's speed. tile_ctr: the units' tickets in the workspace
  // (tile_stride >= 4 ints apart: a 64-bit epoch, then the count; see dev::open_tickets).
  int static_tiles;
  int tile_run_mask;
  int tile_stride;
  int* tile_ctr;
#ifdef KVCORE_DECODE_PLAN_KNOBS
  int exp_flags;   // profiling build only: $KVCORE_EXP, for variants under an A/B (no kernel reads it at
                   // present; plan_splits' dynamic-tile variants do; bench/PERF-NOTES.md, sessions 30-31)
#endif
};

// The corrections served by the H4 outlier kernel (decode_packed.cuh): at most two
// sparse outliers a token in keys (1% of head_dim 128 is 1.3; the best-2 preset stores
// 2) and two in values (session 22), without low rank or attention mass, GQA groups of at most 4
// heads (the H4 layout's), any head_dim (64 since session 21: the 8-column kernel had
// kept 0.43-0.63x of the plain speed there). Its offsets are then constants. The other
// corrections use the 8-column kernel. h4_outliers_miss: why the sparse outliers of `a`
// cannot take the H4 kernel (a short phrase for the user, decode_attention_cuda_slow_outliers),
// or nullptr where they can or none are given.
inline const char* h4_outliers_miss(const DecodeArgs& a) {
  if (a.k_outliers == 0 && a.v_outliers == 0) return nullptr;
  if (a.k_outliers > 2 || a.v_outliers > 2) return "more than 2 outliers a token in keys or values";
  if (a.k_rank > 0 || a.v_rank > 0) return "outliers together with low-rank terms";
  if (a.attn_mass != nullptr) return "outliers together with attn_mass";
  if (a.Hq / a.Hkv > 4) return "a GQA group of more than 4 query heads a KV head";
  return nullptr;
}
inline bool h4_outliers(const DecodeArgs& a) {
  return (a.k_outliers > 0 || a.v_outliers > 0) && h4_outliers_miss(a) == nullptr;
}

// Where the H4 outlier kernel adds its value outliers: into per-warp integer sums in shared
// memory at 4 bits with one value outlier a token (memory-bound, where one L2 reduction a
// token cost ~13% at D = 128, session 9; from D = 64 since session 34: H200, B=8 Hq=32
// Hkv=8, one outlier a side, 0.784 / 0.790 / 0.764 / 0.764x of plain at 16K / 32K / 64K /
// 128K -> 0.866 / 0.847 / 0.852 / 0.855x, bench/RESULTS.md session 34; session 23's float
// shared-memory sums there had been mixed on the H100, before the integer sums of session
// 24), or by L2 reductions into per-warp sums in global memory: 2 bits, and two value
// outliers a token (cv = 2), whose two rounds of shared-memory adds cost more (H200, D =
// 128, two a side 8K 49.0 -> 41.0 us, 32K 132.5 -> 118.2, 128K 478.1 -> 426.3, plain 34.0
// / 86.7 / 295.3; session 22, float sums; the integer sums were not tried for cv = 2). At 2
// bits the integer sums were tried too (D = 128, room made by q' rows D + 1, a 4-head q
// table and 24 copy sources a warp) and were slower than the L2 reductions: H200, one
// outlier a side 0.863 / 0.832 / 0.876x of plain -> 0.840 / 0.818 / 0.836 at 8K / 32K /
// 128K (bench/PERF-NOTES.md, session 25).
inline constexpr int kVoSmemMinD = 64;
__host__ __device__ constexpr bool h4_value_sums_in_smem(int D, int bits, int cv = 1) {
  return bits == 4 && D >= kVoSmemMinD && cv == 1;
}
// The H4 outlier kernels (with value outliers) that take their tiles by ticket
// (SplitParams::static_tiles):
// * those whose value sums are in global memory and whose key blocks are exactly one stage
//   (G == TT, TT: the stage's tokens), except at 4 bits (two value outliers a token at
//   D >= 128). At G < TT the two registers the tickets take spilled (G = 32 at 2 bits and
//   D = 128), as they did in the 4-bit D = 128 G = 32 two-a-side kernel.
// * those with their value sums in shared memory (4 bits, one value outlier a token) where
//   G % TT == 0, in runs of whole key blocks (G / TT tiles; plan_splits): a key block over
//   several stages keeps its query fragments from its first stage, which a lone ticket
//   could skip (session 30's 32 test failures). Session 35 (H200, bench/RESULTS.md): B=8
//   D=256 16K-64K 0.87-0.88x of plain -> 1.06-1.07x (of the plain plan then, which took
//   the uniform layout after it), B=16 D=128 16K-24K +3-4 points, B=8 D=64 32K-128K +2;
//   no spills (compared with -Xptxas=-v, session 34).
__host__ __device__ constexpr bool h4_dynamic_tiles(int D, int bits, int G, int TT, int cv) {
  if (h4_value_sums_in_smem(D, bits, cv)) return G % TT == 0;
  return G == TT && !(bits == 4 && D >= 128);
}
// Floats of one warp's value-outlier sums in SplitParams::ws_vo: [D + 1][4] (row D: a
// dump for indices >= D), rounded up to whole 128-byte lines, which the warp discards
// from L2 once it has read them (no write-back; no line holds another warp's sums).
__host__ __device__ constexpr int value_outlier_warp_floats(int D) { return ((D + 1) * 4 + 31) / 32 * 32; }

// Profiling build (KVCORE_DECODE_TIMELINE): record `rec` of a.timeline is 8 words:
// 0 start, 1 query table built, 2-5 end of warp 0-3's stage loop, 6 end, 7 SM id.
// Records [0, B*Hq) are the merge CTAs (one per query head), then the split CTAs in
// launch order. Compiled out otherwise, so the kernels' code is unchanged.
__device__ __forceinline__ void timeline_stamp(unsigned long long* tl, int64_t rec, int slot) {
#ifdef KVCORE_DECODE_TIMELINE
  if (tl == nullptr) return;
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  tl[rec * 8 + slot] = t;
  if (slot == 0) {
    unsigned sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    tl[rec * 8 + 7] = sm;
  }
#else
  (void)tl; (void)rec; (void)slot;
#endif
}

// Entry points of the packed kernel for one (KIND: 1 fp16, 2 bf16; BITS; head_dim D)
// triple, defined in decode_packed.cuh and instantiated one triple a translation unit
// (decode_packed_<dtype>_<bits>bit_d<D>.cu), so that the many kernel instantiations
// compile in parallel (by (dtype, bits) only, the longest of four units took 77 s on a
// 2-core machine, the longest of these twelve 36 s; session 33).
template <int KIND, int BITS, int D>
int packed_ctas_per_sm_d(const DecodeArgs& a);  // CTAs of the instantiation serving `a` per SM
template <int KIND, int BITS, int D>
int packed_tile_tokens_d(const DecodeArgs& a);  // tokens per pipeline stage
template <int KIND, int BITS, int D>
cudaError_t packed_launch_d(const DecodeArgs& a, const SplitParams& sp, cudaStream_t st);

#define KVCORE_DECODE_PACKED_ENTRY_POINTS(SPEC, K, B, D)                                       \
  SPEC template int packed_ctas_per_sm_d<K, B, D>(const DecodeArgs&);                          \
  SPEC template int packed_tile_tokens_d<K, B, D>(const DecodeArgs&);                          \
  SPEC template cudaError_t packed_launch_d<K, B, D>(const DecodeArgs&, const SplitParams&, cudaStream_t);
#define KVCORE_DECODE_PACKED_ENTRY_POINTS_ALL_D(SPEC, K, B) \
  KVCORE_DECODE_PACKED_ENTRY_POINTS(SPEC, K, B, 64)         \
  KVCORE_DECODE_PACKED_ENTRY_POINTS(SPEC, K, B, 128)        \
  KVCORE_DECODE_PACKED_ENTRY_POINTS(SPEC, K, B, 256)
KVCORE_DECODE_PACKED_ENTRY_POINTS_ALL_D(extern, 1, 2)
KVCORE_DECODE_PACKED_ENTRY_POINTS_ALL_D(extern, 1, 4)
KVCORE_DECODE_PACKED_ENTRY_POINTS_ALL_D(extern, 2, 2)
KVCORE_DECODE_PACKED_ENTRY_POINTS_ALL_D(extern, 2, 4)

// f(integral_constant<int, D>) with the head_dim of `a` (64, 128, else 256: the glue
// rejects the rest).
template <typename F>
auto for_head_dim(const DecodeArgs& a, F&& f) {
  if (a.D == 64) return f(std::integral_constant<int, 64>{});
  if (a.D == 128) return f(std::integral_constant<int, 128>{});
  return f(std::integral_constant<int, 256>{});
}
template <int KIND, int BITS>
int packed_ctas_per_sm(const DecodeArgs& a) {
  return for_head_dim(a, [&](auto d) { return packed_ctas_per_sm_d<KIND, BITS, decltype(d)::value>(a); });
}
template <int KIND, int BITS>
int packed_tile_tokens(const DecodeArgs& a) {
  return for_head_dim(a, [&](auto d) { return packed_tile_tokens_d<KIND, BITS, decltype(d)::value>(a); });
}
template <int KIND, int BITS>
cudaError_t packed_launch(const DecodeArgs& a, const SplitParams& sp, cudaStream_t st) {
  return for_head_dim(a, [&](auto d) { return packed_launch_d<KIND, BITS, decltype(d)::value>(a, sp, st); });
}

}  // namespace decode_detail
}  // namespace kvcore
