"""GPU tests of A multicast (``multicast_a``): clusters of two CTAs take two column-adjacent tiles of one row
block; each loads half of the shared A stage into both CTAs and its own B.

Forced on fresh functions over every tile height and the edges of the pairing: an odd number of tile columns
(the pair's second column past N is peer-only), M not a multiple of the tile and M below it (no trimmed A box
with multicast: the rows past M are TMA's zero fill), K tails, fused scales, float32 outputs and accumulation
into c. The sums are the same as without multicast in the same order: bitwise equal to the plain kernel of the
same tile, and within the float64 bound; NaN-poisoned outputs fully written.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_dgpt
from jax_dgpt import forcing, heuristics, testing
from jax_dgpt.heuristics import Problem
from jax_dgpt.testing import (
    calc_diff,
    generate_fp8,
    generate_scales,
    record_diff,
    reference_gemm_f64,
    run_into_poison,
    to_f64,
)

pytestmark = pytest.mark.gpu

# (M, N, K, tile): 256-row tiles on whole and partial waves; an odd column count (N = 2112: 11 columns of 192,
# 17 of 128); M below the tile; K % 128 != 0; N % 8 != 0 (the wrapper pads N); 64-row tiles.
CASES = [
    (4096, 7168, 2048, dict(block_m=256, block_n=128)),
    (1000, 2112, 1024, dict(block_m=256, block_n=128)),
    (300, 2112, 7168, dict(block_m=128, block_n=192)),
    (100, 640, 4112, dict(block_m=128, block_n=128)),
    (513, 1000, 576, dict(block_m=64, block_n=208)),
    (2048, 4096, 16, dict(block_m=128, block_n=64)),
]


def diff(out, ref, context: str) -> float:
    return record_diff(calc_diff(to_f64(out), ref), context)


def bits(out) -> np.ndarray:
    out = np.asarray(out)
    return out.view(np.uint16 if out.dtype.itemsize == 2 else np.uint32)


@pytest.mark.parametrize("m,n,k,tile", CASES, ids=[f"{m}x{n}x{k}-bm{t['block_m']}" for m, n, k, t in CASES])
def test_multicast_matches_float64_and_the_plain_kernel(m, n, k, tile):
    a, b = generate_fp8((m, k), key=m + 1), generate_fp8((n, k), key=n + 2)
    with forcing.force(multicast_a=1, **tile):
        out = run_into_poison(lambda x, y: jax_dgpt.gemm(x, y), a, b, out_shape=(m, n))
    assert not np.isnan(to_f64(out)).any(), f"M={m} N={n} K={k}: unwritten elements"
    assert diff(out, reference_gemm_f64(a, b), f"multicast_a M={m} N={n} K={k} {tile}") <= testing.BF16_CALC_DIFF_BOUND
    with forcing.force(multicast_a=0, **tile):
        plain = jax.jit(jax_dgpt.gemm)(a, b)
    np.testing.assert_array_equal(bits(out), bits(plain))


@pytest.mark.parametrize("out_dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "f32"])
def test_multicast_scaled(out_dtype):
    m, n, k = 1000, 2112, 4096
    a, b = generate_fp8((m, k), key=3), generate_fp8((n, k), key=4, dtype=jnp.float8_e5m2)
    sa, sb = generate_scales((m,), 5), generate_scales((n,), 6)
    gemm = lambda x, y: jax_dgpt.gemm(x, y, scale_a=sa, scale_b=sb, out_dtype=out_dtype)  # noqa: E731
    with forcing.force(multicast_a=1, block_m=128):
        out = run_into_poison(gemm, a, b, out_shape=(m, n), dtype=out_dtype)
    bound = testing.BF16_CALC_DIFF_BOUND if out_dtype == jnp.bfloat16 else testing.F32_CALC_DIFF_BOUND
    ref = reference_gemm_f64(a, b, scale_a=sa, scale_b=sb)
    assert diff(out, ref, f"multicast_a scaled {jnp.dtype(out_dtype).name}") <= bound


def test_multicast_accumulates_into_c():
    m, n, k = 777, 1040, 2048
    a, b = generate_fp8((m, k), key=7), generate_fp8((n, k), key=8)
    c = jax.random.normal(jax.random.key(9), (m, n), jnp.float32)
    expected = reference_gemm_f64(a, b) + to_f64(c)
    with forcing.force(multicast_a=1, block_m=128, block_n=128):
        out = jax.jit(lambda a, b, c: jax_dgpt.wgrad_gemm(a, b, c), donate_argnums=2)(a, b, c)
    assert diff(out, expected, "multicast_a wgrad += c") <= testing.F32_CALC_DIFF_BOUND


def test_multicast_grid_is_whole_pairs_and_reruns_bitwise():
    m, n, k = 4096, 7168, 4096
    config = heuristics.select_config(Problem("normal", m, n, k, 1), 132, (("multicast_a", 1),))
    assert config.grid_size % 2 == 0 and config.launch_shape()["cluster_size"] == 2
    a, b = generate_fp8((m, k), key=10), generate_fp8((n, k), key=11)
    with forcing.force(multicast_a=1):
        f = jax.jit(jax_dgpt.gemm)
        first, second = (bits(f(a, b)) for _ in range(2))
    np.testing.assert_array_equal(first, second)
