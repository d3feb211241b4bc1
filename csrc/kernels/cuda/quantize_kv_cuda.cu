// CUDA kernels for bit-packed KV quantization (format: docs/FORMAT.md).
// Memory-bound: each thread moves 16-byte vectors, keeps several loads in flight,
// and amortises the per-group work (range, (scale, min) choice, one division)
// over 32 elements where the grouping allows. Codes match the CPU bit for bit.
#include "../quantize_kv.h"
#include "quant_device.cuh"
#include <type_traits>

namespace kvcore {
namespace {

using dev::Bits;
using dev::Range;

// Packed word(s) of one 8-channel chunk. For 2 bits a word spans two chunks: `odd`
// says whether this chunk is the second one (its fields sit 8 bits higher).
// Codes are accumulated as sum(magic_bits << offset) in one IMAD each, then the
// constant contribution of the magic exponent bits is subtracted (all mod 2^32).
template <int KIND, int BITS, bool NAN_SAFE = true>
__device__ __forceinline__ void encode_chunk(const float (&v)[8], const float* inv, const float* mn,
                                             bool odd, uint32_t (&w)[2]) {
  w[0] = w[1] = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const uint32_t m = dev::encode_magic<KIND, BITS, NAN_SAFE>(v[j], inv[j], mn[j]);
    if constexpr (BITS == 8) w[j / 4] += m << code_bit_offset(j % 4, 8);
    else w[0] += m << code_bit_offset(j, BITS);
  }
  if constexpr (BITS == 8) {
    w[0] -= dev::magic_word_bias<8>(0, 4);
    w[1] -= dev::magic_word_bias<8>(0, 4);
  } else {
    w[0] -= dev::magic_word_bias<BITS>(0, 8);
    if (BITS == 2 && odd) w[0] <<= 8;
  }
}

// (inv, mn) used to encode a group: a poisoned group (NaN scale/min) encodes as 0.
__device__ __forceinline__ void encode_params(float scale, float mn, float& inv_out, float& mn_out) {
  inv_out = inv_scale(scale);
  mn_out = mn == mn ? mn : 0.0f;
}

// Stores a chunk's codes (word pointer `out` = codes as 32-bit words). For 2 bits,
// the two chunks of a word live in lanes l and l^1; the even lane stores the word.
template <int BITS>
__device__ __forceinline__ void store_chunk_shfl(uint32_t* out, int64_t chunk, uint32_t (&w)[2], bool valid) {
  if constexpr (BITS == 2) {
    w[0] |= __shfl_xor_sync(0xffffffffu, w[0], 1);
    if (valid && (chunk & 1) == 0) out[chunk / 2] = w[0];
  } else if constexpr (BITS == 4) {
    if (valid) out[chunk] = w[0];
  } else {
    if (valid) reinterpret_cast<uint2*>(out)[chunk] = make_uint2(w[0], w[1]);
  }
}

// Stores the codes of NCK*8 consecutive channels (NCK chunks from encode_chunk) at
// lane-run index q: a run of NCK*BITS bytes, i.e. 4..32 bytes.
template <int BITS, int NCK>
__device__ __forceinline__ void store_run(uint8_t* codes, int64_t q, const uint32_t (&w)[NCK][2]) {
  constexpr int WORDS = NCK * BITS / 4;
  uint32_t o[WORDS];
#pragma unroll
  for (int k = 0; k < NCK; ++k) {
    if constexpr (BITS == 2) {
      if (k & 1) o[k / 2] |= w[k][0];
      else o[k / 2] = w[k][0];
    } else if constexpr (BITS == 4) {
      o[k] = w[k][0];
    } else {
      o[2 * k] = w[k][0];
      o[2 * k + 1] = w[k][1];
    }
  }
  if constexpr (WORDS == 1) {
    __stcs(reinterpret_cast<unsigned int*>(codes) + q, o[0]);
  } else if constexpr (WORDS == 2) {
    __stcs(reinterpret_cast<uint2*>(codes) + q, make_uint2(o[0], o[1]));
  } else {
#pragma unroll
    for (int i = 0; i < WORDS / 4; ++i)
      __stcs(reinterpret_cast<uint4*>(codes) + q * (WORDS / 4) + i, make_uint4(o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]));
  }
}

// ---- axis = token --------------------------------------------------------------------
// Each lane owns a run of NCK chunks (64 consecutive bytes of one token: 32 channels of a
// 16-bit type, 16 of fp32); a group of G channels is G/(8*NCK) neighbouring lanes that
// reduce their range by shuffles.
template <int KIND>
__host__ __device__ constexpr int token_run_chunks() { return KIND == 0 ? 2 : 4; }

template <int KIND, int BITS, int G>
__global__ void __launch_bounds__(256) quantize_token_kernel(QuantizeArgs a, int64_t nruns) {
  constexpr int NCK = token_run_chunks<KIND>(), L = G / (8 * NCK);
  const int64_t q = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const bool valid = q < nruns;  // nruns is a multiple of L: groups are all-valid or all-invalid
  // The run in registers: floats for fp32, raw 16-byte vectors for 16-bit types.
  using Raw = typename std::conditional<KIND == 0, float[8], uint4>::type;
  Raw raw[NCK];
  float lo, hi;
#pragma unroll
  for (int k = 0; k < NCK; ++k) {
    if constexpr (KIND == 0) {
      if (valid) dev::load8<0>(a.x, (q * NCK + k) * 8, raw[k]);
      else
#pragma unroll
        for (int j = 0; j < 8; ++j) raw[k][j] = 0.0f;
    } else {
      raw[k] = valid ? dev::load_raw<KIND>(a.x, (q * NCK + k) * 8) : make_uint4(0, 0, 0, 0);
    }
  }
  if constexpr (KIND == 0) {
    Range r;
#pragma unroll
    for (int k = 0; k < NCK; ++k)
#pragma unroll
      for (int j = 0; j < 8; ++j) r.add(raw[k][j]);
    lo = r.final_lo();
    hi = r.final_hi();
  } else {
    dev::Range2<KIND> r;
#pragma unroll
    for (int k = 0; k < NCK; ++k) {
      r.add(raw[k].x); r.add(raw[k].y); r.add(raw[k].z); r.add(raw[k].w);
    }
    float l[2], h[2];
    r.finals(l, h);
    lo = fminf(l[0], l[1]);
    hi = fmaxf(h[0], h[1]);
  }
#pragma unroll
  for (int m = 1; m < L; m <<= 1) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, m));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, m));
  }
  Bits<KIND> sb, mb;
  choose_group_params<KIND>(lo, hi, BITS, &sb, &mb);
  if (!valid) return;
  if (q % L == 0) {
    static_cast<Bits<KIND>*>(a.scale)[q / L] = sb;
    static_cast<Bits<KIND>*>(a.mn)[q / L] = mb;
  }
  float inv[8], mn[8];
  {
    float iv, m;
    encode_params(Storage<KIND>::load(sb), Storage<KIND>::load(mb), iv, m);
#pragma unroll
    for (int j = 0; j < 8; ++j) { inv[j] = iv; mn[j] = m; }
  }
  uint32_t w[NCK][2];
#pragma unroll
  for (int k = 0; k < NCK; ++k) {
    float v[8];
    if constexpr (KIND == 0) {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = raw[k][j];
    } else {
      dev::unpack8<KIND>(raw[k], v);
    }
    encode_chunk<KIND, BITS>(v, inv, mn, (k & 1) != 0, w[k]);
  }
  store_run<BITS, NCK>(a.codes, q, w);
}

// ---- axis = channel -----------------------------------------------------------------
// One warp owns G tokens x a slab of CW chunks (8*CW channels). Lane = c + CW*y:
// c picks the chunk, y one of RL row lanes that each hold G/RL rows in registers
// between the range pass and the encode pass. Ranges are combined with a butterfly
// reduce-scatter, after which each row lane owns NCH = 8/RL (at least 1) channels of its
// chunk: it picks their (scale, min) and broadcasts them back. No block barrier.
// Wider slabs (more chunks, fewer row lanes) mean more rows per lane, which amortises
// the per-block work; the widths keep the rows held in registers at <= 64 registers.
template <int KIND, int G>
struct ChannelTile {
  static constexpr int CW = KIND == 0 ? (G <= 64 ? 4 : 2) : (G <= 64 ? 8 : 4);  // chunks per warp row
  static constexpr int RL = 32 / CW;                   // row lanes
  static constexpr int NCH = RL >= 8 ? 1 : 8 / RL;     // channels per lane after the scatter
  // 256-thread blocks resident per SM that the register budget must allow. Without it
  // ptxas gave the 2-bit 16-bit-type G=32 variant 74-76 registers (3 blocks instead of
  // 4), which cost ~15% of bandwidth; held to 64 they spill 4-8 bytes (ptxas warns),
  // which measured faster (84% of copy). G=64/128 hold 8/16 rows a lane and stay at 2
  // (3 blocks for G=128 spilled 200+ bytes; 2-chunk slabs for G=128 ran at 58-68%).
  static constexpr int MIN_BLOCKS = KIND == 0 ? 2 : (G == 32 ? 4 : 2);
};

// One butterfly step: lanes whose y has bit YB keep the upper HALF channels, the others
// the lower HALF, and each combines its half with the partner's copy of that half.
template <int HALF, int YB, int CW>
__device__ __forceinline__ void reduce_scatter_step(float* lo, float* hi, int y) {
  const bool upper = (y & YB) != 0;
#pragma unroll
  for (int i = 0; i < HALF; ++i) {
    const float send_lo = upper ? lo[i] : lo[i + HALF], keep_lo = upper ? lo[i + HALF] : lo[i];
    const float send_hi = upper ? hi[i] : hi[i + HALF], keep_hi = upper ? hi[i + HALF] : hi[i];
    lo[i] = fminf(keep_lo, __shfl_xor_sync(0xffffffffu, send_lo, YB * CW));
    hi[i] = fmaxf(keep_hi, __shfl_xor_sync(0xffffffffu, send_hi, YB * CW));
  }
}

template <int KIND, int G>
struct ChannelWork {
  static constexpr int RPT = G / ChannelTile<KIND, G>::RL;  // rows per lane per token block
  static constexpr int BPW = RPT >= 8 ? 1 : 8 / RPT;        // token blocks per warp: >= 8 rows in flight
};

// STAGE: a CUDA block holds every slab of its token blocks (nslab * ngroups warps), its
// warps write codes into shared memory, and the block then stores whole rows with
// 16-byte vectors. (Direct stores would write 8-32 byte pieces per row and slab:
// partial 32-byte sectors, which cost HBM read-modify-writes.) Used when D is small
// enough for all slabs to fit one block; otherwise codes are stored directly.
template <int KIND, int BITS, int G, bool STAGE>
__global__ void __launch_bounds__(256, ChannelTile<KIND, G>::MIN_BLOCKS) quantize_channel_kernel(QuantizeArgs a, int64_t nwarps, int64_t nblocks) {
  constexpr int CW = ChannelTile<KIND, G>::CW, RL = ChannelTile<KIND, G>::RL, NCH = ChannelTile<KIND, G>::NCH;
  constexpr int RPT = ChannelWork<KIND, G>::RPT, BPW = ChannelWork<KIND, G>::BPW;
  extern __shared__ uint4 stage_smem[];
  const int64_t warp = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  if (!STAGE && warp >= nwarps) return;  // whole warps only (STAGE grids hold no spare warps)
  const int lane = threadIdx.x & 31, c = lane % CW, y = lane / CW;
  const int64_t D = a.D, nchunk = D / 8, nslab = (nchunk + CW - 1) / CW;
  const int64_t block0 = (warp / nslab) * BPW, chunk = (warp % nslab) * CW + c;
  const bool valid = chunk < nchunk;
  const int64_t row_bytes = D * BITS / 8;
  // Staged codes of this warp's token-block group: [BPW*G rows][row_bytes].
  const int group_in_block = (int)((threadIdx.x >> 5) / nslab);
  uint32_t* stage = reinterpret_cast<uint32_t*>(
      reinterpret_cast<uint8_t*>(stage_smem) + (int64_t)group_in_block * BPW * G * row_bytes);

  // All rows of the warp's token blocks are loaded first (raw 16-byte vectors for
  // 16-bit types, floats for fp32) and stay in registers until they are encoded.
  using Raw = typename std::conditional<KIND == 0, float[8], uint4>::type;
  Raw raw[BPW * RPT];
#pragma unroll
  for (int i = 0; i < BPW; ++i) {
    const bool ok = valid && block0 + i < nblocks;
#pragma unroll
    for (int r = 0; r < RPT; ++r) {
      const int64_t e = ((block0 + i) * G + y + r * RL) * D + chunk * 8;
      if constexpr (KIND == 0) {
        if (ok) dev::load8<0>(a.x, e, raw[i * RPT + r]);
        else
#pragma unroll
          for (int j = 0; j < 8; ++j) raw[i * RPT + r][j] = 0.0f;
      } else {
        raw[i * RPT + r] = ok ? dev::load_raw<KIND>(a.x, e) : make_uint4(0, 0, 0, 0);
      }
    }
  }
  auto row_floats = [&](int r, float (&v)[8]) {
    if constexpr (KIND == 0) {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = raw[r][j];
    } else {
      dev::unpack8<KIND>(raw[r], v);
    }
  };
  uint32_t* out = reinterpret_cast<uint32_t*>(a.codes);
#pragma unroll
  for (int i = 0; i < BPW; ++i) {
    const int64_t block = block0 + i;
    if (block >= nblocks) break;  // uniform across the warp
    float lo[8], hi[8];
    if constexpr (KIND == 0) {
      Range rg[8];
#pragma unroll
      for (int r = 0; r < RPT; ++r)
#pragma unroll
        for (int j = 0; j < 8; ++j) rg[j].add(raw[i * RPT + r][j]);
#pragma unroll
      for (int j = 0; j < 8; ++j) { lo[j] = rg[j].final_lo(); hi[j] = rg[j].final_hi(); }
    } else {
      dev::Range2<KIND> rg[4];  // channel pairs (0,1), (2,3), (4,5), (6,7)
#pragma unroll
      for (int r = 0; r < RPT; ++r) {
        const uint4& u = raw[i * RPT + r];
        rg[0].add(u.x); rg[1].add(u.y); rg[2].add(u.z); rg[3].add(u.w);
      }
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        float l[2], h[2];
        rg[p].finals(l, h);
        lo[2 * p] = l[0]; lo[2 * p + 1] = l[1];
        hi[2 * p] = h[0]; hi[2 * p + 1] = h[1];
      }
    }
    if constexpr (RL == 16) {  // fold the upper 8 row lanes first (plain reduce)
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        lo[j] = fminf(lo[j], __shfl_xor_sync(0xffffffffu, lo[j], 8 * CW));
        hi[j] = fmaxf(hi[j], __shfl_xor_sync(0xffffffffu, hi[j], 8 * CW));
      }
    }
    // Scatter over the (up to 3) low bits of y: half 4 on the highest, then 2, then 1.
    constexpr int RL8 = RL > 8 ? 8 : RL;
    reduce_scatter_step<4, RL8 / 2, CW>(lo, hi, y);
    if constexpr (RL8 >= 4) reduce_scatter_step<2, RL8 / 4, CW>(lo, hi, y);
    if constexpr (RL8 >= 8) reduce_scatter_step<1, 1, CW>(lo, hi, y);
    const int y8 = y % RL8, base_ch = y8 * NCH;  // this lane now holds channels base_ch .. +NCH-1
    float my_inv[NCH], my_mn[NCH];
#pragma unroll
    for (int n = 0; n < NCH; ++n) {
      Bits<KIND> sb, mb;
      choose_group_params<KIND>(lo[n], hi[n], BITS, &sb, &mb);
      if (valid && y < RL8) {
        static_cast<Bits<KIND>*>(a.scale)[block * D + chunk * 8 + base_ch + n] = sb;
        static_cast<Bits<KIND>*>(a.mn)[block * D + chunk * 8 + base_ch + n] = mb;
      }
      encode_params(Storage<KIND>::load(sb), Storage<KIND>::load(mb), my_inv[n], my_mn[n]);
    }
    float inv[8], mn[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      inv[j] = __shfl_sync(0xffffffffu, my_inv[j % NCH], c + CW * (j / NCH));
      mn[j] = __shfl_sync(0xffffffffu, my_mn[j % NCH], c + CW * (j / NCH));
    }
    auto encode_rows = [&](auto nan_safe) {
#pragma unroll
      for (int r = 0; r < RPT; ++r) {
        float v[8];
        row_floats(i * RPT + r, v);
        const int64_t ch = (block * G + y + r * RL) * nchunk + chunk;
        uint32_t w[2];
        encode_chunk<KIND, BITS, decltype(nan_safe)::value>(v, inv, mn, (ch & 1) != 0, w);
        if constexpr (STAGE) {
          const int64_t local = (i * G + y + r * RL) * nchunk + chunk;  // chunk index within the stage
          store_chunk_shfl<BITS>(stage, local, w, valid);
        } else {
          store_chunk_shfl<BITS>(out, ch, w, valid);
        }
      }
    };
    // A poisoned group (NaN/Inf inside: inv = 0 and min = 0 from encode_params) is
    // rare: the whole warp then takes the NaN-safe encode; otherwise each element
    // saves one instruction. (A constant group at 0 also matches; it is merely slower.)
    bool my_poison = false;
#pragma unroll
    for (int n = 0; n < NCH; ++n) my_poison |= my_inv[n] == 0.0f && my_mn[n] == 0.0f;
    if (__any_sync(0xffffffffu, my_poison)) encode_rows(std::true_type{});
    else encode_rows(std::false_type{});
  }
  if constexpr (STAGE) {
    __syncthreads();
    // Every token block of the CUDA block is a contiguous run of rows in the codes.
    const int64_t ngroups_here = blockDim.x / 32 / nslab;
    const int64_t first_block = (int64_t)blockIdx.x * ngroups_here * BPW;
    const int64_t valid_blocks = min((int64_t)ngroups_here * BPW, nblocks - first_block);
    const int64_t vecs = valid_blocks * G * row_bytes / 16;
    uint4* dst = reinterpret_cast<uint4*>(a.codes + first_block * G * row_bytes);
    for (int64_t v = threadIdx.x; v < vecs; v += blockDim.x) __stcs(dst + v, stage_smem[v]);
  }
}

// ---- dequantize ---------------------------------------------------------------------
// The packed words holding one 8-channel chunk's codes: 1 word for 2 bits (shared
// with the neighbour chunk), 1 for 4 bits, 2 for 8 bits. Kept raw to save registers.
template <int BITS>
struct ChunkWords {
  uint32_t w[BITS == 8 ? 2 : 1];
};

template <int BITS>
__device__ __forceinline__ ChunkWords<BITS> load_chunk_words(const uint8_t* codes, int64_t chunk) {
  ChunkWords<BITS> cw;
  if constexpr (BITS == 2) {
    cw.w[0] = __ldg(reinterpret_cast<const unsigned int*>(codes) + chunk / 2);
  } else if constexpr (BITS == 4) {
    cw.w[0] = __ldcs(reinterpret_cast<const unsigned int*>(codes) + chunk);
  } else {
    const uint2 t = __ldcs(reinterpret_cast<const uint2*>(codes) + chunk);
    cw.w[0] = t.x;
    cw.w[1] = t.y;
  }
  return cw;
}

// Code of channel j (0..7) of the chunk; `odd` = second chunk of a 2-bit word.
template <int BITS>
__device__ __forceinline__ uint32_t chunk_code(const ChunkWords<BITS>& cw, int j, bool odd) {
  if constexpr (BITS == 2) return (cw.w[0] >> code_bit_offset(j + (odd ? 8 : 0), 2)) & 0x3u;
  else if constexpr (BITS == 4) return (cw.w[0] >> code_bit_offset(j, 4)) & 0xFu;
  else return (cw.w[j / 4] >> code_bit_offset(j % 4, 8)) & 0xFFu;
}

// 8 consecutive metadata values (16-byte aligned for 16-bit types, 32 for fp32) as floats.
template <int MK>
__device__ __forceinline__ void load_meta8(const void* base, int64_t e, float (&v)[8]) {
  if constexpr (MK == 0) {
    const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(base) + e);
    const float4 t0 = __ldg(p), t1 = __ldg(p + 1);
    v[0] = t0.x; v[1] = t0.y; v[2] = t0.z; v[3] = t0.w; v[4] = t1.x; v[5] = t1.y; v[6] = t1.z; v[7] = t1.w;
  } else {
    dev::unpack8<MK>(__ldg(reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(base) + e)), v);
  }
}

template <int OK, int BITS, typename ScaleAt, typename MinAt>
__device__ __forceinline__ void decode_store_chunk(void* out, int64_t chunk, const ChunkWords<BITS>& cw,
                                                   ScaleAt s, MinAt m) {
  const bool odd = (chunk & 1) != 0;
  float v[8];
#pragma unroll
  for (int j = 0; j < 8; ++j)
    v[j] = __fadd_rn(__fmul_rn(dev::code_to_float(chunk_code<BITS>(cw, j, odd)), s(j)), m(j));
  dev::store8<OK>(out, chunk * 8, v);
}

constexpr int kDqThreads = 256, kDqPerThread = 4;

// One thread: 4 chunks spaced a block apart, so every load and store instruction
// of a warp covers consecutive chunks. All loads are issued before any store.
template <int MK, int OK, int BITS>
__global__ void __launch_bounds__(kDqThreads) dequantize_token_kernel(DequantizeArgs a, int64_t nchunks) {
  const int64_t base = (int64_t)blockIdx.x * (kDqThreads * kDqPerThread) + threadIdx.x;
  const int cpg_shift = __ffs(a.group / 8) - 1;  // chunks per group is a power of two
  ChunkWords<BITS> cw[kDqPerThread];
  float s[kDqPerThread], m[kDqPerThread];
#pragma unroll
  for (int k = 0; k < kDqPerThread; ++k) {
    const int64_t chunk = base + k * kDqThreads;
    if (chunk < nchunks) {
      cw[k] = load_chunk_words<BITS>(a.codes, chunk);
      s[k] = Storage<MK>::load(__ldg(static_cast<const Bits<MK>*>(a.scale) + (chunk >> cpg_shift)));
      m[k] = Storage<MK>::load(__ldg(static_cast<const Bits<MK>*>(a.mn) + (chunk >> cpg_shift)));
    }
  }
#pragma unroll
  for (int k = 0; k < kDqPerThread; ++k) {
    const int64_t chunk = base + k * kDqThreads;
    if (chunk < nchunks)
      decode_store_chunk<OK, BITS>(a.out, chunk, cw[k], [&](int) { return s[k]; }, [&](int) { return m[k]; });
  }
}

// One thread: one chunk over the 8 rows of a row group (per-channel metadata read
// once); consecutive threads take consecutive chunks, so each row's stores coalesce.
template <int MK, int OK, int BITS>
__global__ void __launch_bounds__(kDqThreads) dequantize_channel_kernel(DequantizeArgs a, int64_t nitems) {
  const int64_t item = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (item >= nitems) return;
  const int64_t nchunk = a.D / 8;
  const int64_t chunk = item % nchunk, row0 = (item / nchunk) * 8;
  const int64_t mi = (row0 / a.group) * a.D + chunk * 8;
  float s[8], m[8];
  load_meta8<MK>(a.scale, mi, s);
  load_meta8<MK>(a.mn, mi, m);
  ChunkWords<BITS> cw[8];
#pragma unroll
  for (int r = 0; r < 8; ++r) cw[r] = load_chunk_words<BITS>(a.codes, (row0 + r) * nchunk + chunk);
#pragma unroll
  for (int r = 0; r < 8; ++r)
    decode_store_chunk<OK, BITS>(a.out, (row0 + r) * nchunk + chunk, cw[r], [&](int j) { return s[j]; },
                                 [&](int j) { return m[j]; });
}

template <int KIND, int BITS>
cudaError_t launch_quantize(const QuantizeArgs& a, cudaStream_t st) {
  if (a.axis == Axis::Token) {
    const int64_t nruns = a.outer * a.T * (a.D / (8 * token_run_chunks<KIND>()));
    const unsigned grid = (unsigned)((nruns + 255) / 256);
    switch (a.group) {
      case 32: quantize_token_kernel<KIND, BITS, 32><<<grid, 256, 0, st>>>(a, nruns); break;
      case 64: quantize_token_kernel<KIND, BITS, 64><<<grid, 256, 0, st>>>(a, nruns); break;
      default: quantize_token_kernel<KIND, BITS, 128><<<grid, 256, 0, st>>>(a, nruns); break;
    }
  } else {
    const int64_t nblocks = a.outer * (a.T / a.group);
    const int64_t row_bytes = a.D * BITS / 8;
    auto launch = [&](auto direct, auto staged, int bpw, int cw) {
      const int64_t nslab = (a.D / 8 + cw - 1) / cw;
      const bool stage = nslab <= 8;
      const int64_t ngroups = (nblocks + bpw - 1) / bpw;  // token-block groups (one per warp row of slabs)
      if (stage) {
        const int per_block = (int)(8 / nslab);  // token-block groups per CUDA block
        const size_t smem = (size_t)per_block * bpw * a.group * row_bytes;
        const int64_t nwarps = (ngroups + per_block - 1) / per_block * per_block * nslab;
        cudaFuncSetAttribute(staged, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        staged<<<(unsigned)(nwarps / (per_block * nslab)), (unsigned)(32 * per_block * nslab), smem, st>>>(
            a, nwarps, nblocks);
      } else {
        const int64_t nwarps = ngroups * nslab;
        direct<<<(unsigned)((nwarps + 7) / 8), 256, 0, st>>>(a, nwarps, nblocks);
      }
    };
#define KV_CH(G) launch(quantize_channel_kernel<KIND, BITS, G, false>, quantize_channel_kernel<KIND, BITS, G, true>, \
                        ChannelWork<KIND, G>::BPW, ChannelTile<KIND, G>::CW)
    switch (a.group) {
      case 32: KV_CH(32); break;
      case 64: KV_CH(64); break;
      default: KV_CH(128); break;
    }
#undef KV_CH
  }
  return cudaGetLastError();
}

template <int MK, int OK>
cudaError_t launch_dequantize_bits(const DequantizeArgs& a, cudaStream_t st) {
  const bool tok = a.axis == Axis::Token;
  const int64_t n = tok ? a.outer * a.T * (a.D / 8) : a.outer * (a.T / 8) * (a.D / 8);
  const int64_t per_block = tok ? kDqThreads * kDqPerThread : kDqThreads;
  const unsigned grid = (unsigned)((n + per_block - 1) / per_block);
#define KV_DQ(B)                                                           \
  if (tok) dequantize_token_kernel<MK, OK, B><<<grid, kDqThreads, 0, st>>>(a, n); \
  else dequantize_channel_kernel<MK, OK, B><<<grid, kDqThreads, 0, st>>>(a, n);
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
