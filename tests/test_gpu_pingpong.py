"""GPU tests of pingpong: two math warpgroups taking turns at the tensor core.

On 128-row tiles each warpgroup issues its own 64 rows' wgmma for a K block after the other; the arithmetic
is unchanged, so results must be bitwise equal to the kernel without turns. On 64-row tiles a second
warpgroup takes every other stage of the ring (alternate K blocks of the same rows) and hands its sums to the
first, which changes the summation order: those results must match float64 and be reproducible run to run.
The heuristics do not choose pingpong (128-row turns measured no faster, benchmarks/KERNEL_LOG.md); these
tests force it with ``heuristics.force_pingpong()`` on fresh functions, with NaN-poisoned outputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_dgpt
from jax_dgpt import heuristics
from jax_dgpt.testing import assert_close_to_f64, generate_fp8, run_into_poison, to_f64

pytestmark = pytest.mark.gpu

SHAPES = [
    (4096, 7168, 2048),  # an anchor: many tiles per CTA, turns run across tile boundaries
    (200, 1000, 1040),  # M, N and K tails (9 K blocks: an odd number of turns per tile)
    (130, 256, 128),  # one K block per tile
    (4096, 2112, 7168),  # long K
]


def _bits(x) -> np.ndarray:
    return np.asarray(x).view(np.uint16)


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_pingpong_gemm_matches_float64_and_the_plain_kernel(m, n, k):
    a, b = generate_fp8((m, k), key=m + 3), generate_fp8((n, k), key=n + 4)
    with heuristics.force_pingpong():
        out = run_into_poison(lambda x, y: jax_dgpt.gemm(x, y), a, b, out_shape=(m, n))
    assert not np.isnan(to_f64(out)).any(), f"M={m} N={n} K={k}: unwritten elements"
    assert_close_to_f64(out, a, b, context=f"pingpong gemm M={m} N={n} K={k}")
    plain = jax.jit(lambda x, y: jax_dgpt.gemm(x, y))(a, b)
    np.testing.assert_array_equal(_bits(out), _bits(plain))


@pytest.mark.parametrize("forced", [heuristics.force_multicast, heuristics.force_k_splits])
def test_pingpong_with_clusters(forced):
    """Turns inside each CTA of a multicast pair or a split-K cluster (M = 384: a pair's CTA past M skips)."""
    a, b = generate_fp8((384, 4096), key=21), generate_fp8((1000, 4096), key=22)
    plain = jax.jit(lambda x, y: jax_dgpt.gemm(x, y))(a, b)
    with heuristics.force_pingpong(), forced(2):
        out = jax.jit(lambda x, y: jax_dgpt.gemm(x, y))(a, b)
    assert_close_to_f64(out, a, b, context=f"pingpong with {forced.__name__}(2)")
    if forced is heuristics.force_multicast:  # split-K sums in another order than the plain kernel
        np.testing.assert_array_equal(_bits(out), _bits(plain))


def test_pingpong_grouped_layouts():
    g, n, k = 3, 512, 1024
    b = generate_fp8((g, n, k), key=31)
    a = generate_fp8((g, 512, k), key=32)
    masked_m = jnp.asarray([512, 131, 0], jnp.int32)
    plain_masked = jax.jit(jax_dgpt.grouped_gemm_masked, static_argnums=3)(a, b, masked_m, 256)
    idx = np.full(640, -1, np.int32)
    idx[:200], idx[256:512], idx[512:600] = 0, 2, 1
    ac = generate_fp8((640, k), key=33)
    m_indices = jnp.asarray(idx)
    plain_contiguous = jax.jit(jax_dgpt.grouped_gemm_contiguous)(ac, b, m_indices)
    with heuristics.force_pingpong():
        masked = jax.jit(lambda x, y, m: jax_dgpt.grouped_gemm_masked(x, y, m, 256))(a, b, masked_m)
        contiguous = jax.jit(lambda x, y, i: jax_dgpt.grouped_gemm_contiguous(x, y, i))(ac, b, m_indices)
    for gi, rows in enumerate([512, 131]):
        assert_close_to_f64(masked[gi, :rows], a[gi, :rows], b[gi], context=f"pingpong masked group {gi}")
        np.testing.assert_array_equal(_bits(masked[gi, :rows]), _bits(plain_masked[gi, :rows]))
    np.testing.assert_array_equal(_bits(contiguous), _bits(plain_contiguous))
    assert_close_to_f64(contiguous[256:512], ac[256:512], b[2], context="pingpong contiguous expert 2")


# --- 64-row tiles: a second math warpgroup takes the odd K blocks of the same rows ------------------
SHAPES_64 = [
    (16, 2112, 7168),  # decode: 56 K blocks, replaces the default's split-K cluster
    (40, 1000, 1040),  # 9 K blocks: warpgroup 0 takes 5, warpgroup 1 takes 4; M, N and K tails
    (64, 256, 128),  # one K block: warpgroup 1 has nothing to add
    (1, 7168, 2048),  # M = 1: the trimmed A box
    (16, 32768, 512),  # 4 K blocks, 256 tiles on 132 CTAs: the stage ring wraps across tiles
]


@pytest.mark.parametrize("m,n,k", SHAPES_64)
def test_pingpong_64_row_tiles_match_float64_and_are_reproducible(m, n, k):
    config = heuristics.select_config("normal", m, n, k, 1, 132, pingpong=1)
    assert (config.block_m, config.pingpong, config.num_k_splits) == (64, 1, 1), config
    a, b = generate_fp8((m, k), key=m + 5), generate_fp8((n, k), key=n + 6)
    with heuristics.force_pingpong():
        out = run_into_poison(lambda x, y: jax_dgpt.gemm(x, y), a, b, out_shape=(m, n))
        again = jax.jit(lambda x, y: jax_dgpt.gemm(x, y))(a, b)
    assert not np.isnan(to_f64(out)).any(), f"M={m} N={n} K={k}: unwritten elements"
    assert_close_to_f64(out, a, b, context=f"pingpong 64-row gemm M={m} N={n} K={k}")
    # The two halves meet in a fixed order: the same bits on every run (not the plain kernel's bits).
    np.testing.assert_array_equal(_bits(out), _bits(again))


@pytest.mark.parametrize("m,n,k", [(40, 1024, 384), (8, 4096, 1152)])
def test_pingpong_64_row_tiles_with_two_stages_and_odd_k_blocks(m, n, k):
    """Two stages and 3 or 9 K blocks per tile: which warpgroup reads a stage must not depend on the tile."""
    a, b = generate_fp8((m, k), key=m + 7), generate_fp8((n, k), key=n + 8)
    with heuristics.force_pingpong(), heuristics.force_tile(num_stages=2):
        out = run_into_poison(lambda x, y: jax_dgpt.gemm(x, y), a, b, out_shape=(m, n))
    assert not np.isnan(to_f64(out)).any(), f"M={m} N={n} K={k}: unwritten elements"
    assert_close_to_f64(out, a, b, context=f"pingpong 64-row, 2 stages, M={m} N={n} K={k}")


def test_pingpong_64_row_grouped_layouts():
    g, n, k = 3, 384, 1536
    b = generate_fp8((g, n, k), key=41)
    a = generate_fp8((g, 128, k), key=42)
    masked_m = jnp.asarray([100, 7, 0], jnp.int32)  # expected_m = 32: 64-row tiles
    ac = generate_fp8((64, k), key=43)
    idx = np.full(64, -1, np.int32)
    idx[:40] = 1  # M = 64: one 64-row block of expert 1 plus padding
    m_indices = jnp.asarray(idx)
    with heuristics.force_pingpong():
        masked = jax.jit(lambda x, y, m: jax_dgpt.grouped_gemm_masked(x, y, m, 32))(a, b, masked_m)
        contiguous = run_into_poison(
            lambda x, y, i: jax_dgpt.grouped_gemm_contiguous(x, y, i), ac, b, m_indices, out_shape=(64, n)
        )
    for gi, rows in enumerate([100, 7]):
        assert_close_to_f64(masked[gi, :rows], a[gi, :rows], b[gi], context=f"pingpong 64-row masked group {gi}")
    assert_close_to_f64(contiguous[:40], ac[:40], b[1], context="pingpong 64-row contiguous expert 1")
    assert not np.asarray(to_f64(contiguous[40:])).any(), "padding rows must come out as zero"
