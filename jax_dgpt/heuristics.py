"""Kernel configuration heuristics: which valid :class:`KernelConfig` to use for one static problem.

A pure function of the problem (layout and shape), the SM count the kernel may use and the fields
forced by :mod:`jax_dgpt.forcing`: no JAX API and no CUDA call, so it runs the same on a machine
without a GPU. It only chooses: what the kernel can take is decided in C++ (:meth:`KernelConfig.error`,
through the native extension), and limits come from :func:`kernel_config.limits`. K, like M and N,
enters through the tile count and split-K. Four small stages:

1. :func:`candidates` — every config worth considering: ``block_m`` from the effective M
   (:func:`select_block_m`, plus 256-row tiles where :func:`tries_block_m_double` says so), each
   ``block_n`` step up to N, each stage count, split-K where it measured faster (:func:`auto_k_splits`),
   A multicast over 2-CTA clusters for rows that are not whole L2 lines (:func:`auto_multicast_a`), and
   the persistent grid;
2. :func:`valid` — those the kernel can take (shared memory, alignment, limits);
3. :func:`score` — per ``block_m``: fewest waves of tiles over the SMs, then the fullest last wave, then
   the fewest columns computed past N, then the widest tile, then the most stages;
4. :func:`select_config` — of each ``block_m``'s best, the one with the least work on its busiest CTA
   (:func:`weighted_cells`, ties to fewer rows), on the fewest CTAs that keep its waves (:func:`trimmed`);
   or a ValueError naming the rules that rejected every candidate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

from ._ints import static_int
from .forcing import Overrides
from .kernel_config import LAYOUTS, KernelConfig, Operands, limits

__all__ = [
    "PREFERRED_MAX_STAGES",
    "Problem",
    "auto_k_splits",
    "auto_multicast_a",
    "candidates",
    "ceil_div",
    "describe",
    "last_wave_occupancy",
    "num_tiles",
    "num_waves",
    "score",
    "select_block_m",
    "select_config",
    "tries_block_m_double",
    "trimmed",
    "valid",
    "weighted_cells",
]

# NOTES: a choice, not a limit (the kernel takes up to limits()["max_stages"]): eight stages of the
# largest tiles already hide the latency of HBM on the H100/H200, and fewer leave shared memory free.
PREFERRED_MAX_STAGES = 8
# NOTES: 256-row tiles (two row waves per math warpgroup) quantize into fewer waves on some large shapes
# (4096 x 7168: 7 waves of 256 x 128 against 9 of 128 x 208), for a longer epilogue per tile and 3 stages.
# Measured on the H200 (benchmarks/KERNEL_LOG.md v15): 2-11% faster where they save >= 4.5% of the busiest
# CTA's cells, 1-2% slower where they save 1.6%, 8% slower as 256 x 64 tiles (a 256-row A stage per 64
# columns). Hence: only from DOUBLE_MIN_BLOCK_N columns, and only when they save DOUBLE_MARGIN.
DOUBLE_MIN_BLOCK_N = 112
DOUBLE_MARGIN = 1.04


def ceil_div(x: int, y: int) -> int:
    return -(-x // y)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One static problem. ``m`` is Mmax per group for "masked"; ``expected_m`` is its static hint;
    ``operands`` the element types, scales and accumulation (they change shared memory, not the tiles)."""

    layout: str
    m: int
    n: int
    k: int
    num_groups: int
    expected_m: int | None = None
    operands: Operands = Operands()

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"jax_dgpt.heuristics: layout must be one of {LAYOUTS}, got {self.layout!r}")
        for name in ("m", "n", "k", "num_groups"):
            static_int("jax_dgpt.heuristics", name, getattr(self, name), positive=True)
        if (self.layout == "masked") != (self.expected_m is not None):
            raise ValueError("jax_dgpt.heuristics: expected_m is given for the masked layout, and only for it")

    @property
    def m_eff(self) -> int:
        """Rows per group the tiles are sized for: M, for "masked" the expected rows (at most Mmax), for
        "ragged" the mean rows per group."""
        if self.layout == "ragged":
            return ceil_div(self.m, self.num_groups)
        return self.m if self.expected_m is None else min(self.expected_m, self.m)


# --- tile arithmetic --------------------------------------------------------------------------------
def num_tiles(problem: Problem, block_m: int, block_n: int, columns_per_cluster: int = 1) -> int:
    """Output tiles of one launch (for "masked": the expected tiles; "k_grouped": every group's; "ragged": at
    most one partial row block per group on top of M's). With multicast_a (``columns_per_cluster`` 2) an odd
    column count has a last column of peer-only tiles, which occupy a CTA too."""
    n_blocks = ceil_div(ceil_div(problem.n, block_n), columns_per_cluster) * columns_per_cluster
    if problem.layout == "ragged":
        return (ceil_div(problem.m, block_m) + problem.num_groups) * n_blocks
    tiles = ceil_div(problem.m_eff, block_m) * n_blocks
    return tiles * problem.num_groups if problem.layout in ("masked", "k_grouped") else tiles


def num_waves(tiles: int, units: int) -> int:
    return ceil_div(tiles, units)


def last_wave_occupancy(tiles: int, units: int) -> int:
    """Busy units (CTAs or clusters) in the last wave (``units`` when the tiles fill every wave)."""
    return tiles - (num_waves(tiles, units) - 1) * units


# --- choices ---------------------------------------------------------------------------------------
def select_block_m(m_eff: int) -> int:
    """64 rows when the effective M fits in one 64-row tile, else 128."""
    return limits()["block_m_small"] if m_eff <= limits()["block_m_small"] else limits()["block_m_large"]


def tries_block_m_double(problem: Problem) -> bool:
    """Whether 256-row tiles compete with the 128-row ones: normal GEMMs with a bf16 output and at least two
    256-row blocks. NOTES: the kernel takes them for the normal layout only, with any output; a float32
    output stages each row block through the same small ring, not measured yet."""
    bf16 = problem.operands.out_dtype == "bfloat16"
    return problem.layout == "normal" and bf16 and problem.m >= 2 * limits()["block_m_double"]


def auto_k_splits(problem: Problem) -> int:
    """Split count chosen when none is forced: 2 or 1.

    NOTES: with M <= 64 and a long K, each CTA's chain of K blocks (wait, wgmma, promote, release) is
    the critical path, not HBM: two CTAs per tile halve it. Measured on the H200 (KERNEL_LOG.md v2):
    1.1-1.4x faster for M <= 64, K = 7168, N in {2112, 4096}; even at N = 7168, K = 16384, M = 64;
    slower for K <= 2048 and for 4 splits everywhere. Normal GEMMs only: the grouped layouts have
    enough tiles.
    """
    small = problem.layout == "normal" and problem.m_eff <= limits()["block_m_small"]
    return 2 if small and problem.k >= 4096 and problem.n <= 4096 else 1


# NOTES: TMA loads whole 128-byte L2 lines fastest. Rows of A and B of other lengths (K % 128 != 0) split each
# box row over two lines and halve the load rate (benchmarks/probes/tma_rows.cu, H200: 447 against 221 us to
# stream the tiles of 16384 x 1552 x 7184); a 2-CTA cluster that multicasts A issues half of A's loads per SM.
# Measured (KERNEL_LOG.md v18): 16384x1552x7184 417 -> 294 us, 8192x1552x7184 213 -> 178, 2048x2112x7184
# 86.6 -> 67.9; with the 128-byte L2 promotion of such rows too (ffi/tma.cc): 280, 152 and 59.5 us. On
# whole-line rows multicast_a is 1-4% slower (v16), and on short K (4096x7168x576: 37.1 against 35.8 us) too,
# so it is chosen for split lines from MULTICAST_MIN_K only.
LINE_BYTES = 128
MULTICAST_MIN_K = 1024


def auto_multicast_a(problem: Problem, num_sms: int) -> int:
    """multicast_a chosen when none is forced: 1 for normal GEMMs without K splitting whose rows are not whole
    L2 lines and whose N takes at least two tile columns at any width, on two SMs or more; else 0."""
    split_lines = problem.k % LINE_BYTES != 0 and problem.k >= MULTICAST_MIN_K  # fp8: one byte per element
    wide = problem.n > limits()["max_block_n"]
    normal = problem.layout == "normal" and auto_k_splits(problem) == 1
    return int(normal and split_lines and wide and num_sms >= 2)


def _grid_size(problem: Problem, block_m: int, block_n: int, num_sms: int, splits: int, multicast_a: int) -> int:
    """Whole clusters, at most one per tile (a multicast pair: two tiles); the masked and ragged layouts' tile
    counts are only known on the device."""
    columns = 2 if multicast_a else 1  # tiles a cluster takes side by side
    cluster = splits * columns  # multicast_a excludes split-K (KernelConfig.error says so)
    units = max(1, num_sms // cluster)
    device_counted = problem.layout in ("masked", "ragged")
    tiles = num_tiles(problem, block_m, block_n, columns)
    clusters = units if device_counted else min(units, ceil_div(tiles, columns))
    return clusters * cluster


def tile_slots(config: KernelConfig) -> int:
    """Tiles in flight at once: one per CTA, or per cluster with split-K (its CTAs share a tile)."""
    return config.grid_size // config.num_k_splits


def columns_per_cluster(config: KernelConfig) -> int:
    """Tile columns a cluster takes side by side: 2 with multicast_a (kernels/kernel_config.cuh says the same)."""
    return 2 if config.multicast_a else 1


def trimmed(problem: Problem, config: KernelConfig) -> KernelConfig:
    """The config with the fewest CTAs (whole clusters) that keep its waves: 896 tiles take 7 waves on 128 CTAs
    as on 132. NOTES: idle SMs draw no power, which the busy ones' clocks get (DeepGEMM launches this way);
    measured 0.5-2.7% faster on 7 of 9 large shapes (benchmarks/KERNEL_LOG.md v15). Not for the masked and
    ragged layouts, whose tiles are counted on the device."""
    if problem.layout in ("masked", "ragged"):
        return config
    tiles = num_tiles(problem, config.block_m, config.block_n, columns_per_cluster(config))
    slots = ceil_div(tiles, num_waves(tiles, tile_slots(config)))
    # Whole clusters: split-K's CTAs share a slot; multicast pairs hold two.
    grid = slots * config.num_k_splits if not config.multicast_a else ceil_div(slots, 2) * 2
    return dataclasses.replace(config, grid_size=grid)


# --- the four stages --------------------------------------------------------------------------------
def candidates(problem: Problem, num_sms: int, forced: Overrides = ()) -> Iterator[KernelConfig]:
    """Every config worth considering, forced fields fixed."""
    lim, fixed = limits(), dict(forced)
    if "block_m" in fixed:
        block_ms: tuple[int, ...] = (fixed["block_m"],)
    else:
        block_ms = (select_block_m(problem.m_eff),)
        if tries_block_m_double(problem) and "num_k_splits" not in fixed and not fixed.get("k_interleave"):
            block_ms += (lim["block_m_double"],)
    for block_m in block_ms:
        for config in _candidates_with_rows(problem, num_sms, fixed, block_m):
            if "block_n" in fixed or block_m != lim["block_m_double"] or config.block_n >= DOUBLE_MIN_BLOCK_N:
                yield config


def _candidates_with_rows(problem: Problem, num_sms: int, fixed: dict, block_m: int) -> Iterator[KernelConfig]:
    lim = limits()
    k_interleave = fixed.get("k_interleave", 0)
    # Only one way to spend a cluster: forced K splitting or interleaving leaves no automatic multicast.
    automatic = not k_interleave and "num_k_splits" not in fixed
    multicast_a = fixed.get("multicast_a", auto_multicast_a(problem, num_sms) if automatic else 0)
    splits = fixed.get("num_k_splits", 1 if k_interleave or multicast_a else auto_k_splits(problem))
    # Every CTA of a cluster gets at least one K block, and no more CTAs than the SMs allowed.
    splits = max(1, min(splits, num_sms, ceil_div(problem.k, lim["block_k"])))
    widest = min(lim["max_block_n"], ceil_div(problem.n, lim["block_n_step"]) * lim["block_n_step"])
    block_ns = (
        (fixed["block_n"],) if "block_n" in fixed else range(lim["block_n_step"], widest + 1, lim["block_n_step"])
    )
    stages = (fixed["num_stages"],) if "num_stages" in fixed else range(PREFERRED_MAX_STAGES, lim["min_stages"] - 1, -1)
    for block_n in block_ns:
        grid_size = _grid_size(problem, block_m, block_n, num_sms, splits, multicast_a)
        for num_stages in stages:
            yield KernelConfig(
                layout=problem.layout,
                m=problem.m,
                n=problem.n,
                k=problem.k,
                num_groups=problem.num_groups,
                block_m=block_m,
                block_n=block_n,
                num_stages=num_stages,
                grid_size=grid_size,
                num_k_splits=splits,
                k_interleave=k_interleave,
                multicast_a=multicast_a,
                **problem.operands.config_fields(),
            )


def valid(configs: Iterable[KernelConfig]) -> tuple[list[KernelConfig], dict[str, KernelConfig]]:
    """The configs the kernel can take, and one rejected example per broken rule."""
    accepted, rejected = [], {}
    for config in configs:
        error = config.error()
        if error is None:
            accepted.append(config)
        else:
            rejected.setdefault(error.split("): ", 1)[-1], config)
    return accepted, rejected


def score(problem: Problem, config: KernelConfig) -> tuple[int, ...]:
    """Smaller is better: waves, then minus the last wave's occupancy, then the columns computed (N rounded up
    to whole tiles), then minus block_n, minus stages.

    NOTES: two widths with the same tiles (N = 2112: 11 tiles of 192 or of 208 columns) differ in the work
    of every tile; the wider one computes 176 columns past N in each row block (8% more on 7168x2112).
    """
    tiles = num_tiles(problem, config.block_m, config.block_n, columns_per_cluster(config))
    units = tile_slots(config)
    columns = ceil_div(problem.n, config.block_n) * config.block_n
    return (
        config.block_m,  # compared within one block_m (select_config weighs the rows)
        num_waves(tiles, units),
        -last_wave_occupancy(tiles, units),
        columns,
        -config.block_n,
        -config.num_stages,
    )


def select_config(problem: Problem, num_sms: int, forced: Overrides = ()) -> KernelConfig:
    """The best valid config for ``problem`` on ``num_sms`` SMs with the ``forced`` fields.

    Raises:
      ValueError: no candidate is valid (the message names each rule that rejected one).
    """
    num_sms = static_int("jax_dgpt.heuristics", "num_sms", num_sms, positive=True)
    unknown = sorted(set(dict(forced)) - {f.name for f in dataclasses.fields(KernelConfig)})
    if unknown:
        raise ValueError(f"jax_dgpt.heuristics: forced fields {unknown} are not KernelConfig fields")
    accepted, rejected = valid(candidates(problem, num_sms, forced))
    if not accepted:
        rules = "; ".join(f"{rule} (e.g. {config.describe()})" for rule, config in rejected.items())
        raise ValueError(
            f"jax_dgpt.heuristics: no valid kernel config for {problem} on {num_sms} SMs "
            f"with forced {dict(forced) or 'nothing'}: {rules}"
        )
    best: dict[int, KernelConfig] = {}  # per block_m, its best-scored config
    for config in sorted(accepted, key=lambda config: score(problem, config)):
        best.setdefault(config.block_m, config)
    chosen = min(best.values(), key=lambda config: (weighted_cells(problem, config), config.block_m))
    return trimmed(problem, chosen)


def weighted_cells(problem: Problem, config: KernelConfig) -> float:
    """critical_cells, 256-row tiles weighted by DOUBLE_MARGIN (they must save that much to be chosen)."""
    double = config.block_m == limits()["block_m_double"]
    return critical_cells(problem, config) * (DOUBLE_MARGIN if double else 1.0)


def critical_cells(problem: Problem, config: KernelConfig) -> int:
    """Output cells the busiest CTA (or cluster) computes: waves x block_m x block_n, which compares tiles of
    different rows where the wave count alone does not (7 waves of 256 x 128 against 9 of 128 x 208)."""
    tiles = num_tiles(problem, config.block_m, config.block_n, columns_per_cluster(config))
    return num_waves(tiles, tile_slots(config)) * config.block_m * config.block_n


def describe(op: str, problem: Problem, config: KernelConfig) -> str:
    """The one-line ``DG_PRINT_CONFIGS`` message for a chosen config."""
    shape = f"M={problem.m} N={problem.n} K={problem.k}"
    if problem.layout != "normal":
        shape += f" G={problem.num_groups}"
    if problem.expected_m is not None:
        shape += f" expected_m={problem.expected_m}"
    return f"jax_dgpt: {op} {shape} -> {config.describe()}"
