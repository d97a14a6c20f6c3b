"""The three JAX primitives: shape rules, CPU and CUDA lowerings, batching.

The primitives take operands the kernel can consume directly (K a multiple of 16, N a multiple of 8,
no empty dimension); the public wrappers in :mod:`jax_dgpt.ops` validate user input and pad to get
there. Parameters: ``num_sms`` on every primitive, ``expected_m`` on the masked one; both plain
``int`` (see :func:`plain_int`). The CPU lowering runs :mod:`jax_dgpt.reference`; the CUDA lowering
calls the FFI target with the heuristics' config as attributes.
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

__all__ = [
    "K_ALIGNMENT",
    "N_ALIGNMENT",
    "SPECS",
    "OpSpec",
    "contiguous_p",
    "ffi_attributes",
    "gemm_p",
    "masked_p",
    "plain_int",
]

# NOTES: TMA needs every global row stride to be a multiple of 16 bytes: 16 fp8 values of K, 8 bf16
# values of N.
K_ALIGNMENT = 16
N_ALIGNMENT = 8
# Largest sizes the kernel's 32-bit tile arithmetic and TMA descriptors take (checked again in C++).
MAX_DIM = 1 << 31
MAX_GROUPS = 1 << 20

FP8 = np.dtype(jnp.float8_e4m3fn)
BF16 = np.dtype(jnp.bfloat16)
INT32 = np.dtype(np.int32)


def plain_int(name: str, value: Any) -> int:
    """A static integer as a plain int (see ``_ints.static_int``, which this names ``jax_dgpt``)."""
    return static_int("jax_dgpt", name, value)


def ffi_attributes(**values: Any) -> dict[str, int]:
    """FFI attributes as plain ints (lowered as i64, the type the C++ handlers bind)."""
    return {name: plain_int(name, value) for name, value in values.items()}


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """What differs between the three ops: names, operand shapes and the problem each describes."""

    op: str  # public name, used in messages
    kind: str  # heuristics layout: "normal", "contiguous", "masked"
    target: str  # FFI target
    operand_ranks: tuple[int, ...]
    reference: Callable[..., jax.Array]

    def problem(self, *avals: Any) -> tuple[int, int, int, int]:
        """(m, n, k, num_groups) as the kernel sees them; m is Mmax for the masked layout."""
        a, b = avals[0], avals[1]
        if self.kind == "normal":
            return a.shape[0], b.shape[0], a.shape[1], 1
        if self.kind == "contiguous":
            return a.shape[0], b.shape[1], a.shape[1], b.shape[0]
        return a.shape[1], b.shape[1], a.shape[2], b.shape[0]

    def out_shape(self, *avals: Any) -> tuple[int, ...]:
        m, n, _, g = self.problem(*avals)
        return (g, m, n) if self.kind == "masked" else (m, n)


SPECS = {
    "gemm": OpSpec("gemm", "normal", TARGETS["gemm"], (2, 2), reference.gemm),
    "contiguous": OpSpec(
        "grouped_gemm_contiguous",
        "contiguous",
        TARGETS["contiguous"],
        (2, 3, 1),
        reference.grouped_gemm_contiguous,
    ),
    "masked": OpSpec("grouped_gemm_masked", "masked", TARGETS["masked"], (3, 3, 1), reference.grouped_gemm_masked),
}


# --- shape rules ----------------------------------------------------------------------------------
def _abstract_eval(spec: OpSpec, *avals: Any, **params: Any) -> jax.core.ShapedArray:
    # The public wrappers give users readable errors; these checks guard direct binds.
    where = f"jax_dgpt primitive {spec.target}"
    if tuple(len(x.shape) for x in avals) != spec.operand_ranks:
        raise ValueError(f"{where}: operand ranks must be {spec.operand_ranks}, got {tuple(x.shape for x in avals)}")
    for name, aval, dtype in zip(("a", "b", "m_indices/masked_m"), avals, (FP8, FP8, INT32)):
        if np.dtype(aval.dtype) != dtype:
            raise TypeError(f"{where}: {name} must have dtype {dtype.name}, got {np.dtype(aval.dtype).name}")
    m, n, k, g = spec.problem(*avals)
    b_k = avals[1].shape[-1]
    if b_k != k or min(m, n, k, g) <= 0 or k % K_ALIGNMENT or n % N_ALIGNMENT:
        raise ValueError(
            f"{where}: needs equal K, no empty dimension, K % {K_ALIGNMENT} == 0 and "
            f"N % {N_ALIGNMENT} == 0 (the public wrapper pads); got {[x.shape for x in avals]}"
        )
    if max(m, n, k) > MAX_DIM or g > MAX_GROUPS:
        raise ValueError(f"{where}: M, N and K must be at most 2**31 and G at most 2**20, got M={m} N={n} K={k} G={g}")
    if spec.kind == "masked" and (avals[0].shape[0] != g or avals[2].shape != (g,)):
        raise ValueError(f"{where}: a, b and masked_m must agree on G, got {[x.shape for x in avals]}")
    if spec.kind == "contiguous" and avals[2].shape != (m,):
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
        overrides: tuple[tuple[str, int], ...] = (),
        expected_m: int | None = None,
    ):
        device.check_cuda_devices()
        m, n, k, g = (plain_int(name, v) for name, v in zip("mnkg", spec.problem(*ctx.avals_in)))
        cfg = heuristics.select_config(spec.kind, m, n, k, g, num_sms, expected_m=expected_m, **dict(overrides))
        if config.settings.print_configs:
            key = (spec.op, m, n, k, g, expected_m, num_sms, overrides)
            _print_config_once(key, heuristics.describe(spec.op, m, n, k, g, cfg, expected_m=expected_m))
        attributes = ffi_attributes(m=m, n=n, k=k, num_groups=g, **cfg.as_attributes())
        return jax.ffi.ffi_lowering(spec.target)(ctx, *operands, **attributes)

    return lowering


def _cpu_lowering(spec: OpSpec) -> Callable[..., Any]:
    def fn(
        *operands: jax.Array,
        num_sms: int,
        overrides: tuple[tuple[str, int], ...] = (),
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
        return _empty_batch("gemm", args, dims), 0
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


gemm_p = _define("gemm")
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


for _spec, _prim in ((SPECS["gemm"], gemm_p), (SPECS["contiguous"], contiguous_p), (SPECS["masked"], masked_p)):
    ad.primitive_jvps[_prim] = _not_differentiable(_spec.op)
