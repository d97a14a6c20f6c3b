"""GPU tests of split-K (clusters of CTAs sharing a tile, reduced through distributed shared memory).

The heuristics choose 2 splits for small-M, long-K normal GEMMs; these tests force 2, 4 and 8 splits with
``jax_dgpt.forcing.force(num_k_splits=...)`` on fresh functions and hold them to the same contract as every path:
float64 agreement (calc_diff <= 3e-6), NaN-poisoned outputs fully written, bitwise reproducibility.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_dgpt
from jax_dgpt import forcing
from jax_dgpt.testing import (
    assert_close_to_f64,
    calc_diff,
    generate_fp8,
    matmul_nt_f64,
    record_diff,
    run_into_poison,
    to_f64,
)

pytestmark = pytest.mark.gpu

SHAPES = [(64, 2112, 7168), (128, 7168, 2048), (7, 4096, 7168), (64, 7168, 16384), (256, 4096, 384), (4096, 2112, 7168)]


@pytest.mark.parametrize("splits", [2, 4, 8])
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_split_k_gemm_matches_float64(m, n, k, splits):
    a, b = generate_fp8((m, k), key=m + splits), generate_fp8((n, k), key=n + splits)
    with forcing.force(num_k_splits=splits):
        out = run_into_poison(lambda x, y: jax_dgpt.gemm(x, y), a, b, out_shape=(m, n))
    assert not np.isnan(to_f64(out)).any(), f"M={m} N={n} K={k} splits={splits}: unwritten elements"
    assert_close_to_f64(out, a, b, context=f"split-K {splits} gemm M={m} N={n} K={k}")


@pytest.mark.parametrize("splits", [2, 4])
def test_split_k_is_bitwise_deterministic(splits):
    a, b = generate_fp8((64, 7168), key=1), generate_fp8((4096, 7168), key=2)
    with forcing.force(num_k_splits=splits):
        f = jax.jit(lambda x, y: jax_dgpt.gemm(x, y))
        first, second = (np.asarray(f(a, b)).view(np.uint16) for _ in range(2))
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("splits", [2, 4])
def test_split_k_grouped_layouts(splits):
    k, n, groups = 2048, 512, 4
    b = generate_fp8((groups, n, k), key=3)
    masked_m = np.array([100, 0, 64, 7], np.int32)
    a_masked = generate_fp8((groups, 128, k), key=4)
    rows = [130, 0, 5, 256]
    idx = np.concatenate([np.r_[np.full(r, g), np.full(-r % 128, -1)] for g, r in enumerate(rows)]).astype(np.int32)
    a_contig = generate_fp8((len(idx), k), key=5)
    with forcing.force(num_k_splits=splits):
        dm = jax.jit(lambda x, y, z: jax_dgpt.grouped_gemm_masked(x, y, z, 64))(a_masked, b, jnp.asarray(masked_m))
        dc = jax.jit(lambda x, y, z: jax_dgpt.grouped_gemm_contiguous(x, y, z))(a_contig, b, jnp.asarray(idx))
    dm64, dc64 = to_f64(dm), to_f64(dc)
    for g, r in enumerate(masked_m):
        if r:
            diff = record_diff(calc_diff(dm64[g, :r], matmul_nt_f64(a_masked[g, :r], b[g])), f"split masked g={g}")
            assert diff <= 3e-6, (splits, g, diff)
    for g, r in enumerate(rows):
        if r:
            sel = np.nonzero(idx == g)[0]
            diff = record_diff(
                calc_diff(dc64[sel], matmul_nt_f64(a_contig[jnp.asarray(sel)], b[g])), f"split contig g={g}"
            )
            assert diff <= 3e-6, (splits, g, diff)
    assert np.all(dc64[idx < 0] == 0)
