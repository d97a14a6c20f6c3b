"""CPU tests of jax_dgpt.quantize: the primitives' shape rules and jnp semantics, the CUDA lowering (one custom
call per quantization, its configuration attribute), the kernels' configuration rules and clean compiles of
every kernel the training ops can ask for. tests/test_gpu_quantize.py checks the kernels against the jnp
expression bit for bit on the GPU."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_dgpt import _C, _native, ptxas_report
from jax_dgpt import quantize as q
from jax_dgpt.training import quantize as recipe_quantize

E4M3, E5M2 = jnp.float8_e4m3fn, jnp.float8_e5m2


def normal(shape, key, dtype=jnp.bfloat16, spread=True):
    values = np.random.default_rng(key).standard_normal(shape).astype(np.float32)
    if spread:  # rows of very different magnitudes
        values *= np.exp2(np.random.default_rng(key + 1).integers(-20, 20, size=shape[:-1] + (1,)))
    return jnp.asarray(values).astype(dtype)


def bits(x):
    return np.asarray(jax.lax.bitcast_convert_type(x, jnp.uint8))


# --- semantics (the jnp expression the kernels reproduce) --------------------------------------------------
@pytest.mark.parametrize("dtype", [E4M3, E5M2])
@pytest.mark.parametrize("x_dtype", [jnp.bfloat16, jnp.float32])
def test_rows_are_the_documented_expression(dtype, x_dtype):
    x = normal((40, 24), 1, x_dtype)
    qx, scale = q.quantize_rows(x, dtype)
    fmax = float(jnp.finfo(dtype).max)
    x64 = np.asarray(x.astype(jnp.float32))
    amax = np.max(np.abs(x64), axis=-1).astype(np.float32)
    want_scale = np.maximum(amax, np.float32(fmax * 2.0**-126)) * np.float32(1 / fmax)
    np.testing.assert_array_equal(np.asarray(scale), want_scale)
    want_q = np.clip(x64 / want_scale[:, None], -fmax, fmax).astype(np.dtype(dtype))
    np.testing.assert_array_equal(bits(qx), np.asarray(want_q).view(np.uint8))


def test_column_amax_and_valid_rows():
    x = normal((48, 16), 2).at[45].set(jnp.nan)  # a NaN row past the valid rows never enters the amax
    for valid in (48, 40, 0, -3, 100):
        _, _, amax = jax.jit(lambda x, v: q.quantize_rows(x, E4M3, column_amax=True, valid_rows=v))(x, valid)
        rows = np.asarray(x.astype(jnp.float32))[: max(0, min(valid, 48))]
        want = np.max(np.abs(rows), axis=0, initial=0.0)
        np.testing.assert_array_equal(np.asarray(amax), want.astype(np.float32), err_msg=f"valid_rows={valid}")
        assert np.isnan(np.asarray(amax)).any() == (valid > 45)


def test_batched_rows_and_column_amax_per_batch():
    x = normal((3, 32, 16), 3)
    qx, scale, amax = q.quantize_rows(x, E5M2, column_amax=True)
    assert qx.shape == x.shape and scale.shape == (3, 32) and amax.shape == (3, 16)
    np.testing.assert_array_equal(np.asarray(amax), np.max(np.abs(np.asarray(x.astype(jnp.float32))), axis=1))
    for b in range(3):
        qb, sb = q.quantize_rows(x[b], E5M2)
        np.testing.assert_array_equal(bits(qx[b]), bits(qb))
        np.testing.assert_array_equal(np.asarray(scale[b]), np.asarray(sb))


def test_nan_and_inf_rows_stay_in_their_row():
    x = normal((4, 16), 4, jnp.float32).at[1, 3].set(jnp.nan).at[2, 5].set(jnp.inf)
    qx, scale = q.quantize_rows(x, E4M3)
    values = np.asarray(qx.astype(jnp.float32))
    assert np.isnan(np.asarray(scale)[1]) and np.isinf(np.asarray(scale)[2])
    assert np.all(np.isnan(values[1])) and np.isnan(values[2, 5]) and np.all(values[2, np.arange(16) != 5] == 0)
    assert np.all(np.isfinite(values[[0, 3]]))


@pytest.mark.parametrize("shape", [(64, 24), (2, 32, 40), (20, 24), (64, 20)])  # the last two take the jnp path
def test_cast_transpose_is_the_transposed_column_quantization(shape):
    x = normal(shape, 5, jnp.float32)
    amax = q.column_amax_reference(x)
    qt = q.cast_transpose(x, q.scale_from_amax(amax, E4M3), E4M3)
    assert qt.shape == shape[:-2] + (shape[-1], shape[-2])
    if len(shape) == 2:
        qx, scale = recipe_quantize(x, E4M3, 0)  # per column, in x's layout
        np.testing.assert_array_equal(bits(qt), bits(qx.T))
        np.testing.assert_array_equal(np.asarray(q.scale_from_amax(amax, E4M3)), np.asarray(scale))


def test_fallbacks_and_vmap():
    odd = normal((5, 12), 6)  # C % 8 != 0: the jnp expression, same results
    assert q.quantize_rows(odd, E4M3)[0].shape == (5, 12)
    empty = q.quantize_rows(jnp.zeros((0, 16), jnp.bfloat16), E4M3, column_amax=True)
    assert [a.shape for a in empty] == [(0, 16), (0,), (16,)] and not np.any(np.asarray(empty[2]))
    x = normal((4, 16, 8), 7)
    per_slice = [q.quantize_rows(x[i], E4M3, column_amax=True) for i in range(4)]
    mapped = jax.vmap(lambda x: q.quantize_rows(x, E4M3, column_amax=True))(x)
    for got, want in zip(mapped, zip(*per_slice)):
        np.testing.assert_array_equal(
            np.asarray(got.astype(jnp.float32)), np.stack([np.asarray(w.astype(jnp.float32)) for w in want])
        )


# --- lowering for CUDA, without a GPU ----------------------------------------------------------------------
def lower_cuda(fn, *args):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def test_cuda_lowering_calls_one_kernel_per_quantization():
    x = jax.ShapeDtypeStruct((4096, 7168), jnp.bfloat16)
    text = lower_cuda(lambda x: q.quantize_rows(x, E5M2, column_amax=True, valid_rows=4000), x)
    (call,) = re.findall(rf"stablehlo\.custom_call @{_native.QUANTIZE_TARGETS['rows']}\(.*", text)
    for field, value in (("cols", 7168), ("column_amax", 1), ("in_dtype", 0), ("kind", 0), ("out_dtype", 1)):
        assert re.search(rf"{field} = {value} : i64", call), (field, call)
    partials = q._num_partials((4096, 7168))  # the kernel's CTAs: each writes one row of column maxima
    assert 132 <= partials <= 528 and f"tensor<{partials}x7168xf32>" in call, call
    scale = jax.ShapeDtypeStruct((7168,), jnp.float32)
    text = lower_cuda(lambda x, s: q.cast_transpose(x, s, E4M3), x, scale)
    (call,) = re.findall(rf"stablehlo\.custom_call @{_native.QUANTIZE_TARGETS['transpose']}\(.*", text)
    assert re.search(r"kind = 1 : i64", call) and re.search(r"cols = 7168 : i64", call)


def test_python_and_cpp_agree_on_the_fields():
    assert tuple(q._config(0, q.BF16, q.E4M3, 8, False)) == _C.quantize_fields()
    limits = _C.quantize_limits()
    assert (limits["vec_elements"], limits["max_cols_rows"]) == (q._VEC, q._MAX_COLS_ROWS)
    assert limits["row_alignment_transpose"] == q._ROW_ALIGNMENT_TRANSPOSE


@pytest.mark.parametrize(
    "changes, rule",
    [
        ({"kind": 2}, "kind must be 0 \\(rows\\) or 1 \\(transpose\\)"),
        ({"cols": 12}, "cols must be a positive multiple of vec_elements"),
        ({"cols": 16392}, "cols must be at most max_cols_rows"),
        ({"in_dtype": 2}, "in_dtype must be 0 \\(bf16\\) or 1 \\(f32\\)"),
        ({"out_dtype": 3}, "out_dtype must be 0 \\(e4m3\\) or 1 \\(e5m2\\)"),
        ({"kind": 1, "column_amax": 1}, "column_amax needs the rows kind"),
    ],
)
def test_invalid_configs_name_the_rule(changes, rule):
    config = {**q._config(0, q.BF16, q.E4M3, 1024, False), **changes}
    error = _C.check_quantize_config(config)
    assert error is not None and error.startswith("invalid quantize config (kind="), error
    assert re.search(rule, error), error
    with pytest.raises(ValueError, match=rule):
        _C.generate_quantize_source(config)
    with pytest.raises(ValueError, match="lacks field 'column_amax'"):
        _C.check_quantize_config({k: v for k, v in config.items() if k != "column_amax"})


# --- every kernel the training ops ask for compiles clean (ptxas: no spills, no stack) ---------------------
COMPILED = [
    (kind, cols, x_dtype, dtype, column_amax)
    for cols in (8, 1024, 2048, 4096, 7168, 14336, 16384)
    for x_dtype in (q.BF16, q.F32)
    for kind, dtype, column_amax in ((0, q.E4M3, False), (0, q.E5M2, True), (1, q.E4M3, False), (1, q.E5M2, False))
]


@pytest.mark.parametrize("kind, cols, x_dtype, dtype, column_amax", COMPILED)
def test_quantize_kernels_compile_clean(jit_env, kind, cols, x_dtype, dtype, column_amax):
    out = _C.compile_quantize(q._config(kind, x_dtype, dtype, cols, column_amax), True)
    assert ptxas_report.compile_problems(out, 256, "dgpt_quantize") == [], out["log"]
