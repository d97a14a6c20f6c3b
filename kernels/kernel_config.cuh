// The one kernel configuration, from the Python heuristics to the kernel, and its validity rules.
//
// jax_dgpt/kernel_config.py declares the same fields by name (a CPU test compares the two). The
// configuration travels as one FFI dictionary attribute "config"; the handler decodes it into
// KernelConfig (ffi/kernel_config.h), checks it with config_error() below, generates a source that
// fills the compile-time fields, and the kernel template reads them by name. Every limit and rule is
// written here once: the host checks it, the heuristics ask the host (jax_dgpt._C.check_config), and
// the kernel static_asserts the compile-time part. Messages name limits by their _C.limits() keys.
//
// Must compile as plain C++17 on the host and under NVCC/NVRTC without any system header.
#pragma once

#include "dgpt_types.cuh"

namespace dgpt {

// Which problem the kernel solves; the tile scheduler and the epilogue's row mask differ.
enum class Layout : u32 {
  kNormal = 0,      // D[M,N] = A[M,K] * B[N,K]^T
  kContiguous = 1,  // D[M,N] = A[M,K] * B[e(m),N,K]^T, e(m) = m_indices[m], -1 = padding row
  kMasked = 2,      // D[g,m,N] = A[g,m,K] * B[g,N,K]^T for m < masked_m[g]
  kKGrouped = 3,    // D[g,M,N] (+)= A[M,Kg] * B[N,Kg]^T, Kg = group g's columns [offset_g, offset_g + size_g)
  kRagged = 4,      // D[r,N] = A[r,K] * B[g,N,K]^T for the rows r of group g: [offset_g, offset_g + size_g)
};

// Element types of the operands (the fp8 code is the field's value) and of the output.
enum class Fp8Type : u32 { kE4M3 = 0, kE5M2 = 1 };
enum class OutType : u32 {
  kBF16 = 0,  // rounded once, leaves through stmatrix and TMA stores
  kF32 = 1,   // leaves an atom at a time through shared memory: TMA stores, or TMA reduce-adds when accumulating
};

// Integer fields, each X(name, compile_time). Compile-time fields are constants of the kernel (one
// cubin per value); run-time fields reach it through GemmParams or the launch.
#define DGPT_KERNEL_CONFIG_FIELDS(X)                                                                    \
  X(m, false)            /* rows of A: M (normal, contiguous) or Mmax per group (masked) */            \
  X(n, true)             /* columns of D (N), a multiple of 8 */                                        \
  X(k, true)             /* the reduction length (K), a multiple of 16 */                               \
  X(num_groups, false)   /* G: experts (1 for normal) */                                                \
  X(block_m, true)       /* rows of one output tile: 64, 128 or 256 */                                  \
  X(block_n, true)       /* columns of one output tile */                                               \
  X(num_stages, true)    /* shared-memory ring of A/B stages */                                         \
  X(grid_size, false)    /* persistent CTAs launched (whole clusters) */                                \
  X(num_k_splits, true)  /* K splitting over a cluster: CTAs sharing one tile, one K slice each */      \
  X(k_interleave, true)  /* K splitting inside a CTA: 1 = two math warpgroups take alternate K blocks */ \
  X(multicast_a, true)   /* 1: clusters of 2 CTAs take column-adjacent tiles and multicast A between them */ \
  X(a_dtype, true)       /* Fp8Type of A */                                                             \
  X(b_dtype, true)       /* Fp8Type of B */                                                             \
  X(out_dtype, true)     /* OutType of D */                                                             \
  X(accumulate, true)    /* 1: D += result (f32; the output buffer holds c on entry) */                 \
  X(has_scale_a, true)   /* 1: result rows scaled by fp32 scale_a (per tensor or per row of A) */       \
  X(has_scale_b, true)   /* 1: result columns scaled by fp32 scale_b (per tensor, group or row of B) */

struct KernelConfig {
  Layout layout;
#define DGPT_CONFIG_MEMBER(name, compile_time) long long name;
  DGPT_KERNEL_CONFIG_FIELDS(DGPT_CONFIG_MEMBER)
#undef DGPT_CONFIG_MEMBER
};

// Fields in all: the layout plus the integer fields.
#define DGPT_COUNT_FIELD(name, compile_time) +1
constexpr int kNumConfigFields = 1 DGPT_KERNEL_CONFIG_FIELDS(DGPT_COUNT_FIELD);
#undef DGPT_COUNT_FIELD

// --- limits (exported to Python as jax_dgpt._C.limits()) -------------------------------------------
namespace limits {
constexpr long long kBlockMSmall = 64;         // block_m choices: one or two 64-row wgmma tiles
constexpr long long kBlockMLarge = 128;
// Two row waves: each math warpgroup takes two 64-row blocks in turn with one wgmma accumulator (the
// promoted sums of both stay in registers), so a tile shares each B stage between 256 rows.
constexpr long long kBlockMDouble = 256;
// NOTES: two waves keep two promoted 64 x block_n sums plus one accumulator: 3/2 block_n fp32 per thread.
constexpr long long kMaxBlockNDouble = 128;
constexpr long long kBlockNStep = 16;          // wgmma N step is 8; 16 keeps the stmatrix chunks whole
// NOTES: the math warpgroups keep a 64 x block_n fp32 accumulator plus the promoted copy in registers;
// 208 columns is the widest that ptxas fits without spilling for every layout (224 spills in the
// masked kernel, 256 in all; -Xptxas -v, nvcc 13.0).
constexpr long long kMaxBlockN = 208;
constexpr long long kMinStages = 2;
constexpr long long kMaxStages = 32;
constexpr long long kMaxKSplits = 8;           // a portable cluster
constexpr long long kKAlignment = 16;          // TMA: 16-byte row strides of fp8 A and B
constexpr long long kNAlignment = 8;           // TMA: 16-byte row strides of the bf16 output
// Experts start at multiples of this in the contiguous layout; the kernel reads one expert per block.
constexpr long long kMAlignmentContiguous = 128;
constexpr long long kMaxDim = 1ll << 31;       // 32-bit tile arithmetic and TMA coordinates
constexpr long long kMaxGroups = 1ll << 20;
constexpr long long kMaxGridSize = 4096;
constexpr long long kMaxSmemBytes = 232448;    // 227 KiB, the sm_90 opt-in limit per block
}  // namespace limits

// --- derived quantities ------------------------------------------------------------------------------
// One math warpgroup per 64 rows of a row wave; K interleave adds a second one for the same 64 rows.
DGPT_HOST_DEVICE constexpr u32 num_math_warpgroups(const KernelConfig& c) {
  return c.block_m == limits::kBlockMSmall && c.k_interleave == 0 ? 1u : 2u;
}
// Row waves of a tile: the 64-row blocks each math warpgroup computes, one after the other.
DGPT_HOST_DEVICE constexpr u32 row_waves(const KernelConfig& c) { return c.block_m == limits::kBlockMDouble ? 2u : 1u; }
// Plus the producer warpgroup.
DGPT_HOST_DEVICE constexpr u32 num_threads(const KernelConfig& c) { return 128u * (num_math_warpgroups(c) + 1u); }
// CTAs of a cluster: the K splits of one tile, or the two column-adjacent tiles that share A (multicast_a).
DGPT_HOST_DEVICE constexpr u32 cluster_size(const KernelConfig& c) {
  return c.multicast_a != 0 ? 2u : static_cast<u32>(c.num_k_splits);
}
// Tile columns a cluster takes side by side (multicast_a: one per CTA); 1 otherwise.
DGPT_HOST_DEVICE constexpr u32 columns_per_cluster(const KernelConfig& c) { return c.multicast_a != 0 ? 2u : 1u; }
DGPT_HOST_DEVICE constexpr bool splits_k(const KernelConfig& c) { return c.num_k_splits > 1 || c.k_interleave != 0; }

// Shared memory, from a base aligned to 1024 bytes (the 128B swizzle period): [D tile (bf16) or f32 staging]
// [A stages][B stages][fp32 partial tile (K splitting)][scales][full, empty barriers][split-K barriers].
// The extra 1024 bytes of `total` cover aligning the dynamic base.
struct SmemLayout {
  u32 d, a, b, partials, scales, full, empty, split, total;
};
// Per math warpgroup: scale_a of its 64 rows in each row wave, then the tile's block_n columns of scale_b (fp32).
DGPT_HOST_DEVICE constexpr u32 scale_floats_per_warpgroup(const KernelConfig& c) {
  return static_cast<u32>(tile::kWgmmaM * row_waves(c) + c.block_n);
}
// The bf16 D tile, or the f32 staging ring of each storing warpgroup (one per 64 rows of a row wave).
DGPT_HOST_DEVICE constexpr u32 smem_d_bytes(const KernelConfig& c) {
  const u32 block_m = static_cast<u32>(c.block_m), block_n = static_cast<u32>(c.block_n);
  if (c.out_dtype == static_cast<long long>(OutType::kBF16)) return tile::align_up(block_m * block_n * 2, 1024);
  return block_m / tile::kWgmmaM / row_waves(c) * tile::kF32StagingBuffers * tile::kF32StagingBufferBytes;
}
DGPT_HOST_DEVICE constexpr SmemLayout smem_layout(const KernelConfig& c) {
  const u32 block_m = static_cast<u32>(c.block_m), block_n = static_cast<u32>(c.block_n);
  const u32 stages = static_cast<u32>(c.num_stages);
  const bool scaled = c.has_scale_a != 0 || c.has_scale_b != 0;
  SmemLayout s{};
  s.d = 0;
  s.a = smem_d_bytes(c);
  s.b = s.a + stages * tile::smem_a_stage_bytes(block_m);
  s.partials = s.b + stages * tile::smem_b_stage_bytes(block_n);
  s.scales = s.partials + (splits_k(c) ? block_m * block_n * 4 : 0);
  s.full = tile::align_up(s.scales + (scaled ? num_math_warpgroups(c) * scale_floats_per_warpgroup(c) * 4 : 0), 8);
  s.empty = s.full + stages * 8;
  s.split = s.empty + stages * 8;
  s.total = s.split + (c.num_k_splits > 1 ? 2 * 8 : 0) + 1024;
  return s;
}
DGPT_HOST_DEVICE constexpr u32 smem_size(const KernelConfig& c) { return smem_layout(c).total; }

// The TMA boxes the kernel loads and stores, for the host to encode: rows x inner elements, swizzle in
// bytes. The kernel's loads and stores use the same tile:: arithmetic.
struct TmaBoxes {
  u32 inner_k;         // A and B: K elements per box (one 128-byte swizzle row)
  u32 a_rows;          // A: rows of a stage: block_m, or every row of A (rounded up to 8) when they fit in one block
  u32 a_load_rows;     // A: rows of one TMA load: a_rows, or half of them with multicast_a (each CTA loads one half)
  u32 b_rows;          // B: the tile's columns
  u32 d_rows;          // D: one math warpgroup's rows
  u32 d_main_cols;     // D: columns of one 128-byte atom (0: the tile has none)
  u32 d_tail_cols;     // D: columns of one tail atom (0: none)
  u32 d_tail_swizzle;  // D: swizzle of the tail atoms, bytes
};
DGPT_HOST_DEVICE constexpr u32 out_bytes(const KernelConfig& c) {
  return c.out_dtype == static_cast<long long>(OutType::kF32) ? 4u : 2u;
}
DGPT_HOST_DEVICE constexpr TmaBoxes tma_boxes(const KernelConfig& c) {
  const u32 tile_cols = static_cast<u32>(c.block_n), bytes = out_bytes(c);
  const u32 tail = tile::d_tail_cols(tile_cols, bytes), tail_swizzle = tail > 0 ? tile::swizzle_d_bytes(tail, bytes) : 0u;
  // NOTES: when all of A's rows fit in one block (small M, or a small Mmax), load only those rows: the TMA
  // unit spends time on zero-filled out-of-bounds rows too (M = 1 ran 1.4x slower than M = 64 on the same
  // tiles, benchmarks/KERNEL_LOG.md v2); the kernel zeroes the rows it no longer loads once.
  // With multicast_a the box is never trimmed: both CTAs' halves make up one block_m stage.
  const long long all_rows = (c.m + 7) / 8 * 8;
  const u32 a_rows = static_cast<u32>(c.multicast_a != 0 || c.block_m < all_rows ? c.block_m : all_rows);
  return TmaBoxes{tile::kBlockK,
                  a_rows,
                  a_rows / columns_per_cluster(c),
                  tile_cols,
                  tile::kWgmmaM,
                  tile::d_main_cols(tile_cols, bytes) > 0 ? tile::d_atom_cols(bytes) : 0u,
                  tail_swizzle / bytes,
                  tail_swizzle};
}

// --- validity ------------------------------------------------------------------------------------------
// The rule a configuration breaks, or nullptr. Compile-time fields only: what the kernel static_asserts.
DGPT_HOST_DEVICE constexpr const char* static_config_error(const KernelConfig& c) {
  if (c.layout != Layout::kNormal && c.layout != Layout::kContiguous && c.layout != Layout::kMasked &&
      c.layout != Layout::kKGrouped && c.layout != Layout::kRagged) {
    return "layout must be normal, contiguous, masked, k_grouped or ragged";
  }
  if (c.n <= 0 || c.n % limits::kNAlignment != 0 || c.n > limits::kMaxDim) {
    return "n must be a positive multiple of n_alignment, at most max_dim";
  }
  if (c.k <= 0 || c.k % limits::kKAlignment != 0 || c.k > limits::kMaxDim) {
    return "k must be a positive multiple of k_alignment, at most max_dim";
  }
  if (c.block_m != limits::kBlockMSmall && c.block_m != limits::kBlockMLarge && c.block_m != limits::kBlockMDouble) {
    return "block_m must be block_m_small, block_m_large or block_m_double";
  }
  if (c.block_n < limits::kBlockNStep || c.block_n > limits::kMaxBlockN || c.block_n % limits::kBlockNStep != 0) {
    return "block_n must be a multiple of block_n_step in [block_n_step, max_block_n]";
  }
  // NOTES: the contiguous row mask, the ragged boundary stores and the k_grouped K-block zeroing work per
  // warpgroup's 64 rows; the masked layout has none of them (its tiles are whole row blocks of one group).
  if (c.block_m == limits::kBlockMDouble &&
      ((c.layout != Layout::kNormal && c.layout != Layout::kMasked) || splits_k(c) ||
       c.block_n > limits::kMaxBlockNDouble)) {
    return "block_m_double needs the normal or masked layout, num_k_splits 1, k_interleave 0 and block_n <= "
           "max_block_n_double";
  }
  if (c.num_stages < limits::kMinStages || c.num_stages > limits::kMaxStages) return "num_stages must be in [min_stages, max_stages]";
  if (c.num_k_splits < 1 || c.num_k_splits > limits::kMaxKSplits) return "num_k_splits must be in [1, max_k_splits]";
  if (c.k_interleave != 0 && c.k_interleave != 1) return "k_interleave must be 0 or 1";
  if (c.multicast_a != 0 && c.multicast_a != 1) return "multicast_a must be 0 or 1";
  // NOTES: the other layouts walk tiles per group or per expert; a pair of CTAs must share A's rows.
  if (c.multicast_a != 0 && (c.layout != Layout::kNormal || splits_k(c))) {
    return "multicast_a needs the normal layout, num_k_splits 1 and k_interleave 0";
  }
  if (c.k_interleave != 0 && (c.block_m != limits::kBlockMSmall || c.num_k_splits != 1)) {
    return "k_interleave needs block_m_small and num_k_splits 1 (it splits K inside the CTA instead)";
  }
  // NOTES: the two warpgroups take the stages of alternate ring positions; with an even ring a stage
  // always has the same reader, so a parity wait never meets the other warpgroup's unfinished phase.
  if (c.k_interleave != 0 && c.num_stages % 2 != 0) return "k_interleave needs an even num_stages";
  if ((c.a_dtype != 0 && c.a_dtype != 1) || (c.b_dtype != 0 && c.b_dtype != 1)) {
    return "a_dtype and b_dtype must be 0 (e4m3) or 1 (e5m2)";
  }
  if (c.out_dtype != 0 && c.out_dtype != 1) return "out_dtype must be 0 (bf16) or 1 (f32)";
  if ((c.accumulate != 0 && c.accumulate != 1) || (c.has_scale_a != 0 && c.has_scale_a != 1) ||
      (c.has_scale_b != 0 && c.has_scale_b != 1)) {
    return "accumulate, has_scale_a and has_scale_b must be 0 or 1";
  }
  const bool f32_out = c.out_dtype == static_cast<long long>(OutType::kF32);
  if (c.accumulate != 0 && !f32_out) return "accumulate needs out_dtype 1 (f32)";
  if (c.accumulate != 0 && c.layout != Layout::kNormal && c.layout != Layout::kKGrouped) {
    return "accumulate needs the normal or k_grouped layout";
  }
  // NOTES: a group's K range is known only on the device, so its K blocks cannot be split statically.
  if (c.layout == Layout::kKGrouped && splits_k(c)) {
    return "the k_grouped layout needs num_k_splits 1 and k_interleave 0";
  }
  if (c.layout == Layout::kRagged && splits_k(c)) return "the ragged layout needs num_k_splits 1 and k_interleave 0";
  if (c.layout == Layout::kContiguous && limits::kMAlignmentContiguous % c.block_m != 0) {
    return "the contiguous layout needs block_m to divide m_alignment_contiguous";
  }
  if (smem_size(c) > limits::kMaxSmemBytes) return "the tile and its stages need more shared memory than max_smem_bytes";
  return nullptr;
}

// Every field: what the host checks before compiling and launching.
DGPT_HOST_DEVICE constexpr const char* config_error(const KernelConfig& c) {
  if (const char* error = static_config_error(c)) return error;
  if (c.m <= 0 || c.m > limits::kMaxDim) return "m must be in [1, max_dim]";
  if (c.num_groups <= 0 || c.num_groups > limits::kMaxGroups) return "num_groups must be in [1, max_groups]";
  if (c.layout == Layout::kNormal && c.num_groups != 1) return "a normal GEMM has num_groups 1";
  // NOTES: the contiguous kernel takes each row block's expert from the block's first row; the layout
  // rule (and the CPU reference) work in 128-row blocks, so 64-row tiles match it only when all rows fit
  // in the first block.
  if (c.layout == Layout::kContiguous && c.block_m != limits::kMAlignmentContiguous && c.m > c.block_m) {
    return "the contiguous layout needs block_m = m_alignment_contiguous when m > block_m (experts are read per aligned block)";
  }
  if (c.grid_size <= 0 || c.grid_size > limits::kMaxGridSize) return "grid_size must be in [1, max_grid_size]";
  if (c.grid_size % cluster_size(c) != 0) {
    return "grid_size must be a multiple of the cluster size (num_k_splits, or 2 with multicast_a)";
  }
  return nullptr;
}

}  // namespace dgpt
