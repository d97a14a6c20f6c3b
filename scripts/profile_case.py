"""Runs jitted jax_dgpt GEMMs for Nsight Compute (`scripts/gpu_check.sh ncu`): one call per case, so the
report holds one dgpt_kernel launch per case (ncu flushes the caches before each replay pass).

    python scripts/profile_case.py 4096x7168x576 64x2112x7168 [--k-interleave] [--k-splits 2] [--block-n 128]
    python scripts/profile_case.py ragged:4x8192x4096x7168 contiguous:4x8192x4096x7168 wgrad:7168x2112x4096

A case is MxNxK (gemm), wgrad:MxNxK (float32 added into c), ragged:/contiguous:GxMxNxK (G groups of
M x U(0.7, 1.3) rows, numpy default_rng(3) as in the benchmark; contiguous pads each to 128 rows), or
k_grouped:GxTxMxN and k_grouped_aligned:GxTxMxN (G groups of T x U(0.7, 1.3) tokens, the aligned case with each
size rounded down to a multiple of 128; float32 added into c).
"""

import argparse
import contextlib

import jax
import jax.numpy as jnp
import numpy as np

import jax_dgpt
from jax_dgpt import forcing, testing
from jax_dgpt.testing import generate_fp8 as fp8


def case(spec: str):
    """(jitted function, its arguments) of one case."""
    layout, _, dims = spec.rpartition(":")
    sizes = [int(x) for x in dims.split("x")]
    if layout in ("", "wgrad"):
        m, n, k = sizes
        a, b = fp8((m, k), 0), fp8((n, k), 1)
        if layout == "wgrad":
            return jax.jit(jax_dgpt.wgrad_gemm, donate_argnums=2), (a, b, jnp.zeros((m, n), jnp.float32))
        return jax.jit(lambda x, y: jax_dgpt.gemm(x, y)), (a, b)
    if layout in ("k_grouped", "k_grouped_aligned"):
        g, tokens, m, n = sizes
        counts = testing.generate_group_rows(g, tokens, 3)
        if layout == "k_grouped_aligned":
            counts = [count // 128 * 128 for count in counts]
        t = int(sum(counts))
        a, b = fp8((m, t), 0), fp8((n, t), 1)
        step = jax.jit(jax_dgpt.k_grouped_wgrad_gemm, donate_argnums=3)
        return step, (a, b, jnp.asarray(counts, jnp.int32), jnp.zeros((g, m, n), jnp.float32))
    g, em, n, k = sizes
    rows = testing.generate_group_rows(g, em, 3)
    a_pad, b, m_indices = testing.contiguous_inputs(rows, n, k, key=4)
    if layout == "contiguous":
        return jax.jit(jax_dgpt.grouped_gemm_contiguous), (a_pad, b, m_indices)
    if layout == "ragged":
        a = a_pad[jnp.asarray(np.nonzero(np.asarray(m_indices) >= 0)[0])]
        return jax.jit(jax_dgpt.grouped_gemm_ragged), (a, b, jnp.asarray(rows, jnp.int32))
    raise SystemExit(f"unknown layout {layout!r} in {spec!r}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument(
        "shapes", nargs="+", help="cases: MxNxK, wgrad:MxNxK, ragged:/contiguous:GxMxNxK, k_grouped[_aligned]:GxTxMxN"
    )
    p.add_argument("--k-interleave", action="store_true", help="force k_interleave (64-row tiles)")
    p.add_argument("--k-splits", type=int, default=None, help="force split-K over this many CTAs")
    p.add_argument("--block-n", type=int, default=None, help="force BLOCK_N")
    args = p.parse_args()
    with contextlib.ExitStack() as forced:
        if args.k_interleave:
            forced.enter_context(forcing.force(k_interleave=1))
        if args.k_splits:
            forced.enter_context(forcing.force(num_k_splits=args.k_splits))
        if args.block_n:
            forced.enter_context(forcing.force(block_n=args.block_n))
        for shape in args.shapes:
            f, operands = case(shape)  # traced inside the forced context
            jax.block_until_ready(f(*operands))
            print(f"profiled {shape}", flush=True)


if __name__ == "__main__":
    main()
