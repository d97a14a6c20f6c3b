// Thin inline-PTX wrappers for the Hopper features the GEMM uses: mbarriers, TMA (bulk tensor
// copies), fences, named barriers, register reallocation, wgmma bookkeeping and stmatrix.
#pragma once

#include "dgpt_types.cuh"

namespace dgpt::ptx {

__device__ __forceinline__ u32 smem_addr(const void* ptr) {
  return static_cast<u32>(__cvta_generic_to_shared(ptr));
}

// ---- mbarrier ------------------------------------------------------------------------------
__device__ __forceinline__ void mbarrier_init(u64* bar, u32 arrive_count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(arrive_count));
}

// Blocks until the phase with parity `phase` has completed.
__device__ __forceinline__ void mbarrier_wait(u64* bar, u32 phase) {
  u32 done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(phase)
        : "memory");
  } while (!done);
}

__device__ __forceinline__ void mbarrier_arrive(u64* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}

__device__ __forceinline__ void mbarrier_arrive_expect_tx(u64* bar, u32 bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}

// Makes initialised barriers visible to the async proxy (TMA) before first use.
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// Orders this thread's generic-proxy shared-memory writes before later async-proxy reads (TMA store).
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

// ---- TMA ---------------------------------------------------------------------------------
__device__ __forceinline__ void tma_prefetch_descriptor(const TmaDescriptor* desc) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<u64>(desc)) : "memory");
}

// Global -> shared copy of one box at (c0, c1, c2); completion is signalled on `bar` in bytes.
__device__ __forceinline__ void tma_load_3d(const TmaDescriptor* desc, u64* bar, void* smem_dst, i32 c0, i32 c1,
                                            i32 c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];"
      ::"r"(smem_addr(smem_dst)), "l"(reinterpret_cast<u64>(desc)), "r"(smem_addr(bar)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

// Like tma_load_3d, into the same shared-memory offset of every CTA of the cluster in `cta_mask` (bit r: rank
// r); each of them receives the bytes on its own barrier at `bar`'s offset.
__device__ __forceinline__ void tma_load_3d_multicast(const TmaDescriptor* desc, u64* bar, void* smem_dst, i32 c0,
                                                      i32 c1, i32 c2, u16 cta_mask) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
      " [%0], [%1, {%3, %4, %5}], [%2], %6;"
      ::"r"(smem_addr(smem_dst)), "l"(reinterpret_cast<u64>(desc)), "r"(smem_addr(bar)), "r"(c0), "r"(c1), "r"(c2),
      "h"(cta_mask)
      : "memory");
}

// Shared -> global copy of one box at (c0, c1, c2); out-of-bounds parts of the box are not written.
__device__ __forceinline__ void tma_store_3d(const TmaDescriptor* desc, const void* smem_src, i32 c0, i32 c1, i32 c2) {
  asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%2, %3, %4}], [%1];"
               ::"l"(reinterpret_cast<u64>(desc)), "r"(smem_addr(smem_src)), "r"(c0), "r"(c1), "r"(c2)
               : "memory");
}

// Like tma_store_3d, but adds the box to what global memory holds (the element type is the map's; f32 here).
__device__ __forceinline__ void tma_reduce_add_3d(const TmaDescriptor* desc, const void* smem_src, i32 c0, i32 c1,
                                                  i32 c2) {
  asm volatile("cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4}], [%1];"
               ::"l"(reinterpret_cast<u64>(desc)), "r"(smem_addr(smem_src)), "r"(c0), "r"(c1), "r"(c2)
               : "memory");
}

__device__ __forceinline__ void tma_store_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }

// Waits until at most kPending of this thread's committed store groups (the newest) still read their
// shared-memory source.
template <u32 kPending = 0>
__device__ __forceinline__ void tma_store_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(kPending) : "memory");
}

// Waits until committed stores are complete.
__device__ __forceinline__ void tma_store_wait_all() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }

// ---- clusters (split-K reduction through distributed shared memory, multicast stages) -------------
__device__ __forceinline__ u32 cluster_ctarank() {
  u32 rank;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  return rank;
}

__device__ __forceinline__ u32 cluster_size() {
  u32 size;
  asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(size));
  return size;
}

// All threads of every CTA of the cluster; orders shared-memory writes (barrier init) cluster-wide.
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// The shared::cluster address of `smem_ptr`'s counterpart in CTA `rank` of this cluster.
__device__ __forceinline__ u32 map_to_rank(const void* smem_ptr, u32 rank) {
  u32 remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(smem_addr(smem_ptr)), "r"(rank));
  return remote;
}

__device__ __forceinline__ void ld_shared_cluster_v4(u32 cluster_addr, float& x, float& y, float& z, float& w) {
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];"
               : "=f"(x), "=f"(y), "=f"(z), "=f"(w)
               : "r"(cluster_addr)
               : "memory");
}

// Arrives on an mbarrier of another CTA of the cluster, releasing this thread's prior writes.
__device__ __forceinline__ void mbarrier_arrive_remote(u32 cluster_addr) {
  asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];" ::"r"(cluster_addr) : "memory");
}

// Arrives on an mbarrier of this or another CTA of the cluster as a pure signal (default .release.cta: no
// cluster-wide ordering of this thread's writes). NOTES: a stage's release needs none, its reads were wgmma's,
// complete at wait_group; a .release.cluster arrive per K block made multicast 1.5-1.9x slower
// (benchmarks/KERNEL_LOG.md v3b).
__device__ __forceinline__ void mbarrier_arrive_cluster_signal(u32 cluster_addr) {
  asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];" ::"r"(cluster_addr) : "memory");
}

// Like mbarrier_wait, acquiring at cluster scope (the arrivals came from other CTAs).
__device__ __forceinline__ void mbarrier_wait_cluster(u64* bar, u32 phase) {
  u32 done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(phase)
        : "memory");
  } while (!done);
}

// ---- barriers, registers -------------------------------------------------------------------
__device__ __forceinline__ void named_barrier_sync(u32 id, u32 num_threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(num_threads) : "memory");
}

// Signals named barrier `id` without waiting (the waiting side uses named_barrier_sync).
__device__ __forceinline__ void named_barrier_arrive(u32 id, u32 num_threads) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(num_threads) : "memory");
}

template <u32 kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kRegs));
}

template <u32 kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kRegs));
}

// ---- wgmma bookkeeping ---------------------------------------------------------------------
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(kPending) : "memory");
}

// Keeps the compiler from moving accesses of `x` across wgmma issue/wait points.
__device__ __forceinline__ void fence_register(float& x) { asm volatile("" : "+f"(x)::"memory"); }

// Shared-memory matrix descriptor for a K-major tile with 128-byte swizzle: rows of 128 bytes,
// 8-row core groups 1024 bytes apart (stride byte offset); leading byte offset unused.
__device__ __forceinline__ u64 make_smem_desc_sw128(const void* smem_ptr) {
  const u64 addr = smem_addr(smem_ptr);
  u64 desc = 0;
  desc |= (addr & 0x3FFFFull) >> 4;      // start address, bits 0-13
  desc |= (u64)(1024 >> 4) << 32;        // stride byte offset, bits 32-45
  desc |= (u64)1 << 62;                  // layout: 128B swizzle
  return desc;
}

// ---- epilogue ------------------------------------------------------------------------------
// Packs two floats into bf16x2 with round-to-nearest-even; `lo` lands at the lower address.
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
  u32 out;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(out) : "f"(hi), "f"(lo));
  return out;
}

// Stores four 8x8 b16 matrices; lane i gives the address of row (i % 8) of matrix (i / 8).
__device__ __forceinline__ void stmatrix_x4(void* smem_ptr, u32 r0, u32 r1, u32 r2, u32 r3) {
  asm volatile("stmatrix.sync.aligned.x4.m8n8.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(smem_addr(smem_ptr)),
               "r"(r0), "r"(r1), "r"(r2), "r"(r3)
               : "memory");
}

__device__ __forceinline__ i32 load_global_nc(const i32* ptr) {
  i32 v;
  asm volatile("ld.global.nc.b32 %0, [%1];" : "=r"(v) : "l"(ptr));
  return v;
}

__device__ __forceinline__ float load_global_nc(const float* ptr) {
  float v;
  asm volatile("ld.global.nc.f32 %0, [%1];" : "=f"(v) : "l"(ptr));
  return v;
}

// Two consecutive fp32 values (8-byte aligned) into shared memory: a staged f32 atom of D.
__device__ __forceinline__ void store_shared_v2(void* ptr, float x, float y) {
  asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(smem_addr(ptr)), "f"(x), "f"(y) : "memory");
}
// Two consecutive fp32 values (8-byte aligned) straight to global memory (a ragged boundary row).
__device__ __forceinline__ void store_global_v2(float* ptr, float x, float y) {
  asm volatile("st.global.v2.f32 [%0], {%1, %2};" ::"l"(ptr), "f"(x), "f"(y) : "memory");
}
__device__ __forceinline__ void store_global_b32(void* ptr, u32 x) {
  asm volatile("st.global.b32 [%0], %1;" ::"l"(ptr), "r"(x) : "memory");
}

}  // namespace dgpt::ptx
