"""``fp8_matmul``: a differentiable ``x . w^T`` whose three GEMMs (forward, dgrad, wgrad) run in FP8.

Forward ``y = x . w^T`` (x ``[M, K]``, w ``[N, K]``); backward ``dx = dy . w`` and ``dw = dy^T . x``. The fp8
kernels read both operands K-major (the contraction dimension contiguous), so each backward GEMM gets
transposed fp8 copies: ``dx = gemm(dy [M, N], w^T [K, N])`` and ``dw = gemm(dy^T [N, M], x^T [K, M])``.

NOTES: a scale can be factored out of a product only along a dimension that is not contracted. Row-wise scales
of w (one per output channel n) are along the forward's free dimension but along dgrad's contraction, so dgrad
quantizes w again with one scale per k (per row of w^T); wgrad likewise quantizes dy per n and x per k, each
over the M tokens it contracts. Per-tensor scales are one number: the forward's fp8 copies are transposed and
reused as they are.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from .. import ops
from ..quantize import quantize_rows
from ._checks import check_float, check_rank, check_recipe, check_same
from .recipes import E4M3, ROWWISE, Fp8Recipe, quantize, transposed

__all__ = ["fp8_matmul", "plain_matmul"]


def _gemm_out_dtype(dtype: np.dtype) -> np.dtype:
    # The kernel rounds once, to bf16 or f32: ask for the caller's dtype directly.
    return np.dtype(jnp.bfloat16) if dtype == np.dtype(jnp.bfloat16) else np.dtype(jnp.float32)


def fp8_matmul(x: jax.Array, w: jax.Array, *, recipe: Fp8Recipe = ROWWISE) -> jax.Array:
    """Differentiable FP8 ``x . w^T``: forward, dgrad and wgrad as FP8 GEMMs with fused float32 scales.

    Args:
      x: bfloat16 or float32 ``[..., K]`` (leading dims flattened into the GEMM's M rows), row-major.
      w: bfloat16 or float32 ``[N, K]`` ("out, in": K contiguous, the GEMM's B operand as stored).
      recipe: static :class:`jax_dgpt.Fp8Recipe` (default row-wise scaling, e5m2 output gradients).

    Returns:
      ``[..., N]`` in x's dtype: ``Q(x) . Q(w)^T`` accumulated in fp32, scaled in fp32 and rounded once to
      x's dtype by :func:`jax_dgpt.gemm`. ``Q`` quantizes to float8_e4m3fn with current scaling: per row of x
      (per token) and per row of w (per output channel) for the row-wise recipe, one scale each for the
      per-tensor one.

    Gradients (``jax.grad``, ``jax.vjp``; forward-mode ``jax.jvp`` is not defined) follow the straight-through
    rule: the gradient of the unquantized product ``x . w^T`` evaluated on quantized operands, the operands of
    each backward GEMM quantized from the saved high-precision x and w in that GEMM's own layout:

      ``dx = Qg_rows(dy) . Q_cols(w)`` (:func:`jax_dgpt.gemm` on w^T; float32 accumulation, x's dtype out),
      ``dw = Qg_cols(dy)^T . Q_cols(x)`` (:func:`jax_dgpt.gemm` on dy^T and x^T, rounded once to w's dtype),

    where ``Qg`` quantizes to ``recipe.grad_dtype`` and ``_rows``/``_cols`` say which scales (per row of the
    tensor as given, or per column, i.e. per row of its transpose). With per-tensor scaling every tensor is
    quantized once and the backward reuses the forward's fp8 copies of x and w (transposed), so both gradients
    are the exact gradients of ``Q(x) . Q(w)^T`` with respect to the quantized values, with ``dy`` quantized.

    Residuals kept for the backward: x and w as given (row-wise), or their fp8 copies and scales (per tensor).
    Any M >= 0 works (M = 0 gives an empty result and a zero dw, K = 0 zeros); K and N as :func:`jax_dgpt.gemm`
    pads them.

    Raises:
      TypeError: x or w not bfloat16/float32 (fp8 operands go to :func:`jax_dgpt.gemm`), a recipe that is not
        an Fp8Recipe.
      ValueError: w not 2-D, x of rank 0, x's last dim not w's K.
    """
    op = "fp8_matmul"
    x_dtype, w_dtype = check_float(op, "x", x), check_float(op, "w", w)
    x_shape = check_rank(op, "x", x, "K", at_least=True)
    n, k = check_rank(op, "w", w, "N, K")
    check_same(op, "K (last dimension)", ("x", x_shape[-1]), ("w", k))
    recipe = check_recipe(op, recipe)
    # NOTES: M spelled out, not -1: a reshape of an empty x (K = 0) to (-1, 0) is undefined.
    y = _matmul_vjp(recipe, x_dtype, w_dtype)(x.reshape(math.prod(x_shape[:-1]), k), w)
    return y.reshape(x_shape[:-1] + (n,))


def plain_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """The same contraction without FP8: ``x . w^T`` (x ``[..., K]``, w ``[N, K]``) as one XLA dot in x's
    dtype (w cast to it) with float32 accumulation, rounded to x's dtype; differentiable by JAX's own rules.
    The high-precision reference of :func:`fp8_matmul` (the bf16 baseline of the training example)."""
    y = jnp.einsum("...k,nk->...n", x, w.astype(x.dtype), preferred_element_type=jnp.float32)
    return y.astype(x.dtype)


# --- the custom_vjp, one per (recipe, dtypes): the cotangents must come back in the primals' dtypes -------
@functools.cache
def _matmul_vjp(recipe: Fp8Recipe, x_dtype: np.dtype, w_dtype: np.dtype):
    out_dtype = _gemm_out_dtype(x_dtype)

    @jax.custom_vjp
    def matmul(x, w):
        return _forward(x, w)[0]

    def _forward(x, w):
        (xq, sx), (wq, sw), residuals = quantize_forward(recipe, x, w)
        y = ops.gemm(xq, wq, scale_a=sx, scale_b=sw, out_dtype=out_dtype).astype(x_dtype)
        return y, residuals

    def backward(residuals, dy):
        dx_a, dx_b, dw_a, dw_b = _backward_operands(recipe, residuals, dy)
        dx = ops.gemm(dx_a[0], dx_b[0], scale_a=dx_a[1], scale_b=dx_b[1], out_dtype=out_dtype)
        # NOTES: dw straight in w's dtype: wgrad_gemm's float32 [N, K] and its conversion to bf16 took 76 us of
        # a 557 us step at M=1024, N=K=7168 (benchmarks.breakdown, run 0e51a82). Nothing is accumulated.
        dw = ops.gemm(dw_a[0], dw_b[0], scale_a=dw_a[1], scale_b=dw_b[1], out_dtype=_gemm_out_dtype(w_dtype))
        return dx.astype(x_dtype), dw.astype(w_dtype)

    matmul.defvjp(_forward, backward)
    return matmul


def quantize_forward(recipe: Fp8Recipe, x, w):
    """The forward GEMM's (fp8, scale) pairs of x and w, and the residuals the backward needs: row-wise, x
    and w with their column amaxes (from the same read: the transposed copies' scales); per tensor, the fp8
    copies and scales. Shared with the tests and the benchmark."""
    if recipe.rowwise:
        xq, sx, x_amax = quantize_rows(x, E4M3, column_amax=True)  # [M] per token; [K] for x^T
        wq, sw, w_amax = quantize_rows(w, E4M3, column_amax=True)  # [N] per output channel; [K] for w^T
        return (xq, sx), (wq, sw), (x, w, x_amax, w_amax)
    xq, sx = quantize(x, E4M3, None)
    wq, sw = quantize(w, E4M3, None)
    return (xq, sx), (wq, sw), (xq, sx, wq, sw)


def _backward_operands(recipe: Fp8Recipe, residuals, dy):
    """The backward GEMMs' (fp8 operand, scale) pairs, K-major: dgrad's ``dy [M, N]`` and ``w^T [K, N]``,
    wgrad's ``dy^T [N, M]`` and ``x^T [K, M]``. Shared with the tests, which rebuild the float64 gradients
    from exactly these values."""
    grad = recipe.grad_dtype
    if recipe.rowwise:
        x, w, x_amax, w_amax = residuals
        dyq, s_dy, dy_amax = quantize_rows(dy, grad, column_amax=True)  # per token: dgrad's free dimension
        # The transposed copies: w^T per k, dy^T per n and x^T per k, each over what its GEMM contracts.
        return (dyq, s_dy), transposed(w, w_amax, E4M3), transposed(dy, dy_amax, grad), transposed(x, x_amax, E4M3)
    xq, sx, wq, sw = residuals
    dyq, sdy = quantize(dy, grad, None)
    return (dyq, sdy), (wq.T, sw), (dyq.T, sdy), (xq.T, sx)
