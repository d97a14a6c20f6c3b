// Persistent tile scheduler shared by the layouts. Every role of a CTA (producer and math
// warpgroups) runs its own copy and walks the same tile sequence, decided only by device data.
#pragma once

#include "kernel_config.cuh"
#include "ptx.cuh"

namespace dgpt::sched {

struct Tile {
  u32 m_block;   // block row inside the group (masked, ragged) or the whole problem
  u32 n_block;
  u32 row;       // the tile's first row of A and D (masked: inside its group)
  u32 row_end;   // rows at or past this are not the tile's: M (Mmax for masked), or a ragged group's end
  u32 group_a;   // group of A's rows and of D: A's and D's third TMA coordinate (k_grouped: D's group)
  u32 group_b;   // group of B: the expert, B's third TMA coordinate (k_grouped: the group)
  bool compute;  // false: every row is padding (or the group has no K): write zeros without loading anything
  bool exists;   // false: an index past the last tile (ragged): nothing to load, compute or store
  // true: a multicast_a pair's column past N: this CTA loads its half of the pair's A for its peer and passes
  // the stages on, computing and storing nothing
  bool peer_only;
  u32 k_begin;   // k_grouped: the group's columns [k_begin, k_end) of A and B; else [0, K)
  u32 k_end;
};

// A cluster (consecutive blockIdx.x) walks tiles as one unit: with split-K its kClusterSize CTAs take
// the same tile, one K slice each; with multicast_a (kColumnsPerCluster = 2, normal layout) its two CTAs
// take the two tiles of a column pair, side by side in one row block, which share A's stages.
//
// NOTES: the ragged tile loop ends on a bound made of kernel parameters only (max_tiles), never on a value
// loaded from the device: ptxas treats a loop whose exit depends on loaded data as divergent, and everything
// it carries (the stage counter, the shared-memory descriptors) then leaves the uniform datapath. The ragged
// main loop took 184-187 instructions per K block that way against 146 (SASS, run 63e8252). Indices between
// the last real tile and the bound come back as tiles that do not exist: at most G + 1 row blocks of them.
// The masked loop ends after its last real tile instead: with decode-sized masks (8 rows of Mmax = 4096 per
// group) nearly every index up to the parameters' bound has no tile, 319 per CTA, and walking them made
// G = 16 decode launches 10-31% slower (90.1 against 68.7 us, benchmarks/KERNEL_LOG.md v15).
template <Layout kLayout, u32 kBlockM, u32 kBlockN, u32 kN, u32 kK, u32 kNumNBlocksPerBand, u32 kClusterSize,
          u32 kColumnsPerCluster = 1>
struct TileScheduler {
  static constexpr u32 kNumNBlocks = tile::ceil_div(kN, kBlockN);
  // The scheduler walks columns of tiles in units: one column, or a multicast pair.
  static constexpr u32 kNumNUnits = tile::ceil_div(kNumNBlocks, kColumnsPerCluster);
  static constexpr u32 kNumUnitsPerBand = kNumNBlocksPerBand / kColumnsPerCluster;
  static_assert(kColumnsPerCluster == 1 || (kLayout == Layout::kNormal && kColumnsPerCluster == kClusterSize),
                "column pairs: the normal layout, one column per CTA of the cluster");
  static_assert(kNumUnitsPerBand > 0, "a band holds at least one unit");

  const GemmParams& params;
  u32 next;              // next linear tile index of this CTA
  u32 group = 0;         // masked, k_grouped, ragged: group holding `next` (ragged: G = the rows past the total)
  u32 group_start = 0;   // masked, k_grouped, ragged: linear index of that group's first tile
  u32 num_m_blocks = 0;  // normal/contiguous/k_grouped: all rows; masked, ragged: rows of `group`
  u32 row_begin = 0;     // ragged: rows [row_begin, row_end) of `group`
  u32 row_end = 0;
  u32 k_begin = 0;       // k_grouped: columns [k_begin, k_end) of `group`
  u32 k_end = 0;
  u32 max_tiles = 0;     // ragged: a bound on the tiles from the parameters alone (see NOTES)

  __device__ explicit TileScheduler(const GemmParams& p) : params(p), next(blockIdx.x / kClusterSize) {
    if constexpr (kLayout == Layout::kMasked) {
      num_m_blocks = masked_m_blocks(0);
    } else {
      num_m_blocks = tile::ceil_div(p.shape_m, kBlockM);
    }
    if constexpr (kLayout == Layout::kKGrouped) k_end = group_k_end(0, 0);
    if constexpr (kLayout == Layout::kRagged) enter_ragged_group(0);
    // Ragged: each group at most one partial row block beyond its share of M, plus the rows past the total:
    // ceil(M / BLOCK_M) + G + 1 row blocks.
    if constexpr (kLayout == Layout::kRagged) {
      max_tiles = (tile::ceil_div(p.shape_m, kBlockM) + p.num_groups + 1) * kNumNBlocks;
    }
  }

  // Ragged: an index past the last real tile, below max_tiles: nothing to do.
  __device__ static void no_tile(Tile& tile) {
    tile = Tile{};
    tile.compute = false;
    tile.exists = false;
  }

  // ragged: the rows of group g, which begin at row_begin: its clamped size (a running total past M is
  // clamped to M); group G stands for the rows past the total, which come out as zeros.
  __device__ void enter_ragged_group(u32 g) {
    if (g < params.num_groups) {
      const i32 size = ptx::load_global_nc(params.grouped_layout + g);
      const u32 rows = size <= 0 ? 0u : static_cast<u32>(size);
      row_end = rows >= params.shape_m - row_begin ? params.shape_m : row_begin + rows;
    } else {
      row_end = params.shape_m;
    }
    num_m_blocks = tile::ceil_div(row_end - row_begin, kBlockM);
  }

  // k_grouped: where group g's columns end when they begin at `begin`. Negative sizes count as 0 and a
  // running total past K is clamped to K.
  __device__ u32 group_k_end(u32 g, u32 begin) const {
    const i32 size = ptx::load_global_nc(params.grouped_layout + g);
    const u32 columns = size <= 0 ? 0u : static_cast<u32>(size);
    return columns >= kK - begin ? kK : begin + columns;
  }

  // Masked rows of group g, clamped to [0, Mmax], in blocks.
  __device__ u32 masked_m_blocks(u32 g) const {
    if (g >= params.num_groups) return 0;
    const i32 rows = ptx::load_global_nc(params.grouped_layout + g);
    const u32 clamped = rows <= 0 ? 0u : (static_cast<u32>(rows) > params.shape_m ? params.shape_m : static_cast<u32>(rows));
    return tile::ceil_div(clamped, kBlockM);
  }

  // Tiles of one group are visited in bands of kNumNBlocksPerBand column blocks; inside a band,
  // consecutive tiles share a row block (A reuse) and the band's B columns stay hot in L2. In units:
  // `unit` is a column block, or a column pair.
  __device__ static void rasterize(u32 local, u32 m_blocks, u32& m_block, u32& unit) {
    const u32 per_band = m_blocks * kNumUnitsPerBand;
    const u32 band = local / per_band;
    const u32 first = band * kNumUnitsPerBand;
    const u32 width = (kNumNUnits - first) < kNumUnitsPerBand ? (kNumNUnits - first) : kNumUnitsPerBand;
    const u32 in_band = local - band * per_band;
    m_block = in_band / width;
    unit = first + in_band % width;
  }

  // Returns false once this CTA has no tiles left.
  __device__ bool next_tile(Tile& tile) {
    const u32 index = next;
    next += gridDim.x / kClusterSize;
    tile.exists = true;
    tile.peer_only = false;
    if constexpr (kLayout == Layout::kMasked) {
      // Advance to the group holding `index` (tile indices of a CTA only grow); past the last group, done.
      while (group < params.num_groups && index >= group_start + num_m_blocks * kNumNBlocks) {
        group_start += num_m_blocks * kNumNBlocks;
        num_m_blocks = masked_m_blocks(++group);
      }
      if (group >= params.num_groups) return false;
      rasterize(index - group_start, num_m_blocks, tile.m_block, tile.n_block);
      tile.row = tile.m_block * kBlockM;
      tile.row_end = params.shape_m;
      tile.group_a = tile.group_b = group;
      tile.compute = true;
      tile.k_begin = 0;
      tile.k_end = kK;
      return true;
    } else if constexpr (kLayout == Layout::kRagged) {
      if (index >= max_tiles) return false;
      // Groups in order, each from the row where the previous one ended; then the rows past the total (group
      // G); past those, indices without a tile (group G + 1).
      while (group <= params.num_groups && index >= group_start + num_m_blocks * kNumNBlocks) {
        group_start += num_m_blocks * kNumNBlocks;
        row_begin = row_end;
        if (++group <= params.num_groups) enter_ragged_group(group);
      }
      if (group > params.num_groups) {
        no_tile(tile);
        return true;
      }
      rasterize(index - group_start, num_m_blocks, tile.m_block, tile.n_block);
      tile.row = row_begin + tile.m_block * kBlockM;
      tile.row_end = row_end;
      tile.group_a = 0;
      tile.compute = group < params.num_groups;
      tile.group_b = tile.compute ? group : 0u;
      tile.k_begin = 0;
      tile.k_end = kK;
      return true;
    } else if constexpr (kLayout == Layout::kKGrouped) {
      // Every group has all M x N tiles; only its K range (from the device-side sizes) differs.
      const u32 per_group = num_m_blocks * kNumNBlocks;
      while (index >= group_start + per_group) {
        group_start += per_group;
        if (++group >= params.num_groups) return false;
        k_begin = k_end;
        k_end = group_k_end(group, k_begin);
      }
      rasterize(index - group_start, num_m_blocks, tile.m_block, tile.n_block);
      tile.row = tile.m_block * kBlockM;
      tile.row_end = params.shape_m;
      tile.group_a = tile.group_b = group;
      tile.compute = k_end > k_begin;
      tile.k_begin = k_begin;
      tile.k_end = k_end;
      return true;
    } else {
      if (index >= num_m_blocks * kNumNUnits) return false;
      u32 unit;
      rasterize(index, num_m_blocks, tile.m_block, unit);
      // A pair's second column may lie past N (an odd column count): the peer still needs this CTA's half of A.
      tile.n_block = unit * kColumnsPerCluster + (kColumnsPerCluster > 1 ? blockIdx.x % kClusterSize : 0u);
      tile.peer_only = tile.n_block >= kNumNBlocks;
      tile.row = tile.m_block * kBlockM;
      tile.row_end = params.shape_m;
      tile.group_a = 0;
      tile.group_b = 0;
      tile.compute = true;
      tile.k_begin = 0;
      tile.k_end = kK;
      if constexpr (kLayout == Layout::kContiguous) {
        // The block's expert is its first row's; the layout puts experts on block boundaries.
        const i32 expert = ptx::load_global_nc(params.grouped_layout + tile.row);
        tile.compute = expert >= 0 && static_cast<u32>(expert) < params.num_groups;
        tile.group_b = tile.compute ? static_cast<u32>(expert) : 0u;
      }
      return true;
    }
  }
};

}  // namespace dgpt::sched
