"""The training recipes' fp8 quantization as two JAX primitives with CUDA kernels (kernels/quantize.cuh).

- :func:`quantize_rows`: one scale per row and the fp8 copy, from one read of each row (XLA compiles the same
  jnp expression as a reduction and a second pass over the input on the H200), optionally also the column
  amax the transposed copy of the same tensor needs (each CTA's column maxima, then one small XLA max).
- :func:`cast_transpose`: the fp8 copy of ``x^T`` with one scale per column of x, written transposed.

Both compute ``s = max(amax, fmax * 2^-126) * f32(1 / fmax)`` and ``q = fp8(clip(x / s, -fmax, fmax))`` in
float32 with round-to-nearest-even, bit for bit the expression :mod:`jax_dgpt.training.recipes` documents;
NaN propagates through an amax. On the CPU (and for shapes the kernels do not take) they are that jnp
expression; the primitives are registered for the CPU (jnp) and for CUDA (the kernels).

NOTES: ``1 / fmax`` is a multiplication by the rounded reciprocal, not a division: XLA rewrites a division by
a constant that way, so the jnp expression and the kernel agree only if both say so.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import batching, mlir

from . import _native, device
from .primitives import BF16, F32, _batch_by_loop, _impl

__all__ = ["cast_transpose", "column_amax_reference", "quantize_rows", "scale_from_amax"]

E4M3, E5M2 = np.dtype(jnp.float8_e4m3fn), np.dtype(jnp.float8_e5m2)
MIN_SCALE = float(np.finfo(np.float32).tiny)  # 2^-126: no scale is 0 or subnormal
_VEC = 8  # kernels/quantize_config.cuh limits
_MAX_COLS_ROWS = 16384
_ROW_ALIGNMENT_TRANSPOSE = 16


def fp8_max(dtype: Any) -> float:
    """The largest finite value of an fp8 type: 448.0 (e4m3fn) or 57344.0 (e5m2)."""
    return float(jnp.finfo(dtype).max)


def scale_from_amax(amax: jax.Array, dtype: Any) -> jax.Array:
    """float32 ``max(amax, fmax * tiny) * f32(1 / fmax)``: the scale that maps amax onto fmax, never below tiny."""
    fmax = fp8_max(dtype)
    return jnp.maximum(amax.astype(jnp.float32), np.float32(fmax * MIN_SCALE)) * np.float32(1.0 / fmax)


def cast(x: jax.Array, scale: jax.Array, dtype: Any) -> jax.Array:
    """fp8 ``clip(x / scale, -fmax, fmax)`` (saturating: e4m3fn has no infinity, a cast past it is NaN)."""
    fmax = fp8_max(dtype)
    return jnp.clip(x.astype(jnp.float32) / scale, -fmax, fmax).astype(dtype)


# --- the jnp expressions (the CPU lowering, and every shape the kernels do not take) ----------------------
def _rows_reference(x, valid_rows, *, dtype, column_amax):
    # NOTES: the amax in x's own dtype (abs and max are exact), so no float32 copy of x feeds the reduction.
    scale = scale_from_amax(jnp.max(jnp.abs(x), axis=-1, keepdims=True, initial=0.0), dtype)
    results = [cast(x, scale, dtype), jnp.squeeze(scale, -1)]
    if column_amax:
        results.append(column_amax_reference(x, valid_rows))
    return results


def _partials(amax: jax.Array, count: int) -> jax.Array:
    """``[..., C]`` -> ``[..., count, C]`` column partials whose max is amax (the kernel's split of the rows
    among its CTAs is its own; only the max is defined)."""
    rest = jnp.zeros(amax.shape[:-1] + (count - 1, amax.shape[-1]), amax.dtype)
    return jnp.concatenate([amax[..., None, :], rest], axis=-2)


def _num_partials(shape: tuple[int, ...]) -> int:
    """P, the column partials per batch of the rows kind for x ``[..., R, C]`` (the kernel's CTAs per batch)."""
    batches = shape[0] if len(shape) == 3 else 1
    return int(_native.load().quantize_column_partials(shape[-1], shape[-2], batches))


def column_amax_reference(x: jax.Array, valid_rows: jax.Array | int | None = None) -> jax.Array:
    """float32 ``max |x|`` over the rows ``[0, valid_rows)`` of each column (axis -2); 0 where none."""
    magnitude = jnp.abs(x)
    if valid_rows is not None:
        inside = jnp.arange(x.shape[-2]) < valid_rows
        magnitude = jnp.where(inside[:, None], magnitude, jnp.zeros((), x.dtype))
    return jnp.max(magnitude, axis=-2, initial=0.0).astype(jnp.float32)


def _transpose_reference(x, scale, *, dtype):
    return jnp.swapaxes(cast(x, scale[..., None, :], dtype), -1, -2)


# --- primitives ------------------------------------------------------------------------------------------
def _config(kind: int, x_dtype: np.dtype, dtype: np.dtype, cols: int, column_amax: bool) -> dict[str, int]:
    """The kernel's configuration attribute (the fields of kernels/quantize_config.cuh)."""
    return {
        "kind": kind,
        "cols": cols,
        "in_dtype": 0 if x_dtype == BF16 else 1,
        "out_dtype": 0 if dtype == E4M3 else 1,
        "column_amax": int(column_amax),
    }


def _rows_abstract(x, *extra, dtype, column_amax):
    out = [jax.core.ShapedArray(x.shape, dtype), jax.core.ShapedArray(x.shape[:-1], F32)]
    if column_amax:
        out.append(jax.core.ShapedArray(x.shape[:-2] + (_num_partials(x.shape), x.shape[-1]), F32))
    return out


def _rows_cuda(ctx, x, *extra, dtype, column_amax):
    device.check_cuda_devices()
    aval = ctx.avals_in[0]
    config = _config(0, np.dtype(aval.dtype), np.dtype(dtype), aval.shape[-1], column_amax)
    return jax.ffi.ffi_lowering(_native.QUANTIZE_TARGETS["rows"])(ctx, x, *extra, config=config)


def _rows_cpu(x, *extra, dtype, column_amax):
    results = _rows_reference(x, extra[0] if extra else None, dtype=dtype, column_amax=column_amax)
    if column_amax:
        results[2] = _partials(results[2], _num_partials(x.shape))
    return results


def _transpose_abstract(x, scale, *, dtype):
    return jax.core.ShapedArray(x.shape[:-2] + (x.shape[-1], x.shape[-2]), dtype)


def _transpose_cuda(ctx, x, scale, *, dtype):
    device.check_cuda_devices()
    aval = ctx.avals_in[0]
    config = _config(1, np.dtype(aval.dtype), np.dtype(dtype), aval.shape[-1], False)
    return jax.ffi.ffi_lowering(_native.QUANTIZE_TARGETS["transpose"])(ctx, x, scale, config=config)


def _define(name, abstract, cuda, cpu, multiple_results):
    prim = Primitive(name)
    prim.multiple_results = multiple_results
    prim.def_impl(functools.partial(_impl, prim))  # one cached jit per parameters, as the GEMMs'
    prim.def_abstract_eval(abstract)
    mlir.register_lowering(prim, cuda, platform="cuda")
    mlir.register_lowering(prim, mlir.lower_fun(cpu, multiple_results=multiple_results), platform="cpu")
    batching.primitive_batchers[prim] = _batch_by_loop(prim)
    return prim


quantize_rows_p = _define("dgpt_quantize_rows", _rows_abstract, _rows_cuda, _rows_cpu, True)
cast_transpose_p = _define("dgpt_cast_transpose", _transpose_abstract, _transpose_cuda, _transpose_reference, False)


# --- public ----------------------------------------------------------------------------------------------
def _kernel_dtypes(x: jax.Array, dtype: Any) -> bool:
    return np.dtype(x.dtype) in (BF16, F32) and np.dtype(dtype) in (E4M3, E5M2)


def quantize_rows(
    x: jax.Array, dtype: Any, *, column_amax: bool = False, valid_rows: jax.Array | int | None = None
) -> tuple[jax.Array, ...]:
    """Row-wise current scaling of ``x`` (``[..., R, C]``) to ``dtype`` (float8_e4m3fn or float8_e5m2).

    Returns ``(q, scale)``: fp8 ``q`` like x and float32 ``scale`` ``x.shape[:-1]`` with ``x ~= q * scale[...,
    None]``; with ``column_amax`` also float32 ``[..., C]``, each column's ``max |x|`` over the rows ``[0,
    valid_rows)`` (all rows when None; an int32 scalar on the device keeps one program for every value): the
    amax of the transposed copy's scales, from the same read. A 2-D or 3-D bf16/f32 x with C % 8 == 0 and
    C <= 16384 runs the kernel on the GPU; anything else the jnp expression.
    """
    dtype = np.dtype(dtype)
    kernel = _kernel_dtypes(x, dtype) and x.ndim in (2, 3) and x.shape[-1] % _VEC == 0
    kernel = kernel and 0 < x.shape[-1] <= _MAX_COLS_ROWS and x.size > 0
    if not kernel:
        return tuple(_rows_reference(x, valid_rows, dtype=dtype, column_amax=column_amax))
    if not column_amax:
        return tuple(quantize_rows_p.bind(x, dtype=dtype, column_amax=False))
    rows = jnp.asarray(x.shape[-2] if valid_rows is None else valid_rows, jnp.int32)
    q, scale, partials = quantize_rows_p.bind(x, rows, dtype=dtype, column_amax=True)
    return q, scale, jnp.max(partials, axis=-2)


def cast_transpose(x: jax.Array, scale: jax.Array, dtype: Any) -> jax.Array:
    """fp8 ``x^T`` (``[..., R, C] -> [..., C, R]``) with one float32 scale per column of x (``scale [..., C]``):
    element ``(c, r)`` is ``fp8(clip(x[r, c] / scale[c], -fmax, fmax))``, written transposed in one pass. A
    2-D or 3-D bf16/f32 x with C % 8 == 0 and R % 16 == 0 runs the kernel on the GPU; anything else the jnp
    expression (which XLA fuses with the transpose)."""
    dtype = np.dtype(dtype)
    kernel = _kernel_dtypes(x, dtype) and x.ndim in (2, 3) and x.shape[-1] % _VEC == 0 and x.size > 0
    kernel = kernel and x.shape[-2] % _ROW_ALIGNMENT_TRANSPOSE == 0 and scale.shape == x.shape[:-2] + x.shape[-1:]
    if not kernel:
        return _transpose_reference(x, scale.astype(jnp.float32), dtype=dtype)
    return cast_transpose_p.bind(x, scale.astype(jnp.float32), dtype=dtype)
