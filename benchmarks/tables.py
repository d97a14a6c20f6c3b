"""Markdown tables from bench.py's result rows: bench.py prints them at the end of a run,
benchmarks/report.py builds RESULTS.md and the README's table with them, and

    python -m benchmarks.tables results.json [more_results.json ...]

renders the tables of saved runs (for a shape measured more than once, the last row counts).
"""

from __future__ import annotations

import json
import math
import re
import sys

LAYOUTS = (
    "normal",
    "decode",
    "contiguous",
    "masked",
    "sweep",
    "ragged",
    "wgrad",
    "k_grouped",
    "scaled",
    "training",
    "moe_training",
)
# --only names: a table whose rows carry several layouts ("training": "training" and "moe_training").
TABLES = tuple(layout for layout in LAYOUTS if layout != "moe_training")

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
        ("seed (H200, same masks) µs", "seed_h200_us"),
        ("seed (H100, other masks) µs", "seed_h100_us"),
        ("seed / ours", "vs_seed"),
        ("calc_diff", "calc_diff"),
    ],
    "ragged": [
        ("G, expected_m, N, K", "shape"),
        ("jax_dgpt ragged µs", "us"),
        ("TFLOPS (valid rows)", "tflops"),
        ("GB/s", "gbps"),
        ("contiguous (padded) µs", "contiguous_us"),
        ("×contiguous", "vs_contiguous"),
        ("ragged_dot fp8 µs", "ragged_fp8_us"),
        ("×fp8", "speedup"),
        ("ragged_dot bf16 µs", "ragged_bf16_us"),
        ("×bf16", "speedup_bf16"),
        ("tokamax bf16 µs", "tokamax_bf16_us"),
        ("×tokamax", "vs_tokamax"),
        ("calc_diff", "calc_diff"),
        ("layer", "model"),
    ],
    "wgrad": [
        ("M×N×K", "shape"),
        ("jax_dgpt µs", "us"),
        ("TFLOPS", "tflops"),
        ("XLA fp8→f32 + c µs", "xla_us"),
        ("×XLA", "speedup"),
        ("seed (H200) µs", "seed_us"),
        ("seed / ours", "vs_seed"),
        ("calc_diff", "calc_diff"),
    ],
    "k_grouped": [
        ("G, K per group, M, N", "shape"),
        ("jax_dgpt µs", "us"),
        ("TFLOPS", "tflops"),
        ("GB/s", "gbps"),
        ("per-group launches µs", "per_group_us"),
        ("×per-group", "speedup"),
        ("seed (H200, summed) µs", "seed_us"),
        ("seed / ours", "vs_seed"),
        ("calc_diff", "calc_diff"),
    ],
    "scaled": [
        ("M×N×K", "shape"),
        ("scaled µs", "us"),
        ("TFLOPS", "tflops"),
        ("unscaled µs", "unscaled_us"),
        ("unscaled / scaled", "speedup"),
        ("calc_diff", "calc_diff"),
    ],
}
COLUMNS["decode"] = COLUMNS["normal"]
COLUMNS["training"] = [
    ("M×N×K", "shape"),
    ("fp8 fwd+bwd µs", "us"),
    ("TFLOPS", "tflops"),
    ("XLA bf16 fwd+bwd µs", "xla_bf16_us"),
    ("×bf16", "speedup"),
    ("per-tensor µs", "per_tensor_us"),
    ("3 GEMMs alone µs", "gemms_us"),
    ("quantization µs", "quantization_us"),
    ("calc_diff", "calc_diff"),
]
COLUMNS["moe_training"] = [
    ("T, H, F, E, k", "shape"),
    ("fp8 step µs", "us"),
    ("TFLOPS", "tflops"),
    ("ragged_dot bf16 µs", "ragged_bf16_us"),
    ("×bf16", "speedup_bf16"),
    ("tokamax bf16 µs", "tokamax_bf16_us"),
    ("×tokamax", "vs_tokamax"),
    ("calc_diff vs f32", "calc_diff"),
]
COLUMNS["sweep"] = [
    ("M×N×K", "shape"),
    ("layer", "model"),
    ("jax_dgpt µs", "us"),
    ("TFLOPS", "tflops"),
    ("GB/s", "gbps"),
    ("XLA fp8 default µs", "xla_us"),
    ("×default", "speedup"),
    ("calc_diff", "calc_diff"),
]


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


def latest_rows(rows: list[dict]) -> list[dict]:
    """One row per (layout, shape): the last one measured, in the order shapes first appeared."""
    latest: dict[tuple[str, str], dict] = {}
    for r in rows:
        key = (r.get("layout"), r.get("shape"))
        latest.pop(key, None)
        latest[key] = r
    order = list(dict.fromkeys((r.get("layout"), r.get("shape")) for r in rows))
    return [latest[key] for key in order]


def summary(sel: list[dict], layout: str) -> str:
    speedups = [r["speedup"] for r in sel if isinstance(r.get("speedup"), float)]
    line = f"{layout}: {len(sel)} shapes"
    if speedups:
        line += f", geomean speedup {geomean(speedups):.3f} (min {min(speedups):.3f})"
    line += f", max calc_diff {max(r['calc_diff'] for r in sel):.2g}"
    for key, label in (
        ("speedup_highest", "XLA HIGHEST"),
        ("speedup_bf16", "bf16"),
        ("vs_contiguous", "contiguous"),
        ("vs_tokamax", "tokamax"),
    ):
        values = [r[key] for r in sel if isinstance(r.get(key), float)]
        if values:
            line += f", geomean over {label} {geomean(values):.3f}"
    seeds = [r["vs_seed"] for r in sel if r.get("vs_seed")]
    if seeds:
        line += f", geomean seed / ours {geomean(seeds):.3f} (min {min(seeds):.3f})"
    return line


def markdown(rows: list[dict], layout: str) -> str:
    """One markdown table of the rows of `layout` (the last row per shape), plus a geomean line; "" when
    there are none. Rows from several calls of one run get a "call" column."""
    sel = [r for r in latest_rows(rows) if r.get("layout") == layout]
    if not sel:
        return ""
    columns = list(COLUMNS[layout])
    if len({r.get("call") for r in sel}) > 1:
        columns.append(("call", "call"))
    # Forced variants (bench.py --block-n …) add "<label>_us" keys: one more column each.
    extra = sorted({k for r in sel for k in r if k.endswith("_us") and k not in {key for _, key in columns}})
    header = [title for title, _ in columns] + [k[:-3] + " µs" for k in extra]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sel:
        cells = [_cell(r.get(key)) for _, key in columns] + [_cell(r.get(k)) for k in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", summary(sel, layout)])


# One printed line of bench.py (print_row): layout, shape, µs, TFLOPS, GB/s, diff, then key=value pairs.
_LINE = re.compile(
    r"^(" + "|".join(LAYOUTS) + r")\s+(.+?)\s+([\d.]+) us\s+([\d.]+) TFLOPS\s+([\d.]+) GB/s diff=(\S+)(.*)$"
)
_PAIR = re.compile(r"(\w+)=(\[[^\]]*\]|\S+)")


def _value(text: str):
    if text.startswith("["):
        return [int(x) for x in re.findall(r"-?\d+", text)]
    try:
        return float(text)
    except ValueError:
        return text


def rows_from_log(text: str) -> list[dict]:
    """The rows of bench.py's printed lines (values as printed, 3 significant digits): for runs whose
    results.json did not come back."""
    rows = []
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        layout, shape, us, tflops, gbps, diff, rest = match.groups()
        row = dict(layout=layout, shape=shape, us=float(us), tflops=float(tflops), gbps=float(gbps))
        row["calc_diff"] = float(diff)
        row.update((key, _value(value)) for key, value in _PAIR.findall(rest))
        rows.append(row)
    return rows


def main(paths: list[str]) -> None:
    rows = []
    for path in paths:
        with open(path) as f:
            rows += json.load(f)["rows"]
    for layout in LAYOUTS:
        table = markdown(rows, layout)
        if table:
            print(f"\n### {layout}\n\n{table}")


if __name__ == "__main__":
    main(sys.argv[1:])
