// CUDA kernels of sparse outlier extraction, bit for bit the CPU kernel's selection.
// One fused kernel per axis, no global scratch:
//   * a thread per group sorts its G order-preserving keys in registers (Batcher's
//     network) and takes the median and the MAD from the sorted keys (group_stats.cuh);
//   * a warp per token then scores its channels z = |x - med| / spread in IEEE float32
//     and takes the `count` best by repeated warp argmax (z descending, channel
//     ascending), writing index, value and the dense row.
// axis "token" (groups of G channels of one token): a CTA stages whole rows, at most
// 8192 elements (8192/G groups, a thread each), in shared memory. axis "channel" (one
// channel over a block of G tokens): a CTA per block, a thread per channel reading its
// column from global memory; the warps re-read the block's rows (L1/L2) to select.
#include "../outliers.h"
#include "group_stats.cuh"
#include "mma_utils.cuh"

namespace kvcore {
namespace {

using outl::kNanKey;

constexpr int kTileElems = 8192;  // axis "token": elements a CTA stages

template <int KIND>
__device__ __forceinline__ uint32_t key_of(uint32_t raw) {
  if constexpr (KIND == 0) return outl::order_key(raw);
  if constexpr (KIND == 1) return outl::order_key(float_as_bits(half_bits_to_float((uint16_t)raw)));
  return outl::order_key(raw << 16);
}

__device__ __forceinline__ uint32_t warp_max(uint32_t v) {
#if __CUDA_ARCH__ >= 800
  return __reduce_max_sync(0xffffffffu, v);
#else
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
#endif
}
__device__ __forceinline__ uint32_t warp_min(uint32_t v) {
#if __CUDA_ARCH__ >= 800
  return __reduce_min_sync(0xffffffffu, v);
#else
  for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
#endif
}

// One warp: selection and outputs of token `row`. fetch(d, bits, med, spread) gives
// channel d's raw element and its group's median and spread. Lane l owns channels
// l, l + 32, ..., l + 32 (E - 1); D <= 32 E.
template <int KIND, int E, typename Fetch>
__device__ __forceinline__ void select_row(const OutlierArgs& a, int64_t row, Fetch fetch) {
  using Bits = typename Storage<KIND>::bits_t;
  const int lane = threadIdx.x & 31, D = a.D;
  Bits xb[E];
  float med[E];
  uint32_t key[E];  // 1 + bits of z (z >= +0), kNanKey for a NaN z; 0: taken or no channel
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int d = lane + 32 * e;
    key[e] = 0;
    xb[e] = 0;
    med[e] = 0.0f;
    if (d < D) {
      float s;
      fetch(d, xb[e], med[e], s);
      const float z = __fdiv_rn(fabsf(Storage<KIND>::load(xb[e]) - med[e]), s);
      key[e] = isnan(z) ? kNanKey : __float_as_uint(z) + 1u;
    }
  }
  uint32_t taken = 0;  // bit e: channel lane + 32 e picked
  for (int n = 0; n < a.count; ++n) {  // count < D: some key is never 0
    uint32_t best = 0, bd = 0xffffffffu;
#pragma unroll
    for (int e = 0; e < E; ++e)
      if (key[e] > best) { best = key[e]; bd = lane + 32 * e; }  // strict: lowest channel of the lane
    const uint32_t top = warp_max(best);
    const uint32_t pick = warp_min(best == top ? bd : 0xffffffffu);
#pragma unroll
    for (int e = 0; e < E; ++e)
      if (pick == (uint32_t)(lane + 32 * e)) { key[e] = 0; taken |= 1u << e; }
  }
  Bits* dense = static_cast<Bits*>(a.dense) + row * D;
  Bits* value = static_cast<Bits*>(a.value) + row * a.count;
  uint8_t* index = a.index + row * a.count;
  int before = 0;  // picks in channels below lane + 32 e: the output slot, indices ascending
#pragma unroll
  for (int e = 0; e < E; ++e) {
    if (32 * e >= D) break;  // warp-uniform
    const int d = lane + 32 * e;
    const bool t = (taken >> e) & 1u;
    const uint32_t mask = __ballot_sync(0xffffffffu, t);
    if (d < D) dense[d] = t ? Storage<KIND>::store(med[e]) : xb[e];
    if (t) {
      const int slot = before + __popc(mask & ((1u << lane) - 1u));
      index[slot] = (uint8_t)d;
      value[slot] = xb[e];
    }
    before += __popc(mask);
  }
}

// Warp w of the CTA selects rows w, w + warps, ... < nrows of those from row0;
// fetch(r, d, bits, med, spread) as in select_row, r relative to row0.
template <int KIND, typename Fetch>
__device__ __forceinline__ void select_rows(const OutlierArgs& a, int64_t row0, int nrows, Fetch fetch) {
  using Bits = typename Storage<KIND>::bits_t;
  const int w0 = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int r = w0; r < nrows; r += nw) {
    auto f = [&](int d, Bits& xb, float& m, float& s) { fetch(r, d, xb, m, s); };
    if (a.D <= 64) select_row<KIND, 2>(a, row0 + r, f);
    else if (a.D <= 128) select_row<KIND, 4>(a, row0 + r, f);
    else select_row<KIND, 8>(a, row0 + r, f);
  }
}

// axis "token": the CTA's rows [row0, row0 + R) are R * D / G consecutive groups,
// staged with a 16-byte pad after each group so that a warp's 16-byte reads of
// 32 different groups cover all banks (group stride / 16 is odd).
template <int KIND, int G>
__global__ void __launch_bounds__(kTileElems / G) token_kernel(OutlierArgs a, int64_t rows, bool aligned) {
  using Bits = typename Storage<KIND>::bits_t;
  constexpr int NT = kTileElems / G;                 // threads = groups per CTA
  constexpr int GB = G * (int)sizeof(Bits);          // bytes of a group
  constexpr int STRIDE = GB + 16, CH = GB / 16;      // staged group stride, 16-byte chunks per group
  __shared__ __align__(16) unsigned char tile[NT * STRIDE];
  __shared__ float med_s[NT], spread_s[NT];
  const int D = a.D, gpr = D / G, R = NT / gpr;     // D <= 256: gpr <= 8, R >= NT / 8
  const int64_t row0 = (int64_t)blockIdx.x * R;
  const int nrows = (int)min((int64_t)R, rows - row0), ngroups = nrows * gpr;
  const Bits* x = static_cast<const Bits*>(a.x) + row0 * D;

  if (aligned) {
    for (int c = threadIdx.x; c < ngroups * CH; c += NT)
      dev::cp_async_16(tile + (c / CH) * STRIDE + (c % CH) * 16, reinterpret_cast<const uint4*>(x) + c, true);
    dev::cp_async_commit();
    dev::cp_async_wait<0>();
  } else {  // x not 16-byte aligned (an offset view): element by element
    for (int i = threadIdx.x; i < ngroups * G; i += NT)
      reinterpret_cast<Bits*>(tile + (i / G) * STRIDE)[i % G] = x[i];
  }
  __syncthreads();

  if ((int)threadIdx.x < ngroups) {
    constexpr int PER = 16 / (int)sizeof(Bits);  // elements per chunk
    const uint4* p = reinterpret_cast<const uint4*>(tile + threadIdx.x * STRIDE);
    uint32_t k[G];
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      const uint4 v = p[c];
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if constexpr (KIND == 0) {
          k[c * PER + i] = key_of<0>(w[i]);
        } else {
          k[c * PER + 2 * i] = key_of<KIND>(w[i] & 0xFFFFu);
          k[c * PER + 2 * i + 1] = key_of<KIND>(w[i] >> 16);
        }
      }
    }
    outl::sort_keys(k);
    outl::median_spread_sorted<G>(k, med_s[threadIdx.x], spread_s[threadIdx.x]);
  }
  __syncthreads();

  select_rows<KIND>(a, row0, nrows, [&](int r, int d, Bits& xb, float& m, float& s) {
    const int g = r * gpr + d / G;
    xb = reinterpret_cast<const Bits*>(tile + g * STRIDE)[d % G];
    m = med_s[g];
    s = spread_s[g];
  });
}

// axis "channel": a CTA per block of G tokens, thread d sorts channel d (coalesced
// column loads), then warps select rows of the block.
template <int KIND, int G>
__global__ void __launch_bounds__(256) channel_kernel(OutlierArgs a) {
  using Bits = typename Storage<KIND>::bits_t;
  __shared__ float med_s[256], spread_s[256];
  const int D = a.D, d = threadIdx.x;
  const int64_t blocks = a.T / G;
  const int64_t row0 = (blockIdx.x / blocks) * a.T + (blockIdx.x % blocks) * G;
  const Bits* x = static_cast<const Bits*>(a.x) + row0 * D;
  if (d < D) {
    uint32_t k[G];
#pragma unroll
    for (int t = 0; t < G; ++t) k[t] = key_of<KIND>(__ldg(x + t * D + d));
    outl::sort_keys(k);
    outl::median_spread_sorted<G>(k, med_s[d], spread_s[d]);
  }
  __syncthreads();
  select_rows<KIND>(a, row0, G, [&](int r, int c, Bits& xb, float& m, float& s) {
    xb = __ldg(x + r * D + c);
    m = med_s[c];
    s = spread_s[c];
  });
}

template <int KIND, int G>
void launch(const OutlierArgs& a, cudaStream_t st) {
  if (a.axis == Axis::Channel) {
    const int threads = (a.D + 31) / 32 * 32;
    channel_kernel<KIND, G><<<(unsigned)(a.outer * (a.T / G)), threads, 0, st>>>(a);
  } else {
    const int64_t rows = a.outer * a.T, R = (kTileElems / G) / (a.D / G);  // as in token_kernel
    const bool aligned = reinterpret_cast<uintptr_t>(a.x) % 16 == 0;
    token_kernel<KIND, G><<<(unsigned)((rows + R - 1) / R), kTileElems / G, 0, st>>>(a, rows, aligned);
  }
}

template <int KIND>
void launch_kind(const OutlierArgs& a, cudaStream_t st) {
  switch (a.group) {
    case 32: launch<KIND, 32>(a, st); break;
    case 64: launch<KIND, 64>(a, st); break;
    default: launch<KIND, 128>(a, st); break;
  }
}

}  // namespace

cudaError_t extract_outliers_cuda(const OutlierArgs& a, cudaStream_t stream) {
  if (a.outer * a.T == 0) return cudaSuccess;
  switch (a.dtype) {
    case DType::F32: launch_kind<0>(a, stream); break;
    case DType::F16: launch_kind<1>(a, stream); break;
    default: launch_kind<2>(a, stream); break;
  }
  return cudaGetLastError();
}

}  // namespace kvcore
