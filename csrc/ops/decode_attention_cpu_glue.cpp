// CPU implementation of kvcore::decode_attention: checks, allocation, and the
// (sequence, KV head, query heads) units spread over at::parallel_for.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>
#include "decode_attention_args.h"

namespace kvcore {
namespace {

std::tuple<at::Tensor, at::Tensor> decode_attention_cpu_op(
    const at::Tensor& q, const at::Tensor& k_codes, const at::Tensor& k_scale, const at::Tensor& k_mn,
    const at::Tensor& v_codes, const at::Tensor& v_scale, const at::Tensor& v_mn, const at::Tensor& k_resid,
    const at::Tensor& v_resid, const at::Tensor& packed_len, const at::Tensor& resid_len, int64_t bits,
    int64_t group_size, std::optional<double> sm_scale, const std::optional<at::Tensor>& k_sink,
    const std::optional<at::Tensor>& v_sink, const std::optional<at::Tensor>& sink_len,
    const std::optional<at::Tensor>& k_outlier_idx, const std::optional<at::Tensor>& k_outlier_res,
    const std::optional<at::Tensor>& v_outlier_idx, const std::optional<at::Tensor>& v_outlier_res,
    const std::optional<at::Tensor>& k_lowrank_a, const std::optional<at::Tensor>& k_lowrank_b,
    const std::optional<at::Tensor>& v_lowrank_a, const std::optional<at::Tensor>& v_lowrank_b,
    std::optional<int64_t> v_group_size, const std::optional<at::Tensor>& attn_mass) {
  DecodeArgs a = check_decode_args(q, k_codes, k_scale, k_mn, v_codes, v_scale, v_mn, k_resid, v_resid,
                                   packed_len, resid_len, bits, group_size, sm_scale, k_sink, v_sink, sink_len, v_group_size);
  check_decode_corrections(q, k_outlier_idx, k_outlier_res, v_outlier_idx, v_outlier_res, k_lowrank_a, k_lowrank_b,
                           v_lowrank_a, v_lowrank_b, a);
  const bool mass = check_decode_mass(q, attn_mass, a);
  auto outs = alloc_decode_outputs(q, a);
  at::Tensor logits;
  if (mass) {
    logits = at::empty({a.B, a.Hq, a.mass_cols()}, q.options().dtype(at::kFloat));
    a.logits = logits.data_ptr<float>();
  }
  // A unit reads a whole sequence for up to 8 query heads: one per task is plenty of work.
  at::parallel_for(0, decode_attention_cpu_units(a), 1, [&](int64_t b, int64_t e) { decode_attention_cpu(a, b, e); });
  // The query heads of a KV head add to one mass row: rows go to tasks, heads in order.
  if (mass) at::parallel_for(0, (int64_t)a.B * a.Hkv, 1, [&](int64_t b, int64_t e) { attention_mass_cpu(a, b, e); });
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(kvcore, CPU, m) { m.impl("decode_attention", &decode_attention_cpu_op); }

}  // namespace kvcore
