// Validation and output allocation for decode_attention, shared by the CPU and
// CUDA glue so both reject bad input with the same messages.
#pragma once
#include <ATen/core/Tensor.h>
#include <optional>
#include <tuple>
#include "../kernels/decode_attention.h"

namespace kvcore {

// Checks every input (dtypes, shapes, devices, contiguity, bits/group_size, the
// sink triple) and fills all fields of DecodeArgs, input pointers included; out
// and lse stay null (see alloc_decode_outputs). Lengths are device data and are
// not compared with the capacities here (the kernels clamp them).
DecodeArgs check_decode_args(const at::Tensor& q, const at::Tensor& k_codes, const at::Tensor& k_scale,
                             const at::Tensor& k_mn, const at::Tensor& v_codes, const at::Tensor& v_scale,
                             const at::Tensor& v_mn, const at::Tensor& k_resid, const at::Tensor& v_resid,
                             const at::Tensor& packed_len, const at::Tensor& resid_len, int64_t bits,
                             int64_t group_size, std::optional<double> sm_scale,
                             const std::optional<at::Tensor>& k_sink, const std::optional<at::Tensor>& v_sink,
                             const std::optional<at::Tensor>& sink_len, std::optional<int64_t> v_group_size);

// Checks the optional corrections (outliers, low rank; each a pair given together)
// against the cache that check_decode_args accepted, and points `a` at them.
// Returns whether any was given.
bool check_decode_corrections(const at::Tensor& q, const std::optional<at::Tensor>& k_outlier_idx,
                              const std::optional<at::Tensor>& k_outlier_res,
                              const std::optional<at::Tensor>& v_outlier_idx,
                              const std::optional<at::Tensor>& v_outlier_res,
                              const std::optional<at::Tensor>& k_lowrank_a, const std::optional<at::Tensor>& k_lowrank_b,
                              const std::optional<at::Tensor>& v_lowrank_a, const std::optional<at::Tensor>& v_lowrank_b,
                              DecodeArgs& a);

// Checks the optional H2O attention-mass output (float32 [B, Hkv, S_cap + T_cap + R_cap],
// contiguous, on q's device) and points a.attn_mass at it. Returns whether it was given.
bool check_decode_mass(const at::Tensor& q, const std::optional<at::Tensor>& attn_mass, DecodeArgs& a);

// Allocates out [B, Hq, D] (q's dtype and device) and lse [B, Hq] (float32) and
// points a.out / a.lse at them. Returns (out, lse).
std::tuple<at::Tensor, at::Tensor> alloc_decode_outputs(const at::Tensor& q, DecodeArgs& a);

}  // namespace kvcore
