"""Wall time and peak memory of the README's Flax example (jax_dgpt.nn.MoE) on the CPU reference.

    python scripts/cpu_footprint.py                 # the README's sizes: hidden 7168, expert hidden
                                                    # 2048, 64 experts, top-8, 128 tokens
    python scripts/cpu_footprint.py --experts 8     # smaller variants

Runs the README's steps on the CPU device (JAX_PLATFORMS=cpu unless set): build the layer, then
prefill (contiguous layout) and decode with capacity 128 (masked layout) of the same tokens through
``jax.jit`` of ``nnx.merge``, each call twice (the first includes compilation). Prints one line per
step: wall seconds and the process's peak resident memory so far (VmHWM from /proc/self/status,
which covers every allocation of XLA's CPU runtime as well as Python's), then the total.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def peak_rss_gb() -> float:
    """The process's peak resident set size (VmHWM) in GB (10^9 bytes)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=7168)
    parser.add_argument("--expert-hidden", type=int, default=2048)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--capacity", type=int, default=128)
    args = parser.parse_args()

    start = time.perf_counter()
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jax_dgpt import nn

    imported = time.perf_counter() - start
    rows: list[tuple[str, float]] = []

    def step(name, fn):
        begin = time.perf_counter()
        result = jax.block_until_ready(fn())
        seconds = time.perf_counter() - begin
        rows.append((name, seconds))
        print(f"{name:<28}{seconds:9.2f} s   peak RSS {peak_rss_gb():6.2f} GB", flush=True)
        return result

    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({os.cpu_count()} CPUs): MoE hidden {args.hidden}, "
        f"expert hidden {args.expert_hidden}, {args.experts} experts, top-{args.top_k}, {args.tokens} tokens, "
        f"capacity {args.capacity}",
        flush=True,
    )
    print(f"{'import jax, flax, jax_dgpt.nn':<28}{imported:9.2f} s   peak RSS {peak_rss_gb():6.2f} GB", flush=True)
    moe = step(
        "build nn.MoE",
        lambda: nn.MoE(
            hidden=args.hidden,
            expert_hidden=args.expert_hidden,
            num_experts=args.experts,
            top_k=args.top_k,
            rngs=nnx.Rngs(0),
        ),
    )
    # As in the README: jit pure functions of the layer's state.
    graphdef, state = nnx.split(moe)
    prefill = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    decode = jax.jit(lambda state, x: nnx.merge(graphdef, state).decode(x, capacity=args.capacity))
    x = jax.random.normal(jax.random.key(1), (args.tokens, args.hidden), jnp.bfloat16)
    step("prefill, first call", lambda: prefill(state, x))
    step("prefill, second call", lambda: prefill(state, x))
    step("decode, first call", lambda: decode(state, x))
    step("decode, second call", lambda: decode(state, x))
    total = time.perf_counter() - start
    print(f"{'total, from the first import':<28}{total:9.2f} s   peak RSS {peak_rss_gb():6.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
