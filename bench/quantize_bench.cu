// Microbenchmark of quantize_kv / dequantize_kv on raw device pointers (no torch).
// Reports achieved GB/s (bytes read + bytes written, each once) and the ratio to
// the device-to-device copy bandwidth measured in the same run.
//   kvcore_bench_quantize [--json out.json] [--shape B H T D]
#include <cstdint>
#include <cstring>
#include <random>
#include "bench_util.cuh"
#include "kernels/quantize_kv.h"

using kvcore::Axis;
using kvcore::DType;

namespace {

__global__ void fill_random_bf16(uint16_t* p, int64_t n, uint32_t seed) {
  int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  for (; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const uint32_t h = bench::mix_hash(i, seed);
    const float u = (float)(h & 0xFFFFFF) / 16777216.0f;  // [0,1)
    const float v = (u - 0.5f) * 8.0f;
    p[i] = kvcore::float_to_bf16_bits(v);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int64_t B = 8, H = 8, T = 32768, D = 128;
  const char* json_path = nullptr;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
    else if (!std::strcmp(argv[i], "--shape") && i + 4 < argc) {
      B = std::atoll(argv[++i]); H = std::atoll(argv[++i]); T = std::atoll(argv[++i]); D = std::atoll(argv[++i]);
    }
  }
  const int64_t n = B * H * T * D;
  bench::Timer timer;
  const std::string gpu = bench::gpu_name();
  const double copy_gbs = bench::copy_bandwidth_gbs(timer, (size_t)n * 2);
  std::printf("GPU: %s\nshape [%lld, %lld, %lld, %lld] bf16 (%.1f MB)\ncopy: %.0f GB/s (read+write)\n",
              gpu.c_str(), (long long)B, (long long)H, (long long)T, (long long)D, n * 2 / 1e6, copy_gbs);

  uint16_t *x = nullptr, *y = nullptr, *scale = nullptr, *mn = nullptr;
  uint8_t* codes = nullptr;
  BENCH_CHECK(cudaMalloc(&x, n * 2));
  BENCH_CHECK(cudaMalloc(&y, n * 2));
  BENCH_CHECK(cudaMalloc(&codes, n));                 // enough for 8 bits
  BENCH_CHECK(cudaMalloc(&scale, n / 32 * 2 + 64));   // enough for group 32
  BENCH_CHECK(cudaMalloc(&mn, n / 32 * 2 + 64));
  fill_random_bf16<<<1024, 256>>>(x, n, 12345u);
  BENCH_CHECK(cudaGetLastError());

  FILE* js = json_path ? std::fopen(json_path, "w") : nullptr;
  if (js) std::fprintf(js, "{\"gpu\": \"%s\", \"shape\": [%lld, %lld, %lld, %lld], \"dtype\": \"bfloat16\", \"copy_gbs\": %.1f, \"rows\": [\n",
                       gpu.c_str(), (long long)B, (long long)H, (long long)T, (long long)D, copy_gbs);
  std::printf("%-10s %-8s %4s %5s %9s %9s %7s\n", "op", "axis", "bits", "group", "time_ms", "GB/s", "vs_copy");
  bool first = true;
  for (int axis = 0; axis < 2; ++axis)
    for (int bits : {2, 4, 8})
      for (int group : {32, 64, 128}) {
        kvcore::QuantizeArgs q;
        q.x = x; q.codes = codes; q.scale = scale; q.mn = mn;
        q.outer = B * H; q.T = T; q.D = D; q.bits = bits; q.group = group;
        q.dtype = DType::BF16; q.axis = axis ? Axis::Channel : Axis::Token;
        kvcore::DequantizeArgs d;
        d.codes = codes; d.scale = scale; d.mn = mn; d.out = y;
        d.outer = B * H; d.T = T; d.D = D; d.bits = bits; d.group = group;
        d.meta_dtype = DType::BF16; d.out_dtype = DType::BF16; d.axis = q.axis;
        const double meta_bytes = 2.0 * 2.0 * (double)n / group;  // scale + min, 2 B each
        const double code_bytes = (double)n * bits / 8;
        const double bytes = 2.0 * n + code_bytes + meta_bytes;   // same for both directions
        const double tq = timer.median_ms([&] { BENCH_CHECK(kvcore::quantize_kv_cuda(q, 0)); });
        const double td = timer.median_ms([&] { BENCH_CHECK(kvcore::dequantize_kv_cuda(d, 0)); });
        const char* axis_name = axis ? "channel" : "token";
        for (int k = 0; k < 2; ++k) {
          const double t = k ? td : tq;
          const double gbs = bytes / (t * 1e-3) / 1e9;
          const char* op = k ? "dequantize" : "quantize";
          std::printf("%-10s %-8s %4d %5d %9.3f %9.0f %6.1f%%\n", op, axis_name, bits, group, t, gbs, 100 * gbs / copy_gbs);
          if (js) std::fprintf(js, "%s  {\"op\": \"%s\", \"axis\": \"%s\", \"bits\": %d, \"group\": %d, \"time_ms\": %.4f, \"gbs\": %.1f, \"ratio_to_copy\": %.4f}",
                               first ? "" : ",\n", op, axis_name, bits, group, t, gbs, gbs / copy_gbs);
          first = false;
        }
      }
  if (js) { std::fprintf(js, "\n]}\n"); std::fclose(js); }
  // Sanity: dequantize(quantize(x)) must be close to x (guards against timing a broken path).
  {
    kvcore::QuantizeArgs q; q.x = x; q.codes = codes; q.scale = scale; q.mn = mn;
    q.outer = B * H; q.T = T; q.D = D; q.bits = 8; q.group = 64; q.dtype = DType::BF16; q.axis = Axis::Token;
    kvcore::DequantizeArgs d; d.codes = codes; d.scale = scale; d.mn = mn; d.out = y;
    d.outer = B * H; d.T = T; d.D = D; d.bits = 8; d.group = 64; d.meta_dtype = DType::BF16; d.out_dtype = DType::BF16;
    BENCH_CHECK(kvcore::quantize_kv_cuda(q, 0));
    BENCH_CHECK(kvcore::dequantize_kv_cuda(d, 0));
    std::vector<uint16_t> hx(4096), hy(4096);
    BENCH_CHECK(cudaMemcpy(hx.data(), x + n - 4096, 8192, cudaMemcpyDeviceToHost));
    BENCH_CHECK(cudaMemcpy(hy.data(), y + n - 4096, 8192, cudaMemcpyDeviceToHost));
    double worst = 0;
    for (int i = 0; i < 4096; ++i)
      worst = std::max(worst, (double)std::fabs(kvcore::bf16_bits_to_float(hx[i]) - kvcore::bf16_bits_to_float(hy[i])));
    std::printf("round-trip check (8-bit, last 4096 elements): max abs error %.4f (range 8.0)\n", worst);
    if (!(worst < 0.05)) { std::fprintf(stderr, "round-trip check FAILED\n"); return 1; }
  }
  return 0;
}
