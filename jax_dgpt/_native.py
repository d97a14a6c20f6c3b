"""Loads the native extension ``jax_dgpt._C`` and registers its FFI targets and types, once."""

from __future__ import annotations

import importlib
import os
import threading
from types import ModuleType

import jax

__all__ = ["QUANTIZE_TARGETS", "TARGETS", "kernels_dir", "load"]

# The FFI targets the extension provides, by layout (the names the CUDA lowerings call).
TARGETS = {layout: f"dgpt_gemm_{layout}" for layout in ("normal", "contiguous", "masked", "k_grouped", "ragged")}
# The quantization kernels' targets, by kind (jax_dgpt/quantize.py).
QUANTIZE_TARGETS = {"rows": "dgpt_quantize_rows", "transpose": "dgpt_cast_transpose"}
_PLATFORM = "CUDA"

_lock = threading.Lock()
_module: ModuleType | None = None


def kernels_dir() -> str | None:
    """The directory holding the kernel headers the JIT compiles, or None if none is found.

    An installed wheel carries them as ``jax_dgpt/kernels``; a source checkout (or an editable
    install) has them next to the package, in ``<repo>/kernels``.
    """
    package_dir = os.path.dirname(os.path.abspath(__file__))
    for candidate in (
        os.path.join(package_dir, "kernels"),
        os.path.join(package_dir, os.pardir, "kernels"),
    ):
        if os.path.isdir(candidate):
            return os.path.normpath(candidate)
    return None


def _import_extension() -> ModuleType:
    try:
        # NOTES: import_module, not ``from . import _C``: the latter's error on a missing module
        # blames a circular import of the half-initialised package.
        native = importlib.import_module(f"{__package__}._C")
    except ImportError as error:
        import json
        import sys
        from importlib import metadata

        # Where this package came from and what pip installed, to say which of three cases this is.
        package_dir = os.path.dirname(os.path.abspath(__file__))
        root = os.path.dirname(package_dir)
        in_checkout = os.path.isfile(os.path.join(root, "pyproject.toml")) and os.path.isdir(os.path.join(root, "ffi"))
        try:
            installed = metadata.distribution("jax-dgpt")
            direct_url = json.loads(installed.read_text("direct_url.json") or "{}")
            editable = bool(direct_url.get("dir_info", {}).get("editable", False))
        except (metadata.PackageNotFoundError, ValueError):
            installed, editable = None, False
        build = (
            "`pip install -e .` (on a machine without a registry: `pip install --no-build-isolation -e .`, "
            "after `pip install scikit-build-core nanobind`)"
        )
        if in_checkout and installed is not None and not editable:
            location = installed.locate_file("jax_dgpt")
            hint = (
                f"Python imported jax_dgpt from the source checkout {root} (the current directory and PYTHONPATH "
                f"come before site-packages), not the installed jax-dgpt {installed.version} in {location}, and "
                "the checkout has no built extension. Run Python from another directory to use the installed "
                f"package, or install the checkout in editable mode, {build}, to use it from here."
            )
        elif editable:
            hint = (
                f"jax_dgpt is an editable install of {root} whose extension is missing or does not load in "
                f"this Python ({sys.version.split()[0]}) with this jaxlib: rebuild it here with {build}."
            )
        else:
            hint = (
                "Install the package with `pip install .` (in a source checkout on a machine without a registry: "
                "`pip install --no-build-isolation .`, after `pip install scikit-build-core nanobind`) so that the "
                "extension is built for this Python and jaxlib."
            )
        raise ImportError(
            f"jax_dgpt: the native extension jax_dgpt._C could not be imported ({error}). {hint}"
        ) from error
    return native


def load() -> ModuleType:
    """Imports ``_C``, points it at the kernel headers, registers targets and types; returns ``_C``.

    Only the first call does the work; later calls return the module.

    NOTES: a second registration of a target under the same name with another pointer breaks
    backend initialisation, hence the module-level guard. On a CPU-only jaxlib, registering for
    CUDA only queues the registration (``xla_client`` keeps it until a CUDA plugin appears), for
    targets and for types alike, so no CPU-only special case is needed here.
    """
    global _module
    with _lock:
        if _module is not None:
            return _module
        native = _import_extension()
        directory = kernels_dir()
        if directory is not None:
            native.set_kernels_dir(directory)
        # NOTES: types before targets: a stateful handler's state type must exist before it.
        types = {**native.type_registrations(), **native.quantize_type_registrations()}
        for name, registration in types.items():
            jax.ffi.register_ffi_type(name, registration, platform=_PLATFORM)
        registrations = {**native.registrations(), **native.quantize_registrations()}
        missing = sorted((set(TARGETS.values()) | set(QUANTIZE_TARGETS.values())) - set(registrations))
        if missing:
            raise ImportError(f"jax_dgpt: the native extension lacks FFI targets {missing}; rebuild it")
        for name, stages in registrations.items():
            jax.ffi.register_ffi_target(name, stages, platform=_PLATFORM)
        _module = native
        return native
