"""``MoE``: a top-k routed SwiGLU mixture-of-experts block on jax_dgpt's M-grouped FP8 GEMMs.

Prefill (:meth:`MoE.__call__`) sorts the tokens by expert, unpadded, and calls
:func:`jax_dgpt.grouped_gemm_ragged` with the experts' token counts; decode (:meth:`MoE.decode`) packs
them into the masked layout with a fixed per-expert capacity and calls :func:`jax_dgpt.grouped_gemm_masked`.
Both run entirely on the device (no host sync), with static shapes: one compiled program per token count.
The per-tensor activation scale and the per-expert weight scale are fused into the GEMMs (float32 results).

A layer built with ``trainable=True`` keeps float expert weights instead and trains: its prefill is
:func:`moe_train` (:func:`jax_dgpt.fp8_ragged_dot` for gate/up and down, FP8 forward and backward, the router in
float32); its decode quantizes the float weights per expert and stays forward-only.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .. import ops
from ..training import ROWWISE, Fp8Recipe, fp8_ragged_dot, plain_ragged_dot
from .experts import quantize_gate_up, random_float_experts, random_fp8_experts
from .quantization import inference_only, positive_int, quantize_per_expert, quantize_per_tensor, training_mode
from .routing import masked_layout, ragged_layout, route

__all__ = ["MoE", "moe_decode", "moe_prefill", "moe_train"]

_DECODE_FORWARD_ONLY = (
    "MoE.decode (the masked layout, fixed capacity) is forward-only, also in a layer built with trainable=True: "
    "train through MoE.__call__ (the ragged layout, no token dropped)"
)


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


def _combine(
    expert_out: jax.Array, rows: jax.Array, weights: jax.Array, out_dtype: jnp.dtype, readers: jax.Array | None = None
) -> jax.Array:
    """float32 ``[R, H]`` rows, int32 ``[T, k]`` row of each choice, float32 ``[T, k]`` router
    weights -> ``[T, H]`` in ``out_dtype``: each token's weighted sum of its rows (a gather,
    deterministic).

    NOTES: the rows are rounded to ``out_dtype`` (bf16 for a bf16 layer) before the gather, so the
    rows buffer and the gathered ``[T, k, H]`` operand are in the output dtype, not float32; the
    weighted sum is exact float32 arithmetic (elementwise multiply and a k-term sum, not a
    dot_general that may run in TF32 on the GPU), which XLA fuses with the gather into one pass.
    ``readers`` (int32 ``[R, 1]``, the assignment of each row; rows a permutation): the gradient with
    respect to the rows is a gather (:func:`_gather_rows`), not a scatter.
    """
    rounded = expert_out.astype(out_dtype)
    gathered = rounded[rows] if readers is None else _gather_rows(rounded, rows, readers)
    total = jnp.sum(weights[..., None] * gathered.astype(jnp.float32), axis=1)
    return total.astype(out_dtype)


@jax.custom_vjp
def _gather_rows(x: jax.Array, index: jax.Array, readers: jax.Array) -> jax.Array:
    """``x[index]`` (x ``[R, H]``, int index of any shape) whose gradient is a gather too.

    ``readers`` int32 ``[R, m]`` lists, for each row i of x, the m flat positions p of ``index`` with
    ``index[p] == i`` (every row read exactly m times): the dispatch reads each token k times (readers:
    the token's k rows), the combine each expert row once (readers: the row's assignment).

    NOTES: JAX's transpose of a gather is a scatter-add, which XLA runs with atomics (129 us per
    [16384, 1024] bf16 operand on the H200, 18% of an MoE training step: benchmarks.breakdown, run
    0e51a82); the gradient ``dx[i] = sum_j dy[readers[i, j]]`` is a gather and an m-term sum instead.
    """
    return x[index]


def _gather_rows_forward(x, index, readers):
    return x[index], (index, readers)


def _gather_rows_backward(residuals, dy):
    index, readers = residuals
    rows = dy.reshape((-1,) + dy.shape[index.ndim :])[readers]  # [R, m, H]
    dx = rows[:, 0] if readers.shape[1] == 1 else jnp.sum(rows.astype(jnp.float32), axis=1).astype(dy.dtype)
    float0 = jax.dtypes.float0
    return dx, np.zeros(index.shape, float0), np.zeros(readers.shape, float0)


_gather_rows.defvjp(_gather_rows_forward, _gather_rows_backward)


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


def moe_train(
    x,
    router_kernel,
    router_bias,
    w_gate_up,
    w_down,
    *,
    top_k: int,
    recipe: Fp8Recipe = ROWWISE,
    use_fp8: bool = True,
    out_dtype: jnp.dtype | None = None,
    ragged_dot=None,
) -> jax.Array:
    """Differentiable MoE forward on the ragged layout (functional form of a trainable :meth:`MoE.__call__`).

    Args:
      x: bfloat16 or float32 ``[T, H]``.
      router_kernel, router_bias: float ``[H, E]``, ``[E]`` (the router runs in float32, HIGHEST precision).
      w_gate_up: float ``[E, 2F, H]`` (rows ``[:F]`` gate, ``[F:]`` up); w_down: float ``[E, H, F]``.
      top_k: static; recipe: static :class:`jax_dgpt.Fp8Recipe`; use_fp8: static, False runs
        :func:`jax_dgpt.training.plain_ragged_dot` (``jax.lax.ragged_dot`` in x's dtype) instead of
        :func:`jax_dgpt.fp8_ragged_dot`: the high-precision twin.
      out_dtype: static dtype of the result (None: x's).
      ragged_dot: optional ``(x [M, K], w [G, N, K], group_sizes [G]) -> [M, N]`` for both expert GEMMs instead
        (another implementation to compare with, e.g. in a benchmark); recipe and use_fp8 are then unused.

    Returns ``[T, H]``. Gradients reach x, both expert weights (FP8 dgrad and wgrad GEMMs) and the router
    (through the renormalised top-k weights of the combine; the expert choice itself has no gradient).
    The expert GEMMs' outputs are in x's dtype; SwiGLU runs in float32 and is rounded to x's dtype.
    """
    num_experts = w_gate_up.shape[0]
    weights, expert_ids = route(x, router_kernel, router_bias, top_k)
    layout = ragged_layout(expert_ids, num_experts)
    dot = ragged_dot or (functools.partial(fp8_ragged_dot, recipe=recipe) if use_fp8 else plain_ragged_dot)
    rows = layout.rows.reshape(expert_ids.shape)  # [T, k]
    # Dispatch: the tokens sorted by expert (a gather; its gradient gathers and sums each token's k rows).
    gate_up = dot(_gather_rows(x, layout.row_token, rows), w_gate_up, layout.group_sizes)
    gate, up = jnp.split(gate_up.astype(jnp.float32), 2, axis=-1)
    act = (jax.nn.silu(gate) * up).astype(x.dtype)
    out = dot(act, w_down, layout.group_sizes)
    return _combine(out, rows, weights, out_dtype or x.dtype, readers=layout.row_assignment[:, None])


# --- the layer ------------------------------------------------------------------------------------
class MoE(nnx.Module):
    """Top-k routed SwiGLU mixture of experts on FP8 grouped GEMMs; inference-only or trainable.

    ``y[t] = sum_j w[t, j] * down_e(silu(gate_e(x[t])) * up_e(x[t]))`` over the token's top-k
    experts ``e = ids[t, j]``, where ``w`` are the chosen softmax probabilities renormalised to sum
    to 1 (see :func:`jax_dgpt.nn.route`).

    Parameters (``nnx.Param``), in both modes: router_kernel ``[hidden, num_experts]`` and router_bias
    ``[num_experts]`` in ``router_dtype`` (the router runs in float32); the experts' w_gate_up
    ``[E, 2 * expert_hidden, hidden]`` (gate rows then up rows) and w_down ``[E, hidden, expert_hidden]``
    ("out, in" per expert).

    Inference (default, ``trainable=False``): the expert weights are float8_e4m3fn with per-expert amax
    scales w_gate_up_scale, w_down_scale float32 ``[E]`` (``w ~= q * scale[e]``). At construction
    they are LeCun normal (std ``fan_in^-1/2``) discretised to 256 equiprobable levels (one random byte
    per weight), drawn one expert at a time into the FP8 parameters, with every expert's scale the
    largest level's; :meth:`load_weights` quantizes real ones. Activations are quantized per tensor:
    the input once, the SwiGLU output once (amax over all valid rows of all experts); the scales are
    fused into the GEMMs (float32 results). Each expert row is rounded to the input's dtype and a
    token's k rows are weighted and summed in float32. Differentiating raises NotImplementedError.

    Training (``trainable=True``): the expert weights are float (``param_dtype``, LeCun normal, no
    scales) and the prefill is :func:`moe_train`: :func:`jax_dgpt.fp8_ragged_dot` with ``recipe`` for
    gate/up and down (FP8 forward, dgrad and wgrad; default row-wise scaling), differentiable in x, the
    expert weights and the router (``nnx.grad``, optax). ``use_fp8=False`` runs ``jax.lax.ragged_dot`` in
    the input's dtype instead (the high-precision twin of the same parameters). :meth:`decode` quantizes
    the float weights per expert and runs the inference decode: it stays forward-only (NotImplementedError
    under differentiation).
    """

    def __init__(
        self,
        hidden: int,
        expert_hidden: int,
        num_experts: int,
        top_k: int,
        *,
        router_dtype: jnp.dtype = jnp.float32,
        trainable: bool = False,
        param_dtype: jnp.dtype | None = None,
        recipe: Fp8Recipe | None = None,
        use_fp8: bool = True,
        rngs: nnx.Rngs,
    ):
        hidden = positive_int("MoE", "hidden", hidden)
        expert_hidden = positive_int("MoE", "expert_hidden", expert_hidden)
        num_experts = positive_int("MoE", "num_experts", num_experts)
        top_k = positive_int("MoE", "top_k", top_k)
        if top_k > num_experts:
            raise ValueError(f"jax_dgpt.nn.MoE: top_k ({top_k}) > num_experts ({num_experts})")
        self.trainable, self.recipe, self.use_fp8 = training_mode("MoE", trainable, recipe, use_fp8)
        param_dtype = _expert_param_dtype(self.trainable, param_dtype)
        self.hidden, self.expert_hidden = hidden, expert_hidden
        self.num_experts, self.top_k = num_experts, top_k
        router_init = nnx.initializers.lecun_normal()
        self.router_kernel = nnx.Param(router_init(rngs.params(), (hidden, num_experts), router_dtype))
        self.router_bias = nnx.Param(jnp.zeros((num_experts,), router_dtype))
        shapes = (num_experts, 2 * expert_hidden, hidden), (num_experts, hidden, expert_hidden)
        if self.trainable:
            self.w_gate_up, self.w_down = (
                nnx.Param(random_float_experts(rngs.params(), s, param_dtype)) for s in shapes
            )
            self.w_gate_up_scale = self.w_down_scale = None
            return
        (w13, s13), (w2, s2) = (random_fp8_experts(rngs.params(), s) for s in shapes)
        self.w_gate_up, self.w_gate_up_scale = nnx.Param(w13), nnx.Param(s13)
        self.w_down, self.w_down_scale = nnx.Param(w2), nnx.Param(s2)

    def load_weights(self, *, w_gate, w_up, w_down, router_kernel=None, router_bias=None) -> None:
        """Stores float expert weights in the layer (quantized per expert, or as they are in a trainable
        layer, cast to its parameter dtype); routers are copied as given.

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
        if self.trainable:
            dtype = self.w_gate_up.dtype
            self.w_gate_up[...] = jnp.concatenate([jnp.asarray(w_gate), jnp.asarray(w_up)], axis=1).astype(dtype)
            self.w_down[...] = jnp.asarray(w_down).astype(dtype)
        else:
            w13, s13 = quantize_gate_up(w_gate, w_up)
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

    def _fp8_weights(self) -> tuple[jax.Array, ...]:
        """The inference paths' operands: routers, FP8 experts and their per-expert scales."""
        router = (self.router_kernel[...], self.router_bias[...])
        if self.trainable:  # quantized on the fly from the float parameters (forward-only)
            (w13, s13), (w2, s2) = quantize_per_expert(self.w_gate_up[...]), quantize_per_expert(self.w_down[...])
            return (*router, w13, s13, w2, s2)
        return (*router, self.w_gate_up[...], self.w_gate_up_scale[...], self.w_down[...], self.w_down_scale[...])

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
        so the program compiles once per T. Differentiable in a trainable layer (:func:`moe_train`).
        """
        tokens = self._tokens(x)
        if tokens.shape[0] == 0:
            return jnp.zeros(x.shape, x.dtype)
        if self.trainable:
            weights = (self.router_kernel[...], self.router_bias[...], self.w_gate_up[...], self.w_down[...])
            y = moe_train(tokens, *weights, top_k=self.top_k, recipe=self.recipe, use_fp8=self.use_fp8)
            return y.reshape(x.shape)
        fn = inference_only(functools.partial(moe_prefill, top_k=self.top_k, out_dtype=x.dtype), "MoE")
        return fn(tokens, *self._fp8_weights()).reshape(x.shape)

    def decode(self, x: jax.Array, capacity: int) -> tuple[jax.Array, jax.Array]:
        """Decode: float ``[..., hidden]`` and a static per-expert ``capacity`` -> (``[..., hidden]``
        in ``x.dtype``, int32 scalar number of dropped (token, expert) assignments).

        Each expert takes its first ``capacity`` assignments in token order into an
        ``[E, capacity, hidden]`` buffer; ``masked_m = min(count, capacity)`` stays on the device.
        A dropped assignment contributes nothing (the token's other experts keep their weights).
        ``capacity >= T`` never drops. Compiles once per (T, capacity); no host sync. Forward-only in
        both modes (a trainable layer's float weights are quantized per expert first).
        """
        capacity = positive_int("MoE", "capacity", capacity)
        tokens = self._tokens(x)
        if tokens.shape[0] == 0:
            return jnp.zeros(x.shape, x.dtype), jnp.int32(0)
        reason = {"reason": _DECODE_FORWARD_ONLY} if self.trainable else {}
        fn = inference_only(
            functools.partial(moe_decode, top_k=self.top_k, capacity=capacity, out_dtype=x.dtype), "MoE", **reason
        )
        y, dropped = fn(tokens, *self._fp8_weights())
        return y.reshape(x.shape), dropped

    def flops(self, num_tokens: int) -> int:
        """Useful FLOPs of the expert GEMMs' forward for ``num_tokens`` tokens (no padding rows); a
        training step (forward, dgrad, wgrad) does three times as many."""
        return 2 * num_tokens * self.top_k * 3 * self.expert_hidden * self.hidden


def _expert_param_dtype(trainable: bool, param_dtype) -> jnp.dtype | None:
    """A trainable layer's float expert dtype (default float32); an inference layer's are FP8 (none given)."""
    if not trainable:
        if param_dtype is not None:
            raise ValueError(
                "jax_dgpt.nn.MoE: param_dtype applies to trainable layers (an inference layer stores FP8 experts); "
                "pass trainable=True"
            )
        return None
    dtype = jnp.float32 if param_dtype is None else param_dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"jax_dgpt.nn.MoE: param_dtype must be a float dtype, got {param_dtype}")
    return dtype
