"""Trace-time checks of the differentiable ops' arguments: errors name the op, the argument and the rule."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from .recipes import Fp8Recipe

FLOATS = (np.dtype(jnp.bfloat16), np.dtype(jnp.float32))


def check_float(op: str, name: str, x: Any) -> np.dtype:
    """x's dtype, which must be bfloat16 or float32 (the high-precision operands the ops quantize)."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"jax_dgpt.{op}: {name} must be a bfloat16 or float32 array, got {type(x).__name__}")
    dtype = np.dtype(x.dtype)
    if dtype not in FLOATS:
        hint = " (the operands are quantized here: pass them unquantized)" if dtype.itemsize == 1 else ""
        raise TypeError(f"jax_dgpt.{op}: {name} must have dtype bfloat16 or float32, got {dtype.name}{hint}")
    return dtype


def check_rank(op: str, name: str, x: Any, dims: str, at_least: bool = False) -> tuple[int, ...]:
    """x's static shape, of the rank ``dims`` names ("N, K"; with ``at_least``, leading dims may precede)."""
    rank = len(dims.split(","))
    shape = tuple(x.shape)
    if not all(isinstance(d, (int, np.integer)) for d in shape):
        raise TypeError(f"jax_dgpt.{op}: {name} must have a static shape, got symbolic dimensions {shape}")
    if (len(shape) < rank) if at_least else (len(shape) != rank):
        want = f"rank >= {rank} (shape [..., {dims}])" if at_least else f"rank {rank} (shape [{dims}])"
        raise ValueError(f"jax_dgpt.{op}: {name} must have {want}, got shape {shape}")
    return tuple(int(d) for d in shape)


def check_same(op: str, what: str, first: tuple[str, int], second: tuple[str, int]) -> None:
    if first[1] != second[1]:
        raise ValueError(
            f"jax_dgpt.{op}: {first[0]} and {second[0]} must have the same {what}, got {first[1]} and {second[1]}"
        )


def check_recipe(op: str, recipe: Any) -> Fp8Recipe:
    if not isinstance(recipe, Fp8Recipe):
        raise TypeError(f"jax_dgpt.{op}: recipe must be a jax_dgpt.Fp8Recipe, got {type(recipe).__name__}")
    return recipe
