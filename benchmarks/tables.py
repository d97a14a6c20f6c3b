"""Markdown tables from bench.py's result rows: bench.py prints them at the end of a run, and

    python benchmarks/tables.py results.json [more_results.json ...]

renders the tables of one or more saved runs (later files add rows; RESULTS.md is written from this).
"""

from __future__ import annotations

import json
import math
import sys

# layout: (column title, row key) pairs. Times in µs, throughput in TFLOPS and GB/s.
COLUMNS = {
    "normal": [
        ("M×N×K", "shape"),
        ("jax_dgpt µs", "us"),
        ("TFLOPS", "tflops"),
        ("GB/s", "gbps"),
        ("XLA fp8 default µs", "xla_us"),
        ("×default", "speedup"),
        ("XLA HIGHEST µs", "xla_highest_us"),
        ("×HIGHEST", "speedup_highest"),
        ("XLA bf16 µs", "xla_bf16_us"),
        ("calc_diff", "calc_diff"),
    ],
    "contiguous": [
        ("G, expected_m, N, K", "shape"),
        ("jax_dgpt µs", "us"),
        ("TFLOPS (valid rows)", "tflops"),
        ("ragged_dot fp8 µs", "ragged_fp8_us"),
        ("×fp8", "speedup"),
        ("ragged_dot bf16 µs", "ragged_bf16_us"),
        ("×bf16", "speedup_bf16"),
        ("calc_diff", "calc_diff"),
    ],
    "masked": [
        ("G, expected_m, N, K", "shape"),
        ("valid rows", "rows"),
        ("jax_dgpt µs", "us"),
        ("TFLOPS (valid rows)", "tflops"),
        ("batched fp8 einsum µs", "einsum_us"),
        ("×einsum", "speedup"),
        ("seed (H100) µs", "seed_h100_us"),
        ("seed / ours", "vs_seed"),
        ("calc_diff", "calc_diff"),
    ],
}
COLUMNS["decode"] = COLUMNS["normal"]


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, list):
        return "+".join(str(v) for v in value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if abs(value) < 1e-3:
            return f"{value:.1e}"
        if abs(value) >= 100:
            return f"{value:.0f}"
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def geomean(xs) -> float:
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def markdown(rows: list[dict], layout: str) -> str:
    """One markdown table of the rows of `layout`, plus a geomean line; "" when there are none."""
    sel = [r for r in rows if r.get("layout") == layout]
    if not sel:
        return ""
    columns = COLUMNS[layout]
    # Forced variants (bench.py --block-n …) add "<label>_us" keys: one more column each.
    extra = sorted({k for r in sel for k in r if k.endswith("_us") and k not in {key for _, key in columns}})
    header = [title for title, _ in columns] + [k[:-3] + " µs" for k in extra]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sel:
        cells = [_cell(r.get(key)) for _, key in columns] + [_cell(r.get(k)) for k in extra]
        lines.append("| " + " | ".join(cells) + " |")
    speedups = [r["speedup"] for r in sel]
    lines.append("")
    lines.append(
        f"{layout}: {len(sel)} shapes, geomean speedup {geomean(speedups):.3f} (min {min(speedups):.3f}), "
        f"max calc_diff {max(r['calc_diff'] for r in sel):.2g}"
        + (f", geomean seed / ours {geomean([r['vs_seed'] for r in sel]):.3f}" if layout == "masked" else "")
    )
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    rows = []
    for path in paths:
        rows += json.load(open(path))["rows"]
    for layout in ("normal", "decode", "contiguous", "masked"):
        table = markdown(rows, layout)
        if table:
            print(f"\n### {layout}\n\n{table}")


if __name__ == "__main__":
    main(sys.argv[1:])
