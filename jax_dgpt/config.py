"""Environment variables that the Python side of jax_dgpt reads.

Every `DG_*` variable the Python package understands is parsed here and nowhere else. The values are
read once, at import, into :data:`settings`; code reads ``config.settings.<field>``. Tests that need
another value call :func:`reload` after changing ``os.environ`` (or use :func:`override`), and call
:func:`reload` again afterwards to restore the process's values.

The JIT variables (``DG_JIT_CACHE_DIR``, ``DG_JIT_USE_NVRTC``, ``DG_JIT_DEBUG``, ...) are read by
the C++ extension, not here: the compiler runs inside XLA's instantiate stage, where no Python runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

__all__ = ["Settings", "override", "parse_bool", "reload", "settings"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def parse_bool(name: str, value: str | None) -> bool:
    """Parses a boolean environment variable; unset or empty means False.

    Raises:
      ValueError: the value is not one of 1/0, true/false, yes/no, on/off (any case).
    """
    if value is None:
        return False
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"jax_dgpt: environment variable {name} must be 0 or 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The parsed values of the environment variables the Python side reads.

    Attributes:
      print_configs: ``DG_PRINT_CONFIGS``: print the kernel configuration the heuristics pick, once
        per distinct (op, shape), when a program is lowered for CUDA.
    """

    print_configs: bool = False

    @classmethod
    def from_environ(cls, environ: dict[str, str] | os._Environ[str]) -> Settings:
        return cls(print_configs=parse_bool("DG_PRINT_CONFIGS", environ.get("DG_PRINT_CONFIGS")))


settings: Settings = Settings.from_environ(os.environ)


def reload() -> Settings:
    """Re-reads the environment into :data:`settings` (for tests) and returns the new value."""
    global settings
    settings = Settings.from_environ(os.environ)
    return settings


@contextlib.contextmanager
def override(**changes: object) -> Iterator[Settings]:
    """Temporarily replaces fields of :data:`settings` (tests): ``override(print_configs=True)``."""
    global settings
    previous = settings
    settings = dataclasses.replace(previous, **changes)
    try:
        yield settings
    finally:
        settings = previous
