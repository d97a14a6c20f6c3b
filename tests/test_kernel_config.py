"""The kernel configuration's one set of rules (kernels/kernel_config.cuh), asked through the extension.

The Python dataclass and the C++ struct declare the same fields; malformed configs are rejected with a
ValueError naming the field; invalid ones with the rule they break; shared memory follows the documented
layout. No compiler or GPU needed.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from jax_dgpt import _native
from jax_dgpt.kernel_config import LAYOUTS, KernelConfig, limits

C = _native.load()

BASE = KernelConfig(
    layout="normal", m=4096, n=7168, k=2048, num_groups=1, block_m=128, block_n=208, num_stages=4, grid_size=132
)


def with_(**changes) -> KernelConfig:
    return dataclasses.replace(BASE, **changes)


def test_python_and_cpp_declare_the_same_fields():
    assert tuple(f.name for f in dataclasses.fields(KernelConfig)) == C.config_fields()
    assert LAYOUTS == ("normal", "contiguous", "masked", "k_grouped", "ragged")


def test_limits_are_plain_ints_by_name():
    lim = limits()
    assert all(type(value) is int for value in lim.values())
    assert lim["block_k"] == 128 and lim["max_smem_bytes"] == 227 * 1024  # the sm_90 opt-in limit per block
    assert lim["max_block_n"] % lim["block_n_step"] == 0


def test_a_known_good_config_is_valid():
    assert BASE.error() is None
    # Documented layout: D tile (bf16, 1024-aligned) + stages of A and B + two barriers per stage + 1024.
    expected = 128 * 208 * 2 + 4 * (128 * 128 + 208 * 128) + 4 * 2 * 8 + 1024
    assert BASE.launch_shape() == {"smem_bytes": expected, "threads": 384, "cluster_size": 1}
    assert with_(block_m=64).launch_shape()["threads"] == 256
    assert with_(block_m=64, k_interleave=1).launch_shape()["threads"] == 384


@pytest.mark.parametrize(
    "changes, rule",
    [
        ({"block_m": 96}, "block_m must be block_m_small, block_m_large or block_m_double"),
        ({"block_n": 200}, "block_n must be a multiple of block_n_step"),
        ({"block_n": 224}, "block_n must be a multiple of block_n_step in \\[block_n_step, max_block_n\\]"),
        ({"num_stages": 1}, "num_stages must be in \\[min_stages, max_stages\\]"),
        ({"num_stages": 5}, "more shared memory than max_smem_bytes"),
        ({"n": 7164}, "n must be a positive multiple of n_alignment"),
        ({"k": 2040}, "k must be a positive multiple of k_alignment"),
        ({"m": 0}, "m must be in \\[1, max_dim\\]"),
        ({"num_groups": 2}, "a normal GEMM has num_groups 1"),
        ({"grid_size": 0}, "grid_size must be in \\[1, max_grid_size\\]"),
        ({"grid_size": 4097}, "grid_size must be in \\[1, max_grid_size\\]"),
        ({"num_k_splits": 9}, "num_k_splits must be in \\[1, max_k_splits\\]"),
        ({"num_k_splits": 2, "grid_size": 131, "block_n": 64}, "multiple of the cluster size"),
        ({"multicast_a": 1, "grid_size": 131}, "multiple of the cluster size"),
        ({"multicast_a": 2}, "multicast_a must be 0 or 1"),
        ({"multicast_a": 1, "num_k_splits": 2, "block_n": 64}, "multicast_a needs the normal layout, num_k_splits 1"),
        ({"multicast_a": 1, "layout": "contiguous", "num_groups": 4}, "multicast_a needs the normal layout"),
        ({"k_interleave": 1}, "k_interleave needs block_m_small"),
        ({"k_interleave": 1, "block_m": 64, "num_k_splits": 2, "grid_size": 2}, "k_interleave needs block_m_small"),
        ({"k_interleave": 1, "block_m": 64, "num_stages": 3}, "k_interleave needs an even num_stages"),
        ({"k_interleave": 2, "block_m": 64}, "k_interleave must be 0 or 1"),
        ({"layout": "contiguous", "num_groups": 4, "block_m": 64}, "contiguous layout needs block_m"),
        ({"layout": "ragged", "num_groups": 4, "block_m": 256, "block_n": 128}, "block_m_double needs the normal or"),
        ({"a_dtype": 2}, "a_dtype and b_dtype must be 0 \\(e4m3\\) or 1 \\(e5m2\\)"),
        ({"b_dtype": -1}, "a_dtype and b_dtype must be 0"),
        ({"out_dtype": 2}, "out_dtype must be 0 \\(bf16\\) or 1 \\(f32\\)"),
        ({"has_scale_a": 2}, "accumulate, has_scale_a and has_scale_b must be 0 or 1"),
        ({"layout": "ragged", "num_groups": 4, "num_k_splits": 2, "block_n": 64}, "ragged layout needs num_k_splits 1"),
        (
            {"layout": "masked", "num_groups": 4, "out_dtype": 1, "accumulate": 1, "block_n": 64},
            "accumulate needs the normal or k_grouped layout",
        ),
        ({"accumulate": 1}, "accumulate needs out_dtype 1"),
        (
            {"layout": "k_grouped", "num_groups": 4, "out_dtype": 1, "num_k_splits": 2, "block_n": 64},
            "k_grouped layout needs num_k_splits 1 and k_interleave 0",
        ),
        ({"layout": "k_grouped", "num_groups": 4, "accumulate": 1}, "accumulate needs out_dtype 1"),
    ],
)
def test_invalid_configs_name_the_rule(changes, rule):
    config = with_(**changes)
    error = config.error()
    assert error is not None and error.startswith("invalid kernel config (layout="), error
    assert re.search(rule, error), error
    with pytest.raises(ValueError, match=rule):
        C.generate_source(config.as_attribute())
    with pytest.raises(ValueError, match=rule):
        config.launch_shape()


def test_shared_memory_follows_the_output_and_scales():
    # float32 output: no D tile but a staging ring of two 64-row x 128-byte atoms per math warpgroup; scales:
    # 64 + block_n floats per math warpgroup.
    stages = 2 * 2 * 64 * 128 + 4 * (128 * 128 + 208 * 128) + 4 * 2 * 8 + 1024
    assert with_(out_dtype=1).launch_shape()["smem_bytes"] == stages
    assert with_(out_dtype=1, has_scale_b=1).launch_shape()["smem_bytes"] == stages + 2 * (64 + 208) * 4
    assert with_(layout="k_grouped", num_groups=3, out_dtype=1, accumulate=1).error() is None


def test_the_contiguous_layout_takes_64_row_tiles_when_every_row_fits():
    assert with_(layout="contiguous", num_groups=4, m=64, block_m=64).error() is None


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("block_n"), "config lacks field 'block_n'"),
        (lambda d: d.update(extra=1), "has 19 entries, expected exactly the 18 fields"),
        (lambda d: d.update(block_n=True), "config field 'block_n' must be an int"),
        (lambda d: d.update(block_n=128.0), "config field 'block_n' must be an int"),
        (lambda d: d.update(layout="jagged"), "unknown layout 'jagged'"),
        (lambda d: d.update(layout=0), "config field 'layout' must be a str"),
    ],
)
def test_malformed_configs_are_value_errors(mutate, message):
    attribute = BASE.as_attribute()
    mutate(attribute)
    with pytest.raises(ValueError, match=message):
        C.check_config(attribute)


def test_the_generated_source_sets_the_compile_time_fields_by_name():
    source = C.generate_source(with_(m=77, grid_size=99).as_attribute())
    assert "c.layout = ::dgpt::Layout::kNormal;" in source and "c.block_n = 208;" in source
    # Run-time fields stay out of the source: one cubin serves every M and grid.
    assert "77" not in source and "99" not in source and "c.m " not in source
    assert source == C.generate_source(with_(m=1, grid_size=1).as_attribute())
    assert source != C.generate_source(with_(num_stages=3).as_attribute())
