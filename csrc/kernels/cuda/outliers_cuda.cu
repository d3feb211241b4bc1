// CUDA kernels of sparse outlier extraction (first version: correct and simple, not yet
// tuned). Same selection as the CPU kernel, bit for bit:
//   1. group_stats_kernel: a thread per group computes the lower median and the lower
//      median absolute deviation by rank counting (O(G^2), NaN ranked above numbers);
//   2. select_kernel: a warp per token scores its channels z = |x - med| / MAD in IEEE
//      float32, takes the `count` best by repeated warp argmax (z descending, channel
//      ascending), and writes index, value and the dense row.
#include "../outliers.h"

namespace kvcore {
namespace {

__device__ __forceinline__ bool nan_last_less(float a, float b) { return a < b || (!isnan(a) && isnan(b)); }

// Lower median ((n-1)/2-th smallest under nan_last_less, ties by position) of
// v(0) .. v(n-1).
template <typename F>
__device__ float lower_median(int n, F v) {
  const int k = (n - 1) / 2;
  for (int i = 0; i < n; ++i) {
    const float vi = v(i);
    int rank = 0;
    for (int j = 0; j < n; ++j) {
      const float vj = v(j);
      rank += nan_last_less(vj, vi) || (j < i && !nan_last_less(vi, vj) && !nan_last_less(vj, vi));
    }
    if (rank == k) return vi;
  }
  return v(0);  // unreachable: ranks are a permutation of 0..n-1
}

template <int KIND>
__global__ void group_stats_kernel(OutlierArgs a, float* med, float* spread, int64_t ngroups) {
  using Bits = typename Storage<KIND>::bits_t;
  const int64_t gi = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (gi >= ngroups) return;
  const Bits* x = static_cast<const Bits*>(a.x);
  const int G = a.group, D = a.D;
  int64_t base, stride;
  if (a.axis == Axis::Channel) {  // group = (outer, block, channel): G tokens of one channel
    const int64_t blocks = a.T / G, d = gi % D, ob = gi / D;
    base = ((ob / blocks) * a.T + (ob % blocks) * G) * D + d;
    stride = D;
  } else {  // group = (outer*T row, channel group): G channels of one token
    const int64_t per_row = D / G;
    base = (gi / per_row) * D + (gi % per_row) * G;
    stride = 1;
  }
  auto val = [&](int i) { return Storage<KIND>::load(x[base + i * stride]); };
  const float m = lower_median(G, val);
  const float s = lower_median(G, [&](int i) { return fabsf(val(i) - m); });
  med[gi] = m;
  spread[gi] = fmaxf(s, 1.17549435e-38f);
}

// Group index of element (row, d).
__device__ __forceinline__ int64_t group_of(const OutlierArgs& a, int64_t row, int d) {
  if (a.axis == Axis::Channel) {
    const int64_t o = row / a.T, blk = (row % a.T) / a.group;
    return (o * (a.T / a.group) + blk) * a.D + d;
  }
  return row * (a.D / a.group) + d / a.group;
}

template <int KIND>
__global__ void select_kernel(OutlierArgs a, const float* med, const float* spread, int64_t rows) {
  using Bits = typename Storage<KIND>::bits_t;
  const int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  if (row >= rows) return;  // warp-uniform
  const int lane = threadIdx.x & 31, D = a.D, E = (D + 31) / 32;  // E <= 8 channels a lane
  const Bits* x = static_cast<const Bits*>(a.x) + row * D;
  float z[8];
  bool taken[8];
  for (int e = 0; e < 8; ++e) {
    const int d = lane + 32 * e;  // channels lane, lane+32, ...: coalesced
    taken[e] = false;
    z[e] = -INFINITY;
    if (e < E && d < D) {
      const int64_t g = group_of(a, row, d);
      z[e] = __fdiv_rn(fabsf(Storage<KIND>::load(x[d]) - med[g]), spread[g]);
    } else {
      taken[e] = true;  // not a channel
    }
  }
  int picks[16];
  for (int n = 0; n < a.count; ++n) {
    // best of this lane: (z, channel) maximal under (nan_last_less on z, then lower channel)
    float bz = 0.0f;
    int bd = -1;
    for (int e = 0; e < 8; ++e) {
      if (taken[e]) continue;
      const int d = lane + 32 * e;
      if (bd < 0 || nan_last_less(bz, z[e])) { bz = z[e]; bd = d; }
    }
    for (int m = 16; m > 0; m >>= 1) {
      const float oz = __shfl_xor_sync(0xffffffffu, bz, m);
      const int od = __shfl_xor_sync(0xffffffffu, bd, m);
      const bool better = od >= 0 && (bd < 0 || nan_last_less(bz, oz) || (!nan_last_less(oz, bz) && od < bd));
      if (better) { bz = oz; bd = od; }
    }
    picks[n] = bd;  // the same in every lane
    if ((bd & 31) == lane) taken[bd >> 5] = true;
  }
  for (int i = 1; i < a.count; ++i)  // ascending channel order (count <= 16)
    for (int j = i; j > 0 && picks[j - 1] > picks[j]; --j) {
      const int tmp = picks[j]; picks[j] = picks[j - 1]; picks[j - 1] = tmp;
    }
  Bits* dense = static_cast<Bits*>(a.dense) + row * D;
  for (int e = 0; e < E; ++e) {
    const int d = lane + 32 * e;
    if (d >= D) break;
    bool picked = false;
    for (int n = 0; n < a.count; ++n) picked |= picks[n] == d;
    dense[d] = picked ? Storage<KIND>::store(med[group_of(a, row, d)]) : x[d];
  }
  if (lane < a.count) {
    a.index[row * a.count + lane] = (uint8_t)picks[lane];
    static_cast<Bits*>(a.value)[row * a.count + lane] = x[picks[lane]];
  }
}

template <int KIND>
cudaError_t launch(const OutlierArgs& a, float* scratch, cudaStream_t st) {
  const int64_t rows = a.outer * a.T, ngroups = rows * a.D / a.group;
  float* med = scratch;
  float* spread = scratch + ngroups;
  group_stats_kernel<KIND><<<(unsigned)((ngroups + 127) / 128), 128, 0, st>>>(a, med, spread, ngroups);
  select_kernel<KIND><<<(unsigned)((rows + 7) / 8), 256, 0, st>>>(a, med, spread, rows);
  return cudaGetLastError();
}

}  // namespace

size_t extract_outliers_cuda_workspace(const OutlierArgs& a) {
  return (size_t)2 * a.outer * a.T * a.D / a.group * sizeof(float);
}

cudaError_t extract_outliers_cuda(const OutlierArgs& a, void* workspace, cudaStream_t stream) {
  if (a.outer * a.T == 0) return cudaSuccess;
  float* scratch = static_cast<float*>(workspace);
  switch (a.dtype) {
    case DType::F32: return launch<0>(a, scratch, stream);
    case DType::F16: return launch<1>(a, scratch, stream);
    default: return launch<2>(a, scratch, stream);
  }
}

}  // namespace kvcore
