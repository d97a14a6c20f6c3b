"""Scaling recipes of the differentiable FP8 ops, and the one quantizer they all use (amax, scale, cast).

A tensor ``t`` is quantized to an fp8 type of largest finite value ``fmax`` (448 for e4m3, 57344 for e5m2)
with current scaling: ``s = max(amax, fmax * tiny) * f32(1 / fmax)`` over the values that share a scale, and
``q = fp8(clip(t / s, -fmax, fmax))``, so ``t ~= q * s`` (``tiny``: the smallest normal float32, so ``s`` is
never 0 or subnormal and ``t / s`` is always finite). Who shares a scale is the recipe's choice:

- ``"rowwise"`` (the default): one scale per row of each GEMM operand, i.e. per token of an activation or of
  an output gradient and per output channel of a weight. One token's outlier changes only its own row.
- ``"tensor"``: one scale per tensor (per expert for an MoE weight stack). All tokens share the amax.

NOTES: on the GPU the per-row scaling and the transposed copies run jax_dgpt.quantize's kernels (one read of
each row: XLA compiles the jnp expression as a reduction and a second pass, run 834694d); elsewhere the same
jnp expression, bit for bit. tests/test_gpu_training.py checks the optimized HLO.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import quantize as kernels
from ..quantize import E4M3, E5M2, MIN_SCALE, cast, fp8_max, scale_from_amax

__all__ = [
    "E4M3",
    "E5M2",
    "Fp8Recipe",
    "MIN_SCALE",
    "PER_TENSOR",
    "ROWWISE",
    "fp8_max",
    "quantize",
    "quantize_segments",
    "scale_from_amax",
    "transposed",
]

_SCALINGS = ("rowwise", "tensor")


@dataclasses.dataclass(frozen=True)
class Fp8Recipe:
    """How the differentiable FP8 ops quantize (static: part of the traced program, hashable).

    Attributes:
      scaling: ``"rowwise"`` (default: per token for activations and output gradients, per output channel
        for weights) or ``"tensor"`` (one scale per tensor; per expert for an ``[G, N, K]`` weight stack).
      grad_dtype: fp8 type of the output gradient dY in the backward GEMMs: float8_e5m2 (default: wider
        range, 3 significant bits) or float8_e4m3fn (4 significant bits, range 448 times the scale).
      segment_scales: row-wise only, the MoE weight gradient (:func:`jax_dgpt.fp8_ragged_dot`): False
        (default) gives ``dy^T`` and ``x^T`` one scale per row over all the tokens in the groups, one column
        reduction; True gives one per (expert, row) from each expert's own tokens (a segment-wise amax: a
        scatter-max on the device), which only helps an expert whose values are more than about 2^15 (e4m3)
        or 2^30 (e5m2) below the loudest expert's, the normal range of the fp8 types.

    Activations and weights are always float8_e4m3fn. Every scale is current (computed from the tensor
    being quantized, in the same program); nothing is carried between steps.
    """

    scaling: str = "rowwise"
    grad_dtype: Any = E5M2
    segment_scales: bool = False

    def __post_init__(self) -> None:
        if self.scaling not in _SCALINGS:
            raise ValueError(f"jax_dgpt.Fp8Recipe: scaling must be 'rowwise' or 'tensor', got {self.scaling!r}")
        try:
            dtype = np.dtype(self.grad_dtype)
        except TypeError:
            dtype = None
        if dtype not in (E4M3, E5M2):
            raise TypeError(
                f"jax_dgpt.Fp8Recipe: grad_dtype must be float8_e5m2 or float8_e4m3fn, got {self.grad_dtype!r}"
            )
        object.__setattr__(self, "grad_dtype", dtype)  # one hashable spelling of the dtype
        if not isinstance(self.segment_scales, bool):
            raise TypeError(f"jax_dgpt.Fp8Recipe: segment_scales must be a bool, got {self.segment_scales!r}")
        if self.segment_scales and self.scaling != "rowwise":
            raise ValueError("jax_dgpt.Fp8Recipe: segment_scales needs scaling='rowwise' (per-tensor scales are one)")

    @property
    def rowwise(self) -> bool:
        return self.scaling == "rowwise"


ROWWISE = Fp8Recipe()
PER_TENSOR = Fp8Recipe(scaling="tensor")


def quantize(x: jax.Array, dtype: Any, axis: int | tuple[int, ...] | None) -> tuple[jax.Array, jax.Array]:
    """Current-scaled fp8 copy of ``x`` and its float32 scales.

    Args:
      x: float array of any shape.
      dtype: float8_e4m3fn or float8_e5m2.
      axis: the axes the amax reduces over (the values that share one scale): None for one scale per
        tensor; ``-1`` for one scale per row (each row's amax over its last dimension); ``0`` for one
        scale per column of a 2-D tensor (what the transposed copy of a row-wise recipe needs).

    Returns:
      (fp8 ``q`` in x's layout, float32 ``scale`` with the reduced axes removed), ``x ~= q * scale``
      broadcast back over the reduced axes. An all-zero (or empty) group gets scale ``tiny`` and zeros.
    """
    if axis == -1 or axis == x.ndim - 1:
        return kernels.quantize_rows(x, dtype)
    # NOTES: the amax in x's own dtype (abs and max are exact), so no float32 copy of x feeds the reduction.
    amax = jnp.max(jnp.abs(x), axis=axis, keepdims=True, initial=0.0)
    scale = scale_from_amax(amax, dtype)
    reduced = tuple(range(x.ndim)) if axis is None else axis
    return cast(x, scale, dtype), jnp.squeeze(scale, axis=reduced)


def transposed(x: jax.Array, column_amax: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
    """fp8 ``x^T`` (``[..., R, C] -> [..., C, R]``) with one scale per column of x from its ``column_amax``
    (``[..., C]``, e.g. from :func:`jax_dgpt.quantize.quantize_rows`), and those float32 scales: what
    ``quantize(x, dtype, -2)`` gives, transposed, in one pass (jax_dgpt.quantize.cast_transpose)."""
    scale = scale_from_amax(column_amax, dtype)
    return kernels.cast_transpose(x, scale, dtype), scale


def quantize_segments(
    x: jax.Array, segment_ids: jax.Array, num_segments: int, dtype: Any
) -> tuple[jax.Array, jax.Array]:
    """Per segment and column: fp8 ``[M, C]`` and float32 scales ``[num_segments, C]``.

    Rows of ``x [M, C]`` are grouped by ``segment_ids [M]`` (sorted; an id of ``num_segments`` or more marks
    a row outside every segment); each segment's column gets the amax of its own rows (an empty segment the
    floor ``tiny``). Rows outside every segment quantize to exact zeros, whatever they hold (NaN included).
    This is the scale layout of the MoE weight gradient: per expert and per row of the transposed operand.
    """
    magnitude = jnp.abs(x.astype(jnp.float32))
    amax = jax.ops.segment_max(magnitude, segment_ids, num_segments=num_segments, indices_are_sorted=True)
    scale = scale_from_amax(jnp.maximum(amax, 0.0), dtype)  # an empty segment's max is -inf
    inside = segment_ids < num_segments
    row_scale = scale[jnp.minimum(segment_ids, num_segments - 1)]
    q = cast(jnp.where(inside[:, None], x.astype(jnp.float32), 0.0), row_scale, dtype)
    return q, scale
