#include "lowrank_args.h"
#include <ATen/ATen.h>
#include "tensor_checks.h"

namespace kvcore {

LowRankArgs check_lowrank_args(const at::Tensor& residual, int64_t rank, int64_t group_size, int64_t iters,
                               int64_t seed) {
  constexpr const char* op = "kvcore.lowrank_error";
  TORCH_CHECK(residual.dim() >= 2, op, ": residual must have shape [..., T, D], got ", residual.dim(),
              " dimension(s)");
  LowRankArgs a;
  a.dtype = to_kv_dtype(residual.scalar_type(), op, "residual");
  TORCH_CHECK(rank >= 1 && rank <= 8, op, ": rank must be between 1 and 8, got ", rank);
  TORCH_CHECK(group_size == 32 || group_size == 64 || group_size == 128, op,
              ": group_size must be 32, 64 or 128, got ", group_size);
  TORCH_CHECK(iters >= 0 && iters <= 16, op, ": iters must be between 0 and 16, got ", iters);
  TORCH_CHECK(seed >= 0, op, ": seed must be >= 0, got ", seed);
  const int64_t T = residual.size(-2), D = residual.size(-1);
  TORCH_CHECK(T % group_size == 0, op, ": T (residual.shape[-2]) must be a multiple of group_size (", group_size,
              "), got ", T);
  TORCH_CHECK(D >= rank && D <= 1024, op, ": D (residual.shape[-1]) must be between rank and 1024, got ", D);
  check_contiguous(residual, op, "residual");
  a.T = T;
  a.D = (int)D;
  a.outer = T * D > 0 ? residual.numel() / (T * D) : 0;
  a.group = (int)group_size;
  a.rank = (int)rank;
  a.iters = (int)iters;
  a.seed = (uint64_t)seed;
  return a;
}

std::tuple<at::Tensor, at::Tensor> alloc_lowrank_outputs(const at::Tensor& residual, LowRankArgs& args) {
  auto lead = residual.sizes().vec();
  lead.pop_back();
  lead.pop_back();
  auto a_shape = lead, b_shape = lead;
  a_shape.insert(a_shape.end(), {args.T / args.group, args.group, args.rank});
  b_shape.insert(b_shape.end(), {args.T / args.group, args.D, args.rank});
  auto opts = residual.options().dtype(at::kHalf);
  at::Tensor a = at::empty(a_shape, opts), b = at::empty(b_shape, opts);
  args.residual = residual.data_ptr();
  args.a = reinterpret_cast<uint16_t*>(a.data_ptr());
  args.b = reinterpret_cast<uint16_t*>(b.data_ptr());
  return {a, b};
}

}  // namespace kvcore
