"""Side-by-side benchmark: jax_dgpt against XLA's own FP8/bf16 paths, in one process and one run.

Run from the repository root:

    python -m benchmarks.bench [--only normal,decode,contiguous,masked,sweep,ragged,wgrad,k_grouped,scaled,training]
        [--quick | --tiny] [--out DIR]
        [--shapes MxNxK,...] [--match G=32] [--k-splits 2,4] [--k-interleave] [--block-m 64]
        [--block-n 128,160] [--stages 3,4]

    --only        tables to run, in this order (default: the four forward tables: 22 normal, 21 decode,
                  6 contiguous, 6 masked shapes; the real-model sweep, benchmarks/bench_sweep.py (140
                  shapes); 17 ragged shapes, benchmarks/bench_ragged.py; the training tables,
                  benchmarks/bench_wgrad.py: 12 wgrad, 10 k_grouped, 22 scaled; FP8 training,
                  benchmarks/bench_training.py: 4 fp8_matmul steps, 3 MoE blocks' steps)
    --quick       every fourth shape of each table (16 shapes)
    --tiny        a few tiny shapes per layout, on any backend: without a Hopper GPU the ops run the CPU
                  reference and the times are wall-clock times of that (checks the bookkeeping, not the kernels)
    --shapes      normal shapes to run instead of the normal and decode tables
    --match       only the contiguous/masked shapes whose label contains this text
    --k-splits, --k-interleave, --block-m, --block-n, --stages
                  also time each normal, decode, contiguous and masked shape with these kernel settings forced
                  (jax_dgpt.forcing), in the same profiler session as the heuristics' choice
    --out         where results.json goes (rewritten after every shape, so a stopped run keeps what it measured)

    DG_NSYS_PROFILING=1   no JAX profiler and no L2 flush: each op just runs warm-up + 15 times and the rows hold
                          wall-clock µs per call; read kernel times from Nsight Systems, e.g.
                          DG_NSYS_PROFILING=1 nsys profile -o dgpt python -m benchmarks.bench --shapes 4096x7168x16384

Device time per call comes from the JAX profiler with L2 flushed before every call (median of 15 after 3 warm-up
calls; every function of a shape in one profiler session). Inputs are drawn on the device; calc_diff is computed on
the device in float64 over every valid row (docs/numerical_contract.md). Prints one line per shape and one markdown
table per layout at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import sys
import time
import traceback
from functools import partial

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

import jax_dgpt
from benchmarks import bench_ragged, bench_sweep, bench_training, bench_wgrad, tables
from benchmarks.profiling import make_timer
from jax_dgpt import testing

NORMAL = testing.NORMAL_ANCHORS
DECODE = [(m, n, k) for m in testing.DECODE_M for n, k in testing.NK_PAIRS]
CONTIGUOUS = testing.CONTIGUOUS_ANCHORS
# Decode-sized masks after the reference library's shapes: a few rows per expert in Mmax = 4096, where the
# tile loop walks the most indices that are not tiles (benchmarks/KERNEL_LOG.md v14).
MASKED_DECODE = [(16, 8, 7168, 2048), (16, 8, 4096, 7168), (32, 16, 7168, 2048)]
MASKED = testing.MASKED_ANCHORS + MASKED_DECODE
# Reference library (DeepGEMMPerTensor) times on the H100, µs (shared/ANCHORS-H100.md).
# Reference library (DeepGEMMPerTensor) times on the H200 with its own masked_m draws, which masked_draws
# reproduces (shared/ANCHORS-H200.md: the faster of its two calls).
SEED_MASKED_H200_US = [44.3, 36.6, 83.9, 38.7, 83.2, 40.2]
# --tiny: shapes the CPU reference runs in seconds.
TINY = dict(
    normal=[(64, 256, 256), (200, 384, 512)],
    decode=[(1, 256, 256), (16, 384, 512)],
    contiguous=[(2, 100, 256, 256)],
    masked=[(2, 64, 256, 256)],
    mmax=128,
)


def xla_dot(a, b, precision=None):
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=precision, preferred_element_type=jnp.bfloat16)


f_gemm = jax.jit(jax_dgpt.gemm)
f_xla = jax.jit(xla_dot)
f_xla_highest = jax.jit(partial(xla_dot, precision=jax.lax.Precision.HIGHEST))
f_contiguous = jax.jit(jax_dgpt.grouped_gemm_contiguous)
f_masked = jax.jit(jax_dgpt.grouped_gemm_masked, static_argnums=3)
f_einsum = jax.jit(lambda a, b: jnp.einsum("gmk,gnk->gmn", a, b, preferred_element_type=jnp.bfloat16))


@jax.jit
def ragged(x, y, group_sizes):
    return jax.lax.ragged_dot(x, jnp.swapaxes(y, 1, 2), group_sizes, preferred_element_type=jnp.bfloat16)


# --- forced kernel settings -------------------------------------------------------------------------
def forced_variants(k_splits=(), block_ms=(), block_ns=(), stages=(), k_interleave=False, multicast_a=False) -> dict:
    """{label: context-manager factory} for kernel settings forced next to the heuristics' choice."""
    if not (k_splits or block_ms or block_ns or stages or k_interleave or multicast_a):
        return {}
    from jax_dgpt import forcing  # only needed for tuning runs

    forces = {f"split{s}": partial(forcing.force, num_k_splits=s) for s in k_splits}
    if k_interleave:
        forces["ki"] = partial(forcing.force, k_interleave=1)
    if multicast_a:  # on and off, whatever the heuristics chose
        forces["mc1"] = partial(forcing.force, multicast_a=1)
        forces["mc0"] = partial(forcing.force, multicast_a=0)
    forces.update({f"bm{bm}": partial(forcing.force, block_m=bm) for bm in block_ms})
    forces.update({f"bn{bn}": partial(forcing.force, block_n=bn) for bn in block_ns})
    forces.update({f"st{st}": partial(forcing.force, num_stages=st) for st in stages})
    return forces


def _inside(force, fn):
    def call():
        with force():
            return fn()

    return call


def measure(timer, baselines: dict, variants: dict, make_op, diff_of, row: dict, check=None) -> None:
    """Times `baselines` ({row key: callable}, "us" first: jax_dgpt with the heuristics' choice) and each
    forced variant in ONE timer session; adds "<key>" µs, "<label>_us"/"<label>_diff" and "calc_diff" to `row`.

    make_op() returns a fresh jitted op bound to the shape's inputs: a function is traced at its first call,
    so each variant needs its own, traced inside its context. calc_diff is of `check()`'s result when given
    (for baselines that accumulate into their output call after call), else of the "us" baseline's.
    """
    ready = {}
    for label, force in variants.items():
        op = make_op()
        try:
            with force():
                jax.block_until_ready(op())
        except (ValueError, RuntimeError) as error:  # a forced value this shape cannot take
            row[f"{label}_us"] = f"n/a ({error})".replace(" ", "_")[:80]
            continue
        ready[label] = (force, op)
    fns = list(baselines.values()) + [_inside(force, op) for force, op in ready.values()]
    # Where a shape's time goes: each function's first call (XLA compiles and autotunes there), the timed
    # session, the float64 check.
    first = {}
    for key, fn in zip(list(baselines) + list(ready), fns):
        started = time.perf_counter()
        jax.block_until_ready(fn())
        first[key] = round(time.perf_counter() - started, 3)
    row["first_call_s"] = first
    started = time.perf_counter()
    times = timer.time_us(*fns)
    row["timed_s"] = round(time.perf_counter() - started, 3)
    row.update(zip(baselines, times[: len(baselines)]))
    started = time.perf_counter()
    row["calc_diff"] = diff_of((check or baselines["us"])())
    row["diff_s"] = round(time.perf_counter() - started, 3)
    for (label, (force, op)), t in zip(ready.items(), times[len(baselines) :]):
        row[f"{label}_us"] = t
        row[f"{label}_diff"] = diff_of(_inside(force, op)())


# --- the layouts ----------------------------------------------------------------------------------
# The XLA baselines of a normal-layout row: (row key, speedup key, function, operands in bf16).
XLA_BASELINES = {
    "xla_us": ("speedup", f_xla, False),
    "xla_highest_us": ("speedup_highest", f_xla_highest, False),
    "xla_bf16_us": ("speedup_bf16", f_xla, True),
}


def bench_normal(timer, shapes, rows, variants, layout="normal", baselines=tuple(XLA_BASELINES), labels=None):
    """``baselines``: which of XLA_BASELINES to time (each autotunes at its first call); ``labels``: {(N, K):
    name} recorded as each row's "model"."""
    for m, n, k in shapes:
        started = time.perf_counter()
        a, b = testing.generate_fp8((m, k), 1, on_device=True), testing.generate_fp8((n, k), 2, on_device=True)
        a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
        row = dict(layout=layout, shape=f"{m}x{n}x{k}", setup_s=_ready_after(started, a, b, a16, b16))
        if labels and (n, k) in labels:
            row["model"] = labels[(n, k)]
        timed = {"us": partial(f_gemm, a, b)}
        for key in baselines:
            _, fn, bf16 = XLA_BASELINES[key]
            timed[key] = partial(fn, a16, b16) if bf16 else partial(fn, a, b)
        fresh = lambda a=a, b=b: partial(jax.jit(lambda x, y: jax_dgpt.gemm(x, y)), a, b)  # noqa: E731
        measure(timer, timed, variants, fresh, lambda out, a=a, b=b: testing.gemm_diff(out, a, b), row)
        t = row["us"]
        row.update(tflops=2 * m * n * k / t / 1e6, gbps=(m * k + n * k + 2 * m * n) / t / 1e3)
        row.update({XLA_BASELINES[key][0]: row[key] / t for key in baselines})
        rows.add(row, started)


def bench_contiguous(timer, shapes, rows, variants):
    align = jax_dgpt.get_m_alignment_for_contiguous_layout()
    for g, em, n, k in shapes:
        started = time.perf_counter()
        sizes = testing.generate_group_rows(g, em, 3)
        a, b, m_indices = testing.contiguous_inputs(sizes, n, k, key=4, alignment=align, on_device=True)
        idx = np.asarray(m_indices)
        a_dense = a[jnp.asarray(np.nonzero(idx >= 0)[0])]  # the valid rows, for ragged_dot
        group_sizes = jnp.asarray(np.bincount(idx[idx >= 0], minlength=g).astype(np.int32))
        a16, b16 = a_dense.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
        row = dict(layout="contiguous", shape=grouped_label(g, em, n, k), rows=sizes)
        row["setup_s"] = _ready_after(started, a, b, a16, b16)
        baselines = {
            "us": partial(f_contiguous, a, b, m_indices),
            "ragged_fp8_us": partial(ragged, a_dense, b, group_sizes),
            "ragged_bf16_us": partial(ragged, a16, b16, group_sizes),
        }
        fresh = lambda a=a, b=b, i=m_indices: partial(  # noqa: E731
            jax.jit(lambda x, y, z: jax_dgpt.grouped_gemm_contiguous(x, y, z)), a, b, i
        )
        diff_of = lambda out, a=a, b=b, idx=idx: max(testing.contiguous_diffs(out, a, b, idx).values())  # noqa: E731
        measure(timer, baselines, variants, fresh, diff_of, row)
        t, m, valid = row["us"], len(idx), int(sum(sizes))
        row.update(
            tflops=2 * valid * n * k / t / 1e6,
            gbps=(m * k + g * n * k + 2 * m * n) / t / 1e3,
            speedup=row["ragged_fp8_us"] / t,
            speedup_bf16=row["ragged_bf16_us"] / t,
        )
        rows.add(row, started)


def grouped_label(g, em, n, k) -> str:
    return f"G={g} m={em} N={n} K={k}"


def masked_draws(shapes) -> list[list[int]]:
    """Valid rows per group: the reference library's draw, ``int(expected_m * U(0.7, 1.3))`` from Python's
    ``random.Random(2000 + i)`` for the table's shape i (shared/ANCHORS-H200.md: 992, 1077, 581+512, ... rows),
    so its times compare on identical masks; per shape, so --match/--quick do not change a shape's rows."""
    draws = []
    for i, (g, em, _, _) in enumerate(shapes):
        rng = random.Random(2000 + i)
        draws.append([int(em * rng.uniform(0.7, 1.3)) for _ in range(g)])
    return draws


def bench_masked(timer, shapes, rows, variants, mmax=testing.MASKED_MMAX):
    """shapes: ((G, expected_m, N, K), the reference library's µs or None, valid rows per group) triples."""
    for (g, em, n, k), seed_us, masked in shapes:
        started = time.perf_counter()
        a, b, mm = testing.masked_inputs(masked, mmax, n, k, key=7, on_device=True)
        row = dict(layout="masked", shape=grouped_label(g, em, n, k), rows=list(masked))
        row["setup_s"] = _ready_after(started, a, b, mm)
        baselines = {"us": partial(f_masked, a, b, mm, em), "einsum_us": partial(f_einsum, a, b)}
        fresh = lambda a=a, b=b, mm=mm, em=em: partial(  # noqa: E731
            jax.jit(lambda x, y, z: jax_dgpt.grouped_gemm_masked(x, y, z, em)), a, b, mm
        )
        diff_of = lambda out, a=a, b=b, mm=masked: max(testing.masked_diffs(out, a, b, mm).values())  # noqa: E731
        measure(timer, baselines, variants, fresh, diff_of, row)
        t, valid = row["us"], int(sum(masked))
        row.update(
            tflops=2 * valid * n * k / t / 1e6,
            gbps=(valid * k + g * n * k + 2 * valid * n) / t / 1e3,
            speedup=row["einsum_us"] / t,
            seed_h200_us=seed_us,
            vs_seed=None if seed_us is None else seed_us / t,
        )
        rows.add(row, started)


def _ready_after(started: float, *arrays) -> float:
    jax.block_until_ready(arrays)
    return time.perf_counter() - started


# --- rows and output --------------------------------------------------------------------------------
class Rows(list):
    """The result rows; `add()` prints the new one and rewrites results.json, so a run stopped by a time
    limit still leaves every finished shape on disk."""

    def __init__(self, path: str, meta: dict):
        super().__init__()
        self.path, self.meta = path, meta

    def add(self, row: dict, started: float) -> None:
        row["bench_s"] = time.perf_counter() - started
        self.append(row)
        print_row(row)
        self.save()

    def save(self) -> None:
        with open(self.path, "w") as f:
            json.dump(dict(meta=self.meta, rows=list(self)), f, indent=1)


MAIN_KEYS = ("layout", "shape", "us", "tflops", "gbps", "calc_diff")


def print_row(r: dict) -> None:
    """One fixed-format line per shape (benchmarks.tables.rows_from_log reads it back)."""
    extra = " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={json.dumps(v, separators=(',', ':'))}"
        for k, v in r.items()
        if k not in MAIN_KEYS and v is not None
    )
    print(
        f"{r['layout']:10s} {r['shape']:28s} {r['us']:9.1f} us {r['tflops']:7.0f} TFLOPS {r['gbps']:7.0f} GB/s "
        f"diff={r['calc_diff']:.2g} {extra}",
        flush=True,
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="normal,decode,contiguous,masked")
    p.add_argument("--out", default=".")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="every fourth shape of each table")
    size.add_argument("--tiny", action="store_true", help="tiny shapes; runs on the CPU reference without a GPU")
    p.add_argument("--k-splits", default="", help="also time with split-K forced, e.g. 2,4")
    p.add_argument("--k-interleave", action="store_true", help="also time with k_interleave forced (64-row tiles)")
    p.add_argument("--multicast-a", action="store_true", help="also time with multicast_a forced on and off")
    p.add_argument("--block-m", default="", help="also time with BLOCK_M forced, e.g. 64")
    p.add_argument("--block-n", default="", help="also time with these BLOCK_N forced, e.g. 128,160")
    p.add_argument("--stages", default="", help="also time with these stage counts forced, e.g. 3,4")
    p.add_argument("--match", default="", help="contiguous/masked shapes whose label contains this, e.g. G=32")
    p.add_argument("--shapes", default="", help="normal shapes to run instead of the tables, e.g. 4096x7168x576")
    return p.parse_args(argv)


def bench_sweep_label(shape, tiny: bool) -> str:
    """What --match matches for a sweep shape: "MxNxK layer names"."""
    m, n, k = shape
    return f"{m}x{n}x{k} {bench_sweep.labels(tiny).get((n, k), '')}"


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv=None) -> int:
    args = parse_args(argv)
    nsys = os.environ.get("DG_NSYS_PROFILING", "") not in ("", "0")
    dev = jax.devices()[0]
    if not (args.tiny or testing.hopper_gpu_visible()):
        print(
            f"benchmarks.bench measures the kernels and needs a Hopper GPU (compute capability 9.0); JAX sees "
            f"{dev.device_kind} ({jax.default_backend()}). --tiny runs the bookkeeping on tiny shapes with the "
            "CPU reference instead.",
            file=sys.stderr,
        )
        return 2
    variants = forced_variants(
        ints(args.k_splits),
        ints(args.block_m),
        ints(args.block_n),
        ints(args.stages),
        args.k_interleave,
        args.multicast_a,
    )
    timer = make_timer(jax.default_backend(), nsys)
    meta = dict(
        date=datetime.date.today().isoformat(),
        device=dev.device_kind,
        sms=getattr(dev, "core_count", None),
        backend=jax.default_backend(),
        jax=jax.__version__,
        jaxlib=jaxlib.__version__,
        python=platform.python_version(),
        timing=timer.kind + (" (DG_NSYS_PROFILING=1)" if nsys else ""),
        command="python -m benchmarks.bench " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    print(json.dumps(meta), flush=True)
    os.makedirs(args.out, exist_ok=True)
    rows = Rows(os.path.join(args.out, "results.json"), meta)
    only = [name for name in args.only.split(",") if name]
    unknown = sorted(set(only) - set(tables.TABLES))
    if unknown:
        print(f"benchmarks.bench: unknown table(s) {unknown}; tables: {', '.join(tables.TABLES)}", file=sys.stderr)
        return 2
    pick = (lambda xs: xs[::4]) if args.quick else (lambda xs: xs)
    size = TINY if args.tiny else dict(normal=NORMAL, decode=DECODE, contiguous=CONTIGUOUS, masked=MASKED)
    seeds = [None] * len(size["masked"]) if args.tiny else SEED_MASKED_H200_US + [None] * len(MASKED_DECODE)
    started = time.perf_counter()
    if args.shapes:
        chosen = [tuple(int(x) for x in shape.split("x")) for shape in args.shapes.split(",")]
        bench_normal(timer, chosen, rows, variants)
        only = [name for name in only if name not in ("normal", "decode")]

    def masked():
        table = list(zip(size["masked"], seeds, masked_draws(size["masked"])))
        chosen = [s for s in pick(table) if args.match in grouped_label(*s[0])]
        bench_masked(timer, chosen, rows, variants, TINY["mmax"] if args.tiny else testing.MASKED_MMAX)

    def sweep():
        chosen = [s for s in pick(bench_sweep.shapes(args.tiny)) if args.match in bench_sweep_label(s, args.tiny)]
        bench_normal(
            timer, chosen, rows, variants, layout="sweep", baselines=("xla_us",), labels=bench_sweep.labels(args.tiny)
        )

    def ragged():
        table = bench_ragged.TINY if args.tiny else bench_ragged.RAGGED
        chosen = [s for s in pick(table) if args.match in bench_ragged.label(*s)]
        bench_ragged.bench_ragged(timer, chosen, rows, measure, variants)

    def k_grouped():
        cases = [c for c in pick(bench_wgrad.k_grouped_cases(args.tiny)) if args.match in c[-1]]
        bench_wgrad.bench_k_grouped(timer, cases, rows, measure)

    run_table = {
        "normal": lambda: bench_normal(timer, pick(size["normal"]), rows, variants),
        "decode": lambda: bench_normal(timer, pick(size["decode"]), rows, variants, layout="decode"),
        "contiguous": lambda: bench_contiguous(
            timer, [s for s in pick(size["contiguous"]) if args.match in grouped_label(*s)], rows, variants
        ),
        "masked": masked,
        "sweep": sweep,
        "ragged": ragged,
        "wgrad": lambda: bench_wgrad.bench_wgrad(
            timer, pick(bench_wgrad.TINY["wgrad"] if args.tiny else bench_wgrad.WGRAD), rows, measure
        ),
        "k_grouped": k_grouped,
        "scaled": lambda: bench_wgrad.bench_scaled(
            timer, pick(bench_wgrad.TINY["scaled"] if args.tiny else NORMAL), rows, measure
        ),
        "training": lambda: bench_training.bench_training(
            timer,
            [
                s
                for s in pick(bench_training.TINY if args.tiny else bench_training.SHAPES)
                if args.match in bench_training.label(s)
            ],
            rows,
            measure,
        ),
    }
    # In the order --only lists them: a run stopped by its time limit keeps the tables it reached first.
    # A table that raises (the GPU out of memory) is reported and the next tables still run.
    failed = []
    for name in only:
        try:
            run_table[name]()
        except Exception:  # noqa: BLE001 - reported, and the run exits nonzero
            traceback.print_exc()
            print(f"table {name}: stopped by the error above; its finished rows are kept", flush=True)
            failed.append(name)
    for layout in tables.LAYOUTS:
        table = tables.markdown(rows, layout)
        if table:
            print(f"\n{table}")
    print(f"\n{len(rows)} shapes in {time.perf_counter() - started:.0f} s; timing: {meta['timing']}")
    rows.save()
    if failed:
        print(f"tables stopped by an error: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
