"""GPU tests of 256-row tiles (``block_m_double``: each math warpgroup computes two 64-row blocks in turn).

The heuristics take them for large normal GEMMs with a bf16 output; these tests force ``block_m=256`` on fresh
functions, so every output kind and edge goes through them: M not a multiple of 256 (a partial second wave), a
trimmed A box (M < 256), K tails, N not a multiple of the tile, fused scales, float32 outputs and accumulation
into c; and the masked layout, which takes them forced only (groups whose rows end in a tile's first or second
row wave, an empty group, Mmax not a multiple of 256, scales and a float32 output). Same contract as every path:
float64 agreement, NaN-poisoned outputs fully written, bitwise reruns.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_dgpt
from jax_dgpt import forcing, heuristics, testing
from jax_dgpt.heuristics import Problem
from jax_dgpt.testing import (
    calc_diff,
    generate_fp8,
    generate_scales,
    masked_inputs,
    masked_valid_rows,
    record_diff,
    reference_gemm_f64,
    reference_masked_f64,
    run_into_poison,
    to_f64,
)

pytestmark = pytest.mark.gpu

DOUBLE = dict(block_m=256)
# (M, N, K): whole waves; a partial second wave (M % 256 in (0, 128]) and a partial first one; M < 256 (the
# trimmed A box); K % 128 != 0; N % block_n != 0; N % 8 != 0 (the wrapper pads N).
SHAPES = [(4096, 7168, 2048), (300, 2112, 7168), (1000, 1000, 576), (200, 256, 4112), (513, 4096, 16), (5, 128, 256)]


def diff(out, ref, context: str) -> float:
    return record_diff(calc_diff(to_f64(out), ref), context)


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_double_rows_match_float64(m, n, k):
    a, b = generate_fp8((m, k), key=m + 1), generate_fp8((n, k), key=n + 2)
    with forcing.force(**DOUBLE):
        out = run_into_poison(lambda x, y: jax_dgpt.gemm(x, y), a, b, out_shape=(m, n))
    assert not np.isnan(to_f64(out)).any(), f"M={m} N={n} K={k}: unwritten elements"
    assert diff(out, reference_gemm_f64(a, b), f"block_m 256 M={m} N={n} K={k}") <= testing.BF16_CALC_DIFF_BOUND


@pytest.mark.parametrize("out_dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "f32"])
@pytest.mark.parametrize("m,n,k", [(1000, 2112, 4096), (256, 136, 1024)])
def test_double_rows_scaled(m, n, k, out_dtype):
    a, b = generate_fp8((m, k), key=3), generate_fp8((n, k), key=4, dtype=jnp.float8_e5m2)
    sa, sb = generate_scales((m,), 5), generate_scales((n,), 6)
    with forcing.force(**DOUBLE):
        gemm = lambda x, y: jax_dgpt.gemm(x, y, scale_a=sa, scale_b=sb, out_dtype=out_dtype)  # noqa: E731
        out = run_into_poison(gemm, a, b, out_shape=(m, n), dtype=out_dtype)
    bound = testing.BF16_CALC_DIFF_BOUND if out_dtype == jnp.bfloat16 else testing.F32_CALC_DIFF_BOUND
    ref = reference_gemm_f64(a, b, scale_a=sa, scale_b=sb)
    assert diff(out, ref, f"block_m 256 scaled {jnp.dtype(out_dtype).name} M={m} N={n} K={k}") <= bound


def test_double_rows_accumulate_into_c():
    m, n, k = 777, 1040, 2048
    a, b = generate_fp8((m, k), key=7), generate_fp8((n, k), key=8)
    c = jax.random.normal(jax.random.key(9), (m, n), jnp.float32)
    expected = reference_gemm_f64(a, b) + to_f64(c)
    with forcing.force(**DOUBLE):
        out = jax.jit(lambda a, b, c: jax_dgpt.wgrad_gemm(a, b, c), donate_argnums=2)(a, b, c)
    assert diff(out, expected, "block_m 256 wgrad += c") <= testing.F32_CALC_DIFF_BOUND


def test_double_rows_bitwise_reruns_and_heuristics_choice():
    m, n, k = 4096, 7168, 4096
    assert heuristics.select_config(Problem("normal", m, n, k, 1), 132).block_m == 256
    a, b = generate_fp8((m, k), key=10), generate_fp8((n, k), key=11)
    f = jax.jit(jax_dgpt.gemm)  # the heuristics' own choice: 256 x 128 tiles
    first, second = (np.asarray(f(a, b)).view(np.uint16) for _ in range(2))
    np.testing.assert_array_equal(first, second)
    # Tiles of 128 rows give the same sums in the same order: the same bits.
    with forcing.force(block_m=128):
        third = np.asarray(jax.jit(jax_dgpt.gemm)(a, b)).view(np.uint16)
    np.testing.assert_array_equal(first, third)


# masked_m per group and Mmax: rows ending in the first and in the second row wave of a tile, an empty group, a
# whole tile; Mmax not a multiple of 256 (the last tile's rows past Mmax lie outside the group's matrix).
MASKED = [([992, 0, 300, 256], 1024), ([1, 129, 700], 700), ([4096], 4096)]


@pytest.mark.parametrize("masked_m,mmax", MASKED, ids=["mixed", "partial", "one-group"])
def test_double_rows_masked(masked_m, mmax):
    n, k = 640, 1024
    a, b, mm = masked_inputs(masked_m, mmax, n, k, key=len(masked_m) + mmax)
    masked = jax.jit(lambda x, y, z: jax_dgpt.grouped_gemm_masked(x, y, z, 512))
    with forcing.force(block_m=256, block_n=128):
        out = run_into_poison(masked, a, b, mm, out_shape=(len(masked_m), mmax, n))
    out64, ref = to_f64(out), reference_masked_f64(a, b, mm)
    for g, rows in enumerate(masked_valid_rows(masked_m, mmax)):
        assert not np.isnan(out64[g, :rows]).any(), f"group {g}: unwritten valid rows"
        if rows:
            assert diff(out64[g, :rows], ref[g, :rows], f"block_m 256 masked group {g}") <= testing.BF16_CALC_DIFF_BOUND
    # The same sums as 128-row tiles of the same width, on every valid row.
    with forcing.force(block_m=128, block_n=128):
        plain = np.asarray(jax.jit(lambda x, y, z: jax_dgpt.grouped_gemm_masked(x, y, z, 512))(a, b, mm))
    for g, rows in enumerate(masked_valid_rows(masked_m, mmax)):
        np.testing.assert_array_equal(np.asarray(out)[g, :rows].view(np.uint16), plain[g, :rows].view(np.uint16))


def test_double_rows_masked_scaled_f32():
    masked_m, mmax, n, k = [700, 33], 768, 384, 2048
    a, b, mm = masked_inputs(masked_m, mmax, n, k, key=21)
    sa, sb = generate_scales((2, mmax), 22), generate_scales((2, n), 23)
    masked = lambda x, y, z: jax_dgpt.grouped_gemm_masked(  # noqa: E731
        x, y, z, 512, scale_a=sa, scale_b=sb, out_dtype=jnp.float32
    )
    with forcing.force(block_m=256, block_n=128):
        out = run_into_poison(masked, a, b, mm, out_shape=(2, mmax, n), dtype=jnp.float32)
    out64, ref = to_f64(out), reference_masked_f64(a, b, mm, scale_a=sa, scale_b=sb)
    for g, rows in enumerate(masked_valid_rows(masked_m, mmax)):
        got = out64[g, :rows]
        assert not np.isnan(got).any(), f"group {g}: unwritten valid rows"
        assert diff(got, ref[g, :rows], f"block_m 256 masked scaled f32 group {g}") <= testing.F32_CALC_DIFF_BOUND
