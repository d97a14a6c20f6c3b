"""The measurement and reporting tools, on the CPU: the benchmark's bookkeeping end to end (`--tiny` runs the CPU
reference), its exit without a Hopper GPU and its DG_NSYS_PROFILING timer, the tables, the run directories
(benchmarks/rundir.py), the RESULTS.md/README generator (benchmarks/report.py), the skip summary of conftest.py,
the demo's CPU output, the grouped helpers of jax_dgpt.testing, and the SASS opcode counter.

The benchmarks are a package run from the repository root (`python -m benchmarks.bench`), as here with
`python -m pytest` from the root; subprocesses run there too.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_dgpt
from benchmarks import bench, profiling, report, rundir, tables
from jax_dgpt import testing

REPO = pathlib.Path(__file__).resolve().parent.parent


def run_module(args, cwd=REPO, env=None, timeout=600):
    env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def load_script(name: str):
    """A module of scripts/ (not a package), loaded from its file."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the benchmark ------------------------------------------------------------------------------------
@pytest.mark.skipif(testing.hopper_gpu_visible(), reason="a Hopper GPU is visible: the benchmark would run")
def test_bench_without_a_hopper_gpu_says_it_needs_one(tmp_path):
    done = run_module(["-m", "benchmarks.bench", "--quick", "--out", str(tmp_path)])
    assert done.returncode == 2, done.stderr
    assert "needs a Hopper GPU" in done.stderr and "--tiny" in done.stderr
    assert not (tmp_path / "results.json").exists()


def test_bench_tiny_run_records_every_layout_and_forced_variant(tmp_path):
    args = ["-m", "benchmarks.bench", "--tiny", "--out", str(tmp_path), "--k-splits", "2", "--k-interleave"]
    done = run_module(args, env={"DG_NSYS_PROFILING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.loads((tmp_path / "results.json").read_text())
    rows, meta = saved["rows"], saved["meta"]
    assert "DG_NSYS_PROFILING=1" in meta["timing"] and meta["command"].endswith("--k-splits 2 --k-interleave")
    assert [r["layout"] for r in rows] == ["normal", "normal", "decode", "decode", "contiguous", "masked"]
    shapes = [r["shape"] for r in rows]
    assert shapes[:4] == [f"{m}x{n}x{k}" for m, n, k in bench.TINY["normal"] + bench.TINY["decode"]], shapes
    for r in rows:
        assert r["calc_diff"] <= 3e-6 and r["us"] > 0 and r["setup_s"] >= 0 and r["bench_s"] >= r["setup_s"], r
        for label in ("split2", "ki"):
            value = r[f"{label}_us"]
            # A forced value a shape cannot take is recorded as n/a with the reason; otherwise time and calc_diff.
            assert (isinstance(value, str) and value.startswith("n/a")) or r[f"{label}_diff"] <= 3e-6, (label, r)
    contiguous, masked = rows[4], rows[5]
    assert contiguous["rows"] == testing.generate_group_rows(2, 100, 3) and contiguous["speedup_bf16"] > 0
    assert masked["rows"] == bench.masked_draws(bench.TINY["masked"])[0] and masked["vs_seed"] is None
    # The printed lines carry the same rows, and the tables come at the end.
    printed = tables.rows_from_log(done.stdout)
    assert [(r["layout"], r["shape"]) for r in printed] == [(r["layout"], r["shape"]) for r in rows]
    assert "| M×N×K | jax_dgpt µs |" in done.stdout and "masked: 1 shapes" in done.stdout


def test_nsys_profiling_runs_each_op_n_times_without_the_profiler(monkeypatch):
    assert profiling.timer_class("gpu", nsys=True) is profiling.RepeatTimer
    assert profiling.timer_class("gpu", nsys=False) is profiling.Timer
    assert profiling.timer_class("cpu", nsys=False) is profiling.RepeatTimer

    def no_profiler(*args, **kwargs):
        raise AssertionError("the JAX profiler was started")

    monkeypatch.setattr(jax.profiler, "start_trace", no_profiler)
    calls = []
    times = profiling.RepeatTimer().time_us(lambda: calls.append("a"), lambda: calls.append("b"), calls=5, warmup=2)
    assert len(times) == 2 and calls == ["a"] * 7 + ["b"] * 7  # warm-up + measured calls, nothing in between


def test_forced_variants_use_the_forcing_contexts():
    variants = bench.forced_variants(k_splits=(2,), block_ms=(64,), block_ns=(128,), stages=(3,), k_interleave=True)
    assert list(variants) == ["split2", "ki", "bm64", "bn128", "st3"]
    with variants["bn128"]():
        assert dict(jax_dgpt.forcing.forced_overrides()) == {"block_n": 128}
    with variants["ki"](), variants["split2"]():
        assert dict(jax_dgpt.forcing.forced_overrides()) == {"k_interleave": 1, "num_k_splits": 2}
    assert bench.forced_variants() == {}


# --- tables -------------------------------------------------------------------------------------------
def test_tables_last_row_per_shape_and_printed_lines_round_trip(capsys):
    first = dict(layout="masked", shape="G=2 m=64 N=256 K=256", us=2.0, tflops=1.5, gbps=3.0, calc_diff=1.4e-6)
    first.update(einsum_us=4.0, speedup=2.0, seed_h100_us=45.6, vs_seed=22.8, rows=[70, 50], bn144_us=3.0, call=1)
    second = dict(first, us=4.0, speedup=1.0, vs_seed=11.4, call=2)
    table = tables.markdown([first, second], "masked").splitlines()
    assert table[0].startswith("| G, expected_m, N, K | valid rows | jax_dgpt µs |") and "bn144 µs" in table[0]
    assert len(table) == 5 and table[2].startswith("| G=2 m=64 N=256 K=256 | 70+50 | 4.00 |")
    assert "geomean seed / ours 11.400" in table[-1] and tables.markdown([first], "normal") == ""
    bench.print_row(first)
    (parsed,) = tables.rows_from_log(capsys.readouterr().out)
    assert parsed["shape"] == first["shape"] and parsed["rows"] == [70, 50] and parsed["bn144_us"] == 3.0


# --- run directories and the report -------------------------------------------------------------------
def test_gpu_short_names():
    assert rundir.gpu_short_name("NVIDIA H200") == "h200"
    assert rundir.gpu_short_name("NVIDIA H100 80GB HBM3") == "h100"
    assert rundir.gpu_short_name("cpu") == "cpu"


def test_run_directory_init_step_file_and_merge(tmp_path, monkeypatch):
    monkeypatch.setenv("DGPT_GIT_SHA", "0123456789abcdef")
    monkeypatch.setenv("DGPT_GIT_DIRTY", "1")
    monkeypatch.setenv("BENCH_ARGS", "--quick")
    monkeypatch.setattr(rundir, "machine_info", lambda: dict(gpu="NVIDIA H200", driver="580"))
    repo_results = tmp_path / "results"

    def device_call(out):
        run = rundir.init(str(out), command="scripts/gpu_check.sh bench")
        (run / "results.json").write_text(json.dumps(dict(meta={"command": "bench"}, rows=[dict(shape="s")])))
        (tmp_path / "stage").mkdir(exist_ok=True)
        (tmp_path / "stage" / "bench.log").write_text(f"log of {out.name}\n")
        with tarfile.open(run / "logs.tar.gz", "w:gz") as tar:
            tar.add(tmp_path / "stage" / "bench.log", arcname="bench.log")
        (run / "gpu_tests.log").write_text("stopped mid-way\n")  # a step killed by the time limit
        rundir.step(str(run), "bench", 0, 12.5, "python -m benchmarks.bench", ["bench.log"])
        return run

    run = device_call(tmp_path / "out1")
    assert run.name == f"{datetime.datetime.now(datetime.UTC).date().isoformat()}_h200_0123456"
    manifest = json.loads((run / "manifest.json").read_text())
    (call,) = manifest["calls"]
    assert call["git_sha"] == "0123456789abcdef" and call["dirty"] is True and call["env"]["BENCH_ARGS"] == "--quick"
    assert call["steps"] == [
        dict(step="bench", rc=0, seconds=12.5, command="python -m benchmarks.bench", logs=["logs/bench.log"])
    ]
    assert call["bench"] == {"command": "bench"} and json.loads((run / "machine.json").read_text())["driver"] == "580"

    filed = rundir.file_run(str(run), str(repo_results))
    assert sorted(p.name for p in filed.iterdir()) == ["logs", "machine.json", "manifest.json", "results.json"]
    assert sorted(p.name for p in (filed / "logs").iterdir()) == ["bench.log", "gpu_tests.log"]
    # A second call of the same run (same date, GPU, sha) merges: calls appended, rows numbered, logs kept apart.
    rundir.file_run(str(device_call(tmp_path / "out2")), str(repo_results))
    merged = json.loads((filed / "manifest.json").read_text())
    assert [c["call"] for c in merged["calls"]] == [1, 2]
    assert [r["call"] for r in json.loads((filed / "results.json").read_text())["rows"]] == [1, 2]
    assert (filed / "logs" / "bench_call2.log").read_text() == "log of out2\n"


def test_run_directory_without_git_gets_the_checkout_sha_when_filed(tmp_path, monkeypatch):
    monkeypatch.delenv("DGPT_GIT_SHA", raising=False)
    monkeypatch.setattr(rundir, "machine_info", lambda: dict(gpu="cpu"))
    monkeypatch.setattr(rundir, "git_state", lambda repo=None: dict(git_sha=None, dirty=None, sha_source="unknown"))
    run = rundir.init(str(tmp_path / "out"))
    assert run.name.endswith("_cpu_nosha")
    monkeypatch.setattr(
        rundir, "git_state", lambda repo=None: dict(git_sha="feedbeef00", dirty=False, sha_source="git")
    )
    filed = rundir.file_run(str(run), str(tmp_path / "results"))
    assert filed.name.endswith("_cpu_feedbee")
    assert json.loads((filed / "manifest.json").read_text())["calls"][0]["git_sha"] == "feedbeef00"


def fake_run(results: pathlib.Path, name: str, started: str, layouts: dict, e2e=None) -> None:
    folder = results / name
    folder.mkdir(parents=True)
    manifest = dict(
        run=name, date=started[:10], gpu="NVIDIA H200", git_sha=name[-7:], dirty=False, notes=[f"note {name}"]
    )
    manifest["calls"] = [dict(call=1, started=started, git_sha=name[-7:], dirty=False, command="gpu_check.sh bench")]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "machine.json").write_text(json.dumps(dict(gpu="NVIDIA H200", sms=132, jax="0.11.2", jaxlib="0.11.2")))
    rows = []
    for layout, (shapes, speedup) in layouts.items():
        for shape in shapes:
            row = dict(layout=layout, shape=shape, us=10.0, tflops=100.0, gbps=1000.0, calc_diff=1.4e-6)
            row.update(speedup=speedup, speedup_highest=speedup, xla_us=10.0 * speedup, xla_highest_us=10.0 * speedup)
            rows.append(row)
    (folder / "results.json").write_text(json.dumps(dict(meta={}, rows=rows)))
    if e2e:
        (folder / "end_to_end.json").write_text(json.dumps(e2e))


def test_report_uses_the_newest_complete_table_per_layout(tmp_path):
    results = tmp_path / "results"
    normal, decode = report.TABLES["normal"], report.TABLES["decode"]
    fake_run(results, "2026-01-01_h200_aaaaaaa", "2026-01-01T10:00", {"normal": (normal, 1.5), "decode": (decode, 2.0)})
    # Newer, but only 5 normal shapes: its normal rows do not replace the complete table; its decode table does.
    e2e = {
        "host_overhead": {
            "64x256x128": {"jax_dgpt": dict(overhead_us=4.0, kernel_us=2.0), "xla": dict(overhead_us=3.0)}
        }
    }
    fake_run(
        results,
        "2026-01-02_h200_bbbbbbb",
        "2026-01-02T10:00",
        {"normal": (normal[:5], 0.5), "decode": (decode, 1.25)},
        e2e,
    )
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\nbefore\n<!-- results:begin -->\nstale\n<!-- results:end -->\nafter\n")
    out = tmp_path / "RESULTS.md"
    args = ["--results", str(results), "--out", str(out), "--readme", str(readme)]
    assert report.main(args) == 0
    text = out.read_text()
    assert "normal from `2026-01-01_h200_aaaaaaa`; decode from `2026-01-02_h200_bbbbbbb`" in text
    assert "- normal: 22 shapes, geomean speedup 1.500" in text and "- decode: 21 shapes, geomean speedup 1.250" in text
    assert "| normal geomean ≥ 1.25× XLA default, none below 1.0 | 1.500× (min 1.50×" in text
    assert "| host overhead ≤ 5 µs/call | 64x256x128 4.00 µs | yes |" in text
    assert text.index("### 2026-01-02_h200_bbbbbbb") < text.index("### 2026-01-01_h200_aaaaaaa")
    assert "note 2026-01-02_h200_bbbbbbb" in text
    block = readme.read_text()
    assert block.startswith("# title\n\nbefore\n<!-- results:begin -->\n") and block.endswith(
        "<!-- results:end -->\nafter\n"
    )
    assert "stale" not in block and "| 64×7168×576 | 10.0 | 15.0 | 1.50 |" in block
    assert "| **geomean, 21 decode shapes (M ≤ 32)** | | | **1.25** |" in block
    assert report.main([*args, "--check"]) == 0
    readme.write_text(block.replace("1.50", "9.99"))
    assert report.main([*args, "--check"]) == 1 and "9.99" in readme.read_text()  # --check writes nothing


def test_report_skips_tables_a_manifest_marks_superseded(tmp_path):
    results = tmp_path / "results"
    normal = report.TABLES["normal"]
    fake_run(results, "2026-01-01_h200_aaaaaaa", "2026-01-01T10:00", {"normal": (normal, 1.5)})
    fake_run(results, "2026-01-02_h200_bbbbbbb", "2026-01-02T10:00", {"normal": (normal, 0.5)})
    manifest_path = results / "2026-01-02_h200_bbbbbbb" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["superseded"] = {"normal": "measured a change since reverted"}
    manifest_path.write_text(json.dumps(manifest))
    chosen = report.headline(report.load_runs(results))
    assert chosen["normal"][0].name == "2026-01-01_h200_aaaaaaa"


def test_tokamax_loader_stands_in_for_xprof_and_reports_why_it_cannot_import(monkeypatch):
    import sys

    from benchmarks import bench_ragged

    names = ("xprof", "xprof.cli", "xprof.cli.tools")
    saved = {name: sys.modules.pop(name) for name in names if name in sys.modules}
    monkeypatch.setitem(sys.modules, "tokamax", None)  # an import of it raises ImportError
    try:
        got = bench_ragged.load_tokamax()
        assert isinstance(got, str) and got.startswith("tokamax unavailable: ")
        xprof = sys.modules.get("xprof")
        if xprof is not None and not hasattr(xprof, "__file__"):  # no real xprof here: the loader's stand-in
            from xprof.cli.tools import get_kernel_stats_tool

            with pytest.raises(RuntimeError, match="xprof is not installed"):
                get_kernel_stats_tool()
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def test_report_refuses_a_readme_without_markers(tmp_path):
    fake_run(tmp_path / "results", "2026-01-01_h200_aaaaaaa", "2026-01-01T10:00", {})
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="results:begin"):
        report.main(["--results", str(tmp_path / "results"), "--out", str(tmp_path / "R.md"), "--readme", str(readme)])
    assert readme.read_text() == "no markers\n"


def test_committed_results_md_is_what_the_report_generates():
    assert report.main(["--check"]) == 0, "benchmarks/RESULTS.md is stale: run python -m benchmarks.report"


# --- conftest's skip summary ---------------------------------------------------------------------------
def test_skip_summary_groups_reasons_with_counts(tmp_path):
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.parametrize('i', range(2))\n"
        "def test_needs_nvcc(i):\n    pytest.skip('no nvcc')\n\n"
        "@pytest.mark.skipif(True, reason='needs flax')\n"
        "def test_flax():\n    pass\n\n"
        "def test_runs():\n    pass\n"
    )
    done = run_module(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped: 3 (no nvcc: 2, needs flax: 1)" in done.stdout, done.stdout


# --- the demo and the helpers -------------------------------------------------------------------------
def test_demo_on_the_cpu_prints_calc_diff_and_no_throughput():
    done = run_module([str(REPO / "examples" / "demo.py")], env={"JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "falling back to the CPU reference" in done.stdout and "TFLOPS" not in done.stdout
    diffs = [float(x) for x in re.findall(r"calc_diff ([0-9.e+-]+)", done.stdout)]
    assert len(diffs) == 3 and max(diffs) <= 3e-6, done.stdout


def test_grouped_diffs_check_valid_rows_only():
    a, b, idx = testing.contiguous_inputs([100, 0, 30], 256, 256, key=1)
    out = jax.jit(jax_dgpt.grouped_gemm_contiguous)(a, b, idx)
    diffs = testing.contiguous_diffs(out, a, b, idx)
    assert sorted(diffs) == [0, 2] and max(diffs.values()) <= 3e-6
    ref = testing.reference_contiguous_f64(a, b, idx)
    assert testing.calc_diff(testing.to_f64(out), ref) <= 3e-6 and np.all(ref[np.asarray(idx) < 0] == 0)
    assert testing.contiguous_diffs(out.at[130].set(0), a, b, idx)[2] > 1e-3  # a zeroed valid row of group 2
    assert testing.contiguous_diffs(out.at[120].set(1), a, b, idx) == diffs  # a padding row is not compared

    a, b, masked_m = testing.masked_inputs([70, 0, 500], 128, 256, 256, key=2)
    out = jax.jit(jax_dgpt.grouped_gemm_masked, static_argnums=3)(a, b, masked_m, 64)
    diffs = testing.masked_diffs(out, a, b, masked_m)
    assert sorted(diffs) == [0, 2] and max(diffs.values()) <= 3e-6
    assert testing.masked_diffs(out.at[0, 80].set(jnp.nan), a, b, masked_m) == diffs  # past masked_m[0]
    assert np.isnan(testing.masked_diffs(out.at[0, 69].set(jnp.nan), a, b, masked_m)[0])  # unwritten valid row
    ref = testing.reference_masked_f64(a, b, masked_m)
    assert np.isnan(ref[0, 70:]).all() and np.isnan(ref[1]).all() and not np.isnan(ref[2]).any()


def test_contiguous_diffs_batch_groups(monkeypatch):
    # A weight budget of two experts per batch gives the values of one batch (the DeepSeek-sized
    # contiguous tables would otherwise convert every expert to float64 at once: 60 GB).
    a, b, idx = testing.contiguous_inputs([100, 7, 0, 30, 64], 256, 256, key=3)
    out = jax.jit(jax_dgpt.grouped_gemm_contiguous)(a, b, idx)
    once = testing.contiguous_diffs(out, a, b, idx)
    monkeypatch.setattr(testing, "_DIFF_WEIGHT_BYTES", 2 * 256 * 256 * 8)
    batched = testing.contiguous_diffs(out, a, b, idx)
    assert sorted(once) == sorted(batched) == [0, 1, 3, 4]
    for g in once:
        np.testing.assert_allclose(batched[g], once[g], rtol=1e-12, atol=1e-16)


def test_device_generation_is_deterministic_and_not_zero():
    x, y = testing.generate_fp8((64, 96), 5, on_device=True), testing.generate_fp8((64, 96), 5, on_device=True)
    np.testing.assert_array_equal(np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8))
    assert x.dtype == jnp.float8_e4m3fn and 0.5 < float(jnp.std(x.astype(jnp.float32))) < 1.5
    z = testing.generate_fp8((64, 96), 6, on_device=True)
    assert not np.array_equal(np.asarray(x).view(np.uint8), np.asarray(z).view(np.uint8))


# --- scripts --------------------------------------------------------------------------------------------
def test_gpu_check_refuses_an_unknown_step_before_doing_anything(tmp_path):
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "tests", "nosuchstep"],
        env=dict(os.environ, OUT=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "unknown step nosuchstep" in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_smoke_keeps_its_helpers_for_the_other_scripts():
    smoke = load_script("smoke")
    assert smoke.fp8 is testing.generate_fp8 and smoke.diff is testing.calc_diff


def test_sass_opcode_counts():
    sass_stats = load_script("sass_stats")
    listing = """
        /*0010*/                   MOV R1, c[0x0][0x28] ;                      /* 0x00000a0000017a02 */
        /*0020*/              @!PT MEMBAR.ALL.GPU ;                            /* 0x0000000000007992 */
        /*0030*/               @P0 SYNCS.ARRIVE.TRANS64.RED.A1T0 RZ, [UR4+URZ], RZ ; /* 0x0000000000007992 */
        /*0040*/              @UP1 QGMMA.64x208x32.F32.E4M3.E4M3 R24, gdesc[UR8], RZ ; /* 0x0000000000007992 */
        /*0050*/                   MEMBAR.SC.CTA ;                             /* 0x0000000000007992 */
    """
    counts = sass_stats.count_opcodes(listing)
    assert counts == {"MOV": 1, "MEMBAR": 2, "SYNCS": 1, "QGMMA": 1}, counts


def test_breakdown_names_custom_calls_by_target_and_shapes():
    from benchmarks import breakdown

    hlo = (
        "  %custom-call.3 = (f8e4m3fn[1024,7168]{1,0}, f32[1024]{0}, f32[256,7168]{1,0}) custom-call(%x.1, %c.2),"
        ' custom_call_target="dgpt_quantize_rows"\n'
        "  %fusion.1 = f32[7168]{0} fusion(%custom-call.3), kind=kInput, calls=%fused_reduce\n"
        '  %custom-call.7 = bf16[1024,7168]{1,0} custom-call(%a, %b), custom_call_target="dgpt_gemm_normal"\n'
    )
    assert breakdown.custom_calls_in(hlo) == {
        "custom-call.3": "dgpt_quantize_rows (f8e4m3fn[1024,7168], f32[1024], f32[256,7168])",
        "custom-call.7": "dgpt_gemm_normal bf16[1024,7168]",
    }


def test_moe_training_reference_goes_expert_by_expert_with_the_ragged_rule():
    """bench_training's float32 reference ragged_dot (one expert's product at a time) equals plain_ragged_dot,
    negative sizes and totals past M included; rows past the total are zero."""
    from benchmarks import bench_training
    from jax_dgpt.training import plain_ragged_dot

    x = jax.random.normal(jax.random.key(0), (50, 16), jnp.float32)
    w = jax.random.normal(jax.random.key(1), (4, 8, 16), jnp.float32)
    for sizes in ([10, 0, 25, 5], [10, -3, 25, 30], [0, 0, 0, 0], [7, 7, 7, 0]):
        group_sizes = jnp.asarray(sizes, jnp.int32)
        got = np.asarray(bench_training._expert_by_expert_dot(x, w, group_sizes))
        want = np.asarray(plain_ragged_dot(x, w, group_sizes))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(sizes))
        total = min(sum(max(s, 0) for s in sizes), x.shape[0])
        assert np.all(got[total:] == 0), sizes


def test_bench_table_that_raises_is_reported_and_the_next_tables_run(tmp_path, monkeypatch, capsys):
    """A table stopped by an error (the GPU out of memory) does not stop the run: the later tables run, the
    rows are saved and the exit status says a table failed."""

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory (simulated)")

    monkeypatch.setenv("DG_NSYS_PROFILING", "1")
    monkeypatch.setattr(bench.bench_ragged, "bench_ragged", out_of_memory)
    assert bench.main(["--tiny", "--only", "ragged,wgrad", "--out", str(tmp_path)]) == 1
    printed = capsys.readouterr().out
    assert "table ragged: stopped by the error above" in printed and "tables stopped by an error: ragged" in printed
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert rows and {r["layout"] for r in rows} == {"wgrad"}
