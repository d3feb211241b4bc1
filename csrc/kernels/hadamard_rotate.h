// Torch-free entry points of the randomized Hadamard rotation (kvcore.hadamard_rotate).
#pragma once
#include <cstdint>
#include "kvcore/quant_format.h"
#include "kvcore/rotation.h"

#if defined(KVCORE_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

namespace kvcore {

struct RotateArgs {
  DType dtype = DType::F32;  // of x and out
  int64_t rows = 0;          // product of the leading dimensions
  int D = 0;                 // last dimension, a power of two (2..1024)
  uint64_t seed = 0;
  bool inverse = false;      // out = x H / sqrt(D) diag(s) (undoes the forward rotation)
  float norm = 1.0f;         // 1 / sqrt(D), computed once on the host so CPU and CUDA agree
  const void* x = nullptr;   // [rows, D]
  void* out = nullptr;       // [rows, D]
};

// Rows [begin, end), fp32 arithmetic, one rounding to the storage type at the end.
// CPU and CUDA perform the same operations in the same order (butterfly stages
// h = 1, 2, 4, ...; lower + upper, lower - upper), so they agree bit for bit.
void hadamard_rotate_cpu(const RotateArgs& a, int64_t begin, int64_t end);

#if defined(KVCORE_WITH_CUDA) || defined(__CUDACC__)
cudaError_t hadamard_rotate_cuda(const RotateArgs& a, cudaStream_t stream);
#endif

}  // namespace kvcore
