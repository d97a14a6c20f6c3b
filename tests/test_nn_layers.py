"""CPU tests of the Flax layers (jax_dgpt.nn): Fp8Dense and MoE against float references.

Tolerances come from FP8 e4m3 rounding. e4m3 keeps 3 mantissa bits, so a quantized operand has a
relative error of at most half an ulp, 2^-4 (values above the subnormal range, i.e. above
2^-6 * scale; below it the absolute error is at most 2^-10 * scale). On random data the errors are
independent and much smaller on average: the RMS relative error of one e4m3 rounding is about
2^-4 / sqrt(3) * E[1/mantissa] ~= 0.026. Hence:
  - Fp8Dense (two quantized operands): elementwise ``|y - ref| <= (2 * 2^-4 + 2^-8) sum_k |x w|``
    (+ the subnormal terms and one bf16 ulp of the output), and a normalised error
    ``|y - ref| / |ref| <= 0.06`` (expected ~0.026 * sqrt(2) ~= 0.037);
  - MoE (four quantized operands: x, W_gate/up, the SwiGLU output, W_down): the first GEMM's
    errors enter the SwiGLU product twice (through gate and through up), so about six roundings
    add up: expected ~0.026 * sqrt(6) ~= 0.064 (measured 0.068); the bound is a normalised error
    ``<= 0.1``, i.e. calc_diff <= 5e-3 (calc_diff ~ err^2 / 2; measured 2.3e-3). Averaged over
    thousands of elements these figures barely move with the seed.
"""

from __future__ import annotations

import functools
import importlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jax_dgpt.testing import calc_diff, normalised_error

pytest.importorskip("flax")
from flax import nnx  # noqa: E402

from jax_dgpt import nn as dgnn  # noqa: E402

DENSE_TOLERANCE = 0.06
MOE_TOLERANCE = 0.1
ALIGN = 128


# --- generators and references --------------------------------------------------------------------
def generate_normal(shape: tuple[int, ...], key: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(key).standard_normal(shape) * scale).astype(np.float32)


def generate_moe(num_tokens, hidden, expert_hidden, num_experts, top_k, key=0, router_bias=None):
    """(layer, float32 weights dict, x [T, H]) with the layer loaded from the float32 weights."""
    w = {
        "w_gate": generate_normal((num_experts, expert_hidden, hidden), key + 1, hidden**-0.5),
        "w_up": generate_normal((num_experts, expert_hidden, hidden), key + 2, hidden**-0.5),
        "w_down": generate_normal((num_experts, hidden, expert_hidden), key + 3, expert_hidden**-0.5),
        "router_kernel": generate_normal((hidden, num_experts), key + 4, hidden**-0.5),
        "router_bias": np.zeros(num_experts, np.float32) if router_bias is None else router_bias,
    }
    layer = dgnn.MoE(hidden, expert_hidden, num_experts, top_k, rngs=nnx.Rngs(key))
    layer.load_weights(**{name: jnp.asarray(value) for name, value in w.items()})
    return layer, w, jnp.asarray(generate_normal((num_tokens, hidden), key + 5))


def reference_routing(x, w, top_k):
    """Softmax top-k in float32 (as the layer computes it), renormalised: weights, ids [T, k]."""
    logits = jnp.dot(x, w["router_kernel"], precision=lax.Precision.HIGHEST) + w["router_bias"]
    top, ids = lax.top_k(jax.nn.softmax(logits, axis=-1), top_k)
    return np.asarray(top / top.sum(-1, keepdims=True), np.float64), np.asarray(ids)


def reference_moe(x, w, top_k, capacity=None):
    """Plain float64 MoE, a loop over tokens and their top-k experts: (y [T, H], dropped).

    With ``capacity``, each expert keeps its first ``capacity`` assignments in token order (the
    layer's decode rule); the later ones contribute nothing.
    """
    weights, ids = reference_routing(x, w, top_k)
    x64 = np.asarray(x, np.float64)
    y, taken, dropped = np.zeros_like(x64), {}, 0
    for t in range(x64.shape[0]):
        for j in range(top_k):
            e = int(ids[t, j])
            taken[e] = taken.get(e, 0) + 1
            if capacity is not None and taken[e] > capacity:
                dropped += 1
                continue
            gate, up = w["w_gate"][e].astype(np.float64) @ x64[t], w["w_up"][e] @ x64[t]
            act = gate / (1.0 + np.exp(-gate)) * up
            y[t] += weights[t, j] * (w["w_down"][e].astype(np.float64) @ act)
    return y, dropped


def assert_moe_close(got, ref, context):
    err, diff = normalised_error(got, ref), calc_diff(np.asarray(got, np.float64), ref)
    assert err <= MOE_TOLERANCE and diff <= MOE_TOLERANCE**2 / 2, (
        f"{context}: normalised error {err:.4f} (<= {MOE_TOLERANCE}), calc_diff {diff:.2e}"
    )


# --- Fp8Dense -------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("lead", [(48,), (2, 3, 8)])
def test_fp8_dense_matches_f32(lead, use_bias):
    in_features, out_features = 96, 40
    layer = dgnn.Fp8Dense(in_features, out_features, use_bias=use_bias, rngs=nnx.Rngs(0))
    if use_bias:
        layer.bias[...] = jnp.asarray(generate_normal((out_features,), 7))
    x = jnp.asarray(generate_normal(lead + (in_features,), 1))
    y = np.asarray(jax.jit(lambda x: layer(x))(x), np.float64)
    assert y.shape == lead + (out_features,)

    x64 = np.asarray(x, np.float64).reshape(-1, in_features)
    w64 = np.asarray(layer.kernel[...], np.float64)
    ref = x64 @ w64.T + (np.asarray(layer.bias[...], np.float64) if use_bias else 0.0)
    # Elementwise: both operands within 2^-4 relative (+ 2^-10 * scale in the subnormal range),
    # the fp32 sum of exact fp8 products, one bf16 rounding (2^-8 relative) of the GEMM output.
    sx, sw = np.abs(x64).max() / 448, np.abs(w64).max() / 448
    magnitude = np.abs(x64) @ np.abs(w64).T
    subnormal = 2.0**-10 * (sx * np.abs(w64).sum(1)[None, :] + sw * np.abs(x64).sum(1)[:, None])
    bound = (2 * 2.0**-4 + 2.0**-8) * magnitude + 1.2 * subnormal + 2.0**-8 * np.abs(ref) + 1e-6
    error = np.abs(y.reshape(ref.shape) - ref)
    assert np.all(error <= bound), f"lead {lead}: worst excess {np.max(error - bound):.3g}"
    err = normalised_error(y.reshape(ref.shape), ref)
    assert err <= DENSE_TOLERANCE, f"lead {lead} bias {use_bias}: normalised error {err:.4f}"


def test_fp8_dense_dtypes_and_zero_input():
    layer = dgnn.Fp8Dense(32, 24, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(1))
    assert layer.kernel[...].dtype == jnp.bfloat16 and layer.kernel[...].shape == (24, 32)
    y = layer(jnp.ones((4, 32), jnp.bfloat16))
    assert y.shape == (4, 24) and y.dtype == jnp.bfloat16
    # amax == 0: the scale guard gives exact zeros (plus the zero bias), never NaN.
    zeros = layer(jnp.zeros((3, 5, 32), jnp.float32))
    assert zeros.dtype == jnp.float32 and np.all(np.asarray(zeros) == 0.0)
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 32\]"):
        layer(jnp.ones((4, 31)))


def test_quantize_tiny_amax_gives_finite_values_and_positive_scale():
    # amax / 448 underflows to 0 in float32 for amax = 1e-37: the scale is floored at the smallest
    # normal float32 instead (0 / 0 gave NaN before).
    x = jnp.asarray([0.0, 1e-37, -1e-37], jnp.float32)
    q, scale = dgnn.quantize_per_tensor(x)
    tiny = float(jnp.finfo(jnp.float32).tiny)
    assert q.dtype == jnp.float8_e4m3fn and scale.dtype == jnp.float32
    assert float(scale) >= tiny > 0.0
    q32 = np.asarray(q, np.float32)
    assert np.all(np.isfinite(q32)), q32
    got, want = np.asarray(dgnn.dequantize(q, scale), np.float64), np.asarray(x, np.float64)
    # e4m3 rounding: half an ulp, 2^-4 relative, or 2^-10 * scale in the subnormal range.
    bound = np.maximum(2.0**-4 * np.abs(want), 2.0**-10 * float(scale))
    assert np.all(np.abs(got - want) <= bound), (got, want)
    assert got[0] == 0.0 and got[1] > 0.0 > got[2]
    # Per expert too, and under jit (a device may flush subnormal scales to zero).
    w = jnp.stack([x, jnp.zeros(3), jnp.ones(3)])
    wq, ws = dgnn.quantize_per_expert(w)
    assert np.all(np.asarray(ws) >= tiny) and np.all(np.isfinite(np.asarray(wq, np.float32)))
    assert np.all(np.isfinite(np.asarray(jax.jit(dgnn.quantize_per_tensor)(x)[0], np.float32)))


def test_quantize_zero_and_empty_tensors():
    for x in (jnp.zeros((4, 8)), jnp.zeros((0, 8))):
        q, scale = dgnn.quantize_per_tensor(x)
        assert q.shape == x.shape and np.all(np.asarray(q, np.float32) == 0.0)
        assert np.isfinite(float(scale)) and float(scale) > 0.0


@pytest.mark.parametrize("shape", [(0, 32), (2, 0, 32), (0, 3, 32)])
def test_fp8_dense_empty_input(shape):
    layer = dgnn.Fp8Dense(32, 24, rngs=nnx.Rngs(0))
    for x in (jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.bfloat16)):
        y = layer(x)
        assert y.shape == shape[:-1] + (24,) and y.dtype == x.dtype
        y = jax.jit(lambda x: layer(x))(x)
        assert y.shape == shape[:-1] + (24,) and y.dtype == x.dtype


def test_fp8_dense_validates_arguments():
    rngs = nnx.Rngs(0)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="Fp8Dense: in_features must be positive"):
            dgnn.Fp8Dense(bad, 8, rngs=rngs)
        with pytest.raises(ValueError, match="Fp8Dense: out_features must be positive"):
            dgnn.Fp8Dense(8, bad, rngs=rngs)
    for bad in (2.0, True, "8", None):
        with pytest.raises(TypeError, match="Fp8Dense: in_features must be an int"):
            dgnn.Fp8Dense(bad, 8, rngs=rngs)
        with pytest.raises(TypeError, match="Fp8Dense: out_features must be an int"):
            dgnn.Fp8Dense(8, bad, rngs=rngs)
    with pytest.raises(TypeError, match="Fp8Dense: param_dtype must be a float dtype"):
        dgnn.Fp8Dense(8, 8, param_dtype=jnp.int32, rngs=rngs)
    layer = dgnn.Fp8Dense(np.int64(16), np.int32(8), rngs=rngs)
    assert type(layer.in_features) is int and type(layer.out_features) is int
    assert layer.kernel[...].shape == (8, 16)
    with pytest.raises(ValueError, match=r"Fp8Dense: x must have shape \[\.\.\., 16\]"):
        layer(jnp.ones((4, 15)))
    with pytest.raises(ValueError, match=r"Fp8Dense: x must have shape \[\.\.\., 16\]"):
        layer(jnp.float32(1.0))
    with pytest.raises(TypeError, match="Fp8Dense: x must be a float array"):
        layer(jnp.ones((4, 16), jnp.int32))
    with pytest.raises(ValueError, match=r"Fp8Dense: bias must have shape \(8,\)"):
        dgnn.fp8_dense(jnp.ones((4, 16)), jnp.ones((8, 16)), jnp.ones((7,)))
    with pytest.raises(ValueError, match="Fp8Dense: kernel must be 2-D"):
        dgnn.fp8_dense(jnp.ones((4, 16)), jnp.ones((16,)))


def test_quantization_module_is_not_shadowed():
    module = importlib.import_module("jax_dgpt.nn.quantization")
    import jax_dgpt.nn.quantization as quantization

    assert quantization is module and dgnn.quantization is module
    assert callable(dgnn.quantize) and dgnn.quantize is module.quantize
    assert dgnn.routing is importlib.import_module("jax_dgpt.nn.routing")


@pytest.mark.parametrize(
    ("version", "ok"),
    [
        ("0.12.0", True),
        ("0.12.8", True),
        ("0.12.0rc1", True),
        ("0.12.1.dev3+g1234abc", True),
        ("0.11.9", False),
        ("0.13.0", False),
        ("0.13.0.dev1", False),
        ("1.0.0", False),
        ("unknown", False),
        ("", False),
    ],
)
def test_flax_version_bounds(version, ok):
    if ok:
        dgnn._check_flax_version(version)
    else:
        with pytest.raises(ImportError, match=r"flax>=0\.12,<0\.13.*pip install 'jax-dgpt\[flax\]'"):
            dgnn._check_flax_version(version)


def test_unsupported_flax_version_fails_import():
    script = (
        "import sys, types\n"
        "flax = types.ModuleType('flax'); flax.__version__ = '0.13.1'\n"
        "flax.nnx = types.ModuleType('flax.nnx')\n"
        "sys.modules['flax'], sys.modules['flax.nnx'] = flax, flax.nnx\n"
        "try:\n    from jax_dgpt import nn\nexcept ImportError as e:\n    print(e)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "found flax '0.13.1'" in result.stdout, result.stdout
    assert "pip install 'jax-dgpt[flax]'" in result.stdout, result.stdout


# --- MoE against the float reference --------------------------------------------------------------
def test_moe_prefill_and_decode_match_f32_reference():
    layer, w, x = generate_moe(num_tokens=96, hidden=128, expert_hidden=64, num_experts=8, top_k=2)
    ref, _ = reference_moe(x, w, top_k=2)
    weights, ids = dgnn.route(x, w["router_kernel"], w["router_bias"], 2)
    np.testing.assert_array_equal(np.asarray(ids), reference_routing(x, w, 2)[1])
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-6)

    prefill = jax.jit(lambda x: layer(x))(x)
    assert_moe_close(prefill, ref, "prefill")
    # capacity = T: no expert can overflow, so decode computes the same rows as prefill. Only
    # the order of float32 sums may differ (a bf16/fp8 rounding flip at most).
    decode, dropped = jax.jit(lambda x: layer.decode(x, capacity=96))(x)
    assert int(dropped) == 0
    assert_moe_close(decode, ref, "decode")
    agree = normalised_error(decode, prefill)
    assert agree <= 1e-3, f"prefill and decode differ: normalised {agree:.2e}"


def test_moe_expert_with_no_tokens():
    bias = np.zeros(8, np.float32)
    bias[[2, 5]] = -1e4  # experts 2 and 5 never win a top-2 slot
    layer, w, x = generate_moe(64, 128, 64, 8, top_k=2, key=10, router_bias=bias)
    layout = dgnn.contiguous_layout(reference_routing(x, w, 2)[1], 8, ALIGN)
    counts = np.asarray(layout.counts)
    assert counts[2] == 0 and counts[5] == 0 and counts.sum() == 128
    ref, _ = reference_moe(x, w, top_k=2)
    assert_moe_close(layer(x), ref, "prefill, experts 2 and 5 empty")
    y, dropped = layer.decode(x, capacity=64)
    assert int(dropped) == 0
    assert_moe_close(y, ref, "decode, experts 2 and 5 empty")


def test_moe_all_tokens_on_one_expert():
    # 160 tokens, top-1, all on expert 3: its rows span two 128-row blocks; the others are empty.
    bias = np.zeros(4, np.float32)
    bias[3] = 1e4
    layer, w, x = generate_moe(160, 128, 64, 4, top_k=1, key=20, router_bias=bias)
    assert np.all(reference_routing(x, w, 1)[1] == 3)
    ref, _ = reference_moe(x, w, top_k=1)
    prefill = layer(x)
    assert_moe_close(prefill, ref, "prefill, all tokens on expert 3")
    decode, dropped = layer.decode(x, capacity=160)
    assert int(dropped) == 0
    assert normalised_error(decode, prefill) <= 1e-3


def test_moe_decode_capacity_overflow_drops_later_tokens():
    # Random top-2 routing of 48 tokens over 8 experts (12 assignments each on average) with room
    # for 8 per expert: each expert keeps its first 8 assignments in token order.
    layer, w, x = generate_moe(48, 128, 64, 8, top_k=2, key=30)
    ref, ref_dropped = reference_moe(x, w, top_k=2, capacity=8)
    y, dropped = jax.jit(lambda x: layer.decode(x, capacity=8))(x)
    assert ref_dropped > 0 and int(dropped) == ref_dropped
    assert_moe_close(y, ref, "decode with overflow")
    full, _ = reference_moe(x, w, top_k=2)
    assert normalised_error(y, full) > 3 * MOE_TOLERANCE, "the dropped contributions are missing"

    # All 40 tokens on expert 1 (top-1), capacity 5: tokens 5.. are dropped and come out as zeros.
    bias = np.zeros(4, np.float32)
    bias[1] = 1e4
    layer, w, x = generate_moe(40, 128, 64, 4, top_k=1, key=40, router_bias=bias)
    y, dropped = layer.decode(x, capacity=5)
    assert int(dropped) == 35
    assert np.all(np.asarray(y[5:]) == 0.0)
    assert_moe_close(y[:5], reference_moe(x, w, top_k=1)[0][:5], "the 5 kept tokens")


# --- layouts, shapes, compilation, autodiff -------------------------------------------------------
def test_contiguous_layout_properties():
    ids = jnp.asarray(np.random.default_rng(3).integers(0, 5, size=(70, 3)), jnp.int32)
    layout = dgnn.contiguous_layout(ids, 5, ALIGN)
    m_indices, rows = np.asarray(layout.m_indices), np.asarray(layout.rows)
    assert m_indices.shape == (dgnn.routing.contiguous_rows_bound(210, 5, ALIGN),)
    assert len(set(rows.tolist())) == 210 and np.all(m_indices[rows] == np.asarray(ids).ravel())
    assert np.all(np.asarray(layout.row_token)[rows] == np.arange(210) // 3)
    for e in range(5):
        where = np.nonzero(m_indices == e)[0]
        assert where[0] % ALIGN == 0 and np.all(np.diff(where) == 1), f"expert {e}"
        assert np.all(m_indices[where[-1] + 1 : -(-(where[-1] + 1) // ALIGN) * ALIGN] == -1)
        assert np.all(np.diff(np.asarray(layout.row_token)[where]) >= 0), "token order"


def test_moe_shapes_and_dtypes():
    layer = dgnn.MoE(hidden=64, expert_hidden=32, num_experts=4, top_k=2, rngs=nnx.Rngs(0))
    assert layer.w_gate_up[...].dtype == jnp.float8_e4m3fn
    assert layer.w_gate_up[...].shape == (4, 64, 64) and layer.w_down[...].shape == (4, 64, 32)
    assert layer.w_gate_up_scale[...].shape == (4,) and layer.w_down_scale[...].dtype == jnp.float32
    x = jnp.asarray(generate_normal((2, 12, 64), 1), jnp.bfloat16)
    y = layer(x)
    assert y.shape == (2, 12, 64) and y.dtype == jnp.bfloat16
    y, dropped = layer.decode(x, capacity=3)
    assert y.shape == (2, 12, 64) and y.dtype == jnp.bfloat16
    assert dropped.shape == () and dropped.dtype == jnp.int32
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 64\]"):
        layer(jnp.ones((4, 32)))
    with pytest.raises(ValueError, match="capacity must be positive"):
        layer.decode(x, capacity=0)
    with pytest.raises(ValueError, match=r"top_k \(5\) > num_experts \(4\)"):
        dgnn.MoE(64, 32, 4, 5, rngs=nnx.Rngs(0))


def test_moe_stores_python_ints():
    layer = dgnn.MoE(np.int64(64), np.int32(32), np.int64(4), np.uint8(2), rngs=nnx.Rngs(0))
    for name in ("hidden", "expert_hidden", "num_experts", "top_k"):
        assert type(getattr(layer, name)) is int, name
    assert (layer.hidden, layer.expert_hidden, layer.num_experts, layer.top_k) == (64, 32, 4, 2)
    assert type(layer.flops(3)) is int
    with pytest.raises(TypeError, match="MoE: top_k must be an int"):
        dgnn.MoE(64, 32, 4, True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="MoE: hidden must be positive"):
        dgnn.MoE(0, 32, 4, 2, rngs=nnx.Rngs(0))
    assert not hasattr(dgnn.MoE, "forward_prefill")


@pytest.mark.parametrize("out_dtype", [jnp.float32, jnp.bfloat16])
def test_combine_is_an_exact_float32_weighted_sum(out_dtype):
    from jax_dgpt.nn.moe import _combine

    rng = np.random.default_rng(5)
    rows_f32 = jnp.asarray(rng.standard_normal((40, 24)) * 10.0 ** rng.integers(-3, 4, (40, 1)))
    rows_f32 = rows_f32.astype(jnp.float32)
    rows = jnp.asarray(rng.permutation(40)[:36].reshape(12, 3), jnp.int32)
    weights = jnp.asarray(rng.dirichlet(np.ones(3), size=12), jnp.float32)
    got = jax.jit(functools.partial(_combine, out_dtype=out_dtype))(rows_f32, rows, weights)
    assert got.shape == (12, 24) and got.dtype == out_dtype
    # The rows are rounded to out_dtype, then weighted and summed in float32: compare with float64
    # arithmetic on the same rounded rows (k = 3 terms: a few float32 ulps, then one rounding).
    gathered = np.asarray(rows_f32.astype(out_dtype).astype(jnp.float32), np.float64)[rows]
    ref = np.sum(np.asarray(weights, np.float64)[..., None] * gathered, axis=1)
    eps = float(jnp.finfo(jnp.float32).eps) * 4 + float(jnp.finfo(out_dtype).eps)
    np.testing.assert_array_less(np.abs(np.asarray(got, np.float64) - ref), eps * (np.abs(ref) + 1e-30) * 2)
    # No default-precision dot_general (TF32 on the GPU) in the combine.
    jaxpr = str(jax.make_jaxpr(functools.partial(_combine, out_dtype=out_dtype))(rows_f32, rows, weights))
    assert "dot_general" not in jaxpr, jaxpr


def test_jit_compiles_once_per_token_count():
    layer = dgnn.MoE(hidden=64, expert_hidden=32, num_experts=4, top_k=2, rngs=nnx.Rngs(0))
    traces = {"prefill": 0, "decode": 0}

    def prefill(model, x):
        traces["prefill"] += 1
        return model(x)

    def decode(model, x):
        traces["decode"] += 1
        return model.decode(x, capacity=4)

    prefill, decode = nnx.jit(prefill), nnx.jit(decode)
    for key in range(3):  # new tokens, new routing, new counts: same program
        x = jnp.asarray(generate_normal((24, 64), key))
        prefill(layer, x)
        decode(layer, x)
    assert traces == {"prefill": 1, "decode": 1}


def test_grad_raises_inference_only():
    layer, _, x = generate_moe(16, 64, 32, 4, top_k=2)
    dense = dgnn.Fp8Dense(64, 16, rngs=nnx.Rngs(0))
    message = "jax_dgpt.nn layers are inference-only"
    with pytest.raises(NotImplementedError, match=message):
        jax.grad(lambda x: layer(x).sum())(x)
    with pytest.raises(NotImplementedError, match=message):
        jax.grad(lambda x: layer.decode(x, capacity=8)[0].sum())(x)
    with pytest.raises(NotImplementedError, match=message):
        jax.jit(jax.grad(lambda x: dense(x).sum()))(x)
    with pytest.raises(NotImplementedError, match=message):
        nnx.grad(lambda model, x: model(x).sum())(dense, x)
    # Nothing to differentiate through the layer: it runs.
    jax.grad(lambda x: (x * 2).sum() + layer(lax.stop_gradient(x)).sum())(x)


def test_flax_is_optional():
    script = (
        "import sys, jax_dgpt; assert 'flax' not in sys.modules, 'import jax_dgpt imported flax'\n"
        "sys.modules['flax'] = None\n"
        "try:\n    from jax_dgpt import nn\nexcept ImportError as e:\n    print(e)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "pip install 'jax-dgpt[flax]'" in result.stdout, result.stdout


# --- issue 12, finding 3: building a large layer ---------------------------------------------------
def test_moe_random_init_is_lecun_normal_per_expert():
    layer = dgnn.MoE(hidden=512, expert_hidden=128, num_experts=4, top_k=2, rngs=nnx.Rngs(0))
    for name, fan_in in (("w_gate_up", 512), ("w_down", 128)):
        q = np.asarray(getattr(layer, name)[...], np.float64)
        scale = np.asarray(getattr(layer, name + "_scale")[...], np.float64)
        w = q * scale[:, None, None]
        for e in range(4):
            std = w[e].std() * fan_in**0.5
            assert abs(std - 1.0) < 0.03 and abs(w[e].mean()) * fan_in**0.5 < 0.03, (name, e, std, w[e].mean())
            assert np.isclose(np.abs(q[e]).max(), 448.0), "the scale is the expert's amax / 448"
        assert not np.array_equal(q[0], q[1]), "experts are drawn independently"
        # Symmetric: about as many weights below as above zero.
        assert abs(np.mean(q > 0) - 0.5) < 0.01 and np.unique(q).size > 64  # 256 levels, rounded to e4m3
    again = dgnn.MoE(hidden=512, expert_hidden=128, num_experts=4, top_k=2, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(again.w_down[...], np.float32), np.asarray(layer.w_down[...], np.float32))
    other = dgnn.MoE(hidden=512, expert_hidden=128, num_experts=4, top_k=2, rngs=nnx.Rngs(1))
    assert not np.array_equal(np.asarray(other.w_down[...], np.float32), np.asarray(layer.w_down[...], np.float32))


def test_moe_init_memory_is_about_the_parameters():
    """Building a layer of 151 MB of FP8 weights peaks at a small multiple of that, in a fresh process
    (the float32 init of the whole stack needed about 16 times the FP8 size: 15.9 GB at the README's
    sizes)."""
    script = r"""
import jax
from flax import nnx
from jax_dgpt import nn
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
before = peak()
layer = nn.MoE(hidden=2048, expert_hidden=512, num_experts=48, top_k=2, rngs=nnx.Rngs(0))
jax.block_until_ready(nnx.state(layer))
print("GROWTH", peak() - before)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    growth = int(result.stdout.split("GROWTH")[1])
    fp8_bytes = 48 * 3 * 2048 * 512
    assert growth < 4 * fp8_bytes, (
        f"building the layer grew the peak by {growth / 1e6:.0f} MB ({fp8_bytes / 1e6:.0f} MB of weights)"
    )


def test_load_weights_quantizes_gate_and_up_as_one_tensor_per_expert():
    layer, w, _ = generate_moe(4, 64, 32, 3, 1, key=7)
    want_q, want_s = dgnn.quantize_per_expert(jnp.concatenate([jnp.asarray(w["w_gate"]), jnp.asarray(w["w_up"])], 1))
    np.testing.assert_array_equal(np.asarray(layer.w_gate_up_scale[...]), np.asarray(want_s))
    np.testing.assert_array_equal(np.asarray(layer.w_gate_up[...], np.float32), np.asarray(want_q, np.float32))
