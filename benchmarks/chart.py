"""Draws the speedup chart from results.json (bench.py's output): one bar per shape and baseline.

python benchmarks/chart.py results.json chart.png
"""

from __future__ import annotations

import json
import sys


def main(path: str, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.load(open(path))["rows"]
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(rows)), 4.5))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["speedup"] for r in rows], width=0.4, label="vs XLA default / ragged_dot / einsum")
    ax.bar(
        [x + 0.2 for x in xs],
        [r.get("speedup_highest", r.get("speedup_bf16", r.get("vs_seed", 0))) for r in rows],
        width=0.4,
        label="vs XLA HIGHEST (normal) / bf16 ragged_dot (contiguous) / seed (masked)",
    )
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(list(xs), [f"{r['layout'][:4]} {r['shape']}" for r in rows], rotation=80, fontsize=7)
    ax.set_ylabel("speedup (x)")
    ax.set_title("jax_dgpt speedup per shape")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
