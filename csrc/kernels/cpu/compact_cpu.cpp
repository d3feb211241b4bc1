// CPU kernel of kvcore.compact_kv: per row, validate the kept indices, then move the
// kept tokens to the front with memmove (the source never lies behind the target).
#include <cstring>

#include "../eviction.h"

namespace kvcore {

bool compact_kv_cpu(const CompactArgs& a, int64_t begin, int64_t end, int64_t* bad_row) {
  bool ok = true;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = a.count[r];
    const int32_t* idx = a.idx + r * a.k;
    bool row_ok = n >= 0 && n <= a.k;
    for (int64_t i = 0; row_ok && i < n; ++i)
      row_ok = idx[i] >= 0 && idx[i] < a.T && (i == 0 || idx[i] > idx[i - 1]);
    if (!row_ok) {
      if (ok) *bad_row = r;
      ok = false;
      continue;
    }
    uint8_t* row = a.x + r * a.T * a.token_bytes;
    for (int64_t i = 0; i < n; ++i)
      if (idx[i] != i) std::memmove(row + i * a.token_bytes, row + (int64_t)idx[i] * a.token_bytes, a.token_bytes);
  }
  return ok;
}

}  // namespace kvcore
