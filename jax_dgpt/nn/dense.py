"""``Fp8Dense``: a linear layer whose matmul runs as an FP8 GEMM.

Two modes, one parameter layout (``kernel [out, in]`` and ``bias [out]`` in ``param_dtype``):
inference (the default: :func:`fp8_dense`, per-tensor scales, forward-only) and training
(``trainable=True``: :func:`dense_train`, i.e. :func:`jax_dgpt.fp8_matmul` with a scaling recipe,
differentiable in x, kernel and bias).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from .. import ops
from ..training import ROWWISE, Fp8Recipe, fp8_matmul, plain_matmul
from .quantization import inference_only, positive_int, quantize_per_tensor, training_mode

__all__ = ["Fp8Dense", "dense_train", "fp8_dense"]

# The kernel is [out, in]: fan-in is the last axis.
_KERNEL_INIT = nnx.initializers.lecun_normal(in_axis=-1, out_axis=-2)
_BIAS_INIT = nnx.initializers.zeros_init()


def fp8_dense(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """``x . kernel^T + bias`` through one FP8 GEMM with per-tensor scales (functional form).

    Args:
      x: float ``[..., K]`` (any leading dims, flattened to M rows for the GEMM).
      kernel: float ``[N, K]`` ("out, in", K contiguous: already the GEMM's B operand).
      bias: optional float ``[N]``, added in float32 after the scales.

    Returns:
      ``[..., N]`` in ``x.dtype``. x and kernel are each quantized to float8_e4m3fn with their own
      amax scale (``s = max(amax, 448 * tiny) / 448``, saturating), multiplied by
      :func:`jax_dgpt.gemm` (fp32 accumulation, bfloat16 result), and the bf16 result is rescaled
      by ``s_x * s_w`` in float32.
      An empty x (a leading dim of 0) gives an empty ``[..., N]`` result.
      Inference only: differentiating raises NotImplementedError.

    Raises:
      ValueError: x's last dim is not K (kernel's in_features), kernel is not 2-D, or bias is not
        ``[N]``.
      TypeError: x, kernel or bias is not a float array.
    """
    x, kernel, bias = _checked(x, kernel, bias)
    args = (x, kernel) if bias is None else (x, kernel, bias)
    return inference_only(functools.partial(_fp8_dense, out_dtype=x.dtype), "Fp8Dense")(*args)


def dense_train(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    recipe: Fp8Recipe = ROWWISE,
    use_fp8: bool = True,
) -> jax.Array:
    """Differentiable ``x . kernel^T + bias`` (functional form of a trainable :class:`Fp8Dense`).

    Args: as :func:`fp8_dense` (x bfloat16 or float32 for the FP8 path); ``recipe``: the static
    :class:`jax_dgpt.Fp8Recipe`; ``use_fp8=False`` runs :func:`jax_dgpt.training.plain_matmul` instead
    (one XLA dot in x's dtype: the high-precision twin with the same parameters).

    Returns ``[..., N]`` in x's dtype: :func:`jax_dgpt.fp8_matmul` (its straight-through gradients), then
    the bias added in float32 and the sum rounded to x's dtype.
    """
    x, kernel, bias = _checked(x, kernel, bias)
    y = fp8_matmul(x, kernel, recipe=recipe) if use_fp8 else plain_matmul(x, kernel)
    if bias is None:
        return y
    return (y.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def _checked(x, kernel, bias):
    """(x, kernel, bias) as arrays, or the ValueError / TypeError that names the rule."""
    x, kernel = jnp.asarray(x), jnp.asarray(kernel)
    if kernel.ndim != 2:
        raise ValueError(
            f"jax_dgpt.nn.Fp8Dense: kernel must be 2-D [out_features, in_features], got shape {tuple(kernel.shape)}"
        )
    out_features, in_features = kernel.shape
    if x.ndim < 1 or x.shape[-1] != in_features:
        raise ValueError(
            f"jax_dgpt.nn.Fp8Dense: x must have shape [..., {in_features}] (its last dim must "
            f"equal in_features), got {tuple(x.shape)}"
        )
    if bias is not None:
        bias = jnp.asarray(bias)
        if tuple(bias.shape) != (out_features,):
            raise ValueError(
                f"jax_dgpt.nn.Fp8Dense: bias must have shape ({out_features},) (out_features), got {tuple(bias.shape)}"
            )
    for name, array in (("x", x), ("kernel", kernel), ("bias", bias)):
        if array is not None and not jnp.issubdtype(array.dtype, jnp.floating):
            raise TypeError(f"jax_dgpt.nn.Fp8Dense: {name} must be a float array, got {array.dtype}")
    return x, kernel, bias


def _fp8_dense(x, kernel, bias=None, *, out_dtype):
    # NOTES: M = 0 (an empty x) needs no special case: the amax of an empty tensor is 0 (the
    # reduction's initial value) and jax_dgpt.gemm returns an empty [0, N] result.
    lead = x.shape[:-1]
    xq, x_scale = quantize_per_tensor(x.reshape(-1, x.shape[-1]))
    wq, w_scale = quantize_per_tensor(kernel)
    y = ops.gemm(xq, wq).astype(jnp.float32) * (x_scale * w_scale)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(out_dtype).reshape(lead + (kernel.shape[0],))


class Fp8Dense(nnx.Module):
    """Linear layer ``y = x W^T + b`` computed as an FP8 (e4m3) GEMM.

    The weight is kept in ``param_dtype`` (float32 or bfloat16) as ``kernel [out_features,
    in_features]`` ("out, in": K contiguous, the B operand of :func:`jax_dgpt.gemm` as is), with the
    optional ``bias [out_features]``, and is quantized on every call, like the input. Two modes:

    - inference (default, ``trainable=False``): per-tensor scales ``s = max(amax(|t|), 448 * tiny) /
      448`` (never below the smallest normal float32, so never 0), ``q = fp8(clip(t / s, -448, 448))``;
      the GEMM gives bfloat16 ``xq . wq^T``, rescaled by ``s_x * s_w`` in float32; the bias is added in
      float32. Forward-only: ``jax.grad`` through the layer raises NotImplementedError.
    - training (``trainable=True``): :func:`jax_dgpt.fp8_matmul` with ``recipe`` (default row-wise:
      per token and per output channel, scales fused into the GEMM); differentiable in x, kernel and
      bias (``nnx.grad``, optax), with the straight-through FP8 backward described there. x must then be
      bfloat16 or float32. ``use_fp8=False`` keeps everything but runs one XLA dot in x's dtype instead:
      the high-precision twin of the same parameters (a reference, e.g. bf16 training).

    Input: float ``[..., in_features]`` (leading dims flattened into the GEMM's M; M may be 0).
    Output: ``[..., out_features]``, ``x.dtype``.

    ``in_features`` and ``out_features`` must be positive ints (TypeError / ValueError otherwise);
    ``recipe`` and ``use_fp8`` need ``trainable=True`` (ValueError otherwise).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        param_dtype: jnp.dtype = jnp.float32,
        kernel_init: nnx.Initializer = _KERNEL_INIT,
        bias_init: nnx.Initializer = _BIAS_INIT,
        trainable: bool = False,
        recipe: Fp8Recipe | None = None,
        use_fp8: bool = True,
        rngs: nnx.Rngs,
    ):
        in_features = positive_int("Fp8Dense", "in_features", in_features)
        out_features = positive_int("Fp8Dense", "out_features", out_features)
        if not jnp.issubdtype(param_dtype, jnp.floating):
            raise TypeError(f"jax_dgpt.nn.Fp8Dense: param_dtype must be a float dtype, got {param_dtype}")
        self.in_features = in_features
        self.out_features = out_features
        self.trainable, self.recipe, self.use_fp8 = training_mode("Fp8Dense", trainable, recipe, use_fp8)
        self.kernel = nnx.Param(kernel_init(rngs.params(), (out_features, in_features), param_dtype))
        self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """float ``[..., in_features]`` -> ``[..., out_features]`` in ``x.dtype``."""
        bias = None if self.bias is None else self.bias[...]
        if self.trainable:
            return dense_train(x, self.kernel[...], bias, recipe=self.recipe, use_fp8=self.use_fp8)
        return fp8_dense(x, self.kernel[...], bias)
