"""Time per call of jitted functions: kernel device time from the JAX profiler, with L2 flushed before
every measured call (`Timer`, docs/numerical_contract.md#measuring), or plain repeated calls timed by the
wall clock (`RepeatTimer`: on the CPU, and under DG_NSYS_PROFILING=1 so that Nsight Systems can attach
without the JAX profiler in the way)."""

from __future__ import annotations

import glob
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.profiler import ProfileData

FLUSH_BYTES = 512 << 20  # several times the L2 of an H100/H200


@jax.jit
def _flush(buf):
    return buf + 1  # reads and writes FLUSH_BYTES, evicting everything else from L2


def _gpu_kernel_events(trace_dir: str, with_op: bool = False) -> list[tuple[float, float, str]]:
    """(start_ns, duration_ns, "hlo_module/kernel") of every kernel on the GPU streams, in start order;
    ``with_op``: "hlo_module/kernel [hlo_op]" (the HLO instruction that launched it, where recorded)."""
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
            for e in line.events:
                # NOTES: kernels are told apart by their HLO module when the profiler records it:
                # fusion names alone ("loop_add_fusion") can repeat across programs.
                stats = dict(e.stats)
                name = f"{stats.get('hlo_module', '')}/{e.name}"
                events.append((e.start_ns, e.duration_ns, f"{name} [{stats.get('hlo_op', '')}]" if with_op else name))
    events.sort()
    return events


def _turns(num_fns: int, calls: int) -> list[int]:
    """The function of each call, in order: round r calls every function once, starting from function r % n."""
    return [(r + j) % num_fns for r in range(calls) for j in range(num_fns)]


class Timer:
    """Measures a jitted callable's kernels per call: the median over `calls`, each after an L2 flush.

    NOTES: the functions of one session take turns call by call, each round starting one function later
    (rotate), so each meets the same clocks and temperature and follows every other equally often. The H200's
    clock depends on the kernels just before: the same 256 x 128 kernel on 8192^3 measured 758 us first in a
    session and 812 us fifth, after XLA's dots, and 756 against 796 us in turns with a fixed order (2026-12-02,
    benchmarks/KERNEL_LOG.md v15).
    """

    kind = "device time per call from the JAX profiler, L2 flushed before every call"

    def __init__(self) -> None:
        self.buf = jnp.zeros((FLUSH_BYTES // 4,), jnp.float32)
        self.buf = _flush(self.buf).block_until_ready()
        self.flush_names = {name for _, _, name in self._trace([lambda: None], 2)}
        if not self.flush_names:
            raise RuntimeError("the profiler recorded no GPU kernels for the flush")

    def _trace(self, fns: list[Callable[[], object]], calls: int, with_op: bool = False):
        trace_dir = tempfile.mkdtemp(prefix="dgpt_trace_")
        last = None
        jax.profiler.start_trace(trace_dir)
        try:
            for i in _turns(len(fns), calls):
                self.buf = _flush(self.buf)
                # NOTES: only the last result is kept: one stream runs every call in order, so waiting
                # for it waits for all; holding every call's output ran the H200 out of memory (15 calls
                # x 5 functions of a 30000 x 28672 product, run 2026-12-01_h200_b06162c), and a function
                # that donates its output to its next call (bench_wgrad.py) leaves earlier ones deleted.
                last = fns[i]()
            jax.block_until_ready((self.buf, last))
        finally:
            jax.profiler.stop_trace()
        return _gpu_kernel_events(trace_dir, with_op)

    def time_us(self, *fns: Callable[[], object], calls: int = 15, warmup: int = 3) -> list[float]:
        """Median device µs per call of each function, all measured in one profiler session."""
        for fn in fns:
            for _ in range(warmup):
                jax.block_until_ready(fn())
        per_call: list[float] = []  # kernel time after each flush, in call order (_turns)
        for _, duration, name in self._trace(list(fns), calls):
            if name in self.flush_names:
                per_call.append(0.0)
            elif per_call:
                per_call[-1] += duration
        if len(per_call) != calls * len(fns):
            raise RuntimeError(f"expected {calls * len(fns)} flushes in the trace, found {len(per_call)}")
        owner = _turns(len(fns), calls)
        medians = []
        for i in range(len(fns)):
            mine = [t for t, f in zip(per_call, owner) if f == i and t > 0]
            if not mine:
                raise RuntimeError(f"no kernels recorded for function {i}")
            medians.append(statistics.median(mine) / 1e3)
        return medians


class RepeatTimer:
    """Runs each function ``warmup + calls`` times, nothing else (no profiler, no L2 flush), and returns
    the median wall-clock µs per call (each call waited for). Under Nsight Systems the kernels of the
    measured calls are the only GPU work besides the warm-up."""

    kind = "wall clock per call, no L2 flush"

    def time_us(self, *fns: Callable[[], object], calls: int = 15, warmup: int = 3) -> list[float]:
        medians = []
        for fn in fns:
            for _ in range(warmup):
                jax.block_until_ready(fn())
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                jax.block_until_ready(fn())
                times.append(time.perf_counter() - started)
            medians.append(statistics.median(times) * 1e6)
        return medians


def timer_class(backend: str, nsys: bool) -> type:
    """The profiler timer on a GPU; the repeat timer on the CPU or when ``nsys`` (DG_NSYS_PROFILING=1)."""
    return RepeatTimer if nsys or backend != "gpu" else Timer


def make_timer(backend: str, nsys: bool):
    return timer_class(backend, nsys)()
