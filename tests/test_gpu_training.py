"""GPU tests of the differentiable FP8 ops and the trainable layers (marked `gpu`; skipped without sm_90).

- fp8_matmul and fp8_ragged_dot: forward and gradients against float64 products of the very fp8 operands and
  scales the op used (built by the op's own quantization code inside the same jitted program, so XLA computes
  them once: a GEMM's error is measured, not a one-ulp quantization difference between two programs); bounds
  testing.BF16_CALC_DIFF_BOUND (bf16 outputs) and testing.F32_CALC_DIFF_BOUND (float32),
  docs/numerical_contract.md;
- one compiled gradient for every group_sizes, and the same under forced and disabled XLA command buffers
  (a fresh process per mode, `python tests/test_gpu_training.py --replay`);
- the optimized HLO: a row-wise amax and its cast in one fusion (one pass over the tensor); the backward's
  transposed copies fused with their casts (no standalone transpose or copy of a full-size operand);
- the example's model (examples/train_moe.py, its GPU size) trained DGPT_TRAIN_STEPS steps (default 200) in
  FP8 and in bf16 from the same init: the FP8 loss within 1% of the bf16 loss.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_dgpt
from jax_dgpt.testing import (
    BF16_CALC_DIFF_BOUND,
    F32_CALC_DIFF_BOUND,
    calc_diff,
    hlo_entry_instructions,
    hlo_readers,
    k_grouped_offsets,
    matmul_nt_f64,
    record_diff,
    to_f64,
)
from jax_dgpt.training import PER_TENSOR, ROWWISE, Fp8Recipe, matmul, quantize, ragged

pytestmark = pytest.mark.gpu

E4M3 = jnp.float8_e4m3fn
RECIPES = {
    "rowwise": ROWWISE,
    "tensor": PER_TENSOR,
    "rowwise-e4m3-grads": Fp8Recipe(grad_dtype=E4M3),
    "rowwise-segment-scales": Fp8Recipe(segment_scales=True),
}
ROOT = pathlib.Path(__file__).resolve().parents[1]
FLAGS = {
    "forced_on": "--xla_gpu_graph_min_graph_size=1 --xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUSTOM_CALL",
    "off": "--xla_gpu_enable_command_buffer=",
}


def normal(shape, key, dtype=jnp.float32, scale=1.0):
    """Normal values with rows spread over 6 binades (so that per-row scales matter), on the device."""
    k1, k2 = jax.random.split(jax.random.key(key))
    spread = jnp.exp2(jax.random.uniform(k2, (shape[0],) + (1,) * (len(shape) - 1), minval=-3, maxval=3))
    return (jax.random.normal(k1, shape) * spread * scale).astype(dtype)


def dequantized(pair, axis=-1) -> np.ndarray:
    """float64 ``q * scale`` of an (fp8 [..., R, C], scale) pair: the scale per row (axis -1 reduced) or scalar."""
    q, scale = to_f64(pair[0]), to_f64(pair[1])
    return q * (scale if scale.ndim == 0 else np.expand_dims(scale, axis))


def check(got, want, dtype, context):
    bound = BF16_CALC_DIFF_BOUND if np.dtype(dtype) == np.dtype(jnp.bfloat16) else F32_CALC_DIFF_BOUND
    got = to_f64(got)
    assert not np.isnan(got).any(), f"{context}: NaN"
    diff = record_diff(calc_diff(got, want), context)
    assert diff <= bound, f"{context}: calc_diff {diff:.3g} > {bound:.0e}"


# --- fp8_matmul -----------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames="recipe")
def matmul_with_operands(x, w, dy, recipe):
    """(y, dx, dw) and the op's own quantized operands (forward pair, backward GEMMs' four), one program."""
    y, vjp = jax.vjp(functools.partial(jax_dgpt.fp8_matmul, recipe=recipe), x, w)
    x_pair, w_pair, residuals = matmul.quantize_forward(recipe, x, w)
    return (y, *vjp(dy)), (x_pair, w_pair), matmul._backward_operands(recipe, residuals, dy)


@pytest.mark.parametrize("recipe_name", ["rowwise", "rowwise-e4m3-grads", "tensor"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("m,n,k", [(4096, 1536, 2048), (1000, 264, 200)])  # the second pads K and M (dgrad's K)
def test_fp8_matmul_matches_float64(m, n, k, dtype, recipe_name):
    recipe = RECIPES[recipe_name]
    x, w, dy = normal((m, k), 1, dtype), normal((n, k), 2, dtype, k**-0.5), normal((m, n), 3, dtype)
    (y, dx, dw), (xq, wq), (dy_a, wt_b, dyt_a, xt_b) = matmul_with_operands(x, w, dy, recipe)
    context = f"fp8_matmul {recipe_name} {np.dtype(dtype).name} {m}x{n}x{k}"
    check(y, matmul_nt_f64(dequantized(xq), dequantized(wq)), dtype, f"{context} y")
    check(dx, matmul_nt_f64(dequantized(dy_a), dequantized(wt_b)), dtype, f"{context} dx")
    check(dw, matmul_nt_f64(dequantized(dyt_a), dequantized(xt_b)), dtype, f"{context} dw")


# --- fp8_ragged_dot -------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames="recipe")
def ragged_with_operands(x, w, group_sizes, dy, recipe):
    y, vjp = jax.vjp(lambda x, w: jax_dgpt.fp8_ragged_dot(x, w, group_sizes, recipe=recipe), x, w)
    dx, dw = vjp(dy)
    x_pair, w_pair, residuals = ragged.quantize_forward(recipe, x, w, group_sizes)
    return (y, dx, dw), (x_pair, w_pair), ragged._backward_operands(recipe, residuals, dy)


def check_ragged(outputs, forward, backward, sizes, recipe, dtype, context):
    (y, dx, dw), (xq, wq), (dy_a, wt_b, dyt_a, xt_b) = outputs, forward, backward
    dw_dtype = dw.dtype
    # NOTES: sliced on the host: a device array sliced with new bounds compiles a program per slice (16 groups
    # x 3 outputs x 3 calls ran past the 170 s test timeout on the H200, run 834694d).
    y, dx, dw = to_f64(y), to_f64(dx), to_f64(dw)
    m, g = y.shape[0], dw.shape[0]
    starts, ends = k_grouped_offsets(sizes, m)
    total = int(ends[-1]) if len(ends) else 0
    assert np.all(y[total:] == 0) and np.all(dx[total:] == 0), f"{context}: rows past the total"
    x_d, dy_d = dequantized(xq), dequantized(dy_a)
    w_d = dequantized(wq) if recipe.rowwise else dequantized(wq, (1, 2))
    wt_d = dequantized(wt_b) if recipe.rowwise else dequantized(wt_b, (1, 2))
    ids = np.minimum(np.searchsorted(ends, np.arange(m), side="right"), g - 1)
    if recipe.segment_scales:  # per (expert, row of the transposed operand): scales [G, N] and [G, K]
        dyt_d = to_f64(dyt_a[0]) * to_f64(dyt_a[1])[ids].T
        xt_d = to_f64(xt_b[0]) * to_f64(xt_b[1])[ids].T
    else:
        dyt_d, xt_d = dequantized(dyt_a), dequantized(xt_b)
    for e, (s, t) in enumerate(zip(starts.tolist(), ends.tolist())):
        if t <= s:
            assert np.all(dw[e] == 0), f"{context}: empty group {e} has a gradient"
            continue
        check(y[s:t], matmul_nt_f64(x_d[s:t], w_d[e]), dtype, f"{context} y g={e}")
        check(dx[s:t], matmul_nt_f64(dy_d[s:t], wt_d[e]), dtype, f"{context} dx g={e}")
        check(dw[e], matmul_nt_f64(dyt_d[:, s:t], xt_d[:, s:t]), dw_dtype, f"{context} dw g={e}")


SIZES = {
    "edge sizes": [0, 1, 127, 129, 256, 1000, 0, 500],
    "total below M": [300, 0, 500, 17, 0, 0, 40, 90],
    "total above M (clamped)": [900, 900, 700, 0, 5, 5, 5, 5],
}


@pytest.mark.parametrize("name", sorted(SIZES))
@pytest.mark.parametrize("recipe_name", ["rowwise", "tensor", "rowwise-segment-scales"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_fp8_ragged_dot_matches_float64(name, recipe_name, dtype):
    sizes, m, k, n = SIZES[name], 2048, 768, 512
    recipe = RECIPES[recipe_name]
    x, w = normal((m, k), 4, dtype), normal((len(sizes), n, k), 5, dtype, k**-0.5)
    dy = normal((m, n), 6, dtype)
    _, ends = k_grouped_offsets(sizes, m)
    x = x.at[int(ends[-1]) :].set(jnp.nan)  # rows past the total take no part in anything
    outputs, forward, backward = ragged_with_operands(x, w, jnp.asarray(sizes, jnp.int32), dy, recipe)
    check_ragged(outputs, forward, backward, sizes, recipe, dtype, f"fp8_ragged_dot {recipe_name} {name}")


def test_fp8_ragged_dot_one_program_for_every_group_sizes():
    m, k, n, g = 4096, 1024, 768, 16
    x, w, dy = normal((m, k), 7, jnp.bfloat16), normal((g, n, k), 8, jnp.bfloat16, k**-0.5), normal((m, n), 9)
    dy = dy.astype(jnp.bfloat16)
    rng = np.random.default_rng(10)
    for call in range(3):
        sizes = [int(s) for s in rng.integers(0, 2 * m // g, size=g)]
        outputs, forward, backward = ragged_with_operands(x, w, jnp.asarray(sizes, jnp.int32), dy, ROWWISE)
        check_ragged(outputs, forward, backward, sizes, ROWWISE, jnp.bfloat16, f"call {call} sizes {sizes}")
    before = ragged_with_operands._cache_size()  # shared with other tests: count what new sizes add
    ragged_with_operands(x, w, jnp.asarray(rng.integers(0, 300, size=g), jnp.int32), dy, ROWWISE)
    assert ragged_with_operands._cache_size() == before, "new group sizes compiled a new program"


# --- command buffers: replays with new group sizes --------------------------------------------------------
@pytest.mark.parametrize("mode", sorted(FLAGS))
def test_gradients_under_command_buffers(mode):
    env = dict(os.environ, XLA_FLAGS=FLAGS[mode])
    script = [sys.executable, str(pathlib.Path(__file__)), "--replay"]
    result = subprocess.run(script, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, f"mode {mode}:\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    assert "REPLAY OK" in result.stdout, result.stdout


def replay() -> int:
    """One compiled step (fp8_matmul and fp8_ragged_dot, forward and backward) called with new inputs and
    group sizes; every call's gradients against float64 of the step's own operands."""
    m, k, n, g = 1024, 512, 384, 6
    w_dense, w_experts = normal((n, k), 11, jnp.bfloat16, k**-0.5), normal((g, n, k), 12, jnp.bfloat16, k**-0.5)

    @jax.jit
    def step(x, dy, group_sizes, w_dense, w_experts):
        return matmul_with_operands(x, w_dense, dy, ROWWISE), ragged_with_operands(
            x, w_experts, group_sizes, dy, ROWWISE
        )

    rng = np.random.default_rng(13)
    for call in range(4):
        x, dy = normal((m, k), 20 + call, jnp.bfloat16), normal((m, n), 30 + call, jnp.bfloat16)
        sizes = [int(s) for s in rng.integers(-20, 2 * m // g, size=g)]  # totals below and above M
        (outputs, _, backward), experts = step(x, dy, jnp.asarray(sizes, jnp.int32), w_dense, w_experts)
        dx, dw = outputs[1], outputs[2]
        for got, a, b, what in ((dx, *backward[:2], "dense dx"), (dw, *backward[2:], "dense dw")):
            check(got, matmul_nt_f64(dequantized(a), dequantized(b)), got.dtype, f"replay call {call}: {what}")
        check_ragged(*experts, sizes, ROWWISE, jnp.bfloat16, f"replay call {call} sizes {sizes}")
        print(f"call {call}: group_sizes={sizes} ok")
    assert step._cache_size() == 1
    print("REPLAY OK")
    return 0


# --- the optimized program: fusion of amax, cast and transposes ------------------------------------------


def test_rowwise_amax_and_cast_are_one_pass():
    """The per-row quantization of a bf16 activation compiles to ONE fusion reading it (amax and cast in one
    pass; XLA's reduction-diamond fusion). If this fails, the row-wise recipe reads each activation twice; the
    fallback is a dedicated quantization kernel."""
    m, k = 8192, 7168
    hlo = jax.jit(lambda x: quantize(x, E4M3, -1)).lower(jnp.ones((m, k), jnp.bfloat16)).compile().as_text()
    instructions = hlo_entry_instructions(hlo)
    (x_name,) = [name for name, _, rest in instructions if rest.startswith("parameter(0)")]
    assert len(hlo_readers(instructions, x_name)) == 1, f"x is read by {hlo_readers(instructions, x_name)}:\n{hlo}"


def test_backward_transposes_fuse_with_their_casts():
    """fp8_matmul forward and backward, bf16 [8192, 7168] x [7168, 7168]: no standalone transpose or copy of a
    full-size operand (each transposed fp8 copy is written by the fusion that casts it); prints how many
    fusions read x, w and dy."""
    m, k, n = 8192, 7168, 7168

    def step(x, w, dy):
        y, vjp = jax.vjp(jax_dgpt.fp8_matmul, x, w)
        return (y, *vjp(dy))

    args = (jnp.ones((m, k), jnp.bfloat16), jnp.ones((n, k), jnp.bfloat16), jnp.ones((m, n), jnp.bfloat16))
    hlo = jax.jit(step).lower(*args).compile().as_text()
    instructions = hlo_entry_instructions(hlo)
    big = [(name, rest.split("(")[0]) for name, result, rest in instructions if re.search(r"\[\d{4},\d{4}\]", result)]
    standalone = [entry for entry in big if entry[1].strip() in ("transpose", "copy")]
    assert not standalone, f"unfused transposes or copies: {standalone}\n{hlo}"
    params = [name for name, _, rest in instructions if rest.startswith("parameter(")]
    print({name: len(hlo_readers(instructions, name)) for name in params})


# --- training at the example's size ----------------------------------------------------------------------
def test_example_fp8_training_tracks_bf16():
    spec = importlib.util.spec_from_file_location("train_moe", ROOT / "examples" / "train_moe.py")
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example
    spec.loader.exec_module(example)
    config = dataclasses.replace(example.GPU, steps=int(os.environ.get("DGPT_TRAIN_STEPS", "200")))
    fp8, bf16 = (example.train(config, use_fp8=use_fp8, log=None) for use_fp8 in (True, False))
    result = example.summary(config, [fp8, bf16])
    print({key: value for key, value in result.items() if key != "runs"})
    for name, run in result["runs"].items():
        print(name, {key: value for key, value in run.items() if key != "losses"})
    assert abs(result["final_loss_rel_diff"]) <= 0.01, result["final_loss_rel_diff"]


if __name__ == "__main__" and "--replay" in sys.argv:
    sys.exit(replay())
