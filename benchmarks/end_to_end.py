"""End-to-end figures: host overhead per call, cold JIT compile per kernel, first call with a warm cache.

    python -m benchmarks.end_to_end [--out DIR]        (from the repository root)

Host overhead = (wall time of one jitted program making many GEMM calls - its device time) / calls, for
jax_dgpt and for XLA's FP8 dot side by side; a tiny shape shows the launch cost itself (its kernels are
shorter). The same measurement runs again in a fresh process with XLA command buffers on for custom calls
(COMMAND_BUFFER_FLAGS: the program replays as CUDA graphs, so per-call host work drops out after the first run).
Compile and first-call times run in fresh subprocesses: the first jitted call with an empty DG_JIT_CACHE_DIR
(XLA compile + kernel compile), then again with the cache that call filled (XLA compile + cache load); the
kernel's cold compile is the difference.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial

import jax
import jax.numpy as jnp

import jax_dgpt
from benchmarks.bench import xla_dot
from benchmarks.profiling import Timer
from jax_dgpt.testing import hopper_gpu_visible

REPO = pathlib.Path(__file__).resolve().parent.parent

FIRST_CALL = """
import os, time, json
t0 = time.perf_counter()
import jax, jax.numpy as jnp, numpy as np
import jax_dgpt
a = jnp.asarray(np.ones(({m}, {k}), np.float32).astype(jnp.float8_e4m3fn))
b = jnp.asarray(np.ones(({n}, {k}), np.float32).astype(jnp.float8_e4m3fn))
jax.block_until_ready((a, b))
t1 = time.perf_counter()
jax.jit(jax_dgpt.gemm)(a, b).block_until_ready()
t2 = time.perf_counter()
print(json.dumps(dict(import_s=t1 - t0, first_call_s=t2 - t1)))
"""


def run_json(code: str, cache_dir: str) -> dict:
    env = dict(os.environ, DG_JIT_CACHE_DIR=cache_dir)
    env.pop("DG_JIT_DISABLE_CACHE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compile_times(m: int, n: int, k: int) -> dict:
    """First jitted call in a fresh process with an empty kernel cache (cold), then with the cache it filled
    (warm); kernel_compile_s = cold - warm first call (the XLA compile is in both)."""
    with tempfile.TemporaryDirectory() as cache:
        cold = run_json(FIRST_CALL.format(m=m, n=n, k=k), cache)
        warm = run_json(FIRST_CALL.format(m=m, n=n, k=k), cache)
    return dict(cold=cold, warm=warm, kernel_compile_s=max(cold["first_call_s"] - warm["first_call_s"], 0.0))


def host_overhead(timer: Timer, m: int, n: int, k: int, calls: int = 32, repeats: int = 20, rounds: int = 9) -> dict:
    """Host overhead per GEMM call inside one jitted program of `calls` calls (the issue's definition).

    overhead = (wall time per program - device time per program) / calls: zero when the GPU is the bottleneck
    (launches hide behind kernels), the launch cost per call when the kernels are shorter than it. Each call
    gets its own A and B, so XLA can neither merge the dots (DotMerger) nor deduplicate the custom calls.
    The wall time is the median over `rounds` rounds of `repeats` back-to-back programs each, and
    ``wall_spread`` is (slowest - fastest round) / median: one round alone moved by tens of percent between
    runs (2026-12-01: 0.7-4.2 us per call committed, 0.96-10.8 measured again).
    """
    keys = jax.random.split(jax.random.key(0), 2)
    a_all = jax.random.normal(keys[0], (calls, m, k), jnp.float32).astype(jnp.float8_e4m3fn)
    b_all = jax.random.normal(keys[1], (calls, n, k), jnp.float32).astype(jnp.float8_e4m3fn)
    a_list, b_list = tuple(a_all[i] for i in range(calls)), tuple(b_all[i] for i in range(calls))
    jax.block_until_ready((a_list, b_list))
    del a_all, b_all

    programs = {
        "jax_dgpt": jax.jit(lambda xs, ys: tuple(jax_dgpt.gemm(x, y) for x, y in zip(xs, ys))),
        "xla": jax.jit(lambda xs, ys: tuple(xla_dot(x, y) for x, y in zip(xs, ys))),
    }
    result = {}
    for name, fn in programs.items():
        (device_us,) = timer.time_us(partial(fn, a_list, b_list), calls=9, warmup=2)
        jax.block_until_ready(fn(a_list, b_list))
        per_round = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(repeats):
                out = fn(a_list, b_list)
            jax.block_until_ready(out)
            per_round.append((time.perf_counter() - t0) / repeats * 1e6)
        wall_us = statistics.median(per_round)
        result[name] = dict(
            calls_per_program=calls,
            wall_us_per_call=wall_us / calls,
            wall_spread=(max(per_round) - min(per_round)) / wall_us,
            kernel_us=device_us / calls,
            overhead_us=max(wall_us - device_us, 0.0) / calls,
        )
    return result


# XLA flags that put custom calls (ours are command-buffer compatible) and library GEMMs into CUDA graphs
# even for short programs: the program then replays as one graph launch.
COMMAND_BUFFER_FLAGS = (
    "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL --xla_gpu_graph_min_graph_size=1"
)


def print_overhead(label: str, shape: str, r: dict) -> None:
    print(
        f"host overhead{label} {shape}: jax_dgpt {r['jax_dgpt']['overhead_us']:.2f} us/call "
        f"(wall {r['jax_dgpt']['wall_us_per_call']:.2f}, spread {r['jax_dgpt'].get('wall_spread', 0):.0%}, "
        f"kernel {r['jax_dgpt']['kernel_us']:.2f}); "
        f"XLA dot {r['xla']['overhead_us']:.2f} us/call (wall {r['xla']['wall_us_per_call']:.2f}, "
        f"spread {r['xla'].get('wall_spread', 0):.0%}, kernel {r['xla']['kernel_us']:.2f}); "
        f"{r['jax_dgpt']['calls_per_program']} calls per jitted program",
        flush=True,
    )


def overhead_with_command_buffers(shapes) -> dict:
    """The host-overhead measurement again in a fresh process with COMMAND_BUFFER_FLAGS added to XLA_FLAGS."""
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + COMMAND_BUFFER_FLAGS).strip())
    spec = ",".join(f"{m}x{n}x{k}" for m, n, k in shapes)
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.end_to_end", "--host-overhead-only", spec],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=".")
    p.add_argument("--host-overhead-only", default="", help="internal: MxNxK,... ; print host overheads as JSON")
    args = p.parse_args()
    if args.host_overhead_only:
        timer = Timer()
        chosen = [tuple(int(x) for x in s.split("x")) for s in args.host_overhead_only.split(",")]
        print(json.dumps({f"{m}x{n}x{k}": host_overhead(timer, m, n, k) for m, n, k in chosen}))
        return 0
    if not hopper_gpu_visible():
        print("benchmarks.end_to_end needs a Hopper GPU (compute capability 9.0)", file=sys.stderr)
        return 2
    shapes = [(4096, 7168, 2048), (128, 2112, 7168), (64, 7168, 576)]
    report = {"host_overhead": {}, "compile": {}}
    timer = Timer()
    for m, n, k in [(64, 256, 128)] + shapes:
        r = host_overhead(timer, m, n, k)
        report["host_overhead"][f"{m}x{n}x{k}"] = r
        print_overhead("", f"{m}x{n}x{k}", r)
    try:
        graphs = overhead_with_command_buffers([(64, 256, 128)] + shapes)
        report["host_overhead_command_buffers"] = dict(xla_flags=COMMAND_BUFFER_FLAGS, **graphs)
        for shape, r in graphs.items():
            print_overhead(" (XLA command buffers)", shape, r)
    except subprocess.CalledProcessError as error:
        print(f"host overhead with command buffers failed:\n{error.stderr[-2000:]}", flush=True)
    for m, n, k in shapes:
        r = report["compile"][f"{m}x{n}x{k}"] = compile_times(m, n, k)
        print(
            f"compile {m}x{n}x{k}: first jitted call {r['cold']['first_call_s'] * 1e3:.0f} ms with an empty kernel "
            f"cache, {r['warm']['first_call_s'] * 1e3:.0f} ms with a warm one (XLA compile included in both): "
            f"kernel compile {r['kernel_compile_s'] * 1e3:.0f} ms",
            flush=True,
        )
    with open(os.path.join(args.out, "end_to_end.json"), "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
