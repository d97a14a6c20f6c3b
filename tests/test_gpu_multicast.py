"""GPU tests of B multicast (pairs of CTAs on vertically adjacent tiles share each B tile through TMA multicast).

The heuristics do not choose multicast yet (it has not been measured); these tests force it with
``heuristics.force_multicast(2)`` on fresh functions and hold it to the contract of every other path:
float64 agreement (calc_diff <= 3e-6), NaN-poisoned outputs fully written, and, since multicast only
changes who loads B, results bitwise equal to the kernel without it.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jax_dgpt
from jax_dgpt import heuristics
from jax_dgpt.testing import assert_close_to_f64, generate_fp8, run_into_poison, to_f64

pytestmark = pytest.mark.gpu

SHAPES = [
    (4096, 7168, 2048),  # an anchor: 32 row blocks, pairs throughout
    (384, 512, 384),  # 3 row blocks of 128: the last pair's second block lies past M
    (200, 1000, 1040),  # M, N and K tails
    (64, 256, 128),  # one row block: the peer computes nothing it stores
    (4096, 32768, 512),  # L2-bound anchor, many tiles per CTA
]


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_multicast_gemm_matches_float64_and_the_plain_kernel(m, n, k):
    a, b = generate_fp8((m, k), key=m + 1), generate_fp8((n, k), key=n + 2)
    with heuristics.force_multicast(2):
        out = run_into_poison(lambda x, y: jax_dgpt.gemm(x, y), a, b, out_shape=(m, n))
    assert not np.isnan(to_f64(out)).any(), f"M={m} N={n} K={k}: unwritten elements"
    assert_close_to_f64(out, a, b, context=f"multicast gemm M={m} N={n} K={k}")
    plain = jax.jit(lambda x, y: jax_dgpt.gemm(x, y))(a, b)
    np.testing.assert_array_equal(np.asarray(out).view(np.uint16), np.asarray(plain).view(np.uint16))


def test_multicast_is_bitwise_deterministic_and_reusable():
    b = generate_fp8((2112, 7168), key=3)
    with heuristics.force_multicast(2):
        f = jax.jit(lambda x, y: jax_dgpt.gemm(x, y))
        outs = [np.asarray(f(generate_fp8((1024, 7168), key=10 + i), b)).view(np.uint16) for i in (0, 0, 1)]
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])
