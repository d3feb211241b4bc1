// Torch-free entry points of sparse outlier extraction (kvcore.extract_outliers).
#pragma once
#include <cstdint>
#include "kvcore/quant_format.h"

#if defined(KVCORE_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

namespace kvcore {

struct OutlierArgs {
  DType dtype = DType::F32;  // of x, value and dense
  Axis axis = Axis::Token;   // Channel: centre/spread per channel over blocks of `group` tokens
  int64_t outer = 0, T = 0;  // x is [outer, T, D]
  int D = 0, group = 64, count = 1;
  const void* x = nullptr;   // [outer, T, D]
  uint8_t* index = nullptr;  // [outer, T, count], ascending channel indices
  void* value = nullptr;     // [outer, T, count], x at those indices
  void* dense = nullptr;     // [outer, T, D], x with the outliers replaced by their group's median
};

// Work units: (outer, block of `group` tokens) for Channel, (outer, token) for Token.
int64_t extract_outliers_cpu_units(const OutlierArgs& a);
void extract_outliers_cpu(const OutlierArgs& a, int64_t begin, int64_t end);

#if defined(KVCORE_WITH_CUDA) || defined(__CUDACC__)
// Launches on `stream`; needs no scratch.
cudaError_t extract_outliers_cuda(const OutlierArgs& a, cudaStream_t stream);
#endif

}  // namespace kvcore
