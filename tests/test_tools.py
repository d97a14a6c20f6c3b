"""The measurement tools on the CPU: the benchmark's bookkeeping (the kernels fall back to the reference
there) and the SASS opcode counter of scripts/sass_stats.py.

The profiler timer needs GPU kernels, so a stand-in returns fixed times; what is checked is everything
around it: each forced variant runs inside its own context on a fresh function and records its time and
calc_diff, masked rows carry the drawn counts (and no multicast variant), and results.json is rewritten
after every shape.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import bench  # noqa: E402
import tables  # noqa: E402


class FixedTimer:
    def time_us(self, *fns, calls=15, warmup=3):
        for fn in fns:
            fn()
        return [2.0] * len(fns)


def test_forced_variants_are_recorded(tmp_path):
    rows = bench.Rows(str(tmp_path / "results.json"), {"device": "cpu"})
    variants = bench.forced_variants(k_splits=(2,), multicast=True, block_ns=(64,), stages=(3,), pingpong=True)
    bench.bench_normal(FixedTimer(), [(128, 256, 256)], rows, variants)
    shape = (2, 64, 256, 256)
    bench.bench_masked(FixedTimer(), [(shape, 45.6, bench.masked_draws([shape])[0])], rows, variants)
    normal, masked = rows
    for label in ("split2", "mc2", "pp", "bn64", "st3"):
        assert normal[f"{label}_us"] == 2.0 and normal[f"{label}_diff"] <= 3e-6, (label, normal)
    assert "mc2_us" not in masked  # multicast is for normal GEMMs only
    assert masked["pp_us"] == 2.0 and masked["pp_diff"] <= 3e-6, masked
    assert len(masked["rows"]) == 2 and masked["calc_diff"] <= 3e-6 and masked["vs_seed"] == 45.6 / 2.0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["layout"] for r in saved["rows"]] == ["normal", "masked"]
    table = tables.markdown(saved["rows"], "masked").splitlines()
    assert table[0].startswith("| G, expected_m, N, K | valid rows | jax_dgpt µs |") and "pp µs" in table[0]
    assert table[2].startswith(f"| G=2 m=64 N=256 K=256 | {'+'.join(map(str, masked['rows']))} | 2.00 |")
    assert "geomean seed / ours 22.800" in table[-1] and tables.markdown(saved["rows"], "contiguous") == ""


def test_sass_opcode_counts():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "scripts"))
    import sass_stats

    listing = """
        /*0010*/                   MOV R1, c[0x0][0x28] ;                      /* 0x00000a0000017a02 */
        /*0020*/              @!PT MEMBAR.ALL.GPU ;                            /* 0x0000000000007992 */
        /*0030*/               @P0 SYNCS.ARRIVE.TRANS64.RED.A1T0 RZ, [UR4+URZ], RZ ; /* 0x0000000000007992 */
        /*0040*/              @UP1 QGMMA.64x208x32.F32.E4M3.E4M3 R24, gdesc[UR8], RZ ; /* 0x0000000000007992 */
        /*0050*/                   MEMBAR.SC.CTA ;                             /* 0x0000000000007992 */
    """
    counts = sass_stats.count_opcodes(listing)
    assert counts == {"MOV": 1, "MEMBAR": 2, "SYNCS": 1, "QGMMA": 1}, counts
