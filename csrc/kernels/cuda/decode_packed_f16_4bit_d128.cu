// Instantiations of the packed decode kernel for fp16 caches at 4 bits, head_dim 128.
#include "decode_packed.cuh"

namespace kvcore {
namespace decode_detail {
KVCORE_DECODE_PACKED_ENTRY_POINTS(, 1, 4, 128)
}  // namespace decode_detail
}  // namespace kvcore
