// CUDA implementation of kvcore::decode_attention: checks, output and scratch
// allocation (through torch's caching allocator, so CUDA-graph capture works), and
// the launches on the current stream. No host synchronisation.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <utility>

#include "cuda_device.h"
#include "decode_attention_args.h"

namespace kvcore {
namespace {

void check_aligned16(const at::Tensor& t, const char* arg) {
  TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, "kvcore.decode_attention: ", arg,
              " must be 16-byte aligned on CUDA (it is a view at an odd offset); pass ", arg, ".clone()");
}

std::tuple<at::Tensor, at::Tensor> decode_attention_cuda_op(
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
  DecodeArgs a = check_decode_args(q, k_codes, k_scale, k_mn, v_codes, v_scale, v_mn, k_resid, v_resid, packed_len,
                                   resid_len, bits, group_size, sm_scale, k_sink, v_sink, sink_len, v_group_size);
  const bool corrections = check_decode_corrections(q, k_outlier_idx, k_outlier_res, v_outlier_idx, v_outlier_res,
                                                    k_lowrank_a, k_lowrank_b, v_lowrank_a, v_lowrank_b, a);
  check_decode_mass(q, attn_mass, a);  // the logits it needs live in the workspace
  TORCH_CHECK(a.group <= a.v_group, "kvcore.decode_attention: the CUDA kernel needs group_size <= v_group_size, got ",
              a.group, " and ", a.v_group, " (the CPU kernel takes any pair)");
  if (corrections) {  // streamed with 16-byte asynchronous copies as well
    const std::pair<const std::optional<at::Tensor>*, const char*> parts[] = {
        {&k_outlier_idx, "k_outlier_idx"}, {&k_outlier_res, "k_outlier_res"}, {&v_outlier_idx, "v_outlier_idx"},
        {&v_outlier_res, "v_outlier_res"}, {&k_lowrank_a, "k_lowrank_a"},     {&k_lowrank_b, "k_lowrank_b"},
        {&v_lowrank_a, "v_lowrank_a"},     {&v_lowrank_b, "v_lowrank_b"}};
    for (const auto& [t, name] : parts)
      if (t->has_value()) check_aligned16(**t, name);
  }
  // The packed operands are streamed with 16-byte asynchronous copies.
  check_aligned16(k_codes, "k_codes");
  check_aligned16(v_codes, "v_codes");
  check_aligned16(k_scale, "k_scale");
  check_aligned16(k_mn, "k_mn");
  check_aligned16(v_scale, "v_scale");
  check_aligned16(v_mn, "v_mn");
  // So are the full-precision rows (the residual window and sinks, into shared memory).
  check_aligned16(k_resid, "k_resid");
  check_aligned16(v_resid, "v_resid");
  if (k_sink.has_value()) check_aligned16(*k_sink, "k_sink");
  if (v_sink.has_value()) check_aligned16(*v_sink, "v_sink");
  if (const char* why = decode_attention_cuda_slow_outliers(a))  // no silent slow path
    TORCH_WARN_ONCE("kvcore.decode_attention: ", why, " (k_outliers=", a.k_outliers, ", v_outliers=", a.v_outliers,
                    ") take the general corrections kernel, ~0.3-0.6x of the plain kernel's speed; the fast "
                    "outlier kernel serves up to 2 outliers a token in keys and in values, GQA groups of up to 4 "
                    "query heads, without low-rank terms or attn_mass");
  const c10::cuda::CUDAGuard guard(q.device());
  auto outs = alloc_decode_outputs(q, a);
  const int sms = sm_count(q.get_device(), "kvcore.decode_attention");
  const size_t ws_bytes = decode_attention_cuda_workspace(a, sms);
  auto ws = at::empty({(int64_t)ws_bytes}, q.options().dtype(at::kByte));
  const cudaError_t err = decode_attention_cuda(a, ws.data_ptr(), sms, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "kvcore.decode_attention: CUDA launch failed: ", cudaGetErrorString(err));
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(kvcore, CUDA, m) { m.impl("decode_attention", &decode_attention_cuda_op); }

}  // namespace kvcore
