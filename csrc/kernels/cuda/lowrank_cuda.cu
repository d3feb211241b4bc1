// CUDA kernel of the GEAR low-rank error: a CTA of 128 threads per block of G tokens
// (one wave of CTAs, grid-stride over the blocks). R [G, D] stays in shared memory in its
// storage type (rows padded so that the 16-bit access patterns below are free of bank
// conflicts), next to Y [G, r], W [D, r] and the seeded start W0 (hashed once per CTA) in
// fp32; r is padded to RP in {1, 2, 4, 8} (the extra columns stay apart from the real
// ones and are never written out).
//
// Every sum follows the partial-sum order of lowrank.h, which the CPU kernel uses too, so
// the two agree bit for bit (terms of R W and R^T Y by __fmaf_rn like the CPU's std::fma;
// Gram-Schmidt with separate __dmul_rn / __dadd_rn, never contracted):
//  * Y = R W: thread (g, p) owns tokens g + 32m and channel partial p (chunks of 4
//    channels k = p, p + 4, ...); the 4 partials of a token sit in neighbouring lanes
//    and combine in a 2-level xor butterfly.
//  * W = R^T Y: thread (c, q) owns the 4 channels of chunk c and token partial q (tokens
//    q, q + 4, ...); the 4 partials combine in a 2-level xor reduce-scatter that leaves
//    each lane one finished channel.
//  * Gram-Schmidt (modified, twice, double sums) runs in warp 0: lane l holds rows
//    l + 32m; a dot product is a per-lane partial plus a 5-level xor butterfly.
#include <cuda_fp16.h>
#include <algorithm>
#include <climits>
#include "../lowrank.h"
#include "kvcore/rotation.h"

namespace kvcore {
namespace {

constexpr int kThreads = 128;
static_assert(kLowRankChunk == 4 && kLowRankParts == 4 && kLowRankDotParts == 32, "layout below assumes these");

// Columns of Y and W: the rank rounded up to 1, 2, 4 or 8.
inline int padded_rank(int rank) { return rank <= 1 ? 1 : rank <= 2 ? 2 : rank <= 4 ? 4 : 8; }

// Floats per W chunk (4 channels x RP columns), padded for RP >= 4 so the four channel
// partials of a warp (chunks k .. k + 3) read four different bank groups.
KV_HD constexpr int w_chunk_floats(int rp) { return 4 * rp + (rp >= 4 ? 4 : 0); }

// Bytes of one padded row of R in shared memory: at least 4 * chunks elements and 32
// mod 128 bytes, so four consecutive rows hit four different 8-bank groups.
inline int r_row_bytes(int chunks, int esize) { return (4 * chunks * esize + 95) / 128 * 128 + 32; }

// The 4 channels of one chunk of a row of R, as floats (exact conversion).
template <int KIND>
__device__ __forceinline__ void load_chunk(const unsigned char* p, float (&v)[4]) {
  if constexpr (KIND == 0) {
    const float4 f = *reinterpret_cast<const float4*>(p);
    v[0] = f.x; v[1] = f.y; v[2] = f.z; v[3] = f.w;
  } else {
    const uint2 w = *reinterpret_cast<const uint2*>(p);
    if constexpr (KIND == 2) {
      v[0] = __uint_as_float(w.x << 16);
      v[1] = __uint_as_float(w.x & 0xFFFF0000u);
      v[2] = __uint_as_float(w.y << 16);
      v[3] = __uint_as_float(w.y & 0xFFFF0000u);
    } else {
      const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&w.x));
      const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&w.y));
      v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
    }
  }
}

// N consecutive floats of shared memory (16-byte aligned when N >= 4).
template <int N>
__device__ __forceinline__ void load_floats(const float* p, float* v) {
  if constexpr (N == 1) {
    v[0] = p[0];
  } else if constexpr (N == 2) {
    const float2 f = *reinterpret_cast<const float2*>(p);
    v[0] = f.x; v[1] = f.y;
  } else {
#pragma unroll
    for (int i = 0; i < N; i += 4) {
      const float4 f = *reinterpret_cast<const float4*>(p + i);
      v[i] = f.x; v[i + 1] = f.y; v[i + 2] = f.z; v[i + 3] = f.w;
    }
  }
}

template <int N>
__device__ __forceinline__ void store_floats(float* p, const float* v) {
  if constexpr (N == 1) {
    p[0] = v[0];
  } else if constexpr (N == 2) {
    *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]);
  } else {
#pragma unroll
    for (int i = 0; i < N; i += 4) *reinterpret_cast<float4*>(p + i) = make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]);
  }
}

struct Smem {
  unsigned char* R;  // [G][row_bytes]
  float* Y;          // [G][RP]
  float* W;          // [chunks][w_chunk_floats]: channel 4c + e, column j at c * WCS + e * RP + j
  float* W0;         // the seeded +-1 start, same layout as W
  int row_bytes, chunks;
};

// Y = R W (see the file comment for the thread layout and the order of the sums).
template <int KIND, int G, int RP>
__device__ __forceinline__ void times_w(const Smem& s, const float* W) {
  constexpr int TAU = G / 32, WCS = w_chunk_floats(RP), ES = KIND == 0 ? 4 : 2;
  const int p = threadIdx.x & 3, g = threadIdx.x >> 2;
  float acc[TAU][RP];
#pragma unroll
  for (int m = 0; m < TAU; ++m)
#pragma unroll
    for (int j = 0; j < RP; ++j) acc[m][j] = 0.0f;
  for (int k = p; k < s.chunks; k += 4) {
    float rv[TAU][4];
#pragma unroll
    for (int m = 0; m < TAU; ++m) load_chunk<KIND>(s.R + (g + 32 * m) * s.row_bytes + k * 4 * ES, rv[m]);
    const float* w = W + k * WCS;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float wv[RP];
      load_floats<RP>(w + e * RP, wv);
#pragma unroll
      for (int m = 0; m < TAU; ++m)
#pragma unroll
        for (int j = 0; j < RP; ++j) acc[m][j] = __fmaf_rn(rv[m][e], wv[j], acc[m][j]);
    }
  }
  // (P0 + P1) + (P2 + P3), the same in all four lanes (addition commutes).
#pragma unroll
  for (int m = 0; m < TAU; ++m)
#pragma unroll
    for (int j = 0; j < RP; ++j) {
      acc[m][j] = __fadd_rn(acc[m][j], __shfl_xor_sync(0xffffffffu, acc[m][j], 1));
      acc[m][j] = __fadd_rn(acc[m][j], __shfl_xor_sync(0xffffffffu, acc[m][j], 2));
    }
  if (p == 0) {
#pragma unroll
    for (int m = 0; m < TAU; ++m) store_floats<RP>(s.Y + (g + 32 * m) * RP, acc[m]);
  }
}

// W = R^T Y. The final call writes B (fp16, d < D, j < r) instead of W.
template <int KIND, int G, int RP>
__device__ __forceinline__ void rt_times_y(const Smem& s, int D, int r, uint16_t* B) {
  constexpr int WCS = w_chunk_floats(RP), ES = KIND == 0 ? 4 : 2;
  const int q = threadIdx.x & 3;
  // The channel of its chunk that lane q finishes (see the reduce-scatter below).
  const int e_out = ((q & 1) << 1) | ((q >> 1) & 1);
  for (int base = 0; base < 4 * s.chunks; base += kThreads) {  // CTA-uniform trip count
    const int c = (base + (int)threadIdx.x) >> 2;
    const bool active = c < s.chunks;  // the same for the 4 lanes of a chunk
    float acc[4][RP];
#pragma unroll
    for (int e = 0; e < 4; ++e)
#pragma unroll
      for (int j = 0; j < RP; ++j) acc[e][j] = 0.0f;
    if (active) {
      const unsigned char* col = s.R + c * 4 * ES;
      for (int t = q; t < G; t += 4) {
        float rv[4], yv[RP];
        load_chunk<KIND>(col + t * s.row_bytes, rv);
        load_floats<RP>(s.Y + t * RP, yv);
#pragma unroll
        for (int e = 0; e < 4; ++e)
#pragma unroll
          for (int j = 0; j < RP; ++j) acc[e][j] = __fmaf_rn(rv[e], yv[j], acc[e][j]);
      }
    }
    // Level 1 (lanes q, q ^ 1): the even lane keeps channels 0, 1, the odd one 2, 3; each
    // adds the partner's partial of the channels it keeps: P_q + P_(q^1).
    const bool odd = (q & 1) != 0, high = (q & 2) != 0;
    float h[2][RP], fin[RP];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < RP; ++j) {
        const float send = odd ? acc[i][j] : acc[2 + i][j];
        const float keep = odd ? acc[2 + i][j] : acc[i][j];
        h[i][j] = __fadd_rn(keep, __shfl_xor_sync(0xffffffffu, send, 1));
      }
    // Level 2 (lanes q, q ^ 2): of its two channels a lane keeps the first if q & 2 is
    // clear: (P0 + P1) + (P2 + P3) up to commutation.
#pragma unroll
    for (int j = 0; j < RP; ++j) {
      const float send = high ? h[0][j] : h[1][j];
      const float keep = high ? h[1][j] : h[0][j];
      fin[j] = __fadd_rn(keep, __shfl_xor_sync(0xffffffffu, send, 2));
    }
    if (active) {
      const int d = 4 * c + e_out;
      if (B == nullptr) {
        if (d >= D) {  // channels past D stay exactly 0, like the ones the CPU never has
#pragma unroll
          for (int j = 0; j < RP; ++j) fin[j] = 0.0f;
        }
        store_floats<RP>(s.W + c * WCS + e_out * RP, fin);
      } else if (d < D) {
#pragma unroll
        for (int j = 0; j < RP; ++j)
          if (j < r) B[d * r + j] = float_to_half_bits(fin[j]);
      }
    }
  }
}

// Sum over the 32 lanes of a double, pairwise like lowrank.h's dot order.
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int w = 1; w < 32; w <<= 1) v = __dadd_rn(v, __shfl_xor_sync(0xffffffffu, v, w));
  return v;
}

template <int MR, int RP>
__device__ __forceinline__ double dot_columns(const float (&y)[MR][RP], int j, int k) {
  double part = 0.0;
#pragma unroll
  for (int m = 0; m < MR; ++m) part = __dadd_rn(part, __dmul_rn((double)y[m][j], (double)y[m][k]));
  return warp_sum(part);
}

// Modified Gram-Schmidt, twice, on the r real columns of Y (warp 0 only). The final
// call also writes A (fp16).
template <int G, int RP>
__device__ __forceinline__ void orthonormalise(const Smem& s, int r, uint16_t* A) {
  constexpr int MR = G / 32;
  const int lane = threadIdx.x & 31;
  float y[MR][RP];
#pragma unroll
  for (int m = 0; m < MR; ++m) load_floats<RP>(s.Y + (lane + 32 * m) * RP, y[m]);
  for (int pass = 0; pass < 2; ++pass) {
#pragma unroll
    for (int j = 0; j < RP; ++j) {
      if (j >= r) break;  // warp-uniform
#pragma unroll
      for (int k = 0; k < j; ++k) {
        const float dot = __double2float_rn(dot_columns<MR, RP>(y, j, k));
#pragma unroll
        for (int m = 0; m < MR; ++m) y[m][j] = __fsub_rn(y[m][j], __fmul_rn(dot, y[m][k]));
      }
      const double nn = dot_columns<MR, RP>(y, j, j);
      const float inv = nn > 1e-30 ? __double2float_rn(__ddiv_rn(1.0, __dsqrt_rn(nn))) : 0.0f;
#pragma unroll
      for (int m = 0; m < MR; ++m) y[m][j] = __fmul_rn(y[m][j], inv);
    }
  }
#pragma unroll
  for (int m = 0; m < MR; ++m) {
    store_floats<RP>(s.Y + (lane + 32 * m) * RP, y[m]);
    if (A != nullptr) {
#pragma unroll
      for (int j = 0; j < RP; ++j)
        if (j < r) A[(lane + 32 * m) * r + j] = float_to_half_bits(y[m][j]);
    }
  }
}

// CTAs per SM the register budget is planned for. The accumulators grow with RP and G,
// and the larger blocks fit fewer CTAs in shared memory anyway (at D = 128: bf16 G = 128
// about 5, fp32 G = 64 about 6). Register caps: bf16/fp16 64 up to RP = 2 (85 at
// G = 128), 85 at RP = 4 (102 at G = 128), 128 at RP = 8; fp32 up to RP = 2: 85 / 102 /
// 128 for G = 32 / 64 / 128.
template <int KIND, int G, int RP>
constexpr int min_ctas() {
  if (RP <= 2) return KIND == 0 ? (G == 32 ? 6 : G == 64 ? 5 : 4) : (G == 128 ? 6 : 8);
  return RP == 4 ? (G == 128 ? 5 : 6) : 4;
}

template <int KIND, int G, int RP>
__global__ void __launch_bounds__(kThreads, min_ctas<KIND, G, RP>()) lowrank_kernel(LowRankArgs a, int row_bytes,
                                                                                    bool vec_loads) {
  using Bits = typename Storage<KIND>::bits_t;
  constexpr int WCS = w_chunk_floats(RP), ES = KIND == 0 ? 4 : 2;
  extern __shared__ __align__(16) unsigned char lowrank_smem[];
  const int D = a.D, r = a.rank, chunks = (D + 3) / 4;
  Smem s;
  s.R = lowrank_smem;
  s.Y = reinterpret_cast<float*>(lowrank_smem + G * row_bytes);
  s.W = s.Y + G * RP;
  s.W0 = s.W + chunks * WCS;
  s.row_bytes = row_bytes;
  s.chunks = chunks;
  const int tid = threadIdx.x;
  // The seeded +-1 start, hashed once per CTA; channels past D and columns past r are 0.
  for (int i = tid; i < chunks * 4 * RP; i += kThreads) {
    const int c = i / (4 * RP), e = i % (4 * RP) / RP, j = i % RP, d = 4 * c + e;
    s.W0[c * WCS + e * RP + j] = d < D && j < r ? rotation_sign(a.seed, (int64_t)d * 16 + j) : 0.0f;
  }
  // 16-byte copies of R (vec_loads: per_row = D * ES / 16 divides kThreads): this
  // thread's vectors all sit in column col0, rows t0, t0 + dt, ...
  const int per_row = vec_loads ? D * ES / 16 : 1, dt = kThreads / per_row;
  const int t0 = tid / per_row, col0 = tid % per_row, warp = tid / 32, lane = tid % 32;
  const int64_t blocks = a.T / G, units = a.outer * blocks;
  for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {  // grid-stride: one wave of CTAs
    const int64_t row0 = (u / blocks) * a.T + (u % blocks) * G;
    const Bits* res = static_cast<const Bits*>(a.residual) + row0 * D;  // G * D contiguous elements
    if (vec_loads) {
      const uint4* src = reinterpret_cast<const uint4*>(res) + tid;
      unsigned char* dst = s.R + t0 * row_bytes + col0 * 16;
      const int step = dt * row_bytes;  // kThreads vectors further on: dt rows down
      for (int t = 0; t0 + t < G; t += 4 * dt, src += 4 * kThreads, dst += 4 * step) {
        uint4 buf[4];  // four 16-byte loads in flight per thread
#pragma unroll
        for (int b = 0; b < 4; ++b)
          if (t0 + t + b * dt < G) buf[b] = __ldcs(src + b * kThreads);
#pragma unroll
        for (int b = 0; b < 4; ++b)
          if (t0 + t + b * dt < G) *reinterpret_cast<uint4*>(dst + b * step) = buf[b];
      }
    } else {  // any D: a warp per row, element by element, zeros up to the chunk boundary
      const int width = 4 * chunks;
      for (int t = warp; t < G; t += kThreads / 32) {
        Bits* dst = reinterpret_cast<Bits*>(s.R + t * row_bytes);
        for (int d = lane; d < width; d += 32) dst[d] = d < D ? res[t * D + d] : (Bits)0;
      }
    }
    __syncthreads();
    times_w<KIND, G, RP>(s, s.W0);
    __syncthreads();
    for (int it = 0; it < a.iters; ++it) {
      if (tid < 32) orthonormalise<G, RP>(s, r, nullptr);
      __syncthreads();
      rt_times_y<KIND, G, RP>(s, D, r, nullptr);
      __syncthreads();
      times_w<KIND, G, RP>(s, s.W);
      __syncthreads();
    }
    if (tid < 32) orthonormalise<G, RP>(s, r, a.a + u * (int64_t)G * r);
    __syncthreads();
    rt_times_y<KIND, G, RP>(s, D, r, a.b + u * (int64_t)D * r);
    __syncthreads();  // R and Y are rewritten for the next block
  }
}

// CTAs resident per SM for one instantiation and shared-memory size (asked of the
// runtime again only when the size changes; per host thread, so no locking).
template <int KIND, int G, int RP>
int ctas_per_sm(size_t smem) {
  thread_local size_t cached_smem = 0;
  thread_local int cached = 1;
  if (smem != cached_smem) {
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, lowrank_kernel<KIND, G, RP>, kThreads, smem) !=
        cudaSuccess)
      blocks = 0;
    cudaGetLastError();  // a failed query only leaves the estimate at 1
    cached = std::max(blocks, 1);
    cached_smem = smem;
  }
  return cached;
}

template <int KIND, int G, int RP>
cudaError_t launch_g(const LowRankArgs& a, cudaStream_t st) {
  const int chunks = (a.D + 3) / 4, esize = KIND == 0 ? 4 : 2;
  const size_t smem = lowrank_error_cuda_smem(a);
  auto kernel = lowrank_kernel<KIND, G, RP>;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  int dev = 0, sms = 0;
  if (e == cudaSuccess) e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (e != cudaSuccess) return e;
  const int64_t units = a.outer * (a.T / G);
  const int64_t wave = (int64_t)sms * ctas_per_sm<KIND, G, RP>(smem);
  const unsigned grid = (unsigned)std::max<int64_t>(1, std::min(units, wave));
  const int per_row = a.D * esize / 16;  // 16-byte vectors per row, if whole
  const bool vec = (a.D * esize) % 16 == 0 && kThreads % per_row == 0 &&
                   reinterpret_cast<uintptr_t>(a.residual) % 16 == 0;
  kernel<<<grid, kThreads, smem, st>>>(a, r_row_bytes(chunks, esize), vec);
  return cudaGetLastError();
}

template <int KIND, int G>
cudaError_t launch_r(const LowRankArgs& a, cudaStream_t st) {
  switch (padded_rank(a.rank)) {
    case 1: return launch_g<KIND, G, 1>(a, st);
    case 2: return launch_g<KIND, G, 2>(a, st);
    case 4: return launch_g<KIND, G, 4>(a, st);
    default: return launch_g<KIND, G, 8>(a, st);
  }
}

template <int KIND>
cudaError_t launch(const LowRankArgs& a, cudaStream_t st) {
  switch (a.group) {
    case 32: return launch_r<KIND, 32>(a, st);
    case 64: return launch_r<KIND, 64>(a, st);
    case 128: return launch_r<KIND, 128>(a, st);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

size_t lowrank_error_cuda_smem(const LowRankArgs& a) {
  const int chunks = (a.D + 3) / 4, esize = a.dtype == DType::F32 ? 4 : 2, rp = padded_rank(a.rank);
  return (size_t)a.group * r_row_bytes(chunks, esize) + (size_t)a.group * rp * 4 +
         2 * (size_t)chunks * w_chunk_floats(rp) * 4;  // R, Y, W and W0
}

cudaError_t lowrank_error_cuda(const LowRankArgs& a, cudaStream_t stream) {
  if (a.outer * (a.T / a.group) == 0) return cudaSuccess;
  switch (a.dtype) {
    case DType::F32: return launch<0>(a, stream);
    case DType::F16: return launch<1>(a, stream);
    default: return launch<2>(a, stream);
  }
}

}  // namespace kvcore
