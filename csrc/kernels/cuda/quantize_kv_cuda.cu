// CUDA kernels for bit-packed KV quantization (format: docs/FORMAT.md).
// Memory-bound: each thread moves 16-byte vectors, keeps several loads in flight,
// and amortises the per-group work (range, (scale, min) choice, one division)
// over 32 elements where the grouping allows. Codes match the CPU bit for bit.
#include "../quantize_kv.h"
#include "quant_device.cuh"

namespace kvcore {
namespace {

using dev::Bits;
using dev::Range;

// Partial packed word of one 8-channel chunk. For 2 bits a word spans two chunks:
// `odd` says whether this chunk is the second one (channels 8..15 of the word).
template <int BITS>
__device__ __forceinline__ void encode_chunk(const float (&v)[8], const float* inv, const float* mn,
                                             bool odd, uint32_t (&w)[2]) {
  w[0] = w[1] = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float iv = inv[j], m = mn[j];
    const uint32_t c = dev::encode_fast<BITS>(v[j], iv, m);
    if constexpr (BITS == 8) w[j / 4] |= c << code_bit_offset(j % 4, 8);
    else if constexpr (BITS == 4) w[0] |= c << code_bit_offset(j, 4);
    else w[0] |= c << code_bit_offset(j + (odd ? 8 : 0), 2);
  }
}

// Stores a chunk's codes (word pointer `out` = codes as 32-bit words). For 2 bits,
// the two chunks of a word live in lanes l and l^1; the even lane stores the word.
template <int BITS>
__device__ __forceinline__ void store_chunk_shfl(uint32_t* out, int64_t chunk, uint32_t (&w)[2], bool valid) {
  if constexpr (BITS == 2) {
    w[0] |= __shfl_xor_sync(0xffffffffu, w[0], 1);
    if (valid && (chunk & 1) == 0) __stcs(out + chunk / 2, w[0]);
  } else if constexpr (BITS == 4) {
    if (valid) __stcs(out + chunk, w[0]);
  } else {
    if (valid) __stcs(reinterpret_cast<uint2*>(out) + chunk, make_uint2(w[0], w[1]));
  }
}

// ---- axis = token --------------------------------------------------------------------
// A group of G channels = G/8 chunks, handled by L = G/32 lanes with 4 chunks each
// (lane l takes chunks l, l+L, l+2L, l+3L of its group, so a warp's loads stay contiguous).
template <int KIND, int BITS, int G>
__global__ void __launch_bounds__(256) quantize_token_kernel(QuantizeArgs a, int64_t ngroups) {
  constexpr int TPG = G / 8, U = 4, L = TPG / U;
  const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t group = tid / L;
  const int l = (int)(tid % L);
  const bool valid = group < ngroups;
  float v[U][8];
  Range r;
#pragma unroll
  for (int k = 0; k < U; ++k) {
    if (valid) {
      dev::load8<KIND>(a.x, (group * TPG + k * L + l) * 8, v[k]);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[k][j] = 0.0f;
    }
  }
#pragma unroll
  for (int k = 0; k < U; ++k)
#pragma unroll
    for (int j = 0; j < 8; ++j) r.add(v[k][j]);
#pragma unroll
  for (int m = 1; m < L; m <<= 1) r.shfl_merge(m);
  Bits<KIND> sb, mb;
  choose_group_params<KIND>(r.final_lo(), r.final_hi(), BITS, &sb, &mb);
  if (valid && l == 0) {
    static_cast<Bits<KIND>*>(a.scale)[group] = sb;
    static_cast<Bits<KIND>*>(a.mn)[group] = mb;
  }
  float inv[8], mn[8];
  {
    const float iv = inv_scale(Storage<KIND>::load(sb)), m = Storage<KIND>::load(mb);
#pragma unroll
    for (int j = 0; j < 8; ++j) { inv[j] = iv; mn[j] = m; }
  }
  uint32_t w[U][2];
#pragma unroll
  for (int k = 0; k < U; ++k) encode_chunk<BITS>(v[k], inv, mn, L == 1 ? (k & 1) : (l & 1), w[k]);
  uint32_t* out = reinterpret_cast<uint32_t*>(a.codes);
  if constexpr (L == 1) {
    // One lane owns the whole group: its 4 chunks are contiguous, store them at once.
    if (!valid) return;
    if constexpr (BITS == 2) {
      __stcs(reinterpret_cast<uint2*>(out) + group, make_uint2(w[0][0] | w[1][0], w[2][0] | w[3][0]));
    } else if constexpr (BITS == 4) {
      __stcs(reinterpret_cast<uint4*>(out) + group, make_uint4(w[0][0], w[1][0], w[2][0], w[3][0]));
    } else {
      uint4* o = reinterpret_cast<uint4*>(out) + 2 * group;
      __stcs(o, make_uint4(w[0][0], w[0][1], w[1][0], w[1][1]));
      __stcs(o + 1, make_uint4(w[2][0], w[2][1], w[3][0], w[3][1]));
    }
  } else {
#pragma unroll
    for (int k = 0; k < U; ++k) store_chunk_shfl<BITS>(out, group * TPG + k * L + l, w[k], valid);
  }
}

// ---- axis = channel -----------------------------------------------------------------
// A block owns G tokens x 8*CX channels: threadIdx.x = chunk, threadIdx.y = one of 16
// row lanes holding G/16 rows in registers between the range pass and the encode pass.
constexpr int kRowLanes = 16;
constexpr int kMaxChunks = 32;

template <int KIND, int BITS, int G>
__global__ void __launch_bounds__(512) quantize_channel_kernel(QuantizeArgs a) {
  constexpr int RPT = G / kRowLanes;
  __shared__ float s_lo[kRowLanes][kMaxChunks * 8];
  __shared__ float s_hi[kRowLanes][kMaxChunks * 8];
  __shared__ float s_inv[kMaxChunks * 8], s_mn[kMaxChunks * 8];
  const int64_t D = a.D, nchunk = D / 8;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t chunk = (int64_t)blockIdx.y * blockDim.x + tx;
  const bool valid = chunk < nchunk;
  const int64_t block = blockIdx.x;  // token block over all [outer*T] rows
  const int64_t row0 = block * G;

  float v[RPT][8];
#pragma unroll
  for (int r = 0; r < RPT; ++r) {
    if (valid) {
      dev::load8<KIND>(a.x, (row0 + ty + r * kRowLanes) * D + chunk * 8, v[r]);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[r][j] = 0.0f;
    }
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    Range rg;
#pragma unroll
    for (int r = 0; r < RPT; ++r) rg.add(v[r][j]);
    s_lo[ty][tx * 8 + j] = rg.final_lo();
    s_hi[ty][tx * 8 + j] = rg.final_hi();
  }
  __syncthreads();
  if (ty < 8) {  // 8 row lanes finish the 8 channels of each chunk in parallel
    const int c = tx * 8 + ty;
    float lo = s_lo[0][c], hi = s_hi[0][c];
#pragma unroll
    for (int y = 1; y < kRowLanes; ++y) { lo = fminf(lo, s_lo[y][c]); hi = fmaxf(hi, s_hi[y][c]); }
    Bits<KIND> sb, mb;
    choose_group_params<KIND>(lo, hi, BITS, &sb, &mb);
    if (valid) {
      static_cast<Bits<KIND>*>(a.scale)[block * D + chunk * 8 + ty] = sb;
      static_cast<Bits<KIND>*>(a.mn)[block * D + chunk * 8 + ty] = mb;
    }
    s_inv[c] = inv_scale(Storage<KIND>::load(sb));
    s_mn[c] = Storage<KIND>::load(mb);
  }
  __syncthreads();
  float inv[8], mn[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) { inv[j] = s_inv[tx * 8 + j]; mn[j] = s_mn[tx * 8 + j]; }
  uint32_t* out = reinterpret_cast<uint32_t*>(a.codes);
#pragma unroll
  for (int r = 0; r < RPT; ++r) {
    const int64_t ch = (row0 + ty + r * kRowLanes) * nchunk + chunk;
    uint32_t w[2];
    encode_chunk<BITS>(v[r], inv, mn, (ch & 1) != 0, w);
    store_chunk_shfl<BITS>(out, ch, w, valid);
  }
}

// ---- dequantize ---------------------------------------------------------------------
// Codes of 16 consecutive channels (a chunk pair) starting at chunk pair p.
template <int BITS>
__device__ __forceinline__ void load_pair_codes(const uint8_t* codes, int64_t p, uint32_t (&c)[16]) {
  if constexpr (BITS == 2) {
    const uint32_t w = __ldcs(reinterpret_cast<const unsigned int*>(codes) + p);
#pragma unroll
    for (int j = 0; j < 16; ++j) c[j] = (w >> code_bit_offset(j, 2)) & 0x3u;
  } else if constexpr (BITS == 4) {
    const uint2 w = __ldcs(reinterpret_cast<const uint2*>(codes) + p);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      c[j] = (w.x >> code_bit_offset(j, 4)) & 0xFu;
      c[j + 8] = (w.y >> code_bit_offset(j, 4)) & 0xFu;
    }
  } else {
    const uint4 w = __ldcs(reinterpret_cast<const uint4*>(codes) + p);
    const uint32_t ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int j = 0; j < 16; ++j) c[j] = (ws[j / 4] >> code_bit_offset(j % 4, 8)) & 0xFFu;
  }
}

template <int OK>
__device__ __forceinline__ void decode_store_pair(void* out, int64_t p, const uint32_t (&c)[16],
                                                  const float* s, const float* m) {
  float v0[8], v1[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    v0[j] = __fadd_rn(__fmul_rn(dev::code_to_float(c[j]), s[j]), m[j]);
    v1[j] = __fadd_rn(__fmul_rn(dev::code_to_float(c[j + 8]), s[j + 8]), m[j + 8]);
  }
  dev::store8<OK>(out, p * 16, v0);
  dev::store8<OK>(out, p * 16 + 8, v1);
}

template <int MK, int OK, int BITS>
__global__ void __launch_bounds__(256) dequantize_token_kernel(DequantizeArgs a, int64_t npairs) {
  const int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= npairs) return;
  const int64_t gi = p * 16 / a.group;  // groups hold >= 32 channels: one group per pair
  const float s = Storage<MK>::load(__ldg(static_cast<const Bits<MK>*>(a.scale) + gi));
  const float m = Storage<MK>::load(__ldg(static_cast<const Bits<MK>*>(a.mn) + gi));
  float ss[16], ms[16];
#pragma unroll
  for (int j = 0; j < 16; ++j) { ss[j] = s; ms[j] = m; }
  uint32_t c[16];
  load_pair_codes<BITS>(a.codes, p, c);
  decode_store_pair<OK>(a.out, p, c, ss, ms);
}

// One thread: 16 channels over 8 consecutive rows of one token block, so the
// per-channel metadata is read once per 8 rows.
template <int MK, int OK, int BITS>
__global__ void __launch_bounds__(256) dequantize_channel_kernel(DequantizeArgs a, int64_t nitems) {
  const int64_t item = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (item >= nitems) return;
  const int64_t npair = a.D / 16;
  const int64_t pair = item % npair, row0 = (item / npair) * 8;
  const int64_t mi = (row0 / a.group) * a.D + pair * 16;
  float s[16], m[16];
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    s[j] = Storage<MK>::load(__ldg(static_cast<const Bits<MK>*>(a.scale) + mi + j));
    m[j] = Storage<MK>::load(__ldg(static_cast<const Bits<MK>*>(a.mn) + mi + j));
  }
#pragma unroll 2
  for (int r = 0; r < 8; ++r) {
    const int64_t p = (row0 + r) * npair + pair;
    uint32_t c[16];
    load_pair_codes<BITS>(a.codes, p, c);
    decode_store_pair<OK>(a.out, p, c, s, m);
  }
}

template <int KIND, int BITS>
cudaError_t launch_quantize(const QuantizeArgs& a, cudaStream_t st) {
  if (a.axis == Axis::Token) {
    const int64_t ngroups = a.outer * a.T * (a.D / a.group);
    const int64_t lanes = ngroups * (a.group / 32);
    const unsigned grid = (unsigned)((lanes + 255) / 256);
    switch (a.group) {
      case 32: quantize_token_kernel<KIND, BITS, 32><<<grid, 256, 0, st>>>(a, ngroups); break;
      case 64: quantize_token_kernel<KIND, BITS, 64><<<grid, 256, 0, st>>>(a, ngroups); break;
      default: quantize_token_kernel<KIND, BITS, 128><<<grid, 256, 0, st>>>(a, ngroups); break;
    }
  } else {
    const int64_t nchunk = a.D / 8;
    const int cx = (int)(nchunk < kMaxChunks ? nchunk : kMaxChunks);
    const dim3 block(cx, kRowLanes);
    const dim3 grid((unsigned)(a.outer * a.T / a.group), (unsigned)((nchunk + cx - 1) / cx));
    switch (a.group) {
      case 32: quantize_channel_kernel<KIND, BITS, 32><<<grid, block, 0, st>>>(a); break;
      case 64: quantize_channel_kernel<KIND, BITS, 64><<<grid, block, 0, st>>>(a); break;
      default: quantize_channel_kernel<KIND, BITS, 128><<<grid, block, 0, st>>>(a); break;
    }
  }
  return cudaGetLastError();
}

template <int MK, int OK>
cudaError_t launch_dequantize_bits(const DequantizeArgs& a, cudaStream_t st) {
  const bool tok = a.axis == Axis::Token;
  const int64_t n = tok ? a.outer * a.T * (a.D / 16) : a.outer * (a.T / 8) * (a.D / 16);
  const unsigned grid = (unsigned)((n + 255) / 256);
#define KV_DQ(B)                                                           \
  if (tok) dequantize_token_kernel<MK, OK, B><<<grid, 256, 0, st>>>(a, n); \
  else dequantize_channel_kernel<MK, OK, B><<<grid, 256, 0, st>>>(a, n);
  switch (a.bits) {
    case 2: KV_DQ(2) break;
    case 4: KV_DQ(4) break;
    default: KV_DQ(8) break;
  }
#undef KV_DQ
  return cudaGetLastError();
}

template <int MK>
cudaError_t launch_dequantize(const DequantizeArgs& a, cudaStream_t st) {
  switch (a.out_dtype) {
    case DType::F32: return launch_dequantize_bits<MK, 0>(a, st);
    case DType::F16: return launch_dequantize_bits<MK, 1>(a, st);
    default: return launch_dequantize_bits<MK, 2>(a, st);
  }
}

template <int KIND>
cudaError_t launch_quantize_kind(const QuantizeArgs& a, cudaStream_t st) {
  switch (a.bits) {
    case 2: return launch_quantize<KIND, 2>(a, st);
    case 4: return launch_quantize<KIND, 4>(a, st);
    default: return launch_quantize<KIND, 8>(a, st);
  }
}

}  // namespace

cudaError_t quantize_kv_cuda(const QuantizeArgs& a, cudaStream_t stream) {
  if (a.outer * a.T * a.D == 0) return cudaSuccess;
  switch (a.dtype) {
    case DType::F32: return launch_quantize_kind<0>(a, stream);
    case DType::F16: return launch_quantize_kind<1>(a, stream);
    default: return launch_quantize_kind<2>(a, stream);
  }
}

cudaError_t dequantize_kv_cuda(const DequantizeArgs& a, cudaStream_t stream) {
  if (a.outer * a.T * a.D == 0) return cudaSuccess;
  switch (a.meta_dtype) {
    case DType::F32: return launch_dequantize<0>(a, stream);
    case DType::F16: return launch_dequantize<1>(a, stream);
    default: return launch_dequantize<2>(a, stream);
  }
}

}  // namespace kvcore
