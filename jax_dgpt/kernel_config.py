"""The one kernel configuration type, from the heuristics to the kernel.

:class:`KernelConfig` is what :func:`jax_dgpt.heuristics.select_config` returns. It lowers as one FFI
dictionary attribute, ``config`` (:meth:`KernelConfig.as_attribute`), which the C++ handler decodes
into the struct of the same fields (``kernels/kernel_config.cuh``); the source generator and the
kernel template read those fields by name. Validity rules and limits live in C++ only and are asked
for through the extension: :meth:`KernelConfig.error` and :func:`limits`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from ._native import load as _native

__all__ = [
    "FP8_DTYPES",
    "LAYOUTS",
    "OUT_DTYPES",
    "SWITCH_FIELDS",
    "TUNING_FIELDS",
    "KernelConfig",
    "Operands",
    "limits",
]

# One name per layout, in Python, C++ (dgpt::Layout) and the FFI targets (dgpt_gemm_<layout>).
LAYOUTS = ("normal", "contiguous", "masked", "k_grouped", "ragged")
# Element types by their code in the config (a_dtype / b_dtype, out_dtype): dgpt::Fp8Type, dgpt::OutType.
FP8_DTYPES = ("float8_e4m3fn", "float8_e5m2")
OUT_DTYPES = ("bfloat16", "float32")
# The fields that say how the kernel solves a problem rather than which problem; jax_dgpt.forcing can
# force them (the grid follows from the SM count, set_num_sms).
TUNING_FIELDS = ("block_m", "block_n", "num_stages", "num_k_splits", "k_interleave", "multicast_a")
# The tuning fields that are switches (0 or 1) rather than counts.
SWITCH_FIELDS = ("k_interleave", "multicast_a")


@functools.cache
def limits() -> dict[str, int]:
    """The kernel configuration's limits (block sizes, alignments, shared memory), by name.

    Keys: ``block_k``, ``block_m_small``, ``block_m_large``, ``block_m_double``, ``block_n_step``,
    ``max_block_n``, ``max_block_n_double``, ``min_stages``, ``max_stages``, ``max_k_splits``,
    ``k_alignment``, ``n_alignment``, ``m_alignment_contiguous``, ``max_dim``, ``max_groups``,
    ``max_grid_size``, ``max_smem_bytes``.
    """
    return {name: int(value) for name, value in _native().limits().items()}


@dataclasses.dataclass(frozen=True)
class Operands:
    """What the kernel reads and writes besides the layout's shapes: element types, scales, accumulation.

    Its fields are :class:`KernelConfig` fields of the same names (compile-time constants of the kernel);
    the public ops build it from their arguments and it reaches the heuristics inside the problem.
    """

    a_dtype: str = "float8_e4m3fn"  # one of FP8_DTYPES
    b_dtype: str = "float8_e4m3fn"
    out_dtype: str = "bfloat16"  # one of OUT_DTYPES
    accumulate: bool = False  # the output starts as c (float32) and the kernel adds into it
    has_scale_a: bool = False
    has_scale_b: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (("a_dtype", FP8_DTYPES), ("b_dtype", FP8_DTYPES), ("out_dtype", OUT_DTYPES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"jax_dgpt: {name} must be one of {allowed}, got {getattr(self, name)!r}")

    def config_fields(self) -> dict[str, int]:
        """The :class:`KernelConfig` fields (plain ints) this stands for."""
        return {
            "a_dtype": FP8_DTYPES.index(self.a_dtype),
            "b_dtype": FP8_DTYPES.index(self.b_dtype),
            "out_dtype": OUT_DTYPES.index(self.out_dtype),
            "accumulate": int(self.accumulate),
            "has_scale_a": int(self.has_scale_a),
            "has_scale_b": int(self.has_scale_b),
        }


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """One kernel configuration: a static problem and how the kernel solves it. Plain ``int`` fields.

    ``m``, ``num_groups`` and ``grid_size`` are run-time values of the kernel (one cubin serves every
    M); the other fields are compile-time constants.
    """

    layout: str  # one of LAYOUTS
    m: int  # rows of A: M, or Mmax per group for "masked"
    n: int  # columns of the output (a multiple of 8)
    k: int  # the reduction length (a multiple of 16)
    num_groups: int  # G (1 for "normal")
    block_m: int  # rows of one output tile
    block_n: int  # columns of one output tile
    num_stages: int  # shared-memory ring of A/B stages
    grid_size: int  # persistent CTAs launched (whole clusters)
    num_k_splits: int = 1  # K split over a cluster: CTAs sharing one tile, one K slice each
    k_interleave: int = 0  # K split inside the CTA: 1 = two math warpgroups take alternate K blocks
    # 1: clusters of two CTAs take column-adjacent tiles of one row block; each loads half of their shared A
    # stage into both (TMA multicast), halving A's reads from L2
    multicast_a: int = 0
    a_dtype: int = 0  # index into FP8_DTYPES
    b_dtype: int = 0
    out_dtype: int = 0  # index into OUT_DTYPES
    accumulate: int = 0  # 1: the output holds c on entry and the kernel adds into it (float32 only)
    has_scale_a: int = 0  # 1: rows scaled by an fp32 scale_a operand
    has_scale_b: int = 0  # 1: columns scaled by an fp32 scale_b operand

    def as_attribute(self) -> dict[str, Any]:
        """The config as the FFI ``config`` dictionary attribute (ints lower as i64, the layout as a string)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def error(self) -> str | None:
        """None when the kernel can take this config, else the rule it breaks (checked in C++)."""
        return _native().check_config(self.as_attribute())

    def launch_shape(self) -> dict[str, int]:
        """``smem_bytes`` (dynamic shared memory), ``threads`` (per CTA) and ``cluster_size`` of the kernel
        of this config; ValueError naming the rule when the config is invalid."""
        return {name: int(value) for name, value in _native().launch_shape(self.as_attribute()).items()}

    def describe(self) -> str:
        """A one-line description of the tuning fields (the problem's fields left out)."""
        text = f"block_m={self.block_m} block_n={self.block_n} stages={self.num_stages} grid={self.grid_size}"
        if self.num_k_splits > 1:
            text += f" k_splits={self.num_k_splits}"
        if self.k_interleave:
            text += " k_interleave=1"
        if self.multicast_a:
            text += " multicast_a=1"
        for name, names in (("a_dtype", FP8_DTYPES), ("b_dtype", FP8_DTYPES), ("out_dtype", OUT_DTYPES)):
            if getattr(self, name):
                text += f" {name}={names[getattr(self, name)]}"
        for name in ("accumulate", "has_scale_a", "has_scale_b"):
            if getattr(self, name):
                text += f" {name}=1"
        return text
