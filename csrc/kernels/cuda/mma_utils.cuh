// Thin wrappers over the PTX instructions the decode kernel uses: tensor-core
// mma (m16n8k16, fp16 or bf16 in, fp32 accumulate), matrix loads from shared memory, an
// 8x8 register transpose, and asynchronous global->shared copies.
//
// Fragment layouts of mma.m16n8k16 (g = lane / 4, t = lane % 4), each register a pair:
//   A (16x16, row-major): a0 (row g,   cols 2t..2t+1)   a1 (row g+8, cols 2t..2t+1)
//                         a2 (row g,   cols 2t+8..+9)   a3 (row g+8, cols 2t+8..+9)
//   B (16x8,  col-major): b0 (rows 2t..2t+1,  col g)    b1 (rows 2t+8..+9, col g)
//   C (16x8,  fp32):      c0,c1 (row g, cols 2t, 2t+1)  c2,c3 (row g+8, cols 2t, 2t+1)
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

namespace kvcore {
namespace dev {

__device__ __forceinline__ void mma_f16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The same with bf16 operands.
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 matrices of 16-bit values from shared memory: lanes 8i..8i+7 give the row
// addresses (16 bytes each) of matrix i; r[i] is matrix i in the lane layout of an mma
// fragment (row g, cols 2t..2t+1), or with `_trans` of its transpose (rows 2t..2t+1,
// col g, as a pair). The "memory" clobber keeps them after the barriers that publish
// the rows.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t saddr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(saddr)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t saddr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(saddr)
               : "memory");
}

// Transposes an 8x8 matrix of 16-bit values held one pair per lane
// (lane holds row g, cols 2t..2t+1) into the same layout of the transpose.
__device__ __forceinline__ uint32_t movmatrix_trans(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

// 16-byte global->shared copy; when `pred` is false nothing is read and zeros are written.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool pred) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}
// An L2 policy that makes the lines a load brings in the first to go (data read once).
__device__ __forceinline__ unsigned long long l2_evict_first_policy() {
  unsigned long long p;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
  return p;
}
// cp_async_16 under an L2 policy (l2_evict_first_policy).
__device__ __forceinline__ void cp_async_16_hint(void* smem, const void* gmem, bool pred, unsigned long long policy) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(s), "l"(gmem), "r"(bytes),
               "l"(policy));
}
// Invalidates the 128-byte L2 line at `addr` (128-byte aligned) without writing it back.
__device__ __forceinline__ void discard_l2_line(const void* addr) {
  asm volatile("discard.global.L2 [%0], 128;" ::"l"(addr) : "memory");
}
// 8 bytes from a 32-bit shared-memory address.
__device__ __forceinline__ float2 ld_shared_f32x2(uint32_t addr) {
  float2 v;
  asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];" : "=f"(v.x), "=f"(v.y) : "r"(addr));
  return v;
}
// Adds v to the 32-bit integer at a shared-memory address, no result: a native ATOMS.ADD
// (float adds on shared memory are compare-and-swap loops on sm_90), which the warp does
// not wait for; lanes with the same address are serialised by the hardware.
__device__ __forceinline__ void red_shared_add_s32(uint32_t addr, int v) {
  asm volatile("red.shared.add.s32 [%0], %1;" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ float4 ld_shared_f32x4(uint32_t addr) {
  float4 v;
  asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(addr)
               : "memory");
  return v;
}
__device__ __forceinline__ void st_shared_f32x4(uint32_t addr, float4 v) {
  asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};" ::"r"(addr), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w)
               : "memory");
}
// a * b + c with a 64-bit product of 32-bit unsigned factors (one IMAD.WIDE.U32).
__device__ __forceinline__ unsigned long long mad_wide_u32(uint32_t a, uint32_t b, unsigned long long c) {
  unsigned long long r;
  asm("mad.wide.u32 %0, %1, %2, %3;" : "=l"(r) : "r"(a), "r"(b), "l"(c));
  return r;
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// addr[0..3] += v in global memory (16-byte aligned) when `pred`: one vector reduction
// without a result (sm_90).
__device__ __forceinline__ void red_add_f32x4(float* addr, float4 v, bool pred) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %5, 0;\n"
      " @p red.relaxed.gpu.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n}\n" ::"l"(addr),
      "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w), "r"((int)pred)
      : "memory");
}
// *addr += 1 (relaxed, gpu scope; below 2^31 - 1), returning the old value: a ticket. As
// atom.inc, because ptxas aggregates a warp's atom.add (vote, popc, one ATOMG) and
// shuffles its result right after the ATOMG, which then waits for the atomic's whole
// round trip (~0.3 us a ticket in session 31's dynamic tiles); atom.inc it leaves alone,
// so the result is waited for only where it is used.
__device__ __forceinline__ int take_ticket(int* addr) {
  int old;
  asm volatile("atom.relaxed.gpu.global.inc.u32 %0, [%1], 2147483647;" : "=r"(old) : "l"(addr));
  return old;
}
// Opens a unit's tickets (`count`, next to its 64-bit `epoch`) for this grid, so that no
// kernel has to zero them before each step: the workspace holds garbage or an earlier
// grid's values. The epoch is %gridid with its top bit set (never 0, the closed epoch):
// %gridid is unique per launch in the context, but a CUDA graph replay repeats its
// capture's, so the merge kernel closes every epoch (to 0) after the step. The first of
// the unit's warps to find another epoch claims the unit (CAS to ~epoch, "opening"),
// zeroes the count and publishes the epoch with a release; the others poll until they
// see it (the claimant waits on nothing meanwhile). Lane 0 only.
__device__ __forceinline__ void open_tickets(unsigned long long* epoch, int* count) {
  unsigned long long g;
  asm volatile("mov.u64 %0, %%gridid;" : "=l"(g));
  g |= 1ull << 63;
  unsigned long long e;
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(e) : "l"(epoch) : "memory");
  while (e != g) {
    if (e != ~g && atomicCAS(epoch, e, ~g) == e) {
      asm volatile("st.relaxed.gpu.global.u32 [%0], 0;" ::"l"(count) : "memory");
      asm volatile("st.release.gpu.global.u64 [%0], %1;" ::"l"(epoch), "l"(g) : "memory");
      return;
    }
    __nanosleep(100);
    asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(e) : "l"(epoch) : "memory");
  }
}
// 16 bytes from global memory with a relaxed gpu-scope load (through L2: sees the
// reductions that a barrier has ordered before it).
__device__ __forceinline__ float4 ld_relaxed_f32x4(const float* addr) {
  float4 v;
  asm volatile("ld.relaxed.gpu.global.v4.f32 {%0, %1, %2, %3}, [%4];"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "l"(addr)
               : "memory");
  return v;
}
// Programmatic dependent launch (sm_90): the primary grid's CTAs allow the dependent
// grid to be scheduled; the dependent waits until the primary has completed and its
// writes are visible. Both are no-ops for a kernel launched without the attribute.
__device__ __forceinline__ void launch_dependents() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
__device__ __forceinline__ void wait_primary() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

}  // namespace dev
}  // namespace kvcore
