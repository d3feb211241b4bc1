#include "decode_attention_args.h"
#include <ATen/ATen.h>
#include <climits>
#include <cmath>
#include <string>
#include <vector>
#include "tensor_checks.h"

namespace kvcore {
namespace {

constexpr const char* kOp = "kvcore.decode_attention";
constexpr int64_t kAny = -1;  // in an expected shape: a size the tensor itself defines

std::string dtype_name(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Half: return "float16";
    case c10::ScalarType::BFloat16: return "bfloat16";
    case c10::ScalarType::Float: return "float32";
    case c10::ScalarType::Byte: return "uint8";
    case c10::ScalarType::Int: return "int32";
    case c10::ScalarType::Long: return "int64";
    case c10::ScalarType::Double: return "float64";
    default: return c10::toString(t);
  }
}

// "[2, 8, *, 128]": an expected shape, with * for the sizes the tensor defines.
std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += shape[i] == kAny ? std::string("*") : std::to_string(shape[i]);
  }
  return s + "]";
}

bool shape_matches(const at::Tensor& t, const std::vector<int64_t>& shape) {
  if (t.dim() != (int64_t)shape.size()) return false;
  for (size_t i = 0; i < shape.size(); ++i)
    if (shape[i] != kAny && t.size((int64_t)i) != shape[i]) return false;
  return true;
}

// Device, dtype, shape and layout of one input; `dims` names the dims of `shape`.
void check_input(const at::Tensor& t, const char* arg, const at::Tensor& q, c10::ScalarType dtype,
                 const std::vector<int64_t>& shape, const char* dims) {
  check_same_device(t, q, kOp, arg, "q");
  TORCH_CHECK(t.scalar_type() == dtype, kOp, ": ", arg, " must be ", dtype_name(dtype),
              dtype == q.scalar_type() ? " (the dtype of q)" : "", ", got ", dtype_name(t.scalar_type()));
  TORCH_CHECK(shape_matches(t, shape), kOp, ": ", arg, " must have shape ", dims, " = ", shape_str(shape),
              ", got ", t.sizes());
  check_contiguous(t, kOp, arg);
}

void check_query(const at::Tensor& q) {
  const auto t = q.scalar_type();
  TORCH_CHECK(t == c10::ScalarType::Half || t == c10::ScalarType::BFloat16, kOp,
              ": q must be float16 or bfloat16, got ", dtype_name(t));
  TORCH_CHECK(q.dim() == 3, kOp, ": q must have shape [B, Hq, D] (one query token per sequence), got ",
              q.sizes());
  check_contiguous(q, kOp, "q");
  const int64_t D = q.size(2);
  TORCH_CHECK(D == 64 || D == 128 || D == 256, kOp, ": head_dim D (q.size(2)) must be 64, 128 or 256, got ",
              D);
  TORCH_CHECK(q.size(0) <= INT_MAX && q.size(1) <= INT_MAX, kOp, ": q has too many sequences or heads (",
              q.sizes(), ")");
}

void check_bits_group(int64_t bits, int64_t group, int64_t v_group, int64_t D) {
  TORCH_CHECK(bits != 8, kOp, ": bits must be 2 or 4, got 8 (8-bit caches are not supported by decode_attention)");
  TORCH_CHECK(bits == 2 || bits == 4, kOp, ": bits must be 2 or 4, got ", bits);
  TORCH_CHECK(group == 32 || group == 64 || group == 128, kOp, ": group_size must be 32, 64 or 128, got ",
              group);
  TORCH_CHECK(v_group == 32 || v_group == 64 || v_group == 128, kOp, ": v_group_size must be 32, 64 or 128, got ",
              v_group);
  TORCH_CHECK(D % v_group == 0, kOp, ": head_dim D=", D, " must be a multiple of the value group size ", v_group,
              " (v_group_size, default group_size)");
}

// k_codes defines Hkv and T_cap; every other cache tensor must agree with it.
void check_packed_cache(const at::Tensor& q, const at::Tensor& k_codes, const at::Tensor& k_scale,
                        const at::Tensor& k_mn, const at::Tensor& v_codes, const at::Tensor& v_scale,
                        const at::Tensor& v_mn, DecodeArgs& a) {
  const auto dt = q.scalar_type();
  const int64_t B = a.B, D = a.D, G = a.group, VG = a.v_group, row_bytes = D * a.bits / 8;
  const char* codes_dims = "[B, Hkv, T_cap, D*bits/8]";
  check_input(k_codes, "k_codes", q, at::kByte, {B, kAny, kAny, row_bytes}, codes_dims);
  const int64_t Hkv = k_codes.size(1), T_cap = k_codes.size(2);
  TORCH_CHECK(Hkv > 0, kOp, ": k_codes must have at least one KV head (k_codes.size(1) is 0)");
  TORCH_CHECK(a.Hq % Hkv == 0, kOp, ": the query heads Hq=", a.Hq, " (q.size(1)) must be a multiple of the KV heads Hkv=",
              Hkv, " (k_codes.size(1))");
  TORCH_CHECK(T_cap % G == 0, kOp, ": the packed capacity T_cap=", T_cap,
              " (k_codes.size(2)) must be a multiple of group_size=", G);
  check_input(v_codes, "v_codes", q, at::kByte, {B, Hkv, T_cap, row_bytes}, codes_dims);
  const char* k_meta_dims = "[B, Hkv, T_cap/group_size, D]";
  check_input(k_scale, "k_scale", q, dt, {B, Hkv, T_cap / G, D}, k_meta_dims);
  check_input(k_mn, "k_mn", q, dt, {B, Hkv, T_cap / G, D}, k_meta_dims);
  const char* v_meta_dims = "[B, Hkv, T_cap, D/v_group_size]";
  check_input(v_scale, "v_scale", q, dt, {B, Hkv, T_cap, D / VG}, v_meta_dims);
  check_input(v_mn, "v_mn", q, dt, {B, Hkv, T_cap, D / VG}, v_meta_dims);
  a.Hkv = (int)Hkv;
  a.t_cap = T_cap;
  a.k_codes = k_codes.data_ptr<uint8_t>();
  a.k_scale = k_scale.data_ptr();
  a.k_mn = k_mn.data_ptr();
  a.v_codes = v_codes.data_ptr<uint8_t>();
  a.v_scale = v_scale.data_ptr();
  a.v_mn = v_mn.data_ptr();
}

// A full-precision (k, v) pair, residual or sinks: [B, Hkv, cap, D]. Returns cap.
int64_t check_full_kv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const char* k_arg,
                      const char* v_arg, const char* dims, const DecodeArgs& a) {
  check_input(k, k_arg, q, q.scalar_type(), {a.B, a.Hkv, kAny, a.D}, dims);
  const int64_t cap = k.size(2);
  check_input(v, v_arg, q, q.scalar_type(), {a.B, a.Hkv, cap, a.D}, dims);
  return cap;
}

void check_lengths(const at::Tensor& q, const at::Tensor& len, const char* arg, const DecodeArgs& a) {
  check_input(len, arg, q, at::kInt, {a.B}, "[B]");
}

void check_sinks(const at::Tensor& q, const std::optional<at::Tensor>& k_sink,
                 const std::optional<at::Tensor>& v_sink, const std::optional<at::Tensor>& sink_len,
                 DecodeArgs& a) {
  const int given = (int)k_sink.has_value() + (int)v_sink.has_value() + (int)sink_len.has_value();
  if (given == 0) return;  // no sinks: s_cap stays 0 and the pointers null
  std::string missing;
  if (!k_sink) missing += " k_sink";
  if (!v_sink) missing += " v_sink";
  if (!sink_len) missing += " sink_len";
  TORCH_CHECK(given == 3, kOp, ": k_sink, v_sink and sink_len must be given together or not at all; missing:",
              missing);
  a.s_cap = check_full_kv(q, *k_sink, *v_sink, "k_sink", "v_sink", "[B, Hkv, S_cap, D]", a);
  check_lengths(q, *sink_len, "sink_len", a);
  a.k_sink = k_sink->data_ptr();
  a.v_sink = v_sink->data_ptr();
  a.sink_len = sink_len->data_ptr<int32_t>();
}

}  // namespace

DecodeArgs check_decode_args(const at::Tensor& q, const at::Tensor& k_codes, const at::Tensor& k_scale,
                             const at::Tensor& k_mn, const at::Tensor& v_codes, const at::Tensor& v_scale,
                             const at::Tensor& v_mn, const at::Tensor& k_resid, const at::Tensor& v_resid,
                             const at::Tensor& packed_len, const at::Tensor& resid_len, int64_t bits,
                             int64_t group_size, std::optional<double> sm_scale,
                             const std::optional<at::Tensor>& k_sink, const std::optional<at::Tensor>& v_sink,
                             const std::optional<at::Tensor>& sink_len, std::optional<int64_t> v_group_size) {
  check_query(q);
  DecodeArgs a;
  a.B = (int)q.size(0);
  a.Hq = (int)q.size(1);
  a.D = (int)q.size(2);
  a.dtype = q.scalar_type() == c10::ScalarType::Half ? DType::F16 : DType::BF16;
  const int64_t v_group = v_group_size.value_or(group_size);
  check_bits_group(bits, group_size, v_group, a.D);
  a.bits = (int)bits;
  a.group = (int)group_size;
  a.v_group = (int)v_group;
  check_packed_cache(q, k_codes, k_scale, k_mn, v_codes, v_scale, v_mn, a);
  a.r_cap = check_full_kv(q, k_resid, v_resid, "k_resid", "v_resid", "[B, Hkv, R_cap, D]", a);
  check_lengths(q, packed_len, "packed_len", a);
  check_lengths(q, resid_len, "resid_len", a);
  check_sinks(q, k_sink, v_sink, sink_len, a);
  const double scale = sm_scale.value_or(1.0 / std::sqrt((double)a.D));
  a.sm_scale = (float)scale;  // the kernels compute in float32
  TORCH_CHECK(std::isfinite(a.sm_scale), kOp, ": sm_scale must be a finite float32 number, got ", scale);
  a.q = q.data_ptr();
  a.k_resid = k_resid.data_ptr();
  a.v_resid = v_resid.data_ptr();
  a.packed_len = packed_len.data_ptr<int32_t>();
  a.resid_len = resid_len.data_ptr<int32_t>();
  return a;
}

namespace {

// One pair of optional tensors given together or not at all.
bool pair_given(const std::optional<at::Tensor>& x, const std::optional<at::Tensor>& y, const char* xa,
                const char* ya) {
  TORCH_CHECK(x.has_value() == y.has_value(), kOp, ": ", xa, " and ", ya, " must be given together or not at all; ",
              x.has_value() ? ya : xa, " is missing");
  return x.has_value();
}

int check_outliers(const at::Tensor& q, const at::Tensor& idx, const at::Tensor& res, const char* ia,
                   const char* ra, const DecodeArgs& a) {
  const char* dims = "[B, Hkv, T_cap, count]";
  check_input(idx, ia, q, at::kByte, {a.B, a.Hkv, a.t_cap, kAny}, dims);
  const int64_t c = idx.size(3);
  TORCH_CHECK(c >= 1 && c <= 16, kOp, ": ", ia, " must hold between 1 and 16 outliers per token (size(3)), got ", c);
  check_input(res, ra, q, q.scalar_type(), {a.B, a.Hkv, a.t_cap, c}, dims);
  return (int)c;
}

int check_lowrank(const at::Tensor& q, const at::Tensor& fa, const at::Tensor& fb, const char* aa, const char* ba,
                  const DecodeArgs& a) {
  check_input(fa, aa, q, at::kHalf, {a.B, a.Hkv, a.t_cap / a.group, a.group, kAny},
              "[B, Hkv, T_cap/group_size, group_size, rank]");
  const int64_t r = fa.size(4);
  TORCH_CHECK(r >= 1 && r <= 8, kOp, ": ", aa, " must have rank (size(4)) between 1 and 8, got ", r);
  check_input(fb, ba, q, at::kHalf, {a.B, a.Hkv, a.t_cap / a.group, a.D, r}, "[B, Hkv, T_cap/group_size, D, rank]");
  return (int)r;
}

}  // namespace

bool check_decode_corrections(const at::Tensor& q, const std::optional<at::Tensor>& k_outlier_idx,
                              const std::optional<at::Tensor>& k_outlier_res,
                              const std::optional<at::Tensor>& v_outlier_idx,
                              const std::optional<at::Tensor>& v_outlier_res,
                              const std::optional<at::Tensor>& k_lowrank_a, const std::optional<at::Tensor>& k_lowrank_b,
                              const std::optional<at::Tensor>& v_lowrank_a, const std::optional<at::Tensor>& v_lowrank_b,
                              DecodeArgs& a) {
  bool any = false;
  if (pair_given(k_outlier_idx, k_outlier_res, "k_outlier_idx", "k_outlier_res")) {
    a.k_outliers = check_outliers(q, *k_outlier_idx, *k_outlier_res, "k_outlier_idx", "k_outlier_res", a);
    a.k_out_idx = k_outlier_idx->data_ptr<uint8_t>();
    a.k_out_res = k_outlier_res->data_ptr();
    any = true;
  }
  if (pair_given(v_outlier_idx, v_outlier_res, "v_outlier_idx", "v_outlier_res")) {
    a.v_outliers = check_outliers(q, *v_outlier_idx, *v_outlier_res, "v_outlier_idx", "v_outlier_res", a);
    a.v_out_idx = v_outlier_idx->data_ptr<uint8_t>();
    a.v_out_res = v_outlier_res->data_ptr();
    any = true;
  }
  if (pair_given(k_lowrank_a, k_lowrank_b, "k_lowrank_a", "k_lowrank_b")) {
    a.k_rank = check_lowrank(q, *k_lowrank_a, *k_lowrank_b, "k_lowrank_a", "k_lowrank_b", a);
    a.k_lr_a = reinterpret_cast<const uint16_t*>(k_lowrank_a->data_ptr());
    a.k_lr_b = reinterpret_cast<const uint16_t*>(k_lowrank_b->data_ptr());
    any = true;
  }
  if (pair_given(v_lowrank_a, v_lowrank_b, "v_lowrank_a", "v_lowrank_b")) {
    a.v_rank = check_lowrank(q, *v_lowrank_a, *v_lowrank_b, "v_lowrank_a", "v_lowrank_b", a);
    a.v_lr_a = reinterpret_cast<const uint16_t*>(v_lowrank_a->data_ptr());
    a.v_lr_b = reinterpret_cast<const uint16_t*>(v_lowrank_b->data_ptr());
    any = true;
  }
  return any;
}

bool check_decode_mass(const at::Tensor& q, const std::optional<at::Tensor>& attn_mass, DecodeArgs& a) {
  if (!attn_mass.has_value()) return false;
  const at::Tensor& m = *attn_mass;
  TORCH_CHECK(m.scalar_type() == at::kFloat, "kvcore.decode_attention: attn_mass must be float32, got ", m.scalar_type());
  TORCH_CHECK(m.device() == q.device(), "kvcore.decode_attention: attn_mass must be on ", q.device(), " like q, got ",
              m.device());
  TORCH_CHECK(m.dim() == 3 && m.size(0) == a.B && m.size(1) == a.Hkv && m.size(2) == a.mass_cols(),
              "kvcore.decode_attention: attn_mass must have shape [B, Hkv, S_cap + T_cap + R_cap] = [", a.B, ", ",
              a.Hkv, ", ", a.mass_cols(), "], got ", m.sizes());
  TORCH_CHECK(m.is_contiguous(), "kvcore.decode_attention: attn_mass must be contiguous");
  a.attn_mass = m.data_ptr<float>();
  return true;
}

std::tuple<at::Tensor, at::Tensor> alloc_decode_outputs(const at::Tensor& q, DecodeArgs& a) {
  auto out = at::empty({a.B, a.Hq, a.D}, q.options());
  auto lse = at::empty({a.B, a.Hq}, q.options().dtype(at::kFloat));
  a.out = out.data_ptr();
  a.lse = lse.data_ptr<float>();
  return {out, lse};
}

}  // namespace kvcore
