"""CUDA lowering without a GPU: the program calls our FFI targets with the heuristics' config."""

from __future__ import annotations

import dataclasses
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_dgpt
from jax_dgpt import _native, device, forcing, heuristics
from jax_dgpt.kernel_config import KernelConfig

F8 = jnp.float8_e4m3fn


def spec(shape, dtype=F8):
    return jax.ShapeDtypeStruct(shape, dtype)


def lower(fn, *args, platform="cuda"):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


TARGETS = _native.TARGETS


def custom_call_attributes(text, layout):
    """The ``config`` attribute of the one custom call to the layout's target, as ``{name: (value, type)}``
    (``("normal", "str")`` for the layout)."""
    target = TARGETS[layout]
    calls = re.findall(rf"stablehlo\.custom_call @{target}\(.*", text)
    assert len(calls) == 1, f"expected one custom call to {target}, found {len(calls)}:\n{text}"
    backend = re.search(r"mhlo\.backend_config = \{(.*?)\}\}", calls[0]).group(1)
    assert backend.startswith("config = {"), backend  # one attribute: the whole config
    attributes = {name: (int(value), type_) for name, value, type_ in re.findall(r"(\w+) = (-?\d+) : (\w+)", backend)}
    attributes.update({name: (value, "str") for name, value in re.findall(r'(\w+) = "(\w+)"', backend)})
    return attributes


def expected_attributes(layout, m, n, k, num_groups, expected_m=None, num_sms=132):
    cfg = heuristics.select_config(heuristics.Problem(layout, m, n, k, num_groups, expected_m), num_sms)
    return {name: (value, "str" if isinstance(value, str) else "i64") for name, value in cfg.as_attribute().items()}


@pytest.fixture(autouse=True)
def default_num_sms():
    device._reset_num_sms()
    yield
    device._reset_num_sms()


@pytest.mark.parametrize("m, n, k", [(4096, 7168, 2048), (64, 2112, 7168), (1, 8, 16)])
def test_gemm_custom_call(m, n, k):
    text = lower(jax_dgpt.gemm, spec((m, k)), spec((n, k)))
    attributes = custom_call_attributes(text, "normal")
    assert attributes == expected_attributes("normal", m, n, k, 1)
    assert "stablehlo.pad" not in text and "stablehlo.slice" not in text


def test_gemm_attribute_values_are_pinned():
    attributes = custom_call_attributes(lower(jax_dgpt.gemm, spec((4096, 2048)), spec((7168, 2048))), "normal")
    # 256-row tiles, 7 waves on 128 CTAs (jax_dgpt.heuristics).
    assert attributes["block_m"] == (256, "i64") and attributes["grid_size"] == (128, "i64")
    assert attributes["layout"] == ("normal", "str")
    assert "block_m = 256 : i64" in lower(jax_dgpt.gemm, spec((4096, 2048)), spec((7168, 2048)))


def test_gemm_operand_and_result_types():
    text = lower(jax_dgpt.gemm, spec((256, 512)), spec((384, 512)))
    assert re.search(
        r"custom_call @dgpt_gemm_normal\(%\w+, %\w+\).*\(tensor<256x512xf8E4M3FN>, "
        r"tensor<384x512xf8E4M3FN>\) -> tensor<256x384xbf16>",
        text,
    )
    assert "operand_layouts = [dense<[1, 0]> : tensor<2xindex>, dense<[1, 0]> : tensor<2xindex>]" in text


# K that needs padding goes to a multiple of 128 (whole 128-byte rows for TMA); K % 16 == 0 is never copied,
# large or short (the kernel multicasts A for rows of split lines instead).
PADDED = [(7, 13, 40, 16, 128), (65, 8, 17, 8, 128), (64, 13, 16, 16, 16), (4096, 2048, 2064, 2048, 2064)]
PADDED += [(4096, 7168, 576, 7168, 576), (2048, 2048, 2064, 2048, 2064), (8192, 2112, 7184, 2112, 7184)]


@pytest.mark.parametrize("m, n, k, padded_n, padded_k", PADDED)
def test_padding_reaches_the_kernel_shape(m, n, k, padded_n, padded_k):
    text = lower(jax_dgpt.gemm, spec((m, k)), spec((n, k)))
    attributes = custom_call_attributes(text, "normal")
    assert attributes == expected_attributes("normal", m, padded_n, padded_k, 1)
    assert ("stablehlo.pad" in text) == (padded_k != k or padded_n != n)
    assert (f"tensor<{m}x{padded_n}xbf16>) -> tensor<{m}x{n}xbf16>" in text) == (padded_n != n)


def test_contiguous_custom_call():
    m, n, k, g = 1024, 4096, 7168, 4
    text = lower(jax_dgpt.grouped_gemm_contiguous, spec((m, k)), spec((g, n, k)), spec((m,), jnp.int32))
    assert custom_call_attributes(text, "contiguous") == expected_attributes("contiguous", m, n, k, g)
    assert re.search(
        r"tensor<1024x7168xf8E4M3FN>, tensor<4x4096x7168xf8E4M3FN>, tensor<1024xi32>\) -> "
        r"tensor<1024x4096xbf16>",
        text,
    )


@pytest.mark.parametrize("expected_m", [np.int32(256), np.int64(256), 256])
def test_masked_custom_call_attributes_are_i64(expected_m):
    g, m_max, n, k = 4, 4096, 7168, 2048

    def fn(a, b, mm):
        return jax_dgpt.grouped_gemm_masked(a, b, mm, expected_m)

    text = lower(fn, spec((g, m_max, k)), spec((g, n, k)), spec((g,), jnp.int32))
    attributes = custom_call_attributes(text, "masked")
    assert attributes == expected_attributes("masked", m_max, n, k, g, expected_m=256)
    assert re.search(
        r"tensor<4x4096x2048xf8E4M3FN>, tensor<4x7168x2048xf8E4M3FN>, tensor<4xi32>\) -> "
        r"tensor<4x4096x7168xbf16>",
        text,
    )


def test_masked_int32_and_int_hints_lower_alike_in_one_process():
    # NOTES: 256 == np.int32(256) hash equal; a cached lowering must never carry an i32 attribute.
    args = spec((2, 128, 64)), spec((2, 32, 64)), spec((2,), jnp.int32)
    for hint in (np.int32(64), 64, np.int32(64)):
        text = lower(lambda a, b, mm, hint=hint: jax_dgpt.grouped_gemm_masked(a, b, mm, hint), *args)
        assert ": i32" not in re.search(r"mhlo\.backend_config = \{[^}]*\}", text).group(0)


def test_cpu_lowering_has_no_custom_call():
    text = lower(jax_dgpt.gemm, spec((64, 32)), spec((16, 32)), platform="cpu")
    assert "custom_call" not in text and "stablehlo.dot_general" in text
    text = lower(
        jax_dgpt.grouped_gemm_contiguous,
        spec((128, 32)),
        spec((2, 16, 32)),
        spec((128,), jnp.int32),
        platform="cpu",
    )
    assert "custom_call" not in text


def test_empty_problems_have_no_custom_call():
    assert "custom_call" not in lower(jax_dgpt.gemm, spec((0, 32)), spec((16, 32)))
    assert "custom_call" not in lower(jax_dgpt.gemm, spec((8, 0)), spec((16, 0)))

    def fn(a, b, mm):
        return jax_dgpt.grouped_gemm_masked(a, b, mm, 4)

    assert "custom_call" not in lower(fn, spec((2, 0, 32)), spec((2, 16, 32)), spec((2,), jnp.int32))


def test_num_sms_default_and_override():
    assert jax_dgpt.get_num_sms() == 132  # no CUDA device here: the documented H100 default
    jax_dgpt.set_num_sms(100)
    assert jax_dgpt.get_num_sms() == 100

    # NOTES: a fresh function: jax.jit would reuse the earlier trace of jax_dgpt.gemm (it saw 132).
    def fresh(a, b):
        return jax_dgpt.gemm(a, b)

    attributes = custom_call_attributes(lower(fresh, spec((4096, 2048)), spec((7168, 2048))), "normal")
    assert attributes == expected_attributes("normal", 4096, 7168, 2048, 1, num_sms=100)
    assert attributes["grid_size"] == (100, "i64")


def test_non_hopper_gpu_is_rejected(monkeypatch):
    ampere = types.SimpleNamespace(
        compute_capability="8.0",
        device_kind="NVIDIA A100",
        core_count=108,
        __str__=lambda self: "cuda:0",
    )
    monkeypatch.setattr(device, "cuda_devices", lambda: (ampere,))
    with pytest.raises(RuntimeError, match=r"need an sm_90a \(Hopper\) GPU; device .* has compute capability 8\.0"):
        lower(jax_dgpt.gemm, spec((64, 32)), spec((16, 32)))
    assert jax_dgpt.get_num_sms() == 108
    with pytest.raises(ValueError, match=r"at most the device's 108 SMs, got 132"):
        jax_dgpt.set_num_sms(132)


def test_vmap_folds_into_one_launch():
    def masked(a, b, mm):
        return jax_dgpt.grouped_gemm_masked(a, b, mm, 32)

    args = spec((3, 2, 64, 32)), spec((3, 2, 16, 32)), spec((3, 2), jnp.int32)
    attributes = custom_call_attributes(lower(jax.vmap(masked), *args), "masked")
    assert attributes["num_groups"] == (6, "i64") and attributes["m"] == (64, "i64")
    text = lower(jax.vmap(jax_dgpt.gemm, in_axes=(0, None)), spec((3, 7, 32)), spec((16, 32)))
    assert custom_call_attributes(text, "normal")["m"] == (21, "i64")


def test_config_fields_match_the_handlers():
    # The handlers decode exactly the C++ struct's fields; a mismatch would only fail on a GPU.
    fields = tuple(field.name for field in dataclasses.fields(KernelConfig))
    assert fields == _native.load().config_fields()
    calls = {
        "normal": (jax_dgpt.gemm, (spec((64, 128)), spec((32, 128)))),
        "contiguous": (
            jax_dgpt.grouped_gemm_contiguous,
            (spec((128, 128)), spec((2, 32, 128)), spec((128,), jnp.int32)),
        ),
        "masked": (
            lambda a, b, m: jax_dgpt.grouped_gemm_masked(a, b, m, 16),
            (spec((2, 64, 128)), spec((2, 32, 128)), spec((2,), jnp.int32)),
        ),
    }
    for layout, (fn, args) in calls.items():
        attributes = custom_call_attributes(lower(fn, *args), layout)
        assert tuple(sorted(attributes)) == tuple(sorted(fields)), layout
        assert attributes["layout"] == (layout, "str")


@pytest.mark.parametrize("splits", [2, 4])
def test_forced_k_splits_reach_the_kernel(splits):
    # Fresh functions: like set_num_sms, the setting is read when a function is traced.
    with forcing.force(num_k_splits=splits):
        forced = lower(lambda a, b: jax_dgpt.gemm(a, b), spec((64, 7168)), spec((2112, 7168)))
    attributes = custom_call_attributes(forced, "normal")
    assert attributes["num_k_splits"] == (splits, "i64")
    assert attributes["grid_size"][0] % splits == 0 and attributes["grid_size"][0] <= 132
    # Without the context the heuristics decide: 2 for this small-M, long-K shape, 1 at M = 128.
    auto = lower(lambda a, b: jax_dgpt.gemm(a, b), spec((64, 7168)), spec((2112, 7168)))
    assert custom_call_attributes(auto, "normal")["num_k_splits"] == (2, "i64")
    default = lower(lambda a, b: jax_dgpt.gemm(a, b), spec((128, 7168)), spec((2112, 7168)))
    assert custom_call_attributes(default, "normal")["num_k_splits"] == (1, "i64")


def lower_masked(n: int, expected_m: int = 16):
    """A masked grouped GEMM (G = 2, Mmax = 64, K = 128), lowered for CUDA."""
    return lower(
        lambda a, b, m: jax_dgpt.grouped_gemm_masked(a, b, m, expected_m),
        spec((2, 64, 128)),
        spec((2, n, 128)),
        spec((2,), jnp.int32),
    )


def test_forced_k_interleave_reaches_every_op():
    with forcing.force(k_interleave=1):
        forced = lower(lambda a, b: jax_dgpt.gemm(a, b), spec((64, 7168)), spec((2112, 7168)))
        grouped = lower_masked(n=256)
    gemm = custom_call_attributes(forced, "normal")
    # K is split inside the CTA instead of over a cluster, with an even stage ring.
    assert gemm["k_interleave"] == (1, "i64") and gemm["num_k_splits"] == (1, "i64")
    assert gemm["num_stages"][0] % 2 == 0
    assert custom_call_attributes(grouped, "masked")["k_interleave"] == (1, "i64")
    default = lower(lambda a, b: jax_dgpt.gemm(a, b), spec((64, 7168)), spec((2112, 7168)))
    assert custom_call_attributes(default, "normal")["k_interleave"] == (0, "i64")


def test_forced_k_interleave_on_128_row_tiles_names_the_rule():
    with forcing.force(k_interleave=1), pytest.raises(ValueError, match=r"jax_dgpt\.gemm: .*k_interleave needs"):
        lower(lambda a, b: jax_dgpt.gemm(a, b), spec((4096, 2048)), spec((7168, 2048)))


def test_forced_tile_reaches_every_op():
    with forcing.force(block_n=64, num_stages=3):
        gemm = lower(lambda a, b: jax_dgpt.gemm(a, b), spec((256, 512)), spec((1024, 512)))
        masked = lower_masked(n=256)
    for module, layout in ((gemm, "normal"), (masked, "masked")):
        attributes = custom_call_attributes(module, layout)
        assert attributes["block_n"] == (64, "i64") and attributes["num_stages"] == (3, "i64"), layout


def test_forced_tile_the_kernel_cannot_take_names_the_rule():
    with (
        forcing.force(block_n=200),
        pytest.raises(ValueError, match=r"block_n must be a multiple of block_n_step"),
    ):
        lower(lambda a, b: jax_dgpt.gemm(a, b), spec((256, 512)), spec((1024, 512)))
    with forcing.force(block_m=64), pytest.raises(ValueError, match=r"contiguous layout needs block_m"):
        lower(
            lambda a, b, i: jax_dgpt.grouped_gemm_contiguous(a, b, i),
            spec((256, 128)),
            spec((2, 32, 128)),
            spec((256,), jnp.int32),
        )


@pytest.mark.parametrize(
    "op, args",
    [
        (jax_dgpt.gemm, (spec((2**31 + 16, 16)), spec((16, 16)))),
        (jax_dgpt.grouped_gemm_contiguous, (spec((128, 16)), spec((2**20 + 1, 16, 16)), spec((128,), jnp.int32))),
        (
            lambda a, b, m: jax_dgpt.grouped_gemm_masked(a, b, m, 4),
            (spec((2, 16, 16)), spec((2, 2**31 + 8, 16)), spec((2,), jnp.int32)),
        ),
    ],
)
def test_dimensions_past_the_kernel_limits_name_the_public_op(op, args):
    # Checked in the shape rule (no allocation: eval_shape); the message names the op the user called.
    name = getattr(op, "__name__", "")
    expected = name if name != "<lambda>" else "grouped_gemm_masked"
    with pytest.raises(
        ValueError, match=rf"^jax_dgpt\.{expected}: M, N and K must be at most 2\*\*31 and G at most 2\*\*20"
    ):
        jax.eval_shape(op, *args)
