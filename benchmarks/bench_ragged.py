"""The ragged table of benchmarks.bench (--only ragged): ``grouped_gemm_ragged`` on unpadded expert groups
against jax_dgpt's contiguous layout (the same tokens padded to 128-row experts), ``jax.lax.ragged_dot``
(fp8 and bf16) and tokamax's ``ragged_dot`` (bf16, its Pallas Mosaic GPU kernel), in one profiler session
per shape.

Shapes: the contiguous table's (G, expected rows per group, N, K), many small experts (the case where
padding to 128 rows multiplies the work), and real MoE layers (MOE_LAYERS: the expert GEMMs of Mixtral 8x7B,
Qwen3-235B-A22B and DeepSeek-V3 at 4096-32768 tokens under their top-k routing, expected rows = tokens × k
/ experts). Rows per group are expected × U(0.7, 1.3) (numpy default_rng(3)).

tokamax is optional: its wheel and those the GPU image lacks are carried (../shared/tools/device-wheels.sh);
it imports xprof for its own benchmarking helpers only, so a stand-in module is put on the path when xprof is
missing. jax.lax.ragged_dot on Hopper multiplies every row by every group's weights, so it is timed only up
to DENSE_FLOPS_LIMIT of that dense work (a minute per shape otherwise).
"""

from __future__ import annotations

import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import jax_dgpt
from jax_dgpt import testing

# (G, expected rows per group, N, K) of real MoE layers' expert GEMMs: gate and up fused (N = 2 x ffn,
# K = hidden) and down (N = hidden, K = ffn).
MOE_LAYERS = {
    (8, 1024, 28672, 4096): "Mixtral 8x7B w1+w3, 4096 tokens top-2",
    (8, 1024, 4096, 14336): "Mixtral 8x7B w2, 4096 tokens top-2",
    (8, 4096, 28672, 4096): "Mixtral 8x7B w1+w3, 16384 tokens top-2",
    (128, 256, 3072, 4096): "Qwen3-235B-A22B gate+up, 4096 tokens top-8",
    (128, 256, 4096, 1536): "Qwen3-235B-A22B down, 4096 tokens top-8",
    (256, 128, 4096, 7168): "DeepSeek-V3 gate+up, 4096 tokens top-8",
    (256, 128, 7168, 2048): "DeepSeek-V3 down, 4096 tokens top-8",
    (256, 1024, 4096, 7168): "DeepSeek-V3 gate+up, 32768 tokens top-8",
}
RAGGED = (
    list(testing.CONTIGUOUS_ANCHORS)
    + [(256, 32, 7168, 2048), (128, 64, 4096, 7168), (256, 32, 2048, 7168)]
    + list(MOE_LAYERS)
)
TINY = [(3, 60, 256, 256)]
# 2 * G * rows * N * K: every row against every group's weights, the work of jax.lax.ragged_dot's dense
# lowering on Hopper, which ran at 1.2-1.4 such TFLOPS on the H200 (run 2026-12-01_h200_8dd356b: 52 ms for
# 256 groups of 32 rows, N = 7168, K = 2048). Beyond this a call takes > ~0.12 s (and its first call
# autotunes for up to 40 s).
DENSE_FLOPS_LIMIT = 1.5e14
DENSE_SKIPPED = "n/a_(dense_work_over_DENSE_FLOPS_LIMIT)"  # the row value of a baseline not timed for that

f_ragged = jax.jit(jax_dgpt.grouped_gemm_ragged)
f_contiguous = jax.jit(jax_dgpt.grouped_gemm_contiguous)


@jax.jit
def lax_ragged(x, y, group_sizes):
    return jax.lax.ragged_dot(x, jnp.swapaxes(y, 1, 2), group_sizes, preferred_element_type=jnp.bfloat16)


def label(g, em, n, k) -> str:
    return f"G={g} m={em} N={n} K={k}"


def _xprof_stand_in() -> None:
    """tokamax.benchmarking imports ``xprof.cli.tools.get_kernel_stats_tool`` at import time; the ragged_dot
    kernel never calls it. A module that raises when called stands in where xprof is not installed."""
    import sys
    import types

    names = ("xprof", "xprof.cli", "xprof.cli.tools")
    modules = {name: types.ModuleType(name) for name in names}

    def get_kernel_stats_tool(*args, **kwargs):
        raise RuntimeError("xprof is not installed: benchmarks.bench_ragged only stands in for tokamax's import")

    modules["xprof.cli.tools"].get_kernel_stats_tool = get_kernel_stats_tool
    modules["xprof"].cli, modules["xprof.cli"].tools = modules["xprof.cli"], modules["xprof.cli.tools"]
    for name in names:
        sys.modules.setdefault(name, modules[name])


def load_tokamax():
    """tokamax, or the reason it cannot be imported (a string)."""
    try:
        import xprof  # noqa: F401
    except ImportError:
        _xprof_stand_in()
    try:
        import tokamax
    except Exception as error:  # ImportError, or a dependency of the wrong version
        return f"tokamax unavailable: {type(error).__name__}: {error}"
    return tokamax


def tokamax_for_this_backend():
    """:func:`load_tokamax` on a GPU; elsewhere the reason it is not timed."""
    return load_tokamax() if jax.default_backend() == "gpu" else "tokamax: not on a GPU"


def record_tokamax(row: dict, tokamax) -> bool:
    """Records in ``row`` the tokamax version, or the reason it is not timed (as the tokamax_bf16_us value);
    True when it can be timed."""
    if isinstance(tokamax, str):
        row["tokamax_bf16_us"] = tokamax.replace(" ", "_")[:80]
        return False
    row["tokamax"] = tokamax.__version__
    return True


def tokamax_dot(tokamax):
    """tokamax.ragged_dot (Mosaic GPU) as ``(x [M, K], w [G, N, K], group_sizes) -> [M, N]`` in x's dtype: the
    weights as jax_dgpt stores them, swapped to tokamax's [G, K, N]. Its kernel needs M % 8 == 0, so zero rows
    are appended (past the groups' total: not computed) and sliced off."""

    def dot(x, w, group_sizes):
        m = x.shape[0]
        padded = jnp.pad(x, ((0, -m % 8), (0, 0)))
        rhs = jnp.swapaxes(w, 1, 2)
        out = tokamax.ragged_dot(padded, rhs, group_sizes, preferred_element_type=x.dtype, implementation="mosaic")
        return out[:m]

    return dot


def bench_ragged(timer, shapes, rows, measure, variants=None):
    align = jax_dgpt.get_m_alignment_for_contiguous_layout()
    tokamax = tokamax_for_this_backend()
    if isinstance(tokamax, str):
        print(tokamax, flush=True)
    for g, em, n, k in shapes:
        started = time.perf_counter()
        sizes = testing.generate_group_rows(g, em, 3)
        # The contiguous layout of the same tokens: each group padded to the alignment.
        a_pad, b, m_indices = testing.contiguous_inputs(sizes, n, k, key=4, alignment=align, on_device=True)
        idx = np.asarray(m_indices)
        a = a_pad[jnp.asarray(np.nonzero(idx >= 0)[0])]  # the same rows, unpadded, in group order
        group_sizes = jnp.asarray(np.asarray(sizes, np.int32))
        a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
        row = dict(layout="ragged", shape=label(g, em, n, k), rows=sizes)
        if (g, em, n, k) in MOE_LAYERS:
            row["model"] = MOE_LAYERS[(g, em, n, k)]
        jax.block_until_ready((a, a16, b16))
        row["setup_s"] = time.perf_counter() - started
        baselines = {
            "us": partial(f_ragged, a, b, group_sizes),
            "contiguous_us": partial(f_contiguous, a_pad, b, m_indices),
        }
        if 2 * g * sum(sizes) * n * k <= DENSE_FLOPS_LIMIT:
            baselines["ragged_fp8_us"] = partial(lax_ragged, a, b, group_sizes)
            baselines["ragged_bf16_us"] = partial(lax_ragged, a16, b16, group_sizes)
        else:
            row["ragged_fp8_us"] = row["ragged_bf16_us"] = DENSE_SKIPPED
        if record_tokamax(row, tokamax):
            baselines["tokamax_bf16_us"] = partial(jax.jit(tokamax_dot(tokamax)), a16, b16, group_sizes)

        def diff_of(out, a=a, b=b, sizes=sizes):
            # Per group on the device: the ragged rows as a contiguous-layout index array without padding.
            index = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
            return max(testing.contiguous_diffs(out, a, b, index).values())

        measure(timer, baselines, variants or {}, None, diff_of, row)
        t, valid = row["us"], int(sum(sizes))
        row.update(
            tflops=2 * valid * n * k / t / 1e6,
            gbps=(valid * k + g * n * k + 2 * valid * n) / t / 1e3,
            vs_contiguous=row["contiguous_us"] / t,
            padded_rows=len(idx),
        )
        for key, baseline in (
            ("speedup", "ragged_fp8_us"),
            ("speedup_bf16", "ragged_bf16_us"),
            ("vs_tokamax", "tokamax_bf16_us"),
        ):
            if isinstance(row.get(baseline), float):
                row[key] = row[baseline] / t
        rows.add(row, started)
