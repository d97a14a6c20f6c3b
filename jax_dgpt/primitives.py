"""The three JAX primitives, one per layout: shape rules, CPU and CUDA lowerings, batching.

The primitives take operands the kernel can consume directly (K a multiple of ``k_alignment``, N of
``n_alignment``, no empty dimension); the public wrappers in :mod:`jax_dgpt.ops` validate user input
and pad to get there. Parameters: ``num_sms`` and ``overrides`` (forced config fields) on every
primitive, ``expected_m`` on the masked one; all static. The CPU lowering runs
:mod:`jax_dgpt.reference`; the CUDA lowering calls the layout's FFI target with the heuristics'
:class:`KernelConfig` as its one ``config`` attribute.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from . import config, device, heuristics, reference
from ._ints import static_int
from ._native import TARGETS
from .forcing import Overrides
from .kernel_config import limits

__all__ = ["SPECS", "OpSpec", "contiguous_p", "gemm_p", "masked_p", "plain_int"]

FP8 = np.dtype(jnp.float8_e4m3fn)
BF16 = np.dtype(jnp.bfloat16)
INT32 = np.dtype(np.int32)


def plain_int(name: str, value: Any) -> int:
    """A static integer as a plain int (see ``_ints.static_int``, which this names ``jax_dgpt``)."""
    return static_int("jax_dgpt", name, value)


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """What differs between the three layouts: names, operand shapes and the problem each describes."""

    op: str  # public name, used in messages
    layout: str  # "normal", "contiguous", "masked"
    operand_ranks: tuple[int, ...]
    reference: Callable[..., jax.Array]

    @property
    def target(self) -> str:
        return TARGETS[self.layout]

    def dims(self, *avals: Any) -> tuple[int, int, int, int]:
        """(m, n, k, num_groups) as the kernel sees them; m is Mmax for the masked layout."""
        a, b = avals[0], avals[1]
        if self.layout == "normal":
            return a.shape[0], b.shape[0], a.shape[1], 1
        if self.layout == "contiguous":
            return a.shape[0], b.shape[1], a.shape[1], b.shape[0]
        return a.shape[1], b.shape[1], a.shape[2], b.shape[0]

    def out_shape(self, *avals: Any) -> tuple[int, ...]:
        m, n, _, g = self.dims(*avals)
        return (g, m, n) if self.layout == "masked" else (m, n)


SPECS = {
    "normal": OpSpec("gemm", "normal", (2, 2), reference.gemm),
    "contiguous": OpSpec("grouped_gemm_contiguous", "contiguous", (2, 3, 1), reference.grouped_gemm_contiguous),
    "masked": OpSpec("grouped_gemm_masked", "masked", (3, 3, 1), reference.grouped_gemm_masked),
}


def _power_of_two(x: int) -> str:
    return f"2**{x.bit_length() - 1}" if x > 0 and x & (x - 1) == 0 else str(x)


# --- shape rules ----------------------------------------------------------------------------------
def _abstract_eval(spec: OpSpec, *avals: Any, **params: Any) -> jax.core.ShapedArray:
    # The public wrappers check dtypes and ranks with readable errors; the size limits are checked here.
    where = f"jax_dgpt.{spec.op}"
    lim = limits()
    if tuple(len(x.shape) for x in avals) != spec.operand_ranks:
        raise ValueError(f"{where}: operand ranks must be {spec.operand_ranks}, got {tuple(x.shape for x in avals)}")
    for name, aval, dtype in zip(("a", "b", "m_indices/masked_m"), avals, (FP8, FP8, INT32)):
        if np.dtype(aval.dtype) != dtype:
            raise TypeError(f"{where}: {name} must have dtype {dtype.name}, got {np.dtype(aval.dtype).name}")
    m, n, k, g = spec.dims(*avals)
    b_k = avals[1].shape[-1]
    if b_k != k or min(m, n, k, g) <= 0 or k % lim["k_alignment"] or n % lim["n_alignment"]:
        raise ValueError(
            f"{where} (primitive {spec.target}): needs equal K, no empty dimension, K % {lim['k_alignment']} == 0 "
            f"and N % {lim['n_alignment']} == 0 (the public wrapper pads); got {[x.shape for x in avals]}"
        )
    if max(m, n, k) > lim["max_dim"] or g > lim["max_groups"]:
        raise ValueError(
            f"{where}: M, N and K must be at most {_power_of_two(lim['max_dim'])} and G at most "
            f"{_power_of_two(lim['max_groups'])}, got M={m} N={n} K={k} G={g}"
        )
    if spec.layout == "masked" and (avals[0].shape[0] != g or avals[2].shape != (g,)):
        raise ValueError(f"{where}: a, b and masked_m must agree on G, got {[x.shape for x in avals]}")
    if spec.layout == "contiguous" and avals[2].shape != (m,):
        raise ValueError(f"{where}: m_indices must have shape ({m},), got {avals[2].shape}")
    return jax.core.ShapedArray(spec.out_shape(*avals), BF16)


# --- lowerings ------------------------------------------------------------------------------------
_printed: set[tuple[Any, ...]] = set()
_printed_lock = threading.Lock()


def _print_config_once(key: tuple[Any, ...], message: str) -> None:
    with _printed_lock:
        if key in _printed:
            return
        _printed.add(key)
    print(message, flush=True)


def _cuda_lowering(spec: OpSpec) -> Callable[..., Any]:
    def lowering(
        ctx: mlir.LoweringRuleContext,
        *operands: Any,
        num_sms: int,
        overrides: Overrides = (),
        expected_m: int | None = None,
    ):
        device.check_cuda_devices()
        m, n, k, g = (plain_int(name, v) for name, v in zip("mnkg", spec.dims(*ctx.avals_in)))
        problem = heuristics.Problem(spec.layout, m, n, k, g, expected_m)
        try:
            cfg = heuristics.select_config(problem, num_sms, overrides)
        except ValueError as error:
            raise ValueError(f"jax_dgpt.{spec.op}: {error}") from None
        if config.settings.print_configs:
            _print_config_once((spec.op, problem, num_sms, overrides), heuristics.describe(spec.op, problem, cfg))
        return jax.ffi.ffi_lowering(spec.target)(ctx, *operands, config=cfg.as_attribute())

    return lowering


def _cpu_lowering(spec: OpSpec) -> Callable[..., Any]:
    def fn(
        *operands: jax.Array,
        num_sms: int,
        overrides: Overrides = (),
        expected_m: int | None = None,
    ) -> jax.Array:
        del num_sms, overrides, expected_m  # heuristic inputs: no effect on the result
        return spec.reference(*operands)

    return mlir.lower_fun(fn, multiple_results=False)


# --- eager execution ------------------------------------------------------------------------------
@functools.cache
def _jitted_bind(prim: Primitive, params: tuple[tuple[str, Any], ...]) -> Callable[..., jax.Array]:
    return jax.jit(lambda *args: prim.bind(*args, **dict(params)))


def _impl(prim: Primitive, *args: Any, **params: Any) -> jax.Array:
    # A bind outside any jit (or under jax.disable_jit) compiles the lone primitive; jit must stay
    # on here or the bind would come straight back to this impl.
    with jax.disable_jit(False):
        return _jitted_bind(prim, tuple(sorted(params.items())))(*args)


# --- batching (vmap) ------------------------------------------------------------------------------
def _batch_by_loop(prim: Primitive) -> Callable[..., Any]:
    """Batches by a sequential loop (lax.map) over the mapped axis: right for every op."""

    def rule(args: tuple[Any, ...], dims: tuple[int | None, ...], **params: Any):
        moved = [None if d is None else jnp.moveaxis(x, d, 0) for x, d in zip(args, dims)]

        def one(slices: list[jax.Array]) -> jax.Array:
            it = iter(slices)
            return prim.bind(*(x if m is None else next(it) for x, m in zip(args, moved)), **params)

        return lax.map(one, [m for m in moved if m is not None]), 0

    return rule


def _empty_batch(key: str, args: tuple[Any, ...], dims: tuple[int | None, ...]) -> jax.Array:
    """The result of mapping over an empty batch: zero results of the unbatched output shape."""
    unbatched = (
        jax.core.ShapedArray(x.shape if d is None else x.shape[:d] + x.shape[d + 1 :], x.dtype)
        for x, d in zip(args, dims)
    )
    return jnp.zeros((0, *_abstract_eval(SPECS[key], *unbatched).shape), BF16)


def _batch_gemm(args: tuple[Any, ...], dims: tuple[int | None, ...], **params: Any):
    a, b = args
    a_dim, b_dim = dims
    if b_dim is None and a.shape[a_dim] == 0:
        return _empty_batch("normal", args, dims), 0
    if b_dim is None:
        # Only A is mapped: fold the batch into M, one launch.
        a = jnp.moveaxis(a, a_dim, 0)
        batch, m, k = a.shape
        out = gemm_p.bind(a.reshape(batch * m, k), b, **params)
        return out.reshape(batch, m, out.shape[-1]), 0
    return _batch_by_loop(gemm_p)(args, dims, **params)


def _batch_masked(args: tuple[Any, ...], dims: tuple[int | None, ...], **params: Any):
    # The batch becomes more groups: one launch. An unmapped operand is broadcast (a copy of it).
    size = next(x.shape[d] for x, d in zip(args, dims) if d is not None)
    if size == 0:
        return _empty_batch("masked", args, dims), 0
    a, b, masked_m = (
        jnp.broadcast_to(x, (size, *x.shape)) if d is None else jnp.moveaxis(x, d, 0) for x, d in zip(args, dims)
    )
    groups = size * a.shape[1]
    out = masked_p.bind(
        a.reshape(groups, *a.shape[2:]),
        b.reshape(groups, *b.shape[2:]),
        masked_m.reshape(groups),
        **params,
    )
    return out.reshape(size, a.shape[1], *out.shape[1:]), 0


# --- definitions ----------------------------------------------------------------------------------
def _define(key: str) -> Primitive:
    spec = SPECS[key]
    prim = Primitive(spec.target)
    prim.def_impl(functools.partial(_impl, prim))
    prim.def_abstract_eval(functools.partial(_abstract_eval, spec))
    mlir.register_lowering(prim, _cpu_lowering(spec), platform="cpu")
    mlir.register_lowering(prim, _cuda_lowering(spec), platform="cuda")
    return prim


gemm_p = _define("normal")
contiguous_p = _define("contiguous")
masked_p = _define("masked")

batching.primitive_batchers[gemm_p] = _batch_gemm
batching.primitive_batchers[contiguous_p] = _batch_by_loop(contiguous_p)
batching.primitive_batchers[masked_p] = _batch_masked


def _not_differentiable(op: str) -> Callable[..., Any]:
    def rule(primals: Any, tangents: Any, **params: Any):
        raise NotImplementedError(
            f"jax_dgpt.{op} is not differentiable: the FP8 GEMMs are forward-only for now (inference). "
            "Wrap the inputs in jax.lax.stop_gradient if no gradient should flow through this op."
        )

    return rule


for _spec, _prim in ((SPECS["normal"], gemm_p), (SPECS["contiguous"], contiguous_p), (SPECS["masked"], masked_p)):
    ad.primitive_jvps[_prim] = _not_differentiable(_spec.op)
