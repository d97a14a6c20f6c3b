"""Run directories: each GPU run lives in benchmarks/results/<date>_<gpu>_<short-sha>/ with fixed file names.

    manifest.json    what ran: per device call its git sha, dirty flag, start time, command and environment
                     (BENCH_ARGS, PYTEST_ARGS, ...), the benchmark's own meta line, and every step's name,
                     command, exit status, seconds and logs; free-text notes
    machine.json     GPU, driver, clocks, SM count, CUDA, jax/jaxlib/Python versions
    results.json     the benchmark's rows (python -m benchmarks.bench)
    end_to_end.json  host overhead and compile figures (python -m benchmarks.end_to_end)
    chart.png        speedup chart of results.json
    logs/            every step's log under a fixed name (build.log, gpu_tests.log, sanitize_memcheck.log,
                     bench.log, end_to_end.log, ...)

scripts/gpu_check.sh writes this layout under $OUT, with logs/ packed into logs.tar.gz (the device tool returns
at most 8 files). Commands:

    python -m benchmarks.rundir init OUT [--command TEXT]       creates (or continues) OUT/<run>/, prints its path
    python -m benchmarks.rundir begin RUN NAME                 records a step as started
    python -m benchmarks.rundir step RUN NAME RC SECONDS [--command TEXT] [--log FILE ...]   ... and as finished
    python -m benchmarks.rundir file SRC [--into benchmarks/results]
        files a returned run directory into the repository: unpacks logs.tar.gz into logs/, fills in the git sha
        from this checkout if the device had none, and merges a second call of the same run (same date, GPU
        and sha) into the existing directory (its rows get a "call" number).

The git sha comes from $DGPT_GIT_SHA / $DGPT_GIT_DIRTY when set, else from git in the working tree; a copy
without .git records none, and `file` fills it in from the checkout it is filed into.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tarfile

FIXED = ("manifest.json", "machine.json", "results.json", "end_to_end.json", "chart.png")
ENV_KEYS = ("BENCH_ARGS", "PYTEST_ARGS", "TEST_TIMEOUT", "NCU_SHAPES", "NCU_ARGS", "NCU_KERNEL", "XLA_FLAGS")
REPO = pathlib.Path(__file__).resolve().parent.parent


def gpu_short_name(name: str) -> str:
    """ "NVIDIA H200" -> "h200", "NVIDIA H100 80GB HBM3" -> "h100"; "cpu" without a GPU."""
    words = [w for w in re.split(r"\s+", name.strip()) if w.upper() != "NVIDIA"]
    return re.sub(r"[^a-z0-9]", "", words[0].lower()) if words else "cpu"


def run_name(date: str, gpu: str, sha: str | None) -> str:
    return f"{date}_{gpu_short_name(gpu)}_{(sha or 'nosha')[:7]}"


def _output(*command: str, cwd=None) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(repo: pathlib.Path = REPO) -> dict:
    """{git_sha, dirty, sha_source}: from $DGPT_GIT_SHA/$DGPT_GIT_DIRTY, else git, else unknown."""
    if os.environ.get("DGPT_GIT_SHA"):
        dirty = os.environ.get("DGPT_GIT_DIRTY")
        return dict(
            git_sha=os.environ["DGPT_GIT_SHA"],
            dirty=None if dirty is None else dirty not in ("", "0"),
            sha_source="DGPT_GIT_SHA",
        )
    sha = _output("git", "rev-parse", "HEAD", cwd=repo)
    if sha:
        status = _output("git", "status", "--porcelain", "--untracked-files=no", cwd=repo) or ""
        return dict(git_sha=sha.strip(), dirty=bool(status.strip()), sha_source="git")
    return dict(git_sha=None, dirty=None, sha_source="unknown (no .git on the machine)")


def machine_info() -> dict:
    """What the run's figures depend on: GPU, driver, clocks, CUDA, versions."""
    info: dict = dict(python=platform.python_version(), host=platform.node())
    fields = "name,driver_version,clocks.sm,clocks.max.sm,power.draw,power.limit,memory.total"
    query = _output("nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader")
    if query:
        gpus = [dict(zip(fields.split(","), (v.strip() for v in line.split(",")))) for line in query.splitlines()]
        info["gpus"] = gpus
        info["gpu"] = gpus[0]["name"]
        info["driver"] = gpus[0]["driver_version"]
    header = _output("nvidia-smi") or ""
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    if cuda:
        info["cuda_driver_api"] = cuda.group(1)
    nvcc = re.search(r"release ([\d.]+)", _output("nvcc", "--version") or "")
    if nvcc:
        info["nvcc"] = nvcc.group(1)
    try:
        import jax
        import jaxlib

        device = jax.devices()[0]
        info.update(jax=jax.__version__, jaxlib=jaxlib.__version__, backend=jax.default_backend())
        info.update(device=device.device_kind, sms=getattr(device, "core_count", None))
        info.setdefault("gpu", device.device_kind if jax.default_backend() == "gpu" else "cpu")
    except Exception as error:  # noqa: BLE001 - record, never stop a GPU run over its bookkeeping
        info["jax_error"] = repr(error)
    info.setdefault("gpu", "cpu")
    return info


def _read(path: pathlib.Path, default=None):
    return json.loads(path.read_text()) if path.exists() else default


def _write(path: pathlib.Path, data) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


def init(out: str, command: str = "") -> pathlib.Path:
    """Creates OUT/<date>_<gpu>_<sha>/ with machine.json and a manifest, or adds a call to it."""
    machine = machine_info()
    git = git_state()
    now = datetime.datetime.now(datetime.UTC)
    run = pathlib.Path(out) / run_name(now.date().isoformat(), machine["gpu"], git["git_sha"])
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "machine.json").exists():
        _write(run / "machine.json", machine)
    manifest = _read(run / "manifest.json") or dict(
        run=run.name,
        date=now.date().isoformat(),
        gpu=machine["gpu"],
        git_sha=git["git_sha"],
        dirty=git["dirty"],
        calls=[],
        notes=[],
    )
    env = {key: os.environ[key] for key in ENV_KEYS if os.environ.get(key)}
    env.update({key: value for key, value in os.environ.items() if key.startswith("DG_")})
    manifest["calls"].append(
        dict(
            call=len(manifest["calls"]) + 1,
            started=now.isoformat(timespec="seconds"),
            **git,
            command=command,
            env=env,
            steps=[],
        )
    )
    _write(run / "manifest.json", manifest)
    return run


def begin(run: str, name: str) -> None:
    """Records a step as started (rc null): a call stopped by its time limit shows where it stopped."""
    path = pathlib.Path(run) / "manifest.json"
    manifest = _read(path)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    manifest["calls"][-1]["steps"].append(dict(step=name, rc=None, started=started))
    _write(path, manifest)


def step(run: str, name: str, rc: int, seconds: float, command: str = "", logs=()) -> None:
    """Records one finished step in the manifest's last call (replacing its `begin` entry)."""
    path = pathlib.Path(run) / "manifest.json"
    manifest = _read(path)
    entry = dict(step=name, rc=int(rc), seconds=round(float(seconds), 1), command=command)
    if logs:
        entry["logs"] = [f"logs/{pathlib.Path(log).name}" for log in logs]
    call = manifest["calls"][-1]
    if call["steps"] and call["steps"][-1]["step"] == name and call["steps"][-1]["rc"] is None:
        entry = dict(call["steps"].pop(), **entry)
    call["steps"].append(entry)
    results = _read(pathlib.Path(run) / "results.json")
    if name == "bench" and results:
        call["bench"] = results.get("meta", {})
    _write(path, manifest)


# --- filing a returned run into the repository ------------------------------------------------------
def _unpack_logs(src: pathlib.Path, logs: pathlib.Path) -> None:
    logs.mkdir(parents=True, exist_ok=True)
    packed = src / "logs.tar.gz"
    if packed.exists():
        with tarfile.open(packed) as tar:
            tar.extractall(logs, filter="data")
    for path in src.iterdir():  # a step stopped mid-way leaves its log next to the fixed files
        if path.is_file() and path.name not in FIXED and path.name != "logs.tar.gz":
            shutil.copy2(path, logs / path.name)
    if (src / "logs").is_dir():
        shutil.copytree(src / "logs", logs, dirs_exist_ok=True)


def file_run(src: str, into: str = str(REPO / "benchmarks" / "results")) -> pathlib.Path:
    """Copies a returned run directory into `into`, merging a second call of the same run; returns its path."""
    src_path = pathlib.Path(src)
    manifest = _read(src_path / "manifest.json")
    if manifest is None:
        raise SystemExit(f"{src}: no manifest.json (not a run directory)")
    if not manifest.get("git_sha"):
        local = git_state()
        for call in manifest["calls"]:
            if not call.get("git_sha"):
                call.update(
                    git_sha=local["git_sha"],
                    dirty=local["dirty"],
                    sha_source="filled in when filed: " + local["sha_source"] + " of this checkout",
                )
        manifest.update(git_sha=local["git_sha"], dirty=local["dirty"])
        manifest["run"] = run_name(manifest["date"], manifest["gpu"], local["git_sha"])
    dest = pathlib.Path(into) / manifest["run"]
    if not dest.exists():
        dest.mkdir(parents=True)
        for name in FIXED[1:]:
            if (src_path / name).exists():
                shutil.copy2(src_path / name, dest / name)
        _write(dest / "manifest.json", manifest)
        _unpack_logs(src_path, dest / "logs")
        return dest
    # A later call of the same run: append its calls, rows (numbered by call) and logs.
    old = _read(dest / "manifest.json")
    offset = len(old["calls"])
    for call in manifest["calls"]:
        call["call"] += offset
        old["calls"].append(call)
    old["notes"] = old.get("notes", []) + [n for n in manifest.get("notes", []) if n not in old.get("notes", [])]
    _write(dest / "manifest.json", old)
    new_results = _read(src_path / "results.json")
    if new_results:
        results = _read(dest / "results.json") or dict(meta=new_results.get("meta", {}), rows=[])
        for row in results["rows"]:
            row.setdefault("call", 1)
        results["rows"] += [dict(row, call=row.get("call", 1) + offset) for row in new_results["rows"]]
        _write(dest / "results.json", results)
    tag = f"_call{offset + 1}"
    if (src_path / "end_to_end.json").exists():  # the newest figures on top, the earlier ones kept in logs/
        if (dest / "end_to_end.json").exists():
            shutil.move(dest / "end_to_end.json", dest / "logs" / f"end_to_end_before{tag}.json")
        shutil.copy2(src_path / "end_to_end.json", dest / "end_to_end.json")
    if (src_path / "machine.json").exists():
        shutil.copy2(src_path / "machine.json", dest / "logs" / f"machine{tag}.json")
    if new_results:
        _redraw_chart(dest, src_path)
    staged = dest / f".incoming{tag}"
    _unpack_logs(src_path, staged)
    for path in staged.rglob("*"):
        if path.is_file():
            target = dest / "logs" / path.relative_to(staged)
            if target.exists():
                target = target.with_name(f"{target.stem}{tag}{target.suffix}")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, target)
    shutil.rmtree(staged)
    return dest


def _redraw_chart(dest: pathlib.Path, src: pathlib.Path) -> None:
    """chart.png of the merged rows; without matplotlib, the new call's chart (or none)."""
    try:
        from benchmarks import chart

        chart.draw(_read(dest / "results.json")["rows"], str(dest / "chart.png"))
    except ImportError:
        if (src / "chart.png").exists():
            shutil.copy2(src / "chart.png", dest / "chart.png")
        print("matplotlib not installed: chart.png is the new call's chart, not the merged rows'", file=sys.stderr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rundir")
    sub = p.add_subparsers(dest="what", required=True)
    p_init = sub.add_parser("init")
    p_init.add_argument("out")
    p_init.add_argument("--command", default="")
    p_begin = sub.add_parser("begin")
    p_begin.add_argument("run")
    p_begin.add_argument("name")
    p_step = sub.add_parser("step")
    p_step.add_argument("run")
    p_step.add_argument("name")
    p_step.add_argument("rc", type=int)
    p_step.add_argument("seconds", type=float)
    p_step.add_argument("--command", default="")
    p_step.add_argument("--log", action="append", default=[])
    p_file = sub.add_parser("file")
    p_file.add_argument("src")
    p_file.add_argument("--into", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.what == "init":
        print(init(args.out, args.command))
    elif args.what == "begin":
        begin(args.run, args.name)
    elif args.what == "step":
        step(args.run, args.name, args.rc, args.seconds, args.command, args.log)
    else:
        print(file_run(args.src, args.into))
    return 0


if __name__ == "__main__":
    sys.exit(main())
