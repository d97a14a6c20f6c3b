"""Counts synchronisation and MMA instructions in the SASS of chosen kernel configurations (needs cuobjdump,
which the GPU machine has): `scripts/gpu_check.sh sass`. Prints one table row per configuration and writes
each full listing to OUT/sass_<label>.txt, so fences in a mainloop (MEMBAR, CCTL) show up without a profiler.

    python scripts/sass_stats.py OUT_DIR
"""

import collections
import os
import re
import subprocess
import sys

from jax_dgpt import _C, heuristics

# label: (kind, m, n, k, groups, block_m, block_n, num_sms, {compile_gemm keywords})
CONFIGS = {
    "normal_128x208": ("normal", 4096, 7168, 16384, 1, 128, 208, 132, {}),
    "multicast_128x208": ("normal", 4096, 7168, 16384, 1, 128, 208, 132, {"num_multicast": 2}),
    "pingpong_128x208": ("normal", 4096, 7168, 16384, 1, 128, 208, 132, {"pingpong": 1}),
    "split2_64x128": ("normal", 64, 2112, 7168, 1, 64, 128, 34, {"num_k_splits": 2}),
    "pingpong_64x32": ("normal", 16, 2112, 7168, 1, 64, 32, 66, {"pingpong": 1}),
    "masked_128x128": ("masked", 4096, 4096, 7168, 1, 128, 128, 132, {}),
}
# FP8 wgmma shows as QGMMA in Hopper SASS (HGMMA is the fp16/bf16 form).
OPCODES = ("MEMBAR", "CCTL", "FENCE", "SYNCS", "BAR", "QGMMA", "WARPGROUP", "UTMALDG", "UTMASTG", "FADD")


def count_opcodes(sass: str) -> collections.Counter:
    """Opcode (without modifiers) -> count, over the instruction lines of a cuobjdump -sass listing."""
    instruction = r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)"
    return collections.Counter(op.split(".")[0] for op in re.findall(instruction, sass))


def main(out_dir: str) -> int:
    os.makedirs(out_dir, exist_ok=True)
    print("| config | " + " | ".join(OPCODES) + " |")
    print("|---" * (len(OPCODES) + 1) + "|")
    for label, (kind, m, n, k, groups, block_m, block_n, sms, extra) in CONFIGS.items():
        stages = heuristics.select_num_stages(block_m, block_n, extra.get("num_k_splits", 1), extra.get("pingpong", 0))
        entry = _C.compile_gemm(kind, m, n, k, groups, block_m, block_n, stages, sms, **extra)
        sass = subprocess.run(["cuobjdump", "-sass", entry["path"]], capture_output=True, text=True, check=True).stdout
        with open(os.path.join(out_dir, f"sass_{label}.txt"), "w") as f:
            f.write(sass)
        counts = count_opcodes(sass)
        print(f"| {label} | " + " | ".join(str(counts.get(op, 0)) for op in OPCODES) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
