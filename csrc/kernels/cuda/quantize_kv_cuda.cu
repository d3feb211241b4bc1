// CUDA kernels for bit-packed KV quantization (format: docs/FORMAT.md).
// Every thread owns a "chunk" of 8 consecutive channels of one token: one
// 16-byte load (32 bytes for fp32), `bits` bytes of codes. Numerics come from
// quant_format.h so codes match the CPU kernels bit for bit.
#include "../quantize_kv.h"

namespace kvcore {
namespace {

template <int KIND>
using Bits = typename Storage<KIND>::bits_t;

// Loads 8 consecutive elements starting at element index `e` (16/32-byte aligned).
template <int KIND>
__device__ __forceinline__ void load8(const void* base, int64_t e, float (&v)[8]) {
  if constexpr (KIND == 0) {
    const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(base) + e);
    const float4 a = __ldcs(p), b = __ldcs(p + 1);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
  } else {
    const uint4 u = __ldcs(reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(base) + e));
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = Storage<KIND>::load((uint16_t)(w[i] & 0xFFFFu));
      v[2 * i + 1] = Storage<KIND>::load((uint16_t)(w[i] >> 16));
    }
  }
}

template <int KIND>
__device__ __forceinline__ void store8(void* base, int64_t e, const float (&v)[8]) {
  if constexpr (KIND == 0) {
    float4* p = reinterpret_cast<float4*>(static_cast<float*>(base) + e);
    __stcs(p, make_float4(v[0], v[1], v[2], v[3]));
    __stcs(p + 1, make_float4(v[4], v[5], v[6], v[7]));
  } else {
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
      w[i] = (uint32_t)Storage<KIND>::store(v[2 * i]) | ((uint32_t)Storage<KIND>::store(v[2 * i + 1]) << 16);
    __stcs(reinterpret_cast<uint4*>(static_cast<uint16_t*>(base) + e), make_uint4(w[0], w[1], w[2], w[3]));
  }
}

// Encodes a chunk and stores its `BITS` bytes of codes at codes + chunk*BITS.
// For 2 bits two neighbouring lanes (chunks 2w, 2w+1) share one word.
template <int BITS>
__device__ __forceinline__ void encode_store_chunk(const float (&v)[8], const float (&inv)[8],
                                                   const float (&mn)[8], int64_t chunk,
                                                   uint8_t* codes, bool valid) {
  if constexpr (BITS == 4) {
    uint32_t w = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) w |= encode_code(v[j], inv[j], mn[j], 4) << code_bit_offset(j, 4);
    if (valid) __stcs(reinterpret_cast<unsigned int*>(codes) + chunk, w);
  } else if constexpr (BITS == 8) {
    uint32_t w0 = 0, w1 = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      w0 |= encode_code(v[j], inv[j], mn[j], 8) << code_bit_offset(j, 8);
      w1 |= encode_code(v[j + 4], inv[j + 4], mn[j + 4], 8) << code_bit_offset(j, 8);
    }
    if (valid) __stcs(reinterpret_cast<uint2*>(codes) + chunk, make_uint2(w0, w1));
  } else {
    const int base = (int)(chunk & 1) * 8;
    uint32_t w = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) w |= encode_code(v[j], inv[j], mn[j], 2) << code_bit_offset(base + j, 2);
    w |= __shfl_xor_sync(0xffffffffu, w, 1);
    if (valid && (chunk & 1) == 0) __stcs(reinterpret_cast<unsigned int*>(codes) + chunk / 2, w);
  }
}

// ---- axis = token: a group is G/8 consecutive lanes --------------------------------------
template <int KIND, int BITS, int G>
__global__ void __launch_bounds__(256) quantize_token_kernel(QuantizeArgs a, int64_t nchunks) {
  constexpr int TPG = G / 8;
  const int64_t chunk = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const bool valid = chunk < nchunks;
  float v[8];
  RangeAcc acc;
  if (valid) {
    load8<KIND>(a.x, chunk * 8, v);
#pragma unroll
    for (int j = 0; j < 8; ++j) acc.add(v[j]);
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = 0.0f;
  }
#pragma unroll
  for (int off = 1; off < TPG; off <<= 1)
    acc.merge(__shfl_xor_sync(0xffffffffu, acc.lo, off), __shfl_xor_sync(0xffffffffu, acc.hi, off));
  Bits<KIND> sb, mb;
  choose_group_params<KIND>(acc.lo, acc.hi, BITS, &sb, &mb);
  if (valid && chunk % TPG == 0) {
    static_cast<Bits<KIND>*>(a.scale)[chunk / TPG] = sb;
    static_cast<Bits<KIND>*>(a.mn)[chunk / TPG] = mb;
  }
  const float inv = inv_scale(Storage<KIND>::load(sb)), m = Storage<KIND>::load(mb);
  float invs[8], mns[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) { invs[j] = inv; mns[j] = m; }
  encode_store_chunk<BITS>(v, invs, mns, chunk, a.codes, valid);
}

// ---- axis = channel: a block owns G tokens x (8*CX) channels ------------------------------
// threadIdx.x = chunk within the block's channels, threadIdx.y = one of 16 row lanes;
// each thread keeps its G/16 rows in registers between the range pass and the encode pass.
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
  float lo[8], hi[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) { lo[j] = INFINITY; hi[j] = -INFINITY; }
#pragma unroll
  for (int r = 0; r < RPT; ++r) {
    if (valid) {
      load8<KIND>(a.x, (row0 + ty + r * kRowLanes) * D + chunk * 8, v[r]);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[r][j] = 0.0f;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      RangeAcc acc;
      acc.lo = lo[j]; acc.hi = hi[j];
      acc.add(v[r][j]);
      lo[j] = acc.lo; hi[j] = acc.hi;
    }
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) { s_lo[ty][tx * 8 + j] = lo[j]; s_hi[ty][tx * 8 + j] = hi[j]; }
  __syncthreads();
  if (ty == 0) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      float l = s_lo[0][tx * 8 + j], h = s_hi[0][tx * 8 + j];
      for (int y = 1; y < kRowLanes; ++y) { l = fminf(l, s_lo[y][tx * 8 + j]); h = fmaxf(h, s_hi[y][tx * 8 + j]); }
      Bits<KIND> sb, mb;
      choose_group_params<KIND>(l, h, BITS, &sb, &mb);
      if (valid) {
        static_cast<Bits<KIND>*>(a.scale)[block * D + chunk * 8 + j] = sb;
        static_cast<Bits<KIND>*>(a.mn)[block * D + chunk * 8 + j] = mb;
      }
      s_inv[tx * 8 + j] = inv_scale(Storage<KIND>::load(sb));
      s_mn[tx * 8 + j] = Storage<KIND>::load(mb);
    }
  }
  __syncthreads();
  float inv[8], mn[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) { inv[j] = s_inv[tx * 8 + j]; mn[j] = s_mn[tx * 8 + j]; }
#pragma unroll
  for (int r = 0; r < RPT; ++r) {
    const int64_t row = row0 + ty + r * kRowLanes;
    encode_store_chunk<BITS>(v[r], inv, mn, row * nchunk + chunk, a.codes, valid);
  }
}

// ---- dequantize -----------------------------------------------------------------------
template <int BITS>
__device__ __forceinline__ void load_chunk_codes(const uint8_t* codes, int64_t chunk, uint32_t (&c)[8]) {
  if constexpr (BITS == 4) {
    const uint32_t w = __ldcs(reinterpret_cast<const unsigned int*>(codes) + chunk);
#pragma unroll
    for (int j = 0; j < 8; ++j) c[j] = (w >> code_bit_offset(j, 4)) & 0xFu;
  } else if constexpr (BITS == 8) {
    const uint2 w = __ldcs(reinterpret_cast<const uint2*>(codes) + chunk);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      c[j] = (w.x >> code_bit_offset(j, 8)) & 0xFFu;
      c[j + 4] = (w.y >> code_bit_offset(j, 8)) & 0xFFu;
    }
  } else {
    const uint32_t w = __ldg(reinterpret_cast<const unsigned int*>(codes) + chunk / 2);
    const int base = (int)(chunk & 1) * 8;
#pragma unroll
    for (int j = 0; j < 8; ++j) c[j] = (w >> code_bit_offset(base + j, 2)) & 0x3u;
  }
}

template <int MK, int OK, int BITS>
__global__ void __launch_bounds__(256) dequantize_token_kernel(DequantizeArgs a, int64_t nchunks) {
  const int64_t chunk = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (chunk >= nchunks) return;
  const int64_t gi = chunk * 8 / a.group;  // group index in the [rows, D/group] metadata
  const float s = Storage<MK>::load(static_cast<const Bits<MK>*>(a.scale)[gi]);
  const float m = Storage<MK>::load(static_cast<const Bits<MK>*>(a.mn)[gi]);
  uint32_t c[8];
  load_chunk_codes<BITS>(a.codes, chunk, c);
  float v[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = decode_code(c[j], s, m);
  store8<OK>(a.out, chunk * 8, v);
}

// One thread: one chunk of 8 channels over 8 consecutive rows (same token block),
// so the per-channel metadata is read once per 8 rows.
template <int MK, int OK, int BITS>
__global__ void __launch_bounds__(256) dequantize_channel_kernel(DequantizeArgs a, int64_t nitems) {
  const int64_t item = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (item >= nitems) return;
  const int64_t nchunk = a.D / 8;
  const int64_t chunk = item % nchunk, row0 = (item / nchunk) * 8;
  const int64_t mi = (row0 / a.group) * a.D + chunk * 8;
  float s[8], m[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    s[j] = Storage<MK>::load(static_cast<const Bits<MK>*>(a.scale)[mi + j]);
    m[j] = Storage<MK>::load(static_cast<const Bits<MK>*>(a.mn)[mi + j]);
  }
#pragma unroll 2
  for (int r = 0; r < 8; ++r) {
    const int64_t ch = (row0 + r) * nchunk + chunk;
    uint32_t c[8];
    load_chunk_codes<BITS>(a.codes, ch, c);
    float v[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = decode_code(c[j], s[j], m[j]);
    store8<OK>(a.out, ch * 8, v);
  }
}

template <int KIND, int BITS>
cudaError_t launch_quantize(const QuantizeArgs& a, cudaStream_t st) {
  if (a.axis == Axis::Token) {
    const int64_t nchunks = a.outer * a.T * a.D / 8;
    const unsigned grid = (unsigned)((nchunks + 255) / 256);
    switch (a.group) {
      case 32: quantize_token_kernel<KIND, BITS, 32><<<grid, 256, 0, st>>>(a, nchunks); break;
      case 64: quantize_token_kernel<KIND, BITS, 64><<<grid, 256, 0, st>>>(a, nchunks); break;
      default: quantize_token_kernel<KIND, BITS, 128><<<grid, 256, 0, st>>>(a, nchunks); break;
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
  const int64_t n = tok ? a.outer * a.T * a.D / 8 : a.outer * a.T / 8 * (a.D / 8);
  const unsigned grid = (unsigned)((n + 255) / 256);
#define KV_DQ(B)                                                                     \
  if (tok) dequantize_token_kernel<MK, OK, B><<<grid, 256, 0, st>>>(a, n);           \
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
