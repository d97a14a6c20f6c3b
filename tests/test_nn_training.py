"""CPU tests of the trainable Flax layers (``trainable=True``) and of a short FP8 training run.

Bounds. A trainable layer's FP8 path and its ``use_fp8=False`` twin (the same parameters, XLA dots and
``jax.lax.ragged_dot``) differ by the fp8 rounding of the GEMM operands:
  - Fp8Dense: the layer is exactly ``fp8_matmul`` plus a float32 bias (bitwise equal gradients), and
    ``DENSE_TOLERANCE`` = 0.1 normalised error to the twin (tests/test_training.py bounds fp8_matmul itself);
  - MoE: four quantized GEMM operands forward (x, W_gate/up, the SwiGLU output, W_down; 0.058-0.065 measured
    on 3 seeds, bound ``MOE_TOLERANCE`` = 0.1) and, backward, e5m2 output gradients on top (0.037-0.086
    measured for dx, both expert weights and the router; bound ``MOE_GRAD_TOLERANCE`` = 0.15);
  - training (examples/train_moe.py, tiny configuration, same init and batches, ``TRAIN_STEPS`` steps): the
    FP8 loss (mean of the last 10 steps) within ``TRAIN_TOLERANCE`` = 1% of the bf16 one (the issue's target;
    measured in docs/training.md), and both below 75% of the initial ln(256).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_dgpt

pytest.importorskip("flax")
optax = pytest.importorskip("optax")
from flax import nnx  # noqa: E402

from jax_dgpt import nn as dgnn  # noqa: E402
from jax_dgpt.testing import normalised_error, to_f64  # noqa: E402

DENSE_TOLERANCE = 0.1
MOE_TOLERANCE = 0.1
MOE_GRAD_TOLERANCE = 0.15
TRAIN_TOLERANCE = 0.01
TRAIN_STEPS = 40
EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "train_moe.py"


def normal(shape, key, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(key).standard_normal(shape).astype(np.float32)).astype(dtype)


def params(model) -> dict:
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model))}


# --- Fp8Dense -------------------------------------------------------------------------------------------
def test_trainable_fp8_dense_is_fp8_matmul_plus_bias():
    layer = dgnn.Fp8Dense(96, 40, trainable=True, rngs=nnx.Rngs(0))
    layer.bias[...] = normal((40,), 1)
    x, ct = normal((2, 24, 96), 2, jnp.bfloat16), normal((2, 24, 40), 3)

    def loss(model, x):
        return jnp.sum(model(x).astype(jnp.float32) * ct)

    grads, dx = nnx.jit(nnx.grad(loss, argnums=(0, 1)))(layer, x)

    def functional(kernel, bias, x):
        y = jax_dgpt.fp8_matmul(x, kernel).astype(jnp.float32) + bias
        return jnp.sum(y.astype(jnp.bfloat16).astype(jnp.float32) * ct)

    want = jax.jit(jax.grad(functional, (0, 1, 2)))(layer.kernel[...], layer.bias[...], x)
    for got, expected in zip((grads["kernel"][...], grads["bias"][...], dx), want):
        np.testing.assert_array_equal(to_f64(got), to_f64(expected))
    assert grads["kernel"][...].dtype == jnp.float32 and dx.dtype == jnp.bfloat16

    twin = dgnn.Fp8Dense(96, 40, trainable=True, use_fp8=False, rngs=nnx.Rngs(0))
    twin.bias[...] = layer.bias[...]
    twin_grads, twin_dx = nnx.jit(nnx.grad(loss, argnums=(0, 1)))(twin, x)
    np.testing.assert_allclose(to_f64(twin_grads["bias"][...]), to_f64(grads["bias"][...]), rtol=0, atol=0)  # sum of ct
    for got, expected in ((grads["kernel"][...], twin_grads["kernel"][...]), (dx, twin_dx)):
        assert normalised_error(got, expected) <= DENSE_TOLERANCE
    y, y_twin = layer(x), twin(x)
    assert y.dtype == jnp.bfloat16 and normalised_error(y, y_twin) <= DENSE_TOLERANCE


def test_trainable_fp8_dense_recipes_and_bf16_parameters():
    x = normal((32, 64), 4)
    per_tensor = dgnn.Fp8Dense(
        64, 16, trainable=True, recipe=jax_dgpt.PER_TENSOR, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(5)
    )
    assert per_tensor.recipe == jax_dgpt.PER_TENSOR and per_tensor.kernel[...].dtype == jnp.bfloat16
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) ** 2)))(per_tensor)
    assert grads["kernel"][...].dtype == jnp.bfloat16 and np.all(np.isfinite(to_f64(grads["kernel"][...])))
    assert dgnn.Fp8Dense(64, 16, trainable=True, rngs=nnx.Rngs(5)).recipe == jax_dgpt.ROWWISE


def test_training_mode_arguments_are_checked():
    rngs = nnx.Rngs(0)
    with pytest.raises(
        ValueError, match="Fp8Dense: recipe and use_fp8 apply to the training path; pass trainable=True"
    ):
        dgnn.Fp8Dense(8, 8, recipe=jax_dgpt.ROWWISE, rngs=rngs)
    with pytest.raises(ValueError, match="MoE: recipe and use_fp8 apply to the training path"):
        dgnn.MoE(16, 8, 2, 1, use_fp8=False, rngs=rngs)
    with pytest.raises(ValueError, match="MoE: param_dtype applies to trainable layers"):
        dgnn.MoE(16, 8, 2, 1, param_dtype=jnp.bfloat16, rngs=rngs)
    with pytest.raises(TypeError, match="Fp8Dense: trainable must be a bool, got str"):
        dgnn.Fp8Dense(8, 8, trainable="yes", rngs=rngs)
    with pytest.raises(TypeError, match="MoE: recipe must be None or a jax_dgpt.Fp8Recipe, got str"):
        dgnn.MoE(16, 8, 2, 1, trainable=True, recipe="rowwise", rngs=rngs)
    with pytest.raises(TypeError, match="MoE: param_dtype must be a float dtype"):
        dgnn.MoE(16, 8, 2, 1, trainable=True, param_dtype=jnp.int8, rngs=rngs)
    with pytest.raises(TypeError, match="fp8_matmul: x must have dtype bfloat16 or float32, got float16"):
        dgnn.Fp8Dense(8, 8, trainable=True, rngs=rngs)(jnp.ones((2, 8), jnp.float16))


def test_inference_layers_say_how_to_train():
    dense, moe = dgnn.Fp8Dense(16, 8, rngs=nnx.Rngs(0)), dgnn.MoE(16, 8, 2, 1, rngs=nnx.Rngs(0))
    x = normal((4, 16), 6)
    for fn in (lambda x: dense(x).sum(), lambda x: moe(x).sum()):
        with pytest.raises(NotImplementedError, match=r"inference-only unless built with trainable=True"):
            jax.grad(fn)(x)


# --- MoE ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moe_pair():
    """(FP8 layer, its use_fp8=False twin) with the same parameters, and tokens [128, 64]."""
    layer = dgnn.MoE(64, 32, 4, 2, trainable=True, rngs=nnx.Rngs(0))
    twin = dgnn.MoE(64, 32, 4, 2, trainable=True, use_fp8=False, rngs=nnx.Rngs(0))
    for (name, a), (_, b) in zip(params(layer).items(), params(twin).items()):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
    return layer, twin, normal((128, 64), 10)


def test_trainable_moe_tracks_its_plain_twin(moe_pair):
    layer, twin, x = moe_pair
    ct = normal(x.shape, 11)

    def loss(model, x):
        return jnp.sum(model(x).astype(jnp.float32) * ct)

    grad = nnx.jit(nnx.grad(loss, argnums=(0, 1)))
    (grads, dx), (twin_grads, twin_dx) = grad(layer, x), grad(twin, x)
    y, y_twin = nnx.jit(lambda m, x: m(x))(layer, x), nnx.jit(lambda m, x: m(x))(twin, x)
    assert normalised_error(y, y_twin) <= MOE_TOLERANCE
    assert normalised_error(dx, twin_dx) <= MOE_GRAD_TOLERANCE
    for name in ("w_gate_up", "w_down", "router_kernel", "router_bias"):
        err = normalised_error(grads[name][...], twin_grads[name][...])
        assert err <= MOE_GRAD_TOLERANCE, f"{name}: normalised error {err:.3f} to the plain twin"
    assert layer.w_gate_up_scale is None and grads["w_gate_up"][...].shape == (4, 64, 64)


def test_trainable_moe_decode_is_forward_only(moe_pair):
    layer, _, x = moe_pair
    y, dropped = jax.jit(lambda x: layer.decode(x, capacity=128))(x)
    assert int(dropped) == 0
    # Decode quantizes the float weights per expert and activations per tensor: the same block within fp8 error.
    assert normalised_error(y, nnx.jit(lambda m, x: m(x))(layer, x)) <= MOE_TOLERANCE
    with pytest.raises(NotImplementedError, match=r"MoE.decode \(the masked layout.*train through MoE.__call__"):
        nnx.grad(lambda m: m.decode(x, capacity=16)[0].sum())(layer)


def test_trainable_moe_load_weights_bf16_and_empty_input():
    layer = dgnn.MoE(32, 16, 3, 2, trainable=True, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(1))
    w_gate, w_up, w_down = normal((3, 16, 32), 12), normal((3, 16, 32), 13), normal((3, 32, 16), 14)
    layer.load_weights(w_gate=w_gate, w_up=w_up, w_down=w_down)
    assert layer.w_gate_up[...].dtype == jnp.bfloat16 and layer.w_gate_up[...].shape == (3, 32, 32)
    np.testing.assert_array_equal(to_f64(layer.w_gate_up[...][:, :16]), to_f64(w_gate.astype(jnp.bfloat16)))
    np.testing.assert_array_equal(to_f64(layer.w_down[...]), to_f64(w_down.astype(jnp.bfloat16)))
    y = nnx.jit(lambda m, x: m(x))(layer, normal((2, 5, 32), 15, jnp.bfloat16))
    assert y.shape == (2, 5, 32) and y.dtype == jnp.bfloat16
    empty = nnx.jit(nnx.grad(lambda m: m(jnp.zeros((0, 32), jnp.bfloat16)).sum()))(layer)
    assert all(np.all(to_f64(leaf) == 0) for leaf in jax.tree.leaves(empty))


def test_nnx_optimizer_steps_reduce_the_loss():
    """nnx.Optimizer with optax on a dense + MoE model: the loss of a fixed regression target goes down."""

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.dense = dgnn.Fp8Dense(32, 32, trainable=True, rngs=rngs)
            self.moe = dgnn.MoE(32, 32, 4, 2, trainable=True, rngs=rngs)

        def __call__(self, x):
            return self.moe(self.dense(x))

    model = Model(nnx.Rngs(2))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    x, target = normal((64, 32), 16), 0.5 * normal((64, 32), 17)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - target) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(15)]
    assert losses[-1] < 0.8 * losses[0], losses


# --- a short training run: FP8 tracks bf16 ------------------------------------------------------------------
def load_example():
    spec = importlib.util.spec_from_file_location("train_moe", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_fp8_training_tracks_bf16_from_the_same_init():
    example = load_example()
    config = dataclasses.replace(example.TINY, layers=1, steps=TRAIN_STEPS)
    fp8, bf16 = (example.train(config, use_fp8=use_fp8, log=None) for use_fp8 in (True, False))
    assert fp8.init_fingerprint == bf16.init_fingerprint, "the runs must start from the same parameters"
    start = float(np.log(256))
    assert abs(fp8.losses[0] - start) < 0.1 and abs(bf16.losses[0] - start) < 0.1, (fp8.losses[0], bf16.losses[0])
    final_fp8, final_bf16 = example.tail_mean(fp8.losses), example.tail_mean(bf16.losses)
    assert max(final_fp8, final_bf16) < 0.75 * start, (final_fp8, final_bf16)
    gap = abs(final_fp8 - final_bf16) / final_bf16
    assert gap <= TRAIN_TOLERANCE, f"FP8 final loss {final_fp8:.4f} vs bf16 {final_bf16:.4f}: {100 * gap:.2f}%"


def test_example_reports_the_gap_over_seeds(tmp_path, capsys):
    """train_moe --seeds N: both runs per seed; the JSON keeps every seed's gaps and their mean and spread."""
    example = load_example()
    out = tmp_path / "curves"
    assert example.main(["--tiny", "--layers", "1", "--steps", "2", "--seeds", "2", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert [s["seed"] for s in result["seeds"]] == [0, 1]
    gaps = [s["final_loss_rel_diff"] for s in result["seeds"]]
    assert result["final_loss_rel_diff_mean"] == pytest.approx(np.mean(gaps))
    assert result["final_loss_rel_diff_std"] == pytest.approx(np.std(gaps, ddof=1))
    assert "over 2 seeds: final loss" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--seeds must be at least 1"):
        example.main(["--tiny", "--steps", "1", "--seeds", "0", "--out", str(out)])


def test_moe_train_gradients_gather_instead_of_scatter():
    """moe_train's dispatch and combine gradients (jax_dgpt.nn.moe._gather_rows: gathers of the inverse
    permutation) equal JAX's own gradients of the plain gathers (scatter-adds) up to the float32 order of
    the sums, and the backward program scatters no float rows."""
    from jax_dgpt.nn import moe as moe_module

    tokens, hidden, ffn, experts, top_k = 48, 32, 16, 4, 2
    x = normal((tokens, hidden), 20)
    params = (
        normal((hidden, experts), 21),
        normal((experts,), 22),
        normal((experts, 2 * ffn, hidden), 23),
        normal((experts, hidden, ffn), 24),
    )
    ct = normal((tokens, hidden), 25)

    def loss(params, x):
        y = moe_module.moe_train(x, *params, top_k=top_k, use_fp8=False)
        return jnp.sum(y * ct)

    def plain_gather(x, index, readers):
        return x[index]

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(moe_module, "_gather_rows", plain_gather)
        expected = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
        scatter_hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile().as_text()
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
        assert normalised_error(got, want) <= 1e-6
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile().as_text()
    # Rows of the hidden width (the router's [T, E] top-k gradient is a small scatter of its own).
    float_rows_scatter = re.compile(rf"= f32\[\d+,{hidden}\]\S* scatter\(")
    assert float_rows_scatter.search(scatter_hlo), "the plain gathers' gradients should scatter"
    assert not float_rows_scatter.search(hlo), [line for line in hlo.splitlines() if float_rows_scatter.search(line)]
