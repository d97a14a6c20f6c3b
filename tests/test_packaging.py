"""Packaging as a new user meets it: the version, type information, the declared jax range, the
build backend without isolation, the import error from a source checkout, the CI script's plan."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.resources
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib

import jax
import jaxlib
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import jax_dgpt

ROOT = pathlib.Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements(entries: list[str]) -> dict[str, Requirement]:
    return {Requirement(entry).name: Requirement(entry) for entry in entries}


# --- issue 12, finding 10: version and types -------------------------------------------------------
def test_version_is_the_installed_distributions():
    assert Version(jax_dgpt.__version__) == Version(importlib.metadata.version("jax-dgpt"))
    assert "version" in pyproject()["project"]["dynamic"], "pyproject reads the version from jax_dgpt"


def test_package_ships_py_typed():
    assert importlib.resources.files("jax_dgpt").joinpath("py.typed").is_file()


def test_demo_needs_no_extra():
    """The quick start's demo installs no extra: the flax extra (~30 packages) is for jax_dgpt.nn only."""
    tree = ast.parse((ROOT / "examples" / "demo.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.split(".")[0] == "flax" or name.startswith("jax_dgpt.nn") for name in imported), imported
    readme = (ROOT / "README.md").read_text()
    demo_lines = [line for line in readme.splitlines() if "examples/demo.py" in line and "pip install" in line]
    assert demo_lines, "the README's quick start installs and runs the demo"
    for line in demo_lines:
        assert "[" not in line.split("&&")[0], f"the demo's install needs no extra: {line}"


# --- issue 12, findings 4 and 5: the jax range ----------------------------------------------------
@pytest.mark.parametrize("package", ["jax", "jaxlib"])
def test_jax_range_runs_from_the_build_pin_through_0_12(package):
    declared = requirements(pyproject()["project"]["dependencies"])[package].specifier
    pin = requirements(pyproject()["build-system"]["requires"])[package].specifier
    (oldest,) = [Version(s.version) for s in pin if s.operator == "=="]
    assert declared.contains(str(oldest)), f"{package}{declared} must include the build's {oldest}"
    for version in ("0.11.2", "0.12.0", "0.12.0.1", "0.12.9"):
        assert declared.contains(version), f"{package}{declared} must allow {version}"
    assert not declared.contains("0.13.0"), f"{package}{declared} must stop before 0.13 (untested)"
    assert not declared.contains("0.10.1"), f"{package}{declared} must start at the build's {oldest}"


def test_running_jax_is_in_the_declared_range():
    declared = requirements(pyproject()["project"]["dependencies"])
    for package, version in (("jax", jax.__version__), ("jaxlib", jaxlib.__version__)):
        assert declared[package].specifier.contains(version, prereleases=True), (package, version)


# --- issue 12, finding 7: --no-build-isolation without the build requirements ----------------------
def test_build_backend_names_missing_requirements():
    script = textwrap.dedent(
        """
        import importlib.util, sys
        sys.path.insert(0, "build_backend")
        real = importlib.util.find_spec
        hidden = ("scikit_build_core", "nanobind")
        importlib.util.find_spec = lambda name, *a: None if name in hidden else real(name, *a)
        import jax_dgpt_build
        try:
            jax_dgpt_build.build_editable("unused")
        except RuntimeError as error:
            print(error)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    message = result.stdout
    assert "scikit-build-core>=0.10, nanobind>=2.4 cannot be imported here" in message, message
    assert "pip install 'scikit-build-core>=0.10' 'nanobind>=2.4'" in message, message


def test_build_backend_forwards_every_hook():
    build = pyproject()["build-system"]
    assert build["build-backend"] == "jax_dgpt_build" and build["backend-path"] == ["build_backend"]
    sys.path.insert(0, str(ROOT / "build_backend"))
    try:
        import jax_dgpt_build
    finally:
        sys.path.remove(str(ROOT / "build_backend"))
    hooks = [
        "build_wheel",
        "build_sdist",
        "build_editable",
        "get_requires_for_build_wheel",
        "get_requires_for_build_sdist",
        "get_requires_for_build_editable",
        "prepare_metadata_for_build_wheel",
        "prepare_metadata_for_build_editable",
    ]
    assert all(callable(getattr(jax_dgpt_build, hook, None)) for hook in hooks)
    try:
        import scikit_build_core.build as backend
    except ImportError:
        pytest.skip("scikit-build-core is not installed here")
    assert {name for name in dir(backend) if name.startswith(("build_", "get_requires", "prepare_"))} <= set(hooks)


def test_readme_says_what_no_build_isolation_needs():
    readme = (ROOT / "README.md").read_text()
    paragraph = next(p for p in readme.split("\n\n") if "--no-build-isolation" in p)
    assert "scikit-build-core" in paragraph and "nanobind" in paragraph, paragraph


# --- issue 12, finding 6: a source checkout shadowing a non-editable install -----------------------
def test_import_error_from_a_checkout_names_the_installed_package(tmp_path):
    # The checkout: sources without a built extension, next to pyproject.toml and ffi/ (as in git).
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "jax_dgpt", checkout / "jax_dgpt", ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    (checkout / "ffi").mkdir()
    shutil.copy(ROOT / "pyproject.toml", checkout / "pyproject.toml")
    # A non-editable jax-dgpt 9.9.9 in site-packages (its metadata is what the message reports).
    site = tmp_path / "site"
    info = site / "jax_dgpt-9.9.9.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: jax-dgpt\nVersion: 9.9.9\n")
    # NOTES: -S skips site's .pth files (the editable install's import hook); the environment's
    # site-packages still comes through PYTHONPATH, after the fake install.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]]))
    result = subprocess.run(
        [sys.executable, "-S", "-c", "import jax_dgpt"], cwd=checkout, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert f"from the source checkout {checkout}" in message, message
    assert "not the installed jax-dgpt 9.9.9" in message, message
    assert "Run Python from another directory" in message and "pip install -e ." in message, message


def test_import_error_without_any_install_says_how_to_build(tmp_path):
    copy = tmp_path / "plain"
    shutil.copytree(ROOT / "jax_dgpt", copy / "jax_dgpt", ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"])
    result = subprocess.run(
        [sys.executable, "-S", "-c", "import jax_dgpt"], cwd=copy, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "jax_dgpt: the native extension jax_dgpt._C could not be imported" in message, message
    assert re.search(r"pip install (-e )?\.", message), message


# --- What to build 2: CI runs the oldest and the newest jax ----------------------------------------
def run_plan(env_updates: dict[str, str]) -> str:
    env = dict(os.environ, **env_updates)
    result = subprocess.run(["bash", ".ci/run", "--plan"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def fake_python(directory: pathlib.Path, name: str, version: str) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f'#!/bin/sh\n[ "$1" = "-c" ] && echo {version} && exit 0\nexit 1\n')
    path.chmod(0o755)
    return path


def tool_dir(directory: pathlib.Path) -> pathlib.Path:
    """A PATH directory with what .ci/run --plan needs: bash, coreutils, and python3 = this interpreter
    (which .ci/run cannot mistake for a python3.12)."""
    directory.mkdir(parents=True)
    for tool in ("bash", "dirname", "ls", "sort"):
        (directory / tool).symlink_to(shutil.which(tool))
    (directory / "python3").symlink_to(sys.executable)
    return directory


def test_ci_plan_without_python_312_says_skipped(tmp_path):
    path = tool_dir(tmp_path / "bin")
    plan = run_plan({"PATH": str(path), "PYENV_ROOT": str(tmp_path / "no-pyenv"), "HOME": str(tmp_path)})
    assert re.search(r"^suite 1: .*jax==0\.10\.2 jaxlib==0\.10\.2", plan, re.M), plan
    assert "skipped: no Python 3.12" in plan, plan


def test_ci_plan_finds_python_312_in_pyenv(tmp_path):
    python = fake_python(tmp_path / "pyenv" / "versions" / "3.12.7" / "bin", "python3.12", "3.12")
    fake_python(tmp_path / "pyenv" / "versions" / "3.13.0" / "bin", "python3.13", "3.13")
    path = tool_dir(tmp_path / "bin")
    plan = run_plan({"PYENV_ROOT": str(tmp_path / "pyenv"), "PATH": str(path), "HOME": str(tmp_path)})
    assert re.search(rf"^suite 2: {re.escape(str(python))} .*newest jax", plan, re.M), plan


def test_ci_plan_ignores_a_python312_that_does_not_run(tmp_path):
    """A pyenv shim named python3.12 that fails (its version is not selected) does not count."""
    path = tool_dir(tmp_path / "bin")
    (path / "python3.12").write_text("#!/bin/sh\necho 'pyenv: python3.12: command not found' >&2\nexit 127\n")
    (path / "python3.12").chmod(0o755)
    plan = run_plan({"PATH": str(path), "PYENV_ROOT": str(tmp_path / "no-pyenv"), "HOME": str(tmp_path)})
    assert "skipped: no Python 3.12" in plan, plan
