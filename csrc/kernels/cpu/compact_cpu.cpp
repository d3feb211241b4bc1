// CPU kernel of kvcore.compact_kv: validate every row, then move the kept tokens of
// each row to the front with memmove (the source never lies behind the target).
#include <cstring>

#include "../eviction.h"

namespace kvcore {

int64_t compact_kv_first_bad_cpu(const CompactArgs& a) {
  for (int64_t r = 0; r < a.rows; ++r) {  // O(rows * k) integer compares: no need for threads
    const int64_t n = a.count[r];
    const int32_t* idx = a.idx + r * a.k;
    bool ok = n >= 0 && n <= a.k;
    for (int64_t i = 0; ok && i < n; ++i) ok = idx[i] >= 0 && idx[i] < a.T && (i == 0 || idx[i] > idx[i - 1]);
    if (!ok) return r;
  }
  return -1;
}

void compact_kv_cpu(const CompactArgs& a, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const int32_t* idx = a.idx + r * a.k;
    uint8_t* row = a.x + r * a.T * a.token_bytes;
    for (int64_t i = 0; i < a.count[r]; ++i)
      if (idx[i] != i) std::memmove(row + i * a.token_bytes, row + (int64_t)idx[i] * a.token_bytes, a.token_bytes);
  }
}

}  // namespace kvcore
