"""Runs jitted jax_dgpt GEMMs for Nsight Compute (`scripts/gpu_check.sh ncu`): one call per shape, so the
report holds one dgpt_kernel launch per shape (ncu flushes the caches before each replay pass).

    python scripts/profile_case.py 4096x7168x576 64x2112x7168 [--k-interleave] [--k-splits 2] [--block-n 128]
"""

import argparse
import contextlib

import jax

import jax_dgpt
from jax_dgpt import forcing
from jax_dgpt.testing import generate_fp8 as fp8


def main():
    p = argparse.ArgumentParser()
    p.add_argument("shapes", nargs="+", help="MxNxK of normal GEMMs")
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
            m, n, k = (int(x) for x in shape.split("x"))
            a, b = fp8((m, k), 0), fp8((n, k), 1)
            f = jax.jit(lambda x, y: jax_dgpt.gemm(x, y))  # traced inside the forced context
            jax.block_until_ready(f(a, b))
            print(f"profiled {shape}", flush=True)


if __name__ == "__main__":
    main()
