// CUDA kernels of kvcore.compact_kv. Moving tokens in place in parallel is unsafe (a
// token's source slot can be another token's target), so the move goes through a
// scratch buffer [rows, k, token_bytes]: one kernel gathers the kept tokens into it,
// a second copies them back to the front of each row. A third kernel validates the
// rows first and records the first bad row in a device int, which the glue reads.
// Copies use 16-, 4- or 1-byte units, the widest that divides token_bytes and the
// pointers' alignment.
#include <algorithm>
#include <climits>

#include "../eviction.h"

namespace kvcore {
namespace {

constexpr int kThreads = 256;

// One CTA per row: count in [0, k] and idx[:count] strictly increasing in [0, T).
__global__ void __launch_bounds__(kThreads) validate_kernel(CompactArgs a, int32_t* first_bad) {
  const int64_t r = blockIdx.x;
  const int64_t n = a.count[r];
  const int32_t* idx = a.idx + r * a.k;
  bool ok = n >= 0 && n <= a.k;
  if (ok)
    for (int64_t i = threadIdx.x; i < n; i += kThreads)
      ok = ok && idx[i] >= 0 && idx[i] < a.T && (i == 0 || idx[i] > idx[i - 1]);
  if (!ok) atomicMin(first_bad, (int32_t)r);  // rows <= INT32_MAX (checked by the glue)
}

// For every row r and kept token i < count[r] that is not already in place, copy V-byte
// unit u of token idx[r][i] from `from` to `to`. gather: x -> scratch slot i; back:
// scratch slot i -> x slot i. Tokens with idx[i] == i stay put (nobody else writes slot i).
template <typename V, bool kGather>
__global__ void __launch_bounds__(kThreads) move_kernel(CompactArgs a, uint8_t* scratch) {
  const int64_t r = blockIdx.x;  // chunks of a row along y (few; rows may exceed 65535)
  const int64_t n = a.count[r];
  const int32_t* idx = a.idx + r * a.k;
  const int64_t units = a.token_bytes / (int64_t)sizeof(V);  // per token
  V* x = reinterpret_cast<V*>(a.x + r * a.T * a.token_bytes);
  V* s = reinterpret_cast<V*>(scratch + r * a.k * a.token_bytes);
  for (int64_t u = (int64_t)blockIdx.y * kThreads + threadIdx.x; u < n * units; u += (int64_t)gridDim.y * kThreads) {
    const int64_t i = u / units, w = u - i * units;
    const int64_t src = idx[i];
    if (src == i) continue;
    if (kGather) s[i * units + w] = x[src * units + w];
    else x[i * units + w] = s[i * units + w];
  }
}

template <typename V>
cudaError_t launch_moves(const CompactArgs& a, uint8_t* scratch, int num_sms, cudaStream_t st) {
  const int64_t units = a.k * (a.token_bytes / (int64_t)sizeof(V));  // most a row can move
  const int64_t want = std::max<int64_t>(1, (int64_t)num_sms * 8 / std::max<int64_t>(a.rows, 1));
  const dim3 grid((unsigned)a.rows,
                  (unsigned)std::max<int64_t>(1, std::min<int64_t>((units + kThreads - 1) / kThreads, want)));
  move_kernel<V, true><<<grid, kThreads, 0, st>>>(a, scratch);
  move_kernel<V, false><<<grid, kThreads, 0, st>>>(a, scratch);
  return cudaGetLastError();
}

}  // namespace

cudaError_t compact_kv_validate_cuda(const CompactArgs& a, int32_t* first_bad, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  validate_kernel<<<(unsigned)a.rows, kThreads, 0, stream>>>(a, first_bad);
  return cudaGetLastError();
}

cudaError_t compact_kv_move_cuda(const CompactArgs& a, uint8_t* scratch, int num_sms, cudaStream_t stream) {
  if (a.rows == 0 || a.k == 0 || a.token_bytes == 0) return cudaSuccess;
  const uintptr_t p = reinterpret_cast<uintptr_t>(a.x) | reinterpret_cast<uintptr_t>(scratch);
  if (a.token_bytes % 16 == 0 && p % 16 == 0) return launch_moves<uint4>(a, scratch, num_sms, stream);
  if (a.token_bytes % 4 == 0 && p % 4 == 0) return launch_moves<uint32_t>(a, scratch, num_sms, stream);
  return launch_moves<uint8_t>(a, scratch, num_sms, stream);
}

}  // namespace kvcore
