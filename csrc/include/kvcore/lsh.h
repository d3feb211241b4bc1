// The seeded projection of kvcore.lsh_signature, shared by the CPU and CUDA kernels
// (and mirrored by kvcore.reference_eviction). Entry (d, j) of the D x nbits matrix is
// an Irwin-Hall sum of four 16-bit uniforms from a hash of (seed, d, j), centred and
// scaled to unit variance: bell-shaped like a Gaussian, and computed with integers that
// float32 represents exactly, so every kernel builds the same matrix bit for bit
// (a Box-Muller Gaussian would depend on each platform's log and cos).
#pragma once
#include <cstdint>
#include "host_device.h"
#include "rotation.h"

namespace kvcore {

KV_HD float lsh_projection(uint64_t seed, int64_t d, int64_t j) {
  const uint64_t h = mix64(mix64(seed * 0xD1B54A32D192ED03ull + (uint64_t)d) + (uint64_t)j * 0x9E3779B97F4A7C15ull);
  const int64_t s = (int64_t)(h & 0xFFFF) + (int64_t)((h >> 16) & 0xFFFF) + (int64_t)((h >> 32) & 0xFFFF) +
                    (int64_t)(h >> 48);
  // four uniforms on {0..65535}: mean 2 * 65535, variance 4 * (65536^2 - 1) / 12
  return (float)(s - 2 * 65535) * (1.0f / 37837.23f);
}

}  // namespace kvcore
