// Types, enums and layout arithmetic shared by the kernels and the host launcher (ffi/).
// Must compile as plain C++17 on the host and under NVCC/NVRTC without any system header.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define DGPT_HOST_DEVICE __host__ __device__
#else
#define DGPT_HOST_DEVICE
#endif

namespace dgpt {

using u8 = unsigned char;
using u16 = unsigned short;
using u32 = unsigned int;
using u64 = unsigned long long;
using i32 = int;

// Same size as CUtensorMap (128 bytes) and the 64-byte alignment TMA needs, so the kernel needs no
// driver header (NVRTC). CUDA 13 declares CUtensorMap 128-byte aligned; the host copies it bytewise.
struct alignas(64) TmaDescriptor {
  u64 opaque[16];
};

// The kernel's only parameter, passed as a __grid_constant__ so TMA can use the descriptors in place.
struct GemmParams {
  TmaDescriptor tma_a;  // A as (K, M, G_a), fp8, box (BLOCK_K, BLOCK_M, 1), 128B swizzle
  TmaDescriptor tma_b;  // B as (K, N, G), fp8, box (BLOCK_K, BLOCK_N, 1), 128B swizzle
  TmaDescriptor tma_d;       // D as (N, M, G_a), bf16, box (64 columns, 64 rows, 1), 128B swizzle
  TmaDescriptor tma_d_tail;  // the same D, box (tail atom width, 64 rows, 1): BLOCK_N % 64 columns
  const i32* grouped_layout;  // m_indices [M] (contiguous) or masked_m [G] (masked); else null
  u32 shape_m;     // rows of A: M (normal, contiguous) or Mmax per group (masked)
  u32 num_groups;  // G (1 for normal)
  // Rows of A per TMA box: BLOCK_M, or round_up(rows of A, 8) when every row fits in one block (small
  // M). Out-of-bounds box rows are zero-filled but cost TMA time as if loaded; the kernel zeroes the
  // rows it no longer loads once.
  u32 a_box_rows;
};

// Tile and shared-memory arithmetic of the kernel, shared with the host (kernel_config.cuh).
namespace tile {

constexpr u32 kBlockK = 128;  // K per stage; fp8 elements = bytes: one 128B-swizzle row
constexpr u32 kWgmmaM = 64;   // rows per wgmma

DGPT_HOST_DEVICE constexpr u32 align_up(u32 x, u32 a) { return (x + a - 1) / a * a; }
DGPT_HOST_DEVICE constexpr u32 ceil_div(u32 x, u32 y) { return (x + y - 1) / y; }

// The D tile leaves shared memory in atoms of one swizzle width each: 64-column atoms (128B swizzle)
// for the first BLOCK_N / 64 * 64 columns, then the tail (BLOCK_N % 64 columns: 16, 32 or 48) in the
// widest swizzle that tiles it. NOTES: one narrow swizzle for the whole tile (BLOCK_N = 208 used to
// go out as 13 boxes of 16 columns) made the epilogue the bottleneck of small-K shapes
// (benchmarks/KERNEL_LOG.md, v4).
constexpr u32 kDAtomCols = 64;
DGPT_HOST_DEVICE constexpr u32 d_main_cols(u32 block_n) { return block_n / kDAtomCols * kDAtomCols; }
DGPT_HOST_DEVICE constexpr u32 d_tail_cols(u32 block_n) { return block_n % kDAtomCols; }
// Bytes per row of one atom that tiles `cols` columns (cols a multiple of 16).
DGPT_HOST_DEVICE constexpr u32 swizzle_d_bytes(u32 cols) {
  return (cols * 2) % 128 == 0 ? 128 : ((cols * 2) % 64 == 0 ? 64 : 32);
}

// Shared memory: [D tile][A stages][B stages][K-split partials][full barriers][empty barriers]
// [split-K barriers], base aligned to 1024 bytes (the 128B swizzle period); the extra 1024 covers
// aligning the dynamic base.
DGPT_HOST_DEVICE constexpr u32 smem_d_bytes(u32 block_m, u32 block_n) { return align_up(block_m * block_n * 2, 1024); }
DGPT_HOST_DEVICE constexpr u32 smem_a_stage_bytes(u32 block_m) { return block_m * kBlockK; }
DGPT_HOST_DEVICE constexpr u32 smem_b_stage_bytes(u32 block_n) { return block_n * kBlockK; }
// A fp32 tile of partial sums when K is split: over a cluster (the other ranks' K slices), or inside
// the CTA (k_interleave: the second warpgroup's K blocks).
DGPT_HOST_DEVICE constexpr u32 smem_partials_bytes(u32 block_m, u32 block_n, u32 num_k_splits, bool k_interleave) {
  return num_k_splits > 1 || k_interleave ? block_m * block_n * 4 : 0;
}
DGPT_HOST_DEVICE constexpr u32 smem_size(u32 block_m, u32 block_n, u32 num_stages, u32 num_k_splits,
                                         bool k_interleave) {
  return smem_d_bytes(block_m, block_n) +
         num_stages * (smem_a_stage_bytes(block_m) + smem_b_stage_bytes(block_n)) +
         smem_partials_bytes(block_m, block_n, num_k_splits, k_interleave) + num_stages * 2 * 8 +
         (num_k_splits > 1 ? 2 * 8 : 0) + 1024;
}

}  // namespace tile
}  // namespace dgpt
