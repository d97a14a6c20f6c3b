"""``fp8_ragged_dot``: a differentiable MoE expert GEMM (tokens sorted by expert) in FP8, forward and backward.

Forward ``y[i] = x[i] . w[g]^T`` for the rows i of group g (x ``[M, K]``, w ``[G, N, K]``); backward
``dx[i] = dy[i] . w[g]`` (the ragged kernel on per-expert transposed weights ``[G, K, N]``) and ``dw[g] =
dy_g^T . x_g`` over group g's rows (the k-grouped weight-gradient kernel on ``dy^T [N, M]`` and ``x^T [K, M]``,
the group sizes read on the device: one compiled program, one CUDA graph for every routing).

NOTES: as in :mod:`.matmul`, each backward GEMM quantizes with scales along its own free dimensions: dgrad
gives each expert's ``w^T`` one scale per (expert, k); wgrad gives ``dy^T`` and ``x^T`` one scale per row (per n,
per k) over the tokens of all groups, a plain column reduction, or with ``recipe.segment_scales`` one per
(expert, row) over that expert's tokens only (a segment-wise amax). Rows past the sizes' total never enter a
scale: they may hold anything (NaN included) and their gradient is zero anyway.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .. import ops
from ..quantize import quantize_rows
from ..reference import ragged_bounds
from ._checks import check_float, check_rank, check_recipe, check_same
from .matmul import _gemm_out_dtype
from .recipes import E4M3, ROWWISE, Fp8Recipe, quantize, quantize_segments, transposed

__all__ = ["fp8_ragged_dot", "plain_ragged_dot"]


def fp8_ragged_dot(x: jax.Array, w: jax.Array, group_sizes: jax.Array, *, recipe: Fp8Recipe = ROWWISE) -> jax.Array:
    """Differentiable FP8 grouped GEMM on unpadded groups: row block g of x times ``w[g]^T``.

    Args:
      x: bfloat16 or float32 ``[M, K]``, the tokens of all groups, group after group (K contiguous).
      w: bfloat16 or float32 ``[G, N, K]``: one ``[N, K]`` ("out, in") weight per group (expert).
      group_sizes: integer ``[G]`` on the device (converted to int32), no gradient: group g owns rows
        ``[offset_g, offset_g + group_sizes[g])``, offset the exclusive cumulative sum. Negative sizes count
        as 0 and a running total past M is clamped to M, as in :func:`jax_dgpt.grouped_gemm_ragged`.
      recipe: static :class:`jax_dgpt.Fp8Recipe` (default row-wise, e5m2 output gradients).

    Returns:
      ``[M, N]`` in x's dtype: ``Q(x_i) . Q(w_g)^T`` by :func:`jax_dgpt.grouped_gemm_ragged` (fp32 accumulation,
      scales fused, one rounding). Row-wise: one scale per row of x and per (expert, output channel) of w;
      per tensor: one for x (over the rows inside the groups) and one per expert of w. Rows past the sizes'
      total are exactly zero, and so is their gradient ``dx``; they take no part in any scale.

    Gradients (straight-through, as in :func:`jax_dgpt.fp8_matmul`: the unquantized grouped product's gradient
    on operands quantized in each GEMM's own layout):

      ``dx[i] = Qg_rows(dy)[i] . Q(w_g^T)`` with one scale per (expert, k) of the transposed weights;
      ``dw[g] = Qg_cols(dy)_g^T . Q_cols(x)_g`` (:func:`jax_dgpt.k_grouped_wgrad_gemm`, rounded once to w's
      dtype in the kernel), scales per n and per k from the amax over the rows of all groups (``recipe.segment_scales``:
      per (expert, n) and (expert, k) from the amax over expert g's rows only).

    With per-tensor scaling the backward reuses the forward's fp8 copies (transposed) and quantizes dy once.
    An expert with no rows gets ``dw[g] = 0``; group_sizes gets a ``float0`` cotangent.

    Raises:
      TypeError: x or w not bfloat16/float32, group_sizes not integer, a recipe that is not an Fp8Recipe.
      ValueError: x not 2-D, w not 3-D, group_sizes not 1-D, K or G mismatches.
    """
    op = "fp8_ragged_dot"
    x_dtype, w_dtype = check_float(op, "x", x), check_float(op, "w", w)
    _, k = check_rank(op, "x", x, "M, K")
    g, _, w_k = check_rank(op, "w", w, "G, N, K")
    if not hasattr(group_sizes, "dtype") or not jnp.issubdtype(group_sizes.dtype, jnp.integer):
        got = getattr(group_sizes, "dtype", type(group_sizes).__name__)
        raise TypeError(f"jax_dgpt.{op}: group_sizes must be an integer array, got {got}")
    (s_g,) = check_rank(op, "group_sizes", group_sizes, "G")
    check_same(op, "K (last dimension)", ("x", k), ("w", w_k))
    check_same(op, "G (groups)", ("w", g), ("group_sizes", s_g))
    recipe = check_recipe(op, recipe)
    return _ragged_vjp(recipe, x_dtype, w_dtype)(x, w, group_sizes.astype(jnp.int32))


def plain_ragged_dot(x: jax.Array, w: jax.Array, group_sizes: jax.Array) -> jax.Array:
    """The same grouped product without FP8: ``jax.lax.ragged_dot`` in x's dtype (w ``[G, N, K]`` cast to it
    and viewed as ``[G, K, N]``), float32 accumulation, rounded to x's dtype; differentiable by JAX's rules. The
    high-precision reference of :func:`fp8_ragged_dot` (the bf16 baseline of the training example), with the
    same group rule: negative sizes count as 0 and a running total past M is clamped to M."""
    # NOTES: jax.lax.ragged_dot takes the raw cumulative sum (a negative size moves the next groups' rows).
    starts, ends = ragged_bounds(group_sizes.astype(jnp.int32), x.shape[0])
    rhs = jnp.swapaxes(w.astype(x.dtype), 1, 2)
    y = jax.lax.ragged_dot(x, rhs, ends - starts, preferred_element_type=jnp.float32)
    return y.astype(x.dtype)


def segment_ids(group_sizes: jax.Array, rows: int) -> jax.Array:
    """int32 ``[rows]``: the group of each row (the ragged rule of :func:`jax_dgpt.reference.ragged_bounds`);
    ``G`` for rows past the total."""
    _, ends = ragged_bounds(group_sizes, rows)
    return jnp.searchsorted(ends, jnp.arange(rows, dtype=jnp.int32), side="right").astype(jnp.int32)


def _total(group_sizes: jax.Array, rows: int) -> jax.Array:
    """int32 rows inside the groups (the clamped total of the sizes)."""
    _, ends = ragged_bounds(group_sizes, rows)
    return ends[-1] if ends.shape[0] else jnp.zeros((), jnp.int32)


def _inside(x: jax.Array, group_sizes: jax.Array) -> jax.Array:
    """x with the rows past the sizes' total set to zero (they take no part in a per-tensor amax)."""
    total = _total(group_sizes, x.shape[0])
    return jnp.where((jnp.arange(x.shape[0]) < total)[:, None], x, jnp.zeros((), x.dtype))


def quantize_forward(recipe: Fp8Recipe, x, w, group_sizes):
    """The forward GEMM's (fp8, scale) pairs of x and w and the backward's residuals. Row-wise: one scale
    per row of x and per (expert, output channel) of w, and from the same reads the column amaxes of x (over
    the rows inside the groups) and of each expert's w (the transposed copies' scales). Per tensor: x over
    the rows inside the groups, w per expert. Shared with the tests. (With ``segment_scales`` the backward
    takes x's scales per expert instead, so x's column amax is not computed.)"""
    if recipe.rowwise:
        if recipe.segment_scales and w.shape[0]:  # the backward's test, see _backward_operands
            (xq, sx), x_amax = quantize_rows(x, E4M3), None
        else:
            xq, sx, x_amax = quantize_rows(x, E4M3, column_amax=True, valid_rows=_total(group_sizes, x.shape[0]))
        wq, sw, w_amax = quantize_rows(w, E4M3, column_amax=True)  # [G, N]; [G, K] for w^T
        return (xq, sx), (wq, sw), (x, w, x_amax, w_amax, group_sizes)
    (xq, sx), (wq, sw) = quantize(_inside(x, group_sizes), E4M3, None), quantize(w, E4M3, (1, 2))  # (), [G]
    return (xq, sx), (wq, sw), (xq, sx, wq, sw, group_sizes)


@functools.cache
def _ragged_vjp(recipe: Fp8Recipe, x_dtype: np.dtype, w_dtype: np.dtype):
    out_dtype = _gemm_out_dtype(x_dtype)

    @jax.custom_vjp
    def ragged(x, w, group_sizes):
        return _forward(x, w, group_sizes)[0]

    def _forward(x, w, group_sizes):
        (xq, sx), (wq, sw), residuals = quantize_forward(recipe, x, w, group_sizes)
        y = ops.grouped_gemm_ragged(xq, wq, group_sizes, scale_a=sx, scale_b=sw, out_dtype=out_dtype)
        return y.astype(x_dtype), residuals

    def backward(residuals, dy):
        group_sizes = residuals[-1]
        dx_a, dx_b, dw_a, dw_b = _backward_operands(recipe, residuals, dy)
        dx = ops.grouped_gemm_ragged(
            dx_a[0], dx_b[0], group_sizes, scale_a=dx_a[1], scale_b=dx_b[1], out_dtype=out_dtype
        )
        dw = ops.k_grouped_wgrad_gemm(
            dw_a[0], dw_b[0], group_sizes, scale_a=dw_a[1], scale_b=dw_b[1], out_dtype=_gemm_out_dtype(w_dtype)
        )
        return dx.astype(x_dtype), dw.astype(w_dtype), np.zeros(group_sizes.shape, jax.dtypes.float0)

    ragged.defvjp(_forward, backward)
    return ragged


def _backward_operands(recipe: Fp8Recipe, residuals, dy):
    """The backward GEMMs' (fp8 operand, scale) pairs: dgrad's ``dy [M, N]`` and ``w^T [G, K, N]``, wgrad's
    ``dy^T [N, M]`` and ``x^T [K, M]``. Shared with the tests, which rebuild float64 gradients from them."""
    grad = recipe.grad_dtype
    if recipe.rowwise:
        x, w, x_amax, w_amax, group_sizes = residuals
        num_groups = w.shape[0]
        w_t = transposed(w, w_amax, E4M3)  # per (expert, k): [G, K, N], [G, K]
        if recipe.segment_scales and num_groups:
            ids = segment_ids(group_sizes, x.shape[0])
            dy_cols = quantize_segments(dy, ids, num_groups, grad)  # [M, N], [G, N]
            x_cols = quantize_segments(x, ids, num_groups, E4M3)  # [M, K], [G, K]
            return quantize(dy, grad, -1), w_t, (dy_cols[0].T, dy_cols[1]), (x_cols[0].T, x_cols[1])
        # One scale per column over the groups' rows ([N], [K]); rows past the total enter no amax, and the
        # k-grouped kernel never reads their columns of the transposed copies.
        total = _total(group_sizes, x.shape[0])
        dyq, s_dy, dy_amax = quantize_rows(dy, grad, column_amax=True, valid_rows=total)  # per token
        return (dyq, s_dy), w_t, transposed(dy, dy_amax, grad), transposed(x, x_amax, E4M3)
    xq, sx, wq, sw, group_sizes = residuals
    dyq, sdy = quantize(_inside(dy, group_sizes), grad, None)
    return (dyq, sdy), (jnp.swapaxes(wq, 1, 2), sw), (dyq.T, sdy), (xq.T, sx)
