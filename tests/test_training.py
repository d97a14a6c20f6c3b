"""CPU tests of the differentiable FP8 ops (jax_dgpt.fp8_matmul, jax_dgpt.fp8_ragged_dot) and their recipes.

The straight-through rule says: the gradient is the unquantized product's gradient evaluated on quantized
operands, each backward GEMM's operands quantized from the high-precision tensors in that GEMM's own layout
(docs/training.md). So every gradient is checked against a float64 product of operands built here
independently with ``jax_dgpt.training.quantize`` on the explicitly transposed tensors (per row of each
GEMM operand), and ``quantize`` itself against the scale formula and the fp8 rounding bound. Bounds
(calc_diff, docs/numerical_contract.md; the values measured on the CPU are in docs/training.md):

- bfloat16 outputs (y, dx of bf16 x): ``BF16_CALC_DIFF_BOUND`` = 3e-6, the contract's bf16 bound (one bf16 rounding);
- float32 outputs (y, dx of f32 x; dw before its cast): ``F32_BOUND`` = 1e-10 (fp32 accumulation of exact
  fp8 products and two fp32 scale multiplications: 1.2e-15 at most measured);
- bf16 dw (a float32 weight gradient rounded to bf16 once): ``BF16_CALC_DIFF_BOUND``.

Against the unquantized gradients themselves the error is the fp8 rounding of three operands (dy in e5m2:
3 significant bits): normalised error <= ``STE_TOLERANCE``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_dgpt
from jax_dgpt.testing import (
    BF16_CALC_DIFF_BOUND,
    calc_diff,
    hlo_entry_instructions,
    hlo_readers,
    k_grouped_offsets,
    normalised_error,
    record_diff,
    to_f64,
)
from jax_dgpt.training import PER_TENSOR, ROWWISE, Fp8Recipe, quantize, quantize_segments

F32_BOUND = 1e-10
STE_TOLERANCE = 0.1  # normalised error of the FP8 gradients against the unquantized ones (measured 0.05-0.07)
E4M3, E5M2 = jnp.float8_e4m3fn, jnp.float8_e5m2
RECIPES = {
    "rowwise": ROWWISE,
    "tensor": PER_TENSOR,
    "rowwise-e4m3-grads": Fp8Recipe(grad_dtype=E4M3),
    "rowwise-segment-scales": Fp8Recipe(segment_scales=True),  # only fp8_ragged_dot's wgrad differs
}
MATMUL_RECIPES = ["rowwise", "rowwise-e4m3-grads", "tensor"]


# --- generators and float64 references ----------------------------------------------------------------
def normal(shape, key, scale=1.0, dtype=jnp.float32, spread=False):
    """Random normal values; with ``spread`` rows (axis 0) scaled over 6 binades, so per-row scales matter."""
    x = np.random.default_rng(key).standard_normal(shape) * scale
    if spread:
        x = x * np.exp2(np.random.default_rng(key + 1000).uniform(-3, 3, (shape[0],) + (1,) * (len(shape) - 1)))
    return jnp.asarray(x.astype(np.float32)).astype(dtype)


def scaled(q, scale, axis=-1) -> np.ndarray:
    """float64 ``q * scale``, the scale broadcast over ``axis`` (the reduced one; None: a scalar)."""
    s = to_f64(scale)
    return to_f64(q) * (s if axis is None else np.expand_dims(s, axis))


def operand(x, dtype, recipe):
    """A GEMM operand ``[..., R, C]`` (C contracted) as the recipe quantizes it: (q, scale) per row or tensor."""
    return quantize(x, dtype, -1 if recipe.rowwise else None)


# NOTES: each reference builds every quantized operand in one jitted function (compilation is what the CPU
# tests spend their time on); the float64 products are numpy's.
@functools.partial(jax.jit, static_argnames="recipe")
def matmul_operands(x, w, dy, recipe):
    """(fwd x, fwd w, dgrad dy, dgrad w^T, wgrad dy^T, wgrad x^T) as (q, scale) pairs, each quantized on its
    own, per row of the operand as the GEMM reads it (row-wise) or per tensor."""
    g = recipe.grad_dtype
    return (
        operand(x, E4M3, recipe),
        operand(w, E4M3, recipe),
        operand(dy, g, recipe),
        operand(w.T, E4M3, recipe),  # w^T [K, N]: a scale per k
        operand(dy.T, g, recipe),  # dy^T [N, M]: a scale per n, over the tokens
        operand(x.T, E4M3, recipe),  # x^T [K, M]: a scale per k
    )


def matmul_f64(x, w, dy, recipe):
    """float64 (y, dx, dw) of ``fp8_matmul`` from independently quantized operands (x [M, K], w [N, K])."""
    axis = -1 if recipe.rowwise else None
    xq, wq, dyq, wtq, dytq, xtq = (scaled(q, s, axis) for q, s in matmul_operands(x, w, dy, recipe))
    return xq @ wq.T, dyq @ wtq.T, dytq @ xtq.T


def ragged_rows(group_sizes, m):
    starts, ends = k_grouped_offsets(np.asarray(group_sizes), m)
    return [(int(s), int(e)) for s, e in zip(starts, ends)], int(ends[-1]) if len(ends) else 0


@functools.partial(jax.jit, static_argnames=("recipe", "num_groups"))
def ragged_operands(x, w, dy, ids, recipe, num_groups):
    """Quantized operands of fp8_ragged_dot's three GEMMs: ``ids`` [M] is each row's group (G past the total).
    Row-wise: x and dy per row; w per (expert, n); w^T per (expert, k); dy^T and x^T per row over the rows
    inside the groups, or with segment_scales per (expert, row) over the expert's rows (``quantize_segments``,
    which test_quantize_segments checks against per-slice quantize). Per tensor: x and dy over the rows inside
    the groups, w per expert."""
    g = recipe.grad_dtype
    inside = (ids < num_groups)[:, None]
    if recipe.rowwise:
        if recipe.segment_scales:
            wgrad = quantize_segments(dy, ids, num_groups, g), quantize_segments(x, ids, num_groups, E4M3)
        else:  # per row of dy^T and x^T: a column of dy and of x, over the rows inside the groups
            dy_t, x_t = operand(jnp.where(inside, dy, 0).T, g, recipe), operand(jnp.where(inside, x, 0).T, E4M3, recipe)
            wgrad = (dy_t[0].T, dy_t[1]), (x_t[0].T, x_t[1])  # back to [M, C] with a scale per column
        return (
            operand(x, E4M3, recipe),
            operand(w, E4M3, recipe),
            operand(dy, g, recipe),
            operand(jnp.swapaxes(w, 1, 2), E4M3, recipe),
            *wgrad,
        )
    xq, dyq = quantize(jnp.where(inside, x, 0), E4M3, None), quantize(jnp.where(inside, dy, 0), g, None)
    wq = quantize(w, E4M3, (1, 2))
    return xq, wq, dyq, (jnp.swapaxes(wq[0], 1, 2), wq[1]), dyq, xq


def ragged_f64(x, w, group_sizes, dy, recipe):
    """float64 (y, dx, dw) of ``fp8_ragged_dot`` from independently quantized operands."""
    m, num_groups = x.shape[0], w.shape[0]
    groups, _ = ragged_rows(group_sizes, m)
    ids = np.full(m, num_groups, np.int32)
    for e, (start, end) in enumerate(groups):
        ids[start:end] = e
    ops_ = ragged_operands(x, w, dy, jnp.asarray(ids), recipe, num_groups)
    if recipe.rowwise:
        xq, wq, dyq, wtq = (scaled(q, s) for q, s in ops_[:4])
        seg = np.minimum(ids, num_groups - 1)
        if recipe.segment_scales:
            dy_seg, x_seg = (to_f64(q) * to_f64(s)[seg] for q, s in ops_[4:])
        else:
            dy_seg, x_seg = (to_f64(q) * to_f64(s)[None, :] for q, s in ops_[4:])
    else:
        xq, dyq = scaled(*ops_[0], None), scaled(*ops_[2], None)
        wq, wtq = scaled(*ops_[1], (1, 2)), scaled(*ops_[3], (1, 2))
        dy_seg, x_seg = dyq, xq
    y, dx, dw = np.zeros((m, w.shape[1])), np.zeros(x.shape), np.zeros(w.shape)
    for e, (start, end) in enumerate(groups):
        if end > start:
            rows = slice(start, end)
            y[rows], dx[rows] = xq[rows] @ wq[e].T, dyq[rows] @ wtq[e].T
            dw[e] = dy_seg[rows].T @ x_seg[rows]
    return y, dx, dw


@functools.partial(jax.jit, static_argnames="recipe")
def matmul_and_grads(x, w, dy, recipe=ROWWISE):
    y, vjp = jax.vjp(functools.partial(jax_dgpt.fp8_matmul, recipe=recipe), x, w)
    return (y, *vjp(dy))


@functools.partial(jax.jit, static_argnames="recipe")
def ragged_and_grads(x, w, group_sizes, dy, recipe=ROWWISE):
    y, vjp = jax.vjp(lambda x, w: jax_dgpt.fp8_ragged_dot(x, w, group_sizes, recipe=recipe), x, w)
    return (y, *vjp(dy))


def bound_for(dtype) -> float:
    return BF16_CALC_DIFF_BOUND if np.dtype(dtype) == np.dtype(jnp.bfloat16) else F32_BOUND


def check_diff(got, want, dtype, context):
    diff = record_diff(calc_diff(to_f64(got), want), context)
    assert diff <= bound_for(dtype), f"{context}: calc_diff {diff:.3g} > {bound_for(dtype):.0e}"


# --- recipes and the quantizer --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [E4M3, E5M2])
@pytest.mark.parametrize("axis", [-1, 0, None, (1, 2)])
def test_quantize_scales_and_rounding(axis, dtype):
    shape = (5, 6, 40) if axis == (1, 2) else (48, 40)
    x = normal(shape, 1, spread=True).at[3].set(0.0)  # an all-zero row
    q, scale = jax.jit(quantize, static_argnums=(1, 2))(x, dtype, axis)
    fmax = float(jnp.finfo(dtype).max)
    tiny = float(np.finfo(np.float32).tiny)
    amax = np.max(np.abs(to_f64(x)), axis=axis)
    np.testing.assert_allclose(to_f64(scale), np.maximum(amax, fmax * tiny) / fmax, rtol=2**-23)
    assert q.dtype == dtype and q.shape == x.shape and np.all(np.isfinite(to_f64(q)))
    s = to_f64(scale) if axis is None else np.expand_dims(to_f64(scale), axis)
    # Half an ulp: 2^-4 (e4m3) or 2^-3 (e5m2) relative, or half the smallest subnormal in absolute terms.
    ulp, subnormal = (2.0**-4, 2.0**-10) if dtype == E4M3 else (2.0**-3, 2.0**-17)
    error = np.abs(to_f64(q) * s - to_f64(x))
    assert np.all(error <= np.maximum(ulp * np.abs(to_f64(x)), subnormal * s) * (1 + 2**-20))
    assert np.max(np.abs(to_f64(q))) == fmax  # the amax lands on fmax: the range is used


def test_quantize_saturates_and_floors():
    x = jnp.asarray([[0.0, 1e-38, -1e-38], [0.0, 0.0, 0.0]], jnp.float32)
    q, scale = quantize(x, E4M3, -1)
    assert np.all(to_f64(scale) >= np.finfo(np.float32).tiny) and np.all(np.isfinite(to_f64(q)))
    assert np.all(to_f64(q)[1] == 0)
    # A value above the scaled range (the scale of another tensor) saturates instead of becoming NaN.
    from jax_dgpt.quantize import cast

    assert float(cast(jnp.float32(1e9), jnp.float32(1.0), E4M3).astype(jnp.float32)) == 448.0


def test_quantize_segments_per_group_and_rows_outside():
    x = normal((10, 6), 2, spread=True).at[9].set(jnp.nan)  # row 9 is outside every segment
    ids = jnp.asarray([0, 0, 0, 2, 2, 2, 2, 2, 3, 4], jnp.int32)  # segment 1 empty, 4 = num_segments
    q, scale = jax.jit(quantize_segments, static_argnums=(2, 3))(x, ids, 4, E5M2)
    assert q.shape == (10, 6) and scale.shape == (4, 6)
    per_slice = jax.jit(lambda x: [quantize(x[a:b], E5M2, 0) for a, b in ((0, 3), (3, 8), (8, 9))])(x)
    for (seg, rows), (want_q, want_s) in zip(((0, slice(0, 3)), (2, slice(3, 8)), (3, slice(8, 9))), per_slice):
        np.testing.assert_array_equal(to_f64(scale[seg]), to_f64(want_s))
        np.testing.assert_array_equal(to_f64(q[rows]), to_f64(want_q))
    assert np.all(to_f64(scale[1]) == np.finfo(np.float32).tiny)  # an empty segment: the floor
    assert np.all(to_f64(q[9]) == 0.0), "a row outside every segment quantizes to zeros, NaN included"


def test_recipe_validation_and_identity():
    assert ROWWISE == Fp8Recipe() and ROWWISE.rowwise and not PER_TENSOR.rowwise and not ROWWISE.segment_scales
    with pytest.raises(ValueError, match="Fp8Recipe: segment_scales needs scaling='rowwise'"):
        Fp8Recipe(scaling="tensor", segment_scales=True)
    with pytest.raises(TypeError, match="Fp8Recipe: segment_scales must be a bool"):
        Fp8Recipe(segment_scales=1)
    assert Fp8Recipe(grad_dtype="float8_e5m2") == ROWWISE and hash(Fp8Recipe()) == hash(ROWWISE)
    with pytest.raises(ValueError, match="Fp8Recipe: scaling must be 'rowwise' or 'tensor', got 'blockwise'"):
        Fp8Recipe(scaling="blockwise")
    with pytest.raises(TypeError, match="Fp8Recipe: grad_dtype must be float8_e5m2 or float8_e4m3fn"):
        Fp8Recipe(grad_dtype=jnp.bfloat16)
    with pytest.raises(TypeError, match="Fp8Recipe: grad_dtype"):
        Fp8Recipe(grad_dtype="not a dtype")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ROWWISE.scaling = "tensor"


# --- fp8_matmul ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe_name", MATMUL_RECIPES)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_fp8_matmul_forward_and_gradients_match_float64(recipe_name, dtype):
    recipe = RECIPES[recipe_name]
    m, k, n = 96, 200, 72  # K and N padded by the ops (200 -> 208 and 72 -> 72, M -> N of dgrad: 96)
    x, w = normal((m, k), 3, dtype=dtype, spread=True), normal((n, k), 4, k**-0.5, dtype=dtype, spread=True)
    dy = normal((m, n), 5, dtype=dtype, spread=True)
    y, dx, dw = matmul_and_grads(x, w, dy, recipe=recipe)
    assert y.dtype == dtype and dx.dtype == dtype and dw.dtype == dtype
    assert y.shape == (m, n) and dx.shape == (m, k) and dw.shape == (n, k)
    context = f"fp8_matmul {recipe_name} {np.dtype(dtype).name}"
    want_y, want_dx, want_dw = matmul_f64(x, w, dy, recipe)
    check_diff(y, want_y, dtype, f"{context} y")
    check_diff(dx, want_dx, dtype, f"{context} dx")
    check_diff(dw, want_dw, dtype, f"{context} dw")
    # The straight-through gradients track the unquantized ones to within the fp8 rounding.
    for got, want, name in ((dx, to_f64(dy) @ to_f64(w), "dx"), (dw, to_f64(dy).T @ to_f64(x), "dw")):
        err = normalised_error(got, want)
        assert err <= STE_TOLERANCE, f"{context} {name}: normalised error {err:.3f} vs the unquantized gradient"


def test_fp8_matmul_leading_dims_and_mixed_dtypes():
    x = normal((2, 3, 16, 64), 9, dtype=jnp.bfloat16)
    w = normal((40, 64), 10, dtype=jnp.float32)
    dy = normal((2, 3, 16, 40), 11, dtype=jnp.bfloat16)
    y, dx, dw = matmul_and_grads(x, w, dy)
    assert y.shape == (2, 3, 16, 40) and y.dtype == jnp.bfloat16
    assert dx.shape == x.shape and dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
    _, *flat = matmul_and_grads(x.reshape(-1, 64), w, dy.reshape(-1, 40))
    np.testing.assert_array_equal(to_f64(dx).reshape(-1, 64), to_f64(flat[0]))
    np.testing.assert_array_equal(to_f64(dw), to_f64(flat[1]))


def linear_fd(fn, x, eps=0.5):
    """Central finite differences of a scalar function of a float64 array (exact for a bilinear fn)."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        grad[index] = (fn(x + step) - fn(x - step)) / (2 * eps)
    return grad


@pytest.mark.parametrize("recipe_name", ["rowwise", "tensor"])
def test_straight_through_rule_by_finite_differences(recipe_name):
    """The gradient equals the finite differences of the unquantized product, taken at the quantized operands
    (no transposition formula involved): dx from <Qg(dy), x . Q(w)^T>, dw from <Qg(dy), Q(x) . w^T>."""
    recipe = RECIPES[recipe_name]
    m, k, n = 3, 5, 4
    x, w = normal((m, k), 12, spread=True), normal((n, k), 13, spread=True)
    dy = normal((m, n), 14)
    _, dx, dw = matmul_and_grads(x, w, dy, recipe=recipe)
    axis = -1 if recipe.rowwise else None
    _, _, dy_for_dx, w_t, dy_t, x_t = (scaled(q, s, axis) for q, s in matmul_operands(x, w, dy, recipe))
    w_q, dy_for_dw, x_q = w_t.T, dy_t.T, x_t.T  # back to the forward's layouts
    fd_dx = linear_fd(lambda xs: np.sum(dy_for_dx * (xs @ w_q.T)), to_f64(x))
    fd_dw = linear_fd(lambda ws: np.sum(dy_for_dw * (x_q @ ws.T)), to_f64(w))
    np.testing.assert_allclose(to_f64(dx), fd_dx, rtol=1e-5, atol=1e-6 * np.abs(fd_dx).max())
    np.testing.assert_allclose(to_f64(dw), fd_dw, rtol=1e-5, atol=1e-6 * np.abs(fd_dw).max())


def test_fp8_matmul_jit_vmap_checkpoint():
    x, w = normal((4, 32, 64), 15), normal((24, 64), 16)
    loss = lambda x, w: jnp.sum(jnp.sin(jax_dgpt.fp8_matmul(x, w)))  # noqa: E731
    grads = jax.jit(jax.grad(loss, (0, 1)))
    want = grads(x, w)
    for got, expected in zip(jax.jit(jax.grad(jax.checkpoint(loss), (0, 1)))(x, w), want):
        np.testing.assert_array_equal(to_f64(got), to_f64(expected), err_msg="jax.checkpoint")
    # vmap over examples: each example has its own scales (x's per row anyway; dy^T's and x^T's per column over
    # the example's own rows), so the batched gradients are those of a loop over the examples.
    per_example = jax.jit(jax.vmap(jax.grad(loss, (0, 1)), in_axes=(0, None)))(x, w)
    for i in range(x.shape[0]):
        one = grads(x[i], w)
        np.testing.assert_allclose(to_f64(per_example[0][i]), to_f64(one[0]), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(to_f64(per_example[1][i]), to_f64(one[1]), rtol=1e-6, atol=1e-6)


def test_fp8_matmul_empty_rows():
    x, w = jnp.zeros((0, 32), jnp.bfloat16), normal((16, 32), 17, dtype=jnp.bfloat16)
    y, dx, dw = matmul_and_grads(x, w, jnp.zeros((0, 16), jnp.bfloat16))
    assert y.shape == (0, 16) and dx.shape == (0, 32) and np.all(to_f64(dw) == 0.0)
    # K = 0 (empty sums, as jax_dgpt.gemm gives): zeros, with leading dims (the flattening must not infer M).
    x, w = jnp.ones((2, 3, 0), jnp.float32), jnp.ones((16, 0), jnp.float32)
    y, dx, dw = matmul_and_grads(x, w, jnp.ones((2, 3, 16), jnp.float32))
    assert y.shape == (2, 3, 16) and np.all(to_f64(y) == 0.0) and dx.shape == (2, 3, 0) and dw.shape == (16, 0)


def test_fp8_matmul_forward_mode_is_not_defined():
    x, w = normal((8, 16), 18), normal((8, 16), 19)
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(jax_dgpt.fp8_matmul, (x, w), (x, w))


def test_fp8_matmul_errors():
    x, w = jnp.ones((4, 16)), jnp.ones((8, 16))
    cases = [
        (TypeError, r"fp8_matmul: x must have dtype bfloat16 or float32, got float8_e4m3fn \(the operands are "
         r"quantized here", (x.astype(E4M3), w), {}),
        (TypeError, "fp8_matmul: w must have dtype bfloat16 or float32, got int32", (x, w.astype(jnp.int32)), {}),
        (TypeError, "fp8_matmul: x must be a bfloat16 or float32 array, got list", ([1.0], w), {}),
        (ValueError, r"fp8_matmul: w must have rank 2 \(shape \[N, K\]\), got shape \(16,\)", (x, w[0]), {}),
        (ValueError, r"fp8_matmul: x must have rank >= 1", (jnp.float32(1.0), w), {}),
        (ValueError, r"fp8_matmul: x and w must have the same K \(last dimension\), got 15 and 16", (x[:, :15], w), {}),
        (TypeError, "fp8_matmul: recipe must be a jax_dgpt.Fp8Recipe, got str", (x, w), {"recipe": "rowwise"}),
    ]  # fmt: skip
    for error, message, args, kwargs in cases:
        with pytest.raises(error, match=message):
            jax_dgpt.fp8_matmul(*args, **kwargs)


# --- fp8_ragged_dot ------------------------------------------------------------------------------------
SIZES = {
    "empty groups": [30, 0, 50, 0, 16],
    "total below M": [20, 10, 30, 0, 4],  # rows 64..95 belong to no group
    "total above M (clamped)": [40, 40, 40, 0, 0],
    "negative counts as 0": [-5, 60, -1, 36, 0],
    "one group": [0, 0, 96, 0, 0],
}


@pytest.mark.parametrize("name", sorted(SIZES))
@pytest.mark.parametrize("recipe_name", ["rowwise", "tensor", "rowwise-segment-scales"])
def test_fp8_ragged_dot_forward_and_gradients_match_float64(name, recipe_name):
    recipe, sizes = RECIPES[recipe_name], SIZES[name]
    m, k, n, g = 96, 72, 40, len(sizes)
    x, w = normal((m, k), 20, spread=True), normal((g, n, k), 21, k**-0.5, spread=True)
    dy = normal((m, n), 22, spread=True)
    _, total = ragged_rows(sizes, m)
    # Rows past the total hold NaN in x and a large cotangent: no value of theirs may leak anywhere.
    x, dy = x.at[total:].set(jnp.nan), dy.at[total:].set(1e30)
    y, dx, dw = ragged_and_grads(x, w, jnp.asarray(sizes, jnp.int32), dy, recipe=recipe)
    want_y, want_dx, want_dw = ragged_f64(x, w, sizes, dy, recipe)
    context = f"fp8_ragged_dot {recipe_name} {name}"
    assert np.all(to_f64(y)[total:] == 0.0) and np.all(to_f64(dx)[total:] == 0.0), f"{context}: rows past the total"
    check_diff(y[:total], want_y[:total], jnp.float32, f"{context} y")
    check_diff(dx[:total], want_dx[:total], jnp.float32, f"{context} dx")
    groups, _ = ragged_rows(sizes, m)
    for e, (start, end) in enumerate(groups):
        if end > start:
            check_diff(dw[e], want_dw[e], jnp.float32, f"{context} dw[{e}]")
        else:
            assert np.all(to_f64(dw[e]) == 0.0), f"{context}: empty group {e} has a gradient"


def test_fp8_ragged_dot_bf16_and_the_unquantized_gradient():
    sizes, m, k, n = [40, 0, 30, 0, 26], 96, 72, 40
    x, w = normal((m, k), 23, dtype=jnp.bfloat16), normal((5, n, k), 24, k**-0.5, dtype=jnp.bfloat16)
    dy = normal((m, n), 25, dtype=jnp.bfloat16)
    group_sizes = jnp.asarray(sizes, jnp.int32)
    y, dx, dw = ragged_and_grads(x, w, group_sizes, dy)
    assert y.dtype == dx.dtype == dw.dtype == jnp.bfloat16
    want_y, want_dx, want_dw = ragged_f64(x, w, sizes, dy, ROWWISE)
    check_diff(y, want_y, jnp.bfloat16, "fp8_ragged_dot bf16 y")
    check_diff(dx, want_dx, jnp.bfloat16, "fp8_ragged_dot bf16 dx")
    check_diff(dw, want_dw, jnp.bfloat16, "fp8_ragged_dot bf16 dw")
    # Against jax.lax.ragged_dot's own gradients of the unquantized operands.
    unquantized = jax.jit(lambda *a: jax.vjp(jax_dgpt.training.plain_ragged_dot, *a)[1](dy.astype(jnp.float32)))
    plain = unquantized(x.astype(jnp.float32), w.astype(jnp.float32), group_sizes)
    for got, want, what in zip((dx, dw), plain, ("dx", "dw")):
        err = normalised_error(got, to_f64(want))
        assert err <= STE_TOLERANCE, f"{what}: normalised error {err:.3f} vs the unquantized gradient"


def test_plain_ragged_dot_follows_the_same_group_rule():
    """The high-precision twin groups rows as fp8_ragged_dot does (negative sizes count as 0, totals clamped)."""
    m, k, n = 96, 32, 24
    x, w = normal((m, k), 32), normal((5, n, k), 33, k**-0.5)
    plain = jax.jit(jax_dgpt.training.plain_ragged_dot)
    for name, sizes in SIZES.items():
        groups, _ = ragged_rows(sizes, m)
        want = np.zeros((m, n))
        for e, (start, end) in enumerate(groups):
            want[start:end] = to_f64(x)[start:end] @ to_f64(w)[e].T
        got = to_f64(plain(x, w, jnp.asarray(sizes, jnp.int32)))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"plain_ragged_dot {name} {sizes}")


def test_fp8_ragged_dot_one_program_for_every_group_sizes():
    m, k, n, g = 96, 72, 40, 5  # the shapes of test_fp8_ragged_dot_forward_and_gradients_match_float64
    x, w, dy = normal((m, k), 26), normal((g, n, k), 27, k**-0.5), normal((m, n), 28)

    @jax.jit
    def grads(x, w, group_sizes, dy):
        return jax.vjp(lambda x, w: jax_dgpt.fp8_ragged_dot(x, w, group_sizes), x, w)[1](dy)

    for sizes in ([16, 16, 16, 16, 32], [0, 96, 0, 0, 0], [-3, 70, 9, 0, 90]):
        dx, dw = grads(x, w, jnp.asarray(sizes, jnp.int32), dy)
        _, want_dx, want_dw = ragged_f64(x, w, sizes, dy, ROWWISE)
        _, total = ragged_rows(sizes, m)
        check_diff(dx[:total], want_dx[:total], jnp.float32, f"ragged dx sizes {sizes}")
        check_diff(dw, want_dw, jnp.float32, f"ragged dw sizes {sizes}")
    assert grads._cache_size() == 1


def test_fp8_ragged_dot_vmap_checkpoint_and_float0():
    m, k, n = 32, 32, 16
    x, w = normal((3, m, k), 29), normal((2, n, k), 30)
    group_sizes = jnp.asarray([12, 20], jnp.int32)
    loss = lambda x, w: jnp.sum(jnp.cos(jax_dgpt.fp8_ragged_dot(x, w, group_sizes)))  # noqa: E731
    grads = jax.jit(jax.grad(loss, (0, 1)))
    batched = jax.jit(jax.vmap(jax.grad(loss, (0, 1)), in_axes=(0, None)))(x, w)
    for i in range(3):
        one = grads(x[i], w)
        for got, want in zip((batched[0][i], batched[1][i]), one):
            np.testing.assert_allclose(to_f64(got), to_f64(want), rtol=1e-6, atol=1e-6)
    for got, want in zip(jax.jit(jax.grad(jax.checkpoint(loss), (0, 1)))(x[0], w), grads(x[0], w)):
        np.testing.assert_array_equal(to_f64(got), to_f64(want), err_msg="jax.checkpoint")
    cotangents = jax.eval_shape(
        lambda *a: jax.vjp(jax_dgpt.fp8_ragged_dot, *a)[1](jnp.ones((m, n))), x[0], w, group_sizes
    )
    assert cotangents[2].dtype == jax.dtypes.float0 and cotangents[2].shape == (2,)
    # Any integer group_sizes (converted to int32).
    forward = jax.jit(jax_dgpt.fp8_ragged_dot)
    np.testing.assert_array_equal(
        to_f64(forward(x[0], w, group_sizes.astype(jnp.int16))), to_f64(forward(x[0], w, group_sizes))
    )


def test_fp8_ragged_dot_without_groups():
    x, w = normal((8, 16), 31), jnp.zeros((0, 4, 16))
    y, dx, dw = ragged_and_grads(x, w, jnp.zeros((0,), jnp.int32), jnp.ones((8, 4)))
    assert np.all(to_f64(y) == 0) and np.all(to_f64(dx) == 0) and dw.shape == (0, 4, 16)


def test_fp8_ragged_dot_errors():
    x, w, s = jnp.ones((8, 16)), jnp.ones((2, 4, 16)), jnp.asarray([4, 4], jnp.int32)
    cases = [
        (TypeError, "fp8_ragged_dot: x must have dtype bfloat16 or float32, got float16", (x.astype("float16"), w, s)),
        (TypeError, "fp8_ragged_dot: group_sizes must be an integer array, got float32", (x, w, s.astype(jnp.float32))),
        (ValueError, r"fp8_ragged_dot: x must have rank 2 \(shape \[M, K\]\)", (x[None], w, s)),
        (ValueError, r"fp8_ragged_dot: w must have rank 3 \(shape \[G, N, K\]\)", (x, w[0], s)),
        (ValueError, r"fp8_ragged_dot: w and group_sizes must have the same G \(groups\), got 2 and 3",
         (x, w, jnp.ones((3,), jnp.int32))),
        (ValueError, r"fp8_ragged_dot: x and w must have the same K", (x[:, :8], w, s)),
        (ValueError, r"fp8_ragged_dot: group_sizes must have rank 1", (x, w, s[None])),
    ]  # fmt: skip
    for error, message, args in cases:
        with pytest.raises(error, match=message):
            jax_dgpt.fp8_ragged_dot(*args)
    with pytest.raises(TypeError, match="fp8_ragged_dot: recipe must be a jax_dgpt.Fp8Recipe"):
        jax_dgpt.fp8_ragged_dot(x, w, s, recipe=None)


# --- the quantization pass in the optimized program ------------------------------------------------------


@pytest.mark.parametrize("axis", [-1, 0, None])
def test_quantize_reads_its_input_in_two_fused_passes_on_the_cpu(axis):
    """On the CPU, XLA fuses the amax (abs, reduce) into one loop over x and the cast (scale, clip, convert) into
    another; nothing of x's size is materialised besides x and its fp8 copy. (The CPU backend never puts a
    reduction and its broadcast consumer in one loop: tests/test_gpu_training.py checks the one-pass fusion on
    the GPU. For a bfloat16 x the CPU also widens x to float32 ahead of its reduction library: a CPU detail.)"""
    m, k = 256, 512
    hlo = jax.jit(lambda x: quantize(x, E4M3, axis)).lower(jnp.ones((m, k), jnp.float32)).compile().as_text()
    instructions = hlo_entry_instructions(hlo)
    full_size = sorted(result for _, result, _ in instructions if f"[{m},{k}]" in result and "(" not in result)
    assert full_size == [f"f32[{m},{k}]{{1,0}}", f"f8e4m3fn[{m},{k}]{{1,0}}"], hlo
    (x_name,) = [name for name, _, rest in instructions if rest.startswith("parameter(0)")]
    readers = hlo_readers(instructions, x_name)
    assert len(readers) == 2 and all("fusion" in name for name in readers), hlo
