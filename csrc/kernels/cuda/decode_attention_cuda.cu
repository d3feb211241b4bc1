// Fused decode attention over the packed KV cache: the split plan, the launches and the
// log-sum-exp merge. The packed split kernel itself (its math and work split) is in
// decode_packed.cuh.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

#include "../decode_attention.h"
#include "decode_common.cuh"
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
// Combines the partials of each (sequence, query head) by log-sum-exp. A CTA per unit;
// its threads split the channels and, D/256 ways, the partials, and keep 4 loads in
// flight each (the partials of one unit are np * D floats in the workspace).
constexpr int kMergeThreads = 256;
template <int KIND, int D>
__global__ void __launch_bounds__(kMergeThreads) decode_merge_kernel(DecodeArgs a, SplitParams sp) {
  constexpr int PG = D >= kMergeThreads ? 1 : kMergeThreads / D;  // partial groups
  __shared__ float part_s[PG][D];
  const int64_t unit = blockIdx.x;
  const int np = sp.np;
  const float* m = sp.ws_m + unit * np;
  const float* l = sp.ws_l + unit * np;
  float mx = -INFINITY;
  for (int p = 0; p < np; ++p) mx = fmaxf(mx, m[p]);
  float lsum = 0.0f;
  if (mx != -INFINITY)
    for (int p = 0; p < np; ++p) lsum += exp2f(m[p] - mx) * l[p];
  const float* wo = sp.ws_o + unit * np * D;
  for (int d0 = 0; d0 < D; d0 += kMergeThreads / PG) {
    const int d = d0 + threadIdx.x % (kMergeThreads / PG), pg = threadIdx.x / (kMergeThreads / PG);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (lsum > 0.0f) {
      for (int p = pg; p < np; p += 4 * PG) {
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int pp = p + u * PG;
          if (pp < np) acc[u] += exp2f(m[pp] - mx) * wo[(int64_t)pp * D + d];
        }
      }
    }
    part_s[pg][d] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  }
  __syncthreads();
  Bits<KIND>* out = static_cast<Bits<KIND>*>(a.out) + unit * D;
  for (int d = threadIdx.x; d < D; d += kMergeThreads) {
    float acc = 0.0f;
#pragma unroll
    for (int pg = 0; pg < PG; ++pg) acc += part_s[pg][d];
    out[d] = Storage<KIND>::store(lsum > 0.0f ? acc / lsum : 0.0f);
  }
  if (threadIdx.x == 0) a.lse[unit] = lsum > 0.0f ? (mx + log2f(lsum)) * kLn2 : -INFINITY;
}

// Chooses the split size. CTAs run in waves of (SMs x CTAs per SM); a last wave that is
// mostly empty wastes the GPU, so among 1..8 waves' worth of splits take the one whose
// CTA count fills its waves best, keeping at least two tiles per warp.
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
    const int64_t ctas = ((a.t_cap + chunk - 1) / chunk + 1) * units;  // + the fp split
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

template <int KIND, int D>
cudaError_t run_all(const DecodeArgs& a, const SplitParams& sp, cudaStream_t st) {
  const cudaError_t e = for_kind_bits(a, [&](auto k, auto b) {
    return packed_launch<decltype(k)::value, decltype(b)::value>(a, sp, st);
  });
  if (e != cudaSuccess) return e;
  const int64_t units = (int64_t)a.B * a.Hq;
  decode_merge_kernel<KIND, D><<<(unsigned)units, kMergeThreads, 0, st>>>(a, sp);
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
}  // namespace

size_t decode_attention_cuda_workspace(const DecodeArgs& a, int num_sms) {
  const SplitParams sp = plan_splits(a, num_sms);
  const size_t slots = (size_t)a.B * a.Hq * sp.np;
  const size_t logits = a.attn_mass != nullptr ? (size_t)a.B * a.Hq * (size_t)a.mass_cols() : 0;
  return (slots * ((size_t)a.D + 2) + logits) * sizeof(float);
}

cudaError_t decode_attention_cuda(const DecodeArgs& args, void* workspace, int num_sms, cudaStream_t stream) {
  if ((int64_t)args.B * args.Hq == 0) return cudaSuccess;
  DecodeArgs a = args;
  SplitParams sp = plan_splits(a, num_sms);
  const size_t slots = (size_t)a.B * a.Hq * sp.np;
  sp.ws_o = static_cast<float*>(workspace);
  sp.ws_m = sp.ws_o + slots * a.D;
  sp.ws_l = sp.ws_m + slots;
  a.logits = a.attn_mass != nullptr ? sp.ws_l + slots : nullptr;
  return a.dtype == DType::BF16 ? dispatch_dim<2>(a, sp, stream) : dispatch_dim<1>(a, sp, stream);
}

}  // namespace kvcore
