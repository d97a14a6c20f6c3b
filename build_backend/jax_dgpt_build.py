"""jax-dgpt's PEP 517 build backend: scikit-build-core, after a check that its requirements are there.

With build isolation (the default) pip installs ``[build-system] requires`` first and this only
forwards to ``scikit_build_core.build``. With ``--no-build-isolation`` pip uses the current
environment as it is: a missing requirement used to surface as a bare ``ModuleNotFoundError: No
module named 'scikit_build_core'`` (or, for nanobind or jax, as a CMake error deep in the build
log). Here it is one message naming every missing requirement and the command that installs them.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import tomllib
from typing import Any

# The import name of each build requirement, by distribution name.
_MODULES = {"scikit-build-core": "scikit_build_core", "nanobind": "nanobind", "jax": "jax", "jaxlib": "jaxlib"}
_PYPROJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "pyproject.toml")


def build_requirements() -> list[str]:
    """``[build-system] requires`` of pyproject.toml, as written there."""
    with open(_PYPROJECT, "rb") as file:
        return list(tomllib.load(file)["build-system"]["requires"])


def missing_requirements() -> list[str]:
    """The build requirements whose module cannot be imported in this environment."""
    missing = []
    for requirement in build_requirements():
        name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower()
        module = _MODULES.get(name, name.replace("-", "_"))
        if importlib.util.find_spec(module) is None:
            missing.append(requirement)
    return missing


def _backend() -> Any:
    missing = missing_requirements()
    if missing:
        quoted = " ".join(f"'{requirement}'" for requirement in missing)
        raise RuntimeError(
            f"jax-dgpt: building without build isolation needs the build requirements installed in this "
            f"environment, and {', '.join(missing)} cannot be imported here. Install them first "
            f"(pip install {quoted}), or build with isolation (plain `pip install .`), which installs them for "
            "the build. CMake >= 3.24, a C++17 compiler and the CUDA headers are needed as well."
        )
    return importlib.import_module("scikit_build_core.build")


# --- the PEP 517 / PEP 660 hooks, forwarded ---------------------------------------------------------
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return _backend().build_wheel(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory, config_settings=None):
    return _backend().build_sdist(sdist_directory, config_settings)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    return _backend().build_editable(wheel_directory, config_settings, metadata_directory)


def get_requires_for_build_wheel(config_settings=None):
    return _backend().get_requires_for_build_wheel(config_settings)


def get_requires_for_build_sdist(config_settings=None):
    return _backend().get_requires_for_build_sdist(config_settings)


def get_requires_for_build_editable(config_settings=None):
    return _backend().get_requires_for_build_editable(config_settings)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    return _backend().prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    return _backend().prepare_metadata_for_build_editable(metadata_directory, config_settings)
