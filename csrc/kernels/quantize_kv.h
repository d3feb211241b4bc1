// Torch-free entry points of the quantize/dequantize kernels (CPU and CUDA).
#pragma once
#include <cstdint>
#include "kvcore/quant_format.h"

#if defined(KVCORE_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

namespace kvcore {

// x is viewed as [outer, T, D] row-major. Codes are [outer, T, D*bits/8] bytes.
// axis Token:   scale/mn are [outer, T, D/group]
// axis Channel: scale/mn are [outer, T/group, D]   (T % group == 0)
struct QuantizeArgs {
  const void* x = nullptr;
  uint8_t* codes = nullptr;
  void* scale = nullptr;
  void* mn = nullptr;
  int64_t outer = 0, T = 0, D = 0;
  int bits = 4, group = 64;
  DType dtype = DType::F16;
  Axis axis = Axis::Token;
};

struct DequantizeArgs {
  const uint8_t* codes = nullptr;
  const void* scale = nullptr;
  const void* mn = nullptr;
  void* out = nullptr;
  int64_t outer = 0, T = 0, D = 0;
  int bits = 4, group = 64;
  DType meta_dtype = DType::F16;  // dtype of scale/mn
  DType out_dtype = DType::F16;
  Axis axis = Axis::Token;
};

// CPU: process work units [begin, end). A unit is one (outer, token) row for
// axis Token and one (outer, token-block) for axis Channel; see *_cpu_units().
int64_t quantize_kv_cpu_units(const QuantizeArgs& a);
void quantize_kv_cpu(const QuantizeArgs& a, int64_t begin, int64_t end);
int64_t dequantize_kv_cpu_units(const DequantizeArgs& a);
void dequantize_kv_cpu(const DequantizeArgs& a, int64_t begin, int64_t end);

#if defined(KVCORE_WITH_CUDA) || defined(__CUDACC__)
// CUDA: enqueue on `stream`; returns the launch error (cudaSuccess when fine).
cudaError_t quantize_kv_cuda(const QuantizeArgs& a, cudaStream_t stream);
cudaError_t dequantize_kv_cuda(const DequantizeArgs& a, cudaStream_t stream);
#endif

}  // namespace kvcore
