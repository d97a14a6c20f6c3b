"""Forced kernel settings for experiments, tests and tuning: contexts that override the heuristics.

Ops traced inside a context use the forced fields; the others are still chosen by
:mod:`jax_dgpt.heuristics`. Functions traced before the context keep their compiled config. A
forced value the kernel cannot take raises ValueError when an op is lowered, naming the rule.

    with jax_dgpt.forcing.force_tile(block_n=160):
        d = jax.jit(jax_dgpt.gemm)(a, b)
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from ._ints import static_int

__all__ = ["Overrides", "force_k_interleave", "force_k_splits", "force_tile", "forced_overrides"]

# (field, value) pairs of KernelConfig, sorted: hashable, so the ops pass them as one static argument
# and jit caches keep forced configs apart.
Overrides = tuple[tuple[str, int], ...]

_forced: contextvars.ContextVar[Overrides] = contextvars.ContextVar("jax_dgpt_forced", default=())


@contextlib.contextmanager
def _forcing(**settings: int | None) -> Iterator[None]:
    """Sets (or, for None, clears) these KernelConfig fields for the context's duration."""
    merged = dict(_forced.get())
    for name, value in settings.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    token = _forced.set(tuple(sorted(merged.items())))
    try:
        yield
    finally:
        _forced.reset(token)


def _value(fn: str, name: str, value: object) -> int:
    return static_int(f"jax_dgpt.forcing.{fn}", name, value, positive=True)


def force_k_splits(num_k_splits: int) -> contextlib.AbstractContextManager[None]:
    """Split K over clusters of ``num_k_splits`` CTAs (each takes one K slice; rank 0 adds them in
    rank order, so results are reproducible). 1 turns split-K off."""
    return _forcing(num_k_splits=_value("force_k_splits", "num_k_splits", num_k_splits))


def force_k_interleave(k_interleave: int = 1) -> contextlib.AbstractContextManager[None]:
    """1: on 64-row tiles, a second math warpgroup takes every other K block of the same rows (K split
    inside the CTA, halving each warpgroup's serial chain of K blocks); 0: off.

    Excludes split-K and needs an even stage count. The two halves' sums are added in a fixed order:
    reproducible, but not bitwise equal to the kernel without it.
    """
    value = static_int("jax_dgpt.forcing.force_k_interleave", "k_interleave", k_interleave)
    if value not in (0, 1):
        raise ValueError(f"jax_dgpt.forcing.force_k_interleave: k_interleave must be 0 or 1, got {value}")
    return _forcing(k_interleave=value)


def force_tile(
    *, block_m: int | None = None, block_n: int | None = None, num_stages: int | None = None
) -> contextlib.AbstractContextManager[None]:
    """Use these tile fields instead of the heuristics' choice (parameters left out are chosen)."""
    given = {"block_m": block_m, "block_n": block_n, "num_stages": num_stages}
    return _forcing(
        **{name: None if value is None else _value("force_tile", name, value) for name, value in given.items()}
    )


def forced_overrides() -> Overrides:
    """Every field forced in this context."""
    return _forced.get()
