"""The weight-gradient and scaled tables of benchmarks.bench (--only wgrad,k_grouped,scaled).

- wgrad: ``wgrad_gemm`` accumulating into c in place (c donated call after call, as the reference library
  adds into ``out``) on the reference library's wgrad shapes, against XLA's fp8 dot with a float32 result
  plus c, and the reference library's H200 times (ANCHORS-H200.md).
- k_grouped: ``k_grouped_wgrad_gemm`` (one launch, sizes on the device), accumulating in place, on the
  reference library's k-grouped cases against one ``wgrad_gemm`` launch per group (the reference library's
  method, in jax_dgpt) and against the reference library's per-group times summed (ANCHORS-H200.md
  wgrad table: its k-grouped op launches that kernel once per group); and on MoE weight-gradient shapes.
- scaled: ``gemm`` with row-wise scale_a [M] and scale_b [N] against the unscaled ``gemm``, same session.
"""

from __future__ import annotations

import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import jax_dgpt
from jax_dgpt import testing

# The reference library's wgrad_gemm_per_tensor_fp8_fp8_fp32_nt on the H200, µs (ANCHORS-H200.md).
SEED_WGRAD_US = {
    (7168, 2112, 4096): 106.8, (7168, 2112, 8192): 189.5,
    (1536, 24576, 4096): 251.0, (1536, 24576, 8192): 456.7,
    (512, 32768, 4096): 126.0, (512, 32768, 8192): 220.4,
    (16384, 7168, 4096): 778.3, (16384, 7168, 8192): 1454.0,
    (7168, 4096, 4096): 203.5, (7168, 4096, 8192): 366.2,
    (2048, 7168, 4096): 104.7, (2048, 7168, 8192): 184.1,
}  # fmt: skip
WGRAD = list(SEED_WGRAD_US)
# The reference library's k-grouped test: (G, base K per group, M, N); sizes base ± 128, summing to G x base.
K_GROUPED_SEED = [(g, k, m, n) for g, k in ((4, 4096), (4, 8192), (8, 4096)) for m, n in ((7168, 4096), (2048, 7168))]
# MoE weight gradients: (G experts, expected tokens per expert, M, N); tokens per expert ~ U(0.7, 1.3).
K_GROUPED_MOE = [(8, 4096, 4096, 14336), (64, 256, 7168, 2048), (128, 512, 2048, 768), (256, 32, 2048, 768)]
TINY = dict(wgrad=[(64, 256, 512)], k_grouped=[(3, 200, 64, 128)], scaled=[(64, 256, 256)])


def _in_place(fn, *args, c):
    """A no-argument callable that calls ``fn(*args, c)`` with c donated and keeps the result as the next c:
    every call adds into one buffer, as an accumulating GEMM does."""
    state = [c]

    def call():
        state[0] = fn(*args, state[0])
        return state[0]

    return call


_wgrad_donated = jax.jit(jax_dgpt.wgrad_gemm, donate_argnums=2)
_k_grouped_donated = jax.jit(jax_dgpt.k_grouped_wgrad_gemm, donate_argnums=3)


@partial(jax.jit, donate_argnums=2)
def _xla_wgrad(a, b, c):
    return c + jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def bench_wgrad(timer, shapes, rows, measure):
    for m, n, k in shapes:
        started = time.perf_counter()
        a, b = testing.generate_fp8((m, k), 1, on_device=True), testing.generate_fp8((n, k), 2, on_device=True)
        row = dict(layout="wgrad", shape=f"{m}x{n}x{k}")
        row["setup_s"] = _ready(started, a, b)
        zeros = partial(jnp.zeros, (m, n), jnp.float32)
        baselines = {"us": _in_place(_wgrad_donated, a, b, c=zeros()), "xla_us": _in_place(_xla_wgrad, a, b, c=zeros())}
        diff_of = lambda out, a=a, b=b: testing.gemm_diff(out, a, b)  # noqa: E731
        measure(timer, baselines, {}, None, diff_of, row, check=partial(jax.jit(jax_dgpt.wgrad_gemm), a, b))
        t, seed = row["us"], SEED_WGRAD_US.get((m, n, k))
        row.update(
            tflops=2 * m * n * k / t / 1e6,
            gbps=(m * k + n * k + 8 * m * n) / t / 1e3,  # c read and written once
            speedup=row["xla_us"] / t,
            seed_us=seed,
            vs_seed=None if seed is None else seed / t,
        )
        rows.add(row, started)


def seed_k_sizes(g: int, base: int, rng: np.random.Generator) -> list[int]:
    sizes = [base + int(rng.integers(-1, 2)) * 128 for _ in range(g - 1)]
    return sizes + [base * g - sum(sizes)]


@partial(jax.jit, donate_argnums=2)
def _per_group_launches(a_parts, b_parts, c_parts):
    """One wgrad_gemm launch per group, each on its own [M, k_g] and [N, k_g] arrays and its own [M, N] output
    (the reference library's flat layout and method): no slicing or stacking copies."""
    return [jax_dgpt.wgrad_gemm(a, b, c) for a, b, c in zip(a_parts, b_parts, c_parts)]


def bench_k_grouped(timer, cases, rows, measure):
    """cases: (G, sizes, M, N, the reference library's µs or None, label) tuples."""
    for g, sizes, m, n, seed, label in cases:
        started = time.perf_counter()
        t_total = int(sum(sizes))
        a, b = (
            testing.generate_fp8((m, t_total), 3, on_device=True),
            testing.generate_fp8((n, t_total), 4, on_device=True),
        )
        group_sizes = jnp.asarray(sizes, jnp.int32)
        row = dict(layout="k_grouped", shape=label, rows=[int(s) for s in sizes])
        row["setup_s"] = _ready(started, a, b)
        zeros = partial(jnp.zeros, (g, m, n), jnp.float32)
        baselines = {"us": _in_place(_k_grouped_donated, a, b, group_sizes, c=zeros())}
        starts = np.concatenate([[0], np.cumsum(sizes)])
        if len(set(sizes)) <= 4:  # few distinct K: one launch per group compiles a handful of kernels
            a_parts = [a[:, s:e] for s, e in zip(starts[:-1], starts[1:])]
            b_parts = [b[:, s:e] for s, e in zip(starts[:-1], starts[1:])]
            c_parts = [jnp.zeros((m, n), jnp.float32) for _ in range(g)]
            baselines["per_group_us"] = _in_place(_per_group_launches, a_parts, b_parts, c=c_parts)
        checked = sorted({0, g // 2, g - 1})

        def diff_of(out, a=a, b=b, starts=starts, checked=checked):
            return max(testing.gemm_diff(out[i], a[:, starts[i] : starts[i + 1]], b[:, starts[i] : starts[i + 1]])
                       for i in checked if starts[i + 1] > starts[i])  # fmt: skip

        check = partial(jax.jit(jax_dgpt.k_grouped_wgrad_gemm), a, b, group_sizes)
        measure(timer, baselines, {}, None, diff_of, row, check=check)
        t = row["us"]
        row.update(
            tflops=2 * m * n * t_total / t / 1e6,
            gbps=((m + n) * t_total + 8 * g * m * n) / t / 1e3,
            speedup=row["per_group_us"] / t if "per_group_us" in row else None,
            seed_us=seed,
            vs_seed=None if seed is None else seed / t,
        )
        rows.add(row, started)


def k_grouped_cases(tiny: bool):
    rng = np.random.default_rng(8)
    if tiny:
        return [(g, [k] * g, m, n, None, f"G={g} K/G={k} M={m} N={n}") for g, k, m, n in TINY["k_grouped"]]
    cases = []
    for g, base, m, n in K_GROUPED_SEED:
        seed = g * SEED_WGRAD_US[(m, n, base)]
        cases.append((g, seed_k_sizes(g, base, rng), m, n, seed, f"G={g} K/G={base} M={m} N={n}"))
    for g, tokens, m, n in K_GROUPED_MOE:
        sizes = testing.generate_group_rows(g, tokens, rng)
        cases.append((g, sizes, m, n, None, f"G={g} tokens={tokens} M={m} N={n}"))
    # The first MoE draw with every size rounded down to a multiple of 128: nearly the same work on groups that
    # start and end on BLOCK_K boundaries, which tells the cost of unaligned boundaries apart (KERNEL_LOG v14).
    g, sizes, m, n, _, label = cases[len(K_GROUPED_SEED)]
    cases.append((g, [size // 128 * 128 for size in sizes], m, n, None, f"{label} aligned"))
    return cases


def bench_scaled(timer, shapes, rows, measure):
    for m, n, k in shapes:
        started = time.perf_counter()
        a, b = testing.generate_fp8((m, k), 5, on_device=True), testing.generate_fp8((n, k), 6, on_device=True)
        sa, sb = testing.generate_scales((m,), 7, on_device=True), testing.generate_scales((n,), 8, on_device=True)
        row = dict(layout="scaled", shape=f"{m}x{n}x{k}")
        row["setup_s"] = _ready(started, a, b, sa, sb)
        scaled = jax.jit(lambda a, b, sa, sb: jax_dgpt.gemm(a, b, scale_a=sa, scale_b=sb))
        baselines = {"us": partial(scaled, a, b, sa, sb), "unscaled_us": partial(jax.jit(jax_dgpt.gemm), a, b)}

        def diff_of(out, a=a, b=b, sa=sa, sb=sb):
            # The scaled result against float64: undo the scales on the device, in float64.
            with jax.enable_x64(True):
                unscaled = out.astype(jnp.float64) / (sa[:, None].astype(jnp.float64) * sb[None, :].astype(jnp.float64))
            return testing.gemm_diff(unscaled, a, b)

        measure(timer, baselines, {}, None, diff_of, row)
        t = row["us"]
        row.update(
            tflops=2 * m * n * k / t / 1e6,
            gbps=(m * k + n * k + 2 * m * n + 4 * (m + n)) / t / 1e3,
            speedup=row["unscaled_us"] / t,
        )
        rows.add(row, started)


def _ready(started: float, *arrays) -> float:
    jax.block_until_ready(arrays)
    return time.perf_counter() - started
