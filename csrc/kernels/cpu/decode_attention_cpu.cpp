// CPU decode attention (semantics in decode_attention.h). One unit is one KV head of
// one sequence with up to kHeads of its query heads: each cached token is loaded and
// unpacked once for all of them (per query head it was unpacked Hq/Hkv times), then
// per head: float32 scores over the sinks, the sealed packed blocks and the residual
// tokens, a stable softmax, and one pass over the values. Each head's arithmetic is
// the same, in the same order, as with one head a unit. Templated on dtype, bits and
// head_dim so the inner loops have fixed trip counts.
#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>
#include "../decode_attention.h"

namespace kvcore {
namespace {

template <int KIND>
using Bits = typename Storage<KIND>::bits_t;

// Full-precision tokens are summed in chunks of this many: partial sums keep the
// float32 rounding error of long sums small (packed tokens use their blocks).
constexpr int64_t kChunk = 64;
constexpr int kHeads = 8;  // query heads of one KV head per unit (more: several units)

// Token counts of one sequence once its device lengths are clamped to the capacities.
struct SeqLens {
  int64_t sink = 0, packed = 0, resid = 0;
  int64_t total() const { return sink + packed + resid; }
};

int64_t clamp_len(const int32_t* len, int b, int64_t cap) {
  if (len == nullptr) return 0;
  return std::min<int64_t>(std::max<int64_t>(len[b], 0), cap);
}

SeqLens seq_lens(const DecodeArgs& a, int b) {
  SeqLens n;
  n.sink = clamp_len(a.sink_len, b, a.s_cap);
  const int64_t packed = clamp_len(a.packed_len, b, a.t_cap);
  n.packed = packed - packed % a.group;  // only sealed blocks count
  n.resid = clamp_len(a.resid_len, b, a.r_cap);
  return n;
}

uint32_t load_le32(const uint8_t* p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

// The D codes of one packed token (D*BITS/8 bytes), as floats in channel order.
template <int BITS, int D>
void unpack_row(const uint8_t* row, float* codes) {
  constexpr int kPerWord = 32 / BITS;
  constexpr uint32_t kMask = (1u << BITS) - 1u;
  for (int w = 0; w < D / kPerWord; ++w) {
    const uint32_t word = load_le32(row + 4 * w);
    for (int j = 0; j < kPerWord; ++j)
      codes[w * kPerWord + j] = (float)((word >> code_bit_offset(j, BITS)) & kMask);
  }
}

// Row `row` of a [*, D] tensor of storage KIND, as floats.
template <int KIND, int D>
void load_row(const void* base, int64_t row, float* out) {
  const Bits<KIND>* p = static_cast<const Bits<KIND>*>(base) + row * D;
  for (int d = 0; d < D; ++d) out[d] = Storage<KIND>::load(p[d]);
}

// Dot product with 8 independent partial sums (short dependency chains, vectorisable).
template <int D>
float dot(const float* x, const float* y) {
  float part[8] = {};
  for (int d = 0; d < D; d += 8)
    for (int j = 0; j < 8; ++j) part[j] += x[d + j] * y[d + j];
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

// Query heads of one unit: q[h] (D floats each) and each head's scores s[h] (stride ls).
struct Heads {
  int n = 0;
  const float* q = nullptr;  // [n][D]
  float* s = nullptr;        // s + h * ls: head h's scores of this part
  int64_t ls = 0;
};

// s[h][t] = sm_scale * q[h].k[row0 + t] for n full-precision keys.
template <int KIND, int D>
void full_scores(const void* k, int64_t row0, int64_t n, const Heads& hs, float sm_scale) {
  float kt[D];
  for (int64_t t = 0; t < n; ++t) {
    load_row<KIND, D>(k, row0 + t, kt);
    for (int h = 0; h < hs.n; ++h) hs.s[h * hs.ls + t] = sm_scale * dot<D>(hs.q + h * D, kt);
  }
}

// Sum over token t's outliers of f(channel, residual); indices >= D are ignored.
template <int KIND, int D, typename F>
void for_each_outlier(const uint8_t* idx, const void* res, int count, int64_t row, F&& f) {
  const auto* r = static_cast<const Bits<KIND>*>(res) + row * count;
  for (int j = 0; j < count; ++j) {
    const int d = idx[row * count + j];
    if (d < D) f(d, Storage<KIND>::load(r[j]));
  }
}

// Scores of the first n packed keys (n a multiple of group) of KV row kv. Within a
// block k[t][d] = code*scale[d] + mn[d], so q.k = sum_d code_d*(q_d*scale_d) + q.mn:
// the block's scale is folded into q and q.mn computed once per block. Corrections:
// an outlier adds q[idx] * res; the low-rank term adds sum_r A[t][r] (q.B[:, r]).
template <int KIND, int BITS, int D>
void packed_scores(const DecodeArgs& a, int64_t kv, int64_t n, const Heads& hs) {
  constexpr int64_t kRowBytes = D * BITS / 8;
  const int64_t G = a.group, blocks_cap = a.t_cap / G;
  const int R = a.k_rank;
  float scale[D], mn[D], codes[D], q_scale[kHeads][D], q_mn[kHeads], qb[kHeads][8];
  for (int64_t blk = 0; blk < n / G; ++blk) {
    const int64_t block_row = kv * blocks_cap + blk;
    load_row<KIND, D>(a.k_scale, block_row, scale);
    load_row<KIND, D>(a.k_mn, block_row, mn);
    for (int h = 0; h < hs.n; ++h) {
      const float* q = hs.q + h * D;
      for (int d = 0; d < D; ++d) q_scale[h][d] = scale[d] * q[d];
      q_mn[h] = dot<D>(q, mn);
      for (int r = 0; r < R; ++r) {
        qb[h][r] = 0.0f;
        for (int d = 0; d < D; ++d) qb[h][r] += q[d] * half_bits_to_float(a.k_lr_b[(block_row * D + d) * R + r]);
      }
    }
    for (int64_t t = blk * G; t < (blk + 1) * G; ++t) {
      const int64_t row = kv * a.t_cap + t;
      unpack_row<BITS, D>(a.k_codes + row * kRowBytes, codes);
      for (int h = 0; h < hs.n; ++h) {
        const float* q = hs.q + h * D;
        float dot_k = dot<D>(codes, q_scale[h]) + q_mn[h];
        if (a.k_outliers)
          for_each_outlier<KIND, D>(a.k_out_idx, a.k_out_res, a.k_outliers, row,
                                    [&](int d, float res) { dot_k += q[d] * res; });
        for (int r = 0; r < R; ++r)
          dot_k += half_bits_to_float(a.k_lr_a[(block_row * G + (t - blk * G)) * R + r]) * qb[h][r];
        hs.s[h * hs.ls + t] = a.sm_scale * dot_k;
      }
    }
  }
}

struct SoftmaxStats {
  float max, sum;
};

// Replaces the n scores by exp(s - max) and returns max and the sum of the exps.
SoftmaxStats softmax_weights(float* s, int64_t n) {
  const float mx = *std::max_element(s, s + n);
  float sum = 0.0f;
  for (int64_t t0 = 0; t0 < n; t0 += kChunk) {
    float part = 0.0f;
    for (int64_t t = t0; t < std::min(t0 + kChunk, n); ++t) {
      s[t] = std::exp(s[t] - mx);
      part += s[t];
    }
    sum += part;
  }
  return {mx, sum};
}

// acc[h] += sum_t p[h][t] * v[row0 + t] over n full-precision values (p[h] = hs.s + h * hs.ls).
template <int KIND, int D>
void add_full_values(const void* v, int64_t row0, int64_t n, const Heads& hs, float (*acc)[D]) {
  float vt[D], part[kHeads][D];
  for (int64_t t0 = 0; t0 < n; t0 += kChunk) {
    for (int h = 0; h < hs.n; ++h) std::fill(part[h], part[h] + D, 0.0f);
    for (int64_t t = t0; t < std::min(t0 + kChunk, n); ++t) {
      load_row<KIND, D>(v, row0 + t, vt);
      for (int h = 0; h < hs.n; ++h) {
        const float p = hs.s[h * hs.ls + t];
        for (int d = 0; d < D; ++d) part[h][d] += p * vt[d];
      }
    }
    for (int h = 0; h < hs.n; ++h)
      for (int d = 0; d < D; ++d) acc[h][d] += part[h][d];
  }
}

// acc += sum_t p[t] * v[t] over the first n packed values of KV row kv, one sealed
// block at a time. v[t][d] = code*scale_g + mn_g for the channel group g of d, so
// the p-weighted mins are summed per group and added once per block. Corrections:
// an outlier adds p[t] * res at its channel; the low-rank term adds
// sum_r (sum_t p[t] A[t][r]) B[:, r] once per block.
template <int KIND, int BITS, int D>
void add_packed_values(const DecodeArgs& a, int64_t kv, int64_t n, const Heads& hs, float (*acc)[D]) {
  constexpr int64_t kRowBytes = D * BITS / 8;
  constexpr int kMaxGroups = D / 32;
  const int G = a.group, VG = a.v_group, groups = D / VG, R = a.v_rank;  // G: token blocks, VG: channel groups
  const int64_t blocks_cap = a.t_cap / G;
  const auto* scale = static_cast<const Bits<KIND>*>(a.v_scale);
  const auto* mn = static_cast<const Bits<KIND>*>(a.v_mn);
  float codes[D], part[kHeads][D], part_mn[kHeads][kMaxGroups], w[kHeads][8], g_scale[kMaxGroups], g_mn[kMaxGroups];
  for (int64_t t0 = 0; t0 < n; t0 += G) {
    for (int h = 0; h < hs.n; ++h) {
      std::fill(part[h], part[h] + D, 0.0f);
      std::fill(part_mn[h], part_mn[h] + groups, 0.0f);
      std::fill(w[h], w[h] + 8, 0.0f);
    }
    const int64_t block_row = kv * blocks_cap + t0 / G;
    for (int64_t t = t0; t < t0 + G; ++t) {
      const int64_t row = kv * a.t_cap + t;
      unpack_row<BITS, D>(a.v_codes + row * kRowBytes, codes);
      for (int g = 0; g < groups; ++g) {
        g_scale[g] = Storage<KIND>::load(scale[row * groups + g]);
        g_mn[g] = Storage<KIND>::load(mn[row * groups + g]);
      }
      for (int h = 0; h < hs.n; ++h) {
        const float p = hs.s[h * hs.ls + t];
        for (int g = 0; g < groups; ++g) {
          const float p_scale = p * g_scale[g];
          part_mn[h][g] += p * g_mn[g];
          for (int d = g * VG; d < (g + 1) * VG; ++d) part[h][d] += codes[d] * p_scale;
        }
        if (a.v_outliers)
          for_each_outlier<KIND, D>(a.v_out_idx, a.v_out_res, a.v_outliers, row,
                                    [&](int d, float res) { part[h][d] += p * res; });
        for (int r = 0; r < R; ++r) w[h][r] += p * half_bits_to_float(a.v_lr_a[(block_row * G + (t - t0)) * R + r]);
      }
    }
    for (int h = 0; h < hs.n; ++h) {
      for (int r = 0; r < R; ++r)
        for (int d = 0; d < D; ++d) part[h][d] += w[h][r] * half_bits_to_float(a.v_lr_b[(block_row * D + d) * R + r]);
      for (int g = 0; g < groups; ++g)
        for (int d = g * VG; d < (g + 1) * VG; ++d) acc[h][d] += part[h][d] + part_mn[h][g];
    }
  }
}

template <int KIND, int D>
void write_empty(const DecodeArgs& a, int64_t u) {
  auto* out = static_cast<Bits<KIND>*>(a.out) + u * D;
  std::fill(out, out + D, Storage<KIND>::store(0.0f));
  a.lse[u] = -INFINITY;
}

// Units: (sequence b, KV head, chunk of up to kHeads of its query heads).
int64_t chunks_per_kv(const DecodeArgs& a) { return (a.Hq / a.Hkv + kHeads - 1) / kHeads; }

// One unit; `scores` is scratch reused across units ([heads][total tokens]).
template <int KIND, int BITS, int D>
void decode_unit(const DecodeArgs& a, int64_t unit, std::vector<float>& scores) {
  const int64_t chunks = chunks_per_kv(a), gq = a.Hq / a.Hkv;
  const int64_t kv = unit / chunks;  // row of the [B*Hkv] KV heads
  const int b = (int)(kv / a.Hkv);
  const int64_t h0 = (kv % a.Hkv) * gq + (unit % chunks) * kHeads;  // first query head
  const int nh = (int)std::min<int64_t>(kHeads, (kv % a.Hkv + 1) * gq - h0);
  const int64_t u0 = (int64_t)b * a.Hq + h0;  // its (b, h) row of q, out and lse
  const SeqLens n = seq_lens(a, b);
  if (n.total() == 0) {
    for (int h = 0; h < nh; ++h) write_empty<KIND, D>(a, u0 + h);
    return;
  }

  float q[kHeads][D], acc[kHeads][D];
  for (int h = 0; h < nh; ++h) {
    load_row<KIND, D>(a.q, u0 + h, q[h]);
    std::fill(acc[h], acc[h] + D, 0.0f);
  }
  const int64_t total = n.total();
  scores.resize((size_t)nh * total);
  // head h's scores: sinks at [h*total, ...), then the packed tokens, then the residual
  Heads sink{nh, &q[0][0], scores.data(), total};
  Heads packed{nh, &q[0][0], scores.data() + n.sink, total};
  Heads resid{nh, &q[0][0], scores.data() + n.sink + n.packed, total};
  full_scores<KIND, D>(a.k_sink, kv * a.s_cap, n.sink, sink, a.sm_scale);
  packed_scores<KIND, BITS, D>(a, kv, n.packed, packed);
  full_scores<KIND, D>(a.k_resid, kv * a.r_cap, n.resid, resid, a.sm_scale);
  if (a.logits != nullptr)  // for attention_mass_cpu, before the softmax overwrites them
    for (int h = 0; h < nh; ++h) {
      float* lg = a.logits + (u0 + h) * a.mass_cols();
      const float* s = scores.data() + h * total;
      std::copy(s, s + n.sink, lg);
      std::copy(s + n.sink, s + n.sink + n.packed, lg + a.s_cap);
      std::copy(s + n.sink + n.packed, s + total, lg + a.s_cap + a.t_cap);
    }

  SoftmaxStats st[kHeads];
  for (int h = 0; h < nh; ++h) st[h] = softmax_weights(scores.data() + h * total, total);
  add_full_values<KIND, D>(a.v_sink, kv * a.s_cap, n.sink, sink, acc);
  add_packed_values<KIND, BITS, D>(a, kv, n.packed, packed, acc);
  add_full_values<KIND, D>(a.v_resid, kv * a.r_cap, n.resid, resid, acc);

  for (int h = 0; h < nh; ++h) {
    auto* out = static_cast<Bits<KIND>*>(a.out) + (u0 + h) * D;
    for (int d = 0; d < D; ++d) out[d] = Storage<KIND>::store(acc[h][d] / st[h].sum);
    a.lse[u0 + h] = st[h].max + std::log(st[h].sum);
  }
}

template <int KIND, int BITS, int D>
void decode_units(const DecodeArgs& a, int64_t begin, int64_t end) {
  std::vector<float> scores;
  for (int64_t u = begin; u < end; ++u) decode_unit<KIND, BITS, D>(a, u, scores);
}

// The dispatchers below do nothing for values check_decode_args rejects.
template <int KIND, int BITS>
void dispatch_head_dim(const DecodeArgs& a, int64_t begin, int64_t end) {
  switch (a.D) {
    case 64: return decode_units<KIND, BITS, 64>(a, begin, end);
    case 128: return decode_units<KIND, BITS, 128>(a, begin, end);
    case 256: return decode_units<KIND, BITS, 256>(a, begin, end);
    default: return;
  }
}

template <int KIND>
void dispatch_bits(const DecodeArgs& a, int64_t begin, int64_t end) {
  if (a.bits == 2) return dispatch_head_dim<KIND, 2>(a, begin, end);
  if (a.bits == 4) return dispatch_head_dim<KIND, 4>(a, begin, end);
}

}  // namespace

void attention_mass_cpu(const DecodeArgs& a, int64_t begin, int64_t end) {
  const int gq = a.Hq / a.Hkv;
  const int64_t cols = a.mass_cols();
  for (int64_t row = begin; row < end; ++row) {
    const int b = (int)(row / a.Hkv), kvh = (int)(row % a.Hkv);
    const SeqLens n = seq_lens(a, b);
    float* mass = a.attn_mass + row * cols;
    const std::pair<int64_t, int64_t> ranges[3] = {{0, n.sink}, {a.s_cap, n.packed}, {a.s_cap + a.t_cap, n.resid}};
    for (int h = 0; h < gq; ++h) {
      const int64_t u = (int64_t)b * a.Hq + (int64_t)kvh * gq + h;
      const float* lg = a.logits + u * cols;
      const float lse = a.lse[u];
      for (const auto& [first, count] : ranges)
        for (int64_t t = first; t < first + count; ++t) mass[t] += std::exp(lg[t] - lse);
    }
  }
}

int64_t decode_attention_cpu_units(const DecodeArgs& a) { return (int64_t)a.B * a.Hkv * chunks_per_kv(a); }

void decode_attention_cpu(const DecodeArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case DType::F16: return dispatch_bits<1>(a, begin, end);
    case DType::BF16: return dispatch_bits<2>(a, begin, end);
    default: return;  // float32 is not a decode_attention dtype
  }
}

}  // namespace kvcore
