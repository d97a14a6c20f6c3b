"""The JIT's caches and environment variables, on the CPU (compile only; no GPU is needed).

Lookup order is memory -> disk (``<DG_JIT_CACHE_DIR>/cache/<name>.<key[:32]>/``) -> compile. Every
test uses its own cache directory and, where it needs a miss, a source nobody compiled before (the
in-memory cache lives as long as the process; a fresh process is started where a test needs an
empty one). Most tests compile a tiny probe kernel; the GEMM kernel appears where its own path
(``compile_gemm``) is what is being tested.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import uuid

import pytest

import jax_dgpt  # noqa: F401  (loads the extension and points it at kernels/)
from jax_dgpt import _native, device, heuristics

C = _native.load()
GEMM_NAME = "sm90_fp8_gemm_normal"
ENTRY_FILES = {"kernel.cubin", "kernel.sha256", "kernel.cu"}


# --- generators ------------------------------------------------------------------------------------
def generate_probe(tag: str | None = None, body: str = "x[0] = dgpt::u32(7);") -> tuple[str, str]:
    """(name, source) of a tiny kernel that includes a kernel header; unique unless ``tag`` given."""
    tag = tag or uuid.uuid4().hex[:12]
    name = f"probe_{tag}"
    source = (
        f"// cache probe {tag}\n"
        '#include "dgpt_types.cuh"\n'
        f'extern "C" __global__ void {name}(dgpt::u32* x) {{ {body} }}\n'
    )
    return name, source


def gemm_args(m: int = 4096, n: int = 7168, k: int = 2048) -> dict:
    """The compile_gemm argument (the config attribute) of the heuristics' pick for a normal GEMM."""
    return heuristics.select_config(heuristics.Problem("normal", m, n, k, 1), device.DEFAULT_NUM_SMS).as_attribute()


def real_nvcc() -> str:
    """The nvcc the JIT would find without DG_JIT_NVCC_COMPILER (skips the test if there is none)."""
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    candidates += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("nvcc not found in CUDA_HOME, PATH or /usr/local/cuda")


def entry_dir(root, name: str, key: str) -> str:
    return os.path.join(str(root), "cache", f"{name}.{key[:32]}")


def check_entry(root, name: str, key: str, source: str) -> bytes:
    """Asserts the disk entry for (name, key) is complete and consistent; returns its cubin."""
    directory = entry_dir(root, name, key)
    assert os.path.isdir(directory), f"no cache entry {directory}"
    assert set(os.listdir(directory)) == ENTRY_FILES, sorted(os.listdir(directory))
    with open(os.path.join(directory, "kernel.cubin"), "rb") as f:
        cubin = f.read()
    with open(os.path.join(directory, "kernel.sha256")) as f:
        digest = f.read().strip()
    with open(os.path.join(directory, "kernel.cu")) as f:
        stored_source = f.read()
    assert cubin[:4] == b"\x7fELF", f"{directory}: kernel.cubin is not an ELF file"
    assert digest == hashlib.sha256(cubin).hexdigest(), f"{directory}: digest mismatch"
    assert stored_source == source, f"{directory}: kernel.cu differs from the compiled source"
    staging = os.path.join(str(root), "tmp")
    assert not os.path.isdir(staging) or os.listdir(staging) == [], f"leftovers in {staging}: {os.listdir(staging)}"
    return cubin


# A fresh interpreter: one compile, its result as JSON on stdout.
_CHILD = """
import json, sys
from jax_dgpt import _native
C = _native.load()
request = json.loads(sys.argv[1])
if request["kind"] == "source":
    result = C.compile_source(request["name"], request["source"])
else:
    result = C.compile_gemm(request["args"])
out = {k: result[k] for k in ("key", "origin", "cubin_size", "path")}
out["kernels_dir"] = C.kernels_dir()
print(json.dumps(out))
"""


def run_child(request: dict, env_updates: dict | None = None) -> tuple[dict, str]:
    """Compiles in a new process with this process's environment; returns (result, stderr)."""
    env = dict(os.environ, **(env_updates or {}))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(request)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


# --- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _needs_compiler():
    try:
        C.compiler_signature()
    except RuntimeError as error:
        pytest.skip(f"no CUDA compiler for the JIT: {error}")


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    """A private DG_JIT_CACHE_DIR and no inherited DG_JIT_* settings."""
    for name in list(os.environ):
        if name.startswith("DG_JIT_"):
            monkeypatch.delenv(name)
    root = tmp_path / "jit-cache"
    monkeypatch.setenv("DG_JIT_CACHE_DIR", str(root))
    return root


@pytest.fixture
def kernels_copy(tmp_path):
    """A copy of the kernel headers set as the JIT's kernels dir; the original is restored after."""
    original = C.kernels_dir()
    assert original and os.path.isdir(original), f"kernels dir not set: {original!r}"
    copy = tmp_path / "kernels"
    shutil.copytree(original, copy)
    C.set_kernels_dir(str(copy))
    try:
        yield copy
    finally:
        C.set_kernels_dir(original)
    assert C.kernels_dir() == original


@pytest.fixture
def counting_nvcc(tmp_path, monkeypatch):
    """DG_JIT_NVCC_COMPILER -> a wrapper that logs each invocation, then runs the real nvcc.

    Returns a function giving the logged invocations (argument lists) so far.
    """
    log = tmp_path / "nvcc-invocations.log"
    wrapper = tmp_path / "bin" / "nvcc"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec "{real_nvcc()}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("DG_JIT_NVCC_COMPILER", str(wrapper))

    def invocations() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    return invocations


def compiles(invocations: list[str]) -> list[str]:
    """The nvcc invocations that compile (as opposed to the `--version` query)."""
    return [line for line in invocations if line.strip() != "--version"]


# --- hits and misses ---------------------------------------------------------------------------------
def test_miss_then_memory_hit_then_disk_hit_in_a_new_process(cache_root, counting_nvcc):
    name, source = generate_probe()
    first = C.compile_source(name, source)
    assert first["origin"] == "compiled", first
    assert first["cubin_size"] > 0 and first["log"] is not None
    assert first["path"] == os.path.join(entry_dir(cache_root, name, first["key"]), "kernel.cubin")
    cubin = check_entry(cache_root, name, first["key"], source)
    assert len(cubin) == first["cubin_size"]
    assert len(compiles(counting_nvcc())) == 1

    second = C.compile_source(name, source)
    assert second["origin"] == "memory", second
    assert (second["key"], second["cubin_size"]) == (first["key"], first["cubin_size"])

    # A second process with a warm disk cache compiles nothing.
    child, _ = run_child({"kind": "source", "name": name, "source": source})
    assert child["origin"] == "disk", child
    assert child["key"] == first["key"] and child["kernels_dir"] == C.kernels_dir()
    assert child["path"] == first["path"] and child["cubin_size"] == first["cubin_size"]
    assert len(compiles(counting_nvcc())) == 1, counting_nvcc()


def test_gemm_kernel_second_process_compiles_nothing(cache_root, counting_nvcc):
    # NOTES: both compiles run in fresh processes, so this process's memory cache plays no part.
    args = gemm_args()
    first, _ = run_child({"kind": "gemm", "args": args})
    assert first["origin"] == "compiled", first
    check_entry(cache_root, GEMM_NAME, first["key"], C.generate_source(args))
    assert len(compiles(counting_nvcc())) == 1, counting_nvcc()

    second, stderr = run_child({"kind": "gemm", "args": args})
    assert second["origin"] == "disk", (second, stderr)
    assert second["key"] == first["key"] and second["cubin_size"] == first["cubin_size"]
    assert len(compiles(counting_nvcc())) == 1, counting_nvcc()


def test_m_groups_and_sms_share_one_kernel(cache_root):
    """M and the grid size are run-time values: they never change the key."""
    args = gemm_args()
    base = C.compile_gemm(args)
    for other_m, other_grid in ((1, 1), (args["m"] + 7, args["grid_size"] // 2), (65536, 132)):
        again = C.compile_gemm({**args, "m": other_m, "grid_size": other_grid})
        assert again["key"] == base["key"], (other_m, other_grid)
        assert again["origin"] == "memory", (other_m, other_grid, again["origin"])


def test_header_change_is_a_miss(cache_root, kernels_copy):
    name, source = generate_probe()
    first = C.compile_source(name, source)
    assert first["origin"] == "compiled"
    assert C.compile_source(name, source)["origin"] == "memory"
    gemm_first = C.compile_gemm(gemm_args())

    header = kernels_copy / "dgpt_types.cuh"
    original = header.read_text()
    header.write_text(original + "\n// an edit that changes no code\n")
    changed = C.compile_source(name, source)
    assert changed["origin"] == "compiled", changed
    assert changed["key"] != first["key"]
    check_entry(cache_root, name, changed["key"], source)

    # Any file under kernels/ counts, also one the probe does not include.
    (kernels_copy / "wgmma_fp8.cuh").write_text((kernels_copy / "wgmma_fp8.cuh").read_text() + "\n// another edit\n")
    gemm_changed = C.compile_gemm(gemm_args())
    assert gemm_changed["origin"] == "compiled", gemm_changed
    assert gemm_changed["key"] != gemm_first["key"]
    assert C.compile_source(name, source)["key"] not in (first["key"], changed["key"])

    # Restoring the headers restores the key, and the entries compiled for it.
    header.write_text(original)
    (kernels_copy / "wgmma_fp8.cuh").write_text(
        (kernels_copy / "wgmma_fp8.cuh").read_text().removesuffix("\n// another edit\n")
    )
    restored = C.compile_source(name, source)
    assert restored["key"] == first["key"] and restored["origin"] == "memory", restored


def test_kernels_dir_round_trips():
    original = C.kernels_dir()
    assert original == _native.kernels_dir()
    try:
        C.set_kernels_dir("/nonexistent/kernels")
        assert C.kernels_dir() == "/nonexistent/kernels"
    finally:
        C.set_kernels_dir(original)


# --- damaged and unusable cache directories -----------------------------------------------------------
def _flip_bytes(directory: str) -> None:
    path = os.path.join(directory, "kernel.cubin")
    data = bytearray(open(path, "rb").read())
    for i in range(64, min(len(data), 96)):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _truncate(directory: str) -> None:
    path = os.path.join(directory, "kernel.cubin")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 3])


def _empty(directory: str) -> None:
    open(os.path.join(directory, "kernel.cubin"), "wb").close()


def _drop_digest(directory: str) -> None:
    os.remove(os.path.join(directory, "kernel.sha256"))


@pytest.mark.parametrize("damage", [_flip_bytes, _truncate, _empty, _drop_digest], ids=lambda f: f.__name__.strip("_"))
def test_corrupted_entry_is_rebuilt(cache_root, damage):
    name, source = generate_probe()
    first = C.compile_source(name, source)
    directory = entry_dir(cache_root, name, first["key"])
    good = check_entry(cache_root, name, first["key"], source)
    damage(directory)

    rebuilt, stderr = run_child({"kind": "source", "name": name, "source": source})
    assert "corrupted kernel cache entry" in stderr and directory in stderr, stderr
    assert rebuilt["origin"] == "compiled", (rebuilt, stderr)
    assert rebuilt["key"] == first["key"] and rebuilt["cubin_size"] == len(good)
    assert check_entry(cache_root, name, first["key"], source) == good

    reread, stderr = run_child({"kind": "source", "name": name, "source": source})
    assert reread["origin"] == "disk", (reread, stderr)
    assert "corrupted" not in stderr, stderr


def test_unwritable_cache_dir_warns_and_still_compiles(tmp_path, cache_root, monkeypatch, capfd):
    # NOTES: a path under a regular file can never be created, even by root (chmod would not stop it).
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    root = blocker / "cache-root"
    monkeypatch.setenv("DG_JIT_CACHE_DIR", str(root))
    name, source = generate_probe()
    result = C.compile_source(name, source)
    err = capfd.readouterr().err
    assert result["origin"] == "compiled" and result["cubin_size"] > 0, result
    assert result["path"] == "", result
    assert f"kernel cache directory {root} is not writable" in err, err
    again = C.compile_source(name, source)
    assert again["origin"] == "memory" and again["key"] == result["key"]

    # The real kernel too, in a process of its own (nothing in memory there).
    child, stderr = run_child({"kind": "gemm", "args": gemm_args(128, 4096, 7168)})
    assert child["origin"] == "compiled" and child["cubin_size"] > 0 and child["path"] == ""
    assert "is not writable" in stderr, stderr
    assert not os.path.exists(root)


def test_default_cache_dir_is_under_home(tmp_path, cache_root, monkeypatch):
    monkeypatch.delenv("DG_JIT_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    name, source = generate_probe()
    result = C.compile_source(name, source)
    check_entry(tmp_path / "home" / ".jax_dgpt", name, result["key"], source)


def test_disable_cache_writes_nothing(tmp_path, cache_root, monkeypatch):
    monkeypatch.setenv("DG_JIT_DISABLE_CACHE", "1")
    name, source = generate_probe()
    result = C.compile_source(name, source)
    assert result["origin"] == "compiled" and result["path"] == "", result
    assert C.compile_source(name, source)["origin"] == "memory"  # README: memory still applies
    assert not os.path.exists(cache_root), os.listdir(cache_root)

    # An existing entry is not read either.
    monkeypatch.delenv("DG_JIT_DISABLE_CACHE")
    name, source = generate_probe()
    C.compile_source(name, source)
    child, _ = run_child({"kind": "source", "name": name, "source": source}, {"DG_JIT_DISABLE_CACHE": "1"})
    assert child["origin"] == "compiled" and child["path"] == "", child


def test_concurrent_compiles_of_one_kernel_publish_one_entry(cache_root):
    name, source = generate_probe()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: C.compile_source(name, source), range(2)))
    assert {r["key"] for r in results} == {results[0]["key"]}
    # One thread compiles; the other waits for it and hits memory (one nvcc per kernel).
    assert sorted(r["origin"] for r in results) == ["compiled", "memory"], results
    check_entry(cache_root, name, results[0]["key"], source)
    entries = [e for e in os.listdir(cache_root / "cache") if e.startswith(name + ".")]
    assert len(entries) == 1, entries


# --- compiler selection and failures -----------------------------------------------------------------
def test_compile_error_raises_with_the_compiler_log(cache_root):
    tag = uuid.uuid4().hex[:12]
    name, source = generate_probe(tag, body=f"x[0] = dgpt_undeclared_{tag};")
    for _ in range(2):  # failures are not cached
        with pytest.raises(RuntimeError) as info:
            C.compile_source(name, source)
        message = str(info.value)
        assert f"JIT compilation of kernel '{name}' failed" in message, message
        assert f"dgpt_undeclared_{tag}" in message and "error" in message, message
        assert "command:" in message, message
    assert not os.path.exists(cache_root / "cache") or not any(
        e.startswith(name + ".") for e in os.listdir(cache_root / "cache")
    )


def test_compile_error_of_the_gemm_config_is_a_value_error():
    args = gemm_args()
    with pytest.raises(ValueError, match="block_m must be block_m_small, block_m_large or block_m_double"):
        C.compile_gemm({**args, "block_m": 96})
    with pytest.raises(ValueError, match="shared memory"):
        C.compile_gemm({**args, "num_stages": 32})
    with pytest.raises(ValueError, match="unknown layout 'jagged'"):
        C.compile_gemm({**args, "layout": "jagged"})


def _write_script(path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("what", ["missing", "not-executable", "not-nvcc"])
def test_bad_nvcc_compiler_is_a_clear_error(tmp_path, cache_root, monkeypatch, what):
    if what == "missing":
        compiler, expected = str(tmp_path / "no-such-dir" / "nvcc"), "is not an executable file"
    elif what == "not-executable":
        compiler = str(tmp_path / "nvcc")
        (tmp_path / "nvcc").write_text("#!/bin/sh\n")
        expected = "is not an executable file"
    else:
        compiler = _write_script(tmp_path / "nvcc", "#!/bin/sh\necho 'hello'\n")
        expected = f"cannot read the version of {compiler}"
    monkeypatch.setenv("DG_JIT_NVCC_COMPILER", compiler)
    name, source = generate_probe()
    with pytest.raises(RuntimeError) as info:
        C.compile_source(name, source)
    assert expected in str(info.value), str(info.value)
    if what != "not-nvcc":
        assert f"DG_JIT_NVCC_COMPILER={compiler}" in str(info.value)
    with pytest.raises(RuntimeError, match="DG_JIT_NVCC_COMPILER|cannot read the version"):
        C.compiler_signature()


def test_bad_cpp_standard_is_a_clear_error(cache_root, monkeypatch):
    monkeypatch.setenv("DG_JIT_OVERRIDE_CPP_STANDARD", "c++20")
    with pytest.raises(RuntimeError, match="is not a C\\+\\+ standard number"):
        C.compile_source(*generate_probe())


def test_cpp_standard_is_part_of_the_key(cache_root, monkeypatch):
    name, source = generate_probe()
    default = C.compile_source(name, source)
    monkeypatch.setenv("DG_JIT_OVERRIDE_CPP_STANDARD", "20")
    assert "-std=c++20" in C.compiler_signature()
    cpp20 = C.compile_source(name, source)
    assert cpp20["origin"] == "compiled" and cpp20["key"] != default["key"]
    check_entry(cache_root, name, cpp20["key"], source)


# --- diagnostics variables ----------------------------------------------------------------------------
def test_print_compiler_command(cache_root, monkeypatch, capfd):
    name, source = generate_probe()
    C.compile_source(name, source)
    assert "jax_dgpt: jit: running" not in capfd.readouterr().err

    monkeypatch.setenv("DG_JIT_PRINT_COMPILER_COMMAND", "1")
    name, source = generate_probe()
    C.compile_source(name, source)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("jax_dgpt: jit: running ")]
    assert len(lines) == 1, err
    command = lines[0]
    for flag in ("nvcc", "-cubin", "-gencode=arch=compute_90a,code=sm_90a", f"-I{C.kernels_dir()}", "kernel.cu"):
        assert flag in command, command
    # A cache hit runs no compiler, so prints no command.
    C.compile_source(name, source)
    assert "jax_dgpt: jit: running" not in capfd.readouterr().err


def test_debug_prints_origin(cache_root, monkeypatch, capfd):
    monkeypatch.setenv("DG_JIT_DEBUG", "1")
    name, source = generate_probe()
    first = C.compile_source(name, source)
    C.compile_source(name, source)
    err = capfd.readouterr().err
    assert f"jax_dgpt: jit: kernel {name} key {first['key']} origin compiled" in err, err
    assert f"jax_dgpt: jit: kernel {name} key {first['key']} origin memory" in err, err
    assert "jax_dgpt: jit: nvcc compiled" in err, err


def nvcc_version() -> tuple[int, int]:
    """(major, minor) of the compiler the JIT uses, from its signature ("nvcc 13.0 -cubin ...")."""
    major, minor = C.compiler_signature().split()[1].split(".")[:2]
    return int(major), int(minor)


@pytest.mark.parametrize("variable", ["DG_JIT_DISABLE_FFMA_INTERLEAVE", "DG_JIT_PRINT_REG_REUSE"])
def test_ffma_interleave_variables_are_accepted_and_explained_under_debug(cache_root, monkeypatch, capfd, variable):
    # DeepGEMM's variables (issue 12, finding 11): accepted, no effect on the cubin, explained by DG_JIT_DEBUG.
    monkeypatch.setenv(variable, "1")
    monkeypatch.setenv("DG_JIT_DEBUG", "1")
    name, source = generate_probe()
    compiled = C.compile_source(name, source)
    assert compiled["origin"] == "compiled" and compiled["cubin_size"] > 0
    err = capfd.readouterr().err
    notes = [line for line in err.splitlines() if "change nothing" in line]
    assert len(notes) == 1 and variable in notes[0], err
    assert "jax_dgpt has no SASS FFMA-interleave pass" in notes[0], notes[0]
    expected = "interleaves FFMAs itself (12.9+)" if nvcc_version() >= (12, 9) else "predates the FFMA interleaving"
    assert expected in notes[0], notes[0]
    monkeypatch.delenv("DG_JIT_DEBUG")
    name_quiet, source_quiet = generate_probe()
    C.compile_source(name_quiet, source_quiet)
    assert "change nothing" not in capfd.readouterr().err  # only under DG_JIT_DEBUG


def test_ffma_interleave_variables_do_not_change_the_cubin_or_the_key(cache_root, monkeypatch):
    name, source = generate_probe()
    monkeypatch.setenv("DG_JIT_DISABLE_CACHE", "1")
    plain = C.compile_source(name, source)
    monkeypatch.setenv("DG_JIT_DISABLE_FFMA_INTERLEAVE", "true")
    monkeypatch.setenv("DG_JIT_PRINT_REG_REUSE", "ON")
    same, _ = run_child({"kind": "source", "name": name, "source": source})
    assert same["key"] == plain["key"] and same["cubin_size"] == plain["cubin_size"]


@pytest.mark.parametrize("variable", ["DG_JIT_DISABLE_FFMA_INTERLEAVE", "DG_JIT_PRINT_REG_REUSE"])
def test_ffma_interleave_variables_reject_other_values(cache_root, monkeypatch, variable):
    monkeypatch.setenv(variable, "maybe")
    name, source = generate_probe()
    with pytest.raises(RuntimeError, match=rf"{variable}=maybe is not a boolean \(use 1 or 0\)"):
        C.compile_source(name, source)


def test_ptxas_verbose_env_prints_the_report(cache_root, monkeypatch, capfd):
    monkeypatch.setenv("DG_JIT_PTXAS_VERBOSE", "1")
    name, source = generate_probe()
    result = C.compile_source(name, source)
    err = capfd.readouterr().err
    assert f"jax_dgpt: jit: {name}:" in err and "ptxas info" in err, err
    assert f"Compiling entry function '{name}' for 'sm_90a'" in result["log"], result["log"]
    # NOTES: a verbose request bypasses both caches so that the report is always produced.
    assert C.compile_source(name, source)["origin"] == "compiled"


def test_compiles_work_with_sigchld_ignored(cache_root):
    # Some frameworks ignore SIGCHLD; the kernel then reaps nvcc itself and waitpid fails (ECHILD).
    name, source = generate_probe()
    code = (
        "import json, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN);"
        "import jax_dgpt._C as C; r = C.compile_source(sys.argv[1], sys.argv[2]);"
        "print(json.dumps({'origin': r['origin'], 'size': r['cubin_size']}))"
    )
    env = dict(os.environ, DG_JIT_CACHE_DIR=str(cache_root))
    out = subprocess.run([sys.executable, "-c", code, name, source], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["origin"] == "compiled" and result["size"] > 0, result


def test_huge_compiler_output_is_truncated_in_errors(cache_root, tmp_path, monkeypatch):
    fake = tmp_path / "nvcc"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "Cuda compilation tools, release 13.0, V13.0.88"; exit 0; fi\n'
        "head -c 3000000 /dev/zero | tr '\\0' x\n"
        "exit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("DG_JIT_NVCC_COMPILER", str(fake))
    name, source = generate_probe()
    with pytest.raises(RuntimeError) as info:
        C.compile_source(name, source)
    message = str(info.value)
    assert "bytes of output omitted" in message and len(message) < 100_000, len(message)


def test_a_hung_compiler_is_stopped(cache_root, tmp_path, monkeypatch):
    fake = tmp_path / "nvcc"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "Cuda compilation tools, release 13.0, V13.0.88"; exit 0; fi\n'
        "echo compiling; sleep 60\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("DG_JIT_NVCC_COMPILER", str(fake))
    monkeypatch.setenv("DG_JIT_COMPILE_TIMEOUT", "1")
    name, source = generate_probe()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"did not finish within 1 s and was stopped \(DG_JIT_COMPILE_TIMEOUT\)"):
        C.compile_source(name, source)
    assert time.monotonic() - started < 30


def test_invalid_compile_timeout_is_reported(cache_root, monkeypatch):
    monkeypatch.setenv("DG_JIT_COMPILE_TIMEOUT", "soon")
    name, source = generate_probe()
    with pytest.raises(RuntimeError, match="DG_JIT_COMPILE_TIMEOUT=soon is not a positive number of seconds"):
        C.compile_source(name, source)
