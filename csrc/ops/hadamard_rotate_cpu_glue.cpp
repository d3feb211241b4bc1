// CPU implementation of kvcore::hadamard_rotate.
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>
#include "hadamard_rotate_args.h"

namespace kvcore {
namespace {

at::Tensor hadamard_rotate_cpu_op(const at::Tensor& x, int64_t seed, bool inverse) {
  RotateArgs a = check_rotate_args(x, seed, inverse);
  at::Tensor out = at::empty_like(x);
  a.x = x.data_ptr();
  a.out = out.data_ptr();
  at::parallel_for(0, a.rows, 256, [&](int64_t b, int64_t e) { hadamard_rotate_cpu(a, b, e); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kvcore, CPU, m) { m.impl("hadamard_rotate", &hadamard_rotate_cpu_op); }

}  // namespace kvcore
