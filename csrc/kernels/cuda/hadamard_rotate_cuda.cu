// CUDA kernel of the randomized Hadamard rotation, one template per (dtype, D).
//
// A row is spread over L lanes holding E elements each (E = D/L, at least one 16-byte
// vector when D allows); a warp holds 32/L rows at a time. Lane l of a row holds the
// elements d = k*L*V + l*V + v (v < V = elements per vector load, k < E/V), so each
// vector load of the warp reads contiguous memory. The butterfly stages h = 1, 2, 4, ...
// run in that order: h < V and h >= L*V pair two registers of a lane, V <= h < L*V pair
// lane l with lane l ^ (h/V) through a shuffle. Every pair rounds exactly like the CPU's
// u + w / u - w (across lanes as one FMA with an exact product by +-1), the signs and
// the 1/sqrt(D) scale come at the CPU's points (a sign is a sign-bit flip, which is what
// the CPU's exact product by +-1 does), so the result equals hadamard_rotate_cpu bit for
// bit.
//
// Each warp loops over chunks of U row groups (grid-stride, one wave of CTAs): the signs
// are hashed once per lane, U*E/V vector loads are in flight before the arithmetic.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <algorithm>
#include "../hadamard_rotate.h"

namespace kvcore {
namespace {

constexpr int kThreads = 256;

template <int KIND, int D>
struct Cfg {
  static constexpr int BYTES = KIND == 0 ? 4 : 2;
  static constexpr int VEC = 16 / BYTES;                                   // elements in 16 bytes
  static constexpr int E = D <= VEC ? D : (D / 32 > VEC ? D / 32 : VEC);  // elements per lane
  static constexpr int V = E < VEC ? E : VEC;                              // elements per load
  static constexpr int K = E / V;                                          // loads per lane and row
  static constexpr int L = D / E;                                          // lanes per row
  static constexpr int RPW = 32 / L;                                       // rows per warp and group
  static constexpr int W = V * BYTES / 4;                                  // 32-bit words per load
  // Row groups in flight per iteration: ~64 bytes of loads per lane (one group from
  // E = 16 on, where the registers go to the elements themselves).
  static constexpr int U = E >= 16 ? 1 : (64 / (E * BYTES) > 8 ? 8 : 64 / (E * BYTES));
  // 4 CTAs of 256 per SM (64 registers); 2 for E = 32, whose elements alone need 32.
  static constexpr int MIN_CTAS = E >= 32 ? 2 : 4;
  static_assert(L * E == D && L <= 32 && (32 % L) == 0 && K * V == E, "bad rotation layout");
};

template <int W>
struct Raw {
  uint32_t w[W];
};

template <int W>
__device__ __forceinline__ Raw<W> load_vec(const void* p) {
  Raw<W> r;
  if constexpr (W == 4) {
    const uint4 u = __ldcs(static_cast<const uint4*>(p));
    r.w[0] = u.x; r.w[1] = u.y; r.w[2] = u.z; r.w[3] = u.w;
  } else if constexpr (W == 2) {
    const uint2 u = __ldcs(static_cast<const uint2*>(p));
    r.w[0] = u.x; r.w[1] = u.y;
  } else {
    r.w[0] = __ldcs(static_cast<const unsigned int*>(p));
  }
  return r;
}

template <int W>
__device__ __forceinline__ void store_vec(void* p, const Raw<W>& r) {
  if constexpr (W == 4) {
    __stcs(static_cast<uint4*>(p), make_uint4(r.w[0], r.w[1], r.w[2], r.w[3]));
  } else if constexpr (W == 2) {
    __stcs(static_cast<uint2*>(p), make_uint2(r.w[0], r.w[1]));
  } else {
    __stcs(static_cast<unsigned int*>(p), r.w[0]);
  }
}

// Scalar fallback for pointers that are not aligned to a vector (a tensor view with an
// odd storage offset); same element order.
template <int KIND, int W>
__device__ __forceinline__ Raw<W> load_scalar(const void* p) {
  using Bits = typename Storage<KIND>::bits_t;
  const Bits* b = static_cast<const Bits*>(p);
  Raw<W> r;
#pragma unroll
  for (int i = 0; i < W; ++i) {
    if constexpr (KIND == 0) r.w[i] = b[i];
    else r.w[i] = (uint32_t)b[2 * i] | ((uint32_t)b[2 * i + 1] << 16);
  }
  return r;
}

template <int KIND, int W>
__device__ __forceinline__ void store_scalar(void* p, const Raw<W>& r) {
  using Bits = typename Storage<KIND>::bits_t;
  Bits* b = static_cast<Bits*>(p);
#pragma unroll
  for (int i = 0; i < W; ++i) {
    if constexpr (KIND == 0) {
      b[i] = r.w[i];
    } else {
      b[2 * i] = (Bits)(r.w[i] & 0xFFFFu);
      b[2 * i + 1] = (Bits)(r.w[i] >> 16);
    }
  }
}

// Exact conversions of a loaded vector to floats and back (round to nearest even).
template <int KIND, int W>
__device__ __forceinline__ void unpack(const Raw<W>& r, float* v) {
#pragma unroll
  for (int i = 0; i < W; ++i) {
    if constexpr (KIND == 0) {
      v[i] = __uint_as_float(r.w[i]);
    } else if constexpr (KIND == 2) {
      v[2 * i] = __uint_as_float(r.w[i] << 16);
      v[2 * i + 1] = __uint_as_float(r.w[i] & 0xFFFF0000u);
    } else {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&r.w[i]));
      v[2 * i] = f.x;
      v[2 * i + 1] = f.y;
    }
  }
}

// The packed hardware conversions round like Storage<KIND>::store but write another NaN,
// so a vector holding a NaN takes the element-wise path (canonical NaN like the CPU's).
template <int KIND, int W>
__device__ __forceinline__ Raw<W> pack(const float* v) {
  Raw<W> r;
  if constexpr (KIND == 0) {
#pragma unroll
    for (int i = 0; i < W; ++i) r.w[i] = __float_as_uint(v[i]);
  } else {
    bool nan = false;
#pragma unroll
    for (int i = 0; i < 2 * W; ++i) nan |= v[i] != v[i];
    if (!nan) {
#pragma unroll
      for (int i = 0; i < W; ++i) {
        if constexpr (KIND == 2) {
          const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
          r.w[i] = *reinterpret_cast<const uint32_t*>(&h);
        } else {
          const __half2 h = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
          r.w[i] = *reinterpret_cast<const uint32_t*>(&h);
        }
      }
    } else {
#pragma unroll
      for (int i = 0; i < W; ++i)
        r.w[i] = (uint32_t)Storage<KIND>::store(v[2 * i]) | ((uint32_t)Storage<KIND>::store(v[2 * i + 1]) << 16);
    }
  }
  return r;
}

// Butterfly stage inside a lane: registers i and i + rb (bit rb of i clear) hold the
// lower and upper element of each pair.
template <int E, int RB>
__device__ __forceinline__ void lane_stage(float (&v)[E]) {
#pragma unroll
  for (int i = 0; i < E; ++i)
    if ((i & RB) == 0) {
      const float u = v[i], w = v[i + RB];
      v[i] = u + w;
      v[i + RB] = u - w;
    }
}

// Butterfly stage across lanes (partner lane ^ M). The lower lane needs u + w (u its own
// value), the upper one u - w (u the partner's): both are other + own * sgn with sgn = +-1.
// The product is exact, so the fused multiply-add rounds once, exactly like the add.
template <int E, int M>
__device__ __forceinline__ void shfl_stage(float (&v)[E], int l) {
  const float sgn = (l & M) ? -1.0f : 1.0f;
#pragma unroll
  for (int i = 0; i < E; ++i) {
    const float other = __shfl_xor_sync(0xffffffffu, v[i], M);
    v[i] = __fmaf_rn(v[i], sgn, other);
  }
}

// All stages h = 1, 2, 4, ..., D/2 in that order (see the file comment for the layout).
template <int E, int V, int L, int H = 1>
__device__ __forceinline__ void butterflies(float (&v)[E], int l) {
  if constexpr (H < V * L * (E / V)) {
    if constexpr (H < V) lane_stage<E, H>(v);
    else if constexpr (H < V * L) shfl_stage<E, H / V>(v, l);
    else lane_stage<E, H / L>(v);
    butterflies<E, V, L, 2 * H>(v, l);
  }
}

// ALIGNED: x and out are aligned to a vector (else element-wise loads and stores).
template <int KIND, int D, bool ALIGNED>
__global__ void __launch_bounds__(kThreads, Cfg<KIND, D>::MIN_CTAS) rotate_kernel(RotateArgs a) {
  using C = Cfg<KIND, D>;
  using Bits = typename Storage<KIND>::bits_t;
  constexpr int E = C::E, V = C::V, K = C::K, L = C::L, RPW = C::RPW, U = C::U, W = C::W;
  const int lane = threadIdx.x & 31, l = lane % L, sub = lane / L;
  // Signs of this lane's elements, hashed once for all the rows the warp visits, as
  // sign-bit masks in the storage format: a product with +-1 is exact and rounding is
  // symmetric, so x * s (forward, before the butterflies) and store(y * s) (inverse,
  // after them) are the value or its bits with the sign flipped.
  Raw<W> mask[K];
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int i = 0; i < W; ++i) {
      const int d = k * L * V + l * V + (KIND == 0 ? i : 2 * i);
      if constexpr (KIND == 0) {
        mask[k].w[i] = rotation_sign(a.seed, d) < 0.0f ? 0x80000000u : 0u;
      } else {
        mask[k].w[i] = (rotation_sign(a.seed, d) < 0.0f ? 0x8000u : 0u) |
                       (rotation_sign(a.seed, d + 1) < 0.0f ? 0x80000000u : 0u);
      }
    }
  const Bits* x = static_cast<const Bits*>(a.x);
  Bits* out = static_cast<Bits*>(a.out);
  const int64_t rows = a.rows;
  const int64_t chunks = (rows + (int64_t)U * RPW - 1) / ((int64_t)U * RPW);
  const int64_t nwarps = (int64_t)gridDim.x * (kThreads / 32);
  // Warp-uniform loop: every lane takes part in the shuffles, rows past the end included.
  for (int64_t c = (int64_t)blockIdx.x * (kThreads / 32) + threadIdx.x / 32; c < chunks; c += nwarps) {
    const int64_t row0 = c * (U * RPW) + sub;
    Raw<W> raw[U][K];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t row = row0 + u * RPW;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        if (row < rows) {
          const Bits* p = x + row * D + k * (L * V) + l * V;
          raw[u][k] = ALIGNED ? load_vec<W>(p) : load_scalar<KIND, W>(p);
        } else {
#pragma unroll
          for (int i = 0; i < W; ++i) raw[u][k].w[i] = 0u;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float v[E];
      const uint32_t in_flip = a.inverse ? 0u : 0xFFFFFFFFu, out_flip = ~in_flip;
#pragma unroll
      for (int k = 0; k < K; ++k) {
#pragma unroll
        for (int i = 0; i < W; ++i) raw[u][k].w[i] ^= mask[k].w[i] & in_flip;
        unpack<KIND, W>(raw[u][k], v + k * V);
      }
      butterflies<E, V, L>(v, l);
#pragma unroll
      for (int i = 0; i < E; ++i) v[i] = v[i] * a.norm;
      const int64_t row = row0 + u * RPW;
      if (row < rows) {
#pragma unroll
        for (int k = 0; k < K; ++k) {
          Bits* p = out + row * D + k * (L * V) + l * V;
          Raw<W> r = pack<KIND, W>(v + k * V);
#pragma unroll
          for (int i = 0; i < W; ++i) r.w[i] ^= mask[k].w[i] & out_flip;
          if constexpr (ALIGNED) store_vec<W>(p, r);
          else store_scalar<KIND, W>(p, r);
        }
      }
    }
  }
}

// CTAs resident per SM for one instantiation (asked of the runtime once).
template <int KIND, int D, bool ALIGNED>
int ctas_per_sm() {
  static const int n = [] {
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, rotate_kernel<KIND, D, ALIGNED>, kThreads, 0) !=
        cudaSuccess)
      blocks = 0;
    cudaGetLastError();  // a failed query only leaves the estimate at 1
    return std::max(blocks, 1);
  }();
  return n;
}

template <int KIND, int D, bool ALIGNED>
cudaError_t launch_d(const RotateArgs& a, cudaStream_t st) {
  using C = Cfg<KIND, D>;
  int dev = 0, sms = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (e != cudaSuccess) return e;
  const int64_t chunks = (a.rows + (int64_t)C::U * C::RPW - 1) / ((int64_t)C::U * C::RPW);
  const int64_t wanted = (chunks + kThreads / 32 - 1) / (kThreads / 32);
  const int64_t wave = (int64_t)sms * ctas_per_sm<KIND, D, ALIGNED>();  // one wave; warps loop over the rest
  const unsigned grid = (unsigned)std::max<int64_t>(1, std::min(wanted, wave));
  rotate_kernel<KIND, D, ALIGNED><<<grid, kThreads, 0, st>>>(a);
  return cudaGetLastError();
}

template <int KIND, int D>
cudaError_t launch_d(const RotateArgs& a, cudaStream_t st) {
  using C = Cfg<KIND, D>;
  const uintptr_t addr = reinterpret_cast<uintptr_t>(a.x) | reinterpret_cast<uintptr_t>(a.out);
  return addr % (C::V * C::BYTES) == 0 ? launch_d<KIND, D, true>(a, st) : launch_d<KIND, D, false>(a, st);
}

template <int KIND>
cudaError_t launch(const RotateArgs& a, cudaStream_t st) {
  switch (a.D) {
    case 2: return launch_d<KIND, 2>(a, st);
    case 4: return launch_d<KIND, 4>(a, st);
    case 8: return launch_d<KIND, 8>(a, st);
    case 16: return launch_d<KIND, 16>(a, st);
    case 32: return launch_d<KIND, 32>(a, st);
    case 64: return launch_d<KIND, 64>(a, st);
    case 128: return launch_d<KIND, 128>(a, st);
    case 256: return launch_d<KIND, 256>(a, st);
    case 512: return launch_d<KIND, 512>(a, st);
    case 1024: return launch_d<KIND, 1024>(a, st);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t hadamard_rotate_cuda(const RotateArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  switch (a.dtype) {
    case DType::F32: return launch<0>(a, stream);
    case DType::F16: return launch<1>(a, stream);
    default: return launch<2>(a, stream);
  }
}

}  // namespace kvcore
