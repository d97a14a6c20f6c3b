"""Per-tensor FP8 (e4m3) quantization and the helpers shared by the layers.

A tensor ``x`` is stored as ``q = fp8(clip(x / s, -448, 448))`` with
``s = max(amax(|x|), 448 * tiny) / 448`` (``tiny``: the smallest normal float32), so that
``x ~= q * s``; a GEMM of two quantized operands is rescaled by the product of their scales.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._ints import static_int
from ..training import ROWWISE, Fp8Recipe

__all__ = [
    "FP8",
    "FP8_MAX",
    "dequantize",
    "inference_only",
    "per_tensor_scale",
    "positive_int",
    "quantize",
    "quantize_per_expert",
    "quantize_per_tensor",
    "training_mode",
]

FP8 = jnp.float8_e4m3fn
# NOTES: the largest finite float8_e4m3fn value; e4m3fn has no infinity, and a cast of anything larger
# gives NaN, hence the clip before every cast (saturating quantization).
FP8_MAX = 448.0


# NOTES: the smallest scale: 2^-126, the smallest normal float32. A smaller amax would give a
# subnormal scale (or 0, where ``amax / 448`` underflows, e.g. amax = 1e-37), and ``x / s`` would
# then be 0 / 0 = NaN for the zeros of x, or divide by zero on a device that flushes subnormals.
MIN_SCALE = float(jnp.finfo(jnp.float32).tiny)


def per_tensor_scale(x: jax.Array, axis: Any = None) -> jax.Array:
    """float32 scale ``max(amax(|x|), 448 * tiny) / 448`` over ``axis`` (all axes: a scalar).

    The scale is never below ``tiny = 2^-126`` (the smallest normal float32): ``x / s`` is always
    finite, and an all-zero (or empty) tensor gets scale ``tiny`` and quantizes to zeros. Values
    of a tensor whose amax is below ``448 * tiny`` are quantized against ``tiny`` (fewer mantissa
    bits, still within the e4m3 rounding bound ``2^-10 * s`` of the subnormal range).
    """
    amax = jnp.max(jnp.abs(x.astype(jnp.float32)), axis=axis, initial=0.0)
    # NOTES: 448 * 2^-126 and its quotient by 448 are exact, so the floor is exactly MIN_SCALE.
    return jnp.maximum(amax, FP8_MAX * MIN_SCALE) / FP8_MAX


def quantize(x: jax.Array, scale: jax.Array) -> jax.Array:
    """float8_e4m3fn ``clip(x / scale, -448, 448)``; ``scale`` broadcasts against ``x``."""
    scaled = x.astype(jnp.float32) / scale
    return jnp.clip(scaled, -FP8_MAX, FP8_MAX).astype(FP8)


def quantize_per_tensor(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Any float array -> (float8_e4m3fn array of the same shape, float32 scalar scale)."""
    scale = per_tensor_scale(x)
    return quantize(x, scale), scale


@jax.jit
def quantize_per_expert(w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Float ``[E, ...]`` -> (float8_e4m3fn ``[E, ...]``, float32 ``[E]``): one scale per expert.

    Jitted so that quantizing a large stack of expert weights fuses into one pass (no float32
    temporaries of the full size besides the input).
    """
    scale = per_tensor_scale(w, axis=tuple(range(1, w.ndim)))
    return quantize(w, scale.reshape((-1,) + (1,) * (w.ndim - 1))), scale


def dequantize(q: jax.Array, scale: jax.Array) -> jax.Array:
    """float32 ``q * scale``; for ``[E, ...]`` weights pass the ``[E]`` scale (it is broadcast)."""
    scale = jnp.asarray(scale, jnp.float32)
    return q.astype(jnp.float32) * scale.reshape(scale.shape + (1,) * (q.ndim - scale.ndim))


_NOT_TRAINABLE = (
    "jax_dgpt.nn layers are inference-only unless built with trainable=True (FP8 training through "
    "jax_dgpt.fp8_matmul / fp8_ragged_dot); this one was not"
)


def inference_only(fn: Callable[..., Any], layer: str, reason: str = _NOT_TRAINABLE) -> Callable[..., Any]:
    """Wraps ``fn`` (array arguments only) so that differentiating it raises NotImplementedError.

    ``reason`` says why the path is forward-only (default: a layer built without ``trainable=True``).

    NOTES: a ``custom_jvp`` whose rule raises: ``jax.grad``, ``jax.vjp``, ``jax.jvp`` and ``nnx.grad``
    all call the JVP rule while tracing, so the user sees this message (instead of a missing
    differentiation rule of an FFI primitive, or a silently wrong gradient through the fp8 casts).
    Arguments that carry no tangent (e.g. under ``stop_gradient``) never reach the rule.
    """
    wrapped = jax.custom_jvp(fn)

    def raise_on_jvp(primals, tangents):
        del primals, tangents
        raise NotImplementedError(
            f"jax_dgpt.nn.{layer}: {reason}; "
            "differentiation (jax.grad, jax.vjp, jax.jvp, nnx.grad) is not supported here. "
            "To differentiate the rest of a model, keep this layer's parameters out of the "
            "differentiated arguments and pass its input through jax.lax.stop_gradient."
        )

    wrapped.defjvp(raise_on_jvp)
    return wrapped


def positive_int(layer: str, name: str, value: Any) -> int:
    """``value`` as a plain Python int, or a TypeError / ValueError naming the layer and the rule.

    Accepts Python and NumPy integers (``operator.index``); rejects bools, floats and traced values
    (shapes must be static).
    """
    if isinstance(value, jax.core.Tracer):
        raise TypeError(f"jax_dgpt.nn.{layer}: {name} must be a static Python int, got a traced value")
    return static_int(f"jax_dgpt.nn.{layer}", name, value, positive=True)


def training_mode(layer: str, trainable: Any, recipe: Any, use_fp8: Any) -> tuple[bool, Fp8Recipe | None, bool]:
    """A layer's (trainable, recipe, use_fp8), checked: recipe and use_fp8 only mean something for a
    trainable layer, whose recipe defaults to row-wise scaling."""
    for name, value in (("trainable", trainable), ("use_fp8", use_fp8)):
        if not isinstance(value, bool):
            raise TypeError(f"jax_dgpt.nn.{layer}: {name} must be a bool, got {type(value).__name__}")
    if recipe is not None and not isinstance(recipe, Fp8Recipe):
        raise TypeError(
            f"jax_dgpt.nn.{layer}: recipe must be None or a jax_dgpt.Fp8Recipe, got {type(recipe).__name__}"
        )
    if not trainable:
        if recipe is not None or not use_fp8:
            raise ValueError(
                f"jax_dgpt.nn.{layer}: recipe and use_fp8 apply to the training path; pass trainable=True "
                "(the inference path always uses per-tensor FP8 scales)"
            )
        return False, None, True
    return True, ROWWISE if recipe is None else recipe, use_fp8
