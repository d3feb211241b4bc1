// CUDA kernel of kvcore.hamming_scores: a thread per cached token, the group's query
// signatures in shared memory, W words of the key's signature in one or two vector
// loads. Integer arithmetic, so the scores equal the CPU's exactly.
#include <algorithm>

#include "../eviction.h"

namespace kvcore {
namespace {

constexpr int kThreads = 256;

template <int W>
__global__ void __launch_bounds__(kThreads) hamming_kernel(HammingArgs a) {
  extern __shared__ uint32_t q_s[];  // [gq][W]
  const int gq = a.Hq / a.Hkv;
  const int64_t row = blockIdx.y;  // b * Hkv + g
  const int b = (int)(row / a.Hkv), g = (int)(row % a.Hkv);
  for (int i = threadIdx.x; i < gq * W; i += kThreads) q_s[i] = a.q_sig[((int64_t)b * a.Hq + (int64_t)g * gq) * W + i];
  __syncthreads();
  const int32_t raw = a.lengths[b];
  const int64_t len = raw < 0 ? 0 : (raw > a.T ? a.T : raw);
  for (int64_t t = (int64_t)blockIdx.x * kThreads + threadIdx.x; t < a.T; t += (int64_t)gridDim.x * kThreads) {
    int32_t s = -1;
    if (t < len) {
      uint32_t k[W];
      const uint32_t* kp = a.k_sig + (row * a.T + t) * W;
      if constexpr (W % 4 == 0) {
#pragma unroll
        for (int w = 0; w < W; w += 4) {
          const uint4 v = *reinterpret_cast<const uint4*>(kp + w);
          k[w] = v.x; k[w + 1] = v.y; k[w + 2] = v.z; k[w + 3] = v.w;
        }
      } else if constexpr (W == 2) {
        const uint2 v = *reinterpret_cast<const uint2*>(kp);
        k[0] = v.x; k[1] = v.y;
      } else {
        k[0] = kp[0];
      }
      int diff = 0;
      for (int h = 0; h < gq; ++h)
#pragma unroll
        for (int w = 0; w < W; ++w) diff += __popc(q_s[h * W + w] ^ k[w]);
      s = gq * 32 * W - diff;
    }
    a.scores[row * a.T + t] = s;
  }
}

template <int W>
cudaError_t launch(const HammingArgs& a, int num_sms, cudaStream_t st) {
  const int64_t rows = (int64_t)a.B * a.Hkv;
  // enough CTAs for a few waves over all rows, each striding over its row's tokens
  const int64_t want = std::max<int64_t>(1, (int64_t)num_sms * 8 / std::max<int64_t>(rows, 1));
  const int64_t per_row = std::min<int64_t>((a.T + kThreads - 1) / kThreads, want);
  const dim3 grid((unsigned)std::max<int64_t>(per_row, 1), (unsigned)rows);
  const size_t smem = (size_t)(a.Hq / a.Hkv) * W * sizeof(uint32_t);
  hamming_kernel<W><<<grid, kThreads, smem, st>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t hamming_scores_cuda(const HammingArgs& a, int num_sms, cudaStream_t stream) {
  if ((int64_t)a.B * a.Hkv == 0 || a.T == 0) return cudaSuccess;
  switch (a.W) {
    case 1: return launch<1>(a, num_sms, stream);
    case 2: return launch<2>(a, num_sms, stream);
    case 4: return launch<4>(a, num_sms, stream);
    default: return launch<8>(a, num_sms, stream);
  }
}

}  // namespace kvcore
