"""One small shape of each op, run under compute-sanitizer by scripts/gpu_check.sh (memcheck, racecheck,
synccheck). Exits non-zero if a result is wrong, so a sanitizer run also checks correctness.

    python scripts/sanitize_case.py [case ...]     (default: every case; see CASES)
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

import jax_dgpt
from jax_dgpt import forcing
from jax_dgpt.testing import calc_diff as diff
from jax_dgpt.testing import generate_fp8 as fp8


def plain() -> bool:
    a, b = fp8((200, 256), 0), fp8((272, 256), 1)  # partial M and N tiles, two K blocks
    d = jax.jit(jax_dgpt.gemm)(a, b)
    ok = diff(d, np.asarray(a, np.float64) @ np.asarray(b, np.float64).T) <= 3e-6

    # Small M: a trimmed A box (8 rows, the kernel zeroes the rest) and the automatic 2-way split-K.
    a1, b1 = fp8((5, 4096), 5), fp8((272, 4096), 6)
    d1 = jax.jit(jax_dgpt.gemm)(a1, b1)
    return ok & (diff(d1, np.asarray(a1, np.float64) @ np.asarray(b1, np.float64).T) <= 3e-6)


def _k_parts(**fields) -> bool:
    """M = 40 over a grid of 4 CTAs, each walking several of 17 tiles of 9 K blocks (partial buffers reused);
    bf16 out, and float32 added into c (the storing CTA or warpgroup stages the f32 atoms alone)."""
    ap, bp = fp8((40, 1040), 9), fp8((272, 1040), 10)
    c = jnp.ones((40, 272), jnp.float32)
    jax_dgpt.set_num_sms(4)
    try:
        with forcing.force(**fields):
            d = jax.jit(lambda x, y: jax_dgpt.gemm(x, y))(ap, bp)
            w = jax.jit(jax_dgpt.wgrad_gemm)(ap, bp, c)
    finally:
        jax_dgpt.set_num_sms(jax.devices()[0].core_count)
    product = np.asarray(ap, np.float64) @ np.asarray(bp, np.float64).T
    return diff(d, product) <= 3e-6 and diff(w, product + 1.0) <= 1e-7


def split_k() -> bool:
    """Split-K over a 4-CTA cluster: rank 0 reads the other ranks' partials from their shared memory."""
    return _k_parts(num_k_splits=4, block_n=16)


def k_interleave() -> bool:
    """The two warpgroups alternate the stages of a 2-stage ring (each stage keeps one reader while the ring
    wraps across tiles); warpgroup 0 adds warpgroup 1's partials."""
    return _k_parts(k_interleave=1, block_n=16, num_stages=2)


def double_rows() -> bool:
    """256-row tiles on 4 CTAs: 3 row tiles (the last with one partial row wave) x 5 column tiles of 3 K blocks,
    so each CTA reuses its ring and D tile; bf16, and float32 scaled and added into c (both waves through
    one staging ring); and the masked layout (a group of 300 rows of Mmax 320, one of 7)."""
    ap, bp = fp8((600, 320), 11), fp8((272, 320), 12)
    c, sa = jnp.ones((600, 272), jnp.float32), jnp.linspace(0.5, 2.0, 600, dtype=jnp.float32)
    am, bm, masked_m = fp8((2, 320, 320), 13), fp8((2, 272, 320), 14), jnp.asarray([300, 7], jnp.int32)
    jax_dgpt.set_num_sms(4)
    try:
        with forcing.force(block_m=256, block_n=64):
            d = jax.jit(jax_dgpt.gemm)(ap, bp)
            w = jax.jit(lambda x, y, z: jax_dgpt.wgrad_gemm(x, y, z, scale_a=sa))(ap, bp, c)
            dm = jax.jit(jax_dgpt.grouped_gemm_masked, static_argnums=3)(am, bm, masked_m, 256)
    finally:
        jax_dgpt.set_num_sms(jax.devices()[0].core_count)
    product = np.asarray(ap, np.float64) @ np.asarray(bp, np.float64).T
    scaled = product * np.asarray(sa, np.float64)[:, None] + 1.0
    ok = diff(d, product) <= 3e-6 and diff(w, scaled) <= 1e-7
    for g, rows in enumerate((300, 7)):
        want = np.asarray(am[g, :rows], np.float64) @ np.asarray(bm[g], np.float64).T
        ok &= diff(np.asarray(dm[g, :rows], np.float64), want) <= 3e-6
    return ok


def multicast() -> bool:
    """A multicast over pairs of CTAs on a grid of 4: 3 row tiles x 5 column tiles (an odd count: each row's last
    pair has a peer-only CTA) of 3 K blocks, each CTA reusing its ring; bf16, and float32 added into c."""
    ap, bp = fp8((300, 320), 13), fp8((320, 320), 14)
    c = jnp.ones((300, 320), jnp.float32)
    jax_dgpt.set_num_sms(4)
    try:
        with forcing.force(multicast_a=1, block_m=128, block_n=64, num_stages=2):
            d = jax.jit(jax_dgpt.gemm)(ap, bp)
            w = jax.jit(jax_dgpt.wgrad_gemm)(ap, bp, c)
    finally:
        jax_dgpt.set_num_sms(jax.devices()[0].core_count)
    product = np.asarray(ap, np.float64) @ np.asarray(bp, np.float64).T
    return diff(d, product) <= 3e-6 and diff(w, product + 1.0) <= 1e-7


def grouped() -> bool:
    ok = True
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
    return ok & bool(np.all(dc[idx < 0] == 0)) & bool(np.all(dc[256:300] == 0))


def training_ops() -> bool:
    """One case of each op issue 13 added: e5m2 operands with fused scales (the epilogue shares them through
    shared memory), wgrad_gemm adding into c (reductions into global memory), and k_grouped_wgrad_gemm with
    groups ending inside a K block (the math warpgroups zero the stage's columns past the group)."""
    from jax_dgpt.testing import generate_scales, reference_gemm_f64, reference_k_grouped_wgrad_f64, reference_wgrad_f64

    ok = True
    a, b = fp8((200, 384), 11, dtype=jnp.float8_e5m2), fp8((272, 384), 12)
    sa, sb = generate_scales((200,), 13), generate_scales((272,), 14)
    d = jax.jit(lambda a, b: jax_dgpt.gemm(a, b, scale_a=sa, scale_b=sb))(a, b)
    ok &= diff(d, reference_gemm_f64(a, b, scale_a=sa, scale_b=sb)) <= 3e-6
    c = jnp.ones((200, 272), jnp.float32)
    w = jax.jit(jax_dgpt.wgrad_gemm, donate_argnums=2)(a, b, c)
    ok &= diff(w, reference_wgrad_f64(a, b, np.ones((200, 272)))) <= 2e-8
    sizes = [100, 0, 129, 300, 27]  # ends inside K blocks, an empty group, unaligned starts
    ak, bk = fp8((130, 560), 15), fp8((144, 560), 16, dtype=jnp.float8_e5m2)
    kg = jax.jit(jax_dgpt.k_grouped_wgrad_gemm)(ak, bk, jnp.asarray(sizes, jnp.int32))
    ref = reference_k_grouped_wgrad_f64(ak, bk, sizes)
    for g in range(len(sizes)):
        ok &= bool(np.all(np.asarray(kg[g]) == 0)) if sizes[g] == 0 else diff(kg[g], ref[g]) <= 2e-8
    return ok


def ragged() -> bool:
    """Groups starting at any row, a group's last tile stored row by row where the next group begins inside
    it, an empty group, and rows past the total written as zeros."""
    from jax_dgpt.testing import reference_ragged_f64

    rs = [70, 0, 129, 3]
    ar, br = fp8((260, 256), 17), fp8((4, 144, 256), 18)
    dr = jax.jit(jax_dgpt.grouped_gemm_ragged)(ar, br, jnp.asarray(rs, jnp.int32))
    return diff(dr, reference_ragged_f64(ar, br, rs)) <= 3e-6 and bool(np.all(np.asarray(dr[202:]) == 0))


CASES = {f.__name__: f for f in (plain, split_k, k_interleave, double_rows, multicast, grouped, training_ops, ragged)}


def main(names: list[str]) -> int:
    """Runs the named cases (all by default); one per process lets a sanitizer's report name its case."""
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"unknown case(s) {unknown}; cases: {list(CASES)}")
        return 2
    ok = True
    for name in names or CASES:
        passed = bool(CASES[name]())
        print(f"case {name}: {'ok' if passed else 'WRONG RESULTS'}")
        ok &= passed
    print("SANITIZE CASE", "OK" if ok else "WRONG RESULTS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
