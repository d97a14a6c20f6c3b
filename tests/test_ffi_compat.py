"""The extension against the jax versions the package declares, and its registration at import.

XLA accepts an FFI handler whose API version (the c_api.h it was built with) is not newer than its
own, so the extension is built against the oldest supported jaxlib (the build-system pin) and must
load on every jaxlib of the runtime range. On a CPU-only jaxlib the CUDA registrations are queued;
they must not disturb the CPU backend.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
import tomllib

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import jax_dgpt
from jax_dgpt import _native
from jax_dgpt.testing import assert_close_to_f64, generate_contiguous_indices, generate_fp8

REPO = pathlib.Path(__file__).resolve().parent.parent


# --- declared versions -------------------------------------------------------------------------------
def load_pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def requirements(entries: list[str]) -> dict[str, Requirement]:
    parsed = [Requirement(entry) for entry in entries]
    return {r.name: r for r in parsed}


def lower_bound(specifier: SpecifierSet) -> Version:
    bounds = [Version(s.version) for s in specifier if s.operator in (">=", "==")]
    assert len(bounds) == 1, f"expected one lower bound in {specifier}"
    return bounds[0]


def pinned(specifier: SpecifierSet) -> Version:
    pins = [Version(s.version) for s in specifier if s.operator == "=="]
    assert len(pins) == 1 and len(specifier) == 1, f"expected an exact pin, got {specifier!r}"
    return pins[0]


def runtime_ffi_api_version() -> tuple[int, int]:
    """(major, minor) of XLA_FFI_API_* in the c_api.h that ships with the running jaxlib."""
    header = pathlib.Path(jax.ffi.include_dir()) / "xla" / "ffi" / "api" / "c_api.h"
    text = header.read_text()
    found = {}
    for part in ("MAJOR", "MINOR"):
        match = re.search(rf"^#define XLA_FFI_API_{part} (\d+)\s*$", text, re.MULTILINE)
        assert match, f"no XLA_FFI_API_{part} in {header}"
        found[part] = int(match.group(1))
    return found["MAJOR"], found["MINOR"]


@pytest.mark.parametrize("package", ["jax", "jaxlib"])
def test_runtime_range_is_declared(package):
    declared = requirements(load_pyproject()["project"]["dependencies"])
    assert package in declared, f"{package} missing from [project] dependencies"
    specifier = declared[package].specifier
    assert lower_bound(specifier) == Version("0.10.2"), specifier
    assert not specifier.contains("0.13.0"), f"{specifier} must stop before 0.13 (not tested yet)"
    assert specifier.contains("0.11.2"), f"{specifier} must include 0.11.2 (the H200 machine)"
    assert specifier.contains("0.12.0.1"), f"{specifier} must include 0.12.0.1 (the newest release, CI's second suite)"


def test_build_pins_the_oldest_supported_jaxlib():
    project = load_pyproject()
    runtime = requirements(project["project"]["dependencies"])
    build = requirements(project["build-system"]["requires"])
    for package in ("jax", "jaxlib"):
        assert package in build, f"{package} missing from [build-system] requires"
        assert pinned(build[package].specifier) == lower_bound(runtime[package].specifier), (
            f"build pins {package}{build[package].specifier}; runtime range "
            f"{runtime[package].specifier}: the build must use the oldest supported version"
        )


def test_running_jax_is_in_the_declared_range():
    declared = requirements(load_pyproject()["project"]["dependencies"])
    for package, version in (("jax", jax.__version__), ("jaxlib", jaxlib.__version__)):
        assert declared[package].specifier.contains(version, prereleases=True), (
            f"running {package} {version} is outside the declared {declared[package].specifier}"
        )


def test_extension_ffi_api_is_not_newer_than_jaxlib():
    built = tuple(_native.load().ffi_api_version())
    running = runtime_ffi_api_version()
    assert built[0] == running[0], f"extension FFI API {built}, jaxlib {jaxlib.__version__} {running}"
    assert built <= running, (
        f"extension built against FFI API {built}, newer than jaxlib {jaxlib.__version__}'s "
        f"{running}: XLA rejects handlers built against newer headers; build against the pinned "
        "oldest jaxlib"
    )
    build_pin = pinned(requirements(load_pyproject()["build-system"]["requires"])["jaxlib"].specifier)
    if Version(jaxlib.__version__) == build_pin:
        # The build used this very jaxlib's headers (isolated or not).
        assert built == running, (built, running)


# --- registration --------------------------------------------------------------------------------------
# A fresh interpreter that counts registrations through import, repeated imports and loads.
_COUNT_REGISTRATIONS = """
import importlib, json, threading
import jax
calls = []
register_target, register_type = jax.ffi.register_ffi_target, jax.ffi.register_ffi_type
def count_target(name, fn, platform="cpu", **kwargs):
    calls.append(["target", name, platform])
    return register_target(name, fn, platform=platform, **kwargs)
def count_type(name, registration, platform="cpu", **kwargs):
    calls.append(["type", name, platform])
    return register_type(name, registration, platform=platform, **kwargs)
jax.ffi.register_ffi_target, jax.ffi.register_ffi_type = count_target, count_type
import jax_dgpt
after_import = len(calls)
import jax_dgpt
importlib.import_module("jax_dgpt")
from jax_dgpt import _native
modules = [_native.load(), _native.load()]
threads = [threading.Thread(target=lambda: modules.append(_native.load())) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
same = all(m is modules[0] for m in modules) and len(modules) == 10
print(json.dumps({"calls": calls, "after_import": after_import, "same": same,
                  "targets": sorted([*_native.TARGETS.values(), *_native.QUANTIZE_TARGETS.values()]),
                  "platforms": [d.platform for d in jax.devices()]}))
"""


def test_registration_happens_once():
    proc = subprocess.run([sys.executable, "-c", _COUNT_REGISTRATIONS], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    calls = out["calls"]
    assert out["after_import"] == len(calls), f"registrations after the first import: {calls}"
    assert out["same"], "load() must return one module object"
    targets = sorted(name for kind, name, _ in calls if kind == "target")
    assert targets == out["targets"], calls
    assert all(platform == "CUDA" for _, _, platform in calls), calls
    types = [name for kind, name, _ in calls if kind == "type"]
    assert len(types) == len(set(types)) >= 1, calls
    assert calls.index(["type", types[0], "CUDA"]) < min(i for i, call in enumerate(calls) if call[0] == "target"), (
        f"state types must be registered before the stateful targets: {calls}"
    )


def test_load_is_idempotent_in_process():
    first = _native.load()
    assert _native.load() is first
    assert first.kernels_dir() == _native.kernels_dir()


# --- the CPU backend still works after the queued CUDA registration ----------------------------------------
@pytest.fixture
def on_cpu():
    """Runs the test on the CPU backend, also where a GPU is the default."""
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
        yield cpu


def test_jitted_cpu_program_runs_after_import(on_cpu):
    a, b = generate_fp8((65, 256), key=1), generate_fp8((40, 256), key=2)

    @jax.jit
    def program(a, b):
        return jax_dgpt.gemm(a, b).astype(jnp.float32) * 2.0

    out = program(a, b)
    assert out.devices() == {on_cpu}
    assert out.shape == (65, 40) and out.dtype == jnp.float32
    assert_close_to_f64((out / 2.0).astype(jnp.bfloat16), a, b, "gemm on the CPU after import")
    assert "dgpt_" not in program.lower(a, b).as_text(), "the CPU lowering must not call the FFI"


def test_grouped_ops_run_on_the_cpu_after_import(on_cpu):
    groups, n, k = 2, 24, 128
    b = generate_fp8((groups, n, k), key=3)
    m_indices = jnp.asarray(generate_contiguous_indices([100, 30]))
    a = generate_fp8((m_indices.shape[0], k), key=4)
    out = jax.jit(jax_dgpt.grouped_gemm_contiguous)(a, b, m_indices)
    assert out.shape == (m_indices.shape[0], n)
    ids = np.asarray(m_indices)
    for g in range(groups):
        rows = ids == g
        assert_close_to_f64(out[rows], a[rows], b[g], f"contiguous group {g}")
    assert not np.any(np.asarray(out[ids == -1], np.float32)), "padding rows must be zero"

    a_masked = generate_fp8((groups, 64, k), key=5)
    masked_m = jnp.asarray([64, 17], jnp.int32)
    out = jax.jit(jax_dgpt.grouped_gemm_masked, static_argnames="expected_m")(a_masked, b, masked_m, expected_m=40)
    assert out.shape == (groups, 64, n)
    assert_close_to_f64(out[0], a_masked[0], b[0], "masked group 0")
    assert_close_to_f64(out[1, :17], a_masked[1, :17], b[1], "masked group 1")
