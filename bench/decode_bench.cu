// Microbenchmark of the fused decode attention on raw device pointers (no torch).
// For each shape it reports the kernel time (CUDA events, L2 flushed before every
// timed launch, median), the bytes the step must move (packed codes + metadata +
// residual window + q/out), the achieved GB/s against the device-to-device copy
// bandwidth measured in the same run, and the time an ideal fp16 cache would need
// (its K+V bytes at copy bandwidth): the bytes-moved roofline of the fp16 baseline.
//   kvcore_bench_decode [--json out.json] [--shape B Hq Hkv D L]  (default: a sweep)
//                       [--timeline out.txt] [--outliers KC VC] [--bits 2|4] [--bf16]
// --bf16: a bf16 cache and query (default fp16).
// --outliers: KC key and VC value outliers a token (random channels below D, residuals
// in [-1, 1]), as extract_outliers stores them: issue 4's sparse corrections.
// --timeline: after timing, one more flushed launch per case with DecodeArgs::timeline
// set; writes every CTA's %globaltimer stamps (needs the kernels built with
// -DKVCORE_DECODE_TIMELINE=ON; scripts/decode_timeline.py summarises the file).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "bench_util.cuh"
#include "kernels/decode_attention.h"

namespace {

__global__ void fill_bytes(uint8_t* p, int64_t n, uint32_t seed) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const uint32_t h = bench::mix_hash(i, seed);
    p[i] = (uint8_t)h;
  }
}

__global__ void fill_index(uint8_t* p, int64_t n, int below, uint32_t seed) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const uint32_t h = bench::mix_hash(i, seed);
    p[i] = (uint8_t)(h % (uint32_t)below);
  }
}

// 16-bit floats in [lo, hi): fp16, or bf16 bits when `bf16` (the cache's dtype).
__global__ void fill_half_kernel(__half* p, int64_t n, float lo, float hi, uint32_t seed, bool bf16) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const uint32_t h = bench::mix_hash(i, seed);
    const float x = lo + (hi - lo) * (float)(h & 0xFFFFFF) / 16777216.0f;
    if (bf16) {
      const __nv_bfloat16 b = __float2bfloat16(x);
      p[i] = *reinterpret_cast<const __half*>(&b);
    } else {
      p[i] = __float2half(x);
    }
  }
}

bool g_bf16 = false;  // --bf16

void fill_half(__half* p, int64_t n, float lo, float hi, uint32_t seed) {
  fill_half_kernel<<<1024, 256>>>(p, n, lo, hi, seed, g_bf16);
}

struct Case {
  int B, Hq, Hkv, D;
  int64_t L;
};

template <typename T>
T* dev_alloc(int64_t n) {
  T* p = nullptr;
  BENCH_CHECK(cudaMalloc(&p, (size_t)std::max<int64_t>(n, 1) * sizeof(T)));
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  const char* json_path = nullptr;
  const char* timeline_path = nullptr;
  std::vector<Case> cases;
  int kc_out = 0, vc_out = 0;  // outliers a token in keys and values
  int only_bits = 0;           // --bits: 2 or 4 only (0: both)
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
    else if (!std::strcmp(argv[i], "--timeline") && i + 1 < argc) timeline_path = argv[++i];
    else if (!std::strcmp(argv[i], "--bits") && i + 1 < argc) only_bits = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--bf16")) g_bf16 = true;
    else if (!std::strcmp(argv[i], "--outliers") && i + 2 < argc) {
      kc_out = std::atoi(argv[++i]);
      vc_out = std::atoi(argv[++i]);
    }
    else if (!std::strcmp(argv[i], "--shape") && i + 5 < argc) {
      Case c;
      c.B = std::atoi(argv[++i]); c.Hq = std::atoi(argv[++i]); c.Hkv = std::atoi(argv[++i]);
      c.D = std::atoi(argv[++i]); c.L = std::atoll(argv[++i]);
      cases.push_back(c);
    }
  }
  if (cases.empty())
    for (int64_t L : {1024, 4096, 16384, 32768, 65536, 131072}) cases.push_back({8, 32, 8, 128, L});
  bench::Timer timer;
  int dev = 0, sms = 0;
  BENCH_CHECK(cudaGetDevice(&dev));
  BENCH_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const std::string gpu = bench::gpu_name();
  const double copy_gbs = bench::copy_bandwidth_gbs(timer, (size_t)1 << 30);
  std::printf("GPU: %s, %d SMs, copy %.0f GB/s (read+write), outliers a token: %d in keys, %d in values, %s\n",
              gpu.c_str(), sms, copy_gbs, kc_out, vc_out, g_bf16 ? "bf16" : "fp16");
  std::printf("%3s %3s %3s %4s %7s %4s %9s %9s %8s %10s %9s\n", "B", "Hq", "Hkv", "D", "L", "bits", "time_us",
              "GB/s", "vs_copy", "fp16_ideal", "x_ideal");
  FILE* js = json_path ? std::fopen(json_path, "w") : nullptr;
  FILE* tl = timeline_path ? std::fopen(timeline_path, "w") : nullptr;
  if (js)
    std::fprintf(js, "{\"gpu\": \"%s\", \"sms\": %d, \"copy_gbs\": %.1f, \"dtype\": \"%s\", \"rows\": [\n", gpu.c_str(),
                 sms, copy_gbs, g_bf16 ? "bf16" : "fp16");
  bool first = true;
  const int group = 64, resid = 64;
  for (const Case& c : cases) {
    for (int bits : {2, 4}) {
      if (only_bits != 0 && bits != only_bits) continue;
      const int64_t t_cap = (c.L - resid) / group * group;
      const int64_t rb = c.D * bits / 8, bh = (int64_t)c.B * c.Hkv;
      kvcore::DecodeArgs a;
      a.B = c.B; a.Hq = c.Hq; a.Hkv = c.Hkv; a.D = c.D; a.bits = bits; a.group = group;
      a.t_cap = t_cap; a.r_cap = resid; a.sm_scale = 1.0f / std::sqrt((float)c.D);
      a.dtype = g_bf16 ? kvcore::DType::BF16 : kvcore::DType::F16;
      uint8_t* kc = dev_alloc<uint8_t>(bh * t_cap * rb);
      uint8_t* vc = dev_alloc<uint8_t>(bh * t_cap * rb);
      __half* ks = dev_alloc<__half>(bh * (t_cap / group) * c.D);
      __half* km = dev_alloc<__half>(bh * (t_cap / group) * c.D);
      __half* vs = dev_alloc<__half>(bh * t_cap * (c.D / group));
      __half* vm = dev_alloc<__half>(bh * t_cap * (c.D / group));
      __half* kr = dev_alloc<__half>(bh * resid * c.D);
      __half* vr = dev_alloc<__half>(bh * resid * c.D);
      __half* q = dev_alloc<__half>((int64_t)c.B * c.Hq * c.D);
      __half* out = dev_alloc<__half>((int64_t)c.B * c.Hq * c.D);
      float* lse = dev_alloc<float>((int64_t)c.B * c.Hq);
      int32_t* plen = dev_alloc<int32_t>(c.B);
      int32_t* rlen = dev_alloc<int32_t>(c.B);
      fill_bytes<<<1024, 256>>>(kc, bh * t_cap * rb, 1u);
      fill_bytes<<<1024, 256>>>(vc, bh * t_cap * rb, 2u);
      fill_half(ks, bh * (t_cap / group) * c.D, 0.05f, 0.5f, 3u);
      fill_half(km, bh * (t_cap / group) * c.D, -1.0f, 0.0f, 4u);
      fill_half(vs, bh * t_cap * (c.D / group), 0.05f, 0.5f, 5u);
      fill_half(vm, bh * t_cap * (c.D / group), -1.0f, 0.0f, 6u);
      fill_half(kr, bh * resid * c.D, -1.0f, 1.0f, 7u);
      fill_half(vr, bh * resid * c.D, -1.0f, 1.0f, 8u);
      fill_half(q, (int64_t)c.B * c.Hq * c.D, -1.0f, 1.0f, 9u);
      std::vector<int32_t> hp(c.B, (int32_t)t_cap), hr(c.B, resid);
      BENCH_CHECK(cudaMemcpy(plen, hp.data(), c.B * 4, cudaMemcpyHostToDevice));
      BENCH_CHECK(cudaMemcpy(rlen, hr.data(), c.B * 4, cudaMemcpyHostToDevice));
      a.q = q; a.k_codes = kc; a.k_scale = ks; a.k_mn = km; a.v_codes = vc; a.v_scale = vs; a.v_mn = vm;
      a.k_resid = kr; a.v_resid = vr; a.packed_len = plen; a.resid_len = rlen; a.out = out; a.lse = lse;
      uint8_t* koi = dev_alloc<uint8_t>(bh * t_cap * kc_out);
      uint8_t* voi = dev_alloc<uint8_t>(bh * t_cap * vc_out);
      __half* kor = dev_alloc<__half>(bh * t_cap * kc_out);
      __half* vor = dev_alloc<__half>(bh * t_cap * vc_out);
      if (kc_out > 0) {
        fill_index<<<1024, 256>>>(koi, bh * t_cap * kc_out, c.D, 10u);
        fill_half(kor, bh * t_cap * kc_out, -1.0f, 1.0f, 11u);
        a.k_outliers = kc_out; a.k_out_idx = koi; a.k_out_res = kor;
      }
      if (vc_out > 0) {
        fill_index<<<1024, 256>>>(voi, bh * t_cap * vc_out, c.D, 12u);
        fill_half(vor, bh * t_cap * vc_out, -1.0f, 1.0f, 13u);
        a.v_outliers = vc_out; a.v_out_idx = voi; a.v_out_res = vor;
      }
      void* ws = dev_alloc<uint8_t>((int64_t)kvcore::decode_attention_cuda_workspace(a, sms));
      const double ms = timer.median_ms([&] { BENCH_CHECK(kvcore::decode_attention_cuda(a, ws, sms, 0)); });
      if (tl) {  // one more launch, stamped
        // records: one per merge CTA (B*Hq), one per split CTA (B*Hkv*passes*np); np
        // follows from the workspace, which holds np partials of D+2 floats per query head
        const int64_t np = (int64_t)kvcore::decode_attention_cuda_workspace(a, sms) / ((int64_t)c.B * c.Hq * (c.D + 2) * 4);
        const int64_t passes = (c.Hq / c.Hkv + 7) / 8;
        const int64_t nrec = (int64_t)c.B * c.Hq + (int64_t)c.B * c.Hkv * passes * np;
        unsigned long long* d_tl = dev_alloc<unsigned long long>(nrec * 8);
        BENCH_CHECK(cudaMemset(d_tl, 0, nrec * 64));
        a.timeline = d_tl;
        timer.evict_l2();
        BENCH_CHECK(kvcore::decode_attention_cuda(a, ws, sms, 0));
        BENCH_CHECK(cudaDeviceSynchronize());
        a.timeline = nullptr;
        std::vector<unsigned long long> h(nrec * 8);
        BENCH_CHECK(cudaMemcpy(h.data(), d_tl, nrec * 64, cudaMemcpyDeviceToHost));
        BENCH_CHECK(cudaFree(d_tl));
        std::fprintf(tl, "# B %d Hq %d Hkv %d D %d L %lld bits %d kc %d vc %d time_us %.2f merge_records %d\n", c.B, c.Hq,
                     c.Hkv, c.D, (long long)c.L, bits, kc_out, vc_out, ms * 1e3, c.B * c.Hq);
        int64_t written = 0;
        for (int64_t r = 0; r < nrec; ++r) {
          if (h[r * 8] == 0) continue;
          std::fprintf(tl, "%lld", (long long)r);
          for (int k = 0; k < 8; ++k) std::fprintf(tl, " %llu", h[r * 8 + k]);
          std::fprintf(tl, "\n");
          ++written;
        }
        if (written == 0) std::fprintf(stderr, "--timeline: no stamps (build with -DKVCORE_DECODE_TIMELINE=ON)\n");
      }
      if (std::getenv("KVCORE_BENCH_CHECKSUM") != nullptr) {  // to compare kernel variants' outputs (A/B runs)
        std::vector<uint16_t> ho((size_t)c.B * c.Hq * c.D);
        BENCH_CHECK(cudaMemcpy(ho.data(), out, ho.size() * 2, cudaMemcpyDeviceToHost));
        double sum = 0.0, sum_abs = 0.0;
        for (uint16_t h : ho) {
          float f;
          if (g_bf16) {
            const uint32_t w = (uint32_t)h << 16;
            std::memcpy(&f, &w, 4);
          } else {
            __half_raw r;
            r.x = h;
            f = __half2float(__half(r));
          }
          sum += f;
          sum_abs += std::fabs(f);
        }
        std::fprintf(stderr, "checksum L=%lld bits=%d sum=%.6e sum_abs=%.6e\n", (long long)c.L, bits, sum, sum_abs);
      }
      std::vector<float> hl(c.B * c.Hq);
      BENCH_CHECK(cudaMemcpy(hl.data(), lse, hl.size() * 4, cudaMemcpyDeviceToHost));
      for (float v : hl)
        if (!std::isfinite(v)) { std::fprintf(stderr, "non-finite lse: broken kernel\n"); return 1; }
      const double bytes = 3.0 * bh * t_cap * (kc_out + vc_out) + 2.0 * bh * t_cap * rb + 2.0 * bh * (t_cap / group) * c.D * 2 +
                           2.0 * bh * t_cap * (c.D / group) * 2 + 2.0 * bh * resid * c.D * 2 +
                           2.0 * c.B * c.Hq * c.D * 2;
      const double fp16_bytes = 2.0 * bh * c.L * c.D * 2;
      const double gbs = bytes / (ms * 1e-3) / 1e9;
      const double ideal_us = fp16_bytes / (copy_gbs * 1e9) * 1e6;
      std::printf("%3d %3d %3d %4d %7lld %4d %9.1f %9.0f %7.1f%% %10.1f %8.2fx\n", c.B, c.Hq, c.Hkv, c.D,
                  (long long)c.L, bits, ms * 1e3, gbs, 100 * gbs / copy_gbs, ideal_us, ideal_us / (ms * 1e3));
      if (js) std::fprintf(js, "%s  {\"B\": %d, \"Hq\": %d, \"Hkv\": %d, \"D\": %d, \"L\": %lld, \"bits\": %d, \"group\": %d, \"k_outliers\": %d, \"v_outliers\": %d, \"time_us\": %.2f, \"gbs\": %.1f, \"ratio_to_copy\": %.4f, \"fp16_ideal_us\": %.2f}",
                           first ? "" : ",\n", c.B, c.Hq, c.Hkv, c.D, (long long)c.L, bits, group, kc_out, vc_out,
                           ms * 1e3, gbs, gbs / copy_gbs, ideal_us);
      first = false;
      for (void* p : {(void*)kc, (void*)vc, (void*)ks, (void*)km, (void*)vs, (void*)vm, (void*)kr, (void*)vr,
                      (void*)q, (void*)out, (void*)lse, (void*)plen, (void*)rlen, ws, (void*)koi, (void*)voi,
                      (void*)kor, (void*)vor})
        BENCH_CHECK(cudaFree(p));
    }
  }
  if (js) { std::fprintf(js, "\n]}\n"); std::fclose(js); }
  if (tl) std::fclose(tl);
  return 0;
}
