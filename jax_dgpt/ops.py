"""Public ops: readable validation, padding to what the kernel takes, then the primitives.

Layout of every operand is row-major ("NT"): the last dimension (K for A and B, N for the output) is
the contiguous one. The kernel needs each row to start on a 16-byte boundary: K % 16 == 0 (fp8) and
N % 8 == 0 (bf16 output). Other sizes are padded here with zeros, which changes no product.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import device, forcing
from ._ints import static_int
from .kernel_config import limits
from .primitives import BF16, FP8, INT32, contiguous_p, gemm_p, masked_p

__all__ = [
    "gemm",
    "gemm_per_tensor_fp8_fp8_bf16_nt",
    "get_m_alignment_for_contiguous_layout",
    "grouped_gemm_contiguous",
    "grouped_gemm_masked",
    "m_grouped_gemm_per_tensor_fp8_fp8_bf16_nt_contiguous",
    "m_grouped_gemm_per_tensor_fp8_fp8_bf16_nt_masked",
]


def get_m_alignment_for_contiguous_layout() -> int:
    """The row alignment (128) at which every expert's rows must start in the contiguous layout.

    NOTES: the kernel reads one expert per block of this many rows, so no row tile spans two experts.
    """
    return limits()["m_alignment_contiguous"]


# --- validation -----------------------------------------------------------------------------------
def _check_array(op: str, name: str, x: Any, dtype: np.dtype, dims: str) -> tuple[int, ...]:
    """Checks dtype and rank of one operand; ``dims`` names the expected dimensions, e.g. "M, K"."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"jax_dgpt.{op}: {name} must be an array with a shape and a dtype, got {type(x).__name__}")
    got = np.dtype(x.dtype)
    if got != dtype:
        raise TypeError(f"jax_dgpt.{op}: {name} must have dtype {dtype.name}, got {got.name}")
    rank = len(dims.split(","))
    if not all(isinstance(d, (int, np.integer)) for d in x.shape):
        raise TypeError(
            f"jax_dgpt.{op}: {name} must have a static shape (the kernel is compiled per shape), "
            f"got symbolic dimensions {tuple(x.shape)}"
        )
    shape = tuple(int(d) for d in x.shape)
    if len(shape) != rank:
        raise ValueError(
            f"jax_dgpt.{op}: {name} must have rank {rank} (shape [{dims}]), got rank {len(shape)} with shape {shape}"
        )
    return shape


def _check_equal(op: str, what: str, first: tuple[str, int], second: tuple[str, int]) -> None:
    (first_name, first_size), (second_name, second_size) = first, second
    if first_size != second_size:
        raise ValueError(
            f"jax_dgpt.{op}: {first_name} and {second_name} must have the same {what}, "
            f"got {first_size} and {second_size}"
        )


def _check_expected_m(op: str, expected_m: Any) -> int:
    if isinstance(expected_m, jax.core.Tracer):
        raise TypeError(
            f"jax_dgpt.{op}: expected_m must be a static Python int, got a traced value; pass it as a static argument"
        )
    return static_int(f"jax_dgpt.{op}", "expected_m", expected_m, positive=True, kind="a static int")


# --- padding --------------------------------------------------------------------------------------
def _pad_to(x: jax.Array, axis: int, multiple: int) -> jax.Array:
    size = x.shape[axis]
    extra = -size % multiple
    if not extra:
        return x
    widths = [(0, 0, 0)] * x.ndim
    widths[axis % x.ndim] = (0, extra, 0)
    return lax.pad(x, jnp.zeros((), x.dtype), widths)


def _slice_n(out: jax.Array, n: int) -> jax.Array:
    """Drops the output columns that N padding added (nothing when N needed none)."""
    return out if out.shape[-1] == n else lax.slice_in_dim(out, 0, n, axis=out.ndim - 1)


def _pad_operands(a: jax.Array, b: jax.Array, b_n_axis: int) -> tuple[jax.Array, jax.Array]:
    """Zero-pads K (of A and B) to a multiple of 16 and N (of B) to a multiple of 8, only where
    needed."""
    k_alignment, n_alignment = limits()["k_alignment"], limits()["n_alignment"]
    a, b = _pad_to(a, -1, k_alignment), _pad_to(b, -1, k_alignment)
    return a, _pad_to(b, b_n_axis, n_alignment)


# --- jitted bodies (static: num_sms, overrides, expected_m) -----------------------------------------
# NOTES: everything the CUDA lowering's heuristics read besides shapes is a static argument here and a
# primitive parameter below, so the jit caches keep configs apart.
Overrides = forcing.Overrides  # fields forced by a jax_dgpt.forcing context


@functools.partial(jax.jit, static_argnames=("num_sms", "overrides"))
def _gemm(a: jax.Array, b: jax.Array, *, num_sms: int, overrides: Overrides) -> jax.Array:
    (m, k), n = a.shape, b.shape[0]
    if m == 0 or n == 0 or k == 0:
        return jnp.zeros((m, n), BF16)
    a, b = _pad_operands(a, b, b_n_axis=0)
    return _slice_n(gemm_p.bind(a, b, num_sms=num_sms, overrides=overrides), n)


@functools.partial(jax.jit, static_argnames=("num_sms", "overrides"))
def _contiguous(a: jax.Array, b: jax.Array, m_indices: jax.Array, *, num_sms: int, overrides: Overrides) -> jax.Array:
    (m, k), (g, n) = a.shape, b.shape[:2]
    if m == 0 or n == 0 or k == 0 or g == 0:
        return jnp.zeros((m, n), BF16)  # K = 0: empty sums; G = 0: every row is padding
    a, b = _pad_operands(a, b, b_n_axis=1)
    return _slice_n(contiguous_p.bind(a, b, m_indices, num_sms=num_sms, overrides=overrides), n)


@functools.partial(jax.jit, static_argnames=("expected_m", "num_sms", "overrides"))
def _masked(
    a: jax.Array, b: jax.Array, masked_m: jax.Array, *, expected_m: int, num_sms: int, overrides: Overrides
) -> jax.Array:
    (g, m, k), n = a.shape, b.shape[1]
    if g == 0 or m == 0 or n == 0 or k == 0:
        return jnp.zeros((g, m, n), BF16)
    a, b = _pad_operands(a, b, b_n_axis=1)
    return _slice_n(masked_p.bind(a, b, masked_m, expected_m=expected_m, num_sms=num_sms, overrides=overrides), n)


# --- public ops -----------------------------------------------------------------------------------
def gemm(a: jax.Array, b: jax.Array) -> jax.Array:
    """FP8 GEMM ``D = A . B^T`` with fp32 accumulation, rounded to bfloat16.

    Args:
      a: float8_e4m3fn ``[M, K]``, row-major (K contiguous).
      b: float8_e4m3fn ``[N, K]``, row-major (K contiguous): the "NT" layout, B given transposed.

    Returns:
      bfloat16 ``[M, N]``, row-major.

    Any M, N, K >= 0 works. The kernel needs K % 16 == 0 and N % 8 == 0 (16-byte row strides);
    otherwise this wrapper zero-pads K of A and B to a multiple of 16 (one extra read and write of A
    and of B) and N of B to a multiple of 8 (one extra read and write of B, and of D to slice the
    padding off). Empty results (M = 0 or N = 0) launch nothing; K = 0 gives zeros. On a CPU the
    same jitted program runs a reference (exact fp8 products, fp32 accumulation). The SM count used
    is :func:`get_num_sms` when this is traced.

    Raises:
      TypeError: a dtype other than float8_e4m3fn.
      ValueError: a rank other than 2, or A and B with different K.
    """
    op = "gemm"
    _, k = _check_array(op, "a", a, FP8, "M, K")
    _, b_k = _check_array(op, "b", b, FP8, "N, K")
    _check_equal(op, "K (last dimension)", ("a", k), ("b", b_k))
    return _gemm(
        a,
        b,
        num_sms=device.get_num_sms(),
        overrides=forcing.forced_overrides(),
    )


def grouped_gemm_contiguous(a: jax.Array, b: jax.Array, m_indices: jax.Array) -> jax.Array:
    """M-grouped FP8 GEMM, contiguous layout (MoE training and prefill).

    Row i of the output is ``A[i] . B[m_indices[i]]^T`` (fp32 accumulation, rounded to bfloat16).

    Args:
      a: float8_e4m3fn ``[M, K]``, row-major: the tokens of all experts concatenated. Each expert's
        rows are contiguous and start at a multiple of :func:`get_m_alignment_for_contiguous_layout`
        (128); pad between experts with rows whose index is -1. M itself need not be a multiple of
        128.
      b: float8_e4m3fn ``[G, N, K]``, row-major (K contiguous): one ``[N, K]`` weight per expert.
      m_indices: int32 ``[M]`` on the device: the expert of each row; -1 marks a padding row.
        Indices outside ``[-1, G)`` are treated as -1 (b is never read out of bounds).

    Returns:
      bfloat16 ``[M, N]``; padding rows (index -1 or out of range) are exactly zero. A layout that
      breaks the alignment rule never reads out of bounds: each 128-row block takes its expert from
      its first row, and rows with another index come out as zeros.

    Padding of K to a multiple of 16 and of N to a multiple of 8 works, and costs, as in
    :func:`gemm`. M = 0 or N = 0 launch nothing; K = 0 or G = 0 give zeros.

    Raises:
      TypeError: a or b not float8_e4m3fn, m_indices not int32.
      ValueError: wrong ranks, a and b with different K, m_indices not of shape ``[M]``.
    """
    op = "grouped_gemm_contiguous"
    m, k = _check_array(op, "a", a, FP8, "M, K")
    _, _, b_k = _check_array(op, "b", b, FP8, "G, N, K")
    (i_m,) = _check_array(op, "m_indices", m_indices, INT32, "M")
    _check_equal(op, "K (last dimension)", ("a", k), ("b", b_k))
    _check_equal(op, "M (rows)", ("a", m), ("m_indices", i_m))
    return _contiguous(a, b, m_indices, num_sms=device.get_num_sms(), overrides=forcing.forced_overrides())


def grouped_gemm_masked(a: jax.Array, b: jax.Array, masked_m: jax.Array, expected_m: int) -> jax.Array:
    """M-grouped FP8 GEMM, masked layout (MoE decode, CUDA-graph friendly).

    For each group g, rows ``r < clamp(masked_m[g], 0, Mmax)`` of the output are ``A[g, r] .
    B[g]^T`` (fp32 accumulation, rounded to bfloat16).

    Args:
      a: float8_e4m3fn ``[G, Mmax, K]``, row-major (K contiguous).
      b: float8_e4m3fn ``[G, N, K]``, row-major (K contiguous).
      masked_m: int32 ``[G]`` on the device: valid rows per group. Only the device reads it (no host
        sync), so one compiled function serves every value. Values above Mmax are clamped, negative
        ones count as 0.
      expected_m: static positive int: the expected rows per group, a hint for the kernel
        configuration.

    Returns:
      bfloat16 ``[G, Mmax, N]``. Rows at or past ``masked_m[g]`` are unspecified on the GPU (the
      kernel does not write them); the CPU reference returns zeros there.

    Padding of K to a multiple of 16 and of N to a multiple of 8 works, and costs, as in
    :func:`gemm`. G = 0, Mmax = 0 or N = 0 launch nothing; K = 0 gives zeros.

    Raises:
      TypeError: a or b not float8_e4m3fn, masked_m not int32, expected_m not a static int.
      ValueError: wrong ranks, G or K mismatches, masked_m not of shape ``[G]``, expected_m <= 0.
    """
    op = "grouped_gemm_masked"
    g, _, k = _check_array(op, "a", a, FP8, "G, Mmax, K")
    b_g, _, b_k = _check_array(op, "b", b, FP8, "G, N, K")
    (mask_g,) = _check_array(op, "masked_m", masked_m, INT32, "G")
    _check_equal(op, "G (groups)", ("a", g), ("b", b_g))
    _check_equal(op, "K (last dimension)", ("a", k), ("b", b_k))
    _check_equal(op, "G (groups)", ("a", g), ("masked_m", mask_g))
    expected = _check_expected_m(op, expected_m)
    return _masked(
        a,
        b,
        masked_m,
        expected_m=expected,
        num_sms=device.get_num_sms(),
        overrides=forcing.forced_overrides(),
    )


# --- the reference library's names (they return the output: JAX has no out= arguments) ------------
def gemm_per_tensor_fp8_fp8_bf16_nt(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """Alias of :func:`gemm` under the reference library's name; returns D (no ``out``)."""
    return gemm(lhs, rhs)


def m_grouped_gemm_per_tensor_fp8_fp8_bf16_nt_contiguous(
    lhs: jax.Array, rhs: jax.Array, m_indices: jax.Array
) -> jax.Array:
    """Alias of :func:`grouped_gemm_contiguous` under the reference library's name; returns D."""
    return grouped_gemm_contiguous(lhs, rhs, m_indices)


def m_grouped_gemm_per_tensor_fp8_fp8_bf16_nt_masked(
    lhs: jax.Array, rhs: jax.Array, masked_m: jax.Array, expected_m: int
) -> jax.Array:
    """Alias of :func:`grouped_gemm_masked` under the reference library's name; returns D."""
    return grouped_gemm_masked(lhs, rhs, masked_m, expected_m)
