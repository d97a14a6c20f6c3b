"""Heuristics as pure functions (valid, fitting, wave-minimal, deterministic); DG_PRINT_CONFIGS."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import pytest

from jax_dgpt import _C, config, heuristics, primitives
from jax_dgpt.testing import NORMAL_ANCHORS, ODD_M

# Every (N, K) of the anchors, 8192 x 8192 included.
NK_PAIRS = sorted({(n, k) for _, n, k in NORMAL_ANCHORS})


def enumerate_normal_shapes():
    yield from NORMAL_ANCHORS
    yield from ((m, n, k) for m, (n, k) in itertools.product(ODD_M, NK_PAIRS))


def enumerate_grouped_problems():
    """(kind, m, n, k, num_groups, expected_m) from the contiguous and masked anchor tables, plus
    edge cases."""
    for g, expected_m, n, k in (
        (4, 8192, 4096, 7168),
        (8, 4096, 7168, 2048),
        (32, 256, 4096, 7168),
        (1, 128, 8, 16),
        (256, 128, 7168, 2048),
    ):
        yield "contiguous", g * expected_m, n, k, g, None
    for g, expected_m, n, k in (
        (1, 1024, 4096, 7168),
        (2, 512, 7168, 2048),
        (4, 256, 4096, 7168),
        (256, 1, 7168, 2048),
        (4, 5000, 4096, 7168),
    ):
        yield "masked", 4096, n, k, g, expected_m


def all_problems():
    yield from (("normal", m, n, k, 1, None) for m, n, k in enumerate_normal_shapes())
    yield from enumerate_grouped_problems()


PROBLEMS = list(all_problems())
SM_COUNTS = (132, 100, 7, 1)


def _effective_m(kind, m, expected_m):
    return min(expected_m, m) if kind == "masked" else m


@pytest.mark.parametrize("num_sms", SM_COUNTS)
@pytest.mark.parametrize("problem", PROBLEMS, ids=[f"{p[0]}-{p[1]}x{p[2]}x{p[3]}-g{p[4]}-e{p[5]}" for p in PROBLEMS])
def test_config_properties(problem, num_sms):
    kind, m, n, k, g, expected_m = problem
    cfg = heuristics.select_config(kind, m, n, k, g, num_sms, expected_m=expected_m)
    context = f"{problem} num_sms={num_sms} -> {cfg}"
    m_eff = _effective_m(kind, m, expected_m)

    # Block sizes are ones the kernel has, and block_m follows the effective M.
    assert cfg.block_m == (64 if m_eff <= 64 else 128), context
    assert cfg.block_n % 16 == 0 and 16 <= cfg.block_n <= heuristics.MAX_BLOCK_N[cfg.block_m], context
    assert cfg.block_n <= heuristics.round_up(n, 16), context

    # Split-K follows the rule (never more splits than K blocks); clusters are the scheduling unit.
    splits = cfg.num_k_splits
    assert splits == min(heuristics.auto_k_splits(kind, m_eff, n, k), -(-k // 128), num_sms), context
    assert cfg.num_sms <= num_sms, context
    units = max(1, num_sms // splits)

    # Shared memory fits, and no more stages would.
    assert _C.smem_size(cfg.block_m, cfg.block_n, cfg.num_stages, splits) <= _C.MAX_SMEM_BYTES, context
    assert 2 <= cfg.num_stages <= 8, context
    if cfg.num_stages < 8:
        assert _C.smem_size(cfg.block_m, cfg.block_n, cfg.num_stages + 1, splits) > _C.MAX_SMEM_BYTES, context

    # No candidate block_n gives fewer waves or wins a tie-break.
    def key(block_n):
        tiles = heuristics.num_tiles(kind, m_eff, n, g, cfg.block_m, block_n)
        return (
            heuristics.num_waves(tiles, units),
            -heuristics.last_wave_occupancy(tiles, units),
            -block_n,
        )

    fitting = [
        bn
        for bn in heuristics.block_n_candidates(cfg.block_m, n)
        if heuristics.fits_in_shared_memory(cfg.block_m, bn, splits)
    ]
    assert key(cfg.block_n) == min(key(bn) for bn in fitting), context

    # The grid respects the SM budget: all of it for masked, no more than the tiles otherwise.
    tiles = heuristics.num_tiles(kind, m_eff, n, g, cfg.block_m, cfg.block_n)
    assert cfg.num_sms == splits * (units if kind == "masked" else min(units, tiles)), context

    # Deterministic, and every attribute a plain int.
    assert heuristics.select_config(kind, m, n, k, g, num_sms, expected_m=expected_m) == cfg
    attributes = cfg.as_attributes()
    assert attributes == dataclasses.asdict(cfg) and all(type(v) is int for v in attributes.values())


@pytest.mark.parametrize(
    "m, n, k, expected",
    [
        (64, 7168, 576, heuristics.GemmConfig(64, 64, 8, 112)),  # 112 tiles: one wave
        (4096, 7168, 2048, heuristics.GemmConfig(128, 208, 4, 132)),
        (1, 8, 16, heuristics.GemmConfig(64, 16, 8, 1)),
    ],
)
def test_known_configs(m, n, k, expected):
    # Pins the rules on a few shapes.
    assert heuristics.select_config("normal", m, n, k, 1, 132) == expected


def test_expected_m_drives_masked_block_m():
    small = heuristics.select_config("masked", 4096, 4096, 7168, 8, 132, expected_m=32)
    large = heuristics.select_config("masked", 4096, 4096, 7168, 8, 132, expected_m=512)
    assert (small.block_m, large.block_m) == (64, 128)


@pytest.mark.parametrize(
    "args, kwargs, exception, pattern",
    [
        (("dense", 64, 64, 64, 1, 132), {}, ValueError, r"kind must be one of"),
        (("masked", 64, 64, 64, 1, 132), {}, ValueError, r"kind 'masked' needs expected_m"),
        (
            ("masked", 64, 64, 64, 1, 132),
            {"expected_m": 0},
            ValueError,
            r"expected_m must be positive",
        ),
        (("normal", 0, 64, 64, 1, 132), {}, ValueError, r"m must be positive, got 0"),
        (("normal", 64, 64, 64, 2, 132), {}, ValueError, r"kind 'normal' needs num_groups == 1"),
        (("normal", 64, 64, 64, 1, 0), {}, ValueError, r"num_sms must be positive"),
        (("normal", 64.0, 64, 64, 1, 132), {}, TypeError, r"m must be an int, got float"),
    ],
)
def test_select_config_errors(args, kwargs, exception, pattern):
    with pytest.raises(exception, match=pattern):
        heuristics.select_config(*args, **kwargs)


def test_no_fitting_stage_count_is_an_error(monkeypatch):
    monkeypatch.setattr(_C, "MAX_SMEM_BYTES", 1024, raising=False)
    with pytest.raises(ValueError, match=r"does not fit in shared memory with 2 stages"):
        heuristics.select_num_stages(128, 160)


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
    cfg = heuristics.select_config("normal", 4096, 7168, 2048, 1, 132)
    assert lines[0] == (
        f"jax_dgpt: gemm M=4096 N=7168 K=2048 -> block_m=128 block_n={cfg.block_n} stages={cfg.num_stages} sms=132"
    )
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


@pytest.mark.parametrize("m", [1, 64, 65, 128, 1000, 40000])
def test_contiguous_row_blocks_start_on_the_alignment(m):
    # The kernel reads each block's expert from its first row; that row must start a 128-row
    # alignment block (see heuristics.select_block_m) for the reference's rule to hold.
    cfg = heuristics.select_config("contiguous", m, 4096, 7168, 8, 132)
    assert cfg.block_m == 128 or m <= 64


def test_block_n_limits_agree_with_the_launcher():
    # The C++ launcher rejects configurations that would spill; the heuristics never pick them.
    assert max(heuristics.MAX_BLOCK_N.values()) <= _C.MAX_BLOCK_N


@pytest.mark.parametrize("splits", [2, 3, 4, 8])
def test_forced_k_splits_always_fit(splits):
    # The fp32 partial tile of split-K takes shared memory: every choice must still fit, and no CTA
    # of a cluster may be left without a K block.
    for m, n, k in list(enumerate_normal_shapes()) + [(256, 4096, 384), (64, 512, 128)]:
        cfg = heuristics.select_config("normal", m, n, k, 1, 132, num_k_splits=splits)
        assert _C.smem_size(cfg.block_m, cfg.block_n, cfg.num_stages, cfg.num_k_splits) <= _C.MAX_SMEM_BYTES
        assert cfg.num_k_splits <= -(-k // 128) and cfg.num_sms % cfg.num_k_splits == 0, (m, n, k, cfg)


@pytest.mark.parametrize(
    "kind,m,n,k,expected",
    [
        ("normal", 1, 2112, 7168, 2),
        ("normal", 64, 4096, 7168, 2),
        ("normal", 65, 4096, 7168, 1),  # 128-row blocks: measured no gain
        ("normal", 16, 7168, 16384, 1),  # wide N: enough tiles without it
        ("normal", 32, 4096, 2048, 1),  # short K: the reduction costs more than it saves
        ("contiguous", 64, 2112, 7168, 1),
        ("masked", 64, 2112, 7168, 1),
    ],
)
def test_auto_k_splits_rule(kind, m, n, k, expected):
    assert heuristics.auto_k_splits(kind, m, n, k) == expected
    groups = 1 if kind == "normal" else 4
    cfg = heuristics.select_config(kind, m, n, k, groups, 132, expected_m=m if kind == "masked" else None)
    assert cfg.num_k_splits == expected
    assert cfg.num_sms % cfg.num_k_splits == 0 and cfg.num_sms <= 132


def test_forced_k_splits_override_the_rule():
    assert heuristics.select_config("normal", 64, 2112, 7168, 1, 132, num_k_splits=1).num_k_splits == 1
    assert heuristics.select_config("normal", 4096, 2112, 7168, 1, 132, num_k_splits=4).num_k_splits == 4


@pytest.mark.parametrize("m,n,k", [(4096, 7168, 2048), (4096, 32768, 512), (384, 272, 256), (1, 256, 128)])
def test_forced_multicast_config(m, n, k):
    cfg = heuristics.select_config("normal", m, n, k, 1, 132, num_multicast=2)
    assert cfg.num_multicast == 2 and cfg.num_k_splits == 1, cfg
    # Whole pairs of CTAs, no more pairs than pairs of vertically adjacent tiles.
    cd = heuristics.ceil_div
    pairs = cd(cd(m, cfg.block_m), 2) * cd(n, cfg.block_n)
    assert cfg.num_sms % 2 == 0 and cfg.num_sms // 2 == min(66, pairs), cfg
    assert _C.smem_size(cfg.block_m, cfg.block_n, cfg.num_stages) <= _C.MAX_SMEM_BYTES


def test_multicast_is_off_unless_forced_and_checked():
    assert heuristics.select_config("normal", 4096, 7168, 2048, 1, 132).num_multicast == 1
    with pytest.raises(ValueError, match="for normal GEMMs"):
        heuristics.select_config("masked", 256, 512, 256, 2, 132, expected_m=64, num_multicast=2)
    with pytest.raises(ValueError, match="exclude each other"):
        heuristics.select_config("normal", 256, 512, 256, 1, 132, num_k_splits=2, num_multicast=2)
    with pytest.raises(ValueError, match="must be 1 or 2"):
        heuristics.select_config("normal", 256, 512, 256, 1, 132, num_multicast=4)
    with pytest.raises(ValueError, match="must be 1 or 2"), heuristics.force_multicast(3):
        pass
    with heuristics.force_multicast(2):
        assert heuristics.forced_multicast() == 2
    assert heuristics.forced_multicast() is None


def test_pingpong_is_off_unless_forced_and_checked():
    assert heuristics.select_config("normal", 4096, 7168, 2048, 1, 132).pingpong == 0
    assert heuristics.select_config("normal", 4096, 7168, 2048, 1, 132, pingpong=1).pingpong == 1
    assert heuristics.select_config("masked", 4096, 4096, 7168, 2, 132, expected_m=512, pingpong=1).pingpong == 1
    # 64-row tiles: a second math warpgroup takes every other K block, replacing split-K.
    assert heuristics.select_config("normal", 16, 2112, 7168, 1, 132).num_k_splits == 2
    small = heuristics.select_config("normal", 16, 2112, 7168, 1, 132, pingpong=1)
    assert (small.block_m, small.pingpong, small.num_k_splits, small.num_multicast) == (64, 1, 1, 1), small
    # Its fp32 partial tile counts against shared memory (the stage count is what still fits).
    wide = heuristics.select_config("normal", 64, 7168, 2048, 1, 132, pingpong=1, block_n=208)
    assert _C.smem_size(64, 208, wide.num_stages, 1, 1) <= _C.MAX_SMEM_BYTES
    assert _C.smem_size(64, 208, wide.num_stages + 1, 1, 1) > _C.MAX_SMEM_BYTES
    for block_n in (16, 64, 128, 160, 176, 208):  # the two warpgroups alternate stages: an even ring
        assert heuristics.select_num_stages(64, block_n, 1, 1) % 2 == 0
    with pytest.raises(ValueError, match="even num_stages"):
        heuristics.select_config("normal", 16, 2112, 7168, 1, 132, pingpong=1, num_stages=3)
    for clash in (dict(num_k_splits=2), dict(num_multicast=2)):
        with pytest.raises(ValueError, match="pingpong on 64-row tiles splits K inside the CTA"):
            heuristics.select_config("normal", 16, 2112, 7168, 1, 132, pingpong=1, **clash)
    with pytest.raises(ValueError, match="pingpong must be 0 or 1"):
        heuristics.select_config("normal", 256, 512, 256, 1, 132, pingpong=2)
    with pytest.raises(ValueError, match="pingpong must be 0 or 1"), heuristics.force_pingpong(3):
        pass
    with heuristics.force_pingpong():
        assert heuristics.forced_overrides("contiguous") == (("pingpong", 1),)
    assert heuristics.forced_overrides("normal") == ()
    cfg = heuristics.select_config("normal", 4096, 7168, 2048, 1, 132, pingpong=1)
    assert "pingpong=1" in heuristics.describe("gemm", 4096, 7168, 2048, 1, cfg)


def test_forced_tile_parameters():
    cfg = heuristics.select_config("normal", 4096, 7168, 576, 1, 132, block_n=128, num_stages=3)
    assert (cfg.block_m, cfg.block_n, cfg.num_stages) == (128, 128, 3)
    assert cfg.num_sms == min(132, 32 * 56)
    cfg = heuristics.select_config("masked", 4096, 4096, 7168, 1, 132, expected_m=1024, block_m=64, block_n=208)
    assert (cfg.block_m, cfg.block_n) == (64, 208)
    for kwargs, rule in [
        (dict(block_n=100), "multiple of 16"),
        (dict(block_n=224), r"in \[16, 208\]"),
        (dict(block_m=256), "block_m must be one of"),
        (dict(num_stages=9), "num_stages must be in"),
        (dict(block_n=208, num_stages=5), "num_stages must be in"),  # 4 stages fit at 128 x 208
    ]:
        with pytest.raises(ValueError, match=rule):
            heuristics.select_config("normal", 4096, 7168, 2048, 1, 132, **kwargs)
    with pytest.raises(ValueError, match="contiguous layout with M=4096 needs block_m=128"):
        heuristics.select_config("contiguous", 4096, 4096, 7168, 8, 132, block_m=64)


def test_forced_overrides_collect_every_context():
    assert heuristics.forced_overrides("normal") == ()
    with heuristics.force_tile(block_n=128), heuristics.force_k_splits(2):
        assert heuristics.forced_overrides("masked") == (("block_n", 128), ("num_k_splits", 2))
    with heuristics.force_multicast(2), heuristics.force_tile(num_stages=3):
        assert heuristics.forced_overrides("normal") == (("num_multicast", 2), ("num_stages", 3))
        assert heuristics.forced_overrides("contiguous") == (("num_stages", 3),)  # multicast: normal only
    with pytest.raises(TypeError), heuristics.force_tile(block_n="wide"):
        pass
