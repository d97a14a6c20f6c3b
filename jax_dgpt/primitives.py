"""The JAX primitives, one per layout: shape rules, CPU and CUDA lowerings, batching.

The primitives take operands the kernel can consume directly (K a multiple of ``k_alignment``, N of
``n_alignment``, no empty dimension); the public wrappers in :mod:`jax_dgpt.ops` validate user input
and pad to get there. Operands: ``a``, ``b``, then, each only when it applies, the layout's int32
array (m_indices, masked_m or group_sizes), ``scale_a``, ``scale_b`` and ``c`` (accumulation: the
output aliases it). Parameters, all static: ``operands`` (:class:`Operands`: element types, scales,
accumulation), ``num_sms`` and ``overrides`` (forced config fields), and ``expected_m`` on the masked
one. The CPU lowering runs :mod:`jax_dgpt.reference`; the CUDA lowering calls the layout's FFI target
with the heuristics' :class:`KernelConfig` as its one ``config`` attribute.
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
from .kernel_config import Operands, limits

__all__ = ["SPECS", "OpSpec", "Parts", "contiguous_p", "gemm_p", "k_grouped_p", "masked_p", "plain_int", "ragged_p"]

FP8 = np.dtype(jnp.float8_e4m3fn)
FP8_TYPES = (np.dtype(jnp.float8_e4m3fn), np.dtype(jnp.float8_e5m2))
BF16 = np.dtype(jnp.bfloat16)
F32 = np.dtype(np.float32)
INT32 = np.dtype(np.int32)


# The default operands: e4m3 x e4m3 -> bfloat16, no scales, no accumulation.
PLAIN = Operands()


def plain_int(name: str, value: Any) -> int:
    """A static integer as a plain int (see ``_ints.static_int``, which this names ``jax_dgpt``)."""
    return static_int("jax_dgpt", name, value)


@dataclasses.dataclass(frozen=True)
class Parts:
    """A primitive's operands by role (None where the layout or the Operands have none)."""

    a: Any
    b: Any
    index: Any = None  # m_indices, masked_m or group_sizes
    scale_a: Any = None
    scale_b: Any = None
    c: Any = None

    @staticmethod
    def split(layout: str, operands: Operands, args: tuple[Any, ...]) -> Parts:
        it = iter(args)
        a, b = next(it), next(it)
        index = None if layout == "normal" else next(it)
        scale_a = next(it) if operands.has_scale_a else None
        scale_b = next(it) if operands.has_scale_b else None
        c = next(it) if operands.accumulate else None
        if next(it, None) is not None:
            raise ValueError(f"jax_dgpt: too many operands for the {layout} primitive with {operands}")
        return Parts(a, b, index, scale_a, scale_b, c)


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """What differs between the layouts: names, operand shapes and the problem each describes."""

    op: str  # public name, used in messages
    layout: str  # one of kernel_config.LAYOUTS
    operand_ranks: tuple[int, ...]  # of a, b and the layout's int32 array

    @property
    def target(self) -> str:
        return TARGETS[self.layout]

    def dims(self, parts: Parts) -> tuple[int, int, int, int]:
        """(m, n, k, num_groups) as the kernel sees them; m is Mmax for the masked layout."""
        a, b = parts.a.shape, parts.b.shape
        if self.layout == "normal":
            return a[0], b[0], a[1], 1
        if self.layout in ("contiguous", "ragged"):
            return a[0], b[1], a[1], b[0]
        if self.layout == "masked":
            return a[1], b[1], a[2], b[0]
        return a[0], b[0], a[1], parts.index.shape[0]  # k_grouped: a [M, T], b [N, T], group_sizes [G]

    def out_shape(self, parts: Parts) -> tuple[int, ...]:
        m, n, _, g = self.dims(parts)
        return (g, m, n) if self.layout in ("masked", "k_grouped") else (m, n)


SPECS = {
    "normal": OpSpec("gemm", "normal", (2, 2)),
    "contiguous": OpSpec("grouped_gemm_contiguous", "contiguous", (2, 3, 1)),
    "masked": OpSpec("grouped_gemm_masked", "masked", (3, 3, 1)),
    "k_grouped": OpSpec("k_grouped_wgrad_gemm", "k_grouped", (2, 2, 1)),
    "ragged": OpSpec("grouped_gemm_ragged", "ragged", (2, 3, 1)),
}


def _op_name(spec: OpSpec, operands: Operands) -> str:
    return "wgrad_gemm" if spec.layout == "normal" and operands.accumulate else spec.op


def _power_of_two(x: int) -> str:
    return f"2**{x.bit_length() - 1}" if x > 0 and x & (x - 1) == 0 else str(x)


# --- shape rules ----------------------------------------------------------------------------------
def _abstract_eval(spec: OpSpec, *avals: Any, operands: Operands = PLAIN, **params: Any) -> jax.core.ShapedArray:
    # The public wrappers check dtypes, ranks and scale shapes with readable errors; the primitive checks
    # what the kernel relies on and the size limits.
    where = f"jax_dgpt.{_op_name(spec, operands)}"
    lim = limits()
    parts = Parts.split(spec.layout, operands, avals)
    main = [x for x in (parts.a, parts.b, parts.index) if x is not None]
    if tuple(len(x.shape) for x in main) != spec.operand_ranks:
        raise ValueError(f"{where}: operand ranks must be {spec.operand_ranks}, got {tuple(x.shape for x in main)}")
    expected = (
        ("a", parts.a, np.dtype(operands.a_dtype)),
        ("b", parts.b, np.dtype(operands.b_dtype)),
        ("the int32 layout array", parts.index, INT32),
        ("scale_a", parts.scale_a, F32),
        ("scale_b", parts.scale_b, F32),
        ("c", parts.c, F32),
    )
    for name, aval, dtype in expected:
        if aval is not None and np.dtype(aval.dtype) != dtype:
            raise TypeError(f"{where}: {name} must have dtype {dtype.name}, got {np.dtype(aval.dtype).name}")
    m, n, k, g = spec.dims(parts)
    b_k = parts.b.shape[-1]
    if b_k != k or min(m, n, k, g) <= 0 or k % lim["k_alignment"] or n % lim["n_alignment"]:
        raise ValueError(
            f"{where} (primitive {spec.target}): needs equal K, no empty dimension, K % {lim['k_alignment']} == 0 "
            f"and N % {lim['n_alignment']} == 0 (the public wrapper pads); got {[x.shape for x in main]}"
        )
    if max(m, n, k) > lim["max_dim"] or g > lim["max_groups"]:
        raise ValueError(
            f"{where}: M, N and K must be at most {_power_of_two(lim['max_dim'])} and G at most "
            f"{_power_of_two(lim['max_groups'])}, got M={m} N={n} K={k} G={g}"
        )
    if spec.layout == "masked" and (parts.a.shape[0] != g or parts.index.shape != (g,)):
        raise ValueError(f"{where}: a, b and masked_m must agree on G, got {[x.shape for x in main]}")
    if spec.layout == "contiguous" and parts.index.shape != (m,):
        raise ValueError(f"{where}: m_indices must have shape ({m},), got {parts.index.shape}")
    if spec.layout == "ragged" and parts.index.shape != (g,):
        raise ValueError(f"{where}: group_sizes must have shape ({g},), got {parts.index.shape}")
    out_shape = spec.out_shape(parts)
    if parts.c is not None and tuple(parts.c.shape) != out_shape:
        raise ValueError(f"{where}: c must have the output's shape {out_shape}, got {tuple(parts.c.shape)}")
    return jax.core.ShapedArray(out_shape, np.dtype(operands.out_dtype))


def _reference(spec: OpSpec, parts: Parts, operands: Operands) -> jax.Array:
    """The jnp reference of one primitive call."""
    scales = {"scale_a": parts.scale_a, "scale_b": parts.scale_b}
    out_dtype = jnp.dtype(operands.out_dtype)
    if spec.layout == "normal" and operands.accumulate:
        return reference.wgrad_gemm(parts.a, parts.b, parts.c, **scales)
    if spec.layout == "normal":
        return reference.gemm(parts.a, parts.b, out_dtype=out_dtype, **scales)
    if spec.layout == "contiguous":
        return reference.grouped_gemm_contiguous(parts.a, parts.b, parts.index, out_dtype=out_dtype, **scales)
    if spec.layout == "masked":
        return reference.grouped_gemm_masked(parts.a, parts.b, parts.index, out_dtype=out_dtype, **scales)
    if spec.layout == "ragged":
        return reference.grouped_gemm_ragged(parts.a, parts.b, parts.index, out_dtype=out_dtype, **scales)
    return reference.k_grouped_wgrad_gemm(parts.a, parts.b, parts.index, parts.c, out_dtype=out_dtype, **scales)


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
        *args: Any,
        num_sms: int,
        operands: Operands = PLAIN,
        overrides: Overrides = (),
        expected_m: int | None = None,
    ):
        device.check_cuda_devices()
        op = _op_name(spec, operands)
        parts = Parts.split(spec.layout, operands, tuple(ctx.avals_in))
        m, n, k, g = (plain_int(name, v) for name, v in zip("mnkg", spec.dims(parts)))
        problem = heuristics.Problem(spec.layout, m, n, k, g, expected_m, operands)
        try:
            cfg = heuristics.select_config(problem, num_sms, overrides)
        except ValueError as error:
            raise ValueError(f"jax_dgpt.{op}: {error}") from None
        if config.settings.print_configs:
            _print_config_once((op, problem, num_sms, overrides), heuristics.describe(op, problem, cfg))
        # Accumulation: the output is c's buffer (XLA copies c first unless it was donated).
        aliases = {len(args) - 1: 0} if operands.accumulate else None
        return jax.ffi.ffi_lowering(spec.target, operand_output_aliases=aliases)(ctx, *args, config=cfg.as_attribute())

    return lowering


def _cpu_lowering(spec: OpSpec) -> Callable[..., Any]:
    def fn(
        *args: jax.Array,
        num_sms: int,
        operands: Operands = PLAIN,
        overrides: Overrides = (),
        expected_m: int | None = None,
    ) -> jax.Array:
        del num_sms, overrides, expected_m  # heuristic inputs: no effect on the result
        return _reference(spec, Parts.split(spec.layout, operands, args), operands)

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
    """Batches by a sequential loop (lax.map) over the mapped axis: right for every op (and for primitives
    with several results, jax_dgpt.quantize's)."""

    def rule(args: tuple[Any, ...], dims: tuple[int | None, ...], **params: Any):
        moved = [None if d is None else jnp.moveaxis(x, d, 0) for x, d in zip(args, dims)]

        def one(slices: list[jax.Array]) -> jax.Array:
            it = iter(slices)
            return prim.bind(*(x if m is None else next(it) for x, m in zip(args, moved)), **params)

        out = lax.map(one, [m for m in moved if m is not None])
        return out, ([0] * len(out) if prim.multiple_results else 0)

    return rule


def _empty_batch(key: str, args: tuple[Any, ...], dims: tuple[int | None, ...], params: dict[str, Any]) -> jax.Array:
    """The result of mapping over an empty batch: zero results of the unbatched output shape."""
    unbatched = (
        jax.core.ShapedArray(x.shape if d is None else x.shape[:d] + x.shape[d + 1 :], x.dtype)
        for x, d in zip(args, dims)
    )
    out = _abstract_eval(SPECS[key], *unbatched, operands=params.get("operands", PLAIN))
    return jnp.zeros((0, *out.shape), out.dtype)


def _batch_gemm(args: tuple[Any, ...], dims: tuple[int | None, ...], **params: Any):
    a_dim = dims[0]
    if all(d is None for d in dims[1:]) and a_dim is not None and args[0].shape[a_dim] == 0:
        return _empty_batch("normal", args, dims, params), 0
    operands = params.get("operands", PLAIN)
    if all(d is None for d in dims[1:]) and not operands.has_scale_a and not operands.accumulate:
        # Only A is mapped: fold the batch into M, one launch.
        a = jnp.moveaxis(args[0], a_dim, 0)
        batch, m, k = a.shape
        out = gemm_p.bind(a.reshape(batch * m, k), *args[1:], **params)
        return out.reshape(batch, m, out.shape[-1]), 0
    return _batch_by_loop(gemm_p)(args, dims, **params)


def _batch_masked(args: tuple[Any, ...], dims: tuple[int | None, ...], **params: Any):
    # The batch becomes more groups: one launch. An unmapped operand is broadcast (a copy of it).
    size = next(x.shape[d] for x, d in zip(args, dims) if d is not None)
    if size == 0:
        return _empty_batch("masked", args, dims, params), 0
    operands = params.get("operands", PLAIN)
    if operands.has_scale_a or operands.has_scale_b:
        return _batch_by_loop(masked_p)(args, dims, **params)
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
k_grouped_p = _define("k_grouped")
ragged_p = _define("ragged")

batching.primitive_batchers[gemm_p] = _batch_gemm
batching.primitive_batchers[contiguous_p] = _batch_by_loop(contiguous_p)
batching.primitive_batchers[masked_p] = _batch_masked
batching.primitive_batchers[k_grouped_p] = _batch_by_loop(k_grouped_p)
batching.primitive_batchers[ragged_p] = _batch_by_loop(ragged_p)


def _not_differentiable(op: str) -> Callable[..., Any]:
    def rule(primals: Any, tangents: Any, **params: Any):
        raise NotImplementedError(
            f"jax_dgpt.{op} is not differentiable: the FP8 GEMMs are forward-only for now (inference). "
            "Wrap the inputs in jax.lax.stop_gradient if no gradient should flow through this op."
        )

    return rule


for _spec, _prim in zip(SPECS.values(), (gemm_p, contiguous_p, masked_p, k_grouped_p, ragged_p)):
    ad.primitive_jvps[_prim] = _not_differentiable(_spec.op)
