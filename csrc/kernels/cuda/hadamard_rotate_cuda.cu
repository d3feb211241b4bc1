// CUDA kernel of the randomized Hadamard rotation. D >= 32: a warp per row, lane l
// holding the E = D/32 consecutive elements l*E ..; butterfly stages h < E run inside a
// lane, stages h >= E pair lane l with lane l ^ (h/E) through a shuffle. D < 32: a
// thread per row. Same operations in the same order as the CPU kernel (bit for bit).
#include "../hadamard_rotate.h"

namespace kvcore {
namespace {

template <int KIND, int E>
__global__ void __launch_bounds__(256) rotate_warp_kernel(RotateArgs a) {
  using Bits = typename Storage<KIND>::bits_t;
  const int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  if (row >= a.rows) return;  // whole warps: rows are warp-uniform
  const int lane = threadIdx.x & 31, D = 32 * E;
  const Bits* x = static_cast<const Bits*>(a.x) + row * D + lane * E;
  Bits* out = static_cast<Bits*>(a.out) + row * D + lane * E;
  float v[E], s[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    s[e] = rotation_sign(a.seed, lane * E + e);
    const float xv = Storage<KIND>::load(x[e]);
    v[e] = a.inverse ? xv : xv * s[e];
  }
  walsh_hadamard_inplace(v, E);  // the stages inside a lane (h < E); E is a constant
#pragma unroll
  for (int m = 1; m < 32; m <<= 1) {  // stage h = m * E: partner lane l ^ m
    const bool upper = (lane & m) != 0;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const float other = __shfl_xor_sync(0xffffffffu, v[e], m);
      v[e] = upper ? other - v[e] : v[e] + other;  // lower: u + w; upper: u - w (u = lower's value)
    }
  }
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const float y = v[e] * a.norm;
    out[e] = Storage<KIND>::store(a.inverse ? y * s[e] : y);
  }
}

template <int KIND>
__global__ void __launch_bounds__(256) rotate_thread_kernel(RotateArgs a) {
  using Bits = typename Storage<KIND>::bits_t;
  const int64_t row = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (row >= a.rows) return;
  const int D = a.D;  // 2..16
  const Bits* x = static_cast<const Bits*>(a.x) + row * D;
  Bits* out = static_cast<Bits*>(a.out) + row * D;
  float v[16];
  for (int d = 0; d < D; ++d) {
    const float xv = Storage<KIND>::load(x[d]);
    v[d] = a.inverse ? xv : xv * rotation_sign(a.seed, d);
  }
  walsh_hadamard_inplace(v, D);
  for (int d = 0; d < D; ++d) {
    const float y = v[d] * a.norm;
    out[d] = Storage<KIND>::store(a.inverse ? y * rotation_sign(a.seed, d) : y);
  }
}

template <int KIND>
cudaError_t launch(const RotateArgs& a, cudaStream_t st) {
  if (a.D < 32) {
    rotate_thread_kernel<KIND><<<(unsigned)((a.rows + 255) / 256), 256, 0, st>>>(a);
    return cudaGetLastError();
  }
  const unsigned grid = (unsigned)((a.rows + 7) / 8);  // 8 warps (rows) per block
  switch (a.D) {
    case 32: rotate_warp_kernel<KIND, 1><<<grid, 256, 0, st>>>(a); break;
    case 64: rotate_warp_kernel<KIND, 2><<<grid, 256, 0, st>>>(a); break;
    case 128: rotate_warp_kernel<KIND, 4><<<grid, 256, 0, st>>>(a); break;
    case 256: rotate_warp_kernel<KIND, 8><<<grid, 256, 0, st>>>(a); break;
    case 512: rotate_warp_kernel<KIND, 16><<<grid, 256, 0, st>>>(a); break;
    default: rotate_warp_kernel<KIND, 32><<<grid, 256, 0, st>>>(a); break;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t hadamard_rotate_cuda(const RotateArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  switch (a.dtype) {
    case DType::F32: return launch<0>(a, stream);
    case DType::F16: return launch<1>(a, stream);
    default: return launch<2>(a, stream);
  }
}

}  // namespace kvcore
