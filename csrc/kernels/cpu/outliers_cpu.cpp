// CPU kernel of sparse outlier extraction. Per group: the lower median and the lower
// median absolute deviation (nth_element); per token: the `count` channels with the
// largest z = |x - median| / max(MAD, 2^-126) in float32, ties to the lower channel.
// NaN sorts above every number, so a non-finite input never breaks the selection.
#include <algorithm>
#include <cmath>
#include <vector>
#include "../outliers.h"

namespace kvcore {
namespace {

constexpr float kTinySpread = 1.17549435e-38f;  // 2^-126

bool nan_last_less(float a, float b) { return a < b || (!std::isnan(a) && std::isnan(b)); }

// Lower median of v (reordered in place).
float lower_median(std::vector<float>& v) {
  const size_t k = (v.size() - 1) / 2;
  std::nth_element(v.begin(), v.begin() + k, v.end(), nan_last_less);
  return v[k];
}

// Which of tied values nth_element returns is unspecified, and the median is written
// out (dense): a zero median is +0 and a NaN median the quiet NaN 0x7FC00000.
float canonical_median(float m) { return m == 0.0f ? 0.0f : std::isnan(m) ? bits_as_float(0x7FC00000u) : m; }

// (median, MAD) of the n values at p[0], p[stride], ...
void centre_spread(const float* p, int n, int64_t stride, std::vector<float>& buf, float& med, float& mad) {
  buf.resize(n);
  for (int i = 0; i < n; ++i) buf[i] = p[i * stride];
  med = canonical_median(lower_median(buf));
  for (int i = 0; i < n; ++i) buf[i] = std::fabs(p[i * stride] - med);
  mad = std::max(lower_median(buf), kTinySpread);
}

// Writes one token's outputs from its floats, z-scores and per-channel medians.
template <int KIND>
void emit_token(const OutlierArgs& a, int64_t row, const float* z, const float* med) {
  using Bits = typename Storage<KIND>::bits_t;
  const int D = a.D, c = a.count;
  int pick[16];      // count <= 16 and D <= 256 (check_outlier_args): no allocation per token
  bool taken[256] = {};
  for (int n = 0; n < c; ++n) {  // c is small: repeated argmax, ties to the lower channel
    int best = -1;
    for (int d = 0; d < D; ++d) {
      if (taken[d]) continue;
      if (best < 0 || nan_last_less(z[best], z[d])) best = d;
    }
    taken[best] = true;
    pick[n] = best;
  }
  std::sort(pick, pick + c);
  const Bits* x = static_cast<const Bits*>(a.x) + row * D;
  Bits* dense = static_cast<Bits*>(a.dense) + row * D;
  Bits* val = static_cast<Bits*>(a.value) + row * c;
  for (int d = 0; d < D; ++d) dense[d] = taken[d] ? Storage<KIND>::store(med[d]) : x[d];
  for (int n = 0; n < c; ++n) {
    a.index[row * c + n] = (uint8_t)pick[n];
    val[n] = x[pick[n]];
  }
}

template <int KIND>
void run(const OutlierArgs& a, int64_t begin, int64_t end) {
  using Bits = typename Storage<KIND>::bits_t;
  const int D = a.D, G = a.group;
  const Bits* x = static_cast<const Bits*>(a.x);
  std::vector<float> xs, z, med, buf;
  for (int64_t u = begin; u < end; ++u) {
    if (a.axis == Axis::Channel) {
      const int64_t blocks = a.T / G, o = u / blocks, row0 = o * a.T + (u % blocks) * G;
      xs.resize((size_t)G * D);
      z.resize((size_t)G * D);
      med.resize(D);
      for (int64_t i = 0; i < (int64_t)G * D; ++i) xs[i] = Storage<KIND>::load(x[row0 * D + i]);
      for (int d = 0; d < D; ++d) {
        float m, s;
        centre_spread(&xs[d], G, D, buf, m, s);
        med[d] = m;
        for (int t = 0; t < G; ++t) z[t * D + d] = std::fabs(xs[t * D + d] - m) / s;
      }
      for (int t = 0; t < G; ++t) emit_token<KIND>(a, row0 + t, &z[t * D], med.data());
    } else {
      xs.resize(D);
      z.resize(D);
      med.resize(D);
      for (int d = 0; d < D; ++d) xs[d] = Storage<KIND>::load(x[u * D + d]);
      for (int g0 = 0; g0 < D; g0 += G) {
        float m, s;
        centre_spread(&xs[g0], G, 1, buf, m, s);
        for (int d = g0; d < g0 + G; ++d) {
          med[d] = m;
          z[d] = std::fabs(xs[d] - m) / s;
        }
      }
      emit_token<KIND>(a, u, z.data(), med.data());
    }
  }
}

}  // namespace

int64_t extract_outliers_cpu_units(const OutlierArgs& a) {
  return a.axis == Axis::Channel ? a.outer * (a.T / a.group) : a.outer * a.T;
}

void extract_outliers_cpu(const OutlierArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case DType::F32: run<0>(a, begin, end); break;
    case DType::F16: run<1>(a, begin, end); break;
    default: run<2>(a, begin, end); break;
  }
}

}  // namespace kvcore
