"""jax_dgpt demo: FP8 GEMMs inside jax.jit, checked against float64, timed on a Hopper GPU.

    python examples/demo.py

On an sm_90a GPU the ops run jax_dgpt's JIT-compiled kernels; anywhere else the same jitted program
runs the CPU reference implementation, and the demo says so.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jax_dgpt


def fp8(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32).astype(jnp.float8_e4m3fn))


def calc_diff(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return 1 - 2 * np.sum(x * y) / (np.sum(x * x) + np.sum(y * y))


def wall_us(fn, *args, reps=20):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def run(hopper: bool) -> None:
    if hopper:
        print(f"running jax_dgpt kernels on {jax.devices()[0].device_kind} ({jax_dgpt.get_num_sms()} SMs)")
        m, n, k, groups, expected_m = 4096, 7168, 2048, 8, 512
    else:
        print(
            f"no Hopper GPU visible (backend: {jax.default_backend()}): falling back to the CPU reference "
            "implementation on the CPU device"
        )
        m, n, k, groups, expected_m = 256, 512, 384, 4, 64

    # Normal GEMM: D = A . B^T.
    a, b = fp8((m, k), 0), fp8((n, k), 1)
    gemm = jax.jit(jax_dgpt.gemm)
    d = gemm(a, b)
    diff = calc_diff(d, np.asarray(a, np.float64) @ np.asarray(b, np.float64).T)
    t = wall_us(gemm, a, b)
    print(
        f"gemm        {m}x{n}x{k}: calc_diff {diff:.2e} (bound 3e-6)  wall {t:8.1f} us/call  "
        f"{2 * m * n * k / t / 1e6:7.1f} TFLOPS"
    )

    # MoE prefill: experts' tokens concatenated, each expert padded to the alignment.
    align = jax_dgpt.get_m_alignment_for_contiguous_layout()
    rows = [expected_m + 37 * g for g in range(groups)]
    m_indices = np.concatenate([np.r_[np.full(r, g), np.full(-r % align, -1)] for g, r in enumerate(rows)])
    ac, bg = fp8((len(m_indices), k), 2), fp8((groups, n, k), 3)
    contiguous = jax.jit(jax_dgpt.grouped_gemm_contiguous)
    dc = np.asarray(contiguous(ac, bg, jnp.asarray(m_indices, jnp.int32)), np.float64)
    worst = max(
        calc_diff(
            dc[m_indices == g],
            np.asarray(ac, np.float64)[m_indices == g] @ np.asarray(bg[g], np.float64).T,
        )
        for g in range(groups)
    )
    t = wall_us(contiguous, ac, bg, jnp.asarray(m_indices, jnp.int32))
    print(
        f"contiguous  G={groups} rows={sum(rows)}: worst calc_diff {worst:.2e}, padding rows zero: "
        f"{bool(np.all(dc[m_indices < 0] == 0))}  wall {t:8.1f} us/call"
    )

    # MoE decode: per-expert valid row counts live on the device.
    mmax = 2 * expected_m
    am = fp8((groups, mmax, k), 4)
    masked_m = jnp.asarray([expected_m // 2 + 13 * g for g in range(groups)], jnp.int32)
    masked = jax.jit(jax_dgpt.grouped_gemm_masked, static_argnums=3)
    dm = np.asarray(masked(am, bg, masked_m, expected_m), np.float64)
    worst = max(
        calc_diff(dm[g, :r], np.asarray(am[g, :r], np.float64) @ np.asarray(bg[g], np.float64).T)
        for g, r in enumerate(np.asarray(masked_m))
    )
    t = wall_us(masked, am, bg, masked_m, expected_m)
    print(f"masked      G={groups} Mmax={mmax}: worst calc_diff {worst:.2e}  wall {t:8.1f} us/call")
    if not hopper:
        print("(CPU reference timings; run on an H100/H200 for kernel timings)")


def main() -> None:
    hopper = jax.default_backend() == "gpu" and all(
        getattr(d, "compute_capability", "") == "9.0" for d in jax.devices()
    )
    if hopper:
        run(hopper=True)
    else:
        # NOTES: on a GPU that is not a Hopper the default device would still be that GPU, where the
        # kernels cannot run; the reference runs on the CPU device explicitly.
        with jax.default_device(jax.devices("cpu")[0]):
            run(hopper=False)


if __name__ == "__main__":
    main()
