// CPU kernel of kvcore.topk_select: nth_element under (score descending, position
// descending), then the chosen positions sorted ascending. O(L) per row on average.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../eviction.h"

namespace kvcore {
namespace {

template <typename S>
void rows_of(const TopkArgs& a, int64_t begin, int64_t end) {
  const S* scores = static_cast<const S*>(a.scores);
  std::vector<int32_t> pos;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t len = std::min<int64_t>(std::max<int32_t>(a.lengths[r], 0), a.L);
    const S* s = scores + r * a.L;
    // a before b when its score is higher (NaN lowest), or equal and its position later
    auto better = [&](int32_t x, int32_t y) {
      const S sx = s[x], sy = s[y];
      if constexpr (std::is_floating_point_v<S>) {
        if (std::isnan(sx) || std::isnan(sy)) return std::isnan(sy) && (!std::isnan(sx) || x > y);
      }
      return sx > sy || (sx == sy && x > y);
    };
    pos.resize(len);
    for (int64_t t = 0; t < len; ++t) pos[t] = (int32_t)t;
    const int64_t n = std::min<int64_t>(a.k, len);
    if (n < len) std::nth_element(pos.begin(), pos.begin() + n, pos.end(), better);
    std::sort(pos.begin(), pos.begin() + n);
    int32_t* out = a.idx + r * a.k;
    for (int64_t i = 0; i < a.k; ++i) out[i] = i < n ? pos[i] : -1;
    a.count[r] = (int32_t)n;
  }
}

}  // namespace

void topk_select_cpu(const TopkArgs& a, int64_t begin, int64_t end) {
  if (a.is_float) rows_of<float>(a, begin, end);
  else rows_of<int32_t>(a, begin, end);
}

}  // namespace kvcore
