// Reference-quality CPU kernels for bit-packed KV quantization. They share all
// numerics with the CUDA kernels (quant_format.h), so codes match bit for bit.
#include <cstring>
#include <vector>
#include "../quantize_kv.h"

namespace kvcore {
namespace {

template <int KIND>
using Bits = typename Storage<KIND>::bits_t;

template <int KIND>
float load_at(const void* p, int64_t i) {
  return Storage<KIND>::load(static_cast<const Bits<KIND>*>(p)[i]);
}

// Packs D codes (one per channel) of one token into D*bits/32 little-endian words.
void pack_row(const uint32_t* codes, int64_t D, int bits, uint8_t* out) {
  const int per_word = 32 / bits;
  for (int64_t w = 0; w < D / per_word; ++w) {
    uint32_t word = 0;
    for (int j = 0; j < per_word; ++j) word |= codes[w * per_word + j] << code_bit_offset(j, bits);
    for (int k = 0; k < 4; ++k) out[w * 4 + k] = (uint8_t)(word >> (8 * k));
  }
}

uint32_t code_at(const uint8_t* row, int64_t d, int bits) {
  const int per_word = 32 / bits;
  const int64_t w = d / per_word;
  const uint32_t word = (uint32_t)row[w * 4] | ((uint32_t)row[w * 4 + 1] << 8) |
                        ((uint32_t)row[w * 4 + 2] << 16) | ((uint32_t)row[w * 4 + 3] << 24);
  return (word >> code_bit_offset((int)(d % per_word), bits)) & ((1u << bits) - 1u);
}

template <int KIND>
void quantize_token_rows(const QuantizeArgs& a, int64_t begin, int64_t end) {
  const int64_t D = a.D, ngroups = D / a.group, row_bytes = D * a.bits / 8;
  std::vector<uint32_t> codes(D);
  auto* sc = static_cast<Bits<KIND>*>(a.scale);
  auto* mn = static_cast<Bits<KIND>*>(a.mn);
  for (int64_t r = begin; r < end; ++r) {
    for (int64_t g = 0; g < ngroups; ++g) {
      RangeAcc acc;
      for (int64_t j = 0; j < a.group; ++j) acc.add(load_at<KIND>(a.x, r * D + g * a.group + j));
      Bits<KIND> sb, mb;
      choose_group_params<KIND>(acc.lo, acc.hi, a.bits, &sb, &mb);
      sc[r * ngroups + g] = sb;
      mn[r * ngroups + g] = mb;
      const float inv = inv_scale(Storage<KIND>::load(sb)), m = Storage<KIND>::load(mb);
      for (int64_t j = 0; j < a.group; ++j) {
        const int64_t d = g * a.group + j;
        codes[d] = encode_code(load_at<KIND>(a.x, r * D + d), inv, m, a.bits);
      }
    }
    pack_row(codes.data(), D, a.bits, a.codes + r * row_bytes);
  }
}

// One unit = one block of `group` tokens of one outer index, all channels.
template <int KIND>
void quantize_channel_blocks(const QuantizeArgs& a, int64_t begin, int64_t end) {
  const int64_t D = a.D, G = a.group, row_bytes = D * a.bits / 8;
  std::vector<float> s(D), m(D);  // s holds inv_scale
  std::vector<uint32_t> codes(D);
  auto* sc = static_cast<Bits<KIND>*>(a.scale);
  auto* mn = static_cast<Bits<KIND>*>(a.mn);
  for (int64_t u = begin; u < end; ++u) {
    const int64_t row0 = u * G;  // rows of [outer*T, D]; blocks never straddle outer since T % G == 0
    for (int64_t d = 0; d < D; ++d) {
      RangeAcc acc;
      for (int64_t t = 0; t < G; ++t) acc.add(load_at<KIND>(a.x, (row0 + t) * D + d));
      Bits<KIND> sb, mb;
      choose_group_params<KIND>(acc.lo, acc.hi, a.bits, &sb, &mb);
      sc[u * D + d] = sb;
      mn[u * D + d] = mb;
      s[d] = inv_scale(Storage<KIND>::load(sb));
      m[d] = Storage<KIND>::load(mb);
    }
    for (int64_t t = 0; t < G; ++t) {
      for (int64_t d = 0; d < D; ++d)
        codes[d] = encode_code(load_at<KIND>(a.x, (row0 + t) * D + d), s[d], m[d], a.bits);
      pack_row(codes.data(), D, a.bits, a.codes + (row0 + t) * row_bytes);
    }
  }
}

template <int MK, int OK>
void dequantize_rows(const DequantizeArgs& a, int64_t begin, int64_t end) {
  const int64_t D = a.D, G = a.group, row_bytes = D * a.bits / 8;
  auto* out = static_cast<Bits<OK>*>(a.out);
  for (int64_t r = begin; r < end; ++r) {
    const uint8_t* row = a.codes + r * row_bytes;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t mi = a.axis == Axis::Token ? r * (D / G) + d / G : (r / G) * D + d;
      const float s = load_at<MK>(a.scale, mi), m = load_at<MK>(a.mn, mi);
      out[r * D + d] = Storage<OK>::store(decode_code(code_at(row, d, a.bits), s, m));
    }
  }
}

template <int MK>
void dequantize_dispatch_out(const DequantizeArgs& a, int64_t b, int64_t e) {
  switch (a.out_dtype) {
    case DType::F32: return dequantize_rows<MK, 0>(a, b, e);
    case DType::F16: return dequantize_rows<MK, 1>(a, b, e);
    case DType::BF16: return dequantize_rows<MK, 2>(a, b, e);
  }
}

}  // namespace

int64_t quantize_kv_cpu_units(const QuantizeArgs& a) {
  return a.axis == Axis::Token ? a.outer * a.T : a.outer * (a.T / a.group);
}

void quantize_kv_cpu(const QuantizeArgs& a, int64_t begin, int64_t end) {
  const bool tok = a.axis == Axis::Token;
  switch (a.dtype) {
    case DType::F32: return tok ? quantize_token_rows<0>(a, begin, end) : quantize_channel_blocks<0>(a, begin, end);
    case DType::F16: return tok ? quantize_token_rows<1>(a, begin, end) : quantize_channel_blocks<1>(a, begin, end);
    case DType::BF16: return tok ? quantize_token_rows<2>(a, begin, end) : quantize_channel_blocks<2>(a, begin, end);
  }
}

int64_t dequantize_kv_cpu_units(const DequantizeArgs& a) { return a.outer * a.T; }

void dequantize_kv_cpu(const DequantizeArgs& a, int64_t begin, int64_t end) {
  switch (a.meta_dtype) {
    case DType::F32: return dequantize_dispatch_out<0>(a, begin, end);
    case DType::F16: return dequantize_dispatch_out<1>(a, begin, end);
    case DType::BF16: return dequantize_dispatch_out<2>(a, begin, end);
  }
}

}  // namespace kvcore
