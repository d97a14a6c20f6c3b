"""GPU tests of jax_dgpt.quantize's kernels: bit for bit the documented float32 expression (numpy, ml_dtypes'
round-to-nearest-even casts) on random rows of spread magnitudes, NaN and Inf rows, every valid_rows value in
one compiled program, batches, both input and fp8 types; and the optimized HLO reads the input once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_dgpt import quantize as q
from jax_dgpt.testing import hlo_entry_instructions, hlo_readers

pytestmark = pytest.mark.gpu

E4M3, E5M2 = np.dtype(jnp.float8_e4m3fn), np.dtype(jnp.float8_e5m2)


def inputs(shape, key, dtype, specials=False):
    rng = np.random.default_rng(key)
    values = rng.standard_normal(shape).astype(np.float32)
    values *= np.exp2(rng.integers(-30, 30, size=shape[:-1] + (1,))).astype(np.float32)  # rows over 60 binades
    if specials:
        flat = values.reshape(-1, shape[-1])
        flat[1, 3], flat[2, 5], flat[3, :] = np.nan, np.inf, 0.0  # a NaN row, an Inf row, a zero row
    x = jnp.asarray(values).astype(dtype)
    return x, np.asarray(x.astype(jnp.float32))


def expected_scale(amax, dtype):
    fmax = np.float32(jnp.finfo(dtype).max)
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(amax), amax, np.maximum(amax, fmax * np.float32(2.0**-126))) * np.float32(1 / fmax)


def expected_cast(x, scale, dtype):
    fmax = np.float32(jnp.finfo(dtype).max)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = x / scale
        v = np.where(np.isnan(v), v, np.clip(v, -fmax, fmax))
    return v.astype(dtype)


def assert_same_fp8(got, want, context):
    got_f, want_f = np.asarray(got.astype(jnp.float32)), want.astype(np.float32)
    np.testing.assert_array_equal(np.isnan(got_f), np.isnan(want_f), err_msg=f"{context}: NaN positions")
    keep = ~np.isnan(want_f)
    np.testing.assert_array_equal(
        np.asarray(jax.lax.bitcast_convert_type(got, jnp.uint8))[keep], want.view(np.uint8)[keep], err_msg=context
    )


def nan_amax(x, axis):
    """max |x| along axis with NaN kept (0 for no values)."""
    magnitude = np.abs(np.where(np.isnan(x), 0.0, x))
    return np.where(np.isnan(x).any(axis=axis), np.nan, np.max(magnitude, axis=axis, initial=0.0)).astype(np.float32)


@pytest.mark.parametrize(
    "shape, x_dtype, dtype",
    [
        ((1, 8), jnp.bfloat16, E4M3),
        ((1000, 1024), jnp.bfloat16, E5M2),
        ((4096, 7168), jnp.bfloat16, E4M3),
        ((333, 16384), jnp.float32, E4M3),
        ((8192, 2048), jnp.float32, E5M2),
        ((4, 512, 1024), jnp.bfloat16, E4M3),
    ],
)
def test_rows_kernel_bit_for_bit(shape, x_dtype, dtype):
    x, x32 = inputs(shape, 1, x_dtype, specials=shape[-2] > 4)
    valid = shape[-2] // 2
    f = jax.jit(lambda x, v: q.quantize_rows(x, dtype, column_amax=True, valid_rows=v))
    qx, scale, amax = f(x, valid)
    want_scale = expected_scale(nan_amax(x32, -1), dtype)
    np.testing.assert_array_equal(np.asarray(scale), want_scale, err_msg="scale")
    assert_same_fp8(qx, expected_cast(x32, want_scale[..., None], dtype), f"q {shape}")
    want_amax = nan_amax(x32[..., :valid, :], -2)
    np.testing.assert_array_equal(np.asarray(amax), want_amax.astype(np.float32), err_msg="column amax")
    # The same program for every valid_rows: all, none, past the end.
    for v, rows in ((shape[-2], shape[-2]), (0, 0), (-7, 0), (10**6, shape[-2])):
        np.testing.assert_array_equal(np.asarray(f(x, v)[2]), nan_amax(x32[..., :rows, :], -2))
    assert f._cache_size() == 1
    again = f(x, valid)
    for a, b in zip(again, (qx, scale, amax)):
        np.testing.assert_array_equal(np.asarray(a.astype(jnp.float32)), np.asarray(b.astype(jnp.float32)))


@pytest.mark.parametrize(
    "shape, x_dtype, dtype",
    [
        ((16, 8), jnp.bfloat16, E4M3),
        ((4096, 7168), jnp.bfloat16, E5M2),
        ((1008, 1000), jnp.float32, E4M3),
        ((4, 2048, 1024), jnp.bfloat16, E4M3),
        ((16384, 2048), jnp.bfloat16, E5M2),
    ],
)
def test_cast_transpose_kernel_bit_for_bit(shape, x_dtype, dtype):
    x, x32 = inputs(shape, 2, x_dtype, specials=True)
    scale = jnp.asarray(expected_scale(nan_amax(x32, -2), dtype))
    qt = jax.jit(lambda x, s: q.cast_transpose(x, s, dtype))(x, scale)
    want = np.swapaxes(expected_cast(x32, np.asarray(scale)[..., None, :], dtype), -1, -2)
    assert qt.shape == want.shape
    assert_same_fp8(qt, want, f"q^T {shape}")


def test_rowwise_quantization_reads_its_input_once():
    m, k = 8192, 7168
    fn = jax.jit(lambda x: q.quantize_rows(x, E4M3, column_amax=True))
    instructions = hlo_entry_instructions(fn.lower(jnp.ones((m, k), jnp.bfloat16)).compile().as_text())
    (x_name,) = [name for name, _, rest in instructions if rest.startswith("parameter(0)")]
    assert len(hlo_readers(instructions, x_name)) == 1
