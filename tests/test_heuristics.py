"""Heuristics: the configs chosen for named shapes, properties every choice has, forcing; DG_PRINT_CONFIGS."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import pytest

from jax_dgpt import config, forcing, heuristics, primitives
from jax_dgpt.heuristics import Problem
from jax_dgpt.kernel_config import TUNING_FIELDS, KernelConfig, Operands, limits
from jax_dgpt.testing import CONTIGUOUS_ANCHORS, MASKED_ANCHORS, MASKED_MMAX, NORMAL_ANCHORS, ODD_M

NK_PAIRS = sorted({(n, k) for _, n, k in NORMAL_ANCHORS})


def enumerate_problems():
    for m, n, k in NORMAL_ANCHORS:
        yield Problem("normal", m, n, k, 1)
    for m, (n, k) in itertools.product(ODD_M, NK_PAIRS):
        yield Problem("normal", m, n, k, 1)
    for g, expected_m, n, k in CONTIGUOUS_ANCHORS + [(1, 128, 8, 16), (256, 128, 7168, 2048)]:
        yield Problem("contiguous", g * expected_m, n, k, g)
    for g, expected_m, n, k in MASKED_ANCHORS + [(256, 1, 7168, 2048), (4, 5000, 4096, 7168)]:
        yield Problem("masked", MASKED_MMAX, n, k, g, expected_m)


PROBLEMS = list(enumerate_problems())
SM_COUNTS = (132, 100, 7, 1)


def config_of(problem: Problem, num_sms: int = 132, **forced) -> KernelConfig:
    return heuristics.select_config(problem, num_sms, tuple(sorted(forced.items())))


# --- known-good configs ---------------------------------------------------------------------------------
# (problem, SMs) -> (block_m, block_n, num_stages, grid_size, num_k_splits): the configs the H200 benchmark
# measured (benchmarks/KERNEL_LOG.md, v4/v5), pinned so that a change of the rules is a visible decision.
KNOWN = [
    (Problem("normal", 64, 7168, 576, 1), 132, (64, 64, 8, 112, 1)),  # 112 tiles: one wave
    (Problem("normal", 64, 2112, 7168, 1), 132, (64, 32, 8, 132, 2)),  # split-K: small M, long K
    (Problem("normal", 128, 2112, 7168, 1), 132, (128, 16, 8, 132, 1)),
    (Problem("normal", 4096, 7168, 16384, 1), 132, (256, 128, 3, 128, 1)),  # 7 waves on 128 CTAs
    (Problem("normal", 8192, 8192, 8192, 1), 132, (128, 208, 4, 128, 1)),  # 256 rows save only 1.6%
    (Problem("normal", 1, 8, 16, 1), 132, (64, 16, 8, 1, 1)),
    (Problem("normal", 64, 2112, 7168, 1), 64, (64, 80, 8, 54, 2)),
    (Problem("normal", 128, 2112, 7168, 1), 64, (128, 48, 8, 44, 1)),
    (Problem("contiguous", 8192, 7168, 2048, 32), 132, (128, 208, 4, 132, 1)),
    (Problem("masked", 4096, 4096, 7168, 1, 1024), 132, (128, 128, 6, 132, 1)),
    (Problem("masked", 4096, 7168, 2048, 4, 256), 132, (128, 160, 5, 132, 1)),
    (Problem("masked", 4096, 4096, 7168, 8, 32), 132, (64, 128, 8, 132, 1)),
    # N = 2112: 11 column tiles of 192 or of 208; the narrower computes no columns past N (KERNEL_LOG v10).
    (
        Problem("normal", 7168, 2112, 4096, 1, operands=Operands(out_dtype="float32", accumulate=True)),
        132,
        (128, 192, 4, 124, 1),  # 616 tiles: 5 waves on 124 CTAs as on 132
    ),
]


@pytest.mark.parametrize("problem, num_sms, expected", KNOWN, ids=[f"{p}-{s}" for p, s, _ in KNOWN])
def test_known_configs(problem, num_sms, expected):
    c = config_of(problem, num_sms)
    assert (c.block_m, c.block_n, c.num_stages, c.grid_size, c.num_k_splits) == expected
    assert (c.layout, c.m, c.n, c.k, c.num_groups, c.k_interleave) == (
        problem.layout,
        problem.m,
        problem.n,
        problem.k,
        problem.num_groups,
        0,
    )


# --- properties of every choice (none restates the scoring) ---------------------------------------------
@pytest.mark.parametrize("num_sms", SM_COUNTS)
@pytest.mark.parametrize("problem", PROBLEMS, ids=str)
def test_every_choice_is_valid_and_fits_the_sms(problem, num_sms):
    c = config_of(problem, num_sms)
    assert c.error() is None, c
    assert c.grid_size <= num_sms and c.grid_size % c.num_k_splits == 0, c
    assert all(type(getattr(c, name)) is int for name in ("m", "n", "k", "block_m", "block_n", "grid_size"))
    # No tile is wider than N rounded up to one block_n step, and every CTA of a cluster has K blocks.
    assert c.block_n <= -(-problem.n // 16) * 16
    assert c.num_k_splits <= -(-problem.k // limits()["block_k"])
    # Deterministic: the same problem always gets the same config.
    assert config_of(problem, num_sms) == c


@pytest.mark.parametrize("m", [1, 64, 65, 128, 1000, 40000])
def test_contiguous_row_blocks_start_on_the_alignment(m):
    # The kernel reads each block's expert from its first row; that row must start a 128-row alignment block.
    assert config_of(Problem("contiguous", m, 4096, 7168, 8)).block_m == (64 if m <= 64 else 128)


def test_expected_m_drives_masked_block_m():
    small = config_of(Problem("masked", 4096, 4096, 7168, 8, 32))
    large = config_of(Problem("masked", 4096, 4096, 7168, 8, 512))
    assert (small.block_m, large.block_m) == (64, 128)
    # The masked grid keeps every SM: its tile count is only known on the device.
    assert small.grid_size == large.grid_size == 132


@pytest.mark.parametrize(
    "problem, num_sms, expected",
    [
        (Problem("normal", 1, 2112, 7168, 1), 132, 2),
        (Problem("normal", 64, 4096, 7168, 1), 132, 2),
        (Problem("normal", 65, 4096, 7168, 1), 132, 1),  # 128-row blocks: measured no gain
        (Problem("normal", 16, 7168, 16384, 1), 132, 1),  # wide N: enough tiles without it
        (Problem("normal", 32, 4096, 2048, 1), 132, 1),  # short K: the reduction costs more than it saves
        (Problem("contiguous", 64, 2112, 7168, 4), 132, 1),
        (Problem("masked", 64, 2112, 7168, 4, 64), 132, 1),
        (Problem("normal", 64, 4096, 7168, 1), 1, 1),  # one SM: no cluster of two
    ],
)
def test_split_k_where_it_measured_faster(problem, num_sms, expected):
    assert config_of(problem, num_sms).num_k_splits == expected


# --- forcing ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("splits", [2, 3, 4, 8])
def test_forced_k_splits_are_valid_everywhere(splits):
    for m, n, k in list(NORMAL_ANCHORS) + [(256, 4096, 384), (64, 512, 128)]:
        c = config_of(Problem("normal", m, n, k, 1), num_k_splits=splits)
        assert c.error() is None and c.num_k_splits == min(splits, -(-k // 128)), c


def test_forced_fields_override_the_choice():
    problem = Problem("normal", 4096, 7168, 2048, 1)
    assert config_of(problem, block_n=128).block_n == 128
    assert config_of(problem, num_stages=3).num_stages == 3
    assert config_of(Problem("normal", 64, 2112, 7168, 1), num_k_splits=1).num_k_splits == 1
    c = config_of(Problem("normal", 16, 2112, 7168, 1), k_interleave=1)
    assert (c.k_interleave, c.num_k_splits, c.num_stages % 2) == (1, 1, 0)  # an even ring, no cluster


@pytest.mark.parametrize(
    "problem, forced, rule",
    [
        (Problem("normal", 4096, 7168, 2048, 1), {"block_n": 200}, r"block_n must be a multiple of block_n_step"),
        (Problem("normal", 4096, 7168, 2048, 1), {"block_n": 208, "num_stages": 9}, r"more shared memory"),
        (Problem("normal", 4096, 7168, 2048, 1), {"k_interleave": 1}, r"k_interleave needs block_m_small"),
        (Problem("normal", 64, 7168, 2048, 1), {"k_interleave": 1, "num_stages": 3}, r"even num_stages"),
        (Problem("contiguous", 256, 4096, 512, 2), {"block_m": 64}, r"contiguous layout needs block_m"),
        (Problem("normal", 64, 7168, 2048, 1), {"block_m": 96}, r"block_m must be block_m_small, block_m_large or"),
        (Problem("normal", 64, 7168, 2048, 1), {"num_multicast": 2}, r"not KernelConfig fields"),
        (Problem("contiguous", 4096, 4096, 512, 2), {"multicast_a": 1}, r"multicast_a needs the normal layout"),
        (Problem("normal", 64, 7168, 2048, 1), {"multicast_a": 1, "num_k_splits": 2}, r"multicast_a needs the normal"),
    ],
)
def test_forced_fields_the_kernel_cannot_take_name_the_rule(problem, forced, rule):
    with pytest.raises(ValueError, match=rule):
        config_of(problem, **forced)


def test_too_many_sms_name_the_grid_limit():
    with pytest.raises(ValueError, match=r"grid_size must be in \[1, max_grid_size\]"):
        config_of(Problem("masked", 128, 256, 128, 2, 64), num_sms=10**6)


def test_forcing_contexts_nest_and_clear():
    assert forcing.forced_overrides() == ()
    with forcing.force(num_k_splits=2), forcing.force(block_n=64, num_stages=3):
        assert forcing.forced_overrides() == (("block_n", 64), ("num_k_splits", 2), ("num_stages", 3))
        # Nested contexts merge; None clears a field an outer context forced.
        with forcing.force(block_m=64, block_n=None, k_interleave=0):
            assert forcing.forced_overrides() == (
                ("block_m", 64),
                ("k_interleave", 0),
                ("num_k_splits", 2),
                ("num_stages", 3),
            )
        assert forcing.forced_overrides() == (("block_n", 64), ("num_k_splits", 2), ("num_stages", 3))
    assert forcing.forced_overrides() == ()


@pytest.mark.parametrize(
    "fields, exception, pattern",
    [
        ({"k_interleave": 2}, ValueError, r"k_interleave must be 0 or 1, got 2"),
        ({"multicast_a": -1}, ValueError, r"multicast_a must be 0 or 1, got -1"),
        ({"num_k_splits": 0}, ValueError, r"num_k_splits must be positive"),
        ({"block_n": 64.0}, TypeError, r"block_n must be an int"),
        ({"grid_size": 8}, ValueError, r"'grid_size' cannot be forced; the fields that can are"),
        ({"n": None}, ValueError, r"'n' cannot be forced"),
    ],
)
def test_forcing_errors_name_the_field(fields, exception, pattern):
    with pytest.raises(exception, match=pattern), forcing.force(**fields):
        pass
    assert forcing.forced_overrides() == ()


def test_tuning_fields_are_config_fields():
    assert set(TUNING_FIELDS) <= {f.name for f in dataclasses.fields(KernelConfig)}
    assert not set(TUNING_FIELDS) & {f.name for f in dataclasses.fields(Problem)}


@pytest.mark.parametrize(
    "args, pattern",
    [
        (("dense", 64, 64, 64, 1), r"layout must be one of"),
        (("masked", 64, 64, 64, 1), r"expected_m is given for the masked layout"),
        (("normal", 64, 64, 64, 1, 8), r"expected_m is given for the masked layout"),
        (("normal", 0, 64, 64, 1), r"m must be positive, got 0"),
    ],
)
def test_problem_errors(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        Problem(*args)


def test_a_normal_problem_has_one_group():
    with pytest.raises(ValueError, match=r"a normal GEMM has num_groups 1"):
        config_of(Problem("normal", 64, 64, 64, 2))


# --- DG_PRINT_CONFIGS -----------------------------------------------------------------------------
def _lower_for_cuda(fn, *args):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def test_print_configs_once_per_distinct_shape(capsys):
    primitives._printed.clear()
    a = jax.ShapeDtypeStruct((4096, 2048), jnp.float8_e4m3fn)
    b = jax.ShapeDtypeStruct((7168, 2048), jnp.float8_e4m3fn)
    b2 = jax.ShapeDtypeStruct((4096, 2048), jnp.float8_e4m3fn)
    from jax_dgpt import gemm

    with config.override(print_configs=True):
        _lower_for_cuda(lambda a, b: gemm(a, b), a, b)
        _lower_for_cuda(lambda a, b: gemm(a, b) + 1, a, b)  # same op and shape: no second line
        _lower_for_cuda(gemm, a, b2)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "jax_dgpt: gemm M=4096 N=7168 K=2048 -> block_m=256 block_n=128 stages=3 grid=128"
    assert len(lines) == 2 and "N=4096" in lines[1]


def test_print_configs_off_prints_nothing(capsys):
    primitives._printed.clear()
    from jax_dgpt import gemm

    with config.override(print_configs=False):
        _lower_for_cuda(
            gemm,
            jax.ShapeDtypeStruct((64, 32), jnp.float8_e4m3fn),
            jax.ShapeDtypeStruct((64, 32), jnp.float8_e4m3fn),
        )
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "value, expected",
    [("1", True), ("0", False), ("", False), ("true", True), (" On ", True), ("no", False)],
)
def test_env_parsing(monkeypatch, value, expected):
    monkeypatch.setenv("DG_PRINT_CONFIGS", value)
    try:
        assert config.reload().print_configs is expected
    finally:
        monkeypatch.undo()
        config.reload()


def test_env_parsing_rejects_garbage():
    with pytest.raises(ValueError, match=r"DG_PRINT_CONFIGS must be 0 or 1, got 'maybe'"):
        config.Settings.from_environ({"DG_PRINT_CONFIGS": "maybe"})


# --- 256-row tiles and the trimmed grid ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "problem, expected",
    [
        # 7 waves of 256 x 128 against 9 of 128 x 208: 4.5% fewer cells on the busiest CTA.
        (Problem("normal", 4096, 7168, 2048, 1), 256),
        # 1.6% fewer only: under DOUBLE_MARGIN.
        (Problem("normal", 4096, 4096, 7168, 1), 128),
        # A float32 output, another layout, or fewer than two 256-row blocks: not tried.
        (Problem("normal", 4096, 7168, 2048, 1, operands=Operands(out_dtype="float32")), 128),
        (Problem("contiguous", 4096, 7168, 2048, 4), 128),
        (Problem("normal", 384, 7168, 2048, 1), 128),
    ],
)
def test_block_m_double_chosen_where_it_saves_the_margin(problem, expected):
    config = config_of(problem, 132)
    assert config.block_m == expected
    if expected == 256:
        single = heuristics.select_config(problem, 132, (("block_m", 128),))
        saved = heuristics.critical_cells(problem, single) / heuristics.critical_cells(problem, config)
        assert saved >= heuristics.DOUBLE_MARGIN and config.block_n >= heuristics.DOUBLE_MIN_BLOCK_N


def test_block_m_double_forced_takes_only_the_columns_it_can():
    config = heuristics.select_config(Problem("normal", 4096, 7168, 2048, 1), 132, (("block_m", 256),))
    assert (config.block_m, config.block_n) == (256, 128)
    with pytest.raises(ValueError, match="block_n <= max_block_n_double"):
        heuristics.select_config(Problem("normal", 4096, 7168, 2048, 1), 132, (("block_m", 256), ("block_n", 144)))


@pytest.mark.parametrize("problem", [Problem("normal", 4096, 7168, 2048, 1), Problem("k_grouped", 4096, 7168, 2048, 8)])
def test_grid_is_the_fewest_ctas_that_keep_the_waves(problem):
    config = config_of(problem, 132)
    tiles = heuristics.num_tiles(problem, config.block_m, config.block_n)
    waves = heuristics.num_waves(tiles, 132)
    assert heuristics.num_waves(tiles, config.grid_size) == waves
    assert heuristics.num_waves(tiles, config.grid_size - 1) > waves


@pytest.mark.parametrize(
    "problem, forced, tiles",
    [
        (Problem("normal", 4096, 7168, 16384, 1), {}, 16 * 56),  # 256 x 128 tiles: 448 pairs
        # 17 columns of 128: each row block's last pair has a peer-only CTA, which takes a slot too.
        (Problem("normal", 4096, 2112, 7168, 1), {"block_m": 128, "block_n": 128}, 32 * 18),
        (Problem("normal", 64, 7168, 2048, 1), {"block_n": 64}, 112),  # small M: no split-K with multicast
    ],
)
def test_forced_multicast_takes_whole_pairs(problem, forced, tiles):
    config = config_of(problem, 132, multicast_a=1, **forced)
    assert (config.multicast_a, config.num_k_splits, config.grid_size % 2) == (1, 1, 0)
    assert heuristics.num_tiles(problem, config.block_m, config.block_n, 2) == tiles
    waves = heuristics.num_waves(tiles, 132)
    assert heuristics.num_waves(tiles, config.grid_size) == waves  # trimmed to whole pairs, same waves
    assert heuristics.num_waves(tiles, config.grid_size - 2) > waves
    assert config.launch_shape()["cluster_size"] == 2


def test_masked_and_ragged_grids_are_not_trimmed():
    # Their tiles are counted on the device: the grid stays one CTA per SM.
    assert config_of(Problem("masked", 4096, 7168, 2048, 4, 8), 132).grid_size == 132
    assert config_of(Problem("ragged", 4096, 7168, 2048, 4), 132).grid_size == 132


@pytest.mark.parametrize(
    "m, n, k, expected",
    [
        (16384, 1552, 7184, 1),  # rows of split lines: A multicast
        (2048, 7168, 2064, 1),
        (128, 2112, 7184, 1),
        (16384, 1552, 7296, 0),  # whole lines
        (4096, 7168, 576, 0),  # short K: measured slower with it
        (8, 2112, 7184, 0),  # split-K takes the cluster
        (4096, 128, 7184, 0),  # one tile column at any width
    ],
)
def test_multicast_a_for_rows_of_split_lines(m, n, k, expected):
    c = config_of(Problem("normal", m, n, k, 1), 132)
    assert c.multicast_a == expected, c
    assert c.error() is None
    with_splits = heuristics.select_config(Problem("normal", m, n, k, 1), 132, (("num_k_splits", 1),))
    assert with_splits.multicast_a == 0  # forcing any K split leaves the cluster alone
