"""Trace-time validation: each wrong dtype, rank or shape names the op, the operand and the rule."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_dgpt
from jax_dgpt import _native, device, heuristics, primitives

F8 = jnp.float8_e4m3fn


def arr(shape, dtype=F8):
    return jax.ShapeDtypeStruct(shape, dtype)


def fp8(shape):
    return jnp.zeros(shape, F8)


# (case id, callable, exception, message regex)
GEMM_CASES = [
    (
        "a_dtype",
        lambda: jax_dgpt.gemm(arr((4, 32), jnp.float16), arr((8, 32))),
        TypeError,
        r"jax_dgpt\.gemm: a must have dtype float8_e4m3fn or float8_e5m2, got float16",
    ),
    (
        "b_dtype",
        lambda: jax_dgpt.gemm(arr((4, 32)), arr((8, 32), jnp.float16)),
        TypeError,
        r"jax_dgpt\.gemm: b must have dtype float8_e4m3fn or float8_e5m2, got float16",
    ),
    (
        "b_int8",
        lambda: jax_dgpt.gemm(arr((4, 32)), arr((8, 32), jnp.int8)),
        TypeError,
        r"b must have dtype float8_e4m3fn or float8_e5m2, got int8",
    ),
    (
        "scale_a_shape",
        lambda: jax_dgpt.gemm(arr((4, 32)), arr((8, 32)), scale_a=arr((8,), jnp.float32)),
        ValueError,
        r"jax_dgpt\.gemm: scale_a must have shape \[\] \(per tensor\), \[4\] \(\[M\], per row of a\); got \[8\]",
    ),
    (
        "scale_b_dtype",
        lambda: jax_dgpt.gemm(arr((4, 32)), arr((8, 32)), scale_b=arr((8,), jnp.bfloat16)),
        TypeError,
        r"jax_dgpt\.gemm: scale_b must have dtype float32, got bfloat16",
    ),
    (
        "scale_not_array",
        lambda: jax_dgpt.gemm(arr((4, 32)), arr((8, 32)), scale_b=2.0),
        TypeError,
        r"jax_dgpt\.gemm: scale_b must be None or a float32 array, got float",
    ),
    (
        "out_dtype",
        lambda: jax_dgpt.gemm(arr((4, 32)), arr((8, 32)), out_dtype=jnp.float16),
        TypeError,
        r"jax_dgpt\.gemm: out_dtype must be bfloat16 or float32, got float16",
    ),
    (
        "wgrad_c_shape",
        lambda: jax_dgpt.wgrad_gemm(arr((4, 32)), arr((8, 32)), arr((4, 9), jnp.float32)),
        ValueError,
        r"jax_dgpt\.wgrad_gemm: c must have the output's shape \[4, 8\] \(\[M, N\]\), got \[4, 9\]",
    ),
    (
        "wgrad_c_dtype",
        lambda: jax_dgpt.wgrad_gemm(arr((4, 32)), arr((8, 32)), arr((4, 8), jnp.bfloat16)),
        TypeError,
        r"jax_dgpt\.wgrad_gemm: c must have dtype float32, got bfloat16",
    ),
    (
        "k_grouped_sizes_dtype",
        lambda: jax_dgpt.k_grouped_wgrad_gemm(arr((4, 32)), arr((8, 32)), arr((3,), jnp.int64)),
        TypeError,
        r"jax_dgpt\.k_grouped_wgrad_gemm: group_sizes must have dtype int32",
    ),
    (
        "k_grouped_sizes_rank",
        lambda: jax_dgpt.k_grouped_wgrad_gemm(arr((4, 32)), arr((8, 32)), arr((3, 1), jnp.int32)),
        ValueError,
        r"jax_dgpt\.k_grouped_wgrad_gemm: group_sizes must have rank 1 \(shape \[G\]\)",
    ),
    (
        "k_grouped_t_mismatch",
        lambda: jax_dgpt.k_grouped_wgrad_gemm(arr((4, 32)), arr((8, 48)), arr((3,), jnp.int32)),
        ValueError,
        r"jax_dgpt\.k_grouped_wgrad_gemm: a and b must have the same T \(last dimension\), got 32 and 48",
    ),
    (
        "k_grouped_c_shape",
        lambda: jax_dgpt.k_grouped_wgrad_gemm(
            arr((4, 32)), arr((8, 32)), arr((3,), jnp.int32), arr((2, 4, 8), jnp.float32)
        ),
        ValueError,
        r"c must have the output's shape \[3, 4, 8\] \(\[G, M, N\]\), got \[2, 4, 8\]",
    ),
    (
        "k_grouped_scale_b_shape",
        lambda: jax_dgpt.k_grouped_wgrad_gemm(
            arr((4, 32)), arr((8, 32)), arr((3,), jnp.int32), scale_b=arr((3,), jnp.float32)
        ),
        ValueError,
        r"scale_b must have shape \[\] \(per tensor\), \[8\] \(\[N\], per row of b\), \[3, 8\] \(\[G, N\]\); got \[3\]",
    ),
    (
        "k_grouped_bf16_with_c",
        lambda: jax_dgpt.k_grouped_wgrad_gemm(
            arr((4, 32)), arr((8, 32)), arr((3,), jnp.int32), arr((3, 4, 8), jnp.float32), out_dtype=jnp.bfloat16
        ),
        ValueError,
        r"jax_dgpt\.k_grouped_wgrad_gemm: out_dtype must be float32 when c is given \(the kernel adds into c\)",
    ),
    (
        "k_grouped_out_dtype",
        lambda: jax_dgpt.k_grouped_wgrad_gemm(arr((4, 32)), arr((8, 32)), arr((3,), jnp.int32), out_dtype=jnp.float16),
        TypeError,
        r"jax_dgpt\.k_grouped_wgrad_gemm: out_dtype must be bfloat16 or float32, got float16",
    ),
    (
        "masked_scale_a_per_row_only",
        lambda: jax_dgpt.grouped_gemm_masked(
            arr((2, 4, 32)), arr((2, 8, 32)), arr((2,), jnp.int32), 4, scale_a=arr((4,), jnp.float32)
        ),
        ValueError,
        r"grouped_gemm_masked: scale_a must have shape \[\] \(per tensor\), \[2, 4\] \(\[G, Mmax\], per row of a\)",
    ),
    (
        "contiguous_scale_b_shape",
        lambda: jax_dgpt.grouped_gemm_contiguous(
            arr((4, 32)), arr((2, 8, 32)), arr((4,), jnp.int32), scale_b=arr((8,), jnp.float32)
        ),
        ValueError,
        r"scale_b must have shape \[\] \(per tensor\), \[2\] \(\[G\], per expert\), \[2, 8\] \(\[G, N\]\); got \[8\]",
    ),
    (
        "ragged_sizes_dtype",
        lambda: jax_dgpt.grouped_gemm_ragged(arr((4, 32)), arr((2, 8, 32)), arr((2,), jnp.int64)),
        TypeError,
        r"jax_dgpt\.grouped_gemm_ragged: group_sizes must have dtype int32",
    ),
    (
        "ragged_sizes_length",
        lambda: jax_dgpt.grouped_gemm_ragged(arr((4, 32)), arr((2, 8, 32)), arr((3,), jnp.int32)),
        ValueError,
        r"jax_dgpt\.grouped_gemm_ragged: b and group_sizes must have the same G \(groups\), got 2 and 3",
    ),
    (
        "ragged_scale_b",
        lambda: jax_dgpt.grouped_gemm_ragged(
            arr((4, 32)), arr((2, 8, 32)), arr((2,), jnp.int32), scale_b=arr((8,), jnp.float32)
        ),
        ValueError,
        r"grouped_gemm_ragged: scale_b must have shape \[\] \(per tensor\), \[2\] \(\[G\], per group\)",
    ),
    (
        "ragged_dot_bf16",
        lambda: jax_dgpt.ragged_dot(arr((4, 32), jnp.bfloat16), arr((2, 32, 8), jnp.bfloat16), arr((2,), jnp.int32)),
        TypeError,
        r"jax_dgpt\.ragged_dot: lhs must be float8_e4m3fn or float8_e5m2, got bfloat16; for other dtypes use "
        r"jax\.lax\.ragged_dot",
    ),
    (
        "ragged_dot_group_offset",
        lambda: jax_dgpt.ragged_dot(
            arr((4, 32)), arr((2, 32, 8)), arr((2,), jnp.int32), group_offset=arr((1,), jnp.int32)
        ),
        NotImplementedError,
        r"jax_dgpt\.ragged_dot: group_offset is not supported",
    ),
    (
        "ragged_dot_preferred",
        lambda: jax_dgpt.ragged_dot(
            arr((4, 32)), arr((2, 32, 8)), arr((2,), jnp.int32), preferred_element_type=jnp.float16
        ),
        TypeError,
        r"jax_dgpt\.ragged_dot: out_dtype must be bfloat16 or float32, got float16",
    ),
    (
        "k_sizes_traced",
        lambda: jax_dgpt.k_grouped_wgrad_gemm_per_tensor_fp8_fp8_fp32_nt(
            arr((4 * 32,)), arr((8 * 32,)), arr((1, 4, 8), jnp.float32), jnp.asarray([32])
        ),
        TypeError,
        r"k_sizes must be a static sequence of ints",
    ),
    (
        "k_sizes_total",
        lambda: jax_dgpt.k_grouped_wgrad_gemm_per_tensor_fp8_fp8_fp32_nt(
            arr((4 * 32,)), arr((8 * 32,)), arr((1, 4, 8), jnp.float32), [16]
        ),
        ValueError,
        r"lhs_flat and rhs_flat must hold M \* sum\(k_sizes\) = 64 and N \* sum\(k_sizes\) = 128 elements",
    ),
    (
        "a_rank",
        lambda: jax_dgpt.gemm(arr((2, 4, 32)), arr((8, 32))),
        ValueError,
        r"jax_dgpt\.gemm: a must have rank 2 \(shape \[M, K\]\), got rank 3 with shape \(2, 4,",
    ),
    (
        "b_rank",
        lambda: jax_dgpt.gemm(arr((4, 32)), arr((32,))),
        ValueError,
        r"jax_dgpt\.gemm: b must have rank 2 \(shape \[N, K\]\), got rank 1",
    ),
    (
        "k_mismatch",
        lambda: jax_dgpt.gemm(arr((4, 32)), arr((8, 48))),
        ValueError,
        r"jax_dgpt\.gemm: a and b must have the same K \(last dimension\), got 32 and 48",
    ),
    (
        "not_array",
        lambda: jax_dgpt.gemm([[1.0]], arr((8, 32))),
        TypeError,
        r"jax_dgpt\.gemm: a must be an array with a shape and a dtype, got list",
    ),
    (
        "alias",
        lambda: jax_dgpt.gemm_per_tensor_fp8_fp8_bf16_nt(arr((4, 32)), arr((8, 16))),
        ValueError,
        r"must have the same K",
    ),
]

CONTIGUOUS_CASES = [
    (
        "a_dtype",
        lambda: jax_dgpt.grouped_gemm_contiguous(arr((4, 32), jnp.bfloat16), arr((2, 8, 32)), arr((4,), jnp.int32)),
        TypeError,
        r"jax_dgpt\.grouped_gemm_contiguous: a must have dtype float8_e4m3fn or float8_e5m2, got bfloat16",
    ),
    (
        "b_dtype",
        lambda: jax_dgpt.grouped_gemm_contiguous(arr((4, 32)), arr((2, 8, 32), jnp.float32), arr((4,), jnp.int32)),
        TypeError,
        r"b must have dtype float8_e4m3fn or float8_e5m2, got float32",
    ),
    (
        "b_rank",
        lambda: jax_dgpt.grouped_gemm_contiguous(arr((4, 32)), arr((8, 32)), arr((4,), jnp.int32)),
        ValueError,
        r"b must have rank 3 \(shape \[G, N, K\]\), got rank 2",
    ),
    (
        "a_rank",
        lambda: jax_dgpt.grouped_gemm_contiguous(arr((1, 4, 32)), arr((2, 8, 32)), arr((4,), jnp.int32)),
        ValueError,
        r"a must have rank 2 \(shape \[M, K\]\)",
    ),
    (
        "k_mismatch",
        lambda: jax_dgpt.grouped_gemm_contiguous(arr((4, 32)), arr((2, 8, 64)), arr((4,), jnp.int32)),
        ValueError,
        r"a and b must have the same K \(last dimension\), got 32 and 64",
    ),
    (
        "indices_dtype",
        lambda: jax_dgpt.grouped_gemm_contiguous(arr((4, 32)), arr((2, 8, 32)), arr((4,), jnp.float32)),
        TypeError,
        r"m_indices must have dtype int32, got float32",
    ),
    (
        "indices_uint",
        lambda: jax_dgpt.grouped_gemm_contiguous(arr((4, 32)), arr((2, 8, 32)), arr((4,), jnp.uint32)),
        TypeError,
        r"m_indices must have dtype int32, got uint32",
    ),
    (
        "indices_rank",
        lambda: jax_dgpt.grouped_gemm_contiguous(arr((4, 32)), arr((2, 8, 32)), arr((4, 1), jnp.int32)),
        ValueError,
        r"m_indices must have rank 1 \(shape \[M\]\), got rank 2",
    ),
    (
        "indices_length",
        lambda: jax_dgpt.grouped_gemm_contiguous(arr((4, 32)), arr((2, 8, 32)), arr((5,), jnp.int32)),
        ValueError,
        r"a and m_indices must have the same M \(rows\), got 4 and 5",
    ),
    (
        "alias",
        lambda: jax_dgpt.m_grouped_gemm_per_tensor_fp8_fp8_bf16_nt_contiguous(
            arr((4, 32)), arr((2, 8, 32)), arr((3,), jnp.int32)
        ),
        ValueError,
        r"same M",
    ),
]


def masked(a=(2, 16, 32), b=(2, 8, 32), mask=(2,), mask_dtype=jnp.int32, expected_m=8, a_dtype=F8):
    return lambda: jax_dgpt.grouped_gemm_masked(arr(a, a_dtype), arr(b), arr(mask, mask_dtype), expected_m)


MASKED_CASES = [
    (
        "a_dtype",
        masked(a_dtype=jnp.int8),
        TypeError,
        r"jax_dgpt\.grouped_gemm_masked: a must have dtype float8_e4m3fn or float8_e5m2, got int8",
    ),
    (
        "a_rank",
        masked(a=(16, 32)),
        ValueError,
        r"a must have rank 3 \(shape \[G, Mmax, K\]\), got rank 2",
    ),
    ("b_rank", masked(b=(8, 32)), ValueError, r"b must have rank 3 \(shape \[G, N, K\]\)"),
    (
        "g_mismatch",
        masked(b=(3, 8, 32)),
        ValueError,
        r"a and b must have the same G \(groups\), got 2 and 3",
    ),
    (
        "k_mismatch",
        masked(b=(2, 8, 48)),
        ValueError,
        r"a and b must have the same K \(last dimension\)",
    ),
    (
        "mask_dtype",
        masked(mask_dtype=jnp.int64 if jax.config.x64_enabled else jnp.int16),
        TypeError,
        r"masked_m must have dtype int32, got int",
    ),
    ("mask_rank", masked(mask=(2, 1)), ValueError, r"masked_m must have rank 1 \(shape \[G\]\)"),
    (
        "mask_length",
        masked(mask=(3,)),
        ValueError,
        r"a and masked_m must have the same G \(groups\), got 2 and 3",
    ),
    (
        "expected_zero",
        masked(expected_m=0),
        ValueError,
        r"grouped_gemm_masked: expected_m must be positive, got 0",
    ),
    (
        "expected_negative",
        masked(expected_m=-4),
        ValueError,
        r"expected_m must be positive, got -4",
    ),
    (
        "expected_float",
        masked(expected_m=1.5),
        TypeError,
        r"expected_m must be a static int, got float",
    ),
    (
        "expected_str",
        masked(expected_m="8"),
        TypeError,
        r"expected_m must be a static int, got str",
    ),
    (
        "expected_bool",
        masked(expected_m=True),
        TypeError,
        r"expected_m must be a static int, got bool",
    ),
    (
        "expected_array",
        masked(expected_m=np.array([8])),
        TypeError,
        r"expected_m must be a static int",
    ),
    (
        "alias",
        lambda: jax_dgpt.m_grouped_gemm_per_tensor_fp8_fp8_bf16_nt_masked(
            arr((2, 16, 32)), arr((2, 8, 32)), arr((2,), jnp.int32), 0
        ),
        ValueError,
        r"expected_m must be positive",
    ),
]


def _ids(cases):
    return [c[0] for c in cases]


@pytest.mark.parametrize(
    "case",
    GEMM_CASES + CONTIGUOUS_CASES + MASKED_CASES,
    ids=_ids(GEMM_CASES)
    + ["contiguous_" + i for i in _ids(CONTIGUOUS_CASES)]
    + ["masked_" + i for i in _ids(MASKED_CASES)],
)
def test_error(case):
    _, call, exception, pattern = case
    with pytest.raises(exception, match=pattern):
        call()


def test_errors_raise_at_trace_time_under_jit():
    f = jax.jit(lambda a, b: jax_dgpt.gemm(a, b))
    with pytest.raises(ValueError, match=r"jax_dgpt\.gemm: a and b must have the same K"):
        f.trace(arr((4, 32)), arr((8, 40)))


def test_traced_expected_m_is_rejected():
    f = jax.jit(lambda a, b, mask, e: jax_dgpt.grouped_gemm_masked(a, b, mask, e))
    with pytest.raises(TypeError, match=r"expected_m must be a static Python int, got a traced value"):
        f.trace(arr((2, 16, 32)), arr((2, 8, 32)), arr((2,), jnp.int32), 8)


@pytest.mark.parametrize("expected_m", [np.int32(8), np.int64(8), 8])
def test_numpy_integer_expected_m_is_accepted(expected_m):
    out = jax_dgpt.grouped_gemm_masked(fp8((2, 16, 32)), fp8((2, 8, 32)), jnp.full((2,), 3, jnp.int32), expected_m)
    assert out.shape == (2, 16, 8) and out.dtype == jnp.bfloat16


def test_numpy_inputs_are_accepted():
    a = np.zeros((4, 32), jnp.float8_e4m3fn)
    assert jax_dgpt.gemm(a, a).shape == (4, 4)


@pytest.mark.parametrize(
    "value, exception, pattern",
    [
        (0, ValueError, r"jax_dgpt\.set_num_sms: num_sms must be at least 1"),
        (-3, ValueError, r"must be at least 1.*got -3"),
        (2.0, TypeError, r"num_sms must be an int, got float"),
        (True, TypeError, r"num_sms must be an int, got bool"),
    ],
)
def test_set_num_sms_errors(value, exception, pattern):
    before = jax_dgpt.get_num_sms()
    with pytest.raises(exception, match=pattern):
        jax_dgpt.set_num_sms(value)
    assert jax_dgpt.get_num_sms() == before


@pytest.fixture
def restore_num_sms():
    yield
    device._reset_num_sms()


def lowered_grid_size(fn, *args) -> int:
    """The ``grid_size`` of the one custom call in ``fn``'s program lowered for CUDA."""
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    sizes = re.findall(r"grid_size = (\d+) : i64", text)
    assert len(sizes) == 1, text
    return int(sizes[0])


def test_set_num_sms_applies_to_a_recreated_jit(restore_num_sms):
    # Issue 12, finding 9: jax.jit(jax_dgpt.gemm) created again after set_num_sms reused the old trace.
    a, b = arr((4096, 7168)), arr((7168, 7168))  # enough tiles for several waves on any grid
    problem = heuristics.Problem("normal", 4096, 7168, 7168, 1)
    on_all = heuristics.select_config(problem, device.DEFAULT_NUM_SMS).grid_size  # the waves' fewest CTAs
    assert lowered_grid_size(jax_dgpt.gemm, a, b) == on_all
    jax_dgpt.set_num_sms(64)
    assert jax_dgpt.get_num_sms() == 64
    assert lowered_grid_size(jax_dgpt.gemm, a, b) == heuristics.select_config(problem, 64).grid_size <= 64 < on_all
    masked = functools.partial(jax_dgpt.grouped_gemm_masked, expected_m=4096)
    assert lowered_grid_size(masked, arr((4, 4096, 7168)), arr((4, 7168, 7168)), arr((4,), jnp.int32)) == 64


def test_set_num_sms_applies_to_a_function_jitted_before(restore_num_sms):
    f = jax.jit(jax_dgpt.gemm)
    a, b = fp8((256, 64)), fp8((128, 64))
    before = f(a, b)
    jax_dgpt.set_num_sms(8)
    jaxpr = str(f.trace(a, b).jaxpr)
    assert "num_sms=8" in jaxpr, jaxpr
    np.testing.assert_array_equal(np.asarray(f(a, b)), np.asarray(before))  # same numbers on the CPU


def test_set_num_sms_without_a_gpu_is_bounded_by_the_largest_grid(restore_num_sms):
    if device.cuda_devices():
        pytest.skip("a CUDA device is visible: the bound is its SM count")
    largest = _native.load().limits()["max_grid_size"]
    jax_dgpt.set_num_sms(largest)
    assert jax_dgpt.get_num_sms() == largest
    with pytest.raises(
        ValueError, match=rf"at most the kernels' largest persistent grid, {largest} CTAs .*got {10**6}"
    ):
        jax_dgpt.set_num_sms(10**6)
    assert jax_dgpt.get_num_sms() == largest


def test_direct_bind_checks_kernel_shape_rules():
    # Kernel-ready operands only (the public wrapper pads): a direct bind must not slip by.
    with pytest.raises(ValueError, match=r"K % 16 == 0 and N % 8 == 0"):
        jax.jit(lambda a, b: primitives.gemm_p.bind(a, b, num_sms=132)).trace(arr((4, 40)), arr((8, 40)))
    with pytest.raises(TypeError, match=r"a must have dtype float8_e4m3fn"):
        jax.jit(lambda a, b: primitives.gemm_p.bind(a, b, num_sms=132)).trace(arr((4, 32), jnp.int8), arr((8, 32)))


def test_plain_int_normalises_attribute_types():
    values = [primitives.plain_int(name, v) for name, v in (("m", np.int32(128)), ("n", np.int64(7)), ("k", 16))]
    assert values == [128, 7, 16] and all(type(v) is int for v in values)
    with pytest.raises(TypeError, match="must be an int, got bool"):
        primitives.plain_int("m", True)


# --- differentiation, symbolic shapes, size limits -----------------------------------------------
@pytest.mark.parametrize("op", ["gemm", "grouped_gemm_contiguous", "grouped_gemm_masked"])
def test_grad_raises_a_clear_error(op):
    b2, b3 = jnp.ones((24, 32), F8), jnp.ones((2, 24, 32), F8)
    calls = {
        "gemm": lambda a: jax_dgpt.gemm(a.astype(F8), b2),
        "grouped_gemm_contiguous": lambda a: jax_dgpt.grouped_gemm_contiguous(
            a.astype(F8), b3, jnp.zeros((8,), jnp.int32)
        ),
        "grouped_gemm_masked": lambda a: jax_dgpt.grouped_gemm_masked(
            jnp.broadcast_to(a.astype(F8), (2, 8, 32)), b3, jnp.full((2,), 8, jnp.int32), 8
        ),
    }
    loss = lambda a: calls[op](a).astype(jnp.float32).sum()  # noqa: E731
    with pytest.raises(NotImplementedError, match=f"jax_dgpt.{op} is not differentiable"):
        jax.grad(loss)(jnp.ones((8, 32), jnp.float32))


def test_symbolic_shapes_are_rejected_clearly():
    (m,) = jax.export.symbolic_shape("m")
    with pytest.raises(TypeError, match="a must have a static shape"):
        jax.eval_shape(jax_dgpt.gemm, jax.ShapeDtypeStruct((m, 32), F8), jax.ShapeDtypeStruct((16, 32), F8))


def test_sizes_beyond_the_kernel_limits_are_rejected_at_trace_time():
    with pytest.raises(ValueError, match="at most 2\\*\\*31"):
        jax.eval_shape(jax_dgpt.gemm, jax.ShapeDtypeStruct((2**31 + 16, 64), F8), jax.ShapeDtypeStruct((16, 64), F8))
