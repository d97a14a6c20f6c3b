"""An FP8 MoE block (jax_dgpt.nn.MoE) checked against float32 and timed against bf16 ragged_dot.

    python examples/moe_layer.py            # hidden 7168, expert hidden 2048, 64 experts, top-8,
                                            # 4096 tokens (on a Hopper GPU)
    python examples/moe_layer.py --small    # hidden 512, expert hidden 256, 8 experts, top-2, 256

Without a Hopper GPU the example falls back to the small size and runs everything on the CPU device
(and says so), also when another GPU is visible: the same jitted program then runs jax_dgpt's CPU
reference of the GEMMs (on a non-Hopper GPU, jax_dgpt's CUDA kernels would fail). It runs the
prefill path (contiguous layout) and the decode path (masked layout) under jax.jit, compares both
with a float32 MoE using the same routing and weights, and on the GPU prints the median wall time
per call next to the same block written with bf16 ``jax.lax.ragged_dot`` (tokens sorted by expert,
group sizes, ragged_dot for gate/up and down).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

import jax_dgpt
from jax_dgpt import nn as dgnn

LARGE = dict(hidden=7168, expert_hidden=2048, num_experts=64, top_k=8, tokens=4096, decode=128)
SMALL = dict(hidden=512, expert_hidden=256, num_experts=8, top_k=2, tokens=256, decode=32)
# The float32 reference runs on the first tokens of the batch (routing is per token).
CHECKED_TOKENS = 256


# --- the same block with bf16 ragged_dot ----------------------------------------------------------
def ragged_dot_moe(x, router_kernel, router_bias, w_gate_up, w_down, top_k):
    """bf16 MoE with ``lax.ragged_dot``: x ``[T, H]``, w_gate_up bf16 ``[E, H, 2F]`` (gate | up),
    w_down bf16 ``[E, F, H]`` -> float32 ``[T, H]``. Same router as jax_dgpt.nn.MoE."""
    num_tokens, num_experts = x.shape[0], w_gate_up.shape[0]
    weights, expert_ids = dgnn.route(x, router_kernel, router_bias, top_k)
    flat = expert_ids.reshape(-1)
    order = jnp.argsort(flat, stable=True)  # assignments sorted by expert
    group_sizes = jnp.zeros((num_experts,), jnp.int32).at[flat].add(1)
    tokens = x.astype(jnp.bfloat16)[order // top_k]
    gate, up = jnp.split(lax.ragged_dot(tokens, w_gate_up, group_sizes), 2, axis=-1)
    act = (jax.nn.silu(gate.astype(jnp.float32)) * up.astype(jnp.float32)).astype(jnp.bfloat16)
    out_sorted = lax.ragged_dot(act, w_down, group_sizes).astype(jnp.float32)
    out = jnp.zeros_like(out_sorted).at[order].set(out_sorted).reshape(num_tokens, top_k, -1)
    return jnp.einsum("tk,tkh->th", weights, out)


# --- the float32 reference ------------------------------------------------------------------------
@jax.jit
def reference_moe(x, weights, expert_ids, w_gate, w_up, w_down):
    """float32 MoE, a dense loop over experts: x ``[S, H]``, routing ``[S, k]``, float32 weights
    ``[E, F, H]``, ``[E, F, H]``, ``[E, H, F]`` -> float32 ``[S, H]``."""

    def dot(a, b):
        return jnp.dot(a, b.T, precision=lax.Precision.HIGHEST)

    def expert(y, e):
        coef = jnp.sum(jnp.where(expert_ids == e, weights, 0.0), axis=-1)
        act = jax.nn.silu(dot(x, w_gate[e])) * dot(x, w_up[e])
        return y + coef[:, None] * dot(act, w_down[e]), None

    y, _ = lax.scan(expert, jnp.zeros(x.shape, jnp.float32), jnp.arange(w_gate.shape[0]))
    return y


def errors(got, ref):
    """(normalised error |got - ref| / |ref|, calc_diff = 1 - 2<x,y> / (|x|^2 + |y|^2))."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    return err, 1.0 - 2.0 * np.sum(got * ref) / (np.sum(got * got) + np.sum(ref * ref))


def wall_ms(fn, *args, reps=10):
    """Median wall time of ``reps`` calls after one warm-up call (each waits for its result)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the small CPU-sized block")
    args = parser.parse_args()
    backend = jax.default_backend()
    capabilities = sorted({str(getattr(d, "compute_capability", "")) for d in jax.devices()})
    hopper = backend == "gpu" and capabilities == ["9.0"]
    if hopper:
        device = jax.devices()[0]
    else:
        # jax_dgpt's GEMMs lower to its CUDA kernels on any GPU, and those need sm_90: run the whole
        # example (parameters, inputs and every jitted call) on the CPU device instead.
        device = jax.devices("cpu")[0]
        found = backend if backend != "gpu" else f"gpu, compute capability {', '.join(capabilities)}"
        size = "" if args.small else "falling back to --small, "
        print(f"no Hopper GPU visible (backend: {found}): {size}running on the CPU device with the CPU")
        print("reference of the GEMMs; times are not measured")
    cfg = LARGE if hopper and not args.small else SMALL
    with jax.default_device(device):
        run(cfg, device, hopper)


def run(cfg, device, hopper):
    """Builds the block with ``cfg`` on ``device`` (the default device inside), checks it, times it."""
    hidden, expert_hidden, num_experts = cfg["hidden"], cfg["expert_hidden"], cfg["num_experts"]
    top_k, num_tokens, decode_tokens = cfg["top_k"], cfg["tokens"], cfg["decode"]
    print(
        f"MoE block on {device.device_kind} ({device.platform}): hidden {hidden}, expert hidden "
        f"{expert_hidden}, {num_experts} experts, top-{top_k}, {num_tokens} tokens "
        f"(decode: {decode_tokens} tokens, capacity {decode_tokens})"
    )

    # Float32 weights; the layer quantizes them per expert, ragged_dot gets bf16 copies.
    keys = jax.random.split(jax.random.key(0), 6)
    shape_in, shape_out = (num_experts, expert_hidden, hidden), (num_experts, hidden, expert_hidden)
    w_gate = jax.random.normal(keys[0], shape_in) * hidden**-0.5
    w_up = jax.random.normal(keys[1], shape_in) * hidden**-0.5
    w_down = jax.random.normal(keys[2], shape_out) * expert_hidden**-0.5
    router_kernel = jax.random.normal(keys[3], (hidden, num_experts)) * hidden**-0.5
    router_bias = jnp.zeros((num_experts,), jnp.float32)
    x = jax.random.normal(keys[4], (num_tokens, hidden), jnp.float32).astype(jnp.bfloat16)

    layer = dgnn.MoE(hidden, expert_hidden, num_experts, top_k, rngs=nnx.Rngs(0))
    layer.load_weights(
        w_gate=w_gate,
        w_up=w_up,
        w_down=w_down,
        router_kernel=router_kernel,
        router_bias=router_bias,
    )
    w_gate_up_bf16 = jnp.concatenate([w_gate, w_up], axis=1).transpose(0, 2, 1).astype(jnp.bfloat16)
    w_down_bf16 = w_down.transpose(0, 2, 1).astype(jnp.bfloat16)

    graphdef, state = nnx.split(layer)
    prefill = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    decode = jax.jit(lambda state, x: nnx.merge(graphdef, state).decode(x, decode_tokens))
    ragged = jax.jit(lambda x, w13, w2: ragged_dot_moe(x, router_kernel, router_bias, w13, w2, top_k))

    # The float32 reference on the first tokens, with the layer's routing.
    checked = x[:CHECKED_TOKENS].astype(jnp.float32)
    weights, expert_ids = dgnn.route(checked, router_kernel, router_bias, top_k)
    ref = reference_moe(checked, weights, expert_ids, w_gate, w_up, w_down)
    s, d = min(CHECKED_TOKENS, num_tokens), min(CHECKED_TOKENS, decode_tokens)

    y_prefill = prefill(state, x)
    y_decode, dropped = decode(state, x[:decode_tokens])
    y_ragged = ragged(x, w_gate_up_bf16, w_down_bf16)
    y_ragged_decode = ragged(x[:decode_tokens], w_gate_up_bf16, w_down_bf16)
    rows = [
        ("jax_dgpt fp8 prefill (contiguous)", num_tokens, y_prefill[:s], ref[:s],
         (prefill, state, x)),
        ("jax_dgpt fp8 decode (masked)", decode_tokens, y_decode[:d], ref[:d],
         (decode, state, x[:decode_tokens])),
        ("bf16 ragged_dot prefill", num_tokens, y_ragged[:s], ref[:s],
         (ragged, x, w_gate_up_bf16, w_down_bf16)),
        ("bf16 ragged_dot decode", decode_tokens, y_ragged_decode[:d], ref[:d],
         (ragged, x[:decode_tokens], w_gate_up_bf16, w_down_bf16)),
    ]  # fmt: skip

    print(f"decode dropped assignments: {int(dropped)}")
    print(f"{'path':<36}{'tokens':>7}{'time ms':>10}{'TFLOPS':>9}{'rel err':>10}{'calc_diff':>11}")
    times = {}
    for name, tokens, got, want, (fn, *fn_args) in rows:
        err, diff = errors(got, want)
        timing = "-".rjust(10) + "-".rjust(9)
        if hopper:
            times[name] = ms = wall_ms(fn, *fn_args)
            timing = f"{ms:10.3f}{layer.flops(tokens) / ms / 1e9:9.1f}"
        print(f"{name:<36}{tokens:>7}{timing}{err:10.4f}{diff:11.2e}")
    if hopper:
        for path, fp8_row, bf16_row in (("prefill", 0, 2), ("decode", 1, 3)):
            ratio = times[rows[bf16_row][0]] / times[rows[fp8_row][0]]
            print(f"{path}: jax_dgpt fp8 is {ratio:.2f}x the speed of bf16 ragged_dot")
    print(f"errors: against float32 on the first {CHECKED_TOKENS} tokens, same routing and weights")
    print("(fp8 e4m3 rounds each operand to within 2^-4: expect ~0.065 normalised error for fp8)")
    if hopper:
        print(f"times: median wall time of 10 jitted calls after warm-up, {jax_dgpt.get_num_sms()} SMs")


if __name__ == "__main__":
    main()
