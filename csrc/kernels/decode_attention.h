// Torch-free entry points of the fused decode-attention kernels (CPU and CUDA).
//
// One new query token per sequence attends to that sequence's whole cache:
//   sinks    [0, sink_len[b])   full precision  k_sink/v_sink   [B, Hkv, s_cap, D]
//   packed   [0, packed_len[b]) b-bit codes     keys per channel, values per token
//   residual [0, resid_len[b])  full precision  k_resid/v_resid [B, Hkv, r_cap, D]
// Softmax is over the union (order does not matter). Query head h reads KV head
// h / (Hq / Hkv). Lengths live on the device and are clamped to the capacities
// in the kernels (no host synchronisation); packed_len is rounded down to a
// multiple of `group` (only sealed blocks are packed).
#pragma once
#include <cstddef>
#include <cstdint>
#include "kvcore/host_device.h"
#include "kvcore/quant_format.h"

#if defined(KVCORE_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

namespace kvcore {

struct DecodeArgs {
  int B = 0, Hq = 0, Hkv = 0, D = 0;
  int bits = 2;
  int group = 64;    // keys: tokens per block (per-channel groups); also the low-rank block
  int v_group = 64;  // values: channels per group (per-token groups)
  int64_t t_cap = 0;  // packed capacity in tokens (multiple of group)
  int64_t r_cap = 0;  // residual capacity in tokens
  int64_t s_cap = 0;  // sink capacity in tokens (0: no sinks)
  DType dtype = DType::F16;  // of q, out, residual, sinks and all (scale, min) metadata: F16 or BF16
  float sm_scale = 0.0f;     // softmax scale applied to q.k

  const void* q = nullptr;            // [B, Hq, D]
  const uint8_t* k_codes = nullptr;   // [B, Hkv, t_cap, D*bits/8]   (quantize_kv axis="channel")
  const void* k_scale = nullptr;      // [B, Hkv, t_cap/group, D]
  const void* k_mn = nullptr;         // [B, Hkv, t_cap/group, D]
  const uint8_t* v_codes = nullptr;   // [B, Hkv, t_cap, D*bits/8]   (quantize_kv axis="token")
  const void* v_scale = nullptr;      // [B, Hkv, t_cap, D/v_group]
  const void* v_mn = nullptr;         // [B, Hkv, t_cap, D/v_group]
  const void* k_resid = nullptr;      // [B, Hkv, r_cap, D]
  const void* v_resid = nullptr;      // [B, Hkv, r_cap, D]
  const void* k_sink = nullptr;       // [B, Hkv, s_cap, D] or null
  const void* v_sink = nullptr;       // [B, Hkv, s_cap, D] or null
  const int32_t* packed_len = nullptr;  // [B]
  const int32_t* resid_len = nullptr;   // [B]
  const int32_t* sink_len = nullptr;    // [B] or null (no sinks)

  // Optional corrections of the packed tokens (issue 4). A packed key/value is
  //   dequant(codes) + sum_j res_j e_{idx_j} + (A B^T)[t]   for its block:
  // outliers: per token `*_outliers` (channel index uint8, residual in dtype) pairs, an
  // index >= D is ignored; low rank: per block A [group, rank] and B [D, rank] in fp16.
  int k_outliers = 0, v_outliers = 0;  // per token (0: none)
  const uint8_t* k_out_idx = nullptr;  // [B, Hkv, t_cap, k_outliers]
  const void* k_out_res = nullptr;     // [B, Hkv, t_cap, k_outliers] in dtype
  const uint8_t* v_out_idx = nullptr;
  const void* v_out_res = nullptr;
  int k_rank = 0, v_rank = 0;           // 0: none
  const uint16_t* k_lr_a = nullptr;     // [B, Hkv, t_cap/group, group, k_rank] fp16 bits
  const uint16_t* k_lr_b = nullptr;     // [B, Hkv, t_cap/group, D, k_rank] fp16 bits
  const uint16_t* v_lr_a = nullptr;
  const uint16_t* v_lr_b = nullptr;

  void* out = nullptr;   // [B, Hq, D] in dtype
  float* lse = nullptr;  // [B, Hq] natural-log sum of exp of the scaled scores (-inf if no token)

  // Optional H2O attention mass. attn_mass [B, Hkv, s_cap + t_cap + r_cap] float32 (columns:
  // sinks, packed tokens, residual window) gets += each valid token's softmax probability
  // summed over the query heads of its KV head. The attention kernels write every valid
  // token's scaled score to `logits` [B, Hq, s_cap + t_cap + r_cap] (natural-log units on
  // the CPU, base 2 on CUDA; other columns are left as they are), then attention_mass_*
  // turns them into probabilities with the final lse: no second pass over the cache.
  float* attn_mass = nullptr;
  float* logits = nullptr;
  KV_HD int64_t mass_cols() const { return s_cap + t_cap + r_cap; }

  // Profiling only: with the CUDA kernels built with KVCORE_DECODE_TIMELINE (cmake
  // -DKVCORE_DECODE_TIMELINE=ON) each CTA writes %globaltimer stamps here, 8 words a
  // record (see decode_common.cuh); ignored otherwise. kvcore_bench_decode --timeline.
  unsigned long long* timeline = nullptr;
};

// CPU: units [begin, end) of decode_attention_cpu_units(a): one KV head of one sequence
// with up to 8 of its query heads (each cached token is read once for all of them).
int64_t decode_attention_cpu_units(const DecodeArgs& a);
void decode_attention_cpu(const DecodeArgs& a, int64_t begin, int64_t end);
// CPU, after decode_attention_cpu: attn_mass += probabilities from logits and lse, for
// rows [begin, end) of B*Hkv.
void attention_mass_cpu(const DecodeArgs& a, int64_t begin, int64_t end);

#if defined(KVCORE_WITH_CUDA) || defined(__CUDACC__)
// Bytes of device scratch that decode_attention_cuda needs for these shapes.
size_t decode_attention_cuda_workspace(const DecodeArgs& a, int num_sms);
// Enqueues the split kernels and the merge (and, with attn_mass, the mass kernel, whose
// logits live in the workspace) on `stream`. No host synchronisation.
cudaError_t decode_attention_cuda(const DecodeArgs& a, void* workspace, int num_sms, cudaStream_t stream);
// Why sparse outliers in `a` cannot take the fast outlier kernel (a short phrase), or
// nullptr where they can or where none are given. The general corrections kernel then
// serves them at ~0.3-0.6x of the plain kernel's speed (bench/PERF-NOTES.md, sessions
// 21-22), so the glue says so once.
const char* decode_attention_cuda_slow_outliers(const DecodeArgs& a);
#endif

}  // namespace kvcore
