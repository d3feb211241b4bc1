// CUDA kernels of kvcore.compact_kv. A first kernel validates the rows and flags the
// first bad one in a device int; a second moves the kept tokens in place, one CTA a
// row, and moves nothing at all if any row was flagged. The glue reads the flag after
// both (no idle gap between them) and raises if it is set.
//
// Moving in place without a scratch buffer: idx is strictly increasing with idx[i] >= i,
// so walking a row front to back in chunks (read the chunk's sources, barrier, write
// its slots) is safe. A slot written in chunk c is never the source of a later chunk
// (their sources are >= their own slots, past chunk c's), and every source of chunk c
// that a later chunk overwrites was read before chunk c's barrier. Tokens with
// idx[i] == i stay put. Copies use 16-, 4- or 1-byte units, the widest that divides
// token_bytes and the pointer's alignment.
#include <algorithm>
#include <climits>

#include "../eviction.h"

namespace kvcore {
namespace {

constexpr int kValidateThreads = 256;
constexpr int kMoveThreads = 1024;
constexpr int kUnroll = 8;  // units in flight a thread per chunk: 128 KB a CTA at 16 bytes

// One CTA per row: count in [0, k] and idx[:count] strictly increasing in [0, T).
// flag = max over bad rows of rows - r (0: none), so the first bad row wins.
__global__ void __launch_bounds__(kValidateThreads) validate_kernel(CompactArgs a, int32_t* flag) {
  const int64_t r = blockIdx.x;
  const int64_t n = a.count[r];
  const int32_t* idx = a.idx + r * a.k;
  bool ok = n >= 0 && n <= a.k;
  if (ok)
    for (int64_t i = threadIdx.x; i < n; i += kValidateThreads)
      ok = ok && idx[i] >= 0 && idx[i] < a.T && (i == 0 || idx[i] > idx[i - 1]);
  if (!ok) atomicMax(flag, (int32_t)(a.rows - r));  // rows <= INT32_MAX (checked by the glue)
}

template <typename V>
__global__ void __launch_bounds__(kMoveThreads) move_kernel(CompactArgs a, const int32_t* flag) {
  if (*flag != 0) return;  // a bad row somewhere: x stays as it was
  const int64_t r = blockIdx.x;
  const int64_t n = a.count[r];
  const int32_t* idx = a.idx + r * a.k;
  const int64_t units = a.token_bytes / (int64_t)sizeof(V);  // per token
  const int64_t total = n * units;
  V* x = reinterpret_cast<V*>(a.x + r * a.T * a.token_bytes);
  for (int64_t base = 0; base < total; base += (int64_t)kMoveThreads * kUnroll) {
    V v[kUnroll];
    int64_t to[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t e = base + (int64_t)u * kMoveThreads + threadIdx.x;
      to[u] = -1;
      if (e < total) {
        const int64_t i = e / units, w = e - i * units;
        const int64_t src = idx[i];
        if (src != i) {
          v[u] = x[src * units + w];
          to[u] = i * units + w;
        }
      }
    }
    __syncthreads();  // the chunk's sources are read before any of its slots is written
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (to[u] >= 0) x[to[u]] = v[u];
  }
}

template <typename V>
cudaError_t launch_move(const CompactArgs& a, const int32_t* flag, cudaStream_t st) {
  move_kernel<V><<<(unsigned)a.rows, kMoveThreads, 0, st>>>(a, flag);
  return cudaGetLastError();
}

}  // namespace

cudaError_t compact_kv_cuda(const CompactArgs& a, int32_t* flag, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  cudaError_t err = cudaMemsetAsync(flag, 0, sizeof(int32_t), stream);
  if (err != cudaSuccess) return err;
  validate_kernel<<<(unsigned)a.rows, kValidateThreads, 0, stream>>>(a, flag);
  err = cudaGetLastError();
  if (err != cudaSuccess || a.k == 0 || a.token_bytes == 0) return err;
  const uintptr_t p = reinterpret_cast<uintptr_t>(a.x);
  if (a.token_bytes % 16 == 0 && p % 16 == 0) return launch_move<uint4>(a, flag, stream);
  if (a.token_bytes % 4 == 0 && p % 4 == 0) return launch_move<uint32_t>(a, flag, stream);
  return launch_move<uint8_t>(a, flag, stream);
}

}  // namespace kvcore
