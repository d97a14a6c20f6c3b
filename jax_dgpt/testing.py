"""Helpers shared by the tests, the benchmarks, the scripts and the examples.

Problem shapes, deterministic fp8 inputs (e4m3 or e5m2, in numpy, or on the device for large operands) and
scales, the contiguous- and masked-layout input builders, the float64 references of the ops (scaled or not,
the ragged and weight-gradient ops included, with the clamping rule of the ragged and k-grouped layouts' group
sizes in ``k_grouped_offsets``) and the accuracy metric of the numerical contract (``calc_diff`` on the host;
``gemm_diff``, ``contiguous_diffs``, ``masked_diffs`` and ``ragged_diffs`` on the device), see
``docs/numerical_contract.md``. Group sizes of the ragged layout: ``generate_group_rows``. Needs numpy and jax only; not
imported by ``jax_dgpt`` itself.
"""

from __future__ import annotations

import functools
import math
import os
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

FP8 = np.dtype(ml_dtypes.float8_e4m3fn)
FP8_E5M2 = np.dtype(ml_dtypes.float8_e5m2)


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
# calc_diff bounds against float64 (docs/numerical_contract.md). A bfloat16 output is one rounding away; a
# float32 output shows the tensor core's reduced-precision accumulation inside each 128-K block, which depends
# on the data (measured on the H200: up to 7.9e-9 on random operands, 2.45e-8 on a training gradient's
# operands, 2026-12-01).
BF16_CALC_DIFF_BOUND = 3e-6
F32_CALC_DIFF_BOUND = 1e-7

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
def generate_fp8(
    shape: tuple[int, ...], key: int, on_device: bool = False, dtype: jnp.dtype = jnp.float8_e4m3fn
) -> jax.Array:
    """Random normal values cast to ``dtype`` (float8_e4m3fn or float8_e5m2; never all zeros),
    deterministic in ``key``.

    By default drawn in numpy (the same values on every backend); ``on_device=True`` draws them with
    ``jax.random`` on the default device instead (other values, but no host work or transfer: what the
    benchmark uses for its large operands). Both dtypes get the same standard normal draw for the same
    key (e5m2 keeps 3 significant bits of it, e4m3 keeps 4).
    """
    dtype = np.dtype(dtype)
    if dtype not in (FP8, FP8_E5M2):
        raise ValueError(f"generate_fp8: dtype must be float8_e4m3fn or float8_e5m2, got {dtype}")
    if on_device:
        return _random_fp8(tuple(shape), np.uint32(key), dtype)
    values = np.random.default_rng(key).standard_normal(shape).astype(np.float32)
    return jnp.asarray(values.astype(dtype))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _random_fp8(shape: tuple[int, ...], key, dtype=FP8) -> jax.Array:
    return jax.random.normal(jax.random.key(key, impl="rbg"), shape, jnp.float32).astype(dtype)


def generate_scales(shape: tuple[int, ...], key: int, on_device: bool = False) -> jax.Array:
    """Positive float32 scales ``2**U(-4, 4)`` (spread over 8 binades, not powers of two), deterministic
    in ``key``; in numpy by default, with ``jax.random`` on the default device when ``on_device``."""
    if on_device:
        return _random_scales(tuple(shape), np.uint32(key))
    exponents = np.random.default_rng(key).uniform(-4.0, 4.0, shape)
    return jnp.asarray(np.exp2(exponents).astype(np.float32))


@functools.partial(jax.jit, static_argnums=0)
def _random_scales(shape: tuple[int, ...], key) -> jax.Array:
    exponents = jax.random.uniform(jax.random.key(key, impl="rbg"), shape, jnp.float32, -4.0, 4.0)
    return jnp.exp2(exponents)


def generate_group_rows(groups: int, expected_m: int, rng: int | np.random.Generator) -> list[int]:
    """Rows per group, ``expected_m x U(0.7, 1.3)`` each (the reference library's draw).

    ``rng``: a seed, or a numpy Generator shared across calls (then a whole table is drawn in order and
    a shape gets the same rows whether or not others are skipped).
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return [int(expected_m * rng.uniform(0.7, 1.3)) for _ in range(groups)]


def generate_contiguous_indices(group_rows: list[int], alignment: int = 128) -> np.ndarray:
    """int32 m_indices for experts with ``group_rows[g]`` rows each, each padded with -1 to
    ``alignment``."""
    parts = []
    for g, rows in enumerate(group_rows):
        padded = -(-rows // alignment) * alignment
        parts.append(np.concatenate([np.full(rows, g, np.int32), np.full(padded - rows, -1, np.int32)]))
    return np.concatenate(parts) if parts else np.zeros((0,), np.int32)


# --- layout builders: inputs of the grouped ops ---------------------------------------------------
def contiguous_inputs(
    group_rows: list[int], n: int, k: int, key: int, alignment: int = 128, on_device: bool = False
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(a [M, K], b [G, N, K], m_indices int32 [M]) of the contiguous layout: group g's
    ``group_rows[g]`` rows, then -1 padding up to ``alignment``, group after group (G >= 1)."""
    m_indices = generate_contiguous_indices(group_rows, alignment)
    a = generate_fp8((len(m_indices), k), key, on_device)
    b = generate_fp8((max(len(group_rows), 1), n, k), key + 1, on_device)
    return a, b, jnp.asarray(m_indices)


def masked_inputs(
    masked_m: list[int], mmax: int, n: int, k: int, key: int, on_device: bool = False
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(a [G, Mmax, K], b [G, N, K], masked_m int32 [G]) of the masked layout, G = len(masked_m)."""
    groups = len(masked_m)
    a = generate_fp8((groups, mmax, k), key, on_device)
    b = generate_fp8((groups, n, k), key + 1, on_device)
    return a, b, jnp.asarray(np.asarray(masked_m, np.int64).clip(-(2**31), 2**31 - 1).astype(np.int32))


def masked_valid_rows(masked_m, mmax: int) -> np.ndarray:
    """Rows of each group the masked op writes: masked_m clamped to [0, Mmax]."""
    return np.clip(np.asarray(masked_m, np.int64), 0, mmax)


def to_f64(x) -> np.ndarray:
    """Any array (fp8 e4m3 or e5m2, bfloat16, float32, ...) as a numpy float64 array (exact for these)."""
    return np.asarray(x).astype(np.float64)


def normalised_error(got, want) -> float:
    """``||got - want|| / ||want||`` in float64 (the error of quantized results against unquantized ones)."""
    got, want = to_f64(got), to_f64(want)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


# NOTES: float64 references of the large shapes take minutes in numpy; on a GPU, XLA's float64 matmul
# (IEEE fp64, far more precise than the bf16 outputs it checks) takes milliseconds. Small products stay
# in numpy even there: every new shape is a new device program, and per-group references (a shape per
# group) compiled for minutes (tests/test_gpu_training.py, run 834694d).
F64_ON_DEVICE = bool(os.environ.get("DGPT_TEST_F64_ON_DEVICE", "")) or hopper_gpu_visible()
F64_NUMPY_FLOPS = 2**31


def matmul_nt_f64(x, y, absolute: bool = False) -> np.ndarray:
    """float64 ``x . y^T`` (x [..., M, K], y [..., N, K]; fp8 or float arrays), of ``|x|`` and ``|y|``
    when ``absolute``; on the default device when ``F64_ON_DEVICE`` and the product is over
    ``F64_NUMPY_FLOPS``, else in numpy."""
    batch = np.broadcast_shapes(np.shape(x)[:-2], np.shape(y)[:-2])
    flops = 2 * math.prod(batch) * np.shape(x)[-2] * np.shape(y)[-2] * np.shape(x)[-1]
    if F64_ON_DEVICE and flops > F64_NUMPY_FLOPS:
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


def _scaled_f64(product: np.ndarray, scale_a, scale_b) -> np.ndarray:
    """``product * scale_a[..., :, None] * scale_b[..., None, :]`` in float64 (scales None, () or
    per row / per column)."""
    out = np.asarray(product, np.float64)
    if scale_a is not None:
        scale_a = to_f64(scale_a)
        out = out * (scale_a if scale_a.ndim == 0 else scale_a[..., None])
    if scale_b is not None:
        scale_b = to_f64(scale_b)
        out = out * (scale_b if scale_b.ndim == 0 else scale_b[..., None, :])
    return out


def reference_gemm_f64(a: jax.Array, b: jax.Array, *, scale_a=None, scale_b=None) -> np.ndarray:
    """Exact float64 ``(A . B^T) * scale_a[:, None] * scale_b[None, :]`` of the fp8 values (a [..., M, K],
    b [..., N, K]; scale_a None, () or [..., M]; scale_b None, () or [..., N])."""
    return _scaled_f64(matmul_nt_f64(a, b), scale_a, scale_b)


def reference_wgrad_f64(a: jax.Array, b: jax.Array, c=None, *, scale_a=None, scale_b=None) -> np.ndarray:
    """float64 result of the weight-gradient GEMM: ``c + (A . B^T) * scale_a[:, None] * scale_b[None, :]``
    (a [M, K], b [N, K], c None (zeros) or [M, N]; scales as :func:`reference_gemm_f64`)."""
    out = reference_gemm_f64(a, b, scale_a=scale_a, scale_b=scale_b)
    return out if c is None else to_f64(c) + out


def k_grouped_offsets(group_sizes, total: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) int64 [G] of the k-grouped layout's groups over ``total`` columns: the rule.

    A negative size counts as 0; the running end is clamped to ``total`` (a group reaching past it loses
    its columns past ``total``, a group starting at or past it is empty); each group starts where the
    previous one ends (the first at 0). Group g contracts over columns ``[starts[g], ends[g])``.
    """
    sizes = np.maximum(np.asarray(group_sizes, np.int64).reshape(-1), 0)
    ends = np.minimum(np.cumsum(sizes), int(total))
    starts = np.concatenate([np.zeros((1,), np.int64), ends[:-1]]) if ends.size else ends.copy()
    return starts, ends


def reference_k_grouped_wgrad_f64(
    a: jax.Array, b: jax.Array, group_sizes, c=None, *, scale_a=None, scale_b=None
) -> np.ndarray:
    """float64 result of the k-grouped weight-gradient GEMM (a [M, T], b [N, T], group_sizes [G] host
    values, c None or [G, M, N]) -> [G, M, N]: ``out[g] = c[g] + (A_g . B_g^T) * sa_g[:, None] *
    sb_g[None, :]`` with A_g, B_g the columns of :func:`k_grouped_offsets`; an empty group gives c[g]
    (or zeros). scale_a: None, (), [M] or [G, M]; scale_b: None, (), [N] or [G, N]."""
    starts, ends = k_grouped_offsets(group_sizes, a.shape[1])
    x, y = to_f64(a), to_f64(b)
    sa = None if scale_a is None else to_f64(scale_a)
    sb = None if scale_b is None else to_f64(scale_b)
    out = np.zeros((len(starts), x.shape[0], y.shape[0]), np.float64) if c is None else np.array(to_f64(c))
    for g, (start, end) in enumerate(zip(starts, ends)):
        if end <= start:
            continue
        sa_g = sa if sa is None or sa.ndim < 2 else sa[g]
        sb_g = sb if sb is None or sb.ndim < 2 else sb[g]
        out[g] += _scaled_f64(matmul_nt_f64(x[:, start:end], y[:, start:end]), sa_g, sb_g)
    return out


def reference_contiguous_f64(a: jax.Array, b: jax.Array, m_indices, *, scale_a=None, scale_b=None) -> np.ndarray:
    """Exact float64 result of the contiguous op (a [M, K], b [G, N, K], m_indices [M]): row i is
    ``(a[i] . b[e]^T) * scale_a[i] * scale_b[e]`` with ``e = m_indices[i]``, rows whose index lies outside
    [0, G) are 0. scale_a: None, () or [M]; scale_b: None, (), [G] or [G, N]. For layouts that keep the
    alignment rule (each expert's rows start a 128-row block)."""
    idx = np.asarray(m_indices)
    sa = None if scale_a is None else to_f64(scale_a)
    sb = None if scale_b is None else to_f64(scale_b)
    out = np.zeros((idx.shape[0], b.shape[1]), np.float64)
    for g in range(b.shape[0]):
        rows = np.nonzero(idx == g)[0]
        if rows.size:
            sa_g = sa if sa is None or sa.ndim == 0 else sa[rows]
            sb_g = sb if sb is None or sb.ndim == 0 else sb[g]
            out[rows] = _scaled_f64(matmul_nt_f64(a[jnp.asarray(rows)], b[g]), sa_g, sb_g)
    return out


def reference_ragged_f64(a: jax.Array, b: jax.Array, group_sizes, *, scale_a=None, scale_b=None) -> np.ndarray:
    """Exact float64 result of the ragged op (a [M, K], b [G, N, K], group_sizes [G] host values) -> [M, N]:
    group g owns rows ``[starts[g], ends[g])`` of :func:`k_grouped_offsets` over M (negative sizes count as 0,
    the running end clamped to M), row i of group g is ``(a[i] . b[g]^T) * scale_a[i] * scale_b[g]``, rows
    past the last group's end are 0. scale_a: None, () or [M]; scale_b: None, (), [G] or [G, N]."""
    starts, ends = k_grouped_offsets(group_sizes, a.shape[0])
    sa = None if scale_a is None else to_f64(scale_a)
    sb = None if scale_b is None else to_f64(scale_b)
    out = np.zeros((a.shape[0], b.shape[1]), np.float64)
    for g, (start, end) in enumerate(zip(starts.tolist(), ends.tolist())):
        if end <= start:
            continue
        sa_g = sa if sa is None or sa.ndim == 0 else sa[start:end]
        sb_g = sb if sb is None or sb.ndim == 0 else sb[g]
        out[start:end] = _scaled_f64(matmul_nt_f64(a[start:end], b[g]), sa_g, sb_g)
    return out


def reference_masked_f64(a: jax.Array, b: jax.Array, masked_m, *, scale_a=None, scale_b=None) -> np.ndarray:
    """Exact float64 result of the masked op (a [G, Mmax, K], b [G, N, K]): ``(a[g] . b[g]^T) *
    scale_a[g, :, None] * scale_b[g]``; rows at or past ``masked_m[g]``, which the kernel leaves
    unspecified, are NaN so that only valid rows compare. scale_a: None, () or [G, Mmax]; scale_b: None,
    (), [G] or [G, N]."""
    sb = None if scale_b is None else to_f64(scale_b)
    if sb is not None and sb.ndim == 1:
        sb = sb[:, None]  # per group: one value for the group's whole row
    out = np.array(reference_gemm_f64(a, b, scale_a=scale_a, scale_b=sb), np.float64)
    valid = masked_valid_rows(masked_m, a.shape[1])
    for g, rows in enumerate(valid):
        out[g, rows:] = np.nan
    return out


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


# calc_diff on the default device, in float64, with no host copy of the operands or the results: per
# group of rows (groups stacked along a leading axis, rows outside `valid` left out).
@jax.jit
def _group_diffs(out, a, b, valid):
    x = out.astype(jnp.float64)
    y = jnp.einsum("grk,gnk->grn", a.astype(jnp.float64), b.astype(jnp.float64), precision="highest")
    keep = valid[..., None]
    x, y = jnp.where(keep, x, 0.0), jnp.where(keep, y, 0.0)
    # NOTES: a NaN (unwritten) element of a valid row must fail; jnp.where above keeps it.
    denominator = jnp.sum(x * x, axis=(1, 2)) + jnp.sum(y * y, axis=(1, 2))
    numerator = 2.0 * jnp.sum(x * y, axis=(1, 2))
    return jnp.where(denominator == 0.0, 0.0, 1.0 - numerator / jnp.where(denominator == 0.0, 1.0, denominator))


def _diffs_on_device(out, a, b, valid) -> np.ndarray:
    with jax.enable_x64(True):
        return np.asarray(_group_diffs(out, a, b, jnp.asarray(valid)))


def gemm_diff(out: jax.Array, a: jax.Array, b: jax.Array) -> float:
    """calc_diff of a normal GEMM's output [M, N] against the float64 ``A . B^T`` of its fp8 operands,
    computed on the default device (the operands stay there)."""
    if out.size == 0:
        return 0.0
    valid = np.ones((1, out.shape[0]), bool)
    return float(_diffs_on_device(out[None], a[None], b[None], valid)[0])


def contiguous_diffs(out: jax.Array, a: jax.Array, b: jax.Array, m_indices) -> dict[int, float]:
    """{group: calc_diff of its rows} of a contiguous output [M, N] against float64, for each group
    that has rows (indices outside [0, G) are padding), computed on the default device in batches of
    groups (:func:`_grouped_diffs`)."""
    idx = np.asarray(m_indices)
    return _grouped_diffs(out, a, b, {g: np.nonzero(idx == g)[0] for g in range(b.shape[0])})


# NOTES: the per-group tables below are padded to a power of two of rows (at least 8) and hold a power
# of two of groups, so that few programs are compiled; a batch of groups converts at most about
# _DIFF_WEIGHT_BYTES of weights to float64 (256 experts of [4096, 7168] would be 60 GB at once).
_DIFF_WEIGHT_BYTES = 2**32


def ragged_diffs(out: jax.Array, a: jax.Array, b: jax.Array, group_sizes) -> dict[int, float]:
    """{group: calc_diff of its rows} of a ragged output [M, N] against float64, for each group with rows
    (:func:`k_grouped_offsets` over M; host sizes), computed on the default device in batches of groups
    (:func:`_grouped_diffs`). Rows past the total are not compared: check that they are zero separately."""
    starts, ends = k_grouped_offsets(group_sizes, a.shape[0])
    return _grouped_diffs(out, a, b, {g: np.arange(s, e) for g, (s, e) in enumerate(zip(starts, ends))})


def _grouped_diffs(out: jax.Array, a: jax.Array, b: jax.Array, members: dict) -> dict[int, float]:
    """{group: calc_diff of output rows members[g] against a[members[g]] . b[g]^T}, for each group with rows.

    Groups are measured in batches of similar size (each group's rows padded to the next power of two),
    so the temporaries stay within about twice the valid rows plus one batch of float64 weights, even
    with one group holding every row next to many small ones, or hundreds of large experts.
    """
    by_width: dict[int, list[int]] = {}
    for g, rows in members.items():
        if rows.size:
            by_width.setdefault(max(8, 1 << (rows.size - 1).bit_length()), []).append(g)
    weight_bytes = max(1, b.shape[1] * b.shape[2] * 8)
    per_batch = 1 << (max(1, _DIFF_WEIGHT_BYTES // weight_bytes).bit_length() - 1)
    diffs: dict[int, float] = {}
    for width, groups in sorted(by_width.items()):
        for first in range(0, len(groups), per_batch):
            batch = groups[first : first + per_batch]
            count = min(per_batch, 1 << (len(batch) - 1).bit_length())
            table = np.zeros((count, width), np.int32)
            valid = np.zeros((count, width), bool)
            ids = np.zeros((count,), np.int32)
            for i, g in enumerate(batch):
                table[i, : members[g].size] = members[g]
                valid[i, : members[g].size], ids[i] = True, g
            rows = jnp.asarray(table)
            values = _diffs_on_device(out[rows], a[rows], b[jnp.asarray(ids)], valid)
            diffs.update({g: float(d) for g, d in zip(batch, values)})
    return dict(sorted(diffs.items()))


def masked_diffs(out: jax.Array, a: jax.Array, b: jax.Array, masked_m) -> dict[int, float]:
    """{group: calc_diff of its first masked_m[g] rows} of a masked output [G, Mmax, N] against
    float64, for each group with rows (rows past masked_m[g] are unspecified and left out)."""
    rows = masked_valid_rows(masked_m, a.shape[1])
    valid = np.arange(a.shape[1])[None, :] < rows[:, None]
    diffs = _diffs_on_device(out, a, b, valid)
    return {g: float(diffs[g]) for g in range(len(rows)) if rows[g]}


def assert_close_to_f64(out: jax.Array, a: jax.Array, b: jax.Array, context: str = "") -> None:
    """``out`` equals the float64 product rounded to bf16, up to the accumulation error of the kernel.

    Elementwise: ``|out - ref| <= 2^-7 |ref| + 2^-12 sum_k |a b|`` (one bf16 ulp, plus the error of
    accumulating inside one 128-wide K block on the tensor core); and ``calc_diff <= 3e-6``
    (docs/numerical_contract.md) when the output has at least 512 elements (below that, bf16
    rounding alone can push the metric past 3e-6).

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
def run_into_poison(fn, *args, out_shape, dtype=jnp.bfloat16):
    """Runs jitted `fn(*args)` with its output aliased to a NaN-filled buffer of `dtype`; checks the aliasing took."""
    poison = jnp.full(out_shape, jnp.nan, dtype)
    pointer = poison.unsafe_buffer_pointer()
    jitted = jax.jit(lambda *xs: fn(*xs[:-1]), donate_argnums=len(args), keep_unused=True)
    out = jitted(*args, poison)
    assert out.unsafe_buffer_pointer() == pointer, "XLA did not write the result into the poisoned buffer"
    return out


def hlo_entry_instructions(hlo: str) -> list[tuple[str, str, str]]:
    """(name, result type, rest) of each instruction of an optimized HLO module's entry computation
    (``jitted.lower(...).compile().as_text()``), for tests of what XLA fused."""
    entry = hlo[hlo.index("\nENTRY ") :].split("\n}")[0].splitlines()[1:]
    parsed = []
    for line in filter(lambda line: " = " in line, entry):
        name, rest = line.strip().removeprefix("ROOT ").split(" = ", 1)
        result, rest = rest.split(" ", 1) if not rest.startswith("(") else (rest[: rest.index(")") + 1], rest)
        parsed.append((name, result, rest))
    return parsed


def hlo_readers(instructions: list[tuple[str, str, str]], name: str) -> list[str]:
    """The instructions (of :func:`hlo_entry_instructions`) that take ``name`` as an operand."""
    operand = re.compile(rf"[(, ]{re.escape(name)}[,)]")
    return [reader for reader, _, rest in instructions if operand.search(rest)]
