"""Public ops: readable validation, padding to what the kernel takes, then the primitives.

Layout of every operand is row-major ("NT"): the last dimension (K for A and B, N for the output) is
the contiguous one. The kernel needs each row to start on a 16-byte boundary: K % 16 == 0 (fp8) and
N % 8 == 0 (the output). Other sizes are padded here with zeros, which changes no product.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import device, forcing
from ._ints import static_int
from .heuristics import LINE_BYTES
from .kernel_config import Operands, limits
from .primitives import BF16, F32, FP8_TYPES, INT32, contiguous_p, gemm_p, k_grouped_p, masked_p, ragged_p

__all__ = [
    "gemm",
    "gemm_per_tensor_fp8_fp8_bf16_nt",
    "get_m_alignment_for_contiguous_layout",
    "grouped_gemm_contiguous",
    "grouped_gemm_masked",
    "grouped_gemm_ragged",
    "k_grouped_wgrad_gemm",
    "k_grouped_wgrad_gemm_per_tensor_fp8_fp8_fp32_nt",
    "m_grouped_gemm_per_tensor_fp8_fp8_bf16_nt_contiguous",
    "m_grouped_gemm_per_tensor_fp8_fp8_bf16_nt_masked",
    "ragged_dot",
    "wgrad_gemm",
    "wgrad_gemm_per_tensor_fp8_fp8_fp32_nt",
]


def get_m_alignment_for_contiguous_layout() -> int:
    """The row alignment (128) at which every expert's rows must start in the contiguous layout.

    NOTES: the kernel reads one expert per block of this many rows, so no row tile spans two experts.
    """
    return limits()["m_alignment_contiguous"]


# --- validation -----------------------------------------------------------------------------------
def _dtype_names(dtypes: Sequence[np.dtype]) -> str:
    return " or ".join(d.name for d in dtypes)


def _check_array(op: str, name: str, x: Any, dtypes: np.dtype | Sequence[np.dtype], dims: str) -> tuple[int, ...]:
    """Checks dtype and rank of one operand; ``dims`` names the expected dimensions, e.g. "M, K"."""
    allowed = tuple(dtypes) if isinstance(dtypes, (tuple, list)) else (dtypes,)
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"jax_dgpt.{op}: {name} must be an array with a shape and a dtype, got {type(x).__name__}")
    got = np.dtype(x.dtype)
    if got not in allowed:
        raise TypeError(f"jax_dgpt.{op}: {name} must have dtype {_dtype_names(allowed)}, got {got.name}")
    rank = len(dims.split(",")) if dims else 0
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


def _check_scale(op: str, name: str, scale: Any, shapes: dict[tuple[int, ...], str]) -> None:
    """None, or a float32 array of one of ``shapes`` (shape -> what it scales, for the message)."""
    if scale is None:
        return
    if not hasattr(scale, "shape") or not hasattr(scale, "dtype"):
        raise TypeError(f"jax_dgpt.{op}: {name} must be None or a float32 array, got {type(scale).__name__}")
    if np.dtype(scale.dtype) != F32:
        raise TypeError(f"jax_dgpt.{op}: {name} must have dtype float32, got {np.dtype(scale.dtype).name}")
    if tuple(scale.shape) not in shapes:
        allowed = ", ".join(f"{list(s)} ({what})" for s, what in shapes.items())
        raise ValueError(f"jax_dgpt.{op}: {name} must have shape {allowed}; got {list(scale.shape)}")


def _check_out_dtype(op: str, out_dtype: Any) -> str:
    try:
        dtype = np.dtype(out_dtype)
    except TypeError:
        raise TypeError(f"jax_dgpt.{op}: out_dtype must be bfloat16 or float32, got {out_dtype!r}") from None
    if dtype not in (BF16, F32):
        raise TypeError(f"jax_dgpt.{op}: out_dtype must be bfloat16 or float32, got {dtype.name}")
    return dtype.name


def _check_c(op: str, c: Any, shape: tuple[int, ...], dims: str) -> None:
    if c is None:
        return
    got = _check_array(op, "c", c, F32, dims)
    if got != shape:
        raise ValueError(f"jax_dgpt.{op}: c must have the output's shape {list(shape)} ([{dims}]), got {list(got)}")


def _operands(a: Any, b: Any, out_dtype: str, scale_a: Any, scale_b: Any, accumulate: bool = False) -> Operands:
    return Operands(
        a_dtype=np.dtype(a.dtype).name,
        b_dtype=np.dtype(b.dtype).name,
        out_dtype=out_dtype,
        accumulate=accumulate,
        has_scale_a=scale_a is not None,
        has_scale_b=scale_b is not None,
    )


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


# NOTES: the kernel's TMA loads read rows of A and B in 128-byte boxes; where a row is not a multiple of 128
# bytes, every box row spans two L2 lines. K that needs padding anyway is padded to whole lines (the same one
# copy). K % 16 == 0 is not copied: the heuristics multicast A for such rows (heuristics.auto_multicast_a),
# which beat the copy (H200, benchmarks/KERNEL_LOG.md v18: 8192x2112x7184 206 us unpadded against 261 with
# the copy, 8192x7168x2064 189 against 219).


def _pad_operands(a: jax.Array, b: jax.Array, b_n_axis: int) -> tuple[jax.Array, jax.Array]:
    """Zero-pads K (of A and B) to a multiple of 16 (of LINE_BYTES where it pads at all) and
    N (of B) to a multiple of 8, only where needed."""
    k_alignment, n_alignment = limits()["k_alignment"], limits()["n_alignment"]
    multiple = LINE_BYTES if a.shape[-1] % k_alignment else k_alignment
    a, b = _pad_to(a, -1, multiple), _pad_to(b, -1, multiple)
    return a, _pad_to(b, b_n_axis, n_alignment)


def _pad_n(x: jax.Array | None, column_rank: int) -> jax.Array | None:
    """Pads the last (N) axis like B's N when ``x`` has rank ``column_rank`` or more (c, a per-column
    scale_b); a lower rank (per tensor, per group) passes unchanged."""
    if x is None or x.ndim < column_rank:
        return x
    return _pad_to(x, -1, limits()["n_alignment"])


def _extra(*xs: jax.Array | None) -> list[jax.Array]:
    """The optional primitive operands that are present, in the primitives' order."""
    return [x for x in xs if x is not None]


# --- jitted bodies (static: operands, num_sms, overrides, expected_m) -------------------------------
# NOTES: everything the CUDA lowering's heuristics read besides shapes is a static argument here and a
# primitive parameter below, so the jit caches keep configs apart.
Overrides = forcing.Overrides  # fields forced by a jax_dgpt.forcing context
_STATIC = ("operands", "num_sms", "overrides")


def _empty(shape: tuple[int, ...], operands: Operands, c: jax.Array | None) -> jax.Array:
    """The result when nothing is multiplied: c, or zeros."""
    return c if c is not None else jnp.zeros(shape, operands.out_dtype)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _gemm(a, b, scale_a, scale_b, c, *, operands: Operands, num_sms: int, overrides: Overrides) -> jax.Array:
    (m, k), n = a.shape, b.shape[0]
    if m == 0 or n == 0 or k == 0:
        return _empty((m, n), operands, c)
    a, b = _pad_operands(a, b, b_n_axis=0)
    extra = _extra(scale_a, _pad_n(scale_b, 1), _pad_n(c, 1))
    return _slice_n(gemm_p.bind(a, b, *extra, operands=operands, num_sms=num_sms, overrides=overrides), n)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _contiguous(a, b, m_indices, scale_a, scale_b, *, operands: Operands, num_sms: int, overrides: Overrides):
    (m, k), (g, n) = a.shape, b.shape[:2]
    if m == 0 or n == 0 or k == 0 or g == 0:
        return _empty((m, n), operands, None)  # K = 0: empty sums; G = 0: every row is padding
    a, b = _pad_operands(a, b, b_n_axis=1)
    extra = _extra(scale_a, _pad_n(scale_b, 2))
    out = contiguous_p.bind(a, b, m_indices, *extra, operands=operands, num_sms=num_sms, overrides=overrides)
    return _slice_n(out, n)


@functools.partial(jax.jit, static_argnames=(*_STATIC, "expected_m"))
def _masked(a, b, masked_m, scale_a, scale_b, *, expected_m: int, operands: Operands, num_sms: int, overrides):
    (g, m, k), n = a.shape, b.shape[1]
    if g == 0 or m == 0 or n == 0 or k == 0:
        return _empty((g, m, n), operands, None)
    a, b = _pad_operands(a, b, b_n_axis=1)
    extra = _extra(scale_a, _pad_n(scale_b, 2))
    out = masked_p.bind(
        a, b, masked_m, *extra, expected_m=expected_m, operands=operands, num_sms=num_sms, overrides=overrides
    )
    return _slice_n(out, n)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _ragged(a, b, group_sizes, scale_a, scale_b, *, operands: Operands, num_sms: int, overrides: Overrides):
    (m, k), (g, n) = a.shape, b.shape[:2]
    if m == 0 or n == 0 or k == 0 or g == 0:
        return _empty((m, n), operands, None)  # K = 0: empty sums; G = 0: no row belongs to a group
    a, b = _pad_operands(a, b, b_n_axis=1)
    extra = _extra(scale_a, _pad_n(scale_b, 2))
    out = ragged_p.bind(a, b, group_sizes, *extra, operands=operands, num_sms=num_sms, overrides=overrides)
    return _slice_n(out, n)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _k_grouped(a, b, group_sizes, scale_a, scale_b, c, *, operands: Operands, num_sms: int, overrides: Overrides):
    (m, t), n, g = a.shape, b.shape[0], group_sizes.shape[0]
    if g == 0 or m == 0 or n == 0 or t == 0:
        return _empty((g, m, n), operands, c)
    # Columns past T are zeros: a group reaching past T gains nothing from them.
    a, b = _pad_operands(a, b, b_n_axis=0)
    extra = _extra(scale_a, _pad_n(scale_b, 1), _pad_n(c, 1))
    out = k_grouped_p.bind(a, b, group_sizes, *extra, operands=operands, num_sms=num_sms, overrides=overrides)
    return _slice_n(out, n)


def _context() -> dict[str, Any]:
    return {"num_sms": device.get_num_sms(), "overrides": forcing.forced_overrides()}


# --- public ops -----------------------------------------------------------------------------------
def gemm(
    a: jax.Array,
    b: jax.Array,
    *,
    scale_a: jax.Array | None = None,
    scale_b: jax.Array | None = None,
    out_dtype: Any = jnp.bfloat16,
) -> jax.Array:
    """FP8 GEMM ``D = A . B^T`` with fp32 accumulation, optionally scaled, rounded once to ``out_dtype``.

    Args:
      a: float8_e4m3fn or float8_e5m2 ``[M, K]``, row-major (K contiguous).
      b: float8_e4m3fn or float8_e5m2 ``[N, K]``, row-major (K contiguous): the "NT" layout, B given
        transposed. a and b may have different fp8 types.
      scale_a: optional float32 on the device, ``()`` (per tensor) or ``[M]`` (per row of a).
      scale_b: optional float32 on the device, ``()`` or ``[N]`` (per row of b: per output column).
      out_dtype: bfloat16 (default) or float32.

    Returns:
      ``out_dtype`` ``[M, N]``, row-major. The result is ``(A . B^T) * scale_a[:, None] *
      scale_b[None, :]``, multiplied in fp32 in that order before the one rounding; without scales the
      kernel loads none.

    Any M, N, K >= 0 works. The kernel needs K % 16 == 0 and N % 8 == 0 (16-byte row strides);
    otherwise this wrapper zero-pads K of A and B to a multiple of 128 (one extra read and write of A
    and of B) and N of B to a multiple of 8 (one extra read and write of B, and of D to slice the
    padding off). K % 16 == 0 is never copied; where K % 128 != 0 (rows that are not whole 128-byte
    lines) the kernel pairs CTAs that share A's loads instead. Empty results (M = 0 or
    N = 0) launch nothing; K = 0 gives zeros. On a CPU the same jitted program runs a reference
    (exact fp8 products, fp32 accumulation). The SM count used is :func:`get_num_sms` when this is
    traced.

    Raises:
      TypeError: a or b not fp8, a scale not float32, out_dtype not bfloat16/float32.
      ValueError: a rank other than 2, A and B with different K, a scale of another shape.
    """
    op = "gemm"
    m, k = _check_array(op, "a", a, FP8_TYPES, "M, K")
    n, b_k = _check_array(op, "b", b, FP8_TYPES, "N, K")
    _check_equal(op, "K (last dimension)", ("a", k), ("b", b_k))
    _check_scale(op, "scale_a", scale_a, {(): "per tensor", (m,): "[M], per row of a"})
    _check_scale(op, "scale_b", scale_b, {(): "per tensor", (n,): "[N], per row of b"})
    out = _check_out_dtype(op, out_dtype)
    return _gemm(a, b, scale_a, scale_b, None, operands=_operands(a, b, out, scale_a, scale_b), **_context())


def wgrad_gemm(
    a: jax.Array,
    b: jax.Array,
    c: jax.Array | None = None,
    *,
    scale_a: jax.Array | None = None,
    scale_b: jax.Array | None = None,
) -> jax.Array:
    """Weight-gradient GEMM: float32 ``c + A . B^T`` (fp32 accumulation, promotion as in :func:`gemm`).

    Args:
      a: float8_e4m3fn or float8_e5m2 ``[M, K]``, row-major (K contiguous).
      b: float8_e4m3fn or float8_e5m2 ``[N, K]``, row-major (K contiguous).
      c: optional float32 ``[M, N]`` to add to (None: zeros). The kernel adds into the output buffer,
        which the custom call aliases with c: inside a ``jax.jit`` that donates c (``donate_argnums``)
        the sum is formed in c's memory with no copy; otherwise XLA copies c into the output first.
      scale_a, scale_b: optional float32 scales as in :func:`gemm` (``()`` or ``[M]``; ``()`` or
        ``[N]``), applied to the product before c is added.

    Returns:
      float32 ``[M, N]``: ``c + (A . B^T) * scale_a[:, None] * scale_b[None, :]``. K = 0 gives c (or
      zeros). Padding of K and N works, and costs, as in :func:`gemm` (with N padding, c is padded and
      the result sliced: the in-place property needs N % 8 == 0).

    Raises:
      TypeError: a or b not fp8, c or a scale not float32.
      ValueError: wrong ranks, A and B with different K, c not of shape ``[M, N]``, a scale of another
        shape.
    """
    op = "wgrad_gemm"
    m, k = _check_array(op, "a", a, FP8_TYPES, "M, K")
    n, b_k = _check_array(op, "b", b, FP8_TYPES, "N, K")
    _check_equal(op, "K (last dimension)", ("a", k), ("b", b_k))
    _check_c(op, c, (m, n), "M, N")
    _check_scale(op, "scale_a", scale_a, {(): "per tensor", (m,): "[M], per row of a"})
    _check_scale(op, "scale_b", scale_b, {(): "per tensor", (n,): "[N], per row of b"})
    operands = _operands(a, b, "float32", scale_a, scale_b, accumulate=c is not None)
    return _gemm(a, b, scale_a, scale_b, c, operands=operands, **_context())


def grouped_gemm_contiguous(
    a: jax.Array,
    b: jax.Array,
    m_indices: jax.Array,
    *,
    scale_a: jax.Array | None = None,
    scale_b: jax.Array | None = None,
    out_dtype: Any = jnp.bfloat16,
) -> jax.Array:
    """M-grouped FP8 GEMM, contiguous layout (MoE training and prefill).

    Row i of the output is ``A[i] . B[m_indices[i]]^T`` (fp32 accumulation, scaled, rounded once).

    Args:
      a: float8_e4m3fn or float8_e5m2 ``[M, K]``, row-major: the tokens of all experts concatenated.
        Each expert's rows are contiguous and start at a multiple of
        :func:`get_m_alignment_for_contiguous_layout` (128); pad between experts with rows whose index
        is -1. M itself need not be a multiple of 128.
      b: float8_e4m3fn or float8_e5m2 ``[G, N, K]``, row-major (K contiguous): one ``[N, K]`` weight per
        expert.
      m_indices: int32 ``[M]`` on the device: the expert of each row; -1 marks a padding row.
        Indices outside ``[-1, G)`` are treated as -1 (b is never read out of bounds).
      scale_a: optional float32, ``()`` or ``[M]`` (per row of a).
      scale_b: optional float32, ``()``, ``[G]`` (per expert) or ``[G, N]`` (per expert and row of b).
      out_dtype: bfloat16 (default) or float32.

    Returns:
      ``out_dtype`` ``[M, N]``; padding rows (index -1 or out of range) are exactly zero. A layout that
      breaks the alignment rule never reads out of bounds: each 128-row block takes its expert from
      its first row, and rows with another index come out as zeros. Scales multiply as in
      :func:`gemm`, with row i's expert's scale_b.

    Padding of K (to a multiple of 128 where K % 16 != 0) and of N to a multiple of 8 works, and costs,
    as in :func:`gemm`. M = 0 or N = 0 launch nothing; K = 0 or G = 0 give zeros.

    Raises:
      TypeError: a or b not fp8, m_indices not int32, a scale not float32, a wrong out_dtype.
      ValueError: wrong ranks, a and b with different K, m_indices not of shape ``[M]``, a scale of
        another shape.
    """
    op = "grouped_gemm_contiguous"
    m, k = _check_array(op, "a", a, FP8_TYPES, "M, K")
    g, n, b_k = _check_array(op, "b", b, FP8_TYPES, "G, N, K")
    (i_m,) = _check_array(op, "m_indices", m_indices, INT32, "M")
    _check_equal(op, "K (last dimension)", ("a", k), ("b", b_k))
    _check_equal(op, "M (rows)", ("a", m), ("m_indices", i_m))
    _check_scale(op, "scale_a", scale_a, {(): "per tensor", (m,): "[M], per row of a"})
    _check_scale(op, "scale_b", scale_b, {(): "per tensor", (g,): "[G], per expert", (g, n): "[G, N]"})
    out = _check_out_dtype(op, out_dtype)
    operands = _operands(a, b, out, scale_a, scale_b)
    return _contiguous(a, b, m_indices, scale_a, scale_b, operands=operands, **_context())


def grouped_gemm_masked(
    a: jax.Array,
    b: jax.Array,
    masked_m: jax.Array,
    expected_m: int,
    *,
    scale_a: jax.Array | None = None,
    scale_b: jax.Array | None = None,
    out_dtype: Any = jnp.bfloat16,
) -> jax.Array:
    """M-grouped FP8 GEMM, masked layout (MoE decode, CUDA-graph friendly).

    For each group g, rows ``r < clamp(masked_m[g], 0, Mmax)`` of the output are ``A[g, r] .
    B[g]^T`` (fp32 accumulation, scaled, rounded once).

    Args:
      a: float8_e4m3fn or float8_e5m2 ``[G, Mmax, K]``, row-major (K contiguous).
      b: float8_e4m3fn or float8_e5m2 ``[G, N, K]``, row-major (K contiguous).
      masked_m: int32 ``[G]`` on the device: valid rows per group. Only the device reads it (no host
        sync), so one compiled function serves every value. Values above Mmax are clamped, negative
        ones count as 0.
      expected_m: static positive int: the expected rows per group, a hint for the kernel
        configuration.
      scale_a: optional float32, ``()`` or ``[G, Mmax]`` (per row of each group's a).
      scale_b: optional float32, ``()``, ``[G]`` (per group) or ``[G, N]``.
      out_dtype: bfloat16 (default) or float32.

    Returns:
      ``out_dtype`` ``[G, Mmax, N]``. Rows at or past ``masked_m[g]`` are unspecified on the GPU (the
      kernel does not write them); the CPU reference returns zeros there.

    Padding of K (to a multiple of 128 where K % 16 != 0) and of N to a multiple of 8 works, and costs,
    as in :func:`gemm`. G = 0, Mmax = 0 or N = 0 launch nothing; K = 0 gives zeros.

    Raises:
      TypeError: a or b not fp8, masked_m not int32, expected_m not a static int, a scale not float32.
      ValueError: wrong ranks, G or K mismatches, masked_m not of shape ``[G]``, expected_m <= 0, a scale
        of another shape.
    """
    op = "grouped_gemm_masked"
    g, m_max, k = _check_array(op, "a", a, FP8_TYPES, "G, Mmax, K")
    b_g, n, b_k = _check_array(op, "b", b, FP8_TYPES, "G, N, K")
    (mask_g,) = _check_array(op, "masked_m", masked_m, INT32, "G")
    _check_equal(op, "G (groups)", ("a", g), ("b", b_g))
    _check_equal(op, "K (last dimension)", ("a", k), ("b", b_k))
    _check_equal(op, "G (groups)", ("a", g), ("masked_m", mask_g))
    expected = _check_expected_m(op, expected_m)
    _check_scale(op, "scale_a", scale_a, {(): "per tensor", (g, m_max): "[G, Mmax], per row of a"})
    _check_scale(op, "scale_b", scale_b, {(): "per tensor", (g,): "[G], per group", (g, n): "[G, N]"})
    out = _check_out_dtype(op, out_dtype)
    operands = _operands(a, b, out, scale_a, scale_b)
    return _masked(a, b, masked_m, scale_a, scale_b, expected_m=expected, operands=operands, **_context())


def grouped_gemm_ragged(
    a: jax.Array,
    b: jax.Array,
    group_sizes: jax.Array,
    *,
    scale_a: jax.Array | None = None,
    scale_b: jax.Array | None = None,
    out_dtype: Any = jnp.bfloat16,
) -> jax.Array:
    """M-grouped FP8 GEMM on unpadded groups (MoE prefill and training): tokens sorted by expert, any sizes.

    Group g owns rows ``[offset_g, offset_g + group_sizes[g])`` of a and of the output, with ``offset`` the
    exclusive cumulative sum of the sizes; each of its rows is ``A[i] . B[g]^T`` (fp32 accumulation, scaled,
    rounded once). No padding and no per-row index array: the kernel schedules each group's row tiles from
    the device-side sizes, starting at any row.

    Args:
      a: float8_e4m3fn or float8_e5m2 ``[M, K]``, row-major: the tokens of all groups, group after group.
      b: float8_e4m3fn or float8_e5m2 ``[G, N, K]``, row-major (K contiguous): one ``[N, K]`` weight per group.
      group_sizes: int32 ``[G]`` on the device: rows per group. Only the kernel reads it (no host sync; one
        compiled function and one captured CUDA graph serve every value). Negative sizes count as 0; a running
        total past M is clamped to M (later groups get no rows).
      scale_a: optional float32, ``()`` or ``[M]`` (per row of a).
      scale_b: optional float32, ``()``, ``[G]`` (per group) or ``[G, N]``.
      out_dtype: bfloat16 (default) or float32.

    Returns:
      ``out_dtype`` ``[M, N]``; rows past the total of the sizes are exactly zero. A group's last row tile,
      when the next group begins inside it, is stored row by row so that no group's rows are overwritten.

    Padding of K (to a multiple of 128 where K % 16 != 0) and of N to a multiple of 8 works, and costs,
    as in :func:`gemm`.
    M = 0 or N = 0 launch nothing; K = 0 or G = 0 give zeros.

    Raises:
      TypeError: a or b not fp8, group_sizes not int32, a scale not float32, a wrong out_dtype.
      ValueError: wrong ranks, a and b with different K, group_sizes not of shape ``[G]``, a scale of another
        shape.
    """
    op = "grouped_gemm_ragged"
    m, k = _check_array(op, "a", a, FP8_TYPES, "M, K")
    g, n, b_k = _check_array(op, "b", b, FP8_TYPES, "G, N, K")
    (s_g,) = _check_array(op, "group_sizes", group_sizes, INT32, "G")
    _check_equal(op, "K (last dimension)", ("a", k), ("b", b_k))
    _check_equal(op, "G (groups)", ("b", g), ("group_sizes", s_g))
    _check_scale(op, "scale_a", scale_a, {(): "per tensor", (m,): "[M], per row of a"})
    _check_scale(op, "scale_b", scale_b, {(): "per tensor", (g,): "[G], per group", (g, n): "[G, N]"})
    out = _check_out_dtype(op, out_dtype)
    operands = _operands(a, b, out, scale_a, scale_b)
    return _ragged(a, b, group_sizes, scale_a, scale_b, operands=operands, **_context())


def ragged_dot(
    lhs: jax.Array,
    rhs: jax.Array,
    group_sizes: jax.Array,
    precision: Any = None,
    preferred_element_type: Any = None,
    group_offset: jax.Array | None = None,
) -> jax.Array:
    """``jax.lax.ragged_dot`` for FP8 operands on Hopper: ``lhs [M, K]``, ``rhs [G, K, N]``, ``group_sizes [G]``
    → ``[M, N]``, row block g of lhs times ``rhs[g]``; rows past the sizes' total are zero.

    The fp8 tensor cores read K-major operands, so ``rhs`` is transposed to ``[G, N, K]`` here (one extra pass
    over the weights, fused by XLA with whatever produced them); weights stored ``[G, N, K]`` should go to
    :func:`grouped_gemm_ragged` directly. ``precision`` is accepted and has no effect: the kernel always
    accumulates in fp32, promoting the tensor cores' partial sums every 128 of K. ``preferred_element_type``:
    None (bfloat16: an fp8 result would lose the accumulation) or bfloat16 / float32. Integer group_sizes of
    another width are converted to int32. ``group_offset`` (only the local groups, as after
    ``ragged_all_to_all``) is not supported: pass the local groups' weights and sizes instead.

    Raises:
      TypeError: operands that are not fp8 (use jax.lax.ragged_dot), a preferred_element_type other than
        None, bfloat16 or float32, non-integer group_sizes.
      NotImplementedError: a group_offset.
      ValueError: shapes as in :func:`grouped_gemm_ragged` (rhs as ``[G, K, N]``).
    """
    op = "ragged_dot"
    for name, x in (("lhs", lhs), ("rhs", rhs)):
        if not hasattr(x, "dtype") or np.dtype(x.dtype) not in FP8_TYPES:
            got = np.dtype(x.dtype).name if hasattr(x, "dtype") else type(x).__name__
            raise TypeError(
                f"jax_dgpt.{op}: {name} must be float8_e4m3fn or float8_e5m2, got {got}; for other dtypes use "
                "jax.lax.ragged_dot"
            )
    if group_offset is not None:
        raise NotImplementedError(
            f"jax_dgpt.{op}: group_offset is not supported; pass the local groups' rhs and group_sizes instead"
        )
    if not hasattr(group_sizes, "dtype") or not jnp.issubdtype(group_sizes.dtype, jnp.integer):
        raise TypeError(
            f"jax_dgpt.{op}: group_sizes must be an integer array, got {getattr(group_sizes, 'dtype', group_sizes)}"
        )
    out_dtype = _check_out_dtype(op, BF16 if preferred_element_type is None else preferred_element_type)
    _check_array(op, "rhs", rhs, FP8_TYPES, "G, K, N")
    return grouped_gemm_ragged(lhs, jnp.swapaxes(rhs, 1, 2), group_sizes.astype(jnp.int32), out_dtype=out_dtype)


def k_grouped_wgrad_gemm(
    a: jax.Array,
    b: jax.Array,
    group_sizes: jax.Array,
    c: jax.Array | None = None,
    *,
    scale_a: jax.Array | None = None,
    scale_b: jax.Array | None = None,
    out_dtype: Any = jnp.float32,
) -> jax.Array:
    """K-grouped weight-gradient GEMM (the MoE weight gradient): one float32 product per group, each over
    its own stretch of K.

    ``out[g] = c[g] + A[:, K_g] . B[:, K_g]^T`` with ``K_g`` the columns ``[offset_g, offset_g +
    group_sizes[g])`` and ``offset`` the exclusive cumulative sum of the sizes: with A the transposed
    token-sorted activations and B the transposed output gradients, ``out[g]`` is expert g's weight
    gradient.

    Args:
      a: float8_e4m3fn or float8_e5m2 ``[M, T]``, row-major (T contiguous).
      b: float8_e4m3fn or float8_e5m2 ``[N, T]``, row-major (T contiguous).
      group_sizes: int32 ``[G]`` on the device: columns per group. Only the kernel reads it (no host
        sync; one compiled function and one launch serve every value, CUDA-graph safe). Negative sizes
        count as 0; a running total past T is clamped to T (later groups are empty); columns past the
        total are ignored. An empty group gives ``c[g]`` (or zeros).
      c: optional float32 ``[G, M, N]`` to add to; aliased with the output as in :func:`wgrad_gemm`.
      scale_a: optional float32, ``()``, ``[M]`` (per row of a) or ``[G, M]`` (per group and row).
      scale_b: optional float32, ``()``, ``[N]`` or ``[G, N]``.
      out_dtype: float32 (default) or, without c, bfloat16: the float32 result rounded once in the kernel
        (a bf16 weight's gradient without a float32 copy to convert).

    Returns:
      ``[G, M, N]`` in out_dtype: ``c[g] + (A_g . B_g^T) * scale_a[g, :, None] * scale_b[g, None, :]``.

    T % 16 != 0 is zero-padded to a multiple of 128 (as K in :func:`gemm`); N % 8 != 0 as in :func:`wgrad_gemm`. G = 0,
    M = 0 or N = 0 launch nothing; T = 0 gives c (or zeros).

    Raises:
      TypeError: a or b not fp8, group_sizes not int32, c or a scale not float32, out_dtype not float32
        or bfloat16.
      ValueError: wrong ranks, a and b with different T, c not of shape ``[G, M, N]``, a scale of
        another shape, c with out_dtype bfloat16.
    """
    op = "k_grouped_wgrad_gemm"
    m, t = _check_array(op, "a", a, FP8_TYPES, "M, T")
    n, b_t = _check_array(op, "b", b, FP8_TYPES, "N, T")
    (g,) = _check_array(op, "group_sizes", group_sizes, INT32, "G")
    _check_equal(op, "T (last dimension)", ("a", t), ("b", b_t))
    _check_c(op, c, (g, m, n), "G, M, N")
    _check_scale(op, "scale_a", scale_a, {(): "per tensor", (m,): "[M], per row of a", (g, m): "[G, M]"})
    _check_scale(op, "scale_b", scale_b, {(): "per tensor", (n,): "[N], per row of b", (g, n): "[G, N]"})
    out = _check_out_dtype(op, out_dtype)
    if c is not None and out != "float32":
        raise ValueError(
            f"jax_dgpt.{op}: out_dtype must be float32 when c is given (the kernel adds into c), got {out}"
        )
    operands = _operands(a, b, out, scale_a, scale_b, accumulate=c is not None)
    return _k_grouped(a, b, group_sizes, scale_a, scale_b, c, operands=operands, **_context())


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


def wgrad_gemm_per_tensor_fp8_fp8_fp32_nt(lhs: jax.Array, rhs: jax.Array, out: jax.Array) -> jax.Array:
    """Alias of :func:`wgrad_gemm` under the reference library's name: returns ``out + lhs . rhs^T``."""
    return wgrad_gemm(lhs, rhs, out)


def k_grouped_wgrad_gemm_per_tensor_fp8_fp8_fp32_nt(
    lhs_flat: jax.Array, rhs_flat: jax.Array, out: jax.Array, k_sizes: Sequence[int]
) -> jax.Array:
    """The reference library's k-grouped weight gradient: returns ``out[g] + lhs_g . rhs_g^T``.

    Args:
      lhs_flat: fp8 ``[sum(M * k for k in k_sizes)]``: group g's ``[M, k_g]`` row-major, one after another.
      rhs_flat: fp8 ``[sum(N * k for k in k_sizes)]``: group g's ``[N, k_g]``, the same way.
      out: float32 ``[G, M, N]``.
      k_sizes: static sequence of G non-negative ints.

    The flat per-group layout is regrouped into ``[M, T]`` and ``[N, T]`` (one copy of each operand,
    fused by XLA) and handed to :func:`k_grouped_wgrad_gemm`, one launch for all groups. Data already
    laid out ``[M, T]`` should go to :func:`k_grouped_wgrad_gemm` directly.
    """
    op = "k_grouped_wgrad_gemm_per_tensor_fp8_fp8_fp32_nt"
    (flat_a,) = _check_array(op, "lhs_flat", lhs_flat, FP8_TYPES, "M * T")
    (flat_b,) = _check_array(op, "rhs_flat", rhs_flat, FP8_TYPES, "N * T")
    g, m, n = _check_array(op, "out", out, F32, "G, M, N")
    if isinstance(k_sizes, jax.Array) or not isinstance(k_sizes, Sequence):
        raise TypeError(
            f"jax_dgpt.{op}: k_sizes must be a static sequence of ints (use k_grouped_wgrad_gemm "
            "with group_sizes on the device for traced sizes)"
        )
    sizes = [static_int(f"jax_dgpt.{op}", "k_sizes[i]", k) for k in k_sizes]
    if len(sizes) != g or min(sizes, default=0) < 0:
        raise ValueError(f"jax_dgpt.{op}: k_sizes must hold G = {g} non-negative ints, got {list(k_sizes)}")
    total = sum(sizes)
    if flat_a != m * total or flat_b != n * total:
        raise ValueError(
            f"jax_dgpt.{op}: lhs_flat and rhs_flat must hold M * sum(k_sizes) = {m * total} and "
            f"N * sum(k_sizes) = {n * total} elements, got {flat_a} and {flat_b}"
        )

    def regroup(flat: jax.Array, rows: int) -> jax.Array:
        starts = np.concatenate([[0], np.cumsum([rows * k for k in sizes])]).astype(int)
        pieces = [flat[starts[i] : starts[i + 1]].reshape(rows, k) for i, k in enumerate(sizes)]
        return jnp.concatenate(pieces, axis=1) if pieces else flat.reshape(rows, 0)

    group_sizes = jnp.asarray(sizes, jnp.int32)
    return k_grouped_wgrad_gemm(regroup(lhs_flat, m), regroup(rhs_flat, n), group_sizes, out)
