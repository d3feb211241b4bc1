// Instantiations of the packed decode kernel for bf16 caches at 2 bits, head_dim 64.
#include "decode_packed.cuh"

namespace kvcore {
namespace decode_detail {
KVCORE_DECODE_PACKED_ENTRY_POINTS(, 2, 2, 64)
}  // namespace decode_detail
}  // namespace kvcore
