"""jax_dgpt demo: FP8 GEMMs inside jax.jit, checked against float64, timed on a Hopper GPU.

    python examples/demo.py

On an sm_90a GPU the ops run jax_dgpt's JIT-compiled kernels and the demo prints wall time per call and
TFLOPS; anywhere else the same jitted program runs the CPU reference implementation on small shapes, and
the demo says so and prints no throughput (the reference's speed says nothing about the kernels).
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np

import jax_dgpt
from jax_dgpt.testing import (
    contiguous_diffs,
    contiguous_inputs,
    gemm_diff,
    generate_fp8,
    hopper_gpu_visible,
    masked_diffs,
    masked_inputs,
    to_f64,
)


def wall_us(fn, *args, reps=20):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def timing(us: float, flops: float, hopper: bool) -> str:
    return f"wall {us:8.1f} us/call" + (f"  {flops / us / 1e6:7.1f} TFLOPS" if hopper else "")


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
    a, b = generate_fp8((m, k), 0), generate_fp8((n, k), 1)
    gemm = jax.jit(jax_dgpt.gemm)
    diff = gemm_diff(gemm(a, b), a, b)
    t = wall_us(gemm, a, b)
    print(f"gemm        {m}x{n}x{k}: calc_diff {diff:.2e} (bound 3e-6)  {timing(t, 2 * m * n * k, hopper)}")

    # MoE prefill: experts' tokens concatenated, each expert padded to the alignment.
    align = jax_dgpt.get_m_alignment_for_contiguous_layout()
    rows = [expected_m + 37 * g for g in range(groups)]
    ac, bg, m_indices = contiguous_inputs(rows, n, k, key=2, alignment=align)
    contiguous = jax.jit(jax_dgpt.grouped_gemm_contiguous)
    dc = contiguous(ac, bg, m_indices)
    worst = max(contiguous_diffs(dc, ac, bg, m_indices).values())
    padding_zero = bool(np.all(to_f64(dc)[np.asarray(m_indices) < 0] == 0))
    t = wall_us(contiguous, ac, bg, m_indices)
    print(
        f"contiguous  G={groups} rows={sum(rows)}: worst calc_diff {worst:.2e}, padding rows zero: {padding_zero}  "
        f"{timing(t, 2 * sum(rows) * n * k, hopper)}"
    )

    # MoE decode: per-expert valid row counts live on the device.
    mmax = 2 * expected_m
    valid = [expected_m // 2 + 13 * g for g in range(groups)]
    am, bm, masked_m = masked_inputs(valid, mmax, n, k, key=4)
    masked = jax.jit(jax_dgpt.grouped_gemm_masked, static_argnums=3)
    worst = max(masked_diffs(masked(am, bm, masked_m, expected_m), am, bm, masked_m).values())
    t = wall_us(masked, am, bm, masked_m, expected_m)
    print(
        f"masked      G={groups} Mmax={mmax}: worst calc_diff {worst:.2e}  {timing(t, 2 * sum(valid) * n * k, hopper)}"
    )
    if not hopper:
        print("(wall times of the CPU reference, no throughput: run on an H100/H200 for kernel timings)")


def main() -> None:
    if hopper_gpu_visible() and jax.default_backend() == "gpu":
        run(hopper=True)
    else:
        # NOTES: on a GPU that is not a Hopper the default device would still be that GPU, where the
        # kernels cannot run; the reference runs on the CPU device explicitly.
        with jax.default_device(jax.devices("cpu")[0]):
            run(hopper=False)


if __name__ == "__main__":
    main()
