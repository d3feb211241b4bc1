// CUDA kernels of kvcore.lsh_signature. The projection P [D][nbits] is built once per
// call into a scratch buffer (lsh_projection, the CPU's integers); then a warp takes
// kRows rows at a time, lane l owns bits l, l+32, ... of each, and accumulates
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
constexpr int kRows = 4;  // rows per warp at a time: each P load serves kRows FMAs

__global__ void projection_kernel(uint64_t seed, int D, int nbits, float* P) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < (int64_t)D * nbits) P[i] = lsh_projection(seed, i / nbits, i % nbits);
}

template <int KIND, int M>  // M = nbits / 32 words per row
__global__ void __launch_bounds__(kThreads) lsh_kernel(LshArgs a, const float* __restrict__ P) {
  using Bits = typename Storage<KIND>::bits_t;
  extern __shared__ float x_s[];  // [warps][kRows][D]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = kThreads / 32;
  float* xw = x_s + (size_t)warp * kRows * a.D;
  const Bits* x = static_cast<const Bits*>(a.x);
  const int64_t groups = (a.rows + kRows - 1) / kRows;
  for (int64_t grp = (int64_t)blockIdx.x * warps + warp; grp < groups; grp += (int64_t)gridDim.x * warps) {
    const int64_t r0 = grp * kRows;
    const int nr = (int)min((int64_t)kRows, a.rows - r0);
    __syncwarp();  // the previous group's rows have been read
    for (int i = lane; i < nr * a.D; i += 32) xw[i] = Storage<KIND>::load(x[r0 * a.D + i]);
    __syncwarp();
    float acc[kRows][M];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int m = 0; m < M; ++m) acc[r][m] = 0.0f;
    for (int d = 0; d < a.D; ++d) {
      float p[M];
#pragma unroll
      for (int m = 0; m < M; ++m) p[m] = __ldg(P + (int64_t)d * a.nbits + m * 32 + lane);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float xv = xw[r * a.D + d];  // rows past nr hold stale data; never written out
#pragma unroll
        for (int m = 0; m < M; ++m) acc[r][m] = fmaf(xv, p[m], acc[r][m]);
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const uint32_t word = __ballot_sync(0xffffffffu, acc[r][m] > 0.0f);
        if (lane == 0 && r < nr) a.sig[(r0 + r) * M + m] = word;
      }
  }
}

template <int KIND, int M>
cudaError_t launch_rows(const LshArgs& a, const float* P, int num_sms, cudaStream_t st) {
  const size_t smem = (size_t)kThreads / 32 * kRows * a.D * sizeof(float);
  auto kernel = lsh_kernel<KIND, M>;
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return e;
  }
  const int64_t groups = (a.rows + kRows - 1) / kRows;
  const int64_t blocks = std::min<int64_t>((groups + kThreads / 32 - 1) / (kThreads / 32), (int64_t)num_sms * 16);
  kernel<<<(unsigned)std::max<int64_t>(blocks, 1), kThreads, smem, st>>>(a, P);
  return cudaGetLastError();
}

template <int KIND>
cudaError_t by_words(const LshArgs& a, const float* P, int num_sms, cudaStream_t st) {
  switch (a.nbits) {
    case 32: return launch_rows<KIND, 1>(a, P, num_sms, st);
    case 64: return launch_rows<KIND, 2>(a, P, num_sms, st);
    case 128: return launch_rows<KIND, 4>(a, P, num_sms, st);
    default: return launch_rows<KIND, 8>(a, P, num_sms, st);
  }
}

}  // namespace

cudaError_t lsh_signature_cuda(const LshArgs& a, float* projection, int num_sms, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  const int64_t n = (int64_t)a.D * a.nbits;
  projection_kernel<<<(unsigned)((n + kThreads - 1) / kThreads), kThreads, 0, stream>>>(a.seed, a.D, a.nbits,
                                                                                         projection);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  switch (a.dtype) {
    case DType::F32: return by_words<0>(a, projection, num_sms, stream);
    case DType::F16: return by_words<1>(a, projection, num_sms, stream);
    default: return by_words<2>(a, projection, num_sms, stream);
  }
}

}  // namespace kvcore
