"""Kernel configuration heuristics: a pure function of static shape, layout and SM count.

No JAX and no CUDA calls live here. The chosen :class:`GemmConfig` travels to C++ as FFI attributes,
so it is visible in the lowered program and testable on a machine without a GPU. The kernel's
shared-memory layout has one owner, the native extension: stage counts are found by asking
``_C.smem_size`` (the extension is loaded through :func:`jax_dgpt._native.load`).

Rules (correctness first; tuning comes in a later issue):

- ``block_m`` is 64 when the effective M (``m`` for "normal" and "contiguous", ``expected_m``
  for "masked") is at most 64, else 128. Both divide the contiguous layout's 128-row alignment.
- ``block_n`` is a multiple of 16 in ``[16, min(MAX_BLOCK_N[block_m], round_up(n, 16))]``
  chosen to minimise the number of waves ``ceil(tiles / num_sms)``; ties go to the larger
  last-wave occupancy, then to the larger ``block_n``.
- ``num_stages`` is the largest ``s`` in ``[MIN_STAGES, MAX_STAGES]`` whose shared memory fits.
- ``num_k_splits`` is 2 for normal GEMMs with M <= 64, K >= 4096 and N <= 4096 (:func:`auto_k_splits`),
  else 1; with splits, whole clusters of ``num_k_splits`` CTAs count as one unit below.
- ``num_sms`` (the persistent grid size) is ``min(num_sms, tiles)`` for "normal" and
  "contiguous"; "masked" keeps ``num_sms`` because its tile count depends on device data.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator

from ._ints import static_int
from ._native import load as _native

__all__ = [
    "BLOCK_M_CHOICES",
    "BLOCK_N_STEP",
    "KINDS",
    "MAX_BLOCK_N",
    "MAX_STAGES",
    "MIN_STAGES",
    "GemmConfig",
    "auto_k_splits",
    "block_n_candidates",
    "ceil_div",
    "describe",
    "force_k_splits",
    "force_multicast",
    "force_pingpong",
    "force_tile",
    "forced_k_splits",
    "forced_multicast",
    "forced_overrides",
    "last_wave_occupancy",
    "num_tiles",
    "num_waves",
    "round_up",
    "select_block_m",
    "select_config",
    "select_num_stages",
]

KINDS = ("normal", "contiguous", "masked")
BLOCK_M_CHOICES = (64, 128)
BLOCK_K = 128  # K per pipeline stage (the kernel's layout::kBlockK)
# NOTES: the consumer warpgroups keep a 64 x block_n fp32 accumulator plus the promoted copy in
# registers; 208 columns is the widest that ptxas fits without spilling for every layout (224 spills
# in the masked kernel, 256 in all; measured with -Xptxas -v, nvcc 13.0).
MAX_BLOCK_N = {64: 208, 128: 208}
# NOTES: wgmma takes N in steps of 8; 16 keeps the bf16 epilogue's stmatrix tiles whole.
BLOCK_N_STEP = 16
MIN_STAGES = 2
MAX_STAGES = 8


@dataclasses.dataclass(frozen=True)
class GemmConfig:
    """One kernel configuration. Every field is a plain Python ``int``."""

    block_m: int
    block_n: int
    num_stages: int
    num_sms: int
    num_k_splits: int = 1  # CTAs of a cluster sharing one tile, one K slice each (split-K)
    num_multicast: int = 1  # normal GEMMs: CTAs of a cluster sharing one B tile (vertically adjacent tiles)
    pingpong: int = 0  # 1: two math warpgroups take turns (128 rows: per K block; 64 rows: alternate K blocks)

    def as_attributes(self) -> dict[str, int]:
        """The config as FFI attributes: the names C++ binds, plain ``int`` values (i64)."""
        return {
            "block_m": int(self.block_m),
            "block_n": int(self.block_n),
            "num_stages": int(self.num_stages),
            "num_sms": int(self.num_sms),
            "num_k_splits": int(self.num_k_splits),
            "num_multicast": int(self.num_multicast),
            "pingpong": int(self.pingpong),
        }


# --- forced settings (tests, benchmarks, tuning) --------------------------------------------------
# NOTES: split-K is chosen by `auto_k_splits` only where the H200 benchmark measured a gain
# (benchmarks/KERNEL_LOG.md, v2). B multicast and pingpong are correct on the GPU but measured 0.96-1.03x of
# the plain kernel's time on six large-M shapes (KERNEL_LOG.md, fourth session): no gain, so the heuristics
# never choose them.
# The force_* contexts below set either (and tile parameters) for ops traced inside them; the public ops
# read `forced_overrides` when called and pass it down as one static parameter.
_forced: contextvars.ContextVar[tuple[tuple[str, int], ...]] = contextvars.ContextVar("forced", default=())


@contextlib.contextmanager
def _forcing(**settings: int | None) -> Iterator[None]:
    """Sets (or, for None, clears) these ``select_config`` keywords for the context's duration."""
    merged = dict(_forced.get())
    for name, value in settings.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    token = _forced.set(tuple(sorted(merged.items())))
    try:
        yield
    finally:
        _forced.reset(token)


def _forced_int(fn: str, name: str, value: object, largest: int, rule: str) -> int:
    result = static_int(f"jax_dgpt.heuristics.{fn}", name, value, positive=True)
    if result > largest:
        raise ValueError(f"jax_dgpt.heuristics.{fn}: {name} must be {rule}, got {result}")
    return result


def force_k_splits(num_k_splits: int) -> contextlib.AbstractContextManager[None]:
    """Ops lowered inside this context split K over clusters of ``num_k_splits`` CTAs (1 to 8).

    For experiments and tests: functions traced before the context keep their compiled config.
    """
    return _forcing(num_k_splits=_forced_int("force_k_splits", "num_k_splits", num_k_splits, 8, "at most 8"))


def forced_k_splits() -> int | None:
    """The split count `force_k_splits` set for this context, or None."""
    return dict(_forced.get()).get("num_k_splits")


def force_multicast(num_multicast: int) -> contextlib.AbstractContextManager[None]:
    """Normal GEMMs lowered inside this context share B tiles over clusters of ``num_multicast`` CTAs (1 or 2).

    For experiments and tests, like :func:`force_k_splits`; the grouped ops ignore it.
    """
    return _forcing(num_multicast=_forced_int("force_multicast", "num_multicast", num_multicast, 2, "1 or 2"))


def forced_multicast() -> int | None:
    """The multicast width `force_multicast` set for this context, or None."""
    return dict(_forced.get()).get("num_multicast")


def force_pingpong(pingpong: int = 1) -> contextlib.AbstractContextManager[None]:
    """Ops lowered inside this context let two math warpgroups take turns (1) or not (0).

    An experiment (benchmarks/KERNEL_LOG.md). On 128-row tiles each warpgroup issues a K block's wgmmas
    only after the other issued its own, so one warpgroup's fp32 promotion overlaps the other's
    tensor-core work; measured on the H200 it neither gains nor loses more than 3%. On 64-row tiles a
    second math warpgroup takes every other K block of the same rows, halving the serial chain of
    (wait, wgmma, promote) per warpgroup without a cluster; it replaces split-K there. The two halves'
    sums are added in a fixed order, so results are reproducible but not bitwise equal to the kernel
    without pingpong.
    """
    value = static_int("jax_dgpt.heuristics.force_pingpong", "pingpong", pingpong)
    if value not in (0, 1):
        raise ValueError(f"jax_dgpt.heuristics.force_pingpong: pingpong must be 0 or 1, got {value}")
    return _forcing(pingpong=value)


def force_tile(
    *, block_m: int | None = None, block_n: int | None = None, num_stages: int | None = None
) -> contextlib.AbstractContextManager[None]:
    """Ops lowered inside this context use these tile parameters instead of the heuristics' choice.

    For tuning experiments (``benchmarks/bench.py --block-n``); values the kernel cannot take raise
    ValueError when an op is lowered. Parameters left out are chosen by the heuristics.
    """
    given = {"block_m": block_m, "block_n": block_n, "num_stages": num_stages}
    return _forcing(
        **{
            name: None if value is None else static_int("jax_dgpt.heuristics.force_tile", name, value, positive=True)
            for name, value in given.items()
        }
    )


def forced_overrides(kind: str) -> tuple[tuple[str, int], ...]:
    """Every forced setting of this context that applies to `kind`, as ``select_config`` keywords.

    Hashable, so the ops pass it as a static argument and jit caches keep forced configs apart.
    """
    _check_kind(kind)
    return tuple((name, value) for name, value in _forced.get() if kind == "normal" or name != "num_multicast")


def ceil_div(x: int, y: int) -> int:
    return -(-x // y)


def round_up(x: int, multiple: int) -> int:
    return ceil_div(x, multiple) * multiple


def _positive_int(name: str, value: object) -> int:
    return static_int("jax_dgpt.heuristics", name, value, positive=True)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"jax_dgpt.heuristics: kind must be one of {KINDS}, got {kind!r}")


def select_block_m(m_eff: int) -> int:
    """64 rows when the effective M fits in one 64-row tile, else 128.

    NOTES: the contiguous kernel takes each row block's expert from the block's first row. With
    block_m = 128, or a single 64-row block, that row is the first of a 128-row alignment block, so
    the result matches the reference's rule for layouts that break the alignment
    (``reference.grouped_gemm_contiguous``); keep that true if this rule changes.
    """
    return 64 if m_eff <= 64 else 128


def block_n_candidates(block_m: int, n: int) -> tuple[int, ...]:
    """Every block_n the heuristics consider for this block_m and N, in increasing order."""
    largest = min(MAX_BLOCK_N[block_m], round_up(n, BLOCK_N_STEP))
    return tuple(range(BLOCK_N_STEP, largest + 1, BLOCK_N_STEP))


def num_tiles(kind: str, m_eff: int, n: int, num_groups: int, block_m: int, block_n: int) -> int:
    """Output tiles of one launch (for "masked", with ``m_eff = expected_m``: expected tiles)."""
    tiles = ceil_div(m_eff, block_m) * ceil_div(n, block_n)
    return tiles * num_groups if kind == "masked" else tiles


def num_waves(tiles: int, num_sms: int) -> int:
    return ceil_div(tiles, num_sms)


def last_wave_occupancy(tiles: int, num_sms: int) -> int:
    """Busy SMs in the last wave (``num_sms`` when the tiles fill every wave)."""
    return tiles - (num_waves(tiles, num_sms) - 1) * num_sms


def _interleaves_k(block_m: int, pingpong: int) -> bool:
    """Pingpong on a 64-row tile: two warpgroups split each tile's K blocks (layout::interleaves_k in C++)."""
    return block_m == 64 and bool(pingpong)


def fits_in_shared_memory(block_m: int, block_n: int, num_k_splits: int = 1, pingpong: int = 0) -> bool:
    """Whether the tile fits with the minimum stage count (split-K, and pingpong on 64-row tiles, add an
    fp32 partial tile)."""
    native = _native()
    return int(native.smem_size(block_m, block_n, MIN_STAGES, num_k_splits, pingpong)) <= int(native.MAX_SMEM_BYTES)


def select_num_stages(block_m: int, block_n: int, num_k_splits: int = 1, pingpong: int = 0) -> int:
    """The largest stage count whose shared memory (as the kernel lays it out) fits in one SM."""
    native = _native()
    limit = int(native.MAX_SMEM_BYTES)
    # Pingpong on 64-row tiles: the two warpgroups alternate stages, so the ring needs an even length.
    step = 2 if _interleaves_k(block_m, pingpong) else 1
    for stages in range(MAX_STAGES, MIN_STAGES - 1, -step):
        if int(native.smem_size(block_m, block_n, stages, num_k_splits, pingpong)) <= limit:
            return stages
    needed = int(native.smem_size(block_m, block_n, MIN_STAGES, num_k_splits, pingpong))
    raise ValueError(
        f"jax_dgpt.heuristics: block_m={block_m} block_n={block_n} does not fit in shared memory "
        f"with {MIN_STAGES} stages ({needed} > {limit} bytes)"
    )


def auto_k_splits(kind: str, m_eff: int, n: int, k: int) -> int:
    """Split count the heuristics choose when none is forced: 2 or 1.

    NOTES: with M <= 64 and a long K, each CTA's chain of K blocks (wait, wgmma, promote, release)
    is the critical path, not HBM: two CTAs per tile halve it. Measured on the H200 (KERNEL_LOG.md
    v2): 1.1-1.4x faster for M <= 64, K = 7168, N in {2112, 4096}; even at N = 7168, K = 16384,
    M = 64; slower for K <= 2048 and for 4 splits everywhere. Normal GEMMs only: the grouped
    layouts have enough tiles.
    """
    return 2 if kind == "normal" and m_eff <= 64 and k >= 4096 and n <= 4096 else 1


def select_config(
    kind: str,
    m: int,
    n: int,
    k: int,
    num_groups: int,
    num_sms: int,
    expected_m: int | None = None,
    num_k_splits: int | None = None,
    num_multicast: int | None = None,
    pingpong: int | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_stages: int | None = None,
) -> GemmConfig:
    """Picks the kernel configuration for one static problem.

    Args:
      kind: "normal", "contiguous" or "masked".
      m: rows of A: M for "normal" and "contiguous" (all experts together), Mmax for "masked".
      n: columns of the output (N).
      k: the reduction length (K); does not change the choice today but is part of the problem.
      num_groups: 1 for "normal", G for the grouped layouts.
      num_sms: SMs the persistent grid may use.
      expected_m: "masked" only: the expected rows per group (the static hint).
      num_k_splits: split K over clusters of this many CTAs (1 to 8); None lets the heuristics
        choose (:func:`auto_k_splits`).
      num_multicast: "normal" only: 2 lets pairs of CTAs (vertically adjacent tiles) share each B
        tile through TMA multicast; None or 1: no multicast. Excludes split-K.
      pingpong: 1 lets two math warpgroups take turns: on a 128-row tile each issues its 64 rows' wgmma
        for a K block after the other; on a 64-row tile a second warpgroup takes every other K block of
        the same rows (K split inside the CTA, which replaces split-K: num_k_splits 1, no multicast).
        None or 0: off.
      block_m, block_n, num_stages: fix these instead of choosing them (experiments, :func:`force_tile`);
        a value the kernel cannot take raises ValueError.

    Returns:
      A :class:`GemmConfig`.
    """
    _check_kind(kind)
    m, n, k = _positive_int("m", m), _positive_int("n", n), _positive_int("k", k)
    num_groups, num_sms = _positive_int("num_groups", num_groups), _positive_int("num_sms", num_sms)
    if kind == "normal" and num_groups != 1:
        raise ValueError(f"jax_dgpt.heuristics: kind 'normal' needs num_groups == 1, got {num_groups}")
    if kind == "masked":
        if expected_m is None:
            raise ValueError("jax_dgpt.heuristics: kind 'masked' needs expected_m")
        m_eff = min(_positive_int("expected_m", expected_m), m)
    else:
        m_eff = m

    forced_block_m, forced_block_n = block_m, block_n
    block_m = select_block_m(m_eff) if forced_block_m is None else _positive_int("block_m", forced_block_m)
    if block_m not in BLOCK_M_CHOICES:
        raise ValueError(f"jax_dgpt.heuristics: block_m must be one of {BLOCK_M_CHOICES}, got {block_m}")
    if kind == "contiguous" and block_m != select_block_m(m_eff):
        # The kernel reads each row block's expert from its first row (see select_block_m).
        raise ValueError(f"jax_dgpt.heuristics: the contiguous layout with M={m} needs block_m={select_block_m(m_eff)}")
    multicast = 1 if num_multicast is None else _positive_int("num_multicast", num_multicast)
    if multicast > 2:
        raise ValueError(f"jax_dgpt.heuristics: num_multicast must be 1 or 2, got {multicast}")
    if multicast > 1 and kind != "normal":
        raise ValueError(f"jax_dgpt.heuristics: num_multicast=2 is for normal GEMMs, got kind {kind!r}")
    if multicast > 1 and num_k_splits not in (None, 1):
        raise ValueError("jax_dgpt.heuristics: num_multicast=2 and split-K exclude each other")
    if multicast > num_sms:
        raise ValueError(f"jax_dgpt.heuristics: num_multicast={multicast} needs at least as many SMs, got {num_sms}")
    if pingpong is not None and static_int("jax_dgpt.heuristics", "pingpong", pingpong) not in (0, 1):
        raise ValueError(f"jax_dgpt.heuristics: pingpong must be 0 or 1, got {pingpong}")
    pingpong = int(bool(pingpong))
    interleave_k = _interleaves_k(block_m, pingpong)
    if interleave_k and (multicast > 1 or num_k_splits not in (None, 1)):
        raise ValueError(
            "jax_dgpt.heuristics: pingpong on 64-row tiles splits K inside the CTA and excludes split-K and "
            f"multicast, got num_k_splits={num_k_splits} num_multicast={multicast}"
        )
    if num_k_splits is None:
        # Never more CTAs than the SMs the caller allows (set_num_sms).
        auto = 1 if multicast > 1 or interleave_k else auto_k_splits(kind, m_eff, n, k)
        splits = min(auto, num_sms)
    else:
        splits = _positive_int("num_k_splits", num_k_splits)
    if splits > 8:
        raise ValueError(f"jax_dgpt.heuristics: num_k_splits must be at most 8, got {splits}")
    splits = min(splits, ceil_div(k, BLOCK_K))  # every CTA of a cluster gets at least one K block
    # Tiles (or multicast tile pairs) in flight at once: CTAs, or clusters.
    units = max(1, num_sms // (splits * multicast))
    candidates = block_n_candidates(block_m, n)
    if forced_block_n is not None:
        forced = _positive_int("block_n", forced_block_n)
        if forced % BLOCK_N_STEP or not BLOCK_N_STEP <= forced <= MAX_BLOCK_N[block_m]:
            raise ValueError(
                f"jax_dgpt.heuristics: block_n must be a multiple of {BLOCK_N_STEP} in "
                f"[{BLOCK_N_STEP}, {MAX_BLOCK_N[block_m]}], got {forced}"
            )
        if not fits_in_shared_memory(block_m, forced, splits, pingpong):
            raise ValueError(f"jax_dgpt.heuristics: block_m={block_m} block_n={forced} does not fit in shared memory")
        candidates = (forced,)
    best: tuple[int, int, int] | None = None  # (waves, -occupancy, -block_n): smaller is better
    for block_n in candidates:
        if not fits_in_shared_memory(block_m, block_n, splits, pingpong):
            continue
        tiles = _scheduled_units(kind, m_eff, n, num_groups, block_m, block_n, multicast)
        key = (num_waves(tiles, units), -last_wave_occupancy(tiles, units), -block_n)
        if best is None or key < best:
            best = key
    assert best is not None  # block_n = 16 always fits
    block_n = -best[2]

    tiles = _scheduled_units(kind, m_eff, n, num_groups, block_m, block_n, multicast)
    # Whole clusters; each cluster walks its units (tiles, or tile pairs) like one CTA does alone.
    clusters = units if kind == "masked" else min(units, tiles)
    stages = select_num_stages(block_m, block_n, splits, pingpong)
    if num_stages is not None:
        forced = _positive_int("num_stages", num_stages)
        if not MIN_STAGES <= forced <= stages:
            raise ValueError(
                f"jax_dgpt.heuristics: num_stages must be in [{MIN_STAGES}, {stages}] for block_m={block_m} "
                f"block_n={block_n} (shared memory), got {forced}"
            )
        if interleave_k and forced % 2:
            raise ValueError(f"jax_dgpt.heuristics: pingpong on 64-row tiles needs an even num_stages, got {forced}")
        stages = forced
    return GemmConfig(
        block_m=block_m,
        block_n=block_n,
        num_stages=stages,
        num_sms=int(clusters * splits * multicast),
        num_k_splits=int(splits),
        num_multicast=int(multicast),
        pingpong=pingpong,
    )


def _scheduled_units(kind: str, m_eff: int, n: int, num_groups: int, block_m: int, block_n: int, multicast: int) -> int:
    """What the kernel's scheduler hands out: tiles, or with multicast pairs of vertically adjacent tiles."""
    if multicast == 1:
        return num_tiles(kind, m_eff, n, num_groups, block_m, block_n)
    return ceil_div(ceil_div(m_eff, block_m), multicast) * ceil_div(n, block_n)


def describe(
    op: str,
    m: int,
    n: int,
    k: int,
    num_groups: int,
    config: GemmConfig,
    expected_m: int | None = None,
) -> str:
    """The one-line ``DG_PRINT_CONFIGS`` message for a chosen config."""
    shape = f"M={m} N={n} K={k}"
    if num_groups != 1 or op != "gemm":
        shape += f" G={num_groups}"
    if expected_m is not None:
        shape += f" expected_m={expected_m}"
    return (
        f"jax_dgpt: {op} {shape} -> block_m={config.block_m} block_n={config.block_n} "
        f"stages={config.num_stages} sms={config.num_sms}"
        + (f" k_splits={config.num_k_splits}" if config.num_k_splits > 1 else "")
        + (f" multicast={config.num_multicast}" if config.num_multicast > 1 else "")
        + (" pingpong=1" if config.pingpong else "")
    )
