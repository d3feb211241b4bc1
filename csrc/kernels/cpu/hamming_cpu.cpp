// CPU kernel of kvcore.hamming_scores: per (sequence, KV head) row, popcounts of the
// XOR with each query head of the group.
#include <bitset>

#include "../eviction.h"

namespace kvcore {

void hamming_scores_cpu(const HammingArgs& a, int64_t row_begin, int64_t row_end) {
  const int gq = a.Hq / a.Hkv, nbits = 32 * a.W;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int b = (int)(row / a.Hkv), g = (int)(row % a.Hkv);
    const int64_t len = a.lengths[b] < 0 ? 0 : (a.lengths[b] > a.T ? a.T : a.lengths[b]);
    const uint32_t* q = a.q_sig + ((int64_t)b * a.Hq + (int64_t)g * gq) * a.W;
    const uint32_t* k = a.k_sig + row * a.T * a.W;
    int32_t* out = a.scores + row * a.T;
    for (int64_t t = 0; t < a.T; ++t) {
      if (t >= len) {
        out[t] = -1;
        continue;
      }
      int32_t s = 0;
      for (int h = 0; h < gq; ++h) {
        int diff = 0;
        for (int w = 0; w < a.W; ++w) diff += (int)std::bitset<32>(q[h * a.W + w] ^ k[t * a.W + w]).count();
        s += nbits - diff;
      }
      out[t] = s;
    }
  }
}

}  // namespace kvcore
