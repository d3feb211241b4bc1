// Validation for the eviction primitives (lsh_signature, hamming_scores, topk_select),
// shared by the CPU (and later CUDA) glue so both reject bad input the same way.
#pragma once
#include <ATen/core/Tensor.h>
#include "../kernels/eviction.h"

namespace kvcore {

LshArgs check_lsh_args(const at::Tensor& x, int64_t nbits, int64_t seed);
HammingArgs check_hamming_args(const at::Tensor& q_sig, const at::Tensor& k_sig, const at::Tensor& lengths);
TopkArgs check_topk_args(const at::Tensor& scores, int64_t k, const at::Tensor& lengths);
CompactArgs check_compact_args(const at::Tensor& x, const at::Tensor& idx, const at::Tensor& count);
// Raises the error for an invalid (idx, count) row `bad`; does nothing when bad < 0.
void check_compact_rows(const CompactArgs& a, int64_t bad);

}  // namespace kvcore
