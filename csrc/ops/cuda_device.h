// Device queries for the CUDA glue, cached per device (no host synchronisation).
#pragma once
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <array>
#include <atomic>

namespace kvcore {

// Number of multiprocessors of `device`; `op` names the caller in the error.
inline int sm_count(int device, const char* op) {
  static std::array<std::atomic<int>, 64> cache{};  // per device, filled on first use
  if (device < 0 || device >= (int)cache.size()) device = 0;
  int n = cache[device].load();
  if (n == 0) {
    TORCH_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) == cudaSuccess, op,
                ": could not query the multiprocessor count");
    cache[device].store(n);
  }
  return n;
}

}  // namespace kvcore
