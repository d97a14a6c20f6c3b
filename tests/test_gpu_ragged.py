"""GPU tests of grouped_gemm_ragged and ragged_dot (marked `gpu`): groups of any size from device-side sizes.

Each group's rows are compared with float64 products of the same fp8 values; outputs land in a NaN-filled,
donated buffer, so every row (those past the sizes' total must be exactly zero) is proven written.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_dgpt
from jax_dgpt import testing
from jax_dgpt.testing import (
    calc_diff,
    generate_fp8,
    generate_scales,
    k_grouped_offsets,
    record_diff,
    reference_ragged_f64,
    run_into_poison,
    to_f64,
)

pytestmark = pytest.mark.gpu

BF16_BOUND, F32_BOUND = testing.BF16_CALC_DIFF_BOUND, testing.F32_CALC_DIFF_BOUND

SIZES = {
    "edge sizes": [0, 1, 127, 129, 256, 1000],
    "one group holds every row": [1536],
    "256 groups of a few rows": [int(x) for x in np.random.default_rng(1).integers(0, 12, size=256)],
    "total below M": [300, 0, 500],
    "total above M (clamped)": [900, 900, 700],
    "negative counts as 0": [-5, 640, -1, 384],
}


def check_groups(out, ref, sizes, m, bound, context):
    got = to_f64(out)
    starts, ends = k_grouped_offsets(sizes, m)
    assert not np.isnan(got).any(), f"{context}: unwritten (NaN) elements"
    for g, (s, e) in enumerate(zip(starts, ends)):
        if e > s:
            assert record_diff(calc_diff(got[s:e], ref[s:e]), f"{context} g={g}") <= bound, (context, g)
    total = int(ends[-1]) if len(ends) else 0
    np.testing.assert_array_equal(got[total:], 0.0, err_msg=f"{context}: rows past the total")


@pytest.mark.parametrize("name", sorted(SIZES))
@pytest.mark.parametrize("n,k", [(512, 1024), (260, 200)])  # the second pads N (to 264) and K (to 208)
def test_ragged_matches_float64(name, n, k):
    sizes, m = SIZES[name], 1536
    g = len(sizes)
    a = generate_fp8((m, k), key=1)
    b = generate_fp8((g, n, k), key=2, dtype=jnp.float8_e5m2)
    group_sizes = jnp.asarray(sizes, jnp.int32)
    out = run_into_poison(jax_dgpt.grouped_gemm_ragged, a, b, group_sizes, out_shape=(m, n), dtype=jnp.bfloat16)
    check_groups(out, reference_ragged_f64(a, b, sizes), sizes, m, BF16_BOUND, f"ragged {name} N={n} K={k}")


def test_ragged_scaled_float32_and_bitwise_reruns():
    sizes, m, n, k = [100, 0, 333, 64, 500], 1024, 384, 512
    a, b = generate_fp8((m, k), key=3), generate_fp8((len(sizes), n, k), key=4)
    sa, sb = generate_scales((m,), 5), generate_scales((len(sizes), n), 6)
    f = jax.jit(lambda a, b, s: jax_dgpt.grouped_gemm_ragged(a, b, s, scale_a=sa, scale_b=sb, out_dtype=jnp.float32))
    group_sizes = jnp.asarray(sizes, jnp.int32)
    out = f(a, b, group_sizes)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(f(a, b, group_sizes)))
    ref = reference_ragged_f64(a, b, sizes, scale_a=sa, scale_b=sb)
    check_groups(out, ref, sizes, m, F32_BOUND, "scaled ragged f32")


def test_ragged_same_program_for_new_sizes():
    m, n, k, g = 2048, 512, 768, 8
    a, b = generate_fp8((m, k), key=7), generate_fp8((g, n, k), key=8)
    f = jax.jit(jax_dgpt.grouped_gemm_ragged)
    rng = np.random.default_rng(9)
    for _ in range(3):
        sizes = [int(x) for x in rng.integers(0, 400, size=g)]
        out = f(a, b, jnp.asarray(sizes, jnp.int32))
        check_groups(out, reference_ragged_f64(a, b, sizes), sizes, m, BF16_BOUND, f"ragged {sizes}")
    assert f._cache_size() == 1


def test_rows_without_a_group_stay_zero_whatever_the_scales():
    # Rows past the total get no scale applied: Inf and NaN there must not turn the zeros into NaN.
    sizes, m, n, k = [100, 0, 60], 256, 256, 256
    a, b = generate_fp8((m, k), key=12), generate_fp8((len(sizes), n, k), key=13)
    sa = generate_scales((m,), 14).at[160:].set(jnp.inf).at[200:].set(jnp.nan)
    f = lambda a, b, s: jax_dgpt.grouped_gemm_ragged(a, b, s, scale_a=sa, out_dtype=jnp.float32)  # noqa: E731
    out = run_into_poison(f, a, b, jnp.asarray(sizes, jnp.int32), out_shape=(m, n), dtype=jnp.float32)
    check_groups(out, reference_ragged_f64(a, b, sizes, scale_a=sa), sizes, m, F32_BOUND, "ragged, inf scales")


def test_ragged_dot_matches_jax_lax_ragged_dot():
    m, k, n, sizes = 700, 256, 320, [200, 0, 301, 150]
    lhs = generate_fp8((m, k), key=10)
    rhs = generate_fp8((len(sizes), k, n), key=11)
    group_sizes = jnp.asarray(sizes, jnp.int32)
    ours = jax.jit(jax_dgpt.ragged_dot)(lhs, rhs, group_sizes)
    theirs = jax.lax.ragged_dot(
        lhs.astype(jnp.float32), rhs.astype(jnp.float32), group_sizes, precision=jax.lax.Precision.HIGHEST
    )
    assert ours.dtype == jnp.bfloat16 and ours.shape == (m, n)
    assert record_diff(calc_diff(to_f64(ours), np.asarray(theirs, np.float64)), "ragged_dot") <= BF16_BOUND
