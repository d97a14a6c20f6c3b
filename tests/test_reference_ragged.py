"""The ragged layout's jnp reference (jax_dgpt.reference.grouped_gemm_ragged, jitted on the CPU) against the
float64 numpy reference of jax_dgpt.testing, and the layout's rule (ragged_bounds, k_grouped_offsets).

Group g owns rows [offset_g, offset_g + size_g) of a, offsets the exclusive cumulative sum of the clamped sizes
(negative sizes count as 0, the running end clamped to M); rows past the total are exactly zero.

Bounds as in test_reference_scaled.py: a bfloat16 output sits at the bf16 rounding floor (calc_diff ~1.4e-6;
bound 3e-6), a float32 output differs from float64 only by fp32 summation and the two fp32 scale
multiplications (bound 1e-12). Every element is also checked on its own (one bf16 rounding of the float64
value, plus fp32 summation), so a row given the wrong group fails even where calc_diff would barely move.
"""

from __future__ import annotations

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_dgpt import reference
from jax_dgpt.testing import (
    calc_diff,
    generate_fp8,
    generate_group_rows,
    generate_scales,
    k_grouped_offsets,
    matmul_nt_f64,
    ragged_diffs,
    record_diff,
    reference_ragged_f64,
    to_f64,
)

E4M3, E5M2 = jnp.float8_e4m3fn, jnp.float8_e5m2
DTYPES = {"e4m3": E4M3, "e5m2": E5M2}
BF16_BOUND = 3e-6
F32_BOUND = 1e-12
N, K = 24, 96

_ragged = jax.jit(reference.grouped_gemm_ragged, static_argnames="out_dtype")


def total_rows(sizes, m: int) -> int:
    return int(k_grouped_offsets(sizes, m)[1][-1]) if len(sizes) else 0


def operands(m: int, groups: int, dtype_a=E4M3, dtype_b=E4M3, key: int = 0):
    a = generate_fp8((m, K), key=1000 + key, dtype=dtype_a)
    b = generate_fp8((groups, N, K), key=2000 + key, dtype=dtype_b)
    return a, b


def check(out, a, b, sizes, want, out_dtype, context: str, magnitude_scale=1.0) -> None:
    """Shape, dtype, rows past the total exactly zero, the calc_diff bound, and each element.

    Elementwise: one rounding to ``out_dtype`` (2^-8 relative for bf16; for float32, 2^-22 covers it and
    the two scale multiplications) plus fp32 summation over K, at most ``K 2^-24 sum_k |a b|`` (times the
    scales, ``magnitude_scale``).
    """
    got = to_f64(out)
    m = a.shape[0]
    assert out.shape == (m, b.shape[1]) and out.dtype == jnp.dtype(out_dtype), (context, out.shape, out.dtype)
    total = total_rows(sizes, m)
    assert np.all(got[total:] == 0.0), f"{context}: rows past the total {total} are not zero"
    assert np.all(np.isfinite(got)), context
    f32 = jnp.dtype(out_dtype) == jnp.float32
    bound = F32_BOUND if f32 else BF16_BOUND
    diff = record_diff(calc_diff(got, want), context)
    assert diff <= bound, f"{context}: calc_diff {diff:.3g} > {bound:.3g}"
    assert_elementwise(got, a, b, sizes, want, out_dtype, context, magnitude_scale)


def assert_elementwise(got, a, b, sizes, want, out_dtype, context: str, magnitude_scale=1.0) -> None:
    starts, ends = k_grouped_offsets(sizes, a.shape[0])
    magnitude = np.zeros_like(want)
    for g, (start, end) in enumerate(zip(starts.tolist(), ends.tolist())):
        if end > start:
            magnitude[start:end] = matmul_nt_f64(a[start:end], b[g], absolute=True)
    relative = 2.0**-22 if jnp.dtype(out_dtype) == jnp.float32 else 2.0**-8
    allowed = relative * np.abs(want) + a.shape[1] * 2.0**-24 * magnitude * magnitude_scale
    error = np.abs(got - want)
    worst = np.unravel_index(np.argmax(error - allowed), error.shape) if error.size else None
    assert np.all(error <= allowed), f"{context}: element {worst} got {got[worst]} want {want[worst]}"


# --- the rule ---------------------------------------------------------------------------------------
RULE_CASES = [
    [0, 1, 127, 129],
    [300, 250, 100, 40, -3, 7],
    [5, -2, 3],
    [2**31 - 1, 2**31 - 1, 5],
    [-(2**31), 4],
    [600],
    [0, 0, 0],
]


@pytest.mark.parametrize("sizes", RULE_CASES)
def test_ragged_bounds_match_the_rule(sizes):
    starts, ends = jax.jit(reference.ragged_bounds, static_argnums=1)(jnp.asarray(sizes, jnp.int32), 600)
    assert starts.dtype == ends.dtype == jnp.int32
    want_starts, want_ends = k_grouped_offsets(sizes, 600)
    np.testing.assert_array_equal(np.asarray(starts), want_starts)
    np.testing.assert_array_equal(np.asarray(ends), want_ends)


def test_ragged_bounds_is_the_k_grouped_rule():
    assert reference.k_grouped_bounds is reference.ragged_bounds
    starts, ends = reference.ragged_bounds(jnp.array([300, 250, 100, 40, -3, 7], jnp.int32), 600)
    np.testing.assert_array_equal(np.asarray(starts), [0, 300, 550, 600, 600, 600])
    np.testing.assert_array_equal(np.asarray(ends), [300, 550, 600, 600, 600, 600])
    empty = reference.ragged_bounds(jnp.zeros((0,), jnp.int32), 10)
    assert empty[0].shape == empty[1].shape == (0,)


def test_ragged_bounds_one_program_for_every_sizes():
    f = jax.jit(lambda sizes: reference.ragged_bounds(sizes, 100))
    for sizes in ([10, 20, 30], [-5, 200, 1]):
        np.testing.assert_array_equal(np.asarray(f(jnp.asarray(sizes, jnp.int32))[1]), k_grouped_offsets(sizes, 100)[1])
    assert f._cache_size() == 1


def test_float64_reference_follows_the_rule_row_by_row():
    # An independent reading of the rule: row i belongs to the first group whose running end passes i.
    m, sizes = 40, [7, -3, 0, 20, 30, 4]  # ends 7, 7, 7, 27, 40 (cut), 40 (empty)
    a, b = operands(m, len(sizes), key=1)
    sa, sb = generate_scales((m,), 3), generate_scales((len(sizes), N), 4)
    want = reference_ragged_f64(a, b, sizes, scale_a=sa, scale_b=sb)
    x, y, sa64, sb64 = to_f64(a), to_f64(b), to_f64(sa), to_f64(sb)
    end, owner = 0, []
    for g, size in enumerate(sizes):
        end_g = min(end + max(size, 0), m)
        owner += [g] * (end_g - end)
        end = end_g
    assert len(owner) == m and owner[:7] == [0] * 7 and owner[7:27] == [3] * 20 and owner[27:] == [4] * 13
    for i, g in enumerate(owner):
        np.testing.assert_allclose(want[i], (x[i] @ y[g].T) * sa64[i] * sb64[g], rtol=1e-15, atol=0)
    short = reference_ragged_f64(a, b, [5, 10])
    assert np.all(short[15:] == 0.0) and np.any(short[:15])


# --- values ------------------------------------------------------------------------------------------
M = 300
SIZE_CASES = {
    "edge_sizes": (M, [0, 1, 127, 129]),  # total 257 < M
    "one_group": (M, [M]),
    "one_holds_all": (M, [0, 0, M, 0]),
    "many_small": (None, generate_group_rows(256, 4, 7)),  # 256 groups of 2..5 rows, M = their total
    "below_total": (M, [50, 17, 60]),
    "above_total": (M, [100, 150, 80, 9]),  # the third is cut at M, the fourth empty
    "negative": (M, [40, -7, 30, -(2**31), 20, -1]),
    "all_empty": (M, [0, -1, 0]),
    "tail_only": (M, [15, 17, 31, 33, 1]),
}


@pytest.mark.parametrize("case", list(SIZE_CASES))
def test_ragged_sizes(case):
    m, sizes = SIZE_CASES[case]
    m = sum(sizes) if m is None else m
    a, b = operands(m, len(sizes), key=len(sizes))
    out = _ragged(a, b, jnp.asarray(sizes, jnp.int32))
    want = reference_ragged_f64(a, b, sizes)
    check(out, a, b, sizes, want, jnp.bfloat16, f"ragged {case}")
    # ragged_diffs: one value per non-empty group, equal to calc_diff of the group's rows on the host.
    diffs = ragged_diffs(out, a, b, sizes)
    starts, ends = k_grouped_offsets(sizes, m)
    assert sorted(diffs) == [g for g in range(len(sizes)) if ends[g] > starts[g]]
    got = to_f64(out)
    for g, value in diffs.items():
        rows = slice(int(starts[g]), int(ends[g]))
        np.testing.assert_allclose(value, calc_diff(got[rows], want[rows]), rtol=1e-9, atol=1e-15)
        if (ends[g] - starts[g]) * N >= 512:  # below that, bf16 rounding alone may pass 3e-6
            assert value <= BF16_BOUND, (case, g, value)


@pytest.mark.parametrize("dtype_a, dtype_b", list(itertools.product(DTYPES, DTYPES)))
def test_ragged_dtype_pairs(dtype_a, dtype_b):
    sizes = [130, 0, 1, 100]
    a, b = operands(M, len(sizes), DTYPES[dtype_a], DTYPES[dtype_b], key=11)
    assert a.dtype == DTYPES[dtype_a] and b.dtype == DTYPES[dtype_b]
    out = _ragged(a, b, jnp.asarray(sizes, jnp.int32), out_dtype=jnp.float32)
    want = reference_ragged_f64(a, b, sizes)
    check(out, a, b, sizes, want, jnp.float32, f"ragged {dtype_a}x{dtype_b} float32")
    assert all(value <= F32_BOUND for value in ragged_diffs(out, a, b, sizes).values())


# Every scale shape of a and of b, with both outputs and several dtype pairings.
SCALE_CASES = [
    ("none", "tensor", "e4m3", "e5m2", jnp.bfloat16),
    ("tensor", "group", "e5m2", "e4m3", jnp.float32),
    ("row", "group_col", "e5m2", "e5m2", jnp.bfloat16),
    ("row", "none", "e4m3", "e4m3", jnp.float32),
    ("row", "group_col", "e4m3", "e5m2", jnp.float32),
    ("tensor", "tensor", "e4m3", "e4m3", jnp.bfloat16),
    ("row", "group", "e4m3", "e4m3", jnp.bfloat16),
    ("none", "group_col", "e4m3", "e4m3", jnp.float32),
]


@pytest.mark.parametrize("kind_a, kind_b, dtype_a, dtype_b, out_dtype", SCALE_CASES)
def test_ragged_scales(kind_a, kind_b, dtype_a, dtype_b, out_dtype):
    sizes = [0, 129, 1, 127, 30]  # total 287 < M
    groups = len(sizes)
    a, b = operands(M, groups, DTYPES[dtype_a], DTYPES[dtype_b], key=21)
    shapes_a = {"tensor": (), "row": (M,)}
    shapes_b = {"tensor": (), "group": (groups,), "group_col": (groups, N)}
    sa = None if kind_a == "none" else generate_scales(shapes_a[kind_a], 23)
    sb = None if kind_b == "none" else generate_scales(shapes_b[kind_b], 24)
    out = _ragged(a, b, jnp.asarray(sizes, jnp.int32), scale_a=sa, scale_b=sb, out_dtype=out_dtype)
    want = reference_ragged_f64(a, b, sizes, scale_a=sa, scale_b=sb)
    context = f"ragged {kind_a}/{kind_b} {dtype_a}x{dtype_b} {jnp.dtype(out_dtype).name}"
    # The elementwise bound's summation term scales like the values.
    magnitude_scale = np.ones((M, N))
    if sa is not None:
        magnitude_scale *= to_f64(sa) if sa.ndim == 0 else to_f64(sa)[:, None]
    if sb is not None:
        sb64 = to_f64(sb)
        for g, (start, end) in enumerate(zip(*k_grouped_offsets(sizes, M))):
            magnitude_scale[start:end] *= sb64 if sb64.ndim == 0 else sb64[g]
    check(out, a, b, sizes, want, out_dtype, context, magnitude_scale)


def test_ragged_scales_multiply_in_the_stated_order():
    # Integer fp8 values and small K: every product and sum is exact in float32, so the float32 output
    # must equal (acc * sa) * sb evaluated in float32, left to right, bit for bit.
    m, sizes = 40, [10, 0, 25]
    rng = np.random.default_rng(5)
    a = jnp.asarray(rng.integers(-8, 9, (m, 32)).astype(np.float32)).astype(E4M3)
    b = jnp.asarray(rng.integers(-8, 9, (3, 16, 32)).astype(np.float32)).astype(E4M3)
    sa, sb = generate_scales((m,), 6), generate_scales((3, 16), 7)
    got = np.asarray(_ragged(a, b, jnp.asarray(sizes, jnp.int32), scale_a=sa, scale_b=sb, out_dtype=jnp.float32))
    want = np.zeros((m, 16), np.float32)
    x, y, sa32, sb32 = to_f64(a), to_f64(b), np.asarray(sa), np.asarray(sb)
    for g, (start, end) in enumerate(zip(*k_grouped_offsets(sizes, m))):
        acc = (x[start:end] @ y[g].T).astype(np.float32)  # exact
        want[start:end] = (acc * sa32[start:end, None]) * sb32[g][None, :]
    np.testing.assert_array_equal(got, want)
    bf16 = _ragged(a, b, jnp.asarray(sizes, jnp.int32), scale_a=sa, scale_b=sb)
    np.testing.assert_array_equal(np.asarray(bf16), np.asarray(jnp.asarray(want).astype(jnp.bfloat16)))


def test_ragged_one_program_for_every_sizes():
    a, b = operands(M, 4, key=31)
    f = jax.jit(lambda a, b, sizes: reference.grouped_gemm_ragged(a, b, sizes))  # a cache of its own
    for sizes in ([300, 0, 0, 0], [1, 127, -4, 129], [0, 0, 0, 0]):
        out = f(a, b, jnp.asarray(sizes, jnp.int32))
        check(out, a, b, sizes, reference_ragged_f64(a, b, sizes), jnp.bfloat16, f"ragged traced {sizes}")
    assert f._cache_size() == 1


def test_rows_past_the_total_stay_zero_under_nonfinite_inputs():
    sizes = [100, 3, 60]  # total 163: rows 163.. hold NaN in a and inf/NaN in scale_a
    a, b = operands(M, len(sizes), key=41)
    values = np.asarray(a).copy()
    values[163:] = np.nan
    poisoned = jnp.asarray(values)
    assert np.all(np.isnan(to_f64(poisoned)[163:]))
    sa = np.asarray(generate_scales((M,), 42)).copy()
    sa[163:] = np.inf
    sa[200:] = np.nan
    for scale_a in (None, jnp.asarray(sa)):
        for out_dtype in (jnp.bfloat16, jnp.float32):
            out = _ragged(poisoned, b, jnp.asarray(sizes, jnp.int32), scale_a=scale_a, out_dtype=out_dtype)
            clean_sa = None if scale_a is None else jnp.asarray(np.where(np.isfinite(sa), sa, 1.0).astype(np.float32))
            want = reference_ragged_f64(a, b, sizes, scale_a=clean_sa)
            check(out, a, b, sizes, want, out_dtype, f"ragged NaN past total {jnp.dtype(out_dtype).name}")


def test_a_wrong_output_fails_the_checks():
    # The metric and the per-group diffs can fail: rows given the neighbouring group's weight.
    sizes = [128, 128, 44]
    a, b = operands(M, len(sizes), key=51)
    good = _ragged(a, b, jnp.asarray(sizes, jnp.int32))
    wrong = _ragged(a, b[::-1], jnp.asarray(sizes, jnp.int32))
    want = reference_ragged_f64(a, b, sizes)
    assert calc_diff(to_f64(good), want) <= BF16_BOUND < calc_diff(to_f64(wrong), want)
    diffs = ragged_diffs(wrong, a, b, sizes)
    assert diffs[0] > 1e-2 and diffs[2] > 1e-2  # group 1 keeps its own weight (the middle of three)
    shifted = _ragged(a, b, jnp.asarray([127, 129, 44], jnp.int32))  # one row in the wrong group
    with pytest.raises(AssertionError, match="element"):
        assert_elementwise(to_f64(shifted), a, b, sizes, want, jnp.bfloat16, "shifted boundary")
    nan_row = np.asarray(good).copy()
    nan_row[5] = np.nan
    assert not ragged_diffs(jnp.asarray(nan_row), a, b, sizes)[0] <= BF16_BOUND


def test_ragged_diffs_batches_groups_of_different_sizes(monkeypatch):
    # Batches of at most 2 groups (a tiny weight budget) must give the same values as one batch.
    import jax_dgpt.testing as testing

    sizes = [200, 3, 0, 5, 1, 60, 2, 9]
    a, b = operands(M, len(sizes), key=61)
    out = _ragged(a, b, jnp.asarray(sizes, jnp.int32))
    once = ragged_diffs(out, a, b, sizes)
    monkeypatch.setattr(testing, "_DIFF_WEIGHT_BYTES", 2 * N * K * 8)
    batched = testing.ragged_diffs(out, a, b, sizes)
    assert sorted(once) == sorted(batched) == [0, 1, 3, 4, 5, 6, 7]
    for g in once:
        np.testing.assert_allclose(batched[g], once[g], rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("m, n, k, groups", [(0, 16, 32, 2), (64, 0, 32, 2), (64, 16, 0, 2), (64, 16, 32, 0)])
@pytest.mark.parametrize("out_dtype", [jnp.bfloat16, jnp.float32])
def test_ragged_empty_dimensions(m, n, k, groups, out_dtype):
    a, b = jnp.ones((m, k), E4M3), jnp.ones((groups, n, k), E4M3)
    sizes = jnp.full((groups,), 40, jnp.int32)
    out = _ragged(a, b, sizes, out_dtype=out_dtype)
    assert out.shape == (m, n) and out.dtype == out_dtype and not np.any(np.asarray(out, np.float32))
    diffs = ragged_diffs(out, a, b, np.asarray(sizes))
    assert sorted(diffs) == ([] if m == 0 or groups == 0 else [0, 1]) and not any(diffs.values())


def test_ragged_program_multiplies_chunks_only():
    # Cost and temporaries: every dot takes at most CHUNK_ROWS rows, and for a bf16 output no float32
    # array has M or more rows (the weights of one group, [N, K], are the largest float32 values).
    m, k, groups = 1000, 48, 3
    a, b = jnp.zeros((m, k), E4M3), jnp.zeros((groups, N, k), E4M3)
    sa, sb = jnp.ones((m,), jnp.float32), jnp.ones((groups, N), jnp.float32)
    sizes = jnp.zeros((groups,), jnp.int32)
    f = reference.grouped_gemm_ragged
    text = str(jax.make_jaxpr(f)(a, b, sizes)) + str(jax.make_jaxpr(f)(a, b, sizes, scale_a=sa, scale_b=sb))
    dots = re.findall(r"f32\[(\d+),(\d+)\] = dot_general", text)
    assert dots and all(int(rows) <= reference.CHUNK_ROWS for rows, _ in dots), dots
    big_f32 = [rows for rows in re.findall(r"f32\[(\d+),\d+\]", text) if int(rows) >= m]
    assert not big_f32, big_f32
