"""Helpers shared by the tests, the benchmarks, the scripts and the examples.

Problem shapes, deterministic fp8 inputs, the float64 reference and the accuracy metric of the
numerical contract (``calc_diff``, see ``docs/numerical_contract.md``). Needs numpy and jax only; not
imported by ``jax_dgpt`` itself.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

FP8 = np.dtype(ml_dtypes.float8_e4m3fn)


@functools.cache
def hopper_gpu_visible() -> bool:
    """Whether JAX sees a CUDA device of compute capability 9.0 (Hopper)."""
    try:
        devices = jax.devices("gpu")
    except RuntimeError:
        return False
    return any(str(getattr(d, "compute_capability", "")) == "9.0" for d in devices)


# --- shapes ---------------------------------------------------------------------------------------
# The 7 (N, K) pairs of the normal GEMM table.
NK_PAIRS = [(7168, 576), (2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048)]
# The 22 normal shapes (M, N, K).
NORMAL_ANCHORS = [(m, n, k) for m in (64, 128, 4096) for n, k in NK_PAIRS] + [(8192, 8192, 8192)]
# M values that miss every tile size, checked with every (N, K) pair.
ODD_M = (1, 7, 65, 1000, 4097)
# Decode-sized M values of the performance issue, with every (N, K) pair.
DECODE_M = (1, 16, 32)
# (G, expected_m, N, K) of the contiguous and masked tables.
CONTIGUOUS_ANCHORS = [
    (4, 8192, 4096, 7168),
    (4, 8192, 7168, 2048),
    (8, 4096, 4096, 7168),
    (8, 4096, 7168, 2048),
    (32, 256, 4096, 7168),
    (32, 256, 7168, 2048),
]
MASKED_ANCHORS = [
    (1, 1024, 4096, 7168),
    (1, 1024, 7168, 2048),
    (2, 512, 4096, 7168),
    (2, 512, 7168, 2048),
    (4, 256, 4096, 7168),
    (4, 256, 7168, 2048),
]
MASKED_MMAX = 4096  # rows per group of A in the masked table


# --- generators -----------------------------------------------------------------------------------
def generate_fp8(shape: tuple[int, ...], key: int) -> jax.Array:
    """Random normal values cast to float8_e4m3fn (never all zeros), deterministic in ``key``."""
    values = np.random.default_rng(key).standard_normal(shape).astype(np.float32)
    return jnp.asarray(values.astype(FP8))


def generate_contiguous_indices(group_rows: list[int], alignment: int = 128) -> np.ndarray:
    """int32 m_indices for experts with ``group_rows[g]`` rows each, each padded with -1 to
    ``alignment``."""
    parts = []
    for g, rows in enumerate(group_rows):
        padded = -(-rows // alignment) * alignment
        parts.append(np.concatenate([np.full(rows, g, np.int32), np.full(padded - rows, -1, np.int32)]))
    return np.concatenate(parts) if parts else np.zeros((0,), np.int32)


def to_f64(x: jax.Array) -> np.ndarray:
    return np.asarray(x).astype(np.float64)


# NOTES: float64 references of the large shapes take minutes in numpy; on a GPU, XLA's float64 matmul
# (IEEE fp64, far more precise than the bf16 outputs it checks) takes milliseconds.
F64_ON_DEVICE = bool(os.environ.get("DGPT_TEST_F64_ON_DEVICE", "")) or hopper_gpu_visible()


def matmul_nt_f64(x, y, absolute: bool = False) -> np.ndarray:
    """float64 ``x . y^T`` (x [..., M, K], y [..., N, K]; fp8 or float arrays), of ``|x|`` and ``|y|``
    when ``absolute``; on the default device when ``F64_ON_DEVICE``, else in numpy."""
    if F64_ON_DEVICE:
        with jax.enable_x64(True):
            xd, yd = jnp.asarray(x).astype(jnp.float64), jnp.asarray(y).astype(jnp.float64)
            if absolute:
                xd, yd = jnp.abs(xd), jnp.abs(yd)
            product = jnp.matmul(xd, jnp.swapaxes(yd, -1, -2), precision=jax.lax.Precision.HIGHEST)
            return np.asarray(product)
    xd, yd = to_f64(x), to_f64(y)
    if absolute:
        xd, yd = np.abs(xd), np.abs(yd)
    return np.matmul(xd, np.swapaxes(yd, -1, -2))


def reference_gemm_f64(a: jax.Array, b: jax.Array) -> np.ndarray:
    """Exact float64 ``A . B^T`` of the fp8 values (a [..., M, K], b [..., N, K])."""
    return matmul_nt_f64(a, b)


# --- accuracy -------------------------------------------------------------------------------------
# Every calc_diff a test checked, as (value, context); the largest is printed at the end of the run.
RECORDED_DIFFS: list[tuple[float, str]] = []


def record_diff(value: float, context: str) -> float:
    RECORDED_DIFFS.append((value, context))
    return value


def calc_diff(x: np.ndarray, y: np.ndarray) -> float:
    """1 - 2<x,y> / (|x|^2 + |y|^2), in float64 (docs/numerical_contract.md)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    denominator = float(np.sum(x * x) + np.sum(y * y))
    return 0.0 if denominator == 0.0 else 1.0 - 2.0 * float(np.sum(x * y)) / denominator


def assert_close_to_f64(out: jax.Array, a: jax.Array, b: jax.Array, context: str = "") -> None:
    """``out`` equals the float64 product rounded to bf16, up to the accumulation error of the kernel.

    Elementwise: ``|out - ref| <= 2^-7 |ref| + 2^-12 sum_k |a b|`` (one bf16 ulp, plus the error of
    accumulating inside one 128-wide K block on the tensor core); and ``calc_diff <= 3e-6`` (the
    contract of DESIGN.md §5) when the output has at least 512 elements (below that, bf16 rounding
    alone can push the metric past 3e-6).

    NOTES: Hopper's FP8 wgmma keeps fewer mantissa bits than fp32 while it accumulates (seen on the
    H200: errors of 6% on elements near zero at K=128, far above fp32 summation error); the kernel
    promotes into fp32 registers after every K block, so the error is bounded per block, never
    grows with K beyond the block sums, and a wrong or missing block still fails calc_diff.
    """
    ref = reference_gemm_f64(a, b)
    got = to_f64(out)
    magnitude = matmul_nt_f64(a, b, absolute=True)
    bound = 2.0**-7 * np.abs(ref) + 2.0**-12 * magnitude
    error = np.abs(got - ref)
    worst = np.unravel_index(np.argmax(error - bound), error.shape) if error.size else None
    assert np.all(error <= bound), (
        f"{context}: element {worst} got {got[worst]} want {ref[worst]} (bound {bound[worst]})"
    )
    if ref.size >= 512:
        diff = record_diff(calc_diff(got, ref), context)
        assert diff <= 3e-6, f"{context}: calc_diff {diff:.3g} > 3e-6"


# --- poisoned outputs ------------------------------------------------------------------------------
def run_into_poison(fn, *args, out_shape):
    """Runs jitted `fn(*args)` with its output aliased to a NaN-filled buffer; checks the aliasing took."""
    poison = jnp.full(out_shape, jnp.nan, jnp.bfloat16)
    pointer = poison.unsafe_buffer_pointer()
    jitted = jax.jit(lambda *xs: fn(*xs[:-1]), donate_argnums=len(args), keep_unused=True)
    out = jitted(*args, poison)
    assert out.unsafe_buffer_pointer() == pointer, "XLA did not write the result into the poisoned buffer"
    return out
