// CPU implementation of kvcore::extract_outliers.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include "outliers_args.h"

namespace kvcore {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> extract_outliers_cpu_op(const at::Tensor& x, int64_t count,
                                                                       int64_t group_size, c10::string_view axis) {
  OutlierArgs a = check_outlier_args(x, count, group_size, axis);
  auto outs = alloc_outlier_outputs(x, a);
  at::parallel_for(0, extract_outliers_cpu_units(a), 4,
                   [&](int64_t b, int64_t e) { extract_outliers_cpu(a, b, e); });
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(kvcore, CPU, m) { m.impl("extract_outliers", &extract_outliers_cpu_op); }

}  // namespace kvcore
