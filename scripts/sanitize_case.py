"""One small shape of each op, run under compute-sanitizer by scripts/gpu_check.sh (memcheck, racecheck,
synccheck). Exits non-zero if a result is wrong, so a sanitizer run also checks correctness."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from smoke import diff, fp8  # same folder: scripts/ is on sys.path when run as a script

import jax_dgpt


def main():
    ok = True
    a, b = fp8((200, 256), 0), fp8((272, 256), 1)  # partial M and N tiles, two K blocks
    d = jax.jit(jax_dgpt.gemm)(a, b)
    ok &= diff(d, np.asarray(a, np.float64) @ np.asarray(b, np.float64).T) <= 3e-6

    # Small M: a trimmed A box (8 rows, the kernel zeroes the rest) and the automatic 2-way split-K.
    a1, b1 = fp8((5, 4096), 5), fp8((272, 4096), 6)
    d1 = jax.jit(jax_dgpt.gemm)(a1, b1)
    ok &= diff(d1, np.asarray(a1, np.float64) @ np.asarray(b1, np.float64).T) <= 3e-6

    # B multicast (forced): 3 row blocks of 128, so the last pair's second CTA loads no A and stores nothing.
    from jax_dgpt import heuristics

    am2, bm2 = fp8((384, 256), 7), fp8((272, 256), 8)
    with heuristics.force_multicast(2):
        dm2 = jax.jit(lambda x, y: jax_dgpt.gemm(x, y))(am2, bm2)
    ok &= diff(dm2, np.asarray(am2, np.float64) @ np.asarray(bm2, np.float64).T) <= 3e-6

    # Pingpong (forced): the math warpgroups take turns over 9 K blocks per tile; 4 CTAs walk the 34 tiles.
    ap, bp = fp8((200, 1040), 9), fp8((272, 1040), 10)
    jax_dgpt.set_num_sms(4)
    try:
        with heuristics.force_pingpong(), heuristics.force_tile(block_n=16):
            dp = jax.jit(lambda x, y: jax_dgpt.gemm(x, y))(ap, bp)
        # Pingpong on 64-row tiles (M = 40): two warpgroups alternate the stages of a 2-stage ring over 17 tiles
        # of 9 K blocks on 4 CTAs (each stage keeps one reader while the ring wraps across tiles).
        with heuristics.force_pingpong(), heuristics.force_tile(block_n=16, num_stages=2):
            dq = jax.jit(lambda x, y: jax_dgpt.gemm(x, y))(ap[:40], bp)
    finally:
        jax_dgpt.set_num_sms(jax.devices()[0].core_count)
    ok &= diff(dp, np.asarray(ap, np.float64) @ np.asarray(bp, np.float64).T) <= 3e-6
    ok &= diff(dq, np.asarray(ap[:40], np.float64) @ np.asarray(bp, np.float64).T) <= 3e-6

    bg = fp8((3, 272, 256), 2)
    am = fp8((3, 130, 256), 3)
    masked_m = jnp.asarray([130, 5, 0], jnp.int32)
    dm = jax.jit(jax_dgpt.grouped_gemm_masked, static_argnums=3)(am, bg, masked_m, 64)
    for g, r in enumerate([130, 5]):
        ok &= (
            diff(
                np.asarray(dm[g, :r], np.float64),
                np.asarray(am[g, :r], np.float64) @ np.asarray(bg[g], np.float64).T,
            )
            <= 3e-6
        )

    idx = np.full(384, -1, np.int32)
    idx[:100], idx[128:256], idx[256:300] = 0, 2, 7  # 7 is out of range: treated as padding
    ac = fp8((384, 256), 4)
    dc = np.asarray(jax.jit(jax_dgpt.grouped_gemm_contiguous)(ac, bg, jnp.asarray(idx)), np.float64)
    a64, b64 = np.asarray(ac, np.float64), np.asarray(bg, np.float64)
    ok &= diff(dc[:100], a64[:100] @ b64[0].T) <= 3e-6
    ok &= diff(dc[128:256], a64[128:256] @ b64[2].T) <= 3e-6
    ok &= bool(np.all(dc[idx < 0] == 0)) and bool(np.all(dc[256:300] == 0))
    print("SANITIZE CASE", "OK" if ok else "WRONG RESULTS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
