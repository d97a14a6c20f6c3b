"""Quick end-to-end check on a GPU: one jitted gemm per layout against float64, with timings of the first
call (JIT compile included) and a warm call."""

import time

import jax
import jax.numpy as jnp
import numpy as np

import jax_dgpt


def fp8(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(jnp.float8_e4m3fn))


def diff(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return 1 - 2 * np.sum(x * y) / (np.sum(x * x) + np.sum(y * y))


def main():
    print("devices:", jax.devices(), "num_sms:", jax_dgpt.get_num_sms())
    m, n, k = 4096, 7168, 2048
    a, b = fp8((m, k), 0), fp8((n, k), 1)
    f = jax.jit(jax_dgpt.gemm)
    t0 = time.perf_counter()
    out = f(a, b).block_until_ready()
    t1 = time.perf_counter()
    out = f(a, b).block_until_ready()
    t2 = time.perf_counter()
    ref = np.asarray(a, np.float64) @ np.asarray(b, np.float64).T
    print(
        f"gemm {m}x{n}x{k}: calc_diff={diff(out, ref):.3g} nan={np.isnan(np.asarray(out, np.float32)).sum()} "
        f"first call {1e3 * (t1 - t0):.0f} ms, warm call {1e3 * (t2 - t1):.2f} ms"
    )

    g, mmax = 4, 256
    am, bg = fp8((g, mmax, k), 2), fp8((g, n, k), 3)
    masked_m = jnp.asarray([256, 100, 0, 7], jnp.int32)
    dm = jax.jit(jax_dgpt.grouped_gemm_masked, static_argnums=3)(am, bg, masked_m, 128)
    worst = max(
        diff(
            np.asarray(dm[i, :r], np.float64),
            np.asarray(am[i, :r], np.float64) @ np.asarray(bg[i], np.float64).T,
        )
        for i, r in enumerate([256, 100, 0, 7])
        if r
    )
    print(f"masked G={g}: worst calc_diff={worst:.3g}")

    idx = np.full(512, -1, np.int32)
    idx[:200], idx[256:300] = 1, 3
    ac = fp8((512, k), 4)
    dc = np.asarray(jax.jit(jax_dgpt.grouped_gemm_contiguous)(ac, bg, jnp.asarray(idx)), np.float64)
    a64, b64 = np.asarray(ac, np.float64), np.asarray(bg, np.float64)
    print(
        f"contiguous: expert1 calc_diff={diff(dc[:200], a64[:200] @ b64[1].T):.3g} "
        f"expert3 calc_diff={diff(dc[256:300], a64[256:300] @ b64[3].T):.3g} "
        f"padding max |x|={np.abs(dc[idx < 0]).max():.3g}"
    )


if __name__ == "__main__":
    main()
