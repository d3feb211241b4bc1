// Validation and output allocation for the eviction primitives (lsh_signature,
// hamming_scores, topk_select, compact_kv), shared by the CPU and CUDA glue so both
// reject bad input the same way.
#pragma once
#include <ATen/core/Tensor.h>

#include <tuple>

#include "../kernels/eviction.h"

namespace kvcore {

LshArgs check_lsh_args(const at::Tensor& x, int64_t nbits, int64_t seed);
HammingArgs check_hamming_args(const at::Tensor& q_sig, const at::Tensor& k_sig, const at::Tensor& lengths);
TopkArgs check_topk_args(const at::Tensor& scores, int64_t k, const at::Tensor& lengths);
CompactArgs check_compact_args(const at::Tensor& x, const at::Tensor& idx, const at::Tensor& count);
// Raises the error for an invalid (idx, count) row `bad`; does nothing when bad < 0.
void check_compact_rows(const CompactArgs& a, int64_t bad);

// Allocate the outputs on the inputs' device (call under the device guard) and point the
// args at the inputs and outputs.
at::Tensor alloc_lsh_signature(const at::Tensor& x, LshArgs& a);  // [..., nbits/32] int32
at::Tensor alloc_hamming_scores(const at::Tensor& q_sig, const at::Tensor& k_sig, const at::Tensor& lengths,
                                HammingArgs& a);  // [B, Hkv, T] int32
std::tuple<at::Tensor, at::Tensor> alloc_topk_select(const at::Tensor& scores, const at::Tensor& lengths,
                                                     TopkArgs& a);  // (idx [R, k], count [R]) int32

}  // namespace kvcore
