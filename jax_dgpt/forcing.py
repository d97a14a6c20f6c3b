"""Forced kernel settings for experiments, tests and tuning: a context that overrides the heuristics.

Ops traced inside ``force(...)`` use the given :class:`~jax_dgpt.kernel_config.KernelConfig` fields;
the others are still chosen by :mod:`jax_dgpt.heuristics`. Functions traced before the context keep
their compiled config. A forced value the kernel cannot take raises ValueError when an op is lowered,
naming the rule it breaks.

    with jax_dgpt.forcing.force(num_stages=3, num_k_splits=2):
        d = jax.jit(lambda a, b: jax_dgpt.gemm(a, b))(a, b)

The fields that can be forced are :data:`~jax_dgpt.kernel_config.TUNING_FIELDS` (the tile and the K
splitting; :class:`~jax_dgpt.kernel_config.KernelConfig` documents each). K split over a cluster of CTAs
(``num_k_splits``) is reduced in rank order: reproducible. K split inside a CTA (``k_interleave=1``: on
64-row tiles a second math warpgroup takes every other K block of the same rows) excludes split-K, needs
an even stage count, and adds its two halves in a fixed order: reproducible, not bitwise equal to the
kernel without it. ``multicast_a=1`` (normal GEMMs without K splitting) pairs CTAs in clusters of two that
share A's stages: bitwise equal to the kernel without it.
Nested contexts merge; ``None`` clears a field forced by an outer one.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from ._ints import static_int
from .kernel_config import SWITCH_FIELDS, TUNING_FIELDS

__all__ = ["Overrides", "force", "forced_overrides"]

# (field, value) pairs, sorted: hashable, so the ops pass them as one static argument and jit caches
# keep forced configs apart.
Overrides = tuple[tuple[str, int], ...]

_forced: contextvars.ContextVar[Overrides] = contextvars.ContextVar("jax_dgpt_forced", default=())


def _checked(name: str, value: object) -> int:
    where = "jax_dgpt.forcing.force"
    if name not in TUNING_FIELDS:
        raise ValueError(f"{where}: {name!r} cannot be forced; the fields that can are {TUNING_FIELDS}")
    # k_interleave and multicast_a are switches (0 or 1); every other field is a positive count.
    switch = name in SWITCH_FIELDS
    result = static_int(where, name, value, positive=not switch)
    if switch and result not in (0, 1):
        raise ValueError(f"{where}: {name} must be 0 or 1, got {result}")
    return result


@contextlib.contextmanager
def force(**fields: int | None) -> Iterator[None]:
    """Ops lowered inside the context use these KernelConfig fields (``None`` clears one)."""
    merged = dict(_forced.get())
    for name, value in fields.items():
        if value is None:
            _checked(name, 0 if name in SWITCH_FIELDS else 1)  # the name must still be a tuning field
            merged.pop(name, None)
        else:
            merged[name] = _checked(name, value)
    token = _forced.set(tuple(sorted(merged.items())))
    try:
        yield
    finally:
        _forced.reset(token)


def forced_overrides() -> Overrides:
    """Every field forced in this context."""
    return _forced.get()
