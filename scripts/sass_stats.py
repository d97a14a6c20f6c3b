"""Counts synchronisation and MMA instructions in the SASS of chosen kernel configurations (needs cuobjdump,
which the GPU machine has): `scripts/gpu_check.sh sass`. Prints one table row per configuration and writes
each full listing to OUT/sass_<label>.txt, so fences in a mainloop (MEMBAR, CCTL) show up without a profiler.

    python scripts/sass_stats.py OUT_DIR [LABEL ...]     (default: every configuration below)
"""

import collections
import os
import re
import subprocess
import sys

from jax_dgpt import _native, heuristics
from jax_dgpt.heuristics import Problem

# label: (problem, forced fields) -> the heuristics' config with those fields
CONFIGS = {
    "normal_128x208": (Problem("normal", 4096, 7168, 16384, 1), {}),
    "split2_64x32": (Problem("normal", 64, 2112, 7168, 1), {}),
    "k_interleave_64x16": (Problem("normal", 16, 2112, 7168, 1), {"k_interleave": 1}),
    "masked_128x128": (Problem("masked", 4096, 4096, 7168, 1, 1024), {}),
    # The same 128 x 208 tile, 4 stages: the ragged kernel ran ~7% slower per tile than the padded one and issued
    # ~20% more instructions (ncu, run 0e51a82); the listings show where.
    "ragged_128x208": (Problem("ragged", 31320, 4096, 7168, 4), {}),
    "contiguous_128x208": (Problem("contiguous", 31616, 4096, 7168, 4), {}),
}
# FP8 wgmma shows as QGMMA in Hopper SASS (HGMMA is the fp16/bf16 form).
OPCODES = ("MEMBAR", "CCTL", "FENCE", "SYNCS", "BAR", "QGMMA", "WARPGROUP", "UTMALDG", "UTMASTG", "FADD", "MOV", "BRA")


def count_opcodes(sass: str) -> collections.Counter:
    """Opcode (without modifiers) -> count, over the instruction lines of a cuobjdump -sass listing."""
    instruction = r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)"
    return collections.Counter(op.split(".")[0] for op in re.findall(instruction, sass))


def main(out_dir: str, labels: list[str]) -> int:
    os.makedirs(out_dir, exist_ok=True)
    unknown = set(labels) - set(CONFIGS)
    if unknown:
        raise SystemExit(f"unknown configurations {sorted(unknown)}; known: {sorted(CONFIGS)}")
    print("| config | " + " | ".join(OPCODES) + " | all |")
    print("|---" * (len(OPCODES) + 2) + "|")
    for label, (problem, forced) in CONFIGS.items():
        if labels and label not in labels:
            continue
        config = heuristics.select_config(problem, 132, tuple(sorted(forced.items())))
        entry = _native.load().compile_gemm(config.as_attribute(), False)
        sass = subprocess.run(["cuobjdump", "-sass", entry["path"]], capture_output=True, text=True, check=True).stdout
        with open(os.path.join(out_dir, f"sass_{label}.txt"), "w") as f:
            f.write(sass)
        counts = count_opcodes(sass)
        print(f"| {label} | " + " | ".join(str(counts.get(op, 0)) for op in OPCODES) + f" | {sum(counts.values())} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".", sys.argv[2:]))
