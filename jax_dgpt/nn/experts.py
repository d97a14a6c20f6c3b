"""The expert weights of :class:`jax_dgpt.nn.MoE`: random FP8 init (inference layers), random float init
(trainable layers), and the per-expert quantization of loaded gate and up weights."""

from __future__ import annotations

import functools
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .quantization import FP8, FP8_MAX, per_tensor_scale, quantize

__all__ = ["quantize_gate_up", "random_float_experts", "random_fp8_experts"]


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


def random_fp8_experts(key: jax.Array, shape: tuple[int, int, int]) -> tuple[jax.Array, jax.Array]:
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
def quantize_gate_up(w_gate: jax.Array, w_up: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Float ``[E, F, H]`` gate and up -> (float8_e4m3fn ``[E, 2F, H]``, float32 ``[E]``).

    The same as :func:`quantize_per_expert` of their concatenation (one amax per expert over both),
    without a float32 copy of the concatenation: each is quantized, then the fp8 halves are joined.
    """
    axes = tuple(range(1, w_gate.ndim))
    scale = jnp.maximum(per_tensor_scale(w_gate, axis=axes), per_tensor_scale(w_up, axis=axes))
    broadcast = scale.reshape((-1,) + (1,) * (w_gate.ndim - 1))
    return jnp.concatenate([quantize(w_gate, broadcast), quantize(w_up, broadcast)], axis=1), scale


def random_float_experts(key: jax.Array, shape: tuple[int, int, int], dtype: jnp.dtype) -> jax.Array:
    """LeCun-normal ``[E, N, K]`` float expert weights (std ``K^-1/2``, K the fan-in) in ``dtype``: the
    parameters of a trainable layer, drawn in one call (their size is the parameters' size)."""
    return (jax.random.normal(key, shape, jnp.float32) * shape[-1] ** -0.5).astype(dtype)
