"""Quick end-to-end check on a GPU: one jitted call per layout against float64, with timings of the first
call (JIT compile included) and a warm call.

`fp8` and `diff` stay importable for the scripts next to this one (sanitize_case.py, profile_case.py):
they are jax_dgpt.testing's generate_fp8 and calc_diff.
"""

import time

import jax
import numpy as np

import jax_dgpt
from jax_dgpt.testing import calc_diff as diff
from jax_dgpt.testing import contiguous_diffs, contiguous_inputs, gemm_diff, masked_diffs, masked_inputs, to_f64
from jax_dgpt.testing import generate_fp8 as fp8

__all__ = ["diff", "fp8", "main"]


def main():
    print("devices:", jax.devices(), "num_sms:", jax_dgpt.get_num_sms())
    m, n, k = 4096, 7168, 2048
    a, b = fp8((m, k), 0), fp8((n, k), 1)
    f = jax.jit(jax_dgpt.gemm)
    t0 = time.perf_counter()
    out = f(a, b).block_until_ready()
    t1 = time.perf_counter()
    out = f(a, b).block_until_ready()
    t2 = time.perf_counter()
    print(
        f"gemm {m}x{n}x{k}: calc_diff={gemm_diff(out, a, b):.3g} nan={np.isnan(to_f64(out)).sum()} "
        f"first call {1e3 * (t1 - t0):.0f} ms, warm call {1e3 * (t2 - t1):.2f} ms"
    )

    am, bg, masked_m = masked_inputs([256, 100, 0, 7], 256, n, k, key=2)
    dm = jax.jit(jax_dgpt.grouped_gemm_masked, static_argnums=3)(am, bg, masked_m, 128)
    print(f"masked G=4: worst calc_diff={max(masked_diffs(dm, am, bg, masked_m).values()):.3g}")

    # experts 1 and 3 hold rows (200 and 44), experts 0 and 2 none
    ac, bc, m_indices = contiguous_inputs([0, 200, 0, 44], n, k, key=4)
    dc = jax.jit(jax_dgpt.grouped_gemm_contiguous)(ac, bc, m_indices)
    diffs = contiguous_diffs(dc, ac, bc, m_indices)
    padding = to_f64(dc)[np.asarray(m_indices) < 0]
    print(
        f"contiguous: expert1 calc_diff={diffs[1]:.3g} expert3 calc_diff={diffs[3]:.3g} "
        f"padding max |x|={np.abs(padding).max():.3g}"
    )


if __name__ == "__main__":
    main()
