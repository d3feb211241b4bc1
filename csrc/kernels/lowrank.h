// Torch-free entry points of the GEAR low-rank error approximation (kvcore.lowrank_error).
#pragma once
#include <cstddef>
#include <cstdint>
#include "kvcore/quant_format.h"

#if defined(KVCORE_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

namespace kvcore {

struct LowRankArgs {
  DType dtype = DType::F32;   // of the residual
  int64_t outer = 0, T = 0;   // residual is [outer, T, D]
  int D = 0, group = 64, rank = 2, iters = 3;
  uint64_t seed = 0;
  const void* residual = nullptr;  // [outer, T, D]
  uint16_t* a = nullptr;           // [outer, T/group, group, rank] fp16 bits (orthonormal columns)
  uint16_t* b = nullptr;           // [outer, T/group, D, rank] fp16 bits (residual^T a)
};

// Summation order shared by the CPU and CUDA kernels (so they agree bit for bit while
// the GPU spreads every sum over several threads). In R W and R^T Y every term enters
// its partial sum through one fused multiply-add, s = fma(x, w, s) (one rounding); the
// Gram-Schmidt sums round the product and the sum separately. Every partial sum starts
// at +0 and takes its terms in increasing index order.
//  * Y = R W, Y[t][j] = sum over d: 4 partials, partial p taking the channels d with
//    (d / kLowRankChunk) % kLowRankParts == p; result (P0 + P1) + (P2 + P3).
//  * W = R^T Y, W[d][j] = sum over t: 4 partials, partial q taking the tokens t with
//    t % kLowRankParts == q; result (P0 + P1) + (P2 + P3).
//  * Gram-Schmidt dot products (double): 32 partials, partial l taking the rows i with
//    i % 32 == l; combined pairwise, P[l] += P[l + w] for w = 1, 2, 4, 8, 16 (l a
//    multiple of 2w), i.e. a warp's xor butterfly.
constexpr int kLowRankChunk = 4;
constexpr int kLowRankParts = 4;
constexpr int kLowRankDotParts = 32;

// Work units: (outer, block of `group` tokens).
int64_t lowrank_error_cpu_units(const LowRankArgs& a);
void lowrank_error_cpu(const LowRankArgs& a, int64_t begin, int64_t end);

#if defined(KVCORE_WITH_CUDA) || defined(__CUDACC__)
// Dynamic shared memory the CUDA kernel needs for `a` (one block of R plus Y and W).
size_t lowrank_error_cuda_smem(const LowRankArgs& a);
cudaError_t lowrank_error_cuda(const LowRankArgs& a, cudaStream_t stream);
#endif

}  // namespace kvcore
