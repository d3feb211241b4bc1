#include "hadamard_rotate_args.h"
#include <cmath>
#include "tensor_checks.h"

namespace kvcore {

RotateArgs check_rotate_args(const at::Tensor& x, int64_t seed, bool inverse) {
  constexpr const char* op = "kvcore.hadamard_rotate";
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension (the last one rotates)");
  RotateArgs a;
  a.dtype = to_kv_dtype(x.scalar_type(), op, "x");
  const int64_t D = x.size(-1);
  TORCH_CHECK(D >= 2 && D <= 1024 && (D & (D - 1)) == 0, op,
              ": the last dimension of x must be a power of two between 2 and 1024, got ", D);
  TORCH_CHECK(seed >= 0, op, ": seed must be >= 0, got ", seed);
  check_contiguous(x, op, "x");
  a.D = (int)D;
  a.rows = D > 0 ? x.numel() / D : 0;
  a.seed = (uint64_t)seed;
  a.inverse = inverse;
  a.norm = 1.0f / std::sqrt((float)D);
  return a;
}

}  // namespace kvcore
