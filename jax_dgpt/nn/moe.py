"""``MoE``: a top-k routed SwiGLU mixture-of-experts block on jax_dgpt's M-grouped FP8 GEMMs.

Prefill (:meth:`MoE.__call__`) sorts the tokens by expert, unpadded, and calls
:func:`jax_dgpt.grouped_gemm_ragged` with the experts' token counts; decode (:meth:`MoE.decode`) packs
them into the masked layout with a fixed per-expert capacity and calls :func:`jax_dgpt.grouped_gemm_masked`.
Both run entirely on the device (no host sync), with static shapes: one compiled program per token count.
The per-tensor activation scale and the per-expert weight scale are fused into the GEMMs (float32 results).
"""

from __future__ import annotations

import functools
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from .. import ops
from .quantization import (
    FP8,
    FP8_MAX,
    inference_only,
    per_tensor_scale,
    positive_int,
    quantize,
    quantize_per_expert,
    quantize_per_tensor,
)
from .routing import masked_layout, ragged_layout, route

__all__ = ["MoE", "moe_decode", "moe_prefill"]


# --- the expert computation, shared by both layouts -----------------------------------------------
def _valid_rows(out: jax.Array, valid: jax.Array) -> jax.Array:
    """GEMM rows with the invalid ones set to exact zeros.

    NOTES: ``where``, not a multiply by 0: rows of the masked layout past ``masked_m`` are left
    unwritten by the GPU kernel and may hold NaN or Inf.
    """
    return jnp.where(valid[..., None], out, 0.0)


def _swiglu_quantized(gate_up: jax.Array) -> tuple[jax.Array, jax.Array]:
    """float32 ``[..., 2F]`` (gate | up) -> quantized ``silu(gate) * up`` ``[..., F]`` and scale."""
    gate, up = jnp.split(gate_up, 2, axis=-1)
    return quantize_per_tensor(jax.nn.silu(gate) * up)


def _combine(expert_out: jax.Array, rows: jax.Array, weights: jax.Array, out_dtype: jnp.dtype) -> jax.Array:
    """float32 ``[R, H]`` rows, int32 ``[T, k]`` row of each choice, float32 ``[T, k]`` router
    weights -> ``[T, H]`` in ``out_dtype``: each token's weighted sum of its rows (a gather,
    deterministic).

    NOTES: the rows are rounded to ``out_dtype`` (bf16 for a bf16 layer) before the gather, so the
    rows buffer and the gathered ``[T, k, H]`` operand are in the output dtype, not float32; the
    weighted sum is exact float32 arithmetic (elementwise multiply and a k-term sum, not a
    dot_general that may run in TF32 on the GPU), which XLA fuses with the gather into one pass.
    """
    gathered = expert_out.astype(out_dtype)[rows]
    total = jnp.sum(weights[..., None] * gathered.astype(jnp.float32), axis=1)
    return total.astype(out_dtype)


def _with_zero_row(x: jax.Array) -> jax.Array:
    """``[R, H]`` -> ``[R + 1, H]``: row R is zeros, the target of padding / dropped indices."""
    return jnp.concatenate([x, jnp.zeros((1, x.shape[1]), x.dtype)])


def moe_prefill(
    x,
    router_kernel,
    router_bias,
    w_gate_up,
    gate_up_scale,
    w_down,
    down_scale,
    *,
    top_k: int,
    out_dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """MoE forward on the tokens sorted by expert, unpadded (functional form of :meth:`MoE.__call__`).

    Args:
      x: float ``[T, H]``.
      router_kernel, router_bias: float ``[H, E]``, ``[E]``.
      w_gate_up: float8_e4m3fn ``[E, 2F, H]`` (rows ``[:F]`` gate, ``[F:]`` up; H contiguous),
        gate_up_scale: float32 ``[E]``.
      w_down: float8_e4m3fn ``[E, H, F]`` (F contiguous), down_scale: float32 ``[E]``.
      top_k: static.
      out_dtype: static dtype of the result (the layer passes ``x.dtype``); the combine gathers
        the expert rows in this dtype and sums them in float32.

    Returns:
      ``[T, H]`` in ``out_dtype``.
    """
    num_experts = w_gate_up.shape[0]
    weights, expert_ids = route(x, router_kernel, router_bias, top_k)
    layout = ragged_layout(expert_ids, num_experts)
    # Dispatch: gather the quantized tokens into the expert-sorted [T*k, H] buffer (no padding rows).
    xq, x_scale = quantize_per_tensor(x)
    a = xq[layout.row_token]
    f32 = jnp.float32
    gate_up = ops.grouped_gemm_ragged(
        a, w_gate_up, layout.group_sizes, scale_a=x_scale, scale_b=gate_up_scale, out_dtype=f32
    )
    act, act_scale = _swiglu_quantized(gate_up)
    out = ops.grouped_gemm_ragged(act, w_down, layout.group_sizes, scale_a=act_scale, scale_b=down_scale, out_dtype=f32)
    return _combine(out, layout.rows.reshape(expert_ids.shape), weights, out_dtype)


def moe_decode(
    x,
    router_kernel,
    router_bias,
    w_gate_up,
    gate_up_scale,
    w_down,
    down_scale,
    *,
    top_k: int,
    capacity: int,
    out_dtype: jnp.dtype = jnp.float32,
) -> tuple[jax.Array, jax.Array]:
    """MoE forward in the masked layout (functional form of :meth:`MoE.decode`).

    Arguments as in :func:`moe_prefill`, plus the static per-expert ``capacity``. Returns
    (``[T, H]`` in ``out_dtype``, int32 scalar number of dropped assignments).
    """
    num_tokens, hidden = x.shape
    num_experts = w_gate_up.shape[0]
    weights, expert_ids = route(x, router_kernel, router_bias, top_k)
    layout = masked_layout(expert_ids, num_experts, capacity)
    valid = jnp.arange(capacity)[None, :] < layout.masked_m[:, None]
    expected_m = max(1, num_tokens * top_k // num_experts)
    # Dispatch: gather the quantized tokens into the [E, capacity, H] buffer.
    xq, x_scale = quantize_per_tensor(x)
    a = _with_zero_row(xq)[layout.slot_token].reshape(num_experts, capacity, hidden)
    f32 = jnp.float32
    gate_up = ops.grouped_gemm_masked(
        a, w_gate_up, layout.masked_m, expected_m, scale_a=x_scale, scale_b=gate_up_scale, out_dtype=f32
    )
    act, act_scale = _swiglu_quantized(_valid_rows(gate_up, valid))
    out = ops.grouped_gemm_masked(
        act, w_down, layout.masked_m, expected_m, scale_a=act_scale, scale_b=down_scale, out_dtype=f32
    )
    out = _valid_rows(out, valid)
    out = _with_zero_row(out.reshape(num_experts * capacity, hidden))
    slots = layout.slots.reshape(expert_ids.shape)
    return _combine(out, slots, weights, out_dtype), layout.dropped


# --- the layer ------------------------------------------------------------------------------------
def _normal_levels(count: int) -> np.ndarray:
    """float64 ``[count]``: the standard normal's quantiles at ``(i + 1/2) / count``, rescaled to
    variance 1 (equiprobable levels of a discretised N(0, 1)), in increasing order."""
    normal = statistics.NormalDist()
    levels = np.array([normal.inv_cdf((i + 0.5) / count) for i in range(count)], np.float64)
    return levels / np.sqrt(np.mean(levels**2))


# NOTES: the random init draws one byte per weight (XLA's own threefry through lax.rng_bit_generator,
# several times faster on a CPU than jax.random's threefry written in jnp) and maps it through a
# constant table to the FP8 code of one of 256 equiprobable normal levels, quantized against the
# largest level; each expert's scale is that level's amax. No float32 weight is ever materialised
# and experts are drawn one at a time: the previous init (a float32 normal for the whole stack,
# then quantize_per_expert) peaked at 15.9 GB and took minutes for the README's 64-expert layer.
_INIT_LEVELS = _normal_levels(256)
_INIT_AMAX = float(np.max(np.abs(_INIT_LEVELS)))  # ~2.9 (in units of the std)
_INIT_CODES = (_INIT_LEVELS * (FP8_MAX / _INIT_AMAX)).astype(FP8).view(np.uint8)
_THREEFRY = lax.RandomAlgorithm.RNG_THREE_FRY


@functools.partial(jax.jit, static_argnames=("shape",))
def _random_fp8_expert(seed: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """uint8 ``[N, K]``: the FP8 codes (bit patterns) of one expert's random weights (see NOTES)."""
    n, k = shape
    _, words = lax.rng_bit_generator(seed, (n, (k + 3) // 4), jnp.uint32, algorithm=_THREEFRY)
    codes = jnp.stack([(words >> shift) & 0xFF for shift in (0, 8, 16, 24)], axis=-1).reshape(n, -1)[:, :k]
    return jnp.asarray(_INIT_CODES)[codes]


# NOTES: the stack is built as uint8 and reinterpreted once at the end: XLA's CPU backend has no FP8
# dynamic-update-slice and would widen the whole stack to float16 (a copy) for every expert.
@functools.partial(jax.jit, donate_argnums=0)
def _set_expert(codes: jax.Array, expert: jax.Array, index: jax.Array) -> jax.Array:
    return lax.dynamic_update_index_in_dim(codes, expert, index, axis=0)


@jax.jit
def _as_fp8(codes: jax.Array) -> jax.Array:
    return lax.bitcast_convert_type(codes, FP8)


def _random_fp8_experts(key: jax.Array, shape: tuple[int, int, int]) -> tuple[jax.Array, jax.Array]:
    """LeCun-normal ``[E, N, K]`` expert weights (std ``K^-1/2``) as FP8 codes and ``[E]`` scales.

    Each weight is one of 256 equiprobable levels of the normal distribution (one random byte per
    weight) times ``K^-1/2``; every expert's scale is the largest level's (``~2.9 K^-1/2 / 448``),
    which is the expert's amax as soon as it has a few thousand weights. One expert at a time (a
    seed per expert from ``key``), written in place into a uint8 stack; the temporaries are one
    expert's random bytes and, at the end, one copy of the stack (reinterpreted as FP8).
    """
    num_experts, n, k = shape
    seeds = jax.random.bits(key, (num_experts, 4), jnp.uint32)
    codes = jnp.zeros(shape, jnp.uint8)
    for index in range(num_experts):
        codes = _set_expert(codes, _random_fp8_expert(seeds[index], (n, k)), index)
    scale = jnp.full((num_experts,), _INIT_AMAX * k**-0.5 / FP8_MAX, jnp.float32)
    return _as_fp8(codes), scale


@jax.jit
def _quantize_gate_up(w_gate: jax.Array, w_up: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Float ``[E, F, H]`` gate and up -> (float8_e4m3fn ``[E, 2F, H]``, float32 ``[E]``).

    The same as :func:`quantize_per_expert` of their concatenation (one amax per expert over both),
    without a float32 copy of the concatenation: each is quantized, then the fp8 halves are joined.
    """
    axes = tuple(range(1, w_gate.ndim))
    scale = jnp.maximum(per_tensor_scale(w_gate, axis=axes), per_tensor_scale(w_up, axis=axes))
    broadcast = scale.reshape((-1,) + (1,) * (w_gate.ndim - 1))
    return jnp.concatenate([quantize(w_gate, broadcast), quantize(w_up, broadcast)], axis=1), scale


class MoE(nnx.Module):
    """Top-k routed SwiGLU mixture of experts with FP8 expert weights (inference only).

    ``y[t] = sum_j w[t, j] * down_e(silu(gate_e(x[t])) * up_e(x[t]))`` over the token's top-k
    experts ``e = ids[t, j]``, where ``w`` are the chosen softmax probabilities renormalised to sum
    to 1 (see :func:`jax_dgpt.nn.route`).

    Parameters (``nnx.Param``):
      router_kernel ``[hidden, num_experts]`` and router_bias ``[num_experts]`` in ``router_dtype``
        (the router runs in float32);
      w_gate_up float8_e4m3fn ``[E, 2 * expert_hidden, hidden]`` (gate rows then up rows) with
        w_gate_up_scale float32 ``[E]``; w_down float8_e4m3fn ``[E, hidden, expert_hidden]`` with
        w_down_scale float32 ``[E]``: per-expert amax scales, ``w ~= q * scale[e]``.
    Weights are random at construction: LeCun normal (std ``fan_in^-1/2``) discretised to 256
    equiprobable levels (one random byte per weight), drawn one expert at a time into the FP8
    parameters, with every expert's scale the largest level's; :meth:`load_weights` quantizes real
    ones.

    Activations are quantized per tensor: the input once, the SwiGLU output once (amax over all
    valid rows of all experts). GEMM outputs (bf16) are rescaled per row by ``s_act * s_w[e]`` in
    float32; the output has the input's dtype: each expert row is rounded to it, and a token's
    k rows are weighted and summed in float32. Under differentiation the layer raises
    NotImplementedError.
    """

    def __init__(
        self,
        hidden: int,
        expert_hidden: int,
        num_experts: int,
        top_k: int,
        *,
        router_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        hidden = positive_int("MoE", "hidden", hidden)
        expert_hidden = positive_int("MoE", "expert_hidden", expert_hidden)
        num_experts = positive_int("MoE", "num_experts", num_experts)
        top_k = positive_int("MoE", "top_k", top_k)
        if top_k > num_experts:
            raise ValueError(f"jax_dgpt.nn.MoE: top_k ({top_k}) > num_experts ({num_experts})")
        self.hidden, self.expert_hidden = hidden, expert_hidden
        self.num_experts, self.top_k = num_experts, top_k
        router_init = nnx.initializers.lecun_normal()
        self.router_kernel = nnx.Param(router_init(rngs.params(), (hidden, num_experts), router_dtype))
        self.router_bias = nnx.Param(jnp.zeros((num_experts,), router_dtype))
        w13, s13 = _random_fp8_experts(rngs.params(), (num_experts, 2 * expert_hidden, hidden))
        w2, s2 = _random_fp8_experts(rngs.params(), (num_experts, hidden, expert_hidden))
        self.w_gate_up, self.w_gate_up_scale = nnx.Param(w13), nnx.Param(s13)
        self.w_down, self.w_down_scale = nnx.Param(w2), nnx.Param(s2)

    def load_weights(self, *, w_gate, w_up, w_down, router_kernel=None, router_bias=None) -> None:
        """Quantizes float expert weights (per expert) into the layer; routers are copied as given.

        Args: w_gate, w_up float ``[E, expert_hidden, hidden]`` and w_down float ``[E, hidden,
        expert_hidden]`` ("out, in" per expert, like ``Fp8Dense.kernel``); optional router_kernel
        ``[hidden, E]`` and router_bias ``[E]`` (cast to the router's dtype).
        """
        e, f, h = self.num_experts, self.expert_hidden, self.hidden
        for name, w, shape in (
            ("w_gate", w_gate, (e, f, h)),
            ("w_up", w_up, (e, f, h)),
            ("w_down", w_down, (e, h, f)),
        ):
            if tuple(w.shape) != shape:
                raise ValueError(f"jax_dgpt.nn.MoE.load_weights: {name} must have shape {shape}, got {tuple(w.shape)}")
        w13, s13 = _quantize_gate_up(w_gate, w_up)
        w2, s2 = quantize_per_expert(jnp.asarray(w_down))
        self.w_gate_up[...], self.w_gate_up_scale[...] = w13, s13
        self.w_down[...], self.w_down_scale[...] = w2, s2
        for param, value in ((self.router_kernel, router_kernel), (self.router_bias, router_bias)):
            if value is not None:
                if tuple(value.shape) != param.shape:
                    raise ValueError(
                        f"jax_dgpt.nn.MoE.load_weights: router shape must be {param.shape}, got {tuple(value.shape)}"
                    )
                param[...] = jnp.asarray(value, param.dtype)

    def _weights(self) -> tuple[jax.Array, ...]:
        return (
            self.router_kernel[...],
            self.router_bias[...],
            self.w_gate_up[...],
            self.w_gate_up_scale[...],
            self.w_down[...],
            self.w_down_scale[...],
        )

    def _tokens(self, x: jax.Array) -> jax.Array:
        if x.ndim < 1 or x.shape[-1] != self.hidden:
            raise ValueError(f"jax_dgpt.nn.MoE: x must have shape [..., {self.hidden}] (hidden), got {tuple(x.shape)}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"jax_dgpt.nn.MoE: x must be a float array, got {x.dtype}")
        return x.reshape(-1, self.hidden)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Prefill: float ``[..., hidden]`` -> ``[..., hidden]`` (``x.dtype``); no token is dropped.

        Tokens (leading dims flattened: T) are sorted by expert, T*k rows with no padding
        (:func:`jax_dgpt.nn.routing.ragged_layout`), and the experts' token counts stay on the device,
        so the program compiles once per T.
        """
        tokens = self._tokens(x)
        if tokens.shape[0] == 0:
            return jnp.zeros(x.shape, x.dtype)
        fn = inference_only(functools.partial(moe_prefill, top_k=self.top_k, out_dtype=x.dtype), "MoE")
        return fn(tokens, *self._weights()).reshape(x.shape)

    def decode(self, x: jax.Array, capacity: int) -> tuple[jax.Array, jax.Array]:
        """Decode: float ``[..., hidden]`` and a static per-expert ``capacity`` -> (``[..., hidden]``
        in ``x.dtype``, int32 scalar number of dropped (token, expert) assignments).

        Each expert takes its first ``capacity`` assignments in token order into an
        ``[E, capacity, hidden]`` buffer; ``masked_m = min(count, capacity)`` stays on the device.
        A dropped assignment contributes nothing (the token's other experts keep their weights).
        ``capacity >= T`` never drops. Compiles once per (T, capacity); no host sync.
        """
        capacity = positive_int("MoE", "capacity", capacity)
        tokens = self._tokens(x)
        if tokens.shape[0] == 0:
            return jnp.zeros(x.shape, x.dtype), jnp.int32(0)
        fn = inference_only(
            functools.partial(moe_decode, top_k=self.top_k, capacity=capacity, out_dtype=x.dtype),
            "MoE",
        )
        y, dropped = fn(tokens, *self._weights())
        return y.reshape(x.shape), dropped

    def flops(self, num_tokens: int) -> int:
        """Useful FLOPs of the expert GEMMs for ``num_tokens`` tokens (no padding rows)."""
        return 2 * num_tokens * self.top_k * 3 * self.expert_hidden * self.hidden
