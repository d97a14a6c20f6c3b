"""Run by test_gpu_command_buffers.py in a fresh process with XLA_FLAGS set: calls one compiled function
several times with new inputs, masked_m and m_indices, and checks every result against float64."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

import jax_dgpt
from jax_dgpt.testing import calc_diff, generate_contiguous_indices, generate_fp8, to_f64

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
    b64 = to_f64(b_grouped)
    for call in range(4):
        a = generate_fp8((200, K), key=10 + call)
        a_masked = generate_fp8((G, MMAX, K), key=20 + call)
        masked_m = rng.integers(0, MMAX + 1, size=G).astype(np.int32)
        rows = [int(r) for r in rng.integers(0, 300, size=G)]
        m_indices = generate_contiguous_indices(rows)
        a_contig = generate_fp8((len(m_indices), K), key=30 + call)
        d, dm, dc = step(a, b, a_masked, b_grouped, jnp.asarray(masked_m), a_contig, jnp.asarray(m_indices))

        assert calc_diff(to_f64(d), to_f64(a) @ to_f64(b).T) <= 3e-6, f"call {call}: gemm"
        am, dm64 = to_f64(a_masked), to_f64(dm)
        for g in range(G):
            rows_g = int(masked_m[g])
            if rows_g:
                ref = am[g, :rows_g] @ b64[g].T
                assert calc_diff(dm64[g, :rows_g], ref) <= 3e-6, f"call {call}: masked group {g}"
        ac, dc64 = to_f64(a_contig), to_f64(dc)
        for i0 in range(0, len(m_indices), 128):
            e = m_indices[i0]
            block = slice(i0, i0 + 128)
            valid = m_indices[block] >= 0
            if e >= 0:
                ref = ac[block][valid] @ b64[e].T
                assert calc_diff(dc64[block][valid], ref) <= 3e-6, f"call {call}: contiguous block {i0}"
            assert np.all(dc64[block][~valid] == 0), f"call {call}: padding rows not zero at {i0}"
        print(f"call {call}: masked_m={masked_m.tolist()} rows={rows} ok")
    print("REPLAY OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
