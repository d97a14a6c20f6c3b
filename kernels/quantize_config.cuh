// The configuration of the quantization kernels (kernels/quantize.cuh), shared with the host (ffi/quantize.cc)
// and declared by name in jax_dgpt/quantize.py: the training recipes' current scaling, in one read of the input.
//
//   rows:      x [B * R, C] -> q [B * R, C] fp8 with one scale per row, scale [B * R] float32, and optionally
//              column partials [B, P, C] float32: CTA p's max |x| per column over its rows of each batch that
//              are among the first valid rows (the caller takes the max over P: the column amax).
//   transpose: x [B, R, C], scale [B, C] -> q^T [B, C, R] fp8, element (c, r) = x[r, c] / scale[c].
//
// Both compute s = max(amax, fmax * 2^-126) / fmax and q = fp8(clip(x / s, -fmax, fmax)) in IEEE float32
// (round to nearest even), as jax_dgpt/training/recipes.py does with jnp, bit for bit; NaN propagates
// through amax (a row or column holding NaN gets a NaN scale).
//
// Must compile as plain C++17 on the host and under NVCC/NVRTC without any system header.
#pragma once

#include "dgpt_types.cuh"
#include "kernel_config.cuh"  // Fp8Type: the fp8 codes are the GEMM's

namespace dgpt::quant {

enum class Kind : u32 { kRows = 0, kTranspose = 1 };
enum class InType : u32 { kBF16 = 0, kF32 = 1 };

// Integer fields, all compile-time (one cubin per value); rows and batches come from the buffers.
#define DGPT_QUANTIZE_CONFIG_FIELDS(X)                                                   \
  X(kind)        /* Kind */                                                              \
  X(cols)        /* C: elements per row of x, a multiple of vec_elements */              \
  X(in_dtype)    /* InType: bf16 or f32 */                                               \
  X(out_dtype)   /* Fp8Type code: 0 e4m3, 1 e5m2 */                                      \
  X(column_amax) /* rows kind: 1 also reduces |x| per column into column_amax */

struct QuantizeConfig {
#define DGPT_DECLARE_QUANTIZE_FIELD(name) long long name = 0;
  DGPT_QUANTIZE_CONFIG_FIELDS(DGPT_DECLARE_QUANTIZE_FIELD)
#undef DGPT_DECLARE_QUANTIZE_FIELD
};

namespace limits {
constexpr u32 kThreads = 256;         // per CTA, both kinds
constexpr u32 kVecElements = 8;       // elements per vector access: 16 bytes of bf16, 8 bytes of fp8
constexpr u32 kMaxVecsPerThread = 8;  // rows kind: a thread's share of a row stays in registers
constexpr u32 kMaxColsRows = kThreads * kVecElements * kMaxVecsPerThread;  // 16384
constexpr u32 kMaxColsTranspose = 1u << 24;
constexpr u32 kTileRows = 128;        // transpose: rows of x per CTA (bytes per q^T row segment)
constexpr u32 kTileCols = 64;         // transpose: columns of x per CTA
constexpr u32 kRowAlignmentTranspose = 16;  // transpose: R % 16 == 0 (16-byte stores of q^T rows)
// Rows kind, CTAs per launch it aims for: a few waves keep enough loads in flight; with column partials
// fewer, since each CTA writes a row of C partials. NOTES: atomic maxima into one [C] row instead took 740 us
// of an fp8_matmul step at M = 1024, N = K = 7168 (22 M atomics on 7168 addresses, run 9906ad9).
constexpr u32 kRowsCtas = 1024;
constexpr u32 kColumnPartialCtas = 264;
}  // namespace limits

// Rows kind: threads sharing one row (a power of two, 32..256, at most 4 vectors each where it can), the
// vectors each holds, and the rows a CTA takes per pass.
DGPT_HOST_DEVICE constexpr u32 threads_per_row(u32 cols) {
  u32 t = 32;
  while (t < limits::kThreads && t * 4 < cols / limits::kVecElements) t *= 2;
  return t;
}
DGPT_HOST_DEVICE constexpr u32 vecs_per_thread(u32 cols) {
  return tile::ceil_div(cols / limits::kVecElements, threads_per_row(cols));
}
DGPT_HOST_DEVICE constexpr u32 rows_per_pass(u32 cols) { return limits::kThreads / threads_per_row(cols); }

// Rows kind: rows of one batch per CTA (a multiple of rows_per_pass), and so the CTAs per batch:
// ceil(rows / rows_per_cta), which is also P, the column partials per batch.
DGPT_HOST_DEVICE constexpr u64 rows_per_cta(u32 cols, bool column_amax, u64 rows, u64 batches) {
  const u64 per_pass = rows_per_pass(cols);
  const u64 ctas = column_amax ? limits::kColumnPartialCtas : limits::kRowsCtas;
  const u64 target = batches >= ctas ? 1 : (ctas + batches - 1) / batches;
  const u64 passes = rows <= per_pass * target ? 1 : (rows + per_pass * target - 1) / (per_pass * target);
  return per_pass * passes;
}
DGPT_HOST_DEVICE constexpr u64 ctas_per_batch(u32 cols, bool column_amax, u64 rows, u64 batches) {
  const u64 per_cta = rows_per_cta(cols, column_amax, rows, batches);
  return (rows + per_cta - 1) / per_cta;
}

// The rule a configuration breaks, or nullptr.
DGPT_HOST_DEVICE constexpr const char* quantize_config_error(const QuantizeConfig& c) {
  if (c.kind != static_cast<long long>(Kind::kRows) && c.kind != static_cast<long long>(Kind::kTranspose)) {
    return "kind must be 0 (rows) or 1 (transpose)";
  }
  if (c.cols <= 0 || c.cols % limits::kVecElements != 0) return "cols must be a positive multiple of vec_elements";
  const long long max_cols = c.kind == static_cast<long long>(Kind::kRows) ? limits::kMaxColsRows : limits::kMaxColsTranspose;
  if (c.cols > max_cols) return "cols must be at most max_cols_rows (rows) or max_cols_transpose (transpose)";
  if (c.in_dtype != 0 && c.in_dtype != 1) return "in_dtype must be 0 (bf16) or 1 (f32)";
  if (c.out_dtype != 0 && c.out_dtype != 1) return "out_dtype must be 0 (e4m3) or 1 (e5m2)";
  if (c.column_amax != 0 && c.column_amax != 1) return "column_amax must be 0 or 1";
  if (c.column_amax != 0 && c.kind != static_cast<long long>(Kind::kRows)) return "column_amax needs the rows kind";
  return nullptr;
}

// The kernel's only parameter. Strides in elements.
struct QuantizeParams {
  const void* x;
  u8* q;
  float* scale;        // rows: written, [B * R]; transpose: read, [B, C]
  float* column_partials;  // rows with column_amax: [B, P, C], one row per CTA; else null
  const i32* valid_rows;   // rows with column_amax: only rows [0, valid) of each batch enter the partials
  u32 rows;            // R: rows per batch
  u32 rows_per_cta;    // rows kind: a multiple of rows_per_pass
};

}  // namespace dgpt::quant
