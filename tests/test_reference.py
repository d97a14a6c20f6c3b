"""Numerics of the jitted ops on the CPU (reference lowering) against float64 products."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_dgpt
from jax_dgpt import reference
from jax_dgpt.testing import assert_close_to_f64, generate_contiguous_indices, generate_fp8, to_f64


def enumerate_gemm_shapes():
    # (M, N, K): odd M; K % 16 != 0 and N % 8 != 0 exercise the wrapper's padding.
    yield from [
        (1, 16, 64),
        (7, 13, 40),
        (65, 72, 256),
        (128, 40, 17),
        (33, 8, 1000),
        (200, 136, 512),
        (64, 7, 16),
        (3, 1, 1),
    ]


@pytest.mark.parametrize("m, n, k", list(enumerate_gemm_shapes()))
def test_gemm_matches_f64(m, n, k):
    a, b = generate_fp8((m, k), key=m * 1000 + k), generate_fp8((n, k), key=n * 1000 + k + 1)
    out = jax.jit(jax_dgpt.gemm)(a, b)
    assert out.shape == (m, n) and out.dtype == jnp.bfloat16
    assert_close_to_f64(out, a, b, context=f"gemm M={m} N={n} K={k}")


def test_gemm_eager_alias_and_disable_jit_agree():
    a, b = generate_fp8((9, 48), key=1), generate_fp8((24, 48), key=2)
    jitted = np.asarray(jax.jit(jax_dgpt.gemm)(a, b))
    np.testing.assert_array_equal(np.asarray(jax_dgpt.gemm(a, b)), jitted)
    np.testing.assert_array_equal(np.asarray(jax_dgpt.gemm_per_tensor_fp8_fp8_bf16_nt(a, b)), jitted)
    with jax.disable_jit():
        np.testing.assert_array_equal(np.asarray(jax_dgpt.gemm(a, b)), jitted)


@pytest.mark.parametrize("m, n, k", [(0, 16, 32), (4, 0, 32), (4, 16, 0), (0, 0, 0)])
def test_gemm_empty_dimensions(m, n, k):
    a, b = jnp.ones((m, k), jnp.float8_e4m3fn), jnp.ones((n, k), jnp.float8_e4m3fn)
    out = jax.jit(jax_dgpt.gemm)(a, b)
    assert out.shape == (m, n) and out.dtype == jnp.bfloat16
    assert not np.any(np.asarray(out, np.float32))
    assert "dgpt_gemm" not in jax.jit(jax_dgpt.gemm).trace(a, b).jaxpr.pretty_print()


@pytest.mark.parametrize("group_rows, n, k", [([100, 0, 128, 3], 24, 64), ([1], 13, 40), ([7, 130], 8, 16)])
def test_contiguous_matches_f64_and_zeroes_padding(group_rows, n, k):
    num_groups = len(group_rows)
    indices = generate_contiguous_indices(group_rows)
    m = indices.shape[0]
    a, b = generate_fp8((m, k), key=m + k), generate_fp8((num_groups, n, k), key=n + k)
    out = np.asarray(jax.jit(jax_dgpt.grouped_gemm_contiguous)(a, b, jnp.asarray(indices)))
    assert out.shape == (m, n) and out.dtype == jnp.bfloat16
    for g in range(num_groups):
        rows = np.nonzero(indices == g)[0]
        assert_close_to_f64(out[rows], a[rows], b[g], context=f"contiguous group {g} of {group_rows}")
    padding = indices == -1
    assert np.all(np.asarray(out[padding], np.float32) == 0.0)


def test_contiguous_out_of_range_indices_are_padding():
    m, n, k, num_groups = 256, 16, 32, 3
    indices = np.full(m, 1, np.int32)
    indices[:128] = [0] * 122 + [3, 7, -2, -100, 2**31 - 1, -(2**31)]  # padding after expert 0's rows
    a, b = generate_fp8((m, k), key=5), generate_fp8((num_groups, n, k), key=6)
    out = np.asarray(jax_dgpt.m_grouped_gemm_per_tensor_fp8_fp8_bf16_nt_contiguous(a, b, jnp.asarray(indices)))
    assert np.all(np.asarray(out[122:128], np.float32) == 0.0)
    assert_close_to_f64(out[:122], a[:122], b[0], context="contiguous expert 0")
    assert_close_to_f64(out[128:], a[128:], b[1], context="contiguous expert 1")


@pytest.mark.parametrize("m, n, k, num_groups", [(0, 16, 32, 2), (128, 0, 32, 2), (128, 16, 0, 2), (128, 16, 32, 0)])
def test_contiguous_empty_dimensions(m, n, k, num_groups):
    a, b = jnp.ones((m, k), jnp.float8_e4m3fn), jnp.ones((num_groups, n, k), jnp.float8_e4m3fn)
    out = jax_dgpt.grouped_gemm_contiguous(a, b, jnp.zeros((m,), jnp.int32))
    assert out.shape == (m, n) and not np.any(np.asarray(out, np.float32))


@pytest.mark.parametrize("num_groups, m_max, n, k", [(3, 65, 24, 64), (1, 7, 13, 40), (4, 128, 8, 16)])
def test_masked_matches_f64_on_valid_rows(num_groups, m_max, n, k):
    masked_m = np.array([m_max, 0, -5, m_max + 100, 1, 3][:num_groups], np.int32)
    a = generate_fp8((num_groups, m_max, k), key=m_max + k)
    b = generate_fp8((num_groups, n, k), key=n + k)
    f = jax.jit(jax_dgpt.grouped_gemm_masked, static_argnums=3)
    out = np.asarray(f(a, b, jnp.asarray(masked_m), 32))
    assert out.shape == (num_groups, m_max, n) and out.dtype == jnp.bfloat16
    for g in range(num_groups):
        valid = int(np.clip(masked_m[g], 0, m_max))
        assert_close_to_f64(out[g, :valid], a[g, :valid], b[g], context=f"masked group {g}")


def test_masked_same_program_for_any_mask_values():
    a, b = generate_fp8((2, 16, 32), key=1), generate_fp8((2, 8, 32), key=2)
    f = jax.jit(lambda a, b, mm: jax_dgpt.m_grouped_gemm_per_tensor_fp8_fp8_bf16_nt_masked(a, b, mm, 16))
    first = np.asarray(f(a, b, jnp.array([16, 0], jnp.int32)))
    second = np.asarray(f(a, b, jnp.array([3, 16], jnp.int32)))
    assert f._cache_size() == 1
    np.testing.assert_array_equal(first[0, :3], second[0, :3])
    np.testing.assert_array_equal(first[1, :0], second[1, :0])


@pytest.mark.parametrize("num_groups, m_max, n, k", [(0, 16, 8, 32), (2, 0, 8, 32), (2, 16, 0, 32), (2, 16, 8, 0)])
def test_masked_empty_dimensions(num_groups, m_max, n, k):
    a = jnp.ones((num_groups, m_max, k), jnp.float8_e4m3fn)
    b = jnp.ones((num_groups, n, k), jnp.float8_e4m3fn)
    out = jax_dgpt.grouped_gemm_masked(a, b, jnp.zeros((num_groups,), jnp.int32), 4)
    assert out.shape == (num_groups, m_max, n) and not np.any(np.asarray(out, np.float32))


def test_gemm_inside_scan():
    a, b = generate_fp8((5, 17, 48), key=11), generate_fp8((24, 48), key=12)

    def step(carry, a_i):
        out = jax_dgpt.gemm(a_i, b)
        return carry + out.astype(jnp.float32).sum(), out

    total, outs = jax.jit(lambda a: jax.lax.scan(step, 0.0, a))(a)
    for i in range(a.shape[0]):
        assert_close_to_f64(outs[i], a[i], b, context=f"scan step {i}")
    np.testing.assert_allclose(float(total), to_f64(outs).sum(), rtol=1e-5)


def test_vmap_gemm():
    a, b = generate_fp8((3, 9, 32), key=21), generate_fp8((3, 16, 32), key=22)
    only_a = jax.jit(jax.vmap(jax_dgpt.gemm, in_axes=(0, None)))(a, b[0])
    both = jax.jit(jax.vmap(jax_dgpt.gemm, in_axes=(0, 0)))(a, b)
    b_axis_1 = jax.vmap(jax_dgpt.gemm, in_axes=(None, 1))(a[0], jnp.moveaxis(b, 0, 1))
    for i in range(3):
        assert_close_to_f64(only_a[i], a[i], b[0], context=f"vmap a only, {i}")
        assert_close_to_f64(both[i], a[i], b[i], context=f"vmap both, {i}")
        assert_close_to_f64(b_axis_1[i], a[0], b[i], context=f"vmap b on axis 1, {i}")


def test_vmap_grouped():
    a, b = generate_fp8((2, 128, 32), key=31), generate_fp8((2, 2, 8, 32), key=32)
    indices = jnp.asarray(np.stack([generate_contiguous_indices([60, 60])] * 2))
    out = jax.vmap(jax_dgpt.grouped_gemm_contiguous)(jnp.concatenate([a, a], axis=1), b, indices)
    masked = jax.vmap(lambda a, b, m: jax_dgpt.grouped_gemm_masked(a, b, m, 64))(
        a.reshape(2, 2, 64, 32), b, jnp.full((2, 2), 64, jnp.int32)
    )
    shared_b = jax.vmap(lambda a: jax_dgpt.grouped_gemm_masked(a, b[0], jnp.full((2,), 64, jnp.int32), 64))(
        a.reshape(2, 2, 64, 32)
    )
    for i in range(2):
        np.testing.assert_array_equal(
            np.asarray(out[i]),
            np.asarray(jax_dgpt.grouped_gemm_contiguous(jnp.concatenate([a, a], axis=1)[i], b[i], indices[i])),
        )
        assert_close_to_f64(masked[i], a[i].reshape(2, 64, 32), b[i], context=f"vmap masked {i}")
        assert_close_to_f64(shared_b[i], a[i].reshape(2, 64, 32), b[0], context=f"vmap a only {i}")


# --- review regressions ----------------------------------------------------------------------------
def test_contiguous_rows_disagreeing_with_their_block_are_zero():
    # Breaks the layout rule: the first 128-row block starts with padding, then two experts. The
    # kernel takes a block's expert from its first row; the reference must do the same.
    m_indices = jnp.asarray([-1] * 4 + [0] * 2 + [1] * 2 + [1] * 124 + [1] * 4, jnp.int32)
    a, b = generate_fp8((136, 32), key=1), generate_fp8((2, 16, 32), key=2)
    out = to_f64(jax.jit(jax_dgpt.grouped_gemm_contiguous)(a, b, m_indices))
    assert np.all(out[:128] == 0)  # block 0's expert is -1
    want = to_f64(a)[128:] @ to_f64(b)[1].T  # block 1 (rows 128-135) is expert 1
    np.testing.assert_allclose(out[128:], want, rtol=2**-7, atol=1e-2)


def test_vmap_over_an_empty_batch():
    b = generate_fp8((24, 32), key=3)
    out = jax.vmap(jax_dgpt.gemm, in_axes=(0, None))(jnp.zeros((0, 8, 32), jnp.float8_e4m3fn), b)
    assert out.shape == (0, 8, 24) and out.dtype == jnp.bfloat16
    masked = jax.vmap(lambda a, bb, m: jax_dgpt.grouped_gemm_masked(a, bb, m, 4))(
        jnp.zeros((0, 2, 8, 32), jnp.float8_e4m3fn),
        jnp.zeros((0, 2, 24, 32), jnp.float8_e4m3fn),
        jnp.zeros((0, 2), jnp.int32),
    )
    assert masked.shape == (0, 2, 8, 24)


# --- issue 12, finding 3: a CPU path that scales ----------------------------------------------------
def test_masked_rows_past_masked_m_are_zero():
    masked_m = np.array([0, 5, 70, -2], np.int32)
    a, b = generate_fp8((4, 64, 32), key=41), generate_fp8((4, 24, 32), key=42)
    out = to_f64(jax.jit(jax_dgpt.grouped_gemm_masked, static_argnums=3)(a, b, jnp.asarray(masked_m), 8))
    for g in range(4):
        valid = int(np.clip(masked_m[g], 0, 64))
        assert not np.any(out[g, valid:]), f"group {g}: rows at or past masked_m={masked_m[g]} must be zero"
        assert_close_to_f64(out[g, :valid], a[g, :valid], b[g], context=f"masked group {g}")


@pytest.mark.parametrize(
    "group_rows",
    [
        [300, 0, 1, 129, 128, 17],  # full chunks, tails, an empty expert, an expert of one row
        [128] * 3 + [255],  # the last expert ends at the last row: its tail chunk runs past M
    ],
)
def test_contiguous_chunks_of_every_size(group_rows):
    indices = generate_contiguous_indices(group_rows)
    m, n, k = indices.shape[0], 40, 48
    a, b = generate_fp8((m, k), key=m), generate_fp8((len(group_rows), n, k), key=n)
    out = np.asarray(jax.jit(jax_dgpt.grouped_gemm_contiguous)(a, b, jnp.asarray(indices)))
    for g in range(len(group_rows)):
        rows = np.nonzero(indices == g)[0]
        assert_close_to_f64(out[rows], a[rows], b[g], context=f"contiguous group {g} of {group_rows}")
    assert not np.any(np.asarray(out[indices == -1], np.float32))


def test_contiguous_padding_rows_inside_a_block_are_zero():
    # Rows of index -1 in the middle of expert 1's block: they are zero, the rows after them are not.
    indices = np.array([0] * 128 + [1] * 10 + [-1] * 5 + [1] * 113, np.int32)
    a, b = generate_fp8((256, 32), key=51), generate_fp8((2, 16, 32), key=52)
    out = np.asarray(jax_dgpt.grouped_gemm_contiguous(a, b, jnp.asarray(indices)))
    assert not np.any(np.asarray(out[138:143], np.float32))
    for g in (0, 1):
        rows = np.nonzero(indices == g)[0]
        assert_close_to_f64(out[rows], a[rows], b[g], context=f"expert {g}")


def dot_row_counts(jaxpr) -> list[int]:
    """Rows of the left operand of every dot_general in a jaxpr and the jaxprs inside it (loops, conds)."""
    rows = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            rows.append(int(eqn.invars[0].aval.shape[0]))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    rows += dot_row_counts(inner)
    return rows


def f32_temporaries(jaxpr) -> list[tuple[int, ...]]:
    """Shapes of every float32 value a jaxpr (and the jaxprs inside it) creates."""
    shapes = []
    for eqn in jaxpr.eqns:
        shapes += [tuple(v.aval.shape) for v in eqn.outvars if getattr(v.aval, "dtype", None) == jnp.float32]
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    shapes += f32_temporaries(inner)
    return shapes


GROUPED_PROBLEM = dict(num_groups=32, m=4096, n=512, k=1024)  # B: 16 MB of fp8, 64 MB as float32


def grouped_reference_args(layout: str):
    g, m, n, k = (GROUPED_PROBLEM[key] for key in ("num_groups", "m", "n", "k"))
    b = jax.ShapeDtypeStruct((g, n, k), jnp.float8_e4m3fn)
    if layout == "contiguous":
        return reference.grouped_gemm_contiguous, (
            jax.ShapeDtypeStruct((m, k), jnp.float8_e4m3fn),
            b,
            jax.ShapeDtypeStruct((m,), jnp.int32),
        )
    a = jax.ShapeDtypeStruct((g, m // g, k), jnp.float8_e4m3fn)
    return reference.grouped_gemm_masked, (a, b, jax.ShapeDtypeStruct((g,), jnp.int32))


@pytest.mark.parametrize("layout", ["contiguous", "masked"])
def test_grouped_references_multiply_chunks_of_one_expert(layout):
    """No dot over all rows (the G-fold work of computing every expert on every row) and no float32
    copy of more than one expert's weight."""
    fn, args = grouped_reference_args(layout)
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    rows = dot_row_counts(jaxpr)
    assert rows and max(rows) <= reference.CHUNK_ROWS, rows
    g, n, k = GROUPED_PROBLEM["num_groups"], GROUPED_PROBLEM["n"], GROUPED_PROBLEM["k"]
    biggest = max(int(np.prod(shape)) for shape in f32_temporaries(jaxpr))
    assert biggest <= n * k, (
        f"a float32 temporary of {biggest} elements (one expert's weight: {n * k}, all: {g * n * k})"
    )


@pytest.mark.parametrize("layout", ["contiguous", "masked"])
def test_grouped_references_compile_without_full_size_temporaries(layout):
    fn, args = grouped_reference_args(layout)
    stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    g, m, n, k = (GROUPED_PROBLEM[key] for key in ("num_groups", "m", "n", "k"))
    bound = 4 * n * k + 3 * (m + reference.CHUNK_ROWS * g) * n * 2 + 2 * m * k  # one f32 weight, bf16 buffers, A
    assert stats.temp_size_in_bytes <= bound, (stats.temp_size_in_bytes, bound, 4 * g * n * k)
