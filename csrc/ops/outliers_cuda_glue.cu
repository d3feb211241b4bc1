// CUDA implementation of kvcore::extract_outliers: checks, allocation, and the launch on
// the current stream. No host synchronisation.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include "outliers_args.h"

namespace kvcore {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> extract_outliers_cuda_op(const at::Tensor& x, int64_t count,
                                                                        int64_t group_size, c10::string_view axis) {
  OutlierArgs a = check_outlier_args(x, count, group_size, axis);
  const c10::cuda::CUDAGuard guard(x.device());
  auto outs = alloc_outlier_outputs(x, a);
  const cudaError_t err = extract_outliers_cuda(a, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "kvcore.extract_outliers: CUDA launch failed: ", cudaGetErrorString(err));
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(kvcore, CUDA, m) { m.impl("extract_outliers", &extract_outliers_cuda_op); }

}  // namespace kvcore
