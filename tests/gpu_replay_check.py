"""Run by test_gpu_command_buffers.py in a fresh process with XLA_FLAGS set: calls one compiled function
several times with new inputs, masked_m and m_indices, and checks every result against float64."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

import jax_dgpt
from jax_dgpt.testing import (
    contiguous_diffs,
    gemm_diff,
    generate_contiguous_indices,
    generate_fp8,
    masked_diffs,
    to_f64,
)

G, MMAX, N, K = 4, 256, 512, 256


@jax.jit
def step(a, b, a_masked, b_grouped, masked_m, a_contig, m_indices):
    return (
        jax_dgpt.gemm(a, b),
        jax_dgpt.grouped_gemm_masked(a_masked, b_grouped, masked_m, 192),
        jax_dgpt.grouped_gemm_contiguous(a_contig, b_grouped, m_indices),
    )


def main() -> int:
    rng = np.random.default_rng(0)
    b = generate_fp8((N, K), key=1)
    b_grouped = generate_fp8((G, N, K), key=2)
    for call in range(4):
        a = generate_fp8((200, K), key=10 + call)
        a_masked = generate_fp8((G, MMAX, K), key=20 + call)
        masked_m = rng.integers(0, MMAX + 1, size=G).astype(np.int32)
        rows = [int(r) for r in rng.integers(0, 300, size=G)]
        m_indices = generate_contiguous_indices(rows)
        a_contig = generate_fp8((len(m_indices), K), key=30 + call)
        d, dm, dc = step(a, b, a_masked, b_grouped, jnp.asarray(masked_m), a_contig, jnp.asarray(m_indices))

        assert gemm_diff(d, a, b) <= 3e-6, f"call {call}: gemm"
        for g, diff in masked_diffs(dm, a_masked, b_grouped, masked_m).items():
            assert diff <= 3e-6, f"call {call}: masked group {g} calc_diff {diff:.3g}"
        for g, diff in contiguous_diffs(dc, a_contig, b_grouped, m_indices).items():
            assert diff <= 3e-6, f"call {call}: contiguous group {g} calc_diff {diff:.3g}"
        assert np.all(to_f64(dc)[m_indices < 0] == 0), f"call {call}: padding rows not zero"
        print(f"call {call}: masked_m={masked_m.tolist()} rows={rows} ok")
    print("REPLAY OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
