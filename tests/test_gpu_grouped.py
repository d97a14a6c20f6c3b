"""GPU tests of the M-grouped ops (contiguous and masked layouts) on an sm_90a GPU.

Per group, valid rows must match a float64 product with calc_diff <= 3e-6 (docs/numerical_contract.md);
outputs are written into NaN-poisoned buffers so every valid row is proven written; contiguous padding
rows must be exactly zero. Masked rows at or past masked_m[g] are unspecified and not checked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_dgpt
from jax_dgpt.testing import (
    CONTIGUOUS_ANCHORS,
    MASKED_ANCHORS,
    MASKED_MMAX,
    contiguous_diffs,
    contiguous_inputs,
    generate_contiguous_indices,
    generate_fp8,
    generate_group_rows,
    masked_diffs,
    masked_inputs,
    masked_valid_rows,
    record_diff,
    run_into_poison,
    to_f64,
)

pytestmark = pytest.mark.gpu

ALIGN = 128


def check_contiguous(out, a, b, m_indices, context):
    out64 = to_f64(out)
    assert not np.isnan(out64).any(), f"{context}: unwritten (NaN) rows"
    idx = np.asarray(m_indices)
    for g, diff in contiguous_diffs(out, a, b, idx).items():
        record_diff(diff, f"{context} group {g}")
        assert diff <= 3e-6, f"{context}: group {g} ({(idx == g).sum()} rows) calc_diff {diff:.3g}"
    groups = b.shape[0]
    padding = (idx < 0) | (idx >= groups)
    assert np.all(out64[padding] == 0), f"{context}: padding rows are not exactly zero"


def run_contiguous(rows, n, k, seed, m_indices=None):
    a, b, idx = contiguous_inputs(rows, n, k, key=seed, alignment=ALIGN)
    if m_indices is not None:
        idx = jnp.asarray(m_indices)
        a = generate_fp8((len(m_indices), k), key=seed)
    out = run_into_poison(jax_dgpt.grouped_gemm_contiguous, a, b, idx, out_shape=(idx.shape[0], n))
    return out, a, b, np.asarray(idx)


@pytest.mark.parametrize("groups,expected_m,n,k", CONTIGUOUS_ANCHORS)
def test_contiguous_anchor_shapes(groups, expected_m, n, k):
    rows = generate_group_rows(groups, expected_m, groups + n)
    out, a, b, idx = run_contiguous(rows, n, k, seed=k)
    check_contiguous(out, a, b, idx, f"contiguous G={groups} m={expected_m} N={n} K={k}")


@pytest.mark.parametrize(
    "rows",
    [
        [0, 300, 0, 5, 128],  # empty groups, a group of exactly one block
        [1000],  # G = 1
        [3, 0, 1] * 85 + [2],  # G = 256, a few rows each
    ],
)
def test_contiguous_random_groups(rows):
    out, a, b, idx = run_contiguous(rows, 256, 384, seed=len(rows))
    check_contiguous(out, a, b, idx, f"contiguous rows={rows[:6]}... G={len(rows)}")


def test_contiguous_whole_padding_blocks_and_out_of_range():
    idx = np.full(7 * ALIGN, -1, np.int32)
    idx[0:100] = 1  # then 28 padding rows
    # block 1 (rows 128-255) is entirely -1
    idx[256:384] = 0
    idx[384:400] = 5  # out of range (G = 3): treated as padding
    idx[512:600] = -7  # negative, not -1: treated as padding
    idx[640:700] = 2
    out, a, b, _ = run_contiguous([0, 0, 0], 512, 256, seed=11, m_indices=idx)
    check_contiguous(out, a, b, idx, "contiguous with padding blocks and out-of-range indices")


def test_contiguous_is_bitwise_deterministic():
    rows = generate_group_rows(8, 700, 1)
    idx = jnp.asarray(generate_contiguous_indices(rows, ALIGN))
    a, b = generate_fp8((idx.shape[0], 2048), key=1), generate_fp8((8, 4096, 2048), key=2)
    f = jax.jit(jax_dgpt.grouped_gemm_contiguous)
    first, second = (np.asarray(f(a, b, idx)).view(np.uint16) for _ in range(2))
    np.testing.assert_array_equal(first, second)


def check_masked(out, a, b, masked_m, context):
    out64 = to_f64(out)
    for g, rows in enumerate(masked_valid_rows(masked_m, a.shape[1])):
        assert not np.isnan(out64[g, :rows]).any(), f"{context}: group {g} has unwritten valid rows"
    for g, diff in masked_diffs(out, a, b, masked_m).items():
        record_diff(diff, f"{context} group {g}")
        assert diff <= 3e-6, f"{context}: group {g} calc_diff {diff:.3g}"


def run_masked(masked_m, mmax, n, k, expected_m, seed):
    a, b, mm = masked_inputs(masked_m, mmax, n, k, key=seed)
    out = run_into_poison(
        lambda x, y, z: jax_dgpt.grouped_gemm_masked(x, y, z, expected_m),
        a,
        b,
        mm,
        out_shape=(len(masked_m), mmax, n),
    )
    return out, a, b


@pytest.mark.parametrize("groups,expected_m,n,k", MASKED_ANCHORS)
def test_masked_anchor_shapes(groups, expected_m, n, k):
    masked_m = generate_group_rows(groups, expected_m, groups * 3 + k)
    out, a, b = run_masked(masked_m, MASKED_MMAX, n, k, expected_m, seed=n)
    check_masked(out, a, b, masked_m, f"masked G={groups} m={expected_m} N={n} K={k}")


@pytest.mark.parametrize(
    "masked_m,mmax",
    [
        ([0, 17, 0, 200, 64], 200),  # empty groups, a full group, a partial block
        ([150], 150),  # G = 1, Mmax not a multiple of the block
        ([i % 5 for i in range(256)], 16),  # G = 256, a few rows each
        ([500, -3, 64, 2**31 - 1], 100),  # above Mmax (clamped) and negative (no rows)
        ([3, 7, 0], 7),  # Mmax below one block: the kernel loads an 8-row A box
    ],
)
def test_masked_random_groups(masked_m, mmax):
    out, a, b = run_masked(masked_m, mmax, 256, 384, expected_m=32, seed=len(masked_m))
    check_masked(out, a, b, masked_m, f"masked masked_m={masked_m[:6]}... Mmax={mmax}")


def test_masked_is_bitwise_deterministic():
    a, b = generate_fp8((4, 512, 2048), key=3), generate_fp8((4, 4096, 2048), key=4)
    mm = jnp.asarray([512, 300, 0, 77], jnp.int32)
    f = jax.jit(jax_dgpt.grouped_gemm_masked, static_argnums=3)
    first, second = (np.asarray(f(a, b, mm, 256)).view(np.uint16) for _ in range(2))
    np.testing.assert_array_equal(first[0, :512], second[0, :512])
    np.testing.assert_array_equal(first[1, :300], second[1, :300])
    np.testing.assert_array_equal(first[3, :77], second[3, :77])
