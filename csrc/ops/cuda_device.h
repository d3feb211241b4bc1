// Device queries for the CUDA glue, cached per device (no host synchronisation).
#pragma once
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <array>
#include <atomic>

namespace kvcore {

template <cudaDeviceAttr kAttr>
inline int cached_device_attribute(int device, const char* op, const char* what) {
  static std::array<std::atomic<int>, 64> cache{};  // per device, filled on first use
  if (device < 0 || device >= (int)cache.size()) device = 0;
  int n = cache[device].load();
  if (n == 0) {
    TORCH_CHECK(cudaDeviceGetAttribute(&n, kAttr, device) == cudaSuccess, op, ": could not query the ", what);
    cache[device].store(n);
  }
  return n;
}

// Number of multiprocessors of `device`; `op` names the caller in the error.
inline int sm_count(int device, const char* op) {
  return cached_device_attribute<cudaDevAttrMultiProcessorCount>(device, op, "multiprocessor count");
}

// Major compute capability of `device` (9 on Hopper: thread-block clusters).
inline int compute_capability_major(int device, const char* op) {
  return cached_device_attribute<cudaDevAttrComputeCapabilityMajor>(device, op, "compute capability");
}

// Shared memory a block may opt in to on `device`, in bytes (227 KB on an H100).
inline int max_shared_memory_optin(int device, const char* op) {
  return cached_device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(device, op, "opt-in shared memory size");
}

}  // namespace kvcore
