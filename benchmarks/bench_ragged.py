"""The ragged table of benchmarks.bench (--only ragged): ``grouped_gemm_ragged`` on unpadded expert groups
against jax_dgpt's contiguous layout (the same tokens padded to 128-row experts) and ``jax.lax.ragged_dot``
(fp8 and bf16), in one profiler session per shape.

Shapes: the contiguous table's (G, expected rows per group, N, K), plus many small experts (the case where
padding to 128 rows multiplies the work); rows per group are expected × U(0.7, 1.3) (numpy default_rng(3)).
"""

from __future__ import annotations

import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import jax_dgpt
from jax_dgpt import testing

RAGGED = list(testing.CONTIGUOUS_ANCHORS) + [(256, 32, 7168, 2048), (128, 64, 4096, 7168), (256, 32, 2048, 7168)]
TINY = [(3, 60, 256, 256)]

f_ragged = jax.jit(jax_dgpt.grouped_gemm_ragged)
f_contiguous = jax.jit(jax_dgpt.grouped_gemm_contiguous)


@jax.jit
def lax_ragged(x, y, group_sizes):
    return jax.lax.ragged_dot(x, jnp.swapaxes(y, 1, 2), group_sizes, preferred_element_type=jnp.bfloat16)


def label(g, em, n, k) -> str:
    return f"G={g} m={em} N={n} K={k}"


def bench_ragged(timer, shapes, rows, measure, variants=None):
    align = jax_dgpt.get_m_alignment_for_contiguous_layout()
    for g, em, n, k in shapes:
        started = time.perf_counter()
        sizes = testing.generate_group_rows(g, em, 3)
        # The contiguous layout of the same tokens: each group padded to the alignment.
        a_pad, b, m_indices = testing.contiguous_inputs(sizes, n, k, key=4, alignment=align, on_device=True)
        idx = np.asarray(m_indices)
        a = a_pad[jnp.asarray(np.nonzero(idx >= 0)[0])]  # the same rows, unpadded, in group order
        group_sizes = jnp.asarray(np.asarray(sizes, np.int32))
        a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
        row = dict(layout="ragged", shape=label(g, em, n, k), rows=sizes)
        jax.block_until_ready((a, a16, b16))
        row["setup_s"] = time.perf_counter() - started
        baselines = {
            "us": partial(f_ragged, a, b, group_sizes),
            "contiguous_us": partial(f_contiguous, a_pad, b, m_indices),
            "ragged_fp8_us": partial(lax_ragged, a, b, group_sizes),
            "ragged_bf16_us": partial(lax_ragged, a16, b16, group_sizes),
        }

        def diff_of(out, a=a, b=b, sizes=sizes):
            # Per group on the device: the ragged rows as a contiguous-layout index array without padding.
            index = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
            return max(testing.contiguous_diffs(out, a, b, index).values())

        measure(timer, baselines, variants or {}, None, diff_of, row)
        t, valid = row["us"], int(sum(sizes))
        row.update(
            tflops=2 * valid * n * k / t / 1e6,
            gbps=(valid * k + g * n * k + 2 * valid * n) / t / 1e3,
            speedup=row["ragged_fp8_us"] / t,
            speedup_bf16=row["ragged_bf16_us"] / t,
            vs_contiguous=row["contiguous_us"] / t,
            padded_rows=len(idx),
        )
        rows.add(row, started)
