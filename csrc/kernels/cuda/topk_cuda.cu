// CUDA kernel of kvcore.topk_select: a cluster of CTAs per row (one CTA off sm_90),
// each holding its slice of the row in shared memory after the first read. Scores map
// to order-preserving 32-bit keys (NaN lowest, -0 == +0); up to three 11-bit or four
// 8-bit radix passes of shared-memory
// histograms find the k-th highest key prefix and how many entries equal to it to keep
// (the last ones by position, as ties go to the later position); a final pass writes
// the kept positions in ascending order through block-wide prefix sums. Rows are read
// with 16-byte loads when 16-byte aligned. No host synchronisation, no workspace.
// The selection is a set defined by (key, position) alone, so it equals the CPU's.
#include <cooperative_groups.h>

#include <algorithm>
#include <atomic>
#include <climits>

#include "../eviction.h"

namespace kvcore {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kPerThread = 4;  // consecutive entries per thread in the output pass
constexpr int kTile = kThreads * kPerThread;
constexpr int kUnroll = 4;  // rounds of kTile entries per histogram iteration
// Radix digits: 11 bits (3 passes: bits 21-31, 10-20, 0-9) where a CTA's slice is short
// and each pass's dozen CTA barriers dominate; 8 bits (4 passes) for long float slices,
// where they measured faster (fewer bins, fewer atomics contending on the same words).
// Integer rows always take 11 bits: their passes start at the highest differing bit,
// so a Hamming range (a few hundred values) is one pass instead of two (int32 rows of
// 128K: 123 -> 117 us).
constexpr int kShortSlice = 16384;
// Fewest entries a CTA of a multi-CTA row: 4096 measured best on the H100 (int32 rows of
// 16K: 3.3x -> 4.0x torch.topk against 16384); 2048 slowed rows of 4K (2.7x -> 2.0x).
constexpr int64_t kMinSlice = 4096;

static_assert(kTile < 65536, "tile counts fit 16 bits");

// Larger score -> larger key; NaN (any sign or payload) -> 0, below -inf (0x007FFFFF);
// -0.0 is read as +0.0 so the two tie and fall back to position, as on the CPU.
template <bool kFloat>
__device__ __forceinline__ uint32_t to_key(uint32_t u) {
  if constexpr (kFloat) {
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0u;
    if (u == 0x80000000u) u = 0u;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  } else {
    return u ^ 0x80000000u;  // int32 two's complement -> offset binary
  }
}

// Exclusive prefix sum of v over the CTA; *total gets the CTA's sum. Every thread must
// call it (it synchronises); warp_s is reused across calls.
__device__ __forceinline__ uint32_t block_exclusive_scan(uint32_t v, uint32_t* warp_s, uint32_t* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint32_t x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t y = __shfl_up_sync(0xFFFFFFFFu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) warp_s[warp] = x;
  __syncthreads();
  if (warp == 0) {
    uint32_t w = lane < kWarps ? warp_s[lane] : 0u;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t y = __shfl_up_sync(0xFFFFFFFFu, w, o);
      if (lane >= o) w += y;
    }
    if (lane < kWarps) warp_s[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  const uint32_t before = (warp ? warp_s[warp - 1] : 0u) + x - v;
  *total = warp_s[kWarps - 1];
  __syncthreads();  // everyone has read warp_s before the next call writes it
  return before;
}

// Keys of entries [base, base + 4) of the row (those < len valid); 16-byte load when
// the row is aligned and all four are in range.
template <bool kFloat>
__device__ __forceinline__ void load4(const uint32_t* row, int64_t base, int64_t len, bool aligned, uint32_t* key,
                                      bool* valid) {
  if (aligned && base + 4 <= len) {
    const uint4 v = *reinterpret_cast<const uint4*>(row + base);
    key[0] = to_key<kFloat>(v.x); key[1] = to_key<kFloat>(v.y);
    key[2] = to_key<kFloat>(v.z); key[3] = to_key<kFloat>(v.w);
    valid[0] = valid[1] = valid[2] = valid[3] = true;
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      valid[j] = base + j < len;
      key[j] = valid[j] ? to_key<kFloat>(row[base + j]) : 0u;
    }
  }
}

// Keys of one thread's four entries at `base` (a multiple of 4 past lo): from the
// shared-memory copy of the slice's first cap entries when base is inside it, else from
// global memory (and, on the first pass, copied into that cache). The cache holds keys,
// not raw scores; the thread that writes an entry is the one that reads it later.
template <bool kFloat>
__device__ __forceinline__ void read4(const uint32_t* row, uint32_t* cache_s, int64_t lo, int64_t cache_hi, bool fill,
                                      int64_t base, int64_t hi, bool aligned, uint32_t* key, bool* valid) {
  if (base < cache_hi && !fill) {
    const uint4 v = *reinterpret_cast<const uint4*>(cache_s + (base - lo));
    key[0] = v.x; key[1] = v.y; key[2] = v.z; key[3] = v.w;
#pragma unroll
    for (int j = 0; j < 4; ++j) valid[j] = base + j < hi;
    return;
  }
  load4<kFloat>(row, base, hi, aligned, key, valid);
  if (fill && base < cache_hi) *reinterpret_cast<uint4*>(cache_s + (base - lo)) = make_uint4(key[0], key[1], key[2], key[3]);
}

// Thread-block clusters (sm_90): the CTAs of one row's cluster split the row and sum
// their histograms through distributed shared memory. Elsewhere a cluster is one CTA.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define KVCORE_TOPK_CLUSTERS 1
__device__ __forceinline__ unsigned cluster_rank() { return cg::this_cluster().block_rank(); }
__device__ __forceinline__ unsigned cluster_size() { return cg::this_cluster().num_blocks(); }
__device__ __forceinline__ void cluster_barrier() { cg::this_cluster().sync(); }
template <typename T>
__device__ __forceinline__ T* shared_of_rank(T* p, unsigned rank) { return cg::this_cluster().map_shared_rank(p, rank); }
#else
__device__ __forceinline__ unsigned cluster_rank() { return 0; }
__device__ __forceinline__ unsigned cluster_size() { return 1; }
__device__ __forceinline__ void cluster_barrier() { __syncthreads(); }
template <typename T>
__device__ __forceinline__ T* shared_of_rank(T* p, unsigned) { return p; }
#endif

template <bool kFloat, int kBits>
__global__ void __launch_bounds__(kThreads, 1) topk_kernel(TopkArgs a, int64_t cache_entries) {
  constexpr int kBins = 1 << kBits;
  static_assert(kBins <= 2 * kThreads, "at most two digits a thread in the pick");
  extern __shared__ uint4 cache_raw[];  // the slice's first cache_entries keys
  uint32_t* cache_s = reinterpret_cast<uint32_t*>(cache_raw);
  __shared__ uint32_t hist[kBins];
  __shared__ uint32_t warp_s[kWarps];
  __shared__ uint32_t pick[3];      // digit, entries still to take in it, entries in it
  __shared__ uint32_t eq_count;      // this CTA's entries at the picked digit, this pass
  __shared__ uint32_t and_or[2];     // integer rows: AND and OR of this CTA's keys
  __shared__ uint32_t slice_tot[2];  // this CTA's kept-above and equal counts, for the others
  const unsigned C = cluster_size(), rank = cluster_rank();
  const int64_t r = blockIdx.x / C;
  const int tid = threadIdx.x;
  const int32_t raw = a.lengths[r];
  const int64_t len = raw < 0 ? 0 : (raw > a.L ? a.L : raw);
  const int64_t k = a.k;
  int32_t* out = a.idx + r * k;
  const int64_t n = len < k ? len : k;

  if (len <= k) {  // every valid entry is kept (the same branch in every CTA of the cluster)
    for (int64_t i = (int64_t)rank * kThreads + tid; i < k; i += (int64_t)C * kThreads) out[i] = i < len ? (int32_t)i : -1;
    if (rank == 0 && tid == 0) a.count[r] = (int32_t)n;
    return;
  }

  const uint32_t* row = static_cast<const uint32_t*>(a.scores) + r * a.L;
  const bool aligned = (reinterpret_cast<uintptr_t>(row) & 15u) == 0;
  // This CTA's slice [lo, hi) of the row; slice starts stay multiples of 4 (aligned loads).
  const int64_t slice = ((len + C - 1) / C + 3) & ~int64_t(3);
  const int64_t lo = slice * rank < len ? slice * rank : len;
  const int64_t hi = lo + slice < len ? lo + slice : len;
  const int64_t cache_hi = lo + cache_entries < hi ? lo + cache_entries : hi;

  // Radix select over the whole row: after each pass, prefix holds the top
  // bits of the k-th highest key (bits under mask) and `remaining` how many of the
  // entries with that prefix to keep. With several CTAs a row, each also counts its
  // slice's entries above the final prefix (mine_gt) and equal to it (mine_eq).
  uint32_t prefix = 0u, mask = 0u, remaining = (uint32_t)k, in_bucket = 0u, mine_gt = 0u, mine_eq = 0u;
  // Bits above `top` are the same in every key of the row. Integer scores (Hamming
  // distances: a range of a few hundred) take the histogram path: one read computes
  // the keys' AND and OR (and fills the shared-memory copy), and the radix passes start
  // at the highest bit where keys differ, so one 11-bit pass covers a range of 2048.
  int top = 32;
  if constexpr (!kFloat) {
    if (tid == 0) {
      and_or[0] = ~0u;
      and_or[1] = 0u;
    }
    __syncthreads();
    uint32_t all_and = ~0u, any_or = 0u;
    for (int64_t it = lo; it < hi; it += (int64_t)kUnroll * kTile) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        uint32_t key[4];
        bool valid[4];
        read4<kFloat>(row, cache_s, lo, cache_hi, true, it + (int64_t)u * kTile + tid * 4, hi, aligned, key, valid);
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (valid[j]) {
            all_and &= key[j];
            any_or |= key[j];
          }
      }
    }
    all_and = __reduce_and_sync(0xFFFFFFFFu, all_and);
    any_or = __reduce_or_sync(0xFFFFFFFFu, any_or);
    if ((tid & 31) == 0) {
      atomicAnd(&and_or[0], all_and);
      atomicOr(&and_or[1], any_or);
    }
    if (C > 1) cluster_barrier();
    else __syncthreads();
    all_and = and_or[0];
    any_or = and_or[1];
    for (unsigned c = 0; c < C; ++c)
      if (c != rank) {
        const uint32_t* other = shared_of_rank(and_or, c);
        all_and &= other[0];
        any_or |= other[1];
      }
    if (C > 1) cluster_barrier();  // read before any CTA moves on (and could exit)
    const uint32_t differ = all_and ^ any_or;
    top = differ ? 32 - __clz(differ) : 0;
    mask = top >= 32 ? 0u : ~0u << top;
    prefix = all_and & mask;
    if (top == 0) {  // every key equal: the ties alone decide (the last k by position)
      in_bucket = (uint32_t)len;
      mine_eq = (uint32_t)(hi - lo);
    }
  }
#pragma unroll 1
  for (int p = 0; top - kBits * p > 0; ++p) {
    const int shift = top - kBits * (p + 1) > 0 ? top - kBits * (p + 1) : 0;
    const uint32_t dmask = (1u << (top - kBits * p - shift)) - 1u;
    for (int i = tid; i < kBins; i += kThreads) hist[i] = 0u;
    __syncthreads();
    // kUnroll rounds of the CTA's 4096 entries per iteration: that many loads in flight
    // per thread (one at a time left the passes bound by L2 latency). One plain shared
    // atomic per counted entry: aggregating a warp's equal digits first (ballot +
    // match_any) cost more than the same-address atomics it saved, on floats too
    // (H100: float32 4K rows 17.6 -> 15.0 us, int32 128K rows 117 -> 56 us).
    const bool fill = kFloat && p == 0;  // integer rows were copied by the AND/OR read
    for (int64_t it = lo; it < hi; it += (int64_t)kUnroll * kTile) {
      uint32_t key[kUnroll][4];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        bool loaded[4];  // recomputed below: keeping 16 flags live spilled registers
        read4<kFloat>(row, cache_s, lo, cache_hi, fill, it + (int64_t)u * kTile + tid * 4, hi, aligned, key[u], loaded);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const bool valid = it + (int64_t)u * kTile + tid * 4 + j < hi;
          if (valid && (key[u][j] & mask) == prefix) atomicAdd(&hist[(key[u][j] >> shift) & dmask], 1u);
        }
    }
    if (C > 1) cluster_barrier();  // every CTA's histogram is complete
    else __syncthreads();
    // Suffix sums from the highest digit: thread i < kBins/2 holds digits d1 = kBins-1-2i
    // and d0 = d1-1 (in that order), the others none; exactly one thread sees the
    // remaining-th highest entry fall inside one of its digits.
    const bool holds = 2 * tid < kBins;
    const uint32_t d1 = holds ? kBins - 1 - 2 * tid : 0u, d0 = holds ? d1 - 1 : 0u;
    const uint32_t mine1 = holds ? hist[d1] : 0u, mine0 = holds ? hist[d0] : 0u;
    uint32_t h1 = mine1, h0 = mine0;
    if (C > 1) {
      for (unsigned c = 0; c < C; ++c)
        if (c != rank && holds) {
          const uint32_t* other = shared_of_rank(hist, c);
          h1 += other[d1];
          h0 += other[d0];
        }
      cluster_barrier();  // every CTA has read the others' histograms before they are reset
    }
    uint32_t total;
    const uint32_t above = block_exclusive_scan(h1 + h0, warp_s, &total);
    if (!holds) {
    } else if (above < remaining && remaining <= above + h1) {
      pick[0] = d1;
      pick[1] = remaining - above;
      pick[2] = h1;
    } else if (above + h1 < remaining && remaining <= above + h1 + h0) {
      pick[0] = d0;
      pick[1] = remaining - above - h1;
      pick[2] = h0;
    }
    __syncthreads();
    const uint32_t digit = pick[0];
    if (C > 1) {
      uint32_t mine_above;
      block_exclusive_scan(holds ? (d1 > digit ? mine1 : 0u) + (d0 > digit ? mine0 : 0u) : 0u, warp_s, &mine_above);
      mine_gt += mine_above;
      if (holds && d1 == digit) eq_count = mine1;
      if (holds && d0 == digit) eq_count = mine0;
    }
    prefix |= digit << shift;
    mask |= dmask << shift;
    remaining = pick[1];
    in_bucket = pick[2];
    __syncthreads();  // eq_count written; it and pick are rewritten only after the next pass's barriers
    mine_eq = eq_count;
    if (remaining == in_bucket) break;  // the whole bucket is kept: lower bits don't matter
  }

  // Where this slice's kept entries start: the counts of the slices before it.
  uint32_t run_gt = 0u, run_eq = 0u;
  if (C > 1) {
    if (tid == 0) { slice_tot[0] = mine_gt; slice_tot[1] = mine_eq; }
    cluster_barrier();
    if (tid == 0) {
      for (unsigned c = 0; c < rank; ++c) {
        const uint32_t* t = shared_of_rank(slice_tot, c);
        run_gt += t[0];
        run_eq += t[1];
      }
      warp_s[0] = run_gt;
      warp_s[1] = run_eq;
    }
    cluster_barrier();  // the others' counts are read before any CTA exits
    run_gt = warp_s[0];
    run_eq = warp_s[1];
    __syncthreads();
  }

  // Output pass: an entry is kept if its masked key is above prefix, or equal to it and
  // among the last `remaining` such entries by position (skip the first `skip` ones).
  // Its slot = (kept-above entries before it) + max(0, equal entries before it - skip).
  const uint32_t skip = in_bucket - remaining;
  for (int64_t tile = lo; tile < hi; tile += kTile) {
    const int64_t base = tile + (int64_t)tid * kPerThread;
    uint32_t key[4];
    bool valid[4];
    read4<kFloat>(row, cache_s, lo, cache_hi, false, base, hi, aligned, key, valid);
    uint32_t gt = 0u, eq = 0u;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t m = key[j] & mask;
      gt += valid[j] && m > prefix;
      eq += valid[j] && m == prefix;
    }
    uint32_t total;
    const uint32_t before = block_exclusive_scan(gt | (eq << 16), warp_s, &total);  // tile counts <= 4096
    uint32_t g = run_gt + (before & 0xFFFFu), e = run_eq + (before >> 16);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (!valid[j]) continue;
      const uint32_t m = key[j] & mask;
      if (m > prefix) {
        out[g + (e > skip ? e - skip : 0u)] = (int32_t)(base + j);
        ++g;
      } else if (m == prefix) {
        if (e >= skip) out[g + e - skip] = (int32_t)(base + j);
        ++e;
      }
    }
    run_gt += total & 0xFFFFu;
    run_eq += total >> 16;
  }
  if (rank == 0 && tid == 0) a.count[r] = (int32_t)n;  // len > k here, so n = k and no -1 padding
}

}  // namespace

cudaError_t topk_select_cuda(const TopkArgs& a, int num_sms, bool clusters, int max_smem_optin, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  // CTAs per row: enough to fill the GPU when rows are few (64 rows of 128K on 132 SMs
  // left half the SMs idle), at least kMinSlice entries each, at most 8 (the portable
  // cluster).
  int64_t per_row = 1;
  if (clusters) {
    per_row = std::max<int64_t>(1, num_sms / a.rows);
    per_row = std::min<int64_t>({per_row, 8, std::max<int64_t>(1, a.L / kMinSlice)});
  }
  if (a.rows * per_row > INT32_MAX) per_row = 1;
  // Shared-memory copy of each slice's first entries (whole 4096-entry tiles), so the
  // later passes and the output pass read the row from DRAM/L2 only once.
  const int64_t slice = (a.L + per_row - 1) / per_row;
  // (16 KB left for the kernel's static shared memory, 8.3 KB)
  const int64_t cap_tiles = std::max<int64_t>(0, ((int64_t)max_smem_optin - 16 * 1024) / ((int64_t)kTile * 4));
  const int64_t cache_entries = std::min<int64_t>((slice + kTile - 1) / kTile, cap_tiles) * kTile;
  const size_t smem = (size_t)cache_entries * 4;
  // Raised once per device and kernel to the most any call asks for, whatever this
  // call's size: the default limit counts the static shared memory too (8 KB of 11-bit
  // histograms), so a 48 KB copy already failed to launch without it.
  {
    static std::atomic<int> raised[64] = {};
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) device = 0;
    std::atomic<int>& done = raised[device];
    if (done.load() == 0) {
      const int most = (int)(cap_tiles * kTile * 4);
      for (const void* kernel : {(const void*)topk_kernel<true, 8>, (const void*)topk_kernel<true, 11>,
                                 (const void*)topk_kernel<false, 11>}) {
        const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, most);
        if (err != cudaSuccess) return err;
      }
      done.store(1);
    }
  }
  cudaLaunchConfig_t cfg = {};
  cfg.dynamicSmemBytes = smem;
  cfg.gridDim = dim3((unsigned)(a.rows * per_row));
  cfg.blockDim = dim3(kThreads);
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  if (clusters) {
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = (unsigned)per_row;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  const bool short_slice = slice <= kShortSlice;
  if (a.is_float)
    return short_slice ? cudaLaunchKernelEx(&cfg, topk_kernel<true, 11>, a, cache_entries)
                       : cudaLaunchKernelEx(&cfg, topk_kernel<true, 8>, a, cache_entries);
  return cudaLaunchKernelEx(&cfg, topk_kernel<false, 11>, a, cache_entries);
}

}  // namespace kvcore
