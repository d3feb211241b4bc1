// Torch-free entry points of the randomized Hadamard rotation (kvcore.hadamard_rotate).
#pragma once
#include <cstdint>
#include "kvcore/quant_format.h"
#include "kvcore/rotation.h"

namespace kvcore {

struct RotateArgs {
  DType dtype = DType::F32;  // of x and out
  int64_t rows = 0;          // product of the leading dimensions
  int D = 0;                 // last dimension, a power of two (2..1024)
  uint64_t seed = 0;
  bool inverse = false;      // out = x H / sqrt(D) diag(s) (undoes the forward rotation)
  const void* x = nullptr;   // [rows, D]
  void* out = nullptr;       // [rows, D]
};

// Rows [begin, end), fp32 arithmetic, one rounding to the storage type at the end.
void hadamard_rotate_cpu(const RotateArgs& a, int64_t begin, int64_t end);

}  // namespace kvcore
