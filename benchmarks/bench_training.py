"""The training table of benchmarks.bench (--only training): the differentiable FP8 ops, forward and backward.

- layout "training": ``fp8_matmul`` forward + backward (dgrad, wgrad; every quantization included) on bf16
  x [M, K], w [N, K] and dy [M, N], against XLA's bf16 dot forward + backward (``training.plain_matmul`` under
  ``jax.vjp``), the per-tensor recipe, and the three FP8 GEMMs alone on operands quantized beforehand (what the
  quantization costs: us - gemms_us). calc_diff: the largest of the three GEMMs' outputs against float64
  products of the fp8 operands they read (scales undone in float64).
- layout "moe_training": an MoE block's training step (router, dispatch, gate/up, SwiGLU, down, combine;
  forward + backward in x, both expert weights and the router) with ``fp8_ragged_dot`` (``nn.moe_train``)
  against the same block with bf16 ``jax.lax.ragged_dot`` and with tokamax's bf16 ``ragged_dot`` (when it
  imports: benchmarks.bench_ragged.load_tokamax). jax.lax.ragged_dot on Hopper multiplies every row by every
  expert's weights: timed only up to bench_ragged.DENSE_FLOPS_LIMIT of that dense work. calc_diff: the FP8
  block's output against the float32 block's (the fp8 rounding of the operands, not a kernel check).

TFLOPS count useful work: 3 GEMMs of 2·M·N·K for a matmul, 3 × 2 × rows × 3·F·H for an MoE step.
Forced kernel settings (bench.py's variants) are not applied here: each step runs several kernel configurations.
"""

from __future__ import annotations

import functools
import time
from functools import partial

import jax
import jax.numpy as jnp

import jax_dgpt
from benchmarks import bench_ragged
from jax_dgpt import testing
from jax_dgpt.training import PER_TENSOR, ROWWISE, matmul, plain_matmul, ragged

MATMUL = [("matmul", m, n, k) for m in (1024, 8192) for n, k in ((7168, 7168), (4096, 14336))]
# (tokens, hidden, expert hidden, experts, top-k): the training example's block, DeepSeek-V3-like and Mixtral-like.
MOE = [("moe", 8192, 1024, 1024, 16, 2), ("moe", 4096, 7168, 2048, 64, 8), ("moe", 8192, 4096, 14336, 8, 2)]
SHAPES = MATMUL + MOE
TINY = [("matmul", 64, 256, 128), ("moe", 64, 64, 32, 4, 2)]


def label(case) -> str:
    if case[0] == "matmul":
        return "{}x{}x{}".format(*case[1:])
    return "T={} H={} F={} E={} k={}".format(*case[1:])


def bench_training(timer, shapes, rows, measure):
    tokamax = None
    for case in shapes:
        if case[0] == "matmul":
            _bench_matmul(timer, case[1:], rows, measure)
        else:
            if tokamax is None:
                tokamax = bench_ragged.tokamax_for_this_backend()
            _bench_moe(timer, case[1:], rows, measure, tokamax)


# --- fp8_matmul -------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames="recipe")
def _fp8_step(x, w, dy, recipe=ROWWISE):
    y, vjp = jax.vjp(partial(jax_dgpt.fp8_matmul, recipe=recipe), x, w)
    return (y, *vjp(dy))


@jax.jit
def _bf16_step(x, w, dy):
    y, vjp = jax.vjp(plain_matmul, x, w)
    return (y, *vjp(dy))


@jax.jit
def _operands(x, w, dy):
    """The row-wise recipe's six (fp8, scale) operands: forward x, w; dgrad dy, w^T; wgrad dy^T, x^T."""
    x_pair, w_pair, residuals = matmul.quantize_forward(ROWWISE, x, w)
    return (x_pair, w_pair, *matmul._backward_operands(ROWWISE, residuals, dy))


@jax.jit
def _three_gemms(ops):
    (xq, sx), (wq, sw), (dy_a, s_dy), (wt_b, s_wt), (dyt_a, s_dyt), (xt_b, s_xt) = ops
    return (
        jax_dgpt.gemm(xq, wq, scale_a=sx, scale_b=sw),
        jax_dgpt.gemm(dy_a, wt_b, scale_a=s_dy, scale_b=s_wt),
        jax_dgpt.wgrad_gemm(dyt_a, xt_b, scale_a=s_dyt, scale_b=s_xt),
    )


def _unscaled_diff(out, a, b) -> float:
    """calc_diff of a scaled GEMM's output against float64 ``A . B^T`` of its fp8 operands (scales undone)."""
    (qa, sa), (qb, sb) = a, b
    with jax.enable_x64(True):
        sa64, sb64 = sa.astype(jnp.float64), sb.astype(jnp.float64)
        sa64 = sa64[:, None] if sa64.ndim else sa64
        sb64 = sb64[None, :] if sb64.ndim else sb64
        unscaled = out.astype(jnp.float64) / sa64 / sb64
    return testing.gemm_diff(unscaled, qa, qb)


def _bench_matmul(timer, shape, rows, measure):
    m, n, k = shape
    started = time.perf_counter()
    keys = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(keys[0], (m, k), jnp.bfloat16)
    w = (jax.random.normal(keys[1], (n, k)) * k**-0.5).astype(jnp.bfloat16)
    dy = jax.random.normal(keys[2], (m, n), jnp.bfloat16)
    ops = _operands(x, w, dy)
    row = dict(layout="training", shape=label(("matmul", *shape)))
    jax.block_until_ready((x, w, dy, ops))
    row["setup_s"] = time.perf_counter() - started
    baselines = {
        "us": partial(_fp8_step, x, w, dy),
        "xla_bf16_us": partial(_bf16_step, x, w, dy),
        "per_tensor_us": partial(_fp8_step, x, w, dy, recipe=PER_TENSOR),
        "gemms_us": partial(_three_gemms, ops),
    }

    def diff_of(out, ops=ops):
        y, dx, dw = out
        pairs = ((y, ops[0], ops[1]), (dx, ops[2], ops[3]), (dw, ops[4], ops[5]))
        return max(_unscaled_diff(result, a, b) for result, a, b in pairs)

    measure(timer, baselines, {}, None, diff_of, row)
    t = row["us"]
    row.update(
        tflops=3 * 2 * m * n * k / t / 1e6,
        gbps=2 * 2 * (m * k + n * k + m * n) / t / 1e3,  # x, w, dy read, y, dx, dw written, bf16
        speedup=row["xla_bf16_us"] / t,
        quantization_us=t - row["gemms_us"],
    )
    rows.add(row, started)


# --- the MoE block's training step --------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("top_k", "use_fp8", "dot"))
def _moe_step(params, x, ct, top_k, use_fp8=True, dot=None):
    from jax_dgpt.nn import moe_train

    def block(params, x):
        return moe_train(x, *params, top_k=top_k, use_fp8=use_fp8, ragged_dot=dot)

    y, vjp = jax.vjp(block, params, x)
    return y, vjp(ct)


def _expert_by_expert_dot(x, w, group_sizes):
    """float32 ``ragged_dot`` (x [M, K], w [G, N, K]) one expert at a time: each expert's product over every
    row, kept for its own rows. Dense work like jax.lax.ragged_dot's lowering, but the memory of one [M, N]
    product: the float32 lowering of 64 experts of 32768 rows asked for 56 GiB (run 834694d)."""
    ids = ragged.segment_ids(group_sizes, x.shape[0])

    def add_expert(y, expert):
        e, w_e = expert
        product = jnp.dot(x, w_e.T, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
        return y + jnp.where((ids == e)[:, None], product, 0.0), None

    init = jnp.zeros((x.shape[0], w.shape[1]), jnp.float32)
    y, _ = jax.lax.scan(add_expert, init, (jnp.arange(w.shape[0]), w.astype(jnp.float32)))
    return y


@functools.partial(jax.jit, static_argnames="top_k")
def _moe_forward_f32(params, x, top_k):
    """The block's float32 forward (the calc_diff reference of the FP8 step's output)."""
    from jax_dgpt.nn import moe_train

    return moe_train(x, *params, top_k=top_k, ragged_dot=_expert_by_expert_dot)


def moe_inputs(tokens, h, f, e):
    """The MoE block's parameters (router, router bias, gate/up [E, 2F, H], down [E, H, F]), bf16 x and the
    output cotangent, fixed seeds."""
    keys = jax.random.split(jax.random.key(2), 5)
    x = jax.random.normal(keys[0], (tokens, h), jnp.bfloat16)
    ct = jax.random.normal(keys[1], (tokens, h), jnp.bfloat16)
    params = (
        jax.random.normal(keys[2], (h, e), jnp.float32) * h**-0.5,
        jnp.zeros((e,), jnp.float32),
        (jax.random.normal(keys[3], (e, 2 * f, h)) * h**-0.5).astype(jnp.bfloat16),
        (jax.random.normal(keys[4], (e, h, f)) * f**-0.5).astype(jnp.bfloat16),
    )
    return params, x, ct


def _bench_moe(timer, shape, rows, measure, tokamax):
    tokens, h, f, e, top_k = shape
    started = time.perf_counter()
    params, x, ct = moe_inputs(tokens, h, f, e)
    row = dict(layout="moe_training", shape=label(("moe", *shape)))
    jax.block_until_ready((x, ct, params))
    row["setup_s"] = time.perf_counter() - started
    baselines = {"us": partial(_moe_step, params, x, ct, top_k)}
    assignments = tokens * top_k
    if 2 * e * assignments * 3 * f * h * 3 <= bench_ragged.DENSE_FLOPS_LIMIT:
        baselines["ragged_bf16_us"] = partial(_moe_step, params, x, ct, top_k, use_fp8=False)
    else:
        row["ragged_bf16_us"] = bench_ragged.DENSE_SKIPPED
    if bench_ragged.record_tokamax(row, tokamax):
        step = partial(_moe_step, params, x, ct, top_k, dot=bench_ragged.tokamax_dot(tokamax))
        try:
            jax.block_until_ready(step())
            baselines["tokamax_bf16_us"] = step
        except Exception as error:  # a kernel or autodiff rule tokamax lacks: recorded, not fatal
            row["tokamax_bf16_us"] = f"n/a ({type(error).__name__}: {error})".replace(" ", "_")[:80]
    params32 = tuple(p.astype(jnp.float32) for p in params)
    reference = _moe_forward_f32(params32, x.astype(jnp.float32), top_k)

    def diff_of(out, reference=reference):
        return testing.calc_diff(testing.to_f64(out[0]), testing.to_f64(reference))

    measure(timer, baselines, {}, None, diff_of, row)
    t = row["us"]
    row.update(
        tflops=3 * 2 * assignments * 3 * f * h / t / 1e6,
        gbps=2 * 2 * 3 * e * f * h / t / 1e3,  # the expert weights read and their gradients written, bf16
    )
    for key, baseline in (("speedup_bf16", "ragged_bf16_us"), ("vs_tokamax", "tokamax_bf16_us")):
        if isinstance(row.get(baseline), float):
            row[key] = row[baseline] / t
    rows.add(row, started)
