// Torch-free entry points of the GEAR low-rank error approximation (kvcore.lowrank_error).
#pragma once
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

// Work units: (outer, block of `group` tokens).
int64_t lowrank_error_cpu_units(const LowRankArgs& a);
void lowrank_error_cpu(const LowRankArgs& a, int64_t begin, int64_t end);

#if defined(KVCORE_WITH_CUDA) || defined(__CUDACC__)
cudaError_t lowrank_error_cuda(const LowRankArgs& a, cudaStream_t stream);
#endif

}  // namespace kvcore
