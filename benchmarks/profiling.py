"""Kernel device time from the JAX profiler, with L2 flushed before every measured call (DESIGN.md §6)."""

from __future__ import annotations

import glob
import os
import statistics
import tempfile
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.profiler import ProfileData

FLUSH_BYTES = 512 << 20  # several times the L2 of an H100/H200


@jax.jit
def _flush(buf):
    return buf + 1  # reads and writes FLUSH_BYTES, evicting everything else from L2


def _gpu_kernel_events(trace_dir: str) -> list[tuple[float, float, str]]:
    """(start_ns, duration_ns, name) of every kernel on the GPU streams, in start order."""
    paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise RuntimeError(f"no profile written under {trace_dir}")
    events = []
    for plane in ProfileData.from_file(paths[0]).planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            if "stream" not in line.name.lower():
                continue
            events.extend((e.start_ns, e.duration_ns, e.name) for e in line.events)
    events.sort()
    return events


class Timer:
    """Measures a jitted callable's kernels per call: the median over `calls`, each after an L2 flush."""

    def __init__(self) -> None:
        self.buf = jnp.zeros((FLUSH_BYTES // 4,), jnp.float32)
        self.buf = _flush(self.buf).block_until_ready()
        self.flush_names = {name for _, _, name in self._trace(lambda: None, 2)}
        if not self.flush_names:
            raise RuntimeError("the profiler recorded no GPU kernels for the flush")

    def _trace(self, fn: Callable[[], object], calls: int):
        trace_dir = tempfile.mkdtemp(prefix="dgpt_trace_")
        result = None
        jax.profiler.start_trace(trace_dir)
        try:
            for _ in range(calls):
                self.buf = _flush(self.buf)
                result = fn()
            jax.block_until_ready((self.buf, result))
        finally:
            jax.profiler.stop_trace()
        return _gpu_kernel_events(trace_dir)

    def time_us(self, fn: Callable[[], object], calls: int = 15, warmup: int = 3) -> float:
        for _ in range(warmup):
            jax.block_until_ready(fn())
        per_call: list[float] = []
        current = None
        for _, duration, name in self._trace(fn, calls):
            if name in self.flush_names:
                if current is not None:
                    per_call.append(current)
                current = 0.0
            elif current is not None:
                current += duration
        if current is not None:
            per_call.append(current)
        per_call = [t for t in per_call if t > 0]
        if not per_call:
            raise RuntimeError("no kernels recorded for the measured function")
        return statistics.median(per_call) / 1e3
