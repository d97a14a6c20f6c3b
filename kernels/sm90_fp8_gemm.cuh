// The core Hopper FP8 GEMM: D = A * B^T with fp32 accumulation, A and B e4m3 or e5m2, D bf16 or fp32
// (stored, or added into what D holds), optional fp32 scales per row of A and of B applied before the
// one rounding; for the normal, M-grouped contiguous, M-grouped masked and K-grouped layouts.
//
// One persistent CTA per SM walks tiles from the scheduler. Warp-specialised:
//   - the last warpgroup is the producer: one thread issues TMA loads of A and B tiles into a
//     ring of shared-memory stages guarded by full/empty mbarriers;
//   - one or two math warpgroups issue wgmma over each 128-wide K block, then add the block's
//     result into fp32 registers ("promotion": the tensor core's FP8 accumulator is narrower than
//     fp32), scale it, and write it through shared memory and TMA stores (bf16 via stmatrix; fp32 an
//     atom at a time, added into D by a TMA reduction when accumulating).
// K splitting (kKSplit) is the one variant of the main loop: none; over a cluster (num_k_splits CTAs
// share a tile, one K slice each, and rank 0 adds the slices); or inside the CTA (k_interleave: a
// second math warpgroup takes every other K block of the same 64 rows, and warpgroup 0 adds the two).
// With multicast_a a cluster of two CTAs takes two tiles side by side: each loads half of the shared A
// stage into both CTAs and its own B, and a stage is refilled once both CTAs' math warps released it.
#pragma once

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ != 900 || !defined(__CUDA_ARCH_FEAT_SM90_ALL))
#error "jax_dgpt kernels need sm_90a: compile with -gencode=arch=compute_90a,code=sm_90a"
#endif

#include "dgpt_types.cuh"
#include "kernel_config.cuh"
#include "ptx.cuh"
#include "tile_scheduler.cuh"
#include "wgmma_fp8.cuh"

namespace dgpt {

enum class KSplit : u32 {
  kNone = 0,        // one math warpgroup per 64 rows reads every K block
  kCluster = 1,     // num_k_splits CTAs of a cluster, one K slice each; partials meet in rank 0's registers
  kWarpgroups = 2,  // k_interleave: two math warpgroups of one CTA, alternate K blocks of the same rows
};

// `Config::value` is a constexpr KernelConfig whose compile-time fields are set (a generated source).
template <class Config>
struct Sm90Fp8Gemm {
  static constexpr KernelConfig kConfig = Config::value;
  static_assert(static_config_error(kConfig) == nullptr, "invalid kernel config: see dgpt::static_config_error");

  static constexpr Layout kLayout = kConfig.layout;
  static constexpr u32 kBlockM = static_cast<u32>(kConfig.block_m);
  static constexpr u32 kBlockN = static_cast<u32>(kConfig.block_n);
  static constexpr u32 kN = static_cast<u32>(kConfig.n);
  static constexpr u32 kK = static_cast<u32>(kConfig.k);
  static constexpr u32 kNumStages = static_cast<u32>(kConfig.num_stages);
  static constexpr u32 kNumKSplits = static_cast<u32>(kConfig.num_k_splits);
  static constexpr KSplit kKSplit =
      kConfig.k_interleave ? KSplit::kWarpgroups : (kNumKSplits > 1 ? KSplit::kCluster : KSplit::kNone);

  static constexpr u32 kBlockK = tile::kBlockK;
  static constexpr u32 kNumMathWarpgroups = num_math_warpgroups(kConfig);
  // Row waves (block_m_double: two): the 64-row blocks a math warpgroup computes in turn, block
  // wave * kNumMathWarpgroups + warpgroup of the tile; everything per 64 rows takes that "row block".
  static constexpr u32 kRowWaves = row_waves(kConfig);
  static constexpr u32 kNumMathThreads = 128 * kNumMathWarpgroups;
  static constexpr u32 kNumThreads = num_threads(kConfig);
  static constexpr u32 kClusterSize = cluster_size(kConfig);
  static constexpr bool kMulticastA = kConfig.multicast_a != 0;
  static constexpr u32 kColumnsPerCluster = columns_per_cluster(kConfig);
  // Math warps that read (and release) each stage: all of them, or one warpgroup's with k_interleave.
  static constexpr u32 kNumReaderWarps = (kKSplit == KSplit::kWarpgroups ? 128 : kNumMathThreads) / 32;
  static constexpr u32 kNumKBlocks = tile::ceil_div(kK, kBlockK);
  static constexpr u32 kKBlocksPerSplit = tile::ceil_div(kNumKBlocks, kNumKSplits);
  static constexpr u32 kNumAccum = kBlockN / 2;  // fp32 per thread for 64 x BLOCK_N
  static constexpr bool kF32Out = kConfig.out_dtype == static_cast<long long>(OutType::kF32);
  static constexpr bool kAccumulate = kConfig.accumulate != 0;
  static constexpr bool kScaleA = kConfig.has_scale_a != 0;
  static constexpr bool kScaleB = kConfig.has_scale_b != 0;
  static constexpr SmemLayout kSmem = smem_layout(kConfig);
  static constexpr u32 kSmemA = tile::smem_a_stage_bytes(kBlockM);
  static constexpr u32 kSmemB = tile::smem_b_stage_bytes(kBlockN);
  // D leaves through shared memory in atoms: 128-byte ones (128B swizzle), then the tail's narrower ones.
  // bf16: the whole tile is staged (stmatrix); f32: one atom at a time through a small ring (store_f32).
  static constexpr u32 kOutBytes = kF32Out ? 4 : 2;
  static constexpr u32 kAtomCols = tile::d_atom_cols(kOutBytes);
  static constexpr u32 kMainCols = tile::d_main_cols(kBlockN, kOutBytes);
  static constexpr u32 kTailCols = tile::d_tail_cols(kBlockN, kOutBytes);
  static constexpr u32 kNumMainAtoms = kMainCols / kAtomCols;
  static constexpr u32 kTailSwizzle = tile::swizzle_d_bytes(kTailCols, kOutBytes);  // bytes per row of a tail atom
  static constexpr u32 kTailAtomCols = kTailSwizzle / kOutBytes;
  static constexpr u32 kNumTailAtoms = kTailCols / kTailAtomCols;
  static constexpr u32 kSmemDMain = kBlockM * kMainCols * 2;  // bf16
  // Each atom (and each warpgroup's 64 rows of it) must start on its swizzle's period for TMA.
  static_assert(kSmemDMain % 1024 == 0 && (tile::kWgmmaM * kTailSwizzle) % (8 * kTailSwizzle) == 0,
                "D atoms must start on their swizzle period");
  static_assert(kNumAccum % 4 == 0, "K-split partials move in float4 quads");
  // NOTES: the producer needs few registers; giving them to the math warpgroups lets the two
  // fp32 accumulators (wgmma's and the promoted one) stay in registers.
  static constexpr u32 kProducerRegs = 40;
  static constexpr u32 kMathRegs = 232;
  static constexpr u32 kNumNBlocksPerBand = 8;
  // Named barriers: 0 is __syncthreads, 1 + warpgroup the epilogue's; with k_interleave, "warpgroup 1's
  // partials are written" and "warpgroup 0 has read them".
  static constexpr u32 kPartialsWrittenBarrier = 3;
  static constexpr u32 kPartialsFreeBarrier = 4;
  // k_grouped: every math thread has zeroed its part of a stage's columns outside the group.
  static constexpr u32 kGroupColumnsBarrier = 5;
  static_assert(kPartialsWrittenBarrier > kNumMathWarpgroups, "named barrier ids overlap");

  using Mma = mma::WgmmaFp8<kBlockN, static_cast<u32>(kConfig.a_dtype), static_cast<u32>(kConfig.b_dtype)>;
  using Scheduler =
      sched::TileScheduler<kLayout, kBlockM, kBlockN, kN, kK, kNumNBlocksPerBand, kClusterSize, kColumnsPerCluster>;

  // This tile's scales, loaded before its main loop so the loads' latency hides behind it: thread t of a
  // storing warpgroup holds scale_a of row t (t < 64) of each of its row blocks and scale_b of tile columns
  // t and t + 128 (when the tile has them). The epilogue shares them through shared memory.
  struct TileScales {
    float a[kRowWaves];
    float b0 = 1.0f;
    float b1 = 1.0f;
  };

  // A position in the stage ring: the stage and the parity of its current phase, advanced one stage at a
  // time. NOTES: the main loop then needs no division by kNumStages (3 for 256 x 128 tiles) to find them.
  struct Ring {
    u32 stage = 0;
    u32 phase = 0;
    __device__ void advance() {
      if (++stage == kNumStages) {
        stage = 0;
        phase ^= 1;
      }
    }
  };

  struct Smem {
    u8* d;
    u8* a;  // stage s at a + s * kSmemA
    u8* b;  // stage s at b + s * kSmemB
    u64* full;
    u64* empty;
    // K splitting only: the fp32 partial tile that rank 0 (or warpgroup 0) reads, and, for a cluster,
    // two barriers: split_ready (rank 0: the other ranks' partials are written) and split_free (other
    // ranks: rank 0 has read this CTA's partials).
    float* partials;
    u64* split;
    // Scaled configs: per math warpgroup, scale_a of its 64 rows then scale_b of the tile's columns.
    float* scales;
    __device__ u64* split_ready() const { return split; }
    __device__ u64* split_free() const { return split + 1; }
    __device__ float* scales_of(u32 warpgroup) const { return scales + warpgroup * scale_floats_per_warpgroup(kConfig); }
  };

  __device__ static Smem carve(u8* raw) {
    // NOTES: swizzled TMA boxes and wgmma descriptors assume 1024-byte aligned tiles.
    const u32 base = ptx::smem_addr(raw);
    u8* p = raw + (tile::align_up(base, 1024) - base);
    Smem s;
    s.d = p + kSmem.d;
    s.a = p + kSmem.a;
    s.b = p + kSmem.b;
    s.partials = reinterpret_cast<float*>(p + kSmem.partials);
    s.scales = reinterpret_cast<float*>(p + kSmem.scales);
    s.full = reinterpret_cast<u64*>(p + kSmem.full);
    s.empty = reinterpret_cast<u64*>(p + kSmem.empty);
    s.split = reinterpret_cast<u64*>(p + kSmem.split);
    return s;
  }

  __device__ static void run(const GemmParams& params, u8* smem_raw) {
    const Smem smem = carve(smem_raw);
    const u32 warpgroup = __shfl_sync(0xffffffffu, threadIdx.x / 128, 0);

    if (threadIdx.x == kNumMathThreads) init_barriers(params, smem);
    if (params.a_box_rows < kBlockM) zero_unloaded_a_rows(smem, params.a_box_rows);
    __syncthreads();
    // Other CTAs of the cluster arrive on this CTA's barriers: all must be initialised first.
    if constexpr (kClusterSize > 1) {
      // NOTES: launched without the matching cluster, every CTA would be rank 0 and wait forever.
      if (ptx::cluster_size() != kClusterSize) __trap();
      ptx::cluster_sync();
    }

    if (warpgroup == kNumMathWarpgroups) {
      ptx::setmaxnreg_dec<kProducerRegs>();
      if (threadIdx.x == kNumMathThreads) produce(params, smem);
    } else {
      ptx::setmaxnreg_inc<kMathRegs>();
      consume(params, smem, warpgroup);
    }
    // NOTES: rank 0 reads the other ranks' shared memory (split-K partials): no CTA may exit before the
    // cluster's last read. A cluster barrier says so in a form compute-sanitizer's racecheck follows (an
    // mbarrier handshake alone was reported as "read in a block that might have exited").
    if constexpr (kClusterSize > 1) {
      __syncwarp();
      ptx::cluster_sync();
    }
  }

  // One thread: descriptor prefetch and every mbarrier.
  __device__ static void init_barriers(const GemmParams& params, const Smem& smem) {
    ptx::tma_prefetch_descriptor(&params.tma_a);
    ptx::tma_prefetch_descriptor(&params.tma_b);
    if constexpr (kMainCols > 0) ptx::tma_prefetch_descriptor(&params.tma_d);
    if constexpr (kTailCols > 0) ptx::tma_prefetch_descriptor(&params.tma_d_tail);
    for (u32 s = 0; s < kNumStages; ++s) {
      ptx::mbarrier_init(&smem.full[s], 1);
      // One arrival per math warp that reads the stage, of both CTAs with multicast_a (a stage holds the
      // peer's half of A, so the peer refills it only once this CTA is done with it too).
      ptx::mbarrier_init(&smem.empty[s], kNumReaderWarps * kColumnsPerCluster);
    }
    if constexpr (kKSplit == KSplit::kCluster) {
      // NOTES: every math thread arrives (not one lane per warp after __syncwarp): each thread's own
      // release orders its own partial-sum accesses, which the PTX memory model (and racecheck) can follow.
      ptx::mbarrier_init(smem.split_ready(), (kNumKSplits - 1) * kNumMathThreads);
      ptx::mbarrier_init(smem.split_free(), kNumMathThreads);
    }
    ptx::fence_barrier_init();
  }

  // With a trimmed A box, rows [a_box_rows, BLOCK_M) of every stage are never loaded: zero them once
  // so wgmma multiplies zeros there (those output rows are outside A and never stored anyway).
  __device__ static void zero_unloaded_a_rows(const Smem& smem, u32 a_box_rows) {
    const u32 begin = a_box_rows * kBlockK / 16, end = kSmemA / 16;  // 16-byte words of one stage
    for (u32 s = 0; s < kNumStages; ++s) {
      uint4* stage = reinterpret_cast<uint4*>(smem.a + s * kSmemA);
      for (u32 i = begin + threadIdx.x; i < end; i += kNumThreads) stage[i] = make_uint4(0, 0, 0, 0);
    }
    // wgmma reads shared memory through the async proxy.
    ptx::fence_proxy_async_shared();
  }

  // The K blocks of a tile this CTA reads: blocks [first, end) at columns origin + kb * BLOCK_K. All of
  // K, or over a cluster the slice of its rank; k_grouped: the blocks covering the tile's group's columns
  // (from the device). NOTES: a group may start at any column; its blocks start at the BLOCK_K boundary
  // at or before it (TMA boxes on aligned columns, whole 128-byte lines), and the math warpgroups zero the
  // columns of the first and last block that belong to the neighbouring groups.
  struct KBlocks {
    u32 first, end, origin;
  };
  __device__ static KBlocks k_blocks(const sched::Tile& tile) {
    if constexpr (kLayout == Layout::kKGrouped) {
      const u32 origin = tile.k_begin / kBlockK * kBlockK;
      return {0, tile::ceil_div(tile.k_end - origin, kBlockK), origin};
    } else if constexpr (kKSplit != KSplit::kCluster) {
      return {0, kNumKBlocks, 0};
    } else {
      const u32 first = ptx::cluster_ctarank() * kKBlocksPerSplit;
      const u32 end = first + kKBlocksPerSplit;
      return {first < kNumKBlocks ? first : kNumKBlocks, end < kNumKBlocks ? end : kNumKBlocks, 0};
    }
  }

  // Producer: stream A and B tiles of every K block through the stage ring.
  __device__ static void produce(const GemmParams& params, const Smem& smem) {
    Scheduler scheduler(params);
    sched::Tile tile;
    Ring ring;
    // NOTES: out-of-bounds parts of a box are zero-filled and still count towards the bytes.
    const u32 a_bytes = params.a_box_rows * kBlockK;
    // multicast_a: this CTA's half of the A stage, which it loads into both CTAs.
    const u32 half = kMulticastA ? blockIdx.x % 2 : 0u;
    const u32 half_rows = params.a_box_rows / 2;
    while (scheduler.next_tile(tile)) {
      if (!tile.compute) continue;
      const i32 m = static_cast<i32>(tile.row);
      const i32 n = static_cast<i32>(tile.n_block * kBlockN);
      // A peer-only tile (a pair's column past N) receives A and loads no B.
      const u32 stage_bytes = a_bytes + (tile.peer_only ? 0u : kSmemB);
      const KBlocks blocks = k_blocks(tile);
      for (u32 kb = blocks.first; kb < blocks.end; ++kb, ring.advance()) {
        const u32 stage = ring.stage;
        ptx::mbarrier_wait(&smem.empty[stage], ring.phase ^ 1);
        ptx::mbarrier_arrive_expect_tx(&smem.full[stage], stage_bytes);
        const i32 k = static_cast<i32>(blocks.origin + kb * kBlockK);
        // k_grouped: every group reads the one A and the one B (its own columns of them).
        const u32 group_a = kLayout == Layout::kKGrouped ? 0u : tile.group_a;
        const u32 group_b = kLayout == Layout::kKGrouped ? 0u : tile.group_b;
        if constexpr (kMulticastA) {
          u8* rows = smem.a + stage * kSmemA + half * half_rows * kBlockK;
          ptx::tma_load_3d_multicast(&params.tma_a, &smem.full[stage], rows, k, m + static_cast<i32>(half * half_rows),
                                     group_a, 0b11);
          if (tile.peer_only) continue;
        } else {
          ptx::tma_load_3d(&params.tma_a, &smem.full[stage], smem.a + stage * kSmemA, k, m, group_a);
        }
        ptx::tma_load_3d(&params.tma_b, &smem.full[stage], smem.b + stage * kSmemB, k, n, group_b);
      }
    }
  }

  // A math warp is done reading a stage: one arrival on its empty barrier, or with multicast_a on both
  // CTAs' (lane r signals rank r).
  __device__ static void release_stage(const Smem& smem, u32 stage, u32 lane) {
    if constexpr (kMulticastA) {
      if (lane < kColumnsPerCluster) ptx::mbarrier_arrive_cluster_signal(ptx::map_to_rank(&smem.empty[stage], lane));
    } else {
      if (lane == 0) ptx::mbarrier_arrive(&smem.empty[stage]);
    }
  }

  // A peer-only tile: wait for each stage (the peer's half of A lands in it too) and release it.
  __device__ static void pass_stages(const Smem& smem, const sched::Tile& tile, u32 lane, Ring& ring) {
    const KBlocks blocks = k_blocks(tile);
    for (u32 kb = blocks.first; kb < blocks.end; ++kb, ring.advance()) {
      ptx::mbarrier_wait(&smem.full[ring.stage], ring.phase);
      release_stage(smem, ring.stage, lane);
    }
  }

  // Math warpgroup: 64 rows x BLOCK_N of each tile.
  __device__ static void consume(const GemmParams& params, const Smem& smem, u32 warpgroup) {
    const u32 thread = threadIdx.x % 128;
    const u32 warp = thread / 32;
    const u32 lane = thread % 32;
    float accum[kNumAccum];
    float result[kRowWaves][kNumAccum];

    Scheduler scheduler(params);
    sched::Tile tile;
    Ring ring;           // the stages this CTA has consumed (both warpgroups count all of them)
    u32 handshakes = 0;  // cluster K-split reductions done (the phase of the split barriers)
    u32 staged = 0;      // f32 atoms this warpgroup has staged (the position in its staging ring)
    // k_interleave: the partial-sum buffer starts free.
    if constexpr (kKSplit == KSplit::kWarpgroups) {
      if (warpgroup == 0) ptx::named_barrier_arrive(kPartialsFreeBarrier, 2 * 128);
    }
    while (scheduler.next_tile(tile)) {
      if (!tile.exists) continue;
      if (kMulticastA && tile.peer_only) {
        pass_stages(smem, tile, lane, ring);
        continue;
      }
      TileScales scales;
      load_scales(params, tile, warpgroup, thread, scales);
#pragma unroll
      for (u32 w = 0; w < kRowWaves; ++w) {
#pragma unroll
        for (u32 i = 0; i < kNumAccum; ++i) result[w][i] = 0.0f;
      }
      if (tile.compute) accumulate_tile(smem, tile, warpgroup, thread, ring, accum, result);
      // K splitting has one row wave (static_config_error).
      if (!combine_partials(smem, tile, warpgroup, thread, handshakes, result[0])) continue;
      store_tile(params, smem, tile, warpgroup, warp, lane, scales, staged, result);
    }
    finish_partials(warpgroup);
    if (thread == 0) ptx::tma_store_wait_all();
  }

  // The main loop of one tile: for each K block this warpgroup reads and each of its row waves, wgmma into
  // `accum`, then promote into that wave's fp32 `result`.
  __device__ static void accumulate_tile(const Smem& smem, const sched::Tile& tile, u32 warpgroup, u32 thread,
                                         Ring& ring, float (&accum)[kNumAccum],
                                         float (&result)[kRowWaves][kNumAccum]) {
    constexpr bool kAlternate = kKSplit == KSplit::kWarpgroups;
    const u32 lane = thread % 32;
    const KBlocks blocks = k_blocks(tile);
    // Descriptors of stage 0; a stage's are these plus its offset in the start address field (16-byte units),
    // and this warpgroup's rows of A start at a_rows. NOTES: built per K block from the stage's address, they
    // took ~20 dependent uniform instructions between the full barrier's wait and the first wgmma (SASS, 64 x 32
    // tiles); each iteration now adds the next stage's offsets before its own wait.
    const u64 desc_a0 = ptx::make_smem_desc_sw128(smem.a), desc_b0 = ptx::make_smem_desc_sw128(smem.b);
    const u32 a_rows = (kAlternate ? 0 : warpgroup) * tile::kWgmmaM * kBlockK / 16;
    u64 desc_a = desc_a0 + ring.stage * (kSmemA / 16) + a_rows, desc_b = desc_b0 + ring.stage * (kSmemB / 16);
    for (u32 kb = blocks.first; kb < blocks.end; ++kb) {
      const u32 stage = ring.stage, phase = ring.phase;
      const u64 stage_a = desc_a, stage_b = desc_b;
      ring.advance();
      desc_a = desc_a0 + ring.stage * (kSmemA / 16) + a_rows;
      desc_b = desc_b0 + ring.stage * (kSmemB / 16);
      // k_interleave: warpgroup w reads the stages with stage % 2 == w. NOTES: by the ring position, not by kb:
      // with an even ring a stage then always has the same reader (see static_config_error).
      if (kAlternate && (stage & 1) != warpgroup) continue;
      ptx::mbarrier_wait(&smem.full[stage], phase);
      if constexpr (kLayout == Layout::kKGrouped) {
        // The group's first and last blocks may hold columns of its neighbours: keep [lo, hi) only.
        const u32 start = blocks.origin + kb * kBlockK;
        const u32 lo = tile.k_begin > start ? tile.k_begin - start : 0u;
        const u32 hi = tile.k_end - start < kBlockK ? tile.k_end - start : kBlockK;
        if (lo > 0 || hi < kBlockK) zero_outside_group(smem, stage, lo, hi, warpgroup, thread);
      }
#pragma unroll
      for (u32 wave = 0; wave < kRowWaves; ++wave) {
#pragma unroll
        for (u32 i = 0; i < kNumAccum; ++i) ptx::fence_register(accum[i]);
        ptx::wgmma_fence();
#pragma unroll
        for (u32 kk = 0; kk < kBlockK / 32; ++kk) {
          // NOTES: a 32-byte K step stays inside the 128B swizzle row: advance the start address
          // field (16-byte units) by 2 per step.
          // Row wave w of this warpgroup: row block w * kNumMathWarpgroups + warpgroup of the A stage.
          Mma::mma(stage_a + wave * (kNumMathWarpgroups * tile::kWgmmaM * kBlockK / 16) + kk * 2, stage_b + kk * 2,
                   accum, kk > 0);
        }
        ptx::wgmma_commit();
#pragma unroll
        for (u32 i = 0; i < kNumAccum; ++i) ptx::fence_register(accum[i]);
        ptx::wgmma_wait<0>();
        // The stage can be refilled as soon as this warp's last wgmmas have read it.
        if (wave == kRowWaves - 1) release_stage(smem, stage, lane);
#pragma unroll
        for (u32 i = 0; i < kNumAccum; ++i) result[wave][i] += accum[i];
      }
    }
  }

  // k_grouped: zero the columns outside [lo, hi) of a stage, A rows by their warpgroup and B rows shared by
  // all math threads, then make the writes visible to wgmma (the async proxy) before anyone reads.
  __device__ static void zero_outside_group(const Smem& smem, u32 stage, u32 lo, u32 hi, u32 warpgroup, u32 thread) {
    zero_columns(smem.a + stage * kSmemA + warpgroup * tile::kWgmmaM * kBlockK, tile::kWgmmaM, lo, hi, thread, 128);
    zero_columns(smem.b + stage * kSmemB, kBlockN, lo, hi, warpgroup * 128 + thread, kNumMathThreads);
    ptx::fence_proxy_async_shared();
    // NOTES: bar.sync (like the wgmma after it) needs converged warps; the loops above diverge per lane.
    __syncwarp();
    ptx::named_barrier_sync(kGroupColumnsBarrier, kNumMathThreads);
  }

  // Rows of 128 bytes in the 128B swizzle (16-byte chunk j of row r at chunk j ^ (r % 8)): zeroes the bytes
  // outside [lo, hi) of each row; this thread takes the (row, chunk) items first, first + step, ...
  __device__ static void zero_columns(u8* rows, u32 num_rows, u32 lo, u32 hi, u32 first, u32 step) {
    for (u32 i = first; i < num_rows * 8; i += step) {
      const u32 r = i / 8, j = i % 8;
      if (j * 16 >= lo && j * 16 + 16 <= hi) continue;  // the whole chunk is the group's
      u32* chunk = reinterpret_cast<u32*>(rows + r * 128 + ((j ^ (r % 8)) * 16));
#pragma unroll
      for (u32 w = 0; w < 4; ++w) {
        u32 keep = 0;
#pragma unroll
        for (u32 byte = 0; byte < 4; ++byte) {
          const u32 column = j * 16 + w * 4 + byte;
          if (column >= lo && column < hi) keep |= 0xFFu << (8 * byte);
        }
        chunk[w] &= keep;
      }
    }
  }

  // Adds the other K parts' sums into the storing thread's `result`; returns whether this thread
  // stores the tile (rank 0 of a cluster, warpgroup 0 with k_interleave, everyone otherwise).
  __device__ static bool combine_partials(const Smem& smem, const sched::Tile& tile, u32 warpgroup, u32 thread,
                                          u32& handshakes, float (&result)[kNumAccum]) {
    if constexpr (kKSplit == KSplit::kCluster) {
      if (tile.compute) reduce_k_splits(smem, handshakes++, result);
      return ptx::cluster_ctarank() == 0;
    } else if constexpr (kKSplit == KSplit::kWarpgroups) {
      if (tile.compute) reduce_k_interleave(smem, warpgroup, thread, result);
      return warpgroup == 0;
    } else {
      return true;
    }
  }

  // After the last tile: leave the K-split handshakes clean.
  __device__ static void finish_partials(u32 warpgroup) {
    // A cluster's ranks stay alive for rank 0's reads through the cluster barrier at the end of run().
    if constexpr (kKSplit == KSplit::kWarpgroups) {
      // Warpgroup 0's last "read" arrival has no tile after it: take it.
      if (warpgroup == 1) ptx::named_barrier_sync(kPartialsFreeBarrier, 2 * 128);
    }
  }

  // Split-K: ranks 1.. write their fp32 partial tile to their own shared memory and signal rank 0;
  // rank 0 adds them to its own in rank order (bitwise reproducible) and frees their buffers.
  // Partials are laid out [accumulator quad][math thread][4] so every access is a conflict-free
  // 16-byte vector and rank 0's threads read exactly the fragments they hold.
  __device__ static void reduce_k_splits(const Smem& smem, u32 handshake, float (&result)[kNumAccum]) {
    const u32 rank = ptx::cluster_ctarank();
    float4* mine = reinterpret_cast<float4*>(smem.partials) + threadIdx.x;
    if (rank != 0) {
      // The buffer is free once rank 0 has read the previous tile's partials.
      ptx::mbarrier_wait_cluster(smem.split_free(), (handshake & 1) ^ 1);
#pragma unroll
      for (u32 q = 0; q < kNumAccum / 4; ++q) {
        mine[q * kNumMathThreads] = make_float4(result[4 * q], result[4 * q + 1], result[4 * q + 2], result[4 * q + 3]);
      }
      ptx::mbarrier_arrive_remote(ptx::map_to_rank(smem.split_ready(), 0));
      return;
    }
    ptx::mbarrier_wait_cluster(smem.split_ready(), handshake & 1);
#pragma unroll 1
    for (u32 r = 1; r < kNumKSplits; ++r) {
      const u32 remote = ptx::map_to_rank(mine, r);
#pragma unroll
      for (u32 q = 0; q < kNumAccum / 4; ++q) {
        float x, y, z, w;
        ptx::ld_shared_cluster_v4(remote + q * kNumMathThreads * 16, x, y, z, w);
        result[4 * q] += x;
        result[4 * q + 1] += y;
        result[4 * q + 2] += z;
        result[4 * q + 3] += w;
      }
    }
#pragma unroll 1
    for (u32 r = 1; r < kNumKSplits; ++r) ptx::mbarrier_arrive_remote(ptx::map_to_rank(smem.split_free(), r));
  }

  // k_interleave: warpgroup 1 writes its fp32 sums to shared memory once warpgroup 0 has
  // read the previous tile's, warpgroup 0 waits for them and adds them to its own. Same quad layout as
  // the split-K partials ([accumulator quad][thread][4]): conflict-free 16-byte accesses.
  __device__ static void reduce_k_interleave(const Smem& smem, u32 warpgroup, u32 thread,
                                             float (&result)[kNumAccum]) {
    float4* partials = reinterpret_cast<float4*>(smem.partials) + thread;
    if (warpgroup == 1) {
      ptx::named_barrier_sync(kPartialsFreeBarrier, 2 * 128);
#pragma unroll
      for (u32 q = 0; q < kNumAccum / 4; ++q) {
        partials[q * 128] = make_float4(result[4 * q], result[4 * q + 1], result[4 * q + 2], result[4 * q + 3]);
      }
      ptx::named_barrier_arrive(kPartialsWrittenBarrier, 2 * 128);
      return;
    }
    ptx::named_barrier_sync(kPartialsWrittenBarrier, 2 * 128);
#pragma unroll
    for (u32 q = 0; q < kNumAccum / 4; ++q) {
      const float4 p = partials[q * 128];
      result[4 * q] += p.x;
      result[4 * q + 1] += p.y;
      result[4 * q + 2] += p.z;
      result[4 * q + 3] += p.w;
    }
    ptx::named_barrier_arrive(kPartialsFreeBarrier, 2 * 128);
  }

  // The TMA swizzle of a byte offset inside an atom kSwizzle bytes wide (rows of kSwizzle bytes, starting
  // on the swizzle period): the 16-byte chunk index XOR the row's position in the pattern.
  template <u32 kSwizzle>
  __device__ static u32 swizzled(u32 offset) {
    return offset ^ (((offset >> 7) & (kSwizzle / 16 - 1)) << 4);
  }

  // Byte offset of bf16 (row, col) of a region of D atoms kSwizzle bytes wide (kBlockM rows each).
  template <u32 kSwizzle>
  __device__ static u32 d_atom_offset(u32 row, u32 col) {
    constexpr u32 kCols = kSwizzle / 2;
    return (col / kCols) * (kBlockM * kSwizzle) + swizzled<kSwizzle>(row * kSwizzle + (col % kCols) * 2);
  }

  // Eight fp32 results of one 16-column chunk, as bf16 pairs into four 8x8 stmatrix tiles.
  __device__ static void store_chunk(u8* dst, const float* f) {
    ptx::stmatrix_x4(dst, ptx::pack_bf16x2(f[0], f[1]), ptx::pack_bf16x2(f[2], f[3]), ptx::pack_bf16x2(f[4], f[5]),
                     ptx::pack_bf16x2(f[6], f[7]));
  }

  // The tile's scales for this thread (see TileScales); loads only what the config scales by.
  __device__ static void load_scales(const GemmParams& params, const sched::Tile& tile, u32 warpgroup, u32 thread,
                                     TileScales& scales) {
#pragma unroll
    for (u32 wave = 0; wave < kRowWaves; ++wave) {
      scales.a[wave] = 1.0f;
      if constexpr (kScaleA) {
        const u32 row = tile.row + (wave * kNumMathWarpgroups + warpgroup) * tile::kWgmmaM + thread;
        if (thread < tile::kWgmmaM && row < tile.row_end) {
          scales.a[wave] = ptx::load_global_nc(params.scale_a +
                                               static_cast<u64>(tile.group_a) * params.scale_a_group_stride +
                                               static_cast<u64>(row) * params.scale_a_row_stride);
        }
      }
    }
    if constexpr (kScaleB) {
      const float* group = params.scale_b + static_cast<u64>(tile.group_b) * params.scale_b_group_stride;
      const u32 col = tile.n_block * kBlockN + thread;
      if (thread < kBlockN && col < kN) scales.b0 = ptx::load_global_nc(group + static_cast<u64>(col) * params.scale_b_col_stride);
      if (thread + 128 < kBlockN && col + 128 < kN) {
        scales.b1 = ptx::load_global_nc(group + static_cast<u64>(col + 128) * params.scale_b_col_stride);
      }
    }
  }

  // Multiplies each result of one row wave by its row's scale_a and its column's scale_b, in that order
  // (fp32), from the values the warpgroup shared. Accumulator i of a thread: row warp * 16 + lane / 4 +
  // 8 * (i % 4 / 2), column i / 4 * 8 + lane % 4 * 2 + i % 2 of the row block's 64 x BLOCK_N.
  __device__ static void apply_scales(const Smem& smem, u32 warpgroup, u32 wave, u32 warp, u32 lane,
                                      float (&result)[kNumAccum]) {
    const float* shared = smem.scales_of(warpgroup);
    const u32 row = wave * tile::kWgmmaM + warp * 16 + lane / 4;
    const float a0 = kScaleA ? shared[row] : 1.0f, a1 = kScaleA ? shared[row + 8] : 1.0f;
#pragma unroll
    for (u32 i = 0; i < kNumAccum; ++i) {
      if constexpr (kScaleA) result[i] *= (i % 4) < 2 ? a0 : a1;
      if constexpr (kScaleB) result[i] *= shared[kRowWaves * tile::kWgmmaM + i / 4 * 8 + lane % 4 * 2 + i % 2];
    }
  }

  // Whether a row block (64 rows) of the tile goes out without TMA, row by row: in a ragged group's last
  // tile, when the next group's rows follow inside it (its 64-row TMA box would overwrite those). A row
  // block whose rows all belong to the group still stores through TMA.
  __device__ static bool stores_rows(const GemmParams& params, const sched::Tile& tile, u32 row_block) {
    if constexpr (kLayout == Layout::kRagged) {
      return tile.row + (row_block + 1) * tile::kWgmmaM > tile.row_end && tile.row_end < params.shape_m;
    } else {
      return false;
    }
  }

  // Epilogue: scale, mask, then through shared memory and TMA (bf16: stmatrix; f32: an atom at a time),
  // or row by row from registers.
  __device__ static void store_tile(const GemmParams& params, const Smem& smem, const sched::Tile& tile,
                                    u32 warpgroup, u32 warp, u32 lane, const TileScales& scales, u32& staged,
                                    float (&result)[kRowWaves][kNumAccum]) {
    constexpr bool kScaled = kScaleA || kScaleB;
    constexpr u32 kScaleBAt = kRowWaves * tile::kWgmmaM;  // scale_b's place among the shared scales
    const u32 thread = warp * 32 + lane;
    if constexpr (kScaled) {
      float* shared = smem.scales_of(warpgroup);
#pragma unroll
      for (u32 wave = 0; wave < kRowWaves; ++wave) {
        if (kScaleA && thread < tile::kWgmmaM) shared[wave * tile::kWgmmaM + thread] = scales.a[wave];
      }
      if (kScaleB && thread < kBlockN) shared[kScaleBAt + thread] = scales.b0;
      if (kScaleB && thread + 128 < kBlockN) shared[kScaleBAt + thread + 128] = scales.b1;
    }
    // The previous tile's stores must have finished reading this warpgroup's parts of the D tile (f32: each
    // atom waits for its own buffer).
    if (!kF32Out && thread == 0) ptx::tma_store_wait_read();
    if constexpr (!kF32Out || kScaled) ptx::named_barrier_sync(1 + warpgroup, 128);
    // NOTES: one call per row wave with a constant index: as a loop over the waves, ptxas kept the masked
    // kernel's wave loop rolled (256-row tiles with scale_b) and `result` in local memory (512-byte stack frame).
    store_wave(params, smem, tile, warpgroup, 0, warp, lane, staged, result[0]);
    if constexpr (kRowWaves > 1) store_wave(params, smem, tile, warpgroup, 1, warp, lane, staged, result[kRowWaves - 1]);
  }

  // One row wave of the epilogue: scale, mask, store.
  __device__ static void store_wave(const GemmParams& params, const Smem& smem, const sched::Tile& tile,
                                    u32 warpgroup, u32 wave, u32 warp, u32 lane, u32& staged,
                                    float (&result)[kNumAccum]) {
    const u32 row_block = wave * kNumMathWarpgroups + warpgroup;
    // NOTES: rows with nothing computed (padding, past a ragged total, an empty k_grouped group) stay exact
    // zeros whatever the scales hold (Inf, NaN): scale first, then mask, and skip the scales of empty tiles.
    if constexpr (kScaleA || kScaleB) {
      if (tile.compute) apply_scales(smem, warpgroup, wave, warp, lane, result);
    }
    if constexpr (kLayout == Layout::kContiguous) {
      mask_other_experts(params, tile, row_block, warp, lane, result);
    }
    if constexpr (kLayout == Layout::kRagged) {
      if (stores_rows(params, tile, row_block)) {
        store_rows(params, tile, row_block, warp, lane, result);
        // The next scales written must not overwrite these before every thread has read them.
        if constexpr (kScaleA || kScaleB) ptx::named_barrier_sync(1 + warpgroup, 128);
        return;
      }
    }
    if constexpr (kF32Out) {
      store_f32(params, smem, tile, warpgroup, row_block, warp, lane, staged, result);
    } else {
      store_bf16(params, smem, tile, warpgroup, row_block, warp, lane, result);
    }
  }

  // Contiguous: rows of another expert or padding (-1, out of range) inside this block come out as zero.
  __device__ static void mask_other_experts(const GemmParams& params, const sched::Tile& tile, u32 row_block,
                                            u32 warp, u32 lane, float (&result)[kNumAccum]) {
    const u32 r0 = tile.row + row_block * tile::kWgmmaM + warp * 16 + lane / 4;
    const i32 expert = tile.compute ? static_cast<i32>(tile.group_b) : -1;
    const bool keep0 = r0 < params.shape_m && ptx::load_global_nc(params.grouped_layout + r0) == expert;
    const bool keep1 = r0 + 8 < params.shape_m && ptx::load_global_nc(params.grouped_layout + r0 + 8) == expert;
#pragma unroll
    for (u32 i = 0; i < kNumAccum; ++i) {
      const bool keep = (i % 4) < 2 ? keep0 : keep1;
      result[i] = keep ? result[i] : 0.0f;
    }
  }

  // Row by row (a ragged group's last tile): each thread's pairs of adjacent columns go straight to global
  // memory for the tile's rows only (fp32: a warp's stores cover whole 32-byte sectors). N % 8 == 0 keeps a
  // pair inside the row. The ragged layout never accumulates.
  __device__ static void store_rows(const GemmParams& params, const sched::Tile& tile, u32 row_block, u32 warp,
                                    u32 lane, const float (&result)[kNumAccum]) {
    static_assert(!kAccumulate, "row-by-row stores only write");
    const u32 r0 = tile.row + row_block * tile::kWgmmaM + warp * 16 + lane / 4;
    const u32 c0 = tile.n_block * kBlockN + lane % 4 * 2;
    const u64 group_offset = tile.group_a * params.d_group_stride;
#pragma unroll
    for (u32 j = 0; j < kBlockN / 8; ++j) {
      const u32 col = c0 + j * 8;
      if (col >= kN) continue;
#pragma unroll
      for (u32 half = 0; half < 2; ++half) {
        const u32 row = r0 + half * 8;
        if (row >= tile.row_end) continue;
        const u64 at = group_offset + static_cast<u64>(row) * kN + col;
        const float x = result[j * 4 + half * 2], y = result[j * 4 + half * 2 + 1];
        if constexpr (!kF32Out) {
          ptx::store_global_b32(static_cast<u16*>(params.d_direct) + at, ptx::pack_bf16x2(x, y));
        } else {
          ptx::store_global_v2(static_cast<float*>(params.d_direct) + at, x, y);
        }
      }
    }
  }

  // f32 output: each atom of a row block goes into the next buffer of its warpgroup's staging ring, then
  // out with one TMA store, or one TMA reduce-add when accumulating (the L2 adds it to what D holds). The
  // stores run on while the warpgroup stages the next atoms and starts the next tile; a buffer is written
  // again only once the store that read it last has finished reading (kF32StagingBuffers - 1 may be
  // pending).
  __device__ static void store_f32(const GemmParams& params, const Smem& smem, const sched::Tile& tile,
                                   u32 warpgroup, u32 row_block, u32 warp, u32 lane, u32& staged,
                                   const float (&result)[kNumAccum]) {
    // With nothing computed, an accumulating output already holds its value (c).
    if (kAccumulate && !tile.compute) return;
    constexpr u32 kBuffers = tile::kF32StagingBuffers, kBufferBytes = tile::kF32StagingBufferBytes;
    const u32 thread = warp * 32 + lane;
    u8* ring = smem.d + warpgroup * kBuffers * kBufferBytes;
    const i32 n_tile = static_cast<i32>(tile.n_block * kBlockN);
    const i32 m_rows = static_cast<i32>(tile.row + row_block * tile::kWgmmaM);
#pragma unroll
    for (u32 atom = 0; atom < kNumMainAtoms + kNumTailAtoms; ++atom, ++staged) {
      const bool main = atom < kNumMainAtoms;
      const u32 first_col = main ? atom * kAtomCols : kMainCols + (atom - kNumMainAtoms) * kTailAtomCols;
      u8* buffer = ring + (staged % kBuffers) * kBufferBytes;
      if (thread == 0) ptx::tma_store_wait_read<kBuffers - 1>();
      ptx::named_barrier_sync(1 + warpgroup, 128);
      if (main) {
        stage_f32_atom<kAtomCols, 128>(buffer, first_col, warp, lane, result);
      } else {
        stage_f32_atom<kTailAtomCols, kTailSwizzle>(buffer, first_col, warp, lane, result);
      }
      ptx::fence_proxy_async_shared();
      ptx::named_barrier_sync(1 + warpgroup, 128);
      if (thread == 0) {
        const TmaDescriptor* map = main ? &params.tma_d : &params.tma_d_tail;
        const i32 col = n_tile + static_cast<i32>(first_col);
        if constexpr (kAccumulate) {
          ptx::tma_reduce_add_3d(map, buffer, col, m_rows, static_cast<i32>(tile.group_a));
        } else {
          ptx::tma_store_3d(map, buffer, col, m_rows, static_cast<i32>(tile.group_a));
        }
        ptx::tma_store_commit();
      }
    }
  }

  // The kCols columns from first_col of this thread's results, into one f32 atom (64 rows of kSwizzle
  // bytes). Each thread holds column pairs (see apply_scales): one 8-byte store per pair and row; a warp's
  // store covers 8 rows x 32 bytes, which the swizzle spreads over every bank.
  template <u32 kCols, u32 kSwizzle>
  __device__ static void stage_f32_atom(u8* buffer, u32 first_col, u32 warp, u32 lane,
                                        const float (&result)[kNumAccum]) {
#pragma unroll
    for (u32 j = 0; j < kCols / 8; ++j) {
      const u32 chunk = first_col / 8 + j;  // the 8-column group: accumulators 4 * chunk .. 4 * chunk + 3
#pragma unroll
      for (u32 half = 0; half < 2; ++half) {
        const u32 row = warp * 16 + lane / 4 + half * 8;
        const u32 offset = swizzled<kSwizzle>(row * kSwizzle + (j * 8 + lane % 4 * 2) * 4);
        ptx::store_shared_v2(buffer + offset, result[chunk * 4 + half * 2], result[chunk * 4 + half * 2 + 1]);
      }
    }
  }

  // bf16 output: a row block through stmatrix into the swizzled D tile, then TMA stores per atom.
  __device__ static void store_bf16(const GemmParams& params, const Smem& smem, const sched::Tile& tile,
                                    u32 warpgroup, u32 row_block, u32 warp, u32 lane, float (&result)[kNumAccum]) {
    const u32 thread = warp * 32 + lane;
    const u32 row_base = row_block * tile::kWgmmaM;  // first tile row of the row block
    const u32 m_tile = tile.row;
    const u32 q = lane / 8;
    const u32 row = row_base + warp * 16 + (q & 1) * 8 + lane % 8;
#pragma unroll
    for (u32 c = 0; c < kBlockN / 16; ++c) {
      // A 16-column chunk never straddles an atom, so main/tail is decided at compile time.
      const u32 col = c * 16 + (q >> 1) * 8;
      u8* dst;
      if (c * 16 + 16 <= kMainCols) {  // in the main atoms (this form: no warning when kMainCols = 0)
        dst = smem.d + d_atom_offset<128>(row, col);
      } else {
        dst = smem.d + kSmemDMain + d_atom_offset<kTailSwizzle>(row, col - kMainCols);
      }
      store_chunk(dst, result + c * 8);
    }
    ptx::fence_proxy_async_shared();
    ptx::named_barrier_sync(1 + warpgroup, 128);

    if (thread == 0) {
      const i32 n_tile = static_cast<i32>(tile.n_block * kBlockN);
      const i32 m_rows = static_cast<i32>(m_tile + row_base);
      if constexpr (kNumMainAtoms > 0) {
#pragma unroll
        for (u32 atom = 0; atom < kNumMainAtoms; ++atom) {
          ptx::tma_store_3d(&params.tma_d, smem.d + atom * (kBlockM * 128) + row_base * 128,
                            n_tile + static_cast<i32>(atom * kAtomCols), m_rows,
                            static_cast<i32>(tile.group_a));
        }
      }
      if constexpr (kNumTailAtoms > 0) {
#pragma unroll
        for (u32 atom = 0; atom < kNumTailAtoms; ++atom) {
          ptx::tma_store_3d(&params.tma_d_tail,
                            smem.d + kSmemDMain + atom * (kBlockM * kTailSwizzle) + row_base * kTailSwizzle,
                            n_tile + static_cast<i32>(kMainCols + atom * kTailAtomCols), m_rows,
                            static_cast<i32>(tile.group_a));
        }
      }
      ptx::tma_store_commit();
    }
  }
};

}  // namespace dgpt

// Defines the kernel entry point `dgpt_kernel` for one configuration (used by generated sources):
// CONFIG is a type whose `value` is a constexpr dgpt::KernelConfig.
#define DGPT_DEFINE_SM90_FP8_GEMM(CONFIG)                                                                  \
  extern "C" __global__ void __launch_bounds__(::dgpt::num_threads(CONFIG::value), 1)                     \
      dgpt_kernel(const __grid_constant__ ::dgpt::GemmParams params) {                                    \
    extern __shared__ __align__(1024) ::dgpt::u8 dgpt_smem[];                                             \
    ::dgpt::Sm90Fp8Gemm<CONFIG>::run(params, dgpt_smem);                                                  \
  }
