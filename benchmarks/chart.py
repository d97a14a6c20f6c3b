"""Draws the speedup chart of bench.py's result rows: one pair of bars per shape (the last row per shape).

python -m benchmarks.chart results.json chart.png
"""

from __future__ import annotations

import json
import sys

from benchmarks.tables import latest_rows


def draw(rows: list[dict], out: str, title: str = "jax_dgpt speedup per shape") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Rows with a baseline to compare with (some training-table rows have none).
    rows = [r for r in latest_rows(rows) if isinstance(r.get("speedup"), (int, float)) and r["speedup"] > 0]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(rows)), 4.5))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["speedup"] for r in rows], width=0.4, label="vs XLA default / ragged_dot / einsum")
    ax.bar(
        [x + 0.2 for x in xs],
        [r.get("speedup_highest", r.get("speedup_bf16", r.get("vs_seed"))) or 0 for r in rows],
        width=0.4,
        label="vs XLA HIGHEST (normal) / bf16 ragged_dot (contiguous) / seed (masked)",
    )
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(list(xs), [f"{r['layout'][:4]} {r['shape']}" for r in rows], rotation=80, fontsize=7)
    # Log scale: the grouped layouts' 5-45x would otherwise flatten the normal shapes' 0.85-1.4x.
    ax.set_yscale("log")
    ticks = [t for t in (0.5, 1, 2, 5, 10, 20, 50) if t <= 1.2 * max(r["speedup"] for r in rows)]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_ylabel("speedup (x, log scale)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(path: str, out: str) -> None:
    with open(path) as f:
        draw(json.load(f)["rows"], out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
