// CUDA implementations of kvcore::quantize_kv / dequantize_kv: checks, allocation,
// and a launch on the current stream. No host synchronisation.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include "quantize_kv_args.h"

namespace kvcore {
namespace {

// The kernels use 16-byte vector loads/stores of x and 8-byte loads of codes.
void check_aligned(const at::Tensor& t, int64_t bytes, const char* op, const char* arg) {
  TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % bytes == 0, op, ": ", arg, " must be ", bytes,
              "-byte aligned on CUDA (it is a view at an odd offset); pass ", arg, ".clone()");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_kv_cuda_op(const at::Tensor& x, int64_t bits,
                                                                   int64_t group_size,
                                                                   c10::string_view axis) {
  QuantizeArgs a = check_quantize_args(x, bits, group_size, axis);
  check_aligned(x, 16, "kvcore.quantize_kv", "x");
  const c10::cuda::CUDAGuard guard(x.device());
  auto outs = alloc_quantize_outputs(x, a);
  const cudaError_t err = quantize_kv_cuda(a, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "kvcore.quantize_kv: CUDA launch failed: ", cudaGetErrorString(err));
  return outs;
}

at::Tensor dequantize_kv_cuda_op(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& mn,
                                 int64_t bits, int64_t group_size, c10::string_view axis,
                                 std::optional<c10::ScalarType> dtype) {
  DequantizeArgs a = check_dequantize_args(codes, scale, mn, bits, group_size, axis, dtype);
  check_aligned(codes, 8, "kvcore.dequantize_kv", "codes");
  const c10::cuda::CUDAGuard guard(codes.device());
  auto out = alloc_dequantize_output(codes, scale, mn, dtype, a);
  const cudaError_t err = dequantize_kv_cuda(a, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "kvcore.dequantize_kv: CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kvcore, CUDA, m) {
  m.impl("quantize_kv", &quantize_kv_cuda_op);
  m.impl("dequantize_kv", &dequantize_kv_cuda_op);
}

}  // namespace kvcore
