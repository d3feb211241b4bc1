// Fused decode attention over the packed KV cache: the split plan, the launches and the
// log-sum-exp merge. The packed split kernel itself (its math and work split) is in
// decode_packed.cuh.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#ifdef KVCORE_DECODE_PLAN_KNOBS
#include <cstdio>
#endif
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../decode_attention.h"
#include "decode_common.cuh"
#include "mma_utils.cuh"
#include "quant_device.cuh"

namespace kvcore {
namespace {

using namespace decode_detail;
using dev::Bits;

// f(kind, bits) with the (dtype, bits) of `a` as integral constants.
template <typename F>
auto for_kind_bits(const DecodeArgs& a, F&& f) {
  using F16 = std::integral_constant<int, 1>;
  using BF16 = std::integral_constant<int, 2>;
  using Two = std::integral_constant<int, 2>;
  using Four = std::integral_constant<int, 4>;
  if (a.dtype == DType::BF16) return a.bits == 2 ? f(BF16{}, Two{}) : f(BF16{}, Four{});
  return a.bits == 2 ? f(F16{}, Two{}) : f(F16{}, Four{});
}

// ------------------------------------------------------------------------------------
// Combines the partials of each (sequence, query head) by log-sum-exp; a CTA per unit.
// Latency is what costs here (the partials are a few KB a unit, just written to L2), so
// every load is issued at once: the threads split the partials' float4 channel columns
// and, kMergeThreads / (D / 4) ways, the partials, and load up to kMergeItems each before
// the (max, sum) pairs, read a thread per partial, are reduced across the CTA. (Serial
// loops over the pairs in every thread made this kernel 8 us at 33 partials.)
constexpr int kMergeThreads = 256;
constexpr int kMergeItems = 8;
__device__ __forceinline__ float block_reduce(float x, bool is_max, float* red) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float y = __shfl_xor_sync(0xffffffffu, x, off);
    x = is_max ? fmaxf(x, y) : x + y;
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // red is free (an earlier reduction has been read)
  if (lane == 0) red[warp] = x;
  __syncthreads();
  x = red[0];
#pragma unroll
  for (int w = 1; w < kMergeThreads / 32; ++w) x = is_max ? fmaxf(x, red[w]) : x + red[w];
  return x;
}
template <int KIND, int D>
__global__ void __launch_bounds__(kMergeThreads) decode_merge_kernel(DecodeArgs a, SplitParams sp) {
  constexpr int C4 = D / 4;                  // float4 columns of a partial
  constexpr int PG = kMergeThreads / C4;     // partial groups
  __shared__ float4 part_s[PG][C4];
  __shared__ float red[kMergeThreads / 32];
  extern __shared__ float w_s[];  // [np] weights 2^(m_p - max)
  const int64_t unit = blockIdx.x;
  if (threadIdx.x == 0) timeline_stamp(a.timeline, unit, 0);
  dev::wait_primary();  // launched as a programmatic dependent of the split kernel
  // Dynamic tiles: close the split kernel's tickets (epoch 0), so that a replay of the
  // same graph, whose split kernel has the same %gridid, opens them again (dev::open_tickets).
  if (sp.tile_ctr != nullptr && unit == 0) {
    const int64_t units = (int64_t)a.B * a.Hkv * sp.passes;
    for (int64_t u = threadIdx.x; u < units; u += blockDim.x)
      *reinterpret_cast<unsigned long long*>(sp.tile_ctr + u * sp.tile_stride) = 0ull;
  }
  const int np = sp.np;
  const float* m = sp.ws_m + unit * np;
  const float* l = sp.ws_l + unit * np;
  const float4* wo = reinterpret_cast<const float4*>(sp.ws_o + unit * np * D);
  const int c = threadIdx.x % C4, pg = threadIdx.x / C4;
  float4 x[kMergeItems];
#pragma unroll
  for (int u = 0; u < kMergeItems; ++u) {
    const int p = pg + u * PG;
    x[u] = p < np ? wo[(int64_t)p * C4 + c] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
  // Partial threadIdx.x's max and sum, loaded with the rest (their own round trip after
  // the max's reduction cost ~0.5 us); partials past kMergeThreads in loops.
  const bool own = (int)threadIdx.x < np;
  const float m_own = own ? m[threadIdx.x] : -INFINITY, l_own = own ? l[threadIdx.x] : 0.0f;
  float mx = m_own;
  for (int p = threadIdx.x + kMergeThreads; p < np; p += kMergeThreads) mx = fmaxf(mx, m[p]);
  mx = block_reduce(mx, true, red);
  float lsum = 0.0f;
  if (own) {
    const float w = mx == -INFINITY ? 0.0f : exp2f(m_own - mx);
    w_s[threadIdx.x] = w;
    lsum = w * l_own;
  }
  for (int p = threadIdx.x + kMergeThreads; p < np; p += kMergeThreads) {
    const float w = mx == -INFINITY ? 0.0f : exp2f(m[p] - mx);
    w_s[p] = w;
    lsum += w * l[p];
  }
  lsum = block_reduce(lsum, false, red);  // (its barriers also publish w_s)
  float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  auto add = [&](const float4& v, int p) {
    const float w = w_s[p];
    acc.x = fmaf(w, v.x, acc.x); acc.y = fmaf(w, v.y, acc.y);
    acc.z = fmaf(w, v.z, acc.z); acc.w = fmaf(w, v.w, acc.w);
  };
#pragma unroll
  for (int u = 0; u < kMergeItems; ++u)
    if (pg + u * PG < np) add(x[u], pg + u * PG);
  for (int p0 = kMergeItems * PG; p0 < np; p0 += kMergeItems * PG) {  // many partials: more rounds
#pragma unroll
    for (int u = 0; u < kMergeItems; ++u) {
      const int p = p0 + pg + u * PG;
      if (p < np) x[u] = wo[(int64_t)p * C4 + c];
    }
#pragma unroll
    for (int u = 0; u < kMergeItems; ++u)
      if (p0 + pg + u * PG < np) add(x[u], p0 + pg + u * PG);
  }
  part_s[pg][c] = acc;
  __syncthreads();
  Bits<KIND>* out = static_cast<Bits<KIND>*>(a.out) + unit * D;
  const float* part = reinterpret_cast<const float*>(part_s);
  for (int d = threadIdx.x; d < D; d += kMergeThreads) {
    float sum = 0.0f;
#pragma unroll
    for (int g = 0; g < PG; ++g) sum += part[g * D + d];
    out[d] = Storage<KIND>::store(lsum > 0.0f ? sum / lsum : 0.0f);
  }
  if (threadIdx.x == 0) {
    a.lse[unit] = lsum > 0.0f ? (mx + log2f(lsum)) * kLn2 : -INFINITY;
    timeline_stamp(a.timeline, unit, 6);
  }
}

// Bytes of packed cache per token and KV head (codes, scales and minima of K and V).
int64_t packed_token_bytes(const DecodeArgs& a) {
  return 2LL * a.D * a.bits / 8 + 4LL * a.D / a.group + 4LL * a.D / a.v_group;
}

#ifdef KVCORE_DECODE_PLAN_KNOBS
// Profiling build: prints a plan to stderr (KVCORE_PLAN_PRINT set) when it differs from the last.
void print_plan(const SplitParams& sp, int per_sm) {
  static SplitParams last{};
  if (std::getenv("KVCORE_PLAN_PRINT") == nullptr ||
      (last.chunk == sp.chunk && last.nbig == sp.nbig && last.nsmall == sp.nsmall && last.ntiny == sp.ntiny &&
       last.small_chunk == sp.small_chunk && last.tiny_chunk == sp.tiny_chunk && last.fp_at == sp.fp_at &&
       last.static_tiles == sp.static_tiles && last.tile_run_mask == sp.tile_run_mask &&
       last.tile_stride == sp.tile_stride))
    return;
  last = sp;
  std::fprintf(stderr, "plan: per_sm %d big %lld x %d small %lld x %d tiny %lld x %d fp_at %d", per_sm,
               (long long)sp.chunk, sp.nbig, (long long)sp.small_chunk, sp.nsmall, (long long)sp.tiny_chunk, sp.ntiny,
               sp.fp_at);
  if (sp.static_tiles > 0)
    std::fprintf(stderr, " dynamic: static %d run %d stride %d", sp.static_tiles, sp.tile_run_mask + 1, sp.tile_stride);
  std::fprintf(stderr, "\n");
}
#define KVCORE_NOTE_PLAN(sp, per_sm) print_plan(sp, per_sm)
#else
#define KVCORE_NOTE_PLAN(sp, per_sm)
#endif

// Peak DRAM bandwidth of the current device in GB/s (memory clock x bus width, both
// edges), 0 where the driver does not say; read once a device (host attributes, no sync).
// The dynamic tiles' threshold depends on it (plan_splits).
double dram_gbps() {
  static std::atomic<double> cache[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 0.0;
  double v = cache[dev].load(std::memory_order_relaxed);
  if (v == 0.0) {
    int khz = 0, bits = 0;
    if (cudaDeviceGetAttribute(&khz, cudaDevAttrMemoryClockRate, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&bits, cudaDevAttrGlobalMemoryBusWidth, dev) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0.0;
    }
    v = 2.0 * khz * 1e3 * (bits / 8) / 1e9;
    cache[dev].store(v, std::memory_order_relaxed);
  }
  return v;
}

// The H4 outlier kernel with value outliers at 2 bits, or two a token: its value sums
// live in global memory (SplitParams::ws_vo).
bool value_sums_in_global(const DecodeArgs& a) {
  return h4_outliers(a) && a.v_outliers > 0 && !h4_value_sums_in_smem(a.D, a.bits, a.v_outliers);
}

// The 4-bit value-outlier kernels with their sums in shared memory take tickets from this
// many tiles a warp (14; 20 at D = 256), on any card. H200, Hq=32 Hkv=8 bf16, one outlier
// a side against plain, tickets from 10 / 14 / 20 tiles a warp against static plans
// (bench/RESULTS.md, session 35): B=8 D=128 12K 0.832 / 0.858 / 0.858 (static 0.860), B=1
// D=128 128K 0.859 / 0.861 / 0.845 (0.849), B=8 D=256 8K 0.892 / 0.885 / 0.922 (0.926),
// 16K-64K 1.06-1.08x at all three (0.875-0.886). The H100 was not measured (the global-sum
// kernels take tickets there from half as many tiles as on the H200).
inline int smem_ticket_warp_tiles(int D) { return D == 256 ? 20 : 14; }

// Chooses the split sizes (SplitParams).
// * Where the equal chunks of the uniform layout (last point) hold few tokens a warp
//   (uniform_warp_max below): those.
// * Else, when a wave (SMs x CTAs per SM) holds at least one big packed CTA of every unit: one
//   wave of big CTAs takes 85-90% of the tokens, and small CTAs of ~16 KB of cache per
//   warp, then tiny ones of ~12 KB, take the rest as slots free up. CTAs with the same
//   work end up to ~40% apart (the SM's warp scheduler favours older CTAs:
//   bench/PERF-NOTES.md, the timeline); the small and tiny ones fill that in.
// * Otherwise (many units, too few tokens for big CTAs of 4+ tiles a warp, or big CTAs
//   under 1.25x the small ones): chunks of one size; among 1..8 waves' worth take the
//   count that fills its waves of packed CTAs best (a last wave that is mostly empty
//   wastes the GPU), keeping at least two tiles per warp.
// The outlier kernels whose value sums are in global memory (value_sums_in_global) take
// other sizes (below); a profiling build (KVCORE_DECODE_PLAN_KNOBS) takes them all from
// $KVCORE_PLAN. The 4-bit D = 128 kernel with its value sums in shared memory takes small
// CTAs of 32 KB a warp and tiny ones of 24 KB (below).
SplitParams plan_splits(const DecodeArgs& a, int num_sms) {
  SplitParams sp{};
  const int gq = a.Hq / a.Hkv;
  sp.passes = (gq + kHeadsPerPass - 1) / kHeadsPerPass;
  const int per_sm = for_kind_bits(a, [&](auto k, auto b) {
    return packed_ctas_per_sm<decltype(k)::value, decltype(b)::value>(a);
  });
  const int tt = for_kind_bits(a, [&](auto k, auto b) {
    return packed_tile_tokens<decltype(k)::value, decltype(b)::value>(a);
  });
  // Chunk granularity. Every chunk below is a multiple of it, so a warp's range is whole
  // stages and whole key blocks: the kernel then skips its row masks where G % TT == 0
  // (row_valid in decode_packed.cuh).
  const int64_t align = std::max<int64_t>((int64_t)kWarps * tt, a.group);
  const int64_t units = (int64_t)a.B * a.Hkv * sp.passes;
  const int64_t slots = (int64_t)num_sms * per_sm;

  // Two layouts of the grid (SplitParams): where the big CTAs hold at least 48 KB of cache
  // a warp, they take 90% of the tokens and the full-precision CTAs launch last, after the
  // small and tiny ones (they then start in the tail, where slots free up); shorter big
  // CTAs take 85% and leave the first wave's slots to the full-precision CTAs. The last
  // 5% of the tokens go to tiny CTAs (12 KB a warp) so that the last CTAs to start are
  // short. H100, B=8 Hq=32 Hkv=8 D=128 2-bit (bench/PERF-NOTES.md, session 16): 32K 74.7
  // -> 71.0-71.4 us against the session-15 plan (full-precision CTAs after the big ones,
  // 85%, no tiny CTAs).
  const int64_t ptb = packed_token_bytes(a);
  int big_pct[2] = {90, 85}, small_kb = 16, tiny_kb = 12, tiny_pct = 5, big_kb_min = 48, max_waves = 8, fp_counts = 0;
  // The uniform layout wins wherever its chunks hold at most this many tokens a warp: up to
  // there the big/small layout's extra CTAs, whose starts fall in the step, cost more than
  // the tail they even out. Measured with one wave of equal chunks against the big/small
  // plans on an H200 and an H100, bf16, Hq=32 Hkv=8, B = 1-64, D = 64-256, plain and one
  // outlier a side (native bench, scripts/plan_rule_check.py, bench/PERF-NOTES.md session
  // 29). The H200 gains further out than the H100; each limit is where the H100 stops
  // gaining on the whole:
  // * plain 2 bits 768 (H100 B=8 12K 39.4 -> 33.9 us, 16K 45.8 -> 41.1; no shape lost);
  // * plain 4 bits 512 (H100 B=8 8K 39.9 -> 37.3, H200 34.2 -> 29.8; the H100 lost up to
  //   4% at some points (B=8 16K, B=32 2K), and from 1024 on 1-6% everywhere, where the
  //   H200 still gained 3-7%); at D = 256 no limit (plain, key outliers, and one value
  //   outlier a token with its sums in shared memory): there the big/small layout's small
  //   CTAs fall to the minimum chunk (16 KB a warp is under 128 tokens) and plain ran
  //   slower than the one-a-side kernel with tickets. H200, Hq=32 Hkv=8 bf16 plain: 512 ->
  //   768 (session 33) B=8 12K 79.8 -> 66.2 us, B=16 6K 83.5 -> 68.2, B=32 3K 87.6 ->
  //   71.7; 768 -> no limit (session 35) B=8 16K 100.7 -> 92.1, 24K 139.5 -> 119.8, 64K
  //   337.2 -> 294.6, B=1 128K 106.4 -> 91.4, 256K 190.5 -> 153.1, B=4 64K 182.0 -> 163.3,
  //   B=16 8K 103.1 -> 91.6, B=32 4K 109.0 -> 93.4 (one a side there 123.1 -> 101.7);
  //   shorter steps unchanged; not measured on an H100;
  // * the 4-bit value-outlier kernel (sums in shared memory) 768 (H100 B=8 12K 63.8 ->
  //   56.0, H200 48.4 -> 43.5; up to 2% lost at B=16 8K and B=32 2K-4K on the H100);
  // * the value-outlier kernels with their sums in global memory (2 bits, 4 bits at D = 64)
  //   384 and 256: the 2-bit one lost 4-11% on the H100 from 512 on (B=16 8K, B=8 32K);
  //   at D = 256 (2 CTAs an SM) the 2-bit one takes 768, the plain kernel's limit: H200,
  //   B = 1-32, one a side, 0.80-0.85x of plain -> 0.88-0.93x where the chunks hold 512
  //   or 768 tokens a warp (B=8 8K 54.3 -> 49.6 us, 12K 71.7 -> 64.3; bench/RESULTS.md
  //   session 32; session 29 saw the same at B=8 8K on the H100, 54.7 -> 50.3).
  int uniform_warp_max = value_sums_in_global(a) ? (a.bits == 2 ? (a.D == 256 ? 768 : 384) : 256)
                         : a.bits == 4 && a.D == 256 ? std::numeric_limits<int>::max()
                         : h4_outliers(a) && a.v_outliers > 0 ? 768
                         : a.bits == 2 ? 768 : 512;
  int floor_counts = 1;
  if (value_sums_in_global(a) && a.D == 64 && a.bits == 4) {
    // The value-outlier kernel at D = 64 (H200, B=8, (Hq, Hkv) = (32, 8) and (9, 3), one
    // outlier a side, ten plans, bench/PERF-NOTES.md session 21): 4 bits takes big CTAs
    // of 75% / 70% (32K 65.7 -> 62.8 us, 128K 217.6 -> 213.3); 2 bits keeps the default
    // plan (32K 56.3 -> 53.5, (9, 3) 128K 76.3 -> 72.4 against the D = 128 one below).
    // Since session 34 one value outlier a token at 4 bits keeps its sums in shared memory
    // at D = 64 too, and takes the default constants (D = 128's shared-memory ones below:
    // H200 B=8 32K -2.4 points, 64K-128K +1); this now serves two value outliers a token.
    big_pct[0] = 75;
    big_pct[1] = 70;
  } else if (value_sums_in_global(a) && a.D > 64) {
    // (Also serves two value outliers a token at 4 bits, whose sums are in global memory
    // too since session 22; not swept for them.)
    // The 2-bit kernel with value outliers (sums in global memory) starts its CTAs ~2 us
    // slower (bench/PERF-NOTES.md, the timelines of sessions 17 and 20): fewer, larger
    // small CTAs and a larger share for the small and tiny ones. H100, B=8 Hq=32 Hkv=8
    // D=128, one outlier a side against the plain kernel (scripts/plan_sweep.py):
    // session 18 (75 85 24 16 5): 128K 0.83 -> 0.86x, 32K and 64K +1 point; session 20 (80
    // 75 32 16 10, re-swept after the paired reductions): 32K 0.85 -> 0.87x, 64K and 128K
    // +1.5 points (two key outliers +1.5, values alone +2), 8K unchanged, 16K -1 point.
    // One outlier a side at 2 bits and D = 128 (session 26; D = 256 not measured) takes
    // 85 80 32 16 10 instead, the best of eight plans on the H200 (session 25) and of six
    // on the H100, bf16, native bench: H200 32K 0.832 -> 0.841x, 128K 0.873 -> 0.883x;
    // H100 32K 80.7 -> 80.2 us, 128K 276.0 -> 269.0 us; 8K unchanged (the uniform layout
    // either way). Not for the other counts: on the H100 it made 128K 1% slower for values
    // alone and K2 V1, 4% for two a side, and 5-9% for two value outliers at 4 bits
    // (bench/RESULTS.md, session 26). Its share with the full-precision CTAs first (the
    // layout of ~17-22K tokens at B=8, where big CTAs hold < 48 KB a warp) is 75%, as the
    // other counts': H200, 20K 56.3 -> 54.0 us; 8K-16K and 24K-128K unchanged (session 28).
    const bool one_a_side_2bit = a.bits == 2 && a.D == 128 && a.k_outliers == 1 && a.v_outliers == 1;
    big_pct[0] = one_a_side_2bit ? 85 : 80;
    big_pct[1] = 75;
    small_kb = 32;
    tiny_kb = 16;
    tiny_pct = 10;
  }
  if (h4_outliers(a) && a.v_outliers > 0 && !value_sums_in_global(a) && a.D == 128) {
    // The 4-bit value-outlier kernel (sums in shared memory), whose CTAs also start slower
    // than the plain kernel's: fewer, larger small and tiny CTAs, as the 2-bit one's. H200,
    // B=8 Hq=32 Hkv=8 D=128, one outlier a side, native bench (bench/PERF-NOTES.md, session
    // 24): 8K 39.7 -> 35.1 us, 32K 104.0 -> 101.6, 128K 357.2 -> 347.3 (the float sums of
    // session 23; at 8K the small CTAs would not be smaller than the big ones, so the plan
    // is one of equal chunks). (Session 23's sweep compared each plan against the plain
    // kernel under the same plan, not against the plain kernel's own.) Big CTAs with the
    // full-precision ones last need 72 KB a warp (else they go first): H200, 16K 61.0 ->
    // 58.8 us; 12K and 20K-32K unchanged (session 28).
    small_kb = 32;
    tiny_kb = 24;
    big_kb_min = 72;
  }
#ifdef KVCORE_DECODE_PLAN_KNOBS
  // Profiling build only (-DKVCORE_DECODE_PLAN_KNOBS=ON, scripts/plan_sweep.py): the
  // constants below from KVCORE_PLAN="big_fp_last big_fp_first small_kb tiny_kb tiny_pct
  // big_kb_min max_waves fp_counts", so that one GPU call can sweep them.
  if (const char* knobs = std::getenv("KVCORE_PLAN"))
    std::sscanf(knobs, "%d %d %d %d %d %d %d %d", &big_pct[0], &big_pct[1], &small_kb, &tiny_kb, &tiny_pct, &big_kb_min,
                &max_waves, &fp_counts);
  // and KVCORE_PLAN_UNIFORM="uniform_warp_max floor_counts" ("0 0": session 28's planner).
  if (const char* knobs = std::getenv("KVCORE_PLAN_UNIFORM")) std::sscanf(knobs, "%d %d", &uniform_warp_max, &floor_counts);
  if (const char* knobs = std::getenv("KVCORE_EXP")) sp.exp_flags = std::atoi(knobs);
#endif

  // Dynamic tiles (SplitParams::static_tiles) for the value-outlier kernels whose sums are
  // in global memory: one wave of packed CTAs, the full-precision CTAs first (their slots
  // then go to the packed CTAs that did not fit), as many packed CTAs a unit as a wave
  // holds (never more: a CTA that started only when others ran out of tiles would still
  // have its static run to do), tiles taken one at a time. In one wave of static chunks
  // the CTAs of one launch rank ended up to 8 us apart, by their SM (bench/PERF-NOTES.md,
  // sessions 29-30); with tickets a unit's CTAs end within a tile of each other (session
  // 31: H100 one a side 12K-20K 0.81-0.83x -> 0.86x; H200 20K-48K +1-2 points). Only from
  // 5 tiles a warp (B=8 Hkv=8: 10K tokens) on cards under 4 TB/s (H100: 3.35), from 10 on
  // faster ones (H200: 4.8; 20K tokens): at 8K tickets were even on the H100 and 3 points
  // slower on the H200; at 12K-16K the H100 took 0.86 with tickets against 0.81-0.83
  // static, the H200 0.83-0.85 against 0.87 static (bench/PERF-NOTES.md, sessions 31-32).
  // KVCORE_DECODE_DYNAMIC_TILES=0 keeps the static plans below (each CTA's tokens then
  // fixed from step to step; an A/B of the two); =always takes tickets at any length (the
  // tests' small shapes). Read at every call (a getenv), so that a test can switch it.
  const char* dynamic_env = std::getenv("KVCORE_DECODE_DYNAMIC_TILES");
  const bool dynamic_tiles = dynamic_env == nullptr || std::strcmp(dynamic_env, "0") != 0;
  const bool dynamic_always = dynamic_env != nullptr && std::strcmp(dynamic_env, "always") == 0;
  // (h4_dynamic_tiles says which value-outlier kernels take tickets: those with their sums
  // in global memory, and since session 35 the 4-bit ones with their sums in shared memory.)
  if (dynamic_tiles && h4_outliers(a) && a.v_outliers > 0 &&
      h4_dynamic_tiles(a.D, a.bits, a.group, tt, a.v_outliers)) {
    // Tickets a line apart (128 bytes), so that the units' atomics spread over L2 slices
    // (4 bytes apart, two lines in all, the step took 10-15% longer at 32K-128K).
    // (the 4-bit kernels with their value sums in shared memory: their own threshold)
    const bool smem_sums = h4_value_sums_in_smem(a.D, a.bits, a.v_outliers);
    int run = 1, min_warp_tiles = smem_sums ? smem_ticket_warp_tiles(a.D) : dram_gbps() >= 4000.0 ? 10 : 5;
    const int stride = 32;
    bool fit_wave = false, fp_last = false;
#ifdef KVCORE_DECODE_PLAN_KNOBS
    // KVCORE_EXP bits (session 31's A/B): 2 as many packed CTAs a unit as fit in one wave
    // beside the full-precision ones, 4 runs of two tiles, 8 runs of four, 16 the
    // full-precision CTAs last, 32 dynamic from 3 tiles a warp, 64 from 8, 128 from 10, 256 from 5
    // (B=8 Hkv=8 D=128: 8K / 16K / 20K and up).
    if (sp.exp_flags & 2) fit_wave = true;
    if (sp.exp_flags & 4) run = 2;
    if (sp.exp_flags & 8) run = 4;
    if (sp.exp_flags & 16) fp_last = true;
    if (sp.exp_flags & 32) min_warp_tiles = 3;
    if (sp.exp_flags & 64) min_warp_tiles = 8;
    if (sp.exp_flags & 128) min_warp_tiles = 10;
    if (sp.exp_flags & 256) min_warp_tiles = 5;  // (the rule of cards under 4 TB/s)
    const bool tickets_at_two = (sp.exp_flags & 4096) != 0;  // session 32's rule: tickets from 2 CTAs a unit
    // Session 35's sweep: KVCORE_PLAN_TICKETS_FROM=n takes tickets from n tiles a warp.
    if (const char* from = std::getenv("KVCORE_PLAN_TICKETS_FROM")) min_warp_tiles = std::atoi(from);
#else
    const bool tickets_at_two = false;
#endif
    // Runs of whole key blocks (a key block over several stages builds its query fragments
    // at its first; h4_dynamic_tiles admits G > TT only for the shared-memory-sum kernels).
    if (a.group > tt) run = std::max(run, a.group / tt);
    const int64_t by_length = (a.t_cap + 4LL * kWarps * tt - 1) / (4LL * kWarps * tt);
    int64_t wave_slots = slots;
#ifdef KVCORE_DECODE_PLAN_KNOBS
    // Session 33's proposal (unrun): fewer ticket CTAs, half (8192) or three quarters
    // (16384) of a wave, as the short uniform chunks gained from half as many CTAs.
    if (sp.exp_flags & 8192) wave_slots = slots / 2;
    if (sp.exp_flags & 16384) wave_slots = slots * 3 / 4;
#endif
    const int64_t per_unit = std::min<int64_t>(fit_wave ? (wave_slots - units) / units : wave_slots / units, by_length);
    // At least 3 CTAs a unit (outside the tests' =always): with two, the tickets cost more
    // than the balance they buy. H200, B=32 Hq=32 Hkv=8 D=128 2 bits one a side (a wave
    // holds two CTAs a unit): 8K 0.850 -> 0.864x, 12K 0.831 -> 0.850x of plain with the
    // static plan (bench/RESULTS.md, session 33; not measured on an H100).
    const int64_t min_per_unit = dynamic_always || tickets_at_two ? 2 : 3;
    if (per_unit >= min_per_unit && (dynamic_always || a.t_cap >= (int64_t)min_warp_tiles * per_unit * kWarps * tt)) {
      sp.chunk = sp.small_chunk = sp.tiny_chunk = align;  // (unused: the warps' tiles come from static_tiles)
      sp.nbig = (int)per_unit;
      sp.nsmall = sp.ntiny = 0;
      sp.tiny_at = a.t_cap;
      sp.nsplit = sp.nbig;
      sp.np = sp.nsplit + 1;
      sp.fp_at = fp_last ? (int)(units * sp.nsplit) : 0;
      sp.static_tiles = (int)(std::max(2, run) * per_unit * kWarps);
      sp.tile_run_mask = run - 1;
      sp.tile_stride = stride;
      KVCORE_NOTE_PLAN(sp, per_sm);
      return sp;
    }
  }

  // The uniform layout: chunks of one size; among 1..max_waves waves' worth take the count
  // that fills its waves of packed CTAs best (a last wave that is mostly empty wastes the
  // GPU), keeping at least two tiles per warp.
  int64_t min_chunk = std::max<int64_t>(align, 2LL * kWarps * tt);
  // The value-outlier kernels, whose CTAs cost more to start and to merge (their value
  // sums), take chunks of up to 256 tokens a warp (4 tiles of 64, 8 of 32) where that still
  // leaves ~2 CTAs an SM: where a wave of 4 CTAs an SM would give shorter chunks, half as
  // many CTAs of twice the tokens. H200, Hq=32 Hkv=8 D=128, one outlier a side, production
  // builds (bench/RESULTS.md, session 33): 2 bits B=1 32K 22.1 -> 19.7 us (plain 19.0), B=4
  // 8K 21.1 -> 20.0 (plain 18.9); 4 bits B=1 16K 19.4 -> 17.6 (plain 16.4). At 4 bits the
  // cap in tokens (8 tiles) rather than 4 tiles: B=1 32K 24.5 -> 23.6 us, B=4 8K 23.3 ->
  // 24.0 (a wash, kept for the one rule). Not fewer CTAs: B=1 16K at 2 bits (256 CTAs of 2
  // tiles) took 16.3 us with 128 CTAs of 4 tiles against 15.2. The D = 256 kernels (2 CTAs
  // an SM) are left as they are.
  bool outlier_min_chunk = h4_outliers(a) && a.v_outliers > 0;
  int64_t outlier_warp_cap = 256;
#ifdef KVCORE_DECODE_PLAN_KNOBS
  if (sp.exp_flags & 512) outlier_min_chunk = false;  // session 32's minimum (2 tiles a warp)
  if (sp.exp_flags & 32768) outlier_warp_cap = 512;   // session 33's proposal (unrun): B=1 4 bits 64K
#endif
  if (outlier_min_chunk && per_sm > 2) {
    const int64_t per_unit_two = std::max<int64_t>(1, 2LL * num_sms / units);
    const int64_t two_per_sm = ((a.t_cap + per_unit_two - 1) / per_unit_two + align - 1) / align * align;
    min_chunk = std::max(min_chunk, std::min<int64_t>(two_per_sm, std::max<int64_t>(align, outlier_warp_cap * kWarps)));
  }
  int64_t best_chunk = 0;
  double best_eff = -1.0;
  for (int waves = 1; waves <= max_waves; ++waves) {
    // Chunks per unit: the waves' slots per unit rounded down (every CTA inside the waves)
    // and up. Only rounded up (session 28), one wave of 528 slots over 64 units asked for 9
    // chunks: 12K tokens at 4 bits (128-token alignment) became 9 chunks of 1408, 576
    // CTAs, and the best fill was two waves of 768, where 8 chunks of 1536 fill one wave.
    for (int up = floor_counts ? 0 : 1; up <= 1; ++up) {
      const int64_t target = std::max<int64_t>(1, (waves * slots + (up ? units - 1 : 0)) / units);
      int64_t chunk = (a.t_cap + target - 1) / target;
      chunk = std::max(min_chunk, (chunk + align - 1) / align * align);
      // The full-precision CTAs (a few residual rows each) are not counted: short, they do
      // not hold a slot for a wave (H100, B=8 8K and B=4 16K: 10-13% faster than counting
      // them, which chose twice the CTAs; no shape lost: scripts/plan_sweep.py --groups rule).
      const int64_t ctas = ((a.t_cap + chunk - 1) / chunk + fp_counts) * units;
      const double eff = (double)ctas / (double)(((ctas + slots - 1) / slots) * slots);
      if (eff > best_eff + 0.02) {  // prefer fewer, larger splits unless clearly better
        best_eff = eff;
        best_chunk = chunk;
      }
    }
  }
  const bool uniform = best_chunk <= (int64_t)uniform_warp_max * kWarps;
  auto chunk_of = [&](int64_t warp_bytes) { return std::max<int64_t>(align, kWarps * warp_bytes / ptb / align * align); };
  const int64_t small = chunk_of(1024LL * small_kb), tiny = chunk_of(1024LL * tiny_kb);
  for (int fp_first = 0; fp_first <= 1 && !uniform; ++fp_first) {
    const int64_t nbig = (slots - (fp_first ? units : 0)) / units;  // big CTAs per unit in one wave
    if (nbig < 1) continue;
    const int64_t big_tokens = a.t_cap * big_pct[fp_first] / 100 / (nbig * align) * (nbig * align);
    const int64_t big = big_tokens / nbig;
    // Big CTAs that are not clearly bigger than the small ones (less than 1.25x) buy no
    // balance and cost the small CTAs' extra prologues: equal chunks instead. H200, 2-bit
    // one outlier a side, B=8 Hq=32 Hkv=8 D=128 16K: big 1792 / small 1536 tokens 47.7 us,
    // equal chunks of 2048 44.7 us (bench/PERF-NOTES.md, session 28).
    if (big < 4LL * kWarps * tt || small * 5 > big * 4) continue;
    if (!fp_first && big * ptb < kWarps * 1024LL * big_kb_min) continue;
    sp.chunk = big;
    sp.small_chunk = small;
    sp.tiny_chunk = tiny;
    sp.nbig = (int)nbig;
    const int64_t rest = a.t_cap - nbig * big;
    const int64_t tiny_tokens = std::min(rest, a.t_cap * tiny_pct / 100 / tiny * tiny);
    sp.nsmall = (int)((rest - tiny_tokens + small - 1) / small);
    sp.tiny_at = nbig * big + sp.nsmall * small;
    sp.ntiny = (int)((std::max<int64_t>(0, a.t_cap - sp.tiny_at) + tiny - 1) / tiny);
    sp.nsplit = sp.nbig + sp.nsmall + sp.ntiny;
    sp.np = sp.nsplit + 1;
    sp.fp_at = fp_first ? 0 : (int)(units * sp.nsplit);
    KVCORE_NOTE_PLAN(sp, per_sm);
    return sp;
  }

  sp.chunk = sp.small_chunk = sp.tiny_chunk = best_chunk;
  sp.nbig = a.t_cap > 0 ? (int)((a.t_cap + best_chunk - 1) / best_chunk) : 0;
  sp.nsmall = sp.ntiny = 0;
  sp.tiny_at = a.t_cap;
  sp.nsplit = sp.nbig;
  sp.np = sp.nsplit + 1;
  sp.fp_at = (int)(units * sp.nsplit);  // (after the packed CTAs)
#ifdef KVCORE_DECODE_PLAN_KNOBS
  // Profiling build only: KVCORE_PLAN_GRADED="a b" grades the uniform layout by launch
  // rank (measured in session 30: no gain, the SMs of one rank still end apart). Its
  // first quarter of a unit's chunks (launched first: rank 0 on their SMs at B=8) get
  // (100 + a)% of the chunk, its last quarter (100 - b)%, the middle half the rest. With outliers the co-resident CTAs of an SM end up to 8 us
  // apart at 2 bits, 16K (bench/PERF-NOTES.md, session 29); nothing starts after them.
  if (const char* graded = std::getenv("KVCORE_PLAN_GRADED"); graded != nullptr && sp.nbig >= 4) {
    int up = 0, down = 0;
    std::sscanf(graded, "%d %d", &up, &down);
    const int n = sp.nbig, q = n / 4;
    const int64_t big = (best_chunk * (100 + up) / 100 + align - 1) / align * align;
    const int64_t tiny = std::max<int64_t>(align, best_chunk * (100 - down) / 100 / align * align);
    const int64_t mid = std::max<int64_t>(0, a.t_cap - q * big - q * tiny);
    const int64_t small = std::max<int64_t>(align, (mid + (n - 2 * q) - 1) / (n - 2 * q) + align - 1) / align * align;
    sp.chunk = big;
    sp.small_chunk = small;
    sp.tiny_chunk = tiny;
    sp.nbig = q;
    sp.nsmall = n - 2 * q;
    sp.ntiny = q;
    sp.tiny_at = q * big + sp.nsmall * small;  // (nsplit stays n; the last CTAs may hold fewer tokens, or none)
  }
#endif
  KVCORE_NOTE_PLAN(sp, per_sm);
  return sp;
}

// H2O mass: a thread per (sequence, KV head, column); adds the valid columns'
// probabilities exp2(logit - lse * log2 e) summed over the group's query heads.
constexpr int kMassThreads = 256;
__global__ void __launch_bounds__(kMassThreads) attention_mass_kernel(DecodeArgs a, int64_t col_blocks) {
  const int64_t row = blockIdx.x / col_blocks;  // b * Hkv + kvh
  const int64_t col = (blockIdx.x % col_blocks) * kMassThreads + threadIdx.x;
  const int64_t cols = a.mass_cols();
  if (col >= cols) return;
  const int b = (int)(row / a.Hkv), kvh = (int)(row % a.Hkv), gq = a.Hq / a.Hkv;
  auto clamp_len = [](const int32_t* len, int b, int64_t cap) -> int64_t {
    if (len == nullptr) return 0;
    const int64_t v = len[b];
    return v < 0 ? 0 : (v > cap ? cap : v);
  };
  bool valid;
  if (col < a.s_cap) {
    valid = col < clamp_len(a.sink_len, b, a.s_cap);
  } else if (col < a.s_cap + a.t_cap) {
    const int64_t n = clamp_len(a.packed_len, b, a.t_cap);
    valid = col - a.s_cap < n - n % a.group;
  } else {
    valid = col - a.s_cap - a.t_cap < clamp_len(a.resid_len, b, a.r_cap);
  }
  if (!valid) return;
  const int64_t u0 = (int64_t)b * a.Hq + (int64_t)kvh * gq;
  float p = 0.0f;
  for (int h = 0; h < gq; ++h) p += exp2f(a.logits[(u0 + h) * cols + col] - a.lse[u0 + h] * kLog2e);
  a.attn_mass[row * cols + col] += p;
}

// Ints of the dynamic tiles' tickets (SplitParams::tile_ctr): a unit's 64-bit epoch and
// its count (dev::open_tickets), tile_stride ints apart, rounded up to whole 128-byte lines
// (the value-outlier sums after them stay aligned). Never zeroed by the host: the epoch
// tells a count of this grid's from garbage.
size_t ticket_words(const DecodeArgs& a, const SplitParams& sp) {
  return sp.static_tiles > 0 ? ((size_t)a.B * a.Hkv * sp.passes * sp.tile_stride + 31) / 32 * 32 : 0;
}

template <int KIND, int D>
cudaError_t run_all(const DecodeArgs& a, const SplitParams& sp, cudaStream_t st) {
  const cudaError_t e = for_kind_bits(a, [&](auto k, auto b) {
    return packed_launch<decltype(k)::value, decltype(b)::value>(a, sp, st);
  });
  if (e != cudaSuccess) return e;
  const int64_t units = (int64_t)a.B * a.Hq;
  // The weights' shared memory is np floats (np <= t_cap / 256 + 1: far below the limit
  // for any cache that fits in memory; the launch reports it otherwise).
  const size_t w_bytes = (size_t)sp.np * sizeof(float);
  if (w_bytes > 48 * 1024) {
    const cudaError_t e2 = cudaFuncSetAttribute(decode_merge_kernel<KIND, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                (int)w_bytes);
    if (e2 != cudaSuccess) return e2;
  }
  // A programmatic dependent launch: the merge CTAs are scheduled while the split
  // kernel's last CTAs run (they wait in wait_primary), which saves the ~2 us gap
  // between two kernels. Its grid waits for the split grid's completion and writes.
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((unsigned)units);
  cfg.blockDim = dim3(kMergeThreads);
  cfg.dynamicSmemBytes = w_bytes;
  cfg.stream = st;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  const cudaError_t e3 = cudaLaunchKernelEx(&cfg, decode_merge_kernel<KIND, D>, a, sp);
  if (e3 != cudaSuccess) return e3;
  if (a.attn_mass != nullptr) {
    const int64_t col_blocks = (a.mass_cols() + kMassThreads - 1) / kMassThreads;
    const int64_t blocks = (int64_t)a.B * a.Hkv * col_blocks;
    if (blocks > INT32_MAX) return cudaErrorInvalidConfiguration;
    if (blocks > 0) attention_mass_kernel<<<(unsigned)blocks, kMassThreads, 0, st>>>(a, col_blocks);
  }
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

// Floats of the H4 outlier kernel's value sums (SplitParams::ws_vo; whole 128-byte lines a
// warp). Only where value_sums_in_global: the 4-bit kernel with one value
// outlier a token keeps them in shared memory.
size_t value_outlier_floats(const DecodeArgs& a, const SplitParams& sp) {
  if (!value_sums_in_global(a)) return 0;
  return (size_t)a.B * a.Hkv * sp.passes * sp.nsplit * kWarps * value_outlier_warp_floats(a.D);
}
}  // namespace

// Workspace: [tickets][value-outlier sums][partials o, m, l][logits]; the tickets and the
// sums first (whole 128-byte lines), so that the sums' lines are 128-byte aligned and the
// partials' float4 rows 16-byte aligned.
size_t decode_attention_cuda_workspace(const DecodeArgs& a, int num_sms) {
  const SplitParams sp = plan_splits(a, num_sms);
  const size_t slots = (size_t)a.B * a.Hq * sp.np;
  const size_t logits = a.attn_mass != nullptr ? (size_t)a.B * a.Hq * (size_t)a.mass_cols() : 0;
  return (ticket_words(a, sp) + value_outlier_floats(a, sp) + slots * ((size_t)a.D + 2) + logits) * sizeof(float);
}

const char* decode_attention_cuda_slow_outliers(const DecodeArgs& a) { return h4_outliers_miss(a); }

cudaError_t decode_attention_cuda(const DecodeArgs& args, void* workspace, int num_sms, cudaStream_t stream) {
  if ((int64_t)args.B * args.Hq == 0) return cudaSuccess;
  DecodeArgs a = args;
  SplitParams sp = plan_splits(a, num_sms);
  const size_t slots = (size_t)a.B * a.Hq * sp.np;
  // (the workspace is 128-byte aligned: cudaMalloc, torch's allocator; the sums' lines are discarded)
  sp.tile_ctr = sp.static_tiles > 0 ? static_cast<int*>(workspace) : nullptr;
  sp.ws_vo = static_cast<float*>(workspace) + ticket_words(a, sp);
  sp.ws_o = sp.ws_vo + value_outlier_floats(a, sp);
  sp.ws_m = sp.ws_o + slots * a.D;
  sp.ws_l = sp.ws_m + slots;
  a.logits = a.attn_mass != nullptr ? sp.ws_l + slots : nullptr;
  return a.dtype == DType::BF16 ? dispatch_dim<2>(a, sp, stream) : dispatch_dim<1>(a, sp, stream);
}

}  // namespace kvcore
