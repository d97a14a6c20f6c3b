"""GPU tests of jax_dgpt.gemm on an sm_90a GPU (marked `gpu`, skipped elsewhere).

Every output is compared with a float64 product of the same fp8 values (docs/numerical_contract.md).
Outputs land in a NaN-filled buffer (donated to the jitted call, so XLA writes the result into it), which
proves that every element is written.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_dgpt
from jax_dgpt.testing import (
    NORMAL_ANCHORS,
    ODD_M,
    assert_close_to_f64,
    calc_diff,
    generate_fp8,
    reference_gemm_f64,
    run_into_poison,
    to_f64,
)

pytestmark = pytest.mark.gpu

ODD_M_SHAPES = [(m, n, k) for m in ODD_M for n, k in ((2112, 7168), (7168, 2048))]
PADDED_SHAPES = [(33, 100, 200), (5, 7, 3), (130, 264, 120)]  # N % 8 != 0 or K % 16 != 0


def enumerate_normal_shapes():
    return NORMAL_ANCHORS + ODD_M_SHAPES


@pytest.mark.parametrize("m,n,k", enumerate_normal_shapes())
def test_gemm_matches_float64(m, n, k):
    a, b = generate_fp8((m, k), key=m * 7 + k), generate_fp8((n, k), key=n * 13 + k + 1)
    out = run_into_poison(jax_dgpt.gemm, a, b, out_shape=(m, n))
    assert out.dtype == jnp.bfloat16 and out.shape == (m, n)
    assert not np.isnan(to_f64(out)).any(), f"M={m} N={n} K={k}: unwritten (NaN) elements"
    assert_close_to_f64(out, a, b, context=f"gemm M={m} N={n} K={k}")


@pytest.mark.parametrize("m,n,k", PADDED_SHAPES)
def test_gemm_padded_shapes(m, n, k):
    a, b = generate_fp8((m, k), key=1), generate_fp8((n, k), key=2)
    out = jax.jit(jax_dgpt.gemm)(a, b)
    assert out.shape == (m, n)
    assert_close_to_f64(out, a, b, context=f"padded gemm M={m} N={n} K={k}")


@pytest.mark.parametrize("m,n,k", [(4096, 7168, 2048), (64, 2112, 7168), (1000, 7168, 2048)])
def test_gemm_is_bitwise_deterministic(m, n, k):
    a, b = generate_fp8((m, k), key=3), generate_fp8((n, k), key=4)
    f = jax.jit(jax_dgpt.gemm)
    first = np.asarray(f(a, b)).view(np.uint16)
    second = np.asarray(f(a, b)).view(np.uint16)
    np.testing.assert_array_equal(first, second)


def test_gemm_inside_scan():
    m, n, k, steps = 256, 512, 1024, 4
    a = generate_fp8((steps, m, k), key=5)
    b = generate_fp8((n, k), key=6)

    def body(carry, a_i):
        return carry, jax_dgpt.gemm(a_i, b)

    _, outs = jax.jit(lambda a: jax.lax.scan(body, 0, a))(a)
    ref = np.stack([reference_gemm_f64(a[i], b) for i in range(steps)])
    assert calc_diff(to_f64(outs), ref) <= 3e-6


def test_gemm_m_zero_and_repeated_calls():
    b = generate_fp8((256, 128), key=7)
    empty = jax.jit(jax_dgpt.gemm)(jnp.zeros((0, 128), jnp.float8_e4m3fn), b)
    assert empty.shape == (0, 256)
    f = jax.jit(jax_dgpt.gemm)
    for seed in range(3):  # fresh data through one compiled executable
        a = generate_fp8((96, 128), key=100 + seed)
        assert_close_to_f64(f(a, b), a, b, context=f"repeat {seed}")
