"""GPU tests of k_interleave: two math warpgroups of one CTA take alternate K blocks of the same 64 rows.

Warpgroup w reads the ring's stages with iter % 2 == w and warpgroup 1 hands its fp32 sums to warpgroup 0,
which adds them and stores the tile. The summation order differs from the plain kernel, so results must
match float64 (calc_diff <= 3e-6), write every element of a NaN-poisoned output and be reproducible run to
run. The heuristics do not choose it (not yet measured on a GPU, benchmarks/KERNEL_LOG.md); these tests
force it with ``jax_dgpt.forcing.force(k_interleave=1)`` on fresh functions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_dgpt
from jax_dgpt import forcing, heuristics
from jax_dgpt.testing import assert_close_to_f64, generate_fp8, run_into_poison, to_f64

pytestmark = pytest.mark.gpu


def _bits(x) -> np.ndarray:
    return np.asarray(x).view(np.uint16)


SHAPES_64 = [
    (16, 2112, 7168),  # decode: 56 K blocks, replaces the default's split-K cluster
    (40, 1000, 1040),  # 9 K blocks: warpgroup 0 takes 5, warpgroup 1 takes 4; M, N and K tails
    (64, 256, 128),  # one K block: warpgroup 1 has nothing to add
    (1, 7168, 2048),  # M = 1: the trimmed A box
    (16, 32768, 512),  # 4 K blocks, 256 tiles on 132 CTAs: the stage ring wraps across tiles
]


@pytest.mark.parametrize("m,n,k", SHAPES_64)
def test_k_interleave_matches_float64_and_is_reproducible(m, n, k):
    config = heuristics.select_config(heuristics.Problem("normal", m, n, k, 1), 132, (("k_interleave", 1),))
    assert (config.block_m, config.k_interleave, config.num_k_splits) == (64, 1, 1), config
    a, b = generate_fp8((m, k), key=m + 5), generate_fp8((n, k), key=n + 6)
    with forcing.force(k_interleave=1):
        out = run_into_poison(lambda x, y: jax_dgpt.gemm(x, y), a, b, out_shape=(m, n))
        again = jax.jit(lambda x, y: jax_dgpt.gemm(x, y))(a, b)
    assert not np.isnan(to_f64(out)).any(), f"M={m} N={n} K={k}: unwritten elements"
    assert_close_to_f64(out, a, b, context=f"k_interleave gemm M={m} N={n} K={k}")
    # The two halves meet in a fixed order: the same bits on every run (not the plain kernel's bits).
    np.testing.assert_array_equal(_bits(out), _bits(again))


@pytest.mark.parametrize("m,n,k", [(40, 1024, 384), (8, 4096, 1152)])
def test_k_interleave_with_two_stages_and_odd_k_blocks(m, n, k):
    """Two stages and 3 or 9 K blocks per tile: which warpgroup reads a stage must not depend on the tile."""
    a, b = generate_fp8((m, k), key=m + 7), generate_fp8((n, k), key=n + 8)
    with forcing.force(k_interleave=1), forcing.force(num_stages=2):
        out = run_into_poison(lambda x, y: jax_dgpt.gemm(x, y), a, b, out_shape=(m, n))
    assert not np.isnan(to_f64(out)).any(), f"M={m} N={n} K={k}: unwritten elements"
    assert_close_to_f64(out, a, b, context=f"k_interleave, 2 stages, M={m} N={n} K={k}")


def test_k_interleave_grouped_layouts():
    g, n, k = 3, 384, 1536
    b = generate_fp8((g, n, k), key=41)
    a = generate_fp8((g, 128, k), key=42)
    masked_m = jnp.asarray([100, 7, 0], jnp.int32)  # expected_m = 32: 64-row tiles
    ac = generate_fp8((64, k), key=43)
    idx = np.full(64, -1, np.int32)
    idx[:40] = 1  # M = 64: one 64-row block of expert 1 plus padding
    m_indices = jnp.asarray(idx)
    with forcing.force(k_interleave=1):
        masked = jax.jit(lambda x, y, m: jax_dgpt.grouped_gemm_masked(x, y, m, 32))(a, b, masked_m)
        contiguous = run_into_poison(
            lambda x, y, i: jax_dgpt.grouped_gemm_contiguous(x, y, i), ac, b, m_indices, out_shape=(64, n)
        )
    for gi, rows in enumerate([100, 7]):
        assert_close_to_f64(masked[gi, :rows], a[gi, :rows], b[gi], context=f"k_interleave masked group {gi}")
    assert_close_to_f64(contiguous[:40], ac[:40], b[1], context="k_interleave contiguous expert 1")
    assert not np.asarray(to_f64(contiguous[40:])).any(), "padding rows must come out as zero"
