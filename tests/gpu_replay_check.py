"""Run by test_gpu_command_buffers.py in a fresh process with XLA_FLAGS set: calls one compiled function
several times with new inputs, masked_m and m_indices, and checks every result against float64."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

import jax_dgpt
from jax_dgpt.testing import (
    F32_CALC_DIFF_BOUND,
    calc_diff,
    contiguous_diffs,
    gemm_diff,
    generate_contiguous_indices,
    generate_fp8,
    masked_diffs,
    reference_k_grouped_wgrad_f64,
    reference_ragged_f64,
    to_f64,
)

G, MMAX, N, K = 4, 256, 512, 256
T = 640  # columns of the k-grouped operands


@jax.jit
def step(a, b, a_masked, b_grouped, masked_m, a_contig, m_indices, a_t, b_t, group_sizes, c, ragged_sizes):
    return (
        jax_dgpt.gemm(a, b),
        jax_dgpt.grouped_gemm_masked(a_masked, b_grouped, masked_m, 192),
        jax_dgpt.grouped_gemm_contiguous(a_contig, b_grouped, m_indices),
        jax_dgpt.k_grouped_wgrad_gemm(a_t, b_t, group_sizes, c),
        jax_dgpt.grouped_gemm_ragged(a_masked[0], b_grouped, ragged_sizes),
    )


def main() -> int:
    rng = np.random.default_rng(0)
    b = generate_fp8((N, K), key=1)
    b_grouped = generate_fp8((G, N, K), key=2)
    a_t, b_t = generate_fp8((200, T), key=3, dtype=jnp.float8_e5m2), generate_fp8((N, T), key=4)
    for call in range(4):
        a = generate_fp8((200, K), key=10 + call)
        a_masked = generate_fp8((G, MMAX, K), key=20 + call)
        masked_m = rng.integers(0, MMAX + 1, size=G).astype(np.int32)
        rows = [int(r) for r in rng.integers(0, 300, size=G)]
        m_indices = generate_contiguous_indices(rows)
        a_contig = generate_fp8((len(m_indices), K), key=30 + call)
        sizes = [int(x) for x in rng.integers(-20, 300, size=G)]  # new sizes each call; totals above T clamp
        c = np.asarray(rng.standard_normal((G, 200, N)), np.float32)
        ragged_sizes = [int(x) for x in rng.integers(-10, 90, size=G)]  # totals below and above MMAX
        d, dm, dc, dk, dr = step(
            a, b, a_masked, b_grouped, jnp.asarray(masked_m), a_contig, jnp.asarray(m_indices),
            a_t, b_t, jnp.asarray(sizes, jnp.int32), jnp.asarray(c), jnp.asarray(ragged_sizes, jnp.int32),
        )  # fmt: skip

        assert gemm_diff(d, a, b) <= 3e-6, f"call {call}: gemm"
        for g, diff in masked_diffs(dm, a_masked, b_grouped, masked_m).items():
            assert diff <= 3e-6, f"call {call}: masked group {g} calc_diff {diff:.3g}"
        for g, diff in contiguous_diffs(dc, a_contig, b_grouped, m_indices).items():
            assert diff <= 3e-6, f"call {call}: contiguous group {g} calc_diff {diff:.3g}"
        assert np.all(to_f64(dc)[m_indices < 0] == 0), f"call {call}: padding rows not zero"
        ref = reference_k_grouped_wgrad_f64(a_t, b_t, sizes, c)
        for g in range(G):
            assert calc_diff(to_f64(dk[g]), ref[g]) <= F32_CALC_DIFF_BOUND, (
                f"call {call}: k_grouped group {g} sizes {sizes}"
            )
        ragged = to_f64(dr)
        total = min(sum(max(s, 0) for s in ragged_sizes), MMAX)
        if total > 0:  # all-zero arrays have no calc_diff
            ref = reference_ragged_f64(a_masked[0], b_grouped, ragged_sizes)
            assert calc_diff(ragged, ref) <= 3e-6, f"call {call}: ragged sizes {ragged_sizes}"
        assert np.all(ragged[total:] == 0), f"call {call}: ragged rows past the total not zero"
        print(f"call {call}: masked_m={masked_m.tolist()} rows={rows} group_sizes={sizes} ragged={ragged_sizes} ok")
    print("REPLAY OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
