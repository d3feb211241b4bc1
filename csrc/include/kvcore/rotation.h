// Randomized Hadamard rotation shared by the CPU and CUDA kernels (and mirrored by
// kvcore.reference_corrections): y = x diag(s) H / sqrt(D), H the Sylvester Hadamard
// matrix, s_d = +-1 from a hash of (seed, d). The signs are a pure function of
// (seed, d), so a cache and its queries rotate identically with nothing stored.
#pragma once
#include <cstdint>
#include "host_device.h"

namespace kvcore {

// splitmix64 finaliser: a well-mixed 64-bit hash.
KV_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// +1 or -1 for channel d under `seed`: the top bit of the hash.
KV_HD float rotation_sign(uint64_t seed, int64_t d) {
  return (mix64(seed * 0x9E3779B97F4A7C15ull + (uint64_t)d + 1) >> 63) ? -1.0f : 1.0f;
}

// In-place unnormalised fast Walsh-Hadamard transform of v[0..n) (n a power of two):
// butterfly stages h = 1, 2, 4, ..., each pair (lower + upper, lower - upper). The CPU
// and CUDA kernels both call it, so they do the same operations in the same order.
KV_HD void walsh_hadamard_inplace(float* v, int n) {
  for (int h = 1; h < n; h <<= 1)
    for (int i = 0; i < n; i += 2 * h)
      for (int j = i; j < i + h; ++j) {
        const float u = v[j], w = v[j + h];
        v[j] = u + w;
        v[j + h] = u - w;
      }
}

}  // namespace kvcore
