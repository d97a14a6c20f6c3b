// FP8 quantization with current scaling (kernels/quantize_config.cuh says what each kind computes): the
// per-row kind reads each row once, keeps it in registers while the row's threads agree on its amax, and
// writes the fp8 row and its scale (and each CTA its column maxima); the transposing kind casts a [128 x 64] tile with per-column scales and
// writes it out transposed through shared memory. Both are memory-bound: 16-byte loads, no shared-memory
// round trip for the rows kind.
#pragma once

#include "ptx.cuh"
#include "quantize_config.cuh"

namespace dgpt::quant {

// Maxima that keep NaN (fmaxf drops it; jnp.max propagates it).
__device__ __forceinline__ float nan_max(float a, float b) { return (a != a || a > b) ? a : b; }

// Eight consecutive inputs (16-byte aligned) as float32: bf16 widened exactly, or f32 as is.
template <InType kIn>
__device__ __forceinline__ void load8(const void* base, u64 index, float (&v)[8]) {
  if constexpr (kIn == InType::kBF16) {
    u32 w[4];
    const u16* p = static_cast<const u16*>(base) + index;
    asm volatile("ld.global.nc.v4.b32 {%0, %1, %2, %3}, [%4];" : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3]) : "l"(p));
#pragma unroll
    for (u32 i = 0; i < 4; ++i) {
      v[2 * i] = __uint_as_float(w[i] << 16);
      v[2 * i + 1] = __uint_as_float(w[i] & 0xFFFF0000u);
    }
  } else {
    const float* p = static_cast<const float*>(base) + index;
#pragma unroll
    for (u32 h = 0; h < 2; ++h) {
      asm volatile("ld.global.nc.v4.f32 {%0, %1, %2, %3}, [%4];"
                   : "=f"(v[4 * h]), "=f"(v[4 * h + 1]), "=f"(v[4 * h + 2]), "=f"(v[4 * h + 3])
                   : "l"(p + 4 * h));
    }
  }
}

// fp8 of two float32 values, round to nearest even; `lo` in the low byte. The values are clipped to
// [-fmax, fmax] first (satfinite would do the same), NaN stays NaN.
template <Fp8Type kOut>
__device__ __forceinline__ u16 cvt_fp8x2(float lo, float hi) {
  u16 out;
  if constexpr (kOut == Fp8Type::kE4M3) {
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(out) : "f"(hi), "f"(lo));
  } else {
    asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(out) : "f"(hi), "f"(lo));
  }
  return out;
}

template <Fp8Type kOut>
struct Fp8Limits {
  static constexpr float kMax = kOut == Fp8Type::kE4M3 ? 448.0f : 57344.0f;
};

// s = max(amax, fmax * 2^-126) * f32(1 / fmax): the jnp expression (XLA turns its division by the constant
// fmax into this product, so jax_dgpt/quantize.py writes the product).
template <Fp8Type kOut>
__device__ __forceinline__ float scale_of(float amax) {
  constexpr float kMax = Fp8Limits<kOut>::kMax;
  constexpr float kInverse = 1.0f / kMax;
  return __fmul_rn(nan_max(amax, kMax * 1.17549435e-38f), kInverse);
}

// clip(v / s, -fmax, fmax) without losing NaN.
template <Fp8Type kOut>
__device__ __forceinline__ float scaled(float v, float s) {
  constexpr float kMax = Fp8Limits<kOut>::kMax;
  const float x = __fdiv_rn(v, s);
  return x > kMax ? kMax : (x < -kMax ? -kMax : x);
}

// Eight values as fp8 (8 bytes, little-endian: value 0 in the low byte).
template <Fp8Type kOut>
__device__ __forceinline__ u64 cast8(const float (&v)[8], float s) {
  u64 bits = 0;
#pragma unroll
  for (u32 i = 0; i < 4; ++i) {
    bits |= static_cast<u64>(cvt_fp8x2<kOut>(scaled<kOut>(v[2 * i], s), scaled<kOut>(v[2 * i + 1], s))) << (16 * i);
  }
  return bits;
}

template <class Config>
struct Quantize {
  static constexpr QuantizeConfig kConfig = Config::value;
  static_assert(quantize_config_error(kConfig) == nullptr, "invalid quantize config");
  static constexpr u32 kCols = static_cast<u32>(kConfig.cols);
  static constexpr InType kIn = static_cast<InType>(kConfig.in_dtype);
  static constexpr Fp8Type kOut = static_cast<Fp8Type>(kConfig.out_dtype);
  static constexpr bool kColumnAmax = kConfig.column_amax != 0;
  static constexpr u32 kVecs = kCols / limits::kVecElements;
  static constexpr u32 kThreadsPerRow = threads_per_row(kCols);
  static constexpr u32 kVecsPerThread = vecs_per_thread(kCols);
  static constexpr u32 kRowsPerPass = rows_per_pass(kCols);
  static constexpr u32 kWarpsPerRow = kThreadsPerRow / 32;

  // grid (ceil(R / rows_per_cta), B): CTA x of batch y takes rows [x * rows_per_cta, +rows_per_cta) of it,
  // kRowsPerPass at a time (one per kThreadsPerRow threads).
  __device__ static void rows(const QuantizeParams& p) {
    static_assert(kConfig.kind == static_cast<long long>(Kind::kRows));
    __shared__ float row_amax[limits::kThreads / 32];
    // Column maxima of the CTA's passes, combined across its row slots before they are stored.
    __shared__ float column_share[kColumnAmax && kRowsPerPass > 1 ? kRowsPerPass * kVecs * 8 : 1];
    const u32 slot = threadIdx.x / kThreadsPerRow, lane = threadIdx.x % kThreadsPerRow;
    const u32 batch = blockIdx.y;
    const u32 first = blockIdx.x * p.rows_per_cta;
    const u32 last = first + p.rows_per_cta < p.rows ? first + p.rows_per_cta : p.rows;
    u32 valid = p.rows;
    if (kColumnAmax && p.valid_rows != nullptr) {
      const i32 v = ptx::load_global_nc(p.valid_rows);
      valid = v <= 0 ? 0u : (static_cast<u32>(v) < p.rows ? static_cast<u32>(v) : p.rows);
    }
    float column[kColumnAmax ? kVecsPerThread * 8 : 1];
#pragma unroll
    for (u32 i = 0; i < (kColumnAmax ? kVecsPerThread * 8 : 1); ++i) column[i] = 0.0f;

    // NOTES: with a few vectors per thread the next pass's row is loaded before this pass's amax is agreed
    // (two block barriers when a row spans warps), so the loads of one row overlap the reduction, cast and
    // stores of the previous one; without it the kernel moved ~1.8 TB/s (v11.1). Wider rows keep one buffer.
    float v[kVecsPerThread][8], next[kVecsPerThread][8];
    load_pass(p, batch, first + slot, last, lane, v);
    for (u32 pass = first; pass < last; pass += kRowsPerPass) {  // the same trip count for every thread
      if constexpr (kPrefetch) {
        load_pass(p, batch, pass + kRowsPerPass + slot, last, lane, next);
        process_pass(p, batch, pass + slot, last, valid, slot, lane, v, column, row_amax);
#pragma unroll
        for (u32 i = 0; i < kVecsPerThread; ++i) {
#pragma unroll
          for (u32 j = 0; j < 8; ++j) v[i][j] = next[i][j];
        }
      } else {
        if (pass != first) load_pass(p, batch, pass + slot, last, lane, v);
        process_pass(p, batch, pass + slot, last, valid, slot, lane, v, column, row_amax);
      }
    }
    if constexpr (kColumnAmax) store_column_partials(p, slot, lane, batch, column, column_share);
  }

  static constexpr bool kPrefetch = kVecsPerThread <= 4;

  // This thread's vectors of `row` (zeros past `last` or past the row's end).
  __device__ static void load_pass(const QuantizeParams& p, u32 batch, u32 row, u32 last, u32 lane,
                                   float (&v)[kVecsPerThread][8]) {
    const u64 row_start = (static_cast<u64>(batch) * p.rows + row) * kCols;
#pragma unroll
    for (u32 i = 0; i < kVecsPerThread; ++i) {
      const u32 vec = lane + i * kThreadsPerRow;
      if (row < last && vec < kVecs) {
        load8<kIn>(p.x, row_start + vec * 8, v[i]);
      } else {
#pragma unroll
        for (u32 j = 0; j < 8; ++j) v[i][j] = 0.0f;
      }
    }
  }

  // One row per slot: its amax (across its lanes, then its warps), its scale and fp8 values, and its share of
  // the column maxima when it is among the valid rows. Every thread of the CTA calls it (block barriers).
  __device__ static void process_pass(const QuantizeParams& p, u32 batch, u32 row, u32 last, u32 valid, u32 slot,
                                      u32 lane, const float (&v)[kVecsPerThread][8],
                                      float (&column)[kColumnAmax ? kVecsPerThread * 8 : 1], float* row_amax) {
    const bool live = row < last;
    const u64 row_start = (static_cast<u64>(batch) * p.rows + row) * kCols;
    float amax = 0.0f;
#pragma unroll
    for (u32 i = 0; i < kVecsPerThread; ++i) {
#pragma unroll
      for (u32 j = 0; j < 8; ++j) amax = nan_max(amax, fabsf(v[i][j]));
    }
#pragma unroll
    for (u32 offset = (kThreadsPerRow < 32 ? kThreadsPerRow : 32) / 2; offset > 0; offset /= 2) {
      amax = nan_max(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
    }
    if constexpr (kWarpsPerRow > 1) {
      if (threadIdx.x % 32 == 0) row_amax[threadIdx.x / 32] = amax;
      __syncthreads();
#pragma unroll
      for (u32 w = 0; w < kWarpsPerRow; ++w) amax = nan_max(amax, row_amax[slot * kWarpsPerRow + w]);
      __syncthreads();  // read before the next pass writes
    }
    const float s = scale_of<kOut>(amax);
    if (live && lane == 0) p.scale[static_cast<u64>(batch) * p.rows + row] = s;
#pragma unroll
    for (u32 i = 0; i < kVecsPerThread; ++i) {
      const u32 vec = lane + i * kThreadsPerRow;
      if (live && vec < kVecs) {
        const u64 bits = cast8<kOut>(v[i], s);
        u8* dst = p.q + row_start + vec * 8;
        asm volatile("st.global.v2.b32 [%0], {%1, %2};" ::"l"(dst), "r"(static_cast<u32>(bits)),
                     "r"(static_cast<u32>(bits >> 32))
                     : "memory");
      }
    }
    if constexpr (kColumnAmax) {
      if (live && row < valid) {
#pragma unroll
        for (u32 i = 0; i < kVecsPerThread; ++i) {
#pragma unroll
          for (u32 j = 0; j < 8; ++j) column[i * 8 + j] = nan_max(column[i * 8 + j], fabsf(v[i][j]));
        }
      }
    }
  }

  // The CTA's row of column partials (every column, zeros where no valid row was seen).
  __device__ static void store_column_partials(const QuantizeParams& p, u32 slot, u32 lane, u32 batch,
                                               const float (&column)[kVecsPerThread * 8], float* share) {
    float* out = p.column_partials + (static_cast<u64>(batch) * gridDim.x + blockIdx.x) * kCols;
    if constexpr (kRowsPerPass > 1) {
#pragma unroll
      for (u32 i = 0; i < kVecsPerThread; ++i) {
        const u32 vec = lane + i * kThreadsPerRow;
        if (vec >= kVecs) continue;
#pragma unroll
        for (u32 j = 0; j < 8; ++j) share[slot * kCols + vec * 8 + j] = column[i * 8 + j];
      }
      __syncthreads();
      for (u32 c = threadIdx.x; c < kCols; c += limits::kThreads) {
        float m = share[c];
        for (u32 s = 1; s < kRowsPerPass; ++s) m = nan_max(m, share[s * kCols + c]);
        out[c] = m;
      }
    } else {
#pragma unroll
      for (u32 i = 0; i < kVecsPerThread; ++i) {
        const u32 vec = lane + i * kThreadsPerRow;
        if (vec >= kVecs) continue;
        float* dst = out + vec * 8;
        asm volatile("st.global.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "f"(column[i * 8]), "f"(column[i * 8 + 1]),
                     "f"(column[i * 8 + 2]), "f"(column[i * 8 + 3])
                     : "memory");
        asm volatile("st.global.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(dst + 4), "f"(column[i * 8 + 4]),
                     "f"(column[i * 8 + 5]), "f"(column[i * 8 + 6]), "f"(column[i * 8 + 7])
                     : "memory");
      }
    }
  }

  // grid (ceil(C / 64), ceil(R / 128), B). Thread t loads vector t % 8 (8 columns) of rows 4 * (t / 8) ..
  // + 3, casts each with its column's scale, and packs each column's 4 row bytes into one shared word of
  // the tile stored [column][row]; then 16-byte pieces of the q^T rows go out.
  __device__ static void transpose(const QuantizeParams& p) {
    static_assert(kConfig.kind == static_cast<long long>(Kind::kTranspose));
    constexpr u32 kPitch = limits::kTileRows / 4 + 1;  // words per tile row: +1 spreads the banks
    __shared__ u32 tile[limits::kTileCols * kPitch];
    const u32 batch = blockIdx.z, c0 = blockIdx.x * limits::kTileCols, r0 = blockIdx.y * limits::kTileRows;
    const u32 vec = threadIdx.x % 8, quad = threadIdx.x / 8;
    const u32 col = c0 + vec * 8;
    const bool col_live = col < kCols;
    float s[8];
#pragma unroll
    for (u32 j = 0; j < 8; ++j) s[j] = col_live ? ptx::load_global_nc(p.scale + static_cast<u64>(batch) * kCols + col + j) : 1.0f;
    u32 packed[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll
    for (u32 i = 0; i < 4; ++i) {
      const u32 row = r0 + quad * 4 + i;
      if (!col_live || row >= p.rows) continue;
      float v[8];
      load8<kIn>(p.x, (static_cast<u64>(batch) * p.rows + row) * kCols + col, v);
#pragma unroll
      for (u32 j = 0; j < 8; j += 2) {
        const u32 two = cvt_fp8x2<kOut>(scaled<kOut>(v[j], s[j]), scaled<kOut>(v[j + 1], s[j + 1]));
        packed[j] |= (two & 0xFFu) << (8 * i);
        packed[j + 1] |= (two >> 8) << (8 * i);
      }
    }
#pragma unroll
    for (u32 j = 0; j < 8; ++j) tile[(vec * 8 + j) * kPitch + quad] = packed[j];
    __syncthreads();
    // 64 q^T rows x 8 pieces of 16 bytes (R % 16 == 0: a piece is all inside or all outside).
#pragma unroll
    for (u32 i = 0; i < limits::kTileCols * 8 / limits::kThreads; ++i) {
      const u32 piece = threadIdx.x + i * limits::kThreads;
      const u32 c = piece / 8, part = piece % 8;
      const u32 row = r0 + part * 16;
      if (c0 + c >= kCols || row >= p.rows) continue;
      const u32* src = tile + c * kPitch + part * 4;
      u8* dst = p.q + (static_cast<u64>(batch) * kCols + c0 + c) * p.rows + row;
      asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "r"(src[0]), "r"(src[1]), "r"(src[2]),
                   "r"(src[3])
                   : "memory");
    }
  }
};

}  // namespace dgpt::quant

// The entry point of one configuration (the generated source defines the Config type).
#define DGPT_DEFINE_QUANTIZE(Config)                                                                  \
  extern "C" __global__ void __launch_bounds__(::dgpt::quant::limits::kThreads, 1)                   \
      dgpt_quantize(const __grid_constant__ ::dgpt::quant::QuantizeParams params) {                   \
    if constexpr (Config::value.kind == static_cast<long long>(::dgpt::quant::Kind::kRows)) {        \
      ::dgpt::quant::Quantize<Config>::rows(params);                                                  \
    } else {                                                                                          \
      ::dgpt::quant::Quantize<Config>::transpose(params);                                             \
    }                                                                                                 \
  }
