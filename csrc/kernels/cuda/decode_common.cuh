// Shared by the decode-attention CUDA translation units: the split plan, the
// constants of the work split, and the per-(dtype, bits) entry points of the packed
// kernel (defined in decode_packed.cuh, instantiated in decode_packed_*.cu so that
// the many kernel instantiations compile in parallel).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "../decode_attention.h"

namespace kvcore {
namespace decode_detail {

constexpr int kWarps = 4;         // warps per split CTA
constexpr int kHeadsPerPass = 8;  // query heads per CTA (the mma N dimension)
constexpr int kStages = 2;        // cp.async pipeline depth per warp (2 keeps 4+ CTAs per SM)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct SplitParams {
  int64_t chunk;   // packed tokens per CTA (multiple of kWarps * TT and of the group)
  int nsplit;      // CTAs per (batch, KV head, head pass)
  int passes;      // head passes per KV head: ceil(Gq / 8)
  int np;          // partials per query head: nsplit + 1 (the full-precision split)
  float* ws_o;     // [B, Hq, np, D]
  float* ws_m;     // [B, Hq, np]   running max (base 2)
  float* ws_l;     // [B, Hq, np]   sum of exp2
};

// Entry points of the packed kernel for one (KIND: 1 fp16, 2 bf16; BITS) pair.
template <int KIND, int BITS>
int packed_ctas_per_sm(const DecodeArgs& a);  // CTAs of the instantiation serving `a` per SM
template <int KIND, int BITS>
int packed_tile_tokens(const DecodeArgs& a);  // tokens per pipeline stage
template <int KIND, int BITS>
cudaError_t packed_launch(const DecodeArgs& a, const SplitParams& sp, cudaStream_t st);

#define KVCORE_DECODE_PACKED_ENTRY_POINTS(SPEC, K, B)                                   \
  SPEC template int packed_ctas_per_sm<K, B>(const DecodeArgs&);                       \
  SPEC template int packed_tile_tokens<K, B>(const DecodeArgs&);                       \
  SPEC template cudaError_t packed_launch<K, B>(const DecodeArgs&, const SplitParams&, cudaStream_t);
KVCORE_DECODE_PACKED_ENTRY_POINTS(extern, 1, 2)
KVCORE_DECODE_PACKED_ENTRY_POINTS(extern, 1, 4)
KVCORE_DECODE_PACKED_ENTRY_POINTS(extern, 2, 2)
KVCORE_DECODE_PACKED_ENTRY_POINTS(extern, 2, 4)

}  // namespace decode_detail
}  // namespace kvcore
