"""The jnp references (jax_dgpt.reference, jitted on the CPU) against the independent float64 numpy
references of jax_dgpt.testing: e4m3/e5m2 operands, fused scales of every shape, float32 outputs, and
the weight-gradient GEMMs (plain and k-grouped, with the clamping rule of group sizes).

Bounds: a bfloat16 output is rounded once from an fp32 sum, so it sits at the bf16 rounding floor
(calc_diff ~1.4e-6; bound 3e-6, docs/numerical_contract.md). A float32 output differs from float64 only
by fp32 summation and the two fp32 scale multiplications: measured <= ~3e-14 here; bound F32_BOUND.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_dgpt
from jax_dgpt import reference
from jax_dgpt.testing import (
    calc_diff,
    generate_contiguous_indices,
    generate_fp8,
    generate_scales,
    k_grouped_offsets,
    record_diff,
    reference_contiguous_f64,
    reference_gemm_f64,
    reference_k_grouped_wgrad_f64,
    reference_masked_f64,
    reference_wgrad_f64,
    to_f64,
)

E4M3, E5M2 = jnp.float8_e4m3fn, jnp.float8_e5m2
DTYPES = {"e4m3": E4M3, "e5m2": E5M2}
PAIRS = list(itertools.product(DTYPES, DTYPES))
BF16_BOUND = 3e-6
F32_BOUND = 1e-12


def check(got, want, bound: float, context: str) -> None:
    got, want = to_f64(got), np.asarray(want, np.float64)
    assert got.shape == want.shape, (context, got.shape, want.shape)
    keep = ~np.isnan(want)  # the masked reference marks unspecified rows NaN
    assert np.all(np.isfinite(got[keep])), context
    diff = record_diff(calc_diff(got[keep], want[keep]), context)
    assert diff <= bound, f"{context}: calc_diff {diff:.3g} > {bound:.3g}"


def bound_for(out_dtype) -> float:
    return F32_BOUND if jnp.dtype(out_dtype) == jnp.float32 else BF16_BOUND


def scale_of(kind: str, shapes: dict[str, tuple[int, ...]], key: int):
    return None if kind == "none" else generate_scales(shapes[kind], key)


# --- the metric can fail ---------------------------------------------------------------------------
def test_a_wrong_scale_fails_the_bound():
    a, b = generate_fp8((64, 96), key=1), generate_fp8((48, 96), key=2)
    sa, sb = generate_scales((64,), 3), generate_scales((48,), 4)
    want = reference_gemm_f64(a, b, scale_a=sa, scale_b=sb)
    wrong = jax.jit(reference.gemm)(a, b, scale_a=sa, scale_b=sb[::-1])
    assert calc_diff(to_f64(wrong), want) > 1e-2
    swapped = jax.jit(reference.gemm)(a.astype(E5M2), b, scale_a=sa, scale_b=sb)  # e5m2 rounding of a
    assert calc_diff(to_f64(swapped), want) > BF16_BOUND


# --- gemm ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype_a, dtype_b", PAIRS)
@pytest.mark.parametrize("out_dtype", [jnp.bfloat16, jnp.float32])
def test_gemm_dtype_pairs(dtype_a, dtype_b, out_dtype):
    m, n, k = 70, 40, 300
    a = generate_fp8((m, k), key=11, dtype=DTYPES[dtype_a])
    b = generate_fp8((n, k), key=12, dtype=DTYPES[dtype_b])
    assert a.dtype == DTYPES[dtype_a] and b.dtype == DTYPES[dtype_b]
    sa, sb = generate_scales((m,), 13), generate_scales((n,), 14)
    out = jax.jit(reference.gemm, static_argnames="out_dtype")(a, b, scale_a=sa, scale_b=sb, out_dtype=out_dtype)
    assert out.shape == (m, n) and out.dtype == out_dtype
    want = reference_gemm_f64(a, b, scale_a=sa, scale_b=sb)
    check(out, want, bound_for(out_dtype), f"gemm {dtype_a}x{dtype_b} -> {jnp.dtype(out_dtype).name}")


@pytest.mark.parametrize("kind_a, kind_b", list(itertools.product(["none", "tensor", "row"], repeat=2)))
def test_gemm_scale_shapes(kind_a, kind_b):
    m, n, k = 33, 24, 128
    a, b = generate_fp8((m, k), key=21, dtype=E5M2), generate_fp8((n, k), key=22)
    sa = scale_of(kind_a, {"tensor": (), "row": (m,)}, 23)
    sb = scale_of(kind_b, {"tensor": (), "row": (n,)}, 24)
    f = jax.jit(reference.gemm, static_argnames="out_dtype")
    for out_dtype in (jnp.bfloat16, jnp.float32):
        out = f(a, b, scale_a=sa, scale_b=sb, out_dtype=out_dtype)
        check(
            out,
            reference_gemm_f64(a, b, scale_a=sa, scale_b=sb),
            bound_for(out_dtype),
            f"gemm {kind_a}/{kind_b} {jnp.dtype(out_dtype).name}",
        )


def test_gemm_scales_multiply_in_the_stated_order():
    # (acc * sa) * sb in float32, then one rounding: bitwise, against the same jnp expression.
    a, b = generate_fp8((16, 64), key=31), generate_fp8((8, 64), key=32, dtype=E5M2)
    sa, sb = generate_scales((16,), 33), generate_scales((8,), 34)
    acc = jnp.dot(a.astype(jnp.float32), b.astype(jnp.float32).T, precision="highest")
    want = (acc * sa[:, None]) * sb[None, :]
    got = jax.jit(reference.gemm, static_argnames="out_dtype")(a, b, scale_a=sa, scale_b=sb, out_dtype=jnp.float32)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(
        np.asarray(reference.gemm(a, b, scale_a=sa, scale_b=sb)), np.asarray(want.astype(jnp.bfloat16))
    )


def test_positional_calls_unchanged():
    a, b = generate_fp8((20, 48), key=41), generate_fp8((16, 48), key=42)
    want = (to_f64(a) @ to_f64(b).T).astype(np.float32)  # exact products, small K: exact in float32
    np.testing.assert_array_equal(np.asarray(jax.jit(reference.gemm)(a, b), np.float32), want.astype(jnp.bfloat16))
    indices = jnp.asarray(generate_contiguous_indices([5, 3]))
    bg = generate_fp8((2, 16, 48), key=43)
    ag = generate_fp8((indices.shape[0], 48), key=44)
    out = jax.jit(reference.grouped_gemm_contiguous)(ag, bg, indices)
    assert out.dtype == jnp.bfloat16
    check(out, reference_contiguous_f64(ag, bg, indices), BF16_BOUND, "contiguous positional")
    am = generate_fp8((2, 16, 48), key=45)
    masked = jax.jit(reference.grouped_gemm_masked)(am, bg, jnp.array([16, 3], jnp.int32))
    assert masked.dtype == jnp.bfloat16
    check(masked, reference_masked_f64(am, bg, [16, 3]), BF16_BOUND, "masked positional")


# --- grouped ---------------------------------------------------------------------------------------
CONTIGUOUS_ROWS = [130, 0, 1, 17]


# Every scale shape of a and of b, every dtype pairing and both outputs, each once (each case compiles
# the grouped loops anew: a full product of them would take minutes).
GROUPED_CASES = [
    ("none", "tensor", "e4m3", "e5m2", jnp.bfloat16),
    ("tensor", "expert", "e5m2", "e4m3", jnp.float32),
    ("row", "expert_col", "e5m2", "e5m2", jnp.bfloat16),
    ("row", "none", "e4m3", "e4m3", jnp.float32),
    ("row", "expert_col", "e4m3", "e5m2", jnp.float32),
]


@pytest.mark.parametrize("kind_a, kind_b, dtype_a, dtype_b, out_dtype", GROUPED_CASES)
def test_contiguous_scales(kind_a, kind_b, dtype_a, dtype_b, out_dtype):
    num_groups, n, k = len(CONTIGUOUS_ROWS), 24, 80
    indices = generate_contiguous_indices(CONTIGUOUS_ROWS)
    m = indices.shape[0]
    a = generate_fp8((m, k), key=51, dtype=DTYPES[dtype_a])
    b = generate_fp8((num_groups, n, k), key=52, dtype=DTYPES[dtype_b])
    sa = scale_of(kind_a, {"tensor": (), "row": (m,)}, 53)
    sb = scale_of(kind_b, {"tensor": (), "expert": (num_groups,), "expert_col": (num_groups, n)}, 54)
    f = jax.jit(reference.grouped_gemm_contiguous, static_argnames="out_dtype")
    out = f(a, b, jnp.asarray(indices), scale_a=sa, scale_b=sb, out_dtype=out_dtype)
    assert out.dtype == out_dtype and out.shape == (m, n)
    want = reference_contiguous_f64(a, b, indices, scale_a=sa, scale_b=sb)
    check(
        out, want, bound_for(out_dtype), f"contiguous {kind_a}/{kind_b} {dtype_a}x{dtype_b} {jnp.dtype(out_dtype).name}"
    )
    assert not np.any(to_f64(out)[indices == -1]), "padding rows must be exactly zero"


def test_contiguous_padding_stays_zero_under_nonfinite_scales():
    indices = generate_contiguous_indices([3, 5])
    m = indices.shape[0]
    a, b = generate_fp8((m, 32), key=71), generate_fp8((2, 8, 32), key=72)
    sa = np.asarray(generate_scales((m,), 73)).copy()
    sa[indices == -1] = np.inf
    out = to_f64(jax.jit(reference.grouped_gemm_contiguous)(a, b, jnp.asarray(indices), scale_a=jnp.asarray(sa)))
    assert not np.any(out[indices == -1]) and np.all(np.isfinite(out))


MASKED_M = [40, 0, -3, 100, 1]


@pytest.mark.parametrize("kind_a, kind_b, dtype_a, dtype_b, out_dtype", GROUPED_CASES)
def test_masked_scales(kind_a, kind_b, dtype_a, dtype_b, out_dtype):
    num_groups, m_max, n, k = len(MASKED_M), 40, 24, 80
    a = generate_fp8((num_groups, m_max, k), key=81, dtype=DTYPES[dtype_a])
    b = generate_fp8((num_groups, n, k), key=82, dtype=DTYPES[dtype_b])
    sa = scale_of(kind_a, {"tensor": (), "row": (num_groups, m_max)}, 83)
    sb = scale_of(kind_b, {"tensor": (), "expert": (num_groups,), "expert_col": (num_groups, n)}, 84)
    f = jax.jit(reference.grouped_gemm_masked, static_argnames="out_dtype")
    out = f(a, b, jnp.asarray(MASKED_M, jnp.int32), scale_a=sa, scale_b=sb, out_dtype=out_dtype)
    assert out.dtype == out_dtype and out.shape == (num_groups, m_max, n)
    want = reference_masked_f64(a, b, MASKED_M, scale_a=sa, scale_b=sb)
    check(out, want, bound_for(out_dtype), f"masked {kind_a}/{kind_b} {dtype_a}x{dtype_b} {jnp.dtype(out_dtype).name}")
    valid = np.arange(m_max)[None, :] < np.clip(MASKED_M, 0, m_max)[:, None]
    assert not np.any(to_f64(out)[~valid]), "rows past masked_m must be zero"


# --- wgrad -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_c", [False, True])
@pytest.mark.parametrize(
    "kind_a, kind_b, dtype_a, dtype_b",
    [
        ("none", "none", "e4m3", "e4m3"),
        ("tensor", "row", "e5m2", "e4m3"),
        ("row", "tensor", "e4m3", "e5m2"),
        ("row", "row", "e5m2", "e5m2"),
    ],
)
def test_wgrad(with_c, kind_a, kind_b, dtype_a, dtype_b):
    m, n, k = 48, 40, 384
    a = generate_fp8((m, k), key=101, dtype=DTYPES[dtype_a])
    b = generate_fp8((n, k), key=102, dtype=DTYPES[dtype_b])
    c = jnp.asarray(np.random.default_rng(103).standard_normal((m, n)).astype(np.float32) * 8) if with_c else None
    sa = scale_of(kind_a, {"tensor": (), "row": (m,)}, 104)
    sb = scale_of(kind_b, {"tensor": (), "row": (n,)}, 105)
    out = jax.jit(reference.wgrad_gemm)(a, b, c, scale_a=sa, scale_b=sb)
    assert out.shape == (m, n) and out.dtype == jnp.float32
    want = reference_wgrad_f64(a, b, c, scale_a=sa, scale_b=sb)
    check(out, want, F32_BOUND, f"wgrad c={with_c} {kind_a}/{kind_b} {dtype_a}x{dtype_b}")
    if with_c:  # c is added after the scaling (XLA may fuse the add into an FMA: not bitwise)
        product = reference.wgrad_gemm(a, b, scale_a=sa, scale_b=sb)
        np.testing.assert_allclose(np.asarray(out), np.asarray(c + product), rtol=2e-6, atol=1e-6)


# --- k-grouped wgrad -------------------------------------------------------------------------------
T = 600
K_GROUP_CASES = {
    "mixed": [0, 1, 127, 129, 200],  # total 457 < T: columns past it ignored
    "negative": [50, -7, 128, -1, 16],
    "over_total": [300, 250, 100, 40, 7],  # total 697 > T: the third group is cut at T, the rest empty
    "one_group": [T],
    "one_group_over": [T + 1000],
    "all_empty": [0, 0, -5],
    "tail_only": [15, 17, 31, 33],
}


def test_k_grouped_offsets_rule():
    starts, ends = k_grouped_offsets([300, 250, 100, 40, -3, 7], 600)
    np.testing.assert_array_equal(starts, [0, 300, 550, 600, 600, 600])
    np.testing.assert_array_equal(ends, [300, 550, 600, 600, 600, 600])
    starts, ends = k_grouped_offsets([5, -2, 3], 100)
    np.testing.assert_array_equal(starts, [0, 5, 5])
    np.testing.assert_array_equal(ends, [5, 5, 8])
    starts, ends = k_grouped_offsets([], 10)
    assert starts.shape == ends.shape == (0,)


@pytest.mark.parametrize("sizes", [[0, 1, 127, 129], [300, 250, 100, 40, -3, 7], [2**31 - 1, 2**31 - 1, 5], [-(2**31)]])
def test_k_grouped_bounds_match_the_rule(sizes):
    starts, ends = jax.jit(reference.k_grouped_bounds, static_argnums=1)(jnp.asarray(sizes, jnp.int32), 600)
    want_starts, want_ends = k_grouped_offsets(sizes, 600)
    np.testing.assert_array_equal(np.asarray(starts), want_starts)
    np.testing.assert_array_equal(np.asarray(ends), want_ends)


def k_grouped_operands(m: int, n: int, dtype_a=E4M3, dtype_b=E4M3):
    return generate_fp8((m, T), key=111, dtype=dtype_a), generate_fp8((n, T), key=112, dtype=dtype_b)


_k_grouped = jax.jit(reference.k_grouped_wgrad_gemm)


@pytest.mark.parametrize("case", list(K_GROUP_CASES))
@pytest.mark.parametrize("with_c", [False, True])
def test_k_grouped_sizes(case, with_c):
    sizes = K_GROUP_CASES[case]
    m, n, g = 24, 16, len(sizes)
    a, b = k_grouped_operands(m, n, E5M2, E4M3)
    c = jnp.asarray(np.random.default_rng(113).standard_normal((g, m, n)).astype(np.float32)) if with_c else None
    out = _k_grouped(a, b, jnp.asarray(sizes, jnp.int32), c)
    assert out.shape == (g, m, n) and out.dtype == jnp.float32
    want = reference_k_grouped_wgrad_f64(a, b, sizes, c)
    starts, ends = k_grouped_offsets(sizes, T)
    for group in range(g):
        if ends[group] <= starts[group]:  # empty: exactly c[g] or zeros
            expected = np.zeros((m, n)) if c is None else np.asarray(c[group])
            np.testing.assert_array_equal(to_f64(out[group]), expected)
        else:
            check(out[group], want[group], F32_BOUND, f"k-grouped {case} group {group}")


@pytest.mark.parametrize(
    "kind_a, kind_b",
    [("tensor", "group_row"), ("row", "tensor"), ("group_row", "row"), ("group_row", "group_row"), ("row", "none")],
)
def test_k_grouped_scales(kind_a, kind_b):
    sizes = [129, 0, 200, 1, 127]
    m, n, g = 20, 24, len(sizes)
    a, b = k_grouped_operands(m, n, E4M3, E5M2)
    sa = scale_of(kind_a, {"tensor": (), "row": (m,), "group_row": (g, m)}, 121)
    sb = scale_of(kind_b, {"tensor": (), "row": (n,), "group_row": (g, n)}, 122)
    c = jnp.asarray(np.random.default_rng(123).standard_normal((g, m, n)).astype(np.float32))
    out = _k_grouped(a, b, jnp.asarray(sizes, jnp.int32), c, scale_a=sa, scale_b=sb)
    want = reference_k_grouped_wgrad_f64(a, b, sizes, c, scale_a=sa, scale_b=sb)
    for group in range(g):
        check(out[group], want[group], F32_BOUND, f"k-grouped {kind_a}/{kind_b} group {group}")


@pytest.mark.parametrize("dtype_a, dtype_b", PAIRS)
def test_k_grouped_dtype_pairs(dtype_a, dtype_b):
    sizes = [256, 100, 244]
    a, b = k_grouped_operands(16, 8, DTYPES[dtype_a], DTYPES[dtype_b])
    out = _k_grouped(a, b, jnp.asarray(sizes, jnp.int32))
    check(out, reference_k_grouped_wgrad_f64(a, b, sizes), F32_BOUND, f"k-grouped {dtype_a}x{dtype_b}")


def test_k_grouped_bf16_output_rounds_the_float32_result_once():
    """out_dtype=bfloat16: the public op (the reference on the CPU) is its float32 result rounded once."""
    sizes = jnp.asarray([129, 0, 200, 1, 127], jnp.int32)
    a, b = k_grouped_operands(20, 24, E4M3, E5M2)
    sa, sb = scale_of("row", {"row": (20,)}, 131), scale_of("group_row", {"group_row": (5, 24)}, 132)
    f32 = jax_dgpt.k_grouped_wgrad_gemm(a, b, sizes, scale_a=sa, scale_b=sb)
    bf16 = jax_dgpt.k_grouped_wgrad_gemm(a, b, sizes, scale_a=sa, scale_b=sb, out_dtype=jnp.bfloat16)
    assert bf16.dtype == jnp.bfloat16 and bf16.shape == f32.shape
    np.testing.assert_array_equal(np.asarray(bf16), np.asarray(f32.astype(jnp.bfloat16)))


def test_k_grouped_one_program_for_every_sizes():
    a, b = k_grouped_operands(16, 8)
    f = jax.jit(lambda a, b, sizes: reference.k_grouped_wgrad_gemm(a, b, sizes))  # a cache of its own
    for sizes in ([300, 0, 129, 171], [1, 599, -4, 100]):
        out = f(a, b, jnp.asarray(sizes, jnp.int32))
        check(out, reference_k_grouped_wgrad_f64(a, b, sizes), F32_BOUND, f"k-grouped traced {sizes}")
    assert f._cache_size() == 1


def test_k_grouped_ignores_nonfinite_columns_outside_the_groups():
    a, b = k_grouped_operands(8, 8)
    sizes = [150, 250]  # total 400 < T

    def poisoned(x):
        values = np.asarray(x).copy()
        values[:, 400:] = np.nan
        return jnp.asarray(values)

    for a_in, b_in in ((poisoned(a), b), (a, poisoned(b))):  # either operand alone must be masked
        out = _k_grouped(a_in, b_in, jnp.asarray(sizes, jnp.int32))
        assert np.all(np.isfinite(np.asarray(out)))
        check(out, reference_k_grouped_wgrad_f64(a, b, sizes), F32_BOUND, "k-grouped NaN past total")


def test_k_grouped_matches_wgrad_per_group():
    a, b = k_grouped_operands(12, 10)
    sizes = [200, 400]
    out = np.asarray(_k_grouped(a, b, jnp.asarray(sizes, jnp.int32)))
    for group, (start, end) in enumerate(zip(*k_grouped_offsets(sizes, T))):
        want = reference_wgrad_f64(a[:, start:end], b[:, start:end])
        check(out[group], want, F32_BOUND, f"k-grouped vs wgrad group {group}")


def test_k_grouped_empty_dimensions():
    f = jax.jit(reference.k_grouped_wgrad_gemm)
    assert f(jnp.zeros((4, 0), E4M3), jnp.zeros((3, 0), E4M3), jnp.array([2, 3], jnp.int32)).shape == (2, 4, 3)
    assert not np.any(np.asarray(f(jnp.zeros((4, 0), E4M3), jnp.zeros((3, 0), E4M3), jnp.array([2], jnp.int32))))
    assert f(jnp.zeros((4, 8), E4M3), jnp.zeros((3, 8), E4M3), jnp.zeros((0,), jnp.int32)).shape == (0, 4, 3)
