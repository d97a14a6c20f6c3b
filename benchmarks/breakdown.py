"""Where the device time of one training step goes, kernel by kernel (``scripts/gpu_check.sh breakdown``).

    python -m benchmarks.breakdown matmul:1024x7168x7168 moe:8192x1024x1024x16x2 [--calls 10] [--bf16]

A case is ``matmul:MxNxK`` (``fp8_matmul`` forward + backward, bench_training's step) or
``moe:TxHxFxExk`` (the MoE block's training step). Each kernel's device time is summed per call and the
median over calls printed, largest first, with its share of the step: what to make faster next. A custom
call (jax_dgpt's kernels) is listed per HLO instruction, with its target and result shapes from the compiled
program, so the GEMMs and quantizations of one step are told apart. That needs XLA's command buffers off
(``XLA_FLAGS=--xla_gpu_enable_command_buffer=``, as gpu_check.sh's breakdown step sets it): inside one, every
kernel reports the buffer as its HLO instruction. NOTES: the flag must be set before the process starts (jax_dgpt's
import starts the backend), seen on the H200.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
from functools import partial

import jax
import jax.numpy as jnp

from benchmarks import bench_training
from benchmarks.profiling import Timer


def step(spec: str, bf16: bool):
    """The jitted step of one case, its arguments bound."""
    layout, _, dims = spec.partition(":")
    sizes = [int(x) for x in dims.split("x")]
    keys = jax.random.split(jax.random.key(1), 5)
    if layout == "matmul":
        m, n, k = sizes
        x = jax.random.normal(keys[0], (m, k), jnp.bfloat16)
        w = (jax.random.normal(keys[1], (n, k)) * k**-0.5).astype(jnp.bfloat16)
        dy = jax.random.normal(keys[2], (m, n), jnp.bfloat16)
        return partial(bench_training._bf16_step if bf16 else bench_training._fp8_step, x, w, dy)
    if layout == "moe":
        tokens, h, f, e, top_k = sizes
        params, x, ct = bench_training.moe_inputs(tokens, h, f, e)
        return partial(bench_training._moe_step, params, x, ct, top_k, use_fp8=not bf16)
    raise SystemExit(f"unknown case {spec!r}: matmul:MxNxK or moe:TxHxFxExk")


def custom_calls(fn) -> dict[str, str]:
    """HLO instruction name -> "target result-shapes" of each custom call in fn's compiled program."""
    return custom_calls_in(fn.func.lower(*fn.args, **fn.keywords).compile().as_text())


def custom_calls_in(text: str) -> dict[str, str]:
    """The same, from an optimized HLO module's text."""
    calls = {}
    for name, result, target in re.findall(r"%(\S+) = (.+?) custom-call\(.*?custom_call_target=\"(\w+)\"", text):
        shapes = re.sub(r"\{[0-9,]*\}", "", result)  # layouts dropped
        calls[name] = f"{target} {shapes}"
    return calls


def kernel_times(timer: Timer, fn, calls: int) -> dict[str, float]:
    """Median device µs per call of each kernel (a kernel launched twice in a call counts twice); custom
    calls by instruction, the rest by kernel name."""
    for _ in range(3):
        jax.block_until_ready(fn())
    described = custom_calls(fn)
    per_call: list[collections.Counter] = []
    for _, duration, name in timer._trace([fn], calls, with_op=True):
        kernel, _, op = name.rpartition("/")[2].partition(" [")
        op = op.rstrip("]")
        if name.partition(" [")[0] in timer.flush_names:
            per_call.append(collections.Counter())
        elif per_call:
            # NOTES: XLA names a custom call's instruction after its target ("dgpt_quantize_rows.2").
            key = f"{op}: {described[op]}" if op in described else (op if op.startswith("dgpt_") else kernel)
            per_call[-1][key] += duration / 1e3
    names = set().union(*per_call)
    return {name: statistics.median(c[name] for c in per_call) for name in names}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cases", nargs="+")
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--bf16", action="store_true", help="the bf16 step instead of the FP8 one")
    p.add_argument("--top", type=int, default=25, help="kernels listed per case")
    args = p.parse_args()
    if "--xla_gpu_enable_command_buffer= " not in os.environ.get("XLA_FLAGS", "") + " ":
        print("note: XLA command buffers are on: their kernels are listed by name only (see the module docstring)")
    if jax.default_backend() != "gpu":
        raise SystemExit("benchmarks.breakdown times GPU kernels with the JAX profiler: it needs a GPU")
    timer = Timer()
    for spec in args.cases:
        times = kernel_times(timer, step(spec, args.bf16), args.calls)
        total = sum(times.values())
        print(f"\n## {spec}{' (bf16)' if args.bf16 else ''}: {total:.1f} us of kernels per step, {len(times)} kernels")
        print("| kernel | us | share |\n|---|---|---|")
        for name, us in sorted(times.items(), key=lambda item: -item[1])[: args.top]:
            print(f"| {name[:140]} | {us:.1f} | {100 * us / total:.1f}% |")


if __name__ == "__main__":
    main()
