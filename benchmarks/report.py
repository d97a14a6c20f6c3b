"""benchmarks/RESULTS.md and the README's headline table, generated from the run directories.

    python -m benchmarks.report [--results benchmarks/results] [--out benchmarks/RESULTS.md]
                                [--readme README.md] [--check]

Reads every benchmarks/results/<run>/ (manifest.json, machine.json, results.json, end_to_end.json; see
benchmarks/rundir.py) and writes RESULTS.md: the latest complete table of each layout, issue 4's targets
against them, then every run, newest first. With --readme, also replaces the text between the
`<!-- results:begin -->` and `<!-- results:end -->` markers of that file with the headline table. --check
writes nothing and exits 1 if a file would change. The headline chart (benchmarks/results/headline.png) is
redrawn from the same rows when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

from benchmarks import bench_ragged, bench_wgrad, tables
from benchmarks.tables import geomean, latest_rows
from jax_dgpt import testing

REPO = pathlib.Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

# The shapes of each complete table (benchmarks/bench.py runs these).
TABLES = {
    "normal": [f"{m}x{n}x{k}" for m, n, k in testing.NORMAL_ANCHORS],
    "decode": [f"{m}x{n}x{k}" for m in testing.DECODE_M for n, k in testing.NK_PAIRS],
    "contiguous": [f"G={g} m={em} N={n} K={k}" for g, em, n, k in testing.CONTIGUOUS_ANCHORS],
    "masked": [f"G={g} m={em} N={n} K={k}" for g, em, n, k in testing.MASKED_ANCHORS],
    "ragged": [bench_ragged.label(*shape) for shape in bench_ragged.RAGGED],
    # The training tables (benchmarks/bench_wgrad.py): k_grouped shapes are labelled by their draw, so
    # a table is complete with as many rows as bench_wgrad defines.
    "wgrad": [f"{m}x{n}x{k}" for m, n, k in bench_wgrad.WGRAD],
    "scaled": [f"{m}x{n}x{k}" for m, n, k in testing.NORMAL_ANCHORS],
    "k_grouped": [case[-1] for case in bench_wgrad.k_grouped_cases(tiny=False)],
}
# The tables the README's chart draws (the forward ones).
CHART_TABLES = ("normal", "decode", "contiguous", "masked")
# Normal shapes in the README's table; the compute-bound ones also show TFLOPS.
README_SHAPES = [
    "64x7168x576",
    "64x7168x16384",
    "128x7168x2048",
    "4096x7168x576",
    "4096x32768x512",
    "4096x7168x16384",
    "8192x8192x8192",
]
COMPUTE_BOUND = ["4096x7168x16384", "8192x8192x8192"]


@dataclasses.dataclass
class Run:
    name: str
    manifest: dict
    machine: dict
    rows: list
    end_to_end: dict | None

    @property
    def started(self) -> str:
        calls = self.manifest.get("calls") or [{}]
        return calls[0].get("started", self.manifest.get("date", ""))

    def complete(self, layout: str) -> bool:
        """Every shape of the table measured, on code still on main: a manifest's "superseded" ({table:
        why}) names tables that measured a change since reverted; they stay in RESULTS.md's run list only."""
        if layout in self.manifest.get("superseded", {}):
            return False
        return set(TABLES[layout]) <= {r["shape"] for r in self.rows if r.get("layout") == layout}


def _json(path: pathlib.Path):
    return json.loads(path.read_text()) if path.exists() else None


def load_runs(results: pathlib.Path) -> list[Run]:
    """Every run directory under `results`, oldest first."""
    runs = []
    for manifest_path in sorted(results.glob("*/manifest.json")):
        folder = manifest_path.parent
        results_json = _json(folder / "results.json") or {"rows": []}
        runs.append(
            Run(
                folder.name,
                _json(manifest_path),
                _json(folder / "machine.json") or {},
                results_json["rows"],
                _json(folder / "end_to_end.json"),
            )
        )
    return sorted(runs, key=lambda run: (run.started, run.name))


def headline(runs: list[Run]) -> dict[str, tuple[Run, list[dict]]]:
    """{layout: (run, rows in table order)}: per layout, the newest run with a complete table."""
    chosen = {}
    for layout, shapes in TABLES.items():
        for run in reversed(runs):
            if run.complete(layout):
                by_shape = {r["shape"]: r for r in latest_rows(run.rows) if r.get("layout") == layout}
                chosen[layout] = (run, [by_shape[s] for s in shapes])
                break
    return chosen


# --- issue 4's targets ------------------------------------------------------------------------------
def _mnk(shape: str) -> tuple[int, int, int]:
    m, n, k = (int(x) for x in shape.split("x"))
    return m, n, k


def _range(values, fmt="{:.2f}") -> str:
    return fmt.format(min(values)) + ("" if min(values) == max(values) else "–" + fmt.format(max(values)))


def _count(ok: list[bool]) -> str:
    return "yes" if all(ok) else ("no" if not any(ok) else f"{sum(ok)} of {len(ok)}")


def _memory_bound(rows, least_bytes, tbps):
    sel = []
    for r in rows:
        m, n, k = _mnk(r["shape"])
        if m <= 128 and m * k + n * k + 2 * m * n >= least_bytes:
            sel.append(r)
    if not sel:
        return "–", "–"
    missed = [r["shape"] for r in sel if r["gbps"] < tbps * 1e3]
    figure = f"{_range([r['gbps'] / 1e3 for r in sel])} TB/s over {len(sel)} shapes"
    if missed:
        figure += f"; {len(missed)} below {tbps} ({', '.join(missed)})"
    return figure, _count([r["gbps"] >= tbps * 1e3 for r in sel])


def targets(chosen: dict, e2e: dict | None) -> list[tuple[str, str, str]]:
    """(target, figure, met?) rows of issue 4's targets (set for the H100) against the headline rows."""
    out = []
    rows = {layout: sel for layout, (_, sel) in chosen.items()}
    if "normal" in rows:
        sel = rows["normal"]
        worst = min(sel, key=lambda r: r["speedup"])
        g = geomean([r["speedup"] for r in sel])
        figure = f"{g:.3f}× (min {worst['speedup']:.2f}×, {worst['shape']}); "
        figure += f"{geomean([r['speedup_highest'] for r in sel]):.3f}× XLA HIGHEST"
        out.append(
            (
                "normal geomean ≥ 1.25× XLA default, none below 1.0",
                figure,
                "yes" if g >= 1.25 and worst["speedup"] >= 1.0 else "no",
            )
        )
        big = [r for r in sel if r["shape"] in COMPUTE_BOUND]
        xla = " / ".join(
            f"{2 * _mnk(r['shape'])[0] * _mnk(r['shape'])[1] * _mnk(r['shape'])[2] / r['xla_us'] / 1e6:.0f}"
            for r in big
        )
        figure = " / ".join(f"{r['tflops']:.0f}" for r in big) + f" TFLOPS (XLA's default dot: {xla})"
        out.append(
            ("≥ 1600 TFLOPS on " + " and ".join(COMPUTE_BOUND), figure, _count([r["tflops"] >= 1600 for r in big]))
        )
    small = rows.get("normal", []) + rows.get("decode", [])
    if small:
        out.append(("M ≤ 128, ≥ 64 MB: ≥ 2.7 TB/s", *_memory_bound(small, 64e6, 2.7)))
        out.append(("M ≤ 128, ≥ 15 MB: ≥ 2.0 TB/s", *_memory_bound(small, 15e6, 2.0)))
    if "contiguous" in rows:
        sel = rows["contiguous"]
        large = [r for r in sel if not r["shape"].startswith("G=32 ")]
        g32 = [r for r in sel if r["shape"].startswith("G=32 ")]
        for label, group, least in (("large groups", large, 1400), ("G = 32", g32, 1000)):
            figure = " / ".join(f"{r['tflops']:.0f}" for r in group)
            out.append(
                (f"contiguous ≥ {least} TFLOPS ({label})", figure, _count([r["tflops"] >= least for r in group]))
            )
        out.append(
            (
                "contiguous ≥ 5× ragged_dot",
                _range([r["speedup"] for r in sel], "{:.1f}") + "×",
                _count([r["speedup"] >= 5 for r in sel]),
            )
        )
    if "masked" in rows:
        g = geomean([r["vs_seed"] for r in rows["masked"] if r.get("vs_seed")])
        out.append(("masked geomean ≥ 1.5× the seed", f"{g:.2f}×", "yes" if g >= 1.5 else "no"))
    if e2e:
        programs = e2e.get("host_overhead", {})
        overhead = [p["jax_dgpt"]["overhead_us"] for p in programs.values()]
        out.append(
            (
                "host overhead ≤ 5 µs/call",
                ", ".join(f"{shape} {x:.2f}" for shape, x in zip(programs, overhead)) + " µs",
                _count([x <= 5 for x in overhead]),
            )
        )
        compiles = e2e.get("compile", {}).values()
        cold = [c.get("kernel_compile_s", c["cold"].get("compile_s")) for c in compiles]
        warm = [c["warm"]["first_call_s"] for c in compiles]
        if cold:
            out.append(
                (
                    "cold compile ≤ 3 s; warm first call ≤ 50 ms",
                    f"{_range([x * 1e3 for x in cold], '{:.0f}')} ms; {_range([x * 1e3 for x in warm], '{:.0f}')} ms",
                    _count([x <= 3 for x in cold] + [x <= 0.05 for x in warm]),
                )
            )
    every = [r for _, sel in chosen.values() for r in sel]
    if every:
        worst = max(r["calc_diff"] for r in every)
        out.append(("calc_diff ≤ 3e-6", f"≤ {worst:.2g} on every shape", "yes" if worst <= 3e-6 else "no"))
    return out


# --- rendering --------------------------------------------------------------------------------------
def machine_line(run: Run) -> str:
    m = run.machine
    parts = [m.get("gpu", run.manifest.get("gpu", "?"))]
    if m.get("sms"):
        parts.append(f"{m['sms']} SMs")
    if m.get("driver"):
        parts.append(f"driver {m['driver']}")
    cuda = m.get("nvcc") or m.get("cuda") or m.get("cuda_driver_api")
    if cuda:
        parts.append(f"CUDA {cuda}")
    parts.append(f"jax {m.get('jax', '?')} / jaxlib {m.get('jaxlib', '?')}, Python {m.get('python', '?')}")
    return ", ".join(parts)


def run_section(run: Run) -> str:
    lines = [f"### {run.name}", "", f"{machine_line(run)}. Files: `results/{run.name}/`.", ""]
    for call in run.manifest.get("calls", []):
        sha = (call.get("git_sha") or "?")[:7] + (" + uncommitted changes" if call.get("dirty") else "")
        steps = ", ".join(
            f"{s['step']}"
            + ("" if s.get("rc", 0) == 0 else " (not finished)" if s["rc"] is None else f" (rc {s['rc']})")
            for s in call.get("steps", [])
        )
        text = f"- call {call['call']} at {sha}"
        if call.get("started"):
            text += f", {call['started']}"
        text += f": `{call['command']}`" if call.get("command") else ""
        if call.get("env"):
            text += " with " + ", ".join(
                f"`{k}={v}`" for k, v in call["env"].items() if not k.startswith("DG_JIT_CACHE")
            )
        if steps:
            text += f"; steps: {steps}"
        if call.get("bench", {}).get("command"):
            text += f"; benchmark: `{call['bench']['command']}`"
        lines.append(text.replace(" with ;", ";"))
    notes = run.manifest.get("notes", [])
    for note in notes:
        lines += ["", note]
    for layout in tables.LAYOUTS:
        table = tables.markdown(in_table_order(run.rows), layout)
        if table:
            lines += ["", f"#### {layout}", "", table]
    if run.end_to_end:
        lines += ["", "#### end to end", "", end_to_end_table(run.end_to_end)]
    return "\n".join(lines)


def in_table_order(rows: list[dict]) -> list[dict]:
    """The last row per (layout, shape), shapes of the benchmark's tables in table order, others after."""
    order = {(layout, shape): i for layout, shapes in TABLES.items() for i, shape in enumerate(shapes)}
    latest = latest_rows(rows)
    return sorted(latest, key=lambda r: order.get((r.get("layout"), r.get("shape")), len(order) + latest.index(r)))


def end_to_end_table(e2e: dict) -> str:
    """Host overhead table, command-buffer line and compile line of an end_to_end.json, as paragraphs."""
    blocks = []
    programs = e2e.get("host_overhead", {})
    if programs:
        table = [
            "| program (32 GEMMs) | jax_dgpt host overhead µs/call | XLA dot µs/call | kernel µs |",
            "|---|---|---|---|",
        ]
        for shape, r in programs.items():
            ours, xla = r["jax_dgpt"], r["xla"]
            table.append(
                f"| {shape} | {ours['overhead_us']:.2f} | {xla['overhead_us']:.2f} | {ours['kernel_us']:.2f} |"
            )
        blocks.append("\n".join(table))
    graphs = {k: v for k, v in e2e.get("host_overhead_command_buffers", {}).items() if isinstance(v, dict)}
    if graphs:
        figures = (
            f"{s} {r['jax_dgpt']['overhead_us']:.2f} (XLA {r['xla']['overhead_us']:.2f})" for s, r in graphs.items()
        )
        blocks.append("With XLA command buffers: " + ", ".join(figures) + " µs/call.")
    compiles = e2e.get("compile", {})
    if compiles:
        cold = (
            f"{s} {1e3 * c.get('kernel_compile_s', c['cold'].get('compile_s')):.0f} ms" for s, c in compiles.items()
        )
        warm = (f"{1e3 * c['warm']['first_call_s']:.0f} ms" for c in compiles.values())
        blocks.append(
            f"Kernel compile, cold: {', '.join(cold)}; first jitted call with a warm disk cache: {', '.join(warm)}."
        )
    return "\n\n".join(blocks)


def sources_line(chosen: dict) -> str:
    by_run: dict[str, list[str]] = {}
    for layout, (run, _) in chosen.items():
        by_run.setdefault(run.name, []).append(layout)
    return "; ".join(f"{', '.join(layouts)} from `{name}`" for name, layouts in by_run.items())


def results_md(runs: list[Run]) -> str:
    chosen = headline(runs)
    e2e = next((run.end_to_end for run in reversed(runs) if run.end_to_end), None)
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python -m benchmarks.report` from `benchmarks/results/<run>/` (manifest.json, "
        "machine.json, results.json, end_to_end.json; `benchmarks/rundir.py` describes the layout): edit those, "
        "not this file. Times are device time per call from the JAX profiler, L2 flushed by a 512 MB write "
        "before every call, median of 15 after 3 warm-up calls, every function of a shape in one profiler "
        "session (`benchmarks/bench.py`); calc_diff as in `docs/numerical_contract.md`. For a shape measured "
        "more than once in a run, the last row counts. The lent GPU is an H200, issue 4's targets were set for "
        "the H100: only ratios against XLA measured in the same run compare across machines.",
        "",
        "## Latest complete tables",
        "",
        f"The newest run with every shape of a layout: {sources_line(chosen)}.",
        "",
    ]
    for layout, (_, sel) in chosen.items():
        lines.append(f"- {tables.summary(sel, layout)}")
    lines += [
        "",
        "## Issue 4 targets against the latest complete tables",
        "",
        "| target | figure | met? |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | {figure} | {met} |" for t, figure, met in targets(chosen, e2e)]
    lines += ["", "## Runs, newest first", ""]
    lines += ["\n\n".join(run_section(run) for run in reversed(runs)), ""]
    return "\n".join(lines)


def readme_block(runs: list[Run], chart: str | None) -> str:
    chosen = headline(runs)
    lines = [f"Latest complete tables ({sources_line(chosen)}; `benchmarks/RESULTS.md` has every run):", ""]
    if "normal" in chosen:
        run, sel = chosen["normal"]
        lines += [
            f"{machine_line(run)}.",
            "",
            "| shape (M×N×K) | jax_dgpt µs | XLA fp8 default µs | × | XLA fp8 HIGHEST µs | × |",
            "|---|---|---|---|---|---|",
        ]
        for r in (r for r in sel if r["shape"] in README_SHAPES):
            us = f"{r['us']:.1f}" + (f" ({r['tflops']:.0f} TFLOPS)" if r["shape"] in COMPUTE_BOUND else "")
            lines.append(
                f"| {r['shape'].replace('x', '×')} | {us} | {tables._cell(r['xla_us'])} | {r['speedup']:.2f} | "
                f"{tables._cell(r['xla_highest_us'])} | {r['speedup_highest']:.2f} |"
            )
    for layout, label in (("normal", "22 normal shapes"), ("decode", "21 decode shapes (M ≤ 32)")):
        if layout in chosen:
            sel = chosen[layout][1]
            lines.append(
                f"| **geomean, {label}** | | | **{geomean([r['speedup'] for r in sel]):.2f}** | | "
                f"**{geomean([r['speedup_highest'] for r in sel]):.2f}** |"
            )
    grouped = []
    if "contiguous" in chosen:
        sel = chosen["contiguous"][1]
        grouped.append(
            f"contiguous {_range([r['tflops'] for r in sel], '{:.0f}')} TFLOPS, "
            f"{_range([r['speedup'] for r in sel], '{:.1f}')}× faster than fp8 `ragged_dot`"
        )
    if "masked" in chosen:
        sel = chosen["masked"][1]
        grouped.append(
            f"masked {_range([r['speedup'] for r in sel], '{:.1f}')}× faster than a batched fp8 einsum, "
            f"{geomean([r['vs_seed'] for r in sel if r.get('vs_seed')]):.2f}× the reference library's "
            + ("H200 times with the same masks" if any(r.get("seed_h200_us") for r in sel) else "H100 times")
            + " (geomean)"
        )
    if grouped:
        lines += ["", "Grouped GEMMs: " + "; ".join(grouped) + "."]
    if chart:
        lines += ["", f"![speedup per shape, log scale]({chart})"]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"expected one {BEGIN} ... {END} pair")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def draw_headline_chart(runs: list[Run], path: pathlib.Path) -> None:
    from benchmarks import chart

    try:
        chosen = headline(runs)
        rows = [r for layout in CHART_TABLES if layout in chosen for r in chosen[layout][1]]
        chart.draw(rows, str(path), "latest complete tables")
    except ImportError:
        print(f"matplotlib not installed: {path} not redrawn", file=sys.stderr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS.md"))
    p.add_argument("--readme", default=None, help="also replace the headline block of this README")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file would change")
    args = p.parse_args(argv)
    results = pathlib.Path(args.results)
    runs = load_runs(results)
    chart_path = results / "headline.png"
    if not args.check:
        draw_headline_chart(runs, chart_path)
    outputs = {pathlib.Path(args.out): results_md(runs)}
    if args.readme:
        readme = pathlib.Path(args.readme)
        chart = chart_path.resolve().relative_to(readme.resolve().parent).as_posix() if chart_path.exists() else None
        outputs[readme] = replace_block(readme.read_text(), readme_block(runs, chart))
    stale = [path for path, text in outputs.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path} is not what benchmarks.report generates", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(outputs[path])
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
