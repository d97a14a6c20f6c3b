"""``Fp8Dense``: a linear layer whose matmul runs as an FP8 GEMM (``jax_dgpt.gemm``)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from .. import ops
from .quantize import inference_only, quantize_per_tensor

__all__ = ["Fp8Dense", "fp8_dense"]

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
      amax scale (``s = amax / 448``, saturating), multiplied by :func:`jax_dgpt.gemm` (fp32
      accumulation, bfloat16 result), and the bf16 result is rescaled by ``s_x * s_w`` in float32.
      Inference only: differentiating raises NotImplementedError.
    """
    out_features, in_features = kernel.shape
    if x.ndim < 1 or x.shape[-1] != in_features:
        raise ValueError(
            f"jax_dgpt.nn.Fp8Dense: x must have shape [..., {in_features}] (in_features), "
            f"got {tuple(x.shape)}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"jax_dgpt.nn.Fp8Dense: x must be a float array, got {x.dtype}")
    args = (x, kernel) if bias is None else (x, kernel, bias)
    return inference_only(functools.partial(_fp8_dense, out_dtype=x.dtype), "Fp8Dense")(*args)


def _fp8_dense(x, kernel, bias=None, *, out_dtype):
    lead = x.shape[:-1]
    xq, x_scale = quantize_per_tensor(x.reshape(-1, x.shape[-1]))
    wq, w_scale = quantize_per_tensor(kernel)
    y = ops.gemm(xq, wq).astype(jnp.float32) * (x_scale * w_scale)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(out_dtype).reshape(lead + (kernel.shape[0],))


class Fp8Dense(nnx.Module):
    """Linear layer ``y = x W^T + b`` computed as an FP8 (e4m3) GEMM with per-tensor scales.

    The weight is kept in ``param_dtype`` (float32 or bfloat16) as ``kernel [out_features,
    in_features]`` ("out, in": K contiguous, the B operand of :func:`jax_dgpt.gemm` as is) and is
    quantized on every call, like the input: ``s = amax(|t|) / 448`` (1 if the tensor is all
    zeros), ``q = fp8(clip(t / s, -448, 448))``. The GEMM gives bfloat16 ``xq . wq^T``, which is
    rescaled by ``s_x * s_w`` in float32; the optional ``bias [out_features]`` is added in float32;
    the output has the input's dtype.

    Input: float ``[..., in_features]`` (leading dims flattened into the GEMM's M).
    Output: ``[..., out_features]``, ``x.dtype``.

    Inference only for now: ``jax.grad`` through the layer raises NotImplementedError.
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
        rngs: nnx.Rngs,
    ):
        self.in_features = in_features
        self.out_features = out_features
        self.kernel = nnx.Param(
            kernel_init(rngs.params(), (out_features, in_features), param_dtype)
        )
        self.bias = (
            nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype)) if use_bias else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """float ``[..., in_features]`` -> ``[..., out_features]`` in ``x.dtype``."""
        bias = None if self.bias is None else self.bias[...]
        return fp8_dense(x, self.kernel[...], bias)
