// Timing helpers for the CUDA microbenchmarks: CUDA events around one launch,
// an L2 flush between launches, medians, and the device-to-device copy ceiling.
#pragma once
#include <cuda_runtime.h>
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#define BENCH_CHECK(call)                                                                  \
  do {                                                                                     \
    cudaError_t e_ = (call);                                                               \
    if (e_ != cudaSuccess) {                                                               \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

namespace bench {

// A per-element hash for the benches' deterministic fill kernels (element i, stream seed).
__host__ __device__ inline uint32_t mix_hash(int64_t i, uint32_t seed) {
  uint32_t h = (uint32_t)i * 2654435761u ^ seed;
  h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
  return h;
}

// Reads every 16 bytes of p (n16 chunks) and writes one word only if the impossible
// happens, so the loads cannot be dropped: evicts L2 without leaving dirty lines behind.
__global__ void read_flush_kernel(const uint4* p, int64_t n16, unsigned* sink) {
  uint32_t x = 0;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n16; i += (int64_t)gridDim.x * blockDim.x) {
    const uint4 v = p[i];
    x |= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (x == 0xFFFFFFFFu) *sink = x;
}

struct Timer {
  void* flush_buf = nullptr;
  size_t flush_bytes = 0;
  cudaEvent_t start{}, stop{};
  Timer() {
    int dev = 0, l2 = 0;
    BENCH_CHECK(cudaGetDevice(&dev));
    BENCH_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
    flush_bytes = (size_t)std::max(l2, 1 << 20) * 4;  // 4x L2: evicts everything
    BENCH_CHECK(cudaMalloc(&flush_buf, flush_bytes + 16));
    BENCH_CHECK(cudaMemset(flush_buf, 1, flush_bytes));
    BENCH_CHECK(cudaEventCreate(&start));
    BENCH_CHECK(cudaEventCreate(&stop));
  }
  ~Timer() {
    cudaFree(flush_buf);
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
  // Evicts L2 by reading 4x its size. A written flush (memset) leaves L2 dirty, and the
  // write-back of those lines then runs inside the timed launch (a decode step's L2
  // holds mostly clean lines). The same flush as bench/timing.py's clean_flush.
  void evict_l2() {
    read_flush_kernel<<<1024, 256>>>(static_cast<const uint4*>(flush_buf), (int64_t)(flush_bytes / 16),
                                     reinterpret_cast<unsigned*>(static_cast<uint8_t*>(flush_buf) + flush_bytes));
  }
  // Median milliseconds of `fn` over `iters` timed launches after `warmup` untimed
  // ones, with L2 flushed before each timed launch.
  double median_ms(const std::function<void()>& fn, int warmup = 3, int iters = 20) {
    for (int i = 0; i < warmup; ++i) fn();
    BENCH_CHECK(cudaDeviceSynchronize());
    std::vector<float> ms;
    for (int i = 0; i < iters; ++i) {
      evict_l2();
      BENCH_CHECK(cudaEventRecord(start));
      fn();
      BENCH_CHECK(cudaEventRecord(stop));
      BENCH_CHECK(cudaEventSynchronize(stop));
      BENCH_CHECK(cudaGetLastError());
      float t = 0;
      BENCH_CHECK(cudaEventElapsedTime(&t, start, stop));
      ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
  }
};

// Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written.
inline double copy_bandwidth_gbs(Timer& timer, size_t bytes) {
  void *a = nullptr, *b = nullptr;
  BENCH_CHECK(cudaMalloc(&a, bytes));
  BENCH_CHECK(cudaMalloc(&b, bytes));
  BENCH_CHECK(cudaMemset(a, 1, bytes));
  const double ms = timer.median_ms([&] { BENCH_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); });
  BENCH_CHECK(cudaFree(a));
  BENCH_CHECK(cudaFree(b));
  return 2.0 * (double)bytes / (ms * 1e-3) / 1e9;
}

inline std::string gpu_name() {
  int dev = 0;
  cudaDeviceProp p{};
  BENCH_CHECK(cudaGetDevice(&dev));
  BENCH_CHECK(cudaGetDeviceProperties(&p, dev));
  return p.name;
}

}  // namespace bench
