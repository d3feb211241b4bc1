// CUDA kernels of kvcore.lsh_signature. The projection P [D][nbits] is built once per
// call into a scratch buffer (lsh_projection, the CPU's integers); then a warp takes
// R rows at a time, lane l owns bits l, l+32, ... of each, and accumulates
// acc = fmaf(x[d], P[d][j], acc) over d ascending from 0, the CPU's operations in the
// CPU's order, so the signs (and the signatures) agree bit for bit. Word m of a row is
// then a single ballot of (acc[m] > 0) over the lanes.
#include <algorithm>

#include "../eviction.h"
#include "kvcore/float_bits.h"
#include "kvcore/lsh.h"

namespace kvcore {
namespace {

constexpr int kThreads = 256;

__global__ void projection_kernel(uint64_t seed, int D, int nbits, float* P) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < (int64_t)D * nbits) P[i] = lsh_projection(seed, i / nbits, i % nbits);
}

// acc[r][m] += x[r][d] * P[d][m*32 + lane] for one d, rows r < R; P in shared memory
// (kShared) or read through the read-only cache.
template <int R, int M, bool kShared>
__device__ __forceinline__ void fma_step(float (&acc)[R][M], const float (&xv)[R], const float* __restrict__ Pd,
                                         int lane) {
  float p[M];
#pragma unroll
  for (int m = 0; m < M; ++m) p[m] = kShared ? Pd[m * 32 + lane] : __ldg(Pd + m * 32 + lane);
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = fmaf(xv[r], p[m], acc[r][m]);
}

// A warp takes R rows at a time (each P load serves R FMAs); the rows' x sit in shared
// memory and are read four channels at a time (one 16-byte broadcast load per row),
// so that about 80% of the loop's instructions are FMAs at R = 8. kShared: the CTA
// first copies P into shared memory with all its loads in flight at once (read from
// L2 one d at a time, a warp with few rows, as at decode, waited on 32-128 dependent
// round trips: 19 us for 64 keys).
template <int KIND, int M, int R, bool kShared>
__global__ void __launch_bounds__(kThreads) lsh_kernel(LshArgs a, const float* __restrict__ P_global) {
  using Bits = typename Storage<KIND>::bits_t;
  extern __shared__ float4 x_raw[];  // [warps][R][Dp], Dp = D rounded up to 4; then P if kShared
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = kThreads / 32;
  const int D = a.D, Dp = (D + 3) & ~3;
  float* xw = reinterpret_cast<float*>(x_raw) + (size_t)warp * R * Dp;
  const float* P = P_global;
  if constexpr (kShared) {
    float4* P_s = x_raw + (size_t)warps * R * Dp / 4;
    const int64_t n4 = (int64_t)D * a.nbits / 4;  // nbits is a multiple of 32
    for (int64_t i = threadIdx.x; i < n4; i += kThreads) P_s[i] = __ldg(reinterpret_cast<const float4*>(P_global) + i);
    __syncthreads();
    P = reinterpret_cast<const float*>(P_s);
  }
  const Bits* x = static_cast<const Bits*>(a.x);
  const int64_t groups = (a.rows + R - 1) / R;
  for (int64_t grp = (int64_t)blockIdx.x * warps + warp; grp < groups; grp += (int64_t)gridDim.x * warps) {
    const int64_t r0 = grp * R;
    const int nr = (int)min((int64_t)R, a.rows - r0);
    __syncwarp();  // the previous group's rows have been read
    for (int i = lane; i < nr * D; i += 32) xw[(i / D) * Dp + i % D] = Storage<KIND>::load(x[r0 * D + i]);
    __syncwarp();
    float acc[R][M];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int m = 0; m < M; ++m) acc[r][m] = 0.0f;
    // rows past nr hold stale data; their bits are never written out
    int d = 0;
    for (; d + 4 <= D; d += 4) {
      float4 x4[R];
#pragma unroll
      for (int r = 0; r < R; ++r) x4[r] = *reinterpret_cast<const float4*>(xw + r * Dp + d);
      const float* Pd = P + (int64_t)d * a.nbits;
      float xv[R];
#pragma unroll
      for (int r = 0; r < R; ++r) xv[r] = x4[r].x;
      fma_step<R, M, kShared>(acc, xv, Pd, lane);
#pragma unroll
      for (int r = 0; r < R; ++r) xv[r] = x4[r].y;
      fma_step<R, M, kShared>(acc, xv, Pd + a.nbits, lane);
#pragma unroll
      for (int r = 0; r < R; ++r) xv[r] = x4[r].z;
      fma_step<R, M, kShared>(acc, xv, Pd + 2 * a.nbits, lane);
#pragma unroll
      for (int r = 0; r < R; ++r) xv[r] = x4[r].w;
      fma_step<R, M, kShared>(acc, xv, Pd + 3 * a.nbits, lane);
    }
    for (; d < D; ++d) {
      float xv[R];
#pragma unroll
      for (int r = 0; r < R; ++r) xv[r] = xw[r * Dp + d];
      fma_step<R, M, kShared>(acc, xv, P + (int64_t)d * a.nbits, lane);
    }
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const uint32_t word = __ballot_sync(0xffffffffu, acc[r][m] > 0.0f);
        if (lane == 0 && r < nr) a.sig[(r0 + r) * M + m] = word;
      }
  }
}

template <int KIND, int M, int R, bool kShared>
cudaError_t launch_rows(const LshArgs& a, const float* P, size_t smem, int num_sms, cudaStream_t st) {
  auto kernel = lsh_kernel<KIND, M, R, kShared>;
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return e;
  }
  const int64_t groups = (a.rows + R - 1) / R;
  const int64_t blocks = std::min<int64_t>((groups + kThreads / 32 - 1) / (kThreads / 32), (int64_t)num_sms * 16);
  kernel<<<(unsigned)std::max<int64_t>(blocks, 1), kThreads, smem, st>>>(a, P);
  return cudaGetLastError();
}

// 8 rows a warp up to D = 256 (64 KB of rows a CTA), 4 beyond (D <= 1024: 128 KB). P in
// shared memory (D * nbits * 4 bytes: 32-128 KB at D = 128) where it fits beside them and
// the rows fill at most one CTA per SM: there the launch is latency-bound (decode). Many
// rows keep P in L1 and several CTAs per SM.
template <int KIND, int M, int R>
cudaError_t by_smem(const LshArgs& a, const float* P, int num_sms, int max_smem, cudaStream_t st) {
  const size_t x_bytes = (size_t)kThreads / 32 * R * ((a.D + 3) & ~3) * sizeof(float);
  const size_t p_bytes = (size_t)a.D * a.nbits * sizeof(float);
  const int64_t ctas = ((a.rows + R - 1) / R + kThreads / 32 - 1) / (kThreads / 32);
  if (ctas <= num_sms && x_bytes + p_bytes <= (size_t)max_smem)
    return launch_rows<KIND, M, R, true>(a, P, x_bytes + p_bytes, num_sms, st);
  return launch_rows<KIND, M, R, false>(a, P, x_bytes, num_sms, st);
}

template <int KIND, int M>
cudaError_t by_rows(const LshArgs& a, const float* P, int num_sms, int max_smem, cudaStream_t st) {
  return a.D <= 256 ? by_smem<KIND, M, 8>(a, P, num_sms, max_smem, st) : by_smem<KIND, M, 4>(a, P, num_sms, max_smem, st);
}

template <int KIND>
cudaError_t by_words(const LshArgs& a, const float* P, int num_sms, int max_smem, cudaStream_t st) {
  switch (a.nbits) {
    case 32: return by_rows<KIND, 1>(a, P, num_sms, max_smem, st);
    case 64: return by_rows<KIND, 2>(a, P, num_sms, max_smem, st);
    case 128: return by_rows<KIND, 4>(a, P, num_sms, max_smem, st);
    default: return by_rows<KIND, 8>(a, P, num_sms, max_smem, st);
  }
}

}  // namespace

cudaError_t lsh_signature_cuda(const LshArgs& a, float* projection, int num_sms, int max_smem_optin,
                               cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  const int64_t n = (int64_t)a.D * a.nbits;
  projection_kernel<<<(unsigned)((n + kThreads - 1) / kThreads), kThreads, 0, stream>>>(a.seed, a.D, a.nbits,
                                                                                         projection);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  switch (a.dtype) {
    case DType::F32: return by_words<0>(a, projection, num_sms, max_smem_optin, stream);
    case DType::F16: return by_words<1>(a, projection, num_sms, max_smem_optin, stream);
    default: return by_words<2>(a, projection, num_sms, max_smem_optin, stream);
  }
}

}  // namespace kvcore
