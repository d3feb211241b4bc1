// Small helpers that turn torch tensors into kernel arguments with clear errors.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <string>
#include "kvcore/quant_format.h"

namespace kvcore {

inline DType to_kv_dtype(c10::ScalarType t, const char* op, const char* arg) {
  switch (t) {
    case c10::ScalarType::Float: return DType::F32;
    case c10::ScalarType::Half: return DType::F16;
    case c10::ScalarType::BFloat16: return DType::BF16;
    default:
      TORCH_CHECK(false, op, ": ", arg, " must be float16, bfloat16 or float32, got ", t);
  }
  return DType::F16;
}

inline Axis parse_axis(c10::string_view axis, const char* op) {
  if (axis == "token") return Axis::Token;
  if (axis == "channel") return Axis::Channel;
  TORCH_CHECK(false, op, ": axis must be \"token\" or \"channel\", got \"", std::string(axis), "\"");
  return Axis::Token;
}

inline void check_bits_group(int64_t bits, int64_t group, const char* op) {
  TORCH_CHECK(bits == 2 || bits == 4 || bits == 8, op, ": bits must be 2, 4 or 8, got ", bits);
  TORCH_CHECK(group == 32 || group == 64 || group == 128, op,
              ": group_size must be 32, 64 or 128, got ", group);
}

inline void check_contiguous(const at::Tensor& t, const char* op, const char* arg) {
  TORCH_CHECK(t.is_contiguous(), op, ": ", arg, " must be contiguous (got shape ", t.sizes(),
              " with strides ", t.strides(), "); call .contiguous() first");
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op,
                              const char* arg, const char* ref_arg) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", arg, " is on ", t.device(), " but ", ref_arg,
              " is on ", ref.device(), "; all tensors must be on one device");
}

}  // namespace kvcore
