// CUDA kernel of the GEAR low-rank error (first version, not yet tuned): a CTA per
// block of tokens keeps R [G, D], Y [G, r] and W [D, r] in shared memory. The products
// R W and R^T Y are spread over the threads with the CPU's summation order and no
// contraction (__fmul_rn / __fadd_rn); the tiny Gram-Schmidt runs in one thread in
// double, exactly like the CPU kernel. So CPU and CUDA agree bit for bit.
#include "../lowrank.h"
#include "kvcore/rotation.h"

namespace kvcore {
namespace {

constexpr int kThreads = 256;

__device__ void orthonormalise(float* y, int n, int r) {
  for (int pass = 0; pass < 2; ++pass)
    for (int j = 0; j < r; ++j) {
      for (int k = 0; k < j; ++k) {
        double dot = 0.0;
        for (int i = 0; i < n; ++i) dot = __dadd_rn(dot, __dmul_rn((double)y[i * r + j], (double)y[i * r + k]));
        for (int i = 0; i < n; ++i) y[i * r + j] = __fsub_rn(y[i * r + j], __fmul_rn((float)dot, y[i * r + k]));
      }
      double nn = 0.0;
      for (int i = 0; i < n; ++i) nn = __dadd_rn(nn, __dmul_rn((double)y[i * r + j], (double)y[i * r + j]));
      const float inv = nn > 1e-30 ? (float)__ddiv_rn(1.0, sqrt(nn)) : 0.0f;
      for (int i = 0; i < n; ++i) y[i * r + j] = __fmul_rn(y[i * r + j], inv);
    }
}

template <int KIND>
__global__ void __launch_bounds__(kThreads) lowrank_kernel(LowRankArgs a) {
  using Bits = typename Storage<KIND>::bits_t;
  extern __shared__ float sm[];
  const int G = a.group, D = a.D, r = a.rank;
  float* R = sm;                 // [G][D]
  float* Y = R + G * D;          // [G][r]
  float* W = Y + G * r;          // [D][r]
  const int64_t u = blockIdx.x, blocks = a.T / G, row0 = (u / blocks) * a.T + (u % blocks) * G;
  const Bits* res = static_cast<const Bits*>(a.residual) + row0 * D;
  for (int i = threadIdx.x; i < G * D; i += kThreads) R[i] = Storage<KIND>::load(res[i]);
  for (int i = threadIdx.x; i < D * r; i += kThreads) W[i] = rotation_sign(a.seed, (int64_t)(i / r) * 16 + i % r);
  __syncthreads();
  auto times_w = [&] {  // Y = R W
    for (int i = threadIdx.x; i < G * r; i += kThreads) {
      const int t = i / r, j = i % r;
      float s = 0.0f;
      for (int d = 0; d < D; ++d) s = __fadd_rn(s, __fmul_rn(R[t * D + d], W[d * r + j]));
      Y[i] = s;
    }
    __syncthreads();
  };
  auto rt_times_y = [&] {  // W = R^T Y
    for (int i = threadIdx.x; i < D * r; i += kThreads) {
      const int d = i / r, j = i % r;
      float s = 0.0f;
      for (int t = 0; t < G; ++t) s = __fadd_rn(s, __fmul_rn(R[t * D + d], Y[t * r + j]));
      W[i] = s;
    }
    __syncthreads();
  };
  auto orth = [&] {
    if (threadIdx.x == 0) orthonormalise(Y, G, r);
    __syncthreads();
  };
  times_w();
  for (int it = 0; it < a.iters; ++it) {
    orth();
    rt_times_y();
    times_w();
  }
  orth();
  rt_times_y();
  uint16_t* A = a.a + u * (int64_t)G * r;
  uint16_t* B = a.b + u * (int64_t)D * r;
  for (int i = threadIdx.x; i < G * r; i += kThreads) A[i] = float_to_half_bits(Y[i]);
  for (int i = threadIdx.x; i < D * r; i += kThreads) B[i] = float_to_half_bits(W[i]);
}

template <int KIND>
cudaError_t launch(const LowRankArgs& a, cudaStream_t st) {
  const size_t smem = (size_t)(a.group * a.D + a.group * a.rank + a.D * a.rank) * sizeof(float);
  const cudaError_t e = cudaFuncSetAttribute(lowrank_kernel<KIND>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             (int)smem);
  if (e != cudaSuccess) return e;
  lowrank_kernel<KIND><<<(unsigned)(a.outer * (a.T / a.group)), kThreads, smem, st>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t lowrank_error_cuda(const LowRankArgs& a, cudaStream_t stream) {
  if (a.outer * (a.T / a.group) == 0) return cudaSuccess;
  switch (a.dtype) {
    case DType::F32: return launch<0>(a, stream);
    case DType::F16: return launch<1>(a, stream);
    default: return launch<2>(a, stream);
  }
}

}  // namespace kvcore
