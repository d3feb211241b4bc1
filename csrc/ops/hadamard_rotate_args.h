// Validation for hadamard_rotate, shared by the CPU (and later CUDA) glue.
#pragma once
#include <ATen/core/Tensor.h>
#include "../kernels/hadamard_rotate.h"

namespace kvcore {

// Checks x and returns the shape/dtype fields of RotateArgs (not the pointers).
RotateArgs check_rotate_args(const at::Tensor& x, int64_t seed, bool inverse);

}  // namespace kvcore
