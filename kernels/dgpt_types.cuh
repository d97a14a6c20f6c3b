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
  TmaDescriptor tma_a;  // A as (K, M, G_a), fp8, box (BLOCK_K, a_box_rows or half of it, 1), 128B swizzle
  TmaDescriptor tma_b;  // B as (K, N, G), fp8, box (BLOCK_K, BLOCK_N, 1), 128B swizzle
  TmaDescriptor tma_d;       // D as (N, M, G_d), bf16 or f32, box (one 128-byte atom's columns, 64 rows, 1), 128B swizzle
  TmaDescriptor tma_d_tail;  // the same D, box (tail atom width, 64 rows, 1): the columns past the last whole atom
  // m_indices [M] (contiguous), masked_m [G] (masked) or group_sizes [G] (k_grouped, ragged); else null
  const i32* grouped_layout;
  // D for stores without TMA (a ragged group's last tile, when the next group begins inside it): row-major
  // [G_d][rows][N], group g from element g * d_group_stride.
  void* d_direct;
  u64 d_group_stride;
  // Scales (null when the config has none): scale_a[group_a * a_group_stride + row * a_row_stride],
  // scale_b[group_b * b_group_stride + col * b_col_stride], strides in elements (0: broadcast).
  const float* scale_a;
  const float* scale_b;
  u32 scale_a_group_stride, scale_a_row_stride;
  u32 scale_b_group_stride, scale_b_col_stride;
  u32 shape_m;     // rows of A: M (normal, contiguous, k_grouped, ragged) or Mmax per group (masked)
  u32 num_groups;  // G (1 for normal)
  // Rows of A per stage: BLOCK_M, or round_up(rows of A, 8) when every row fits in one block (small M;
  // not with multicast_a, whose CTAs load half of BLOCK_M each). Out-of-bounds box rows are zero-filled
  // but cost TMA time as if loaded; the kernel zeroes the rows it no longer loads once.
  u32 a_box_rows;
};

// Tile and shared-memory arithmetic of the kernel, shared with the host (kernel_config.cuh).
namespace tile {

constexpr u32 kBlockK = 128;  // K per stage; fp8 elements = bytes: one 128B-swizzle row
constexpr u32 kWgmmaM = 64;   // rows per wgmma

DGPT_HOST_DEVICE constexpr u32 align_up(u32 x, u32 a) { return (x + a - 1) / a * a; }
DGPT_HOST_DEVICE constexpr u32 ceil_div(u32 x, u32 y) { return (x + y - 1) / y; }

// The D tile leaves shared memory in atoms of one swizzle width each: 128-byte atoms (128B swizzle: 64
// bf16 or 32 f32 columns) for the first BLOCK_N / atom * atom columns, then the tail (the rest: for bf16
// 16, 32 or 48 columns, for f32 16) in the widest swizzle that tiles it. NOTES: one narrow swizzle for the
// whole tile (BLOCK_N = 208 used to go out as 13 boxes of 16 columns) made the epilogue the bottleneck of
// small-K shapes (benchmarks/KERNEL_LOG.md, v4).
DGPT_HOST_DEVICE constexpr u32 d_atom_cols(u32 out_bytes) { return 128 / out_bytes; }
DGPT_HOST_DEVICE constexpr u32 d_main_cols(u32 block_n, u32 out_bytes) {
  return block_n / d_atom_cols(out_bytes) * d_atom_cols(out_bytes);
}
DGPT_HOST_DEVICE constexpr u32 d_tail_cols(u32 block_n, u32 out_bytes) { return block_n % d_atom_cols(out_bytes); }
// Bytes per row of one atom that tiles `cols` columns (cols * out_bytes a multiple of 32).
DGPT_HOST_DEVICE constexpr u32 swizzle_d_bytes(u32 cols, u32 out_bytes) {
  return (cols * out_bytes) % 128 == 0 ? 128 : ((cols * out_bytes) % 64 == 0 ? 64 : 32);
}
// An f32 D goes out through a ring of this many one-atom buffers per storing warpgroup (64 rows x 128
// bytes each): the whole f32 tile (up to 104 KiB) would leave too little shared memory for stages.
constexpr u32 kF32StagingBuffers = 2;
constexpr u32 kF32StagingBufferBytes = 64 * 128;

// Bytes of the shared-memory pieces; kernel_config.cuh's SmemLayout places them.
DGPT_HOST_DEVICE constexpr u32 smem_a_stage_bytes(u32 block_m) { return block_m * kBlockK; }
DGPT_HOST_DEVICE constexpr u32 smem_b_stage_bytes(u32 block_n) { return block_n * kBlockK; }

}  // namespace tile
}  // namespace dgpt
