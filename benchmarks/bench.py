"""Side-by-side benchmark: jax_dgpt against XLA's own FP8/bf16 paths, in one process and one run.

    python benchmarks/bench.py [--only normal,decode,contiguous,masked] [--quick] [--out DIR]
        [--shapes MxNxK,...] [--match G=32] [--k-splits 2,4] [--multicast] [--pingpong] [--block-m 64]
        [--block-n 128,160] [--stages 3,4]

Prints one markdown table per layout (device µs from the profiler, TFLOPS, GB/s, speedups, calc_diff)
and writes results.json and a chart into --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))
import tables
from profiling import Timer
from shapes import CONTIGUOUS_ANCHORS, DECODE_M, MASKED_ANCHORS, MASKED_MMAX, NK_PAIRS, NORMAL_ANCHORS

import jax_dgpt
from jax_dgpt import heuristics

NORMAL = NORMAL_ANCHORS
DECODE = [(m, n, k) for m in DECODE_M for n, k in NK_PAIRS]
CONTIGUOUS = CONTIGUOUS_ANCHORS
MASKED = MASKED_ANCHORS
# Reference library (DeepGEMMPerTensor) times on the H100, µs (shared/ANCHORS-H100.md).
SEED_MASKED_US = [45.6, 38.6, 87.8, 41.7, 87.8, 45.3]


def fp8(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32).astype(jnp.float8_e4m3fn))


def calc_diff(x, y) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(1 - 2 * np.sum(x * y) / (np.sum(x * x) + np.sum(y * y)))


def ref_f64(a, b) -> np.ndarray:
    """float64 a . b^T of the fp8 values, on the default device (fast on a GPU; IEEE fp64)."""
    with jax.enable_x64(True):
        a64, b64 = jnp.asarray(a).astype(jnp.float64), jnp.asarray(b).astype(jnp.float64)
        return np.asarray(jnp.matmul(a64, b64.T, precision=jax.lax.Precision.HIGHEST))


def xla_dot(a, b, precision=None):
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=precision, preferred_element_type=jnp.bfloat16)


def forced_variants(k_splits=(), multicast=False, block_ns=(), stages=(), pingpong=False, block_ms=()):
    """{label: context manager factory} for kernel options forced next to the heuristics' choice.

    A function is traced at its first call, so each variant gets a fresh jitted function called only
    inside its context (`time_forced`).
    """
    forces = {f"split{s}": partial(heuristics.force_k_splits, s) for s in k_splits}
    if multicast:
        forces["mc2"] = partial(heuristics.force_multicast, 2)
    if pingpong:
        forces["pp"] = heuristics.force_pingpong
    forces.update({f"bm{bm}": partial(heuristics.force_tile, block_m=bm) for bm in block_ms})
    forces.update({f"bn{bn}": partial(heuristics.force_tile, block_n=bn) for bn in block_ns})
    forces.update({f"st{st}": partial(heuristics.force_tile, num_stages=st) for st in stages})
    return forces


def time_forced(timer, variants, make_fn, args, diff_of, row):
    """Adds {label}_us and {label}_diff to `row` for each forced variant.

    make_fn() returns a fresh jitted op; diff_of(output) its calc_diff against float64.
    """
    for label, force in variants.items():
        f = make_fn()
        with force():
            try:
                (t,) = timer.time_us(partial(f, *args))
            except ValueError as error:  # a forced value this shape cannot take (e.g. too many stages)
                row[f"{label}_us"] = f"n/a ({error})".replace(" ", "_")[:80]
                continue
            row[f"{label}_us"] = t
            row[f"{label}_diff"] = diff_of(f(*args))


def bench_normal(timer, shapes, rows, variants):
    f_dgpt = jax.jit(jax_dgpt.gemm)
    f_default = jax.jit(xla_dot)
    f_highest = jax.jit(lambda a, b: xla_dot(a, b, jax.lax.Precision.HIGHEST))
    f_bf16 = jax.jit(xla_dot)  # on bf16 copies of the inputs
    for m, n, k in shapes:
        started = time.perf_counter()
        a, b = fp8((m, k), 1), fp8((n, k), 2)
        a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
        t, t_def, t_hi, t_bf = timer.time_us(
            partial(f_dgpt, a, b),
            partial(f_default, a, b),
            partial(f_highest, a, b),
            partial(f_bf16, a16, b16),
        )
        diff = calc_diff(f_dgpt(a, b), ref_f64(a, b))
        rows.append(
            dict(
                layout="normal",
                shape=f"{m}x{n}x{k}",
                us=t,
                tflops=2 * m * n * k / t / 1e6,
                gbps=(m * k + n * k + 2 * m * n) / t / 1e3,
                xla_us=t_def,
                xla_highest_us=t_hi,
                xla_bf16_us=t_bf,
                speedup=t_def / t,
                speedup_highest=t_hi / t,
                speedup_bf16=t_bf / t,
                calc_diff=diff,
            )
        )
        reference = ref_f64(a, b)
        time_forced(
            timer,
            variants,
            lambda: jax.jit(lambda x, y: jax_dgpt.gemm(x, y)),
            (a, b),
            lambda out, ref=reference: calc_diff(out, ref),
            rows[-1],
        )
        rows[-1]["bench_s"] = time.perf_counter() - started
        rows.report()


def contiguous_layout(groups, expected_m, seed):
    rng = np.random.default_rng(seed)
    sizes = [int(expected_m * rng.uniform(0.7, 1.3)) for _ in range(groups)]
    align = jax_dgpt.get_m_alignment_for_contiguous_layout()
    idx = np.concatenate(
        [np.concatenate([np.full(s, g, np.int32), np.full(-s % align, -1, np.int32)]) for g, s in enumerate(sizes)]
    )
    return sizes, idx


@jax.jit
def ragged(x, y, group_sizes):
    return jax.lax.ragged_dot(x, jnp.swapaxes(y, 1, 2), group_sizes, preferred_element_type=jnp.bfloat16)


def bench_contiguous(timer, shapes, rows):
    f_dgpt = jax.jit(jax_dgpt.grouped_gemm_contiguous)
    for g, em, n, k in shapes:
        sizes, idx = contiguous_layout(g, em, 3)
        m = len(idx)
        a, b = fp8((m, k), 4), fp8((g, n, k), 5)
        m_indices = jnp.asarray(idx)
        group_sizes = jnp.asarray(np.bincount(idx[idx >= 0], minlength=g).astype(np.int32))
        a_dense = jnp.asarray(np.asarray(a)[idx >= 0])
        a16, b16 = a_dense.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
        t, t_r8, t_r16 = timer.time_us(
            partial(f_dgpt, a, b, m_indices),
            partial(ragged, a_dense, b, group_sizes),
            partial(ragged, a16, b16, group_sizes),
        )
        out = np.asarray(f_dgpt(a, b, m_indices), np.float64)
        diff = max(
            calc_diff(out[idx == e], ref_f64(a[jnp.asarray(np.nonzero(idx == e)[0])], b[e]))
            for e in range(g)
            if sizes[e]
        )
        valid = int(sum(sizes))
        rows.append(
            dict(
                layout="contiguous",
                shape=grouped_label(g, em, n, k),
                us=t,
                tflops=2 * valid * n * k / t / 1e6,
                gbps=(m * k + g * n * k + 2 * m * n) / t / 1e3,
                ragged_fp8_us=t_r8,
                ragged_bf16_us=t_r16,
                speedup=t_r8 / t,
                speedup_bf16=t_r16 / t,
                calc_diff=diff,
            )
        )
        rows.report()


def grouped_label(g, em, n, k) -> str:
    return f"G={g} m={em} N={n} K={k}"


def masked_draws(shapes) -> list[np.ndarray]:
    """Valid rows per group, expected_m x U(0.7, 1.3) as in ANCHORS-H100.md; drawn for the whole table in order,
    so a shape gets the same rows whether or not --match/--quick skip others."""
    rng = np.random.default_rng(6)
    return [np.array([int(em * rng.uniform(0.7, 1.3)) for _ in range(g)], np.int32) for g, em, _, _ in shapes]


def bench_masked(timer, shapes, rows, variants):
    """shapes: ((G, expected_m, N, K), the reference library's µs, valid rows per group) triples."""
    f_dgpt = jax.jit(jax_dgpt.grouped_gemm_masked, static_argnums=3)
    f_einsum = jax.jit(lambda a, b: jnp.einsum("gmk,gnk->gmn", a, b, preferred_element_type=jnp.bfloat16))
    for (g, em, n, k), seed_us, masked in shapes:
        started = time.perf_counter()
        a, b = fp8((g, MASKED_MMAX, k), 7), fp8((g, n, k), 8)
        mm = jnp.asarray(masked)
        t, t_e = timer.time_us(partial(f_dgpt, a, b, mm, em), partial(f_einsum, a, b))
        references = [ref_f64(a[i, :r], b[i]) if r else None for i, r in enumerate(masked)]

        def diff_of(out, masked=masked, references=references):
            out = np.asarray(out, np.float64)
            return max(calc_diff(out[i, :r], references[i]) for i, r in enumerate(masked) if r)

        diff = diff_of(f_dgpt(a, b, mm, em))
        valid = int(masked.sum())
        rows.append(
            dict(
                layout="masked",
                shape=grouped_label(g, em, n, k),
                us=t,
                tflops=2 * valid * n * k / t / 1e6,
                gbps=(valid * k + g * n * k + 2 * valid * n) / t / 1e3,
                einsum_us=t_e,
                speedup=t_e / t,
                seed_h100_us=seed_us,
                vs_seed=seed_us / t,
                calc_diff=diff,
            )
        )
        time_forced(
            timer,
            {label: force for label, force in variants.items() if label != "mc2"},  # multicast: normal only
            lambda em=em: jax.jit(lambda x, y, m: jax_dgpt.grouped_gemm_masked(x, y, m, em)),
            (a, b, mm),
            diff_of,
            rows[-1],
        )
        rows[-1]["rows"] = masked.tolist()
        rows[-1]["bench_s"] = time.perf_counter() - started
        rows.report()


class Rows(list):
    """The result rows; `report()` prints the newest and rewrites results.json, so a run stopped by a
    time limit still leaves every finished shape on disk."""

    def __init__(self, path: str, meta: dict):
        super().__init__()
        self.path, self.meta = path, meta

    def report(self) -> None:
        print_row(self[-1])
        self.save()

    def save(self) -> None:
        with open(self.path, "w") as f:
            json.dump(dict(meta=self.meta, rows=list(self)), f, indent=1)


def print_row(r):
    extra = " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in r.items()
        if k not in ("layout", "shape", "us", "tflops", "gbps", "calc_diff")
    )
    print(
        f"{r['layout']:10s} {r['shape']:28s} {r['us']:9.1f} us {r['tflops']:7.0f} TFLOPS {r['gbps']:7.0f} GB/s "
        f"diff={r['calc_diff']:.2g} {extra}",
        flush=True,
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--only", default="normal,decode,contiguous,masked")
    p.add_argument("--out", default=".")
    p.add_argument("--quick", action="store_true", help="a few shapes per layout")
    p.add_argument("--k-splits", default="", help="also time normal and masked shapes with split-K forced, e.g. 2,4")
    p.add_argument("--multicast", action="store_true", help="also time normal shapes with B multicast forced")
    p.add_argument("--pingpong", action="store_true", help="also time normal and masked shapes with pingpong forced")
    p.add_argument("--block-m", default="", help="also time normal and masked shapes with BLOCK_M forced, e.g. 64")
    p.add_argument(
        "--block-n", default="", help="also time normal and masked shapes with these BLOCK_N forced, e.g. 128,160"
    )
    p.add_argument(
        "--stages", default="", help="also time normal and masked shapes with these stage counts forced, e.g. 3,4"
    )
    p.add_argument("--match", default="", help="contiguous/masked shapes whose label contains this, e.g. G=32")
    p.add_argument("--shapes", default="", help="normal/decode shapes to run instead of the tables, e.g. 4096x7168x576")
    args = p.parse_args()
    only = set(args.only.split(","))
    k_splits = [int(x) for x in args.k_splits.split(",") if x]
    ints = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    variants = forced_variants(
        k_splits, args.multicast, ints(args.block_n), ints(args.stages), args.pingpong, ints(args.block_m)
    )
    dev = jax.devices()[0]
    meta = dict(
        date=datetime.date.today().isoformat(),
        device=dev.device_kind,
        sms=dev.core_count,
        jax=jax.__version__,
        python=platform.python_version(),
    )
    print(json.dumps(meta))
    timer = Timer()
    rows = Rows(os.path.join(args.out, "results.json"), meta)
    pick = (lambda xs: xs[::4]) if args.quick else (lambda xs: xs)
    if args.shapes:
        chosen = [tuple(int(x) for x in shape.split("x")) for shape in args.shapes.split(",")]
        bench_normal(timer, chosen, rows, variants)
        only -= {"normal", "decode"}
    if "normal" in only:
        bench_normal(timer, pick(NORMAL), rows, variants)
    if "decode" in only:
        bench_normal(timer, pick(DECODE), rows, variants)
        for r in rows[-len(pick(DECODE)) :]:
            r["layout"] = "decode"
    if "contiguous" in only:
        bench_contiguous(timer, [s for s in pick(CONTIGUOUS) if args.match in grouped_label(*s)], rows)
    if "masked" in only:
        shapes = list(zip(MASKED, SEED_MASKED_US, masked_draws(MASKED)))
        bench_masked(timer, [s for s in pick(shapes) if args.match in grouped_label(*s[0])], rows, variants)
    for layout in ("normal", "decode", "contiguous", "masked"):
        table = tables.markdown(rows, layout)
        if table:
            print(f"\n{table}")
    rows.save()


if __name__ == "__main__":
    main()
