"""Compile-only checks: every kernel configuration the heuristics pick for the anchor shapes, and each
K-splitting variant in every layout, builds an sm_90a cubin with no stack frame and no spills.

No GPU is needed: each configuration is JIT-compiled with the product's compiler (nvcc by default) and
``ptxas -v``; :func:`jax_dgpt.ptxas_report.compile_problems` is the one checker. Many shapes share one
kernel (M, G and the grid are run-time values), so each distinct generated source is compiled once, two
at a time, into a private cache directory. Without a CUDA compiler every test here skips.
"""

from __future__ import annotations

import concurrent.futures
import math

import pytest

import jax_dgpt  # noqa: F401  (loads the extension and points it at kernels/)
from jax_dgpt import _native, device, heuristics, ptxas_report
from jax_dgpt.heuristics import Problem
from jax_dgpt.kernel_config import KernelConfig, Operands, limits
from jax_dgpt.testing import CONTIGUOUS_ANCHORS, MASKED_ANCHORS, MASKED_MMAX, NK_PAIRS, NORMAL_ANCHORS, ODD_M

C = _native.load()
NUM_SMS = device.DEFAULT_NUM_SMS  # what a CPU-side lowering uses
CONTIGUOUS_SKEW = 1.3  # groups are sized expected_m x U(0.7, 1.3): an upper bound on every group


# --- configurations ----------------------------------------------------------------------------------
def round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


# Rows of split 128-byte lines (the benchmark sweep's odd layers), for which the heuristics choose multicast_a.
SPLIT_LINE_NK = [(1552, 7184), (2112, 7184), (7168, 2064)]


def chosen(problem: Problem, **forced) -> KernelConfig:
    return heuristics.select_config(problem, NUM_SMS, tuple(sorted(forced.items())))


def enumerate_chosen():
    """The heuristics' pick for every anchor problem (K and N as the ops pad them)."""
    k_align, n_align = limits()["k_alignment"], limits()["n_alignment"]
    normal = list(NORMAL_ANCHORS) + [(m, n, k) for m in ODD_M for n, k in NK_PAIRS]
    normal += [(m, n, k) for m in (128, 2048, 16384) for n, k in SPLIT_LINE_NK]  # multicast_a chosen
    for m, n, k in normal:
        yield chosen(Problem("normal", m, round_up(n, n_align), round_up(k, k_align), 1))
    for groups, expected_m, n, k in CONTIGUOUS_ANCHORS:
        rows = round_up(math.ceil(expected_m * CONTIGUOUS_SKEW), limits()["m_alignment_contiguous"])
        yield chosen(Problem("contiguous", groups * rows, n, k, groups))
    for groups, expected_m, n, k in MASKED_ANCHORS:
        yield chosen(Problem("masked", MASKED_MMAX, n, k, groups, expected_m))


def enumerate_variants():
    """K splitting forced in every layout: over a cluster (split-K) and inside the CTA (k_interleave)."""
    for layout in ("normal", "contiguous", "masked"):
        groups = 1 if layout == "normal" else 4
        hint = 64 if layout == "masked" else None
        for block_m, block_n, splits in ((64, 128, 2), (64, 64, 4), (128, 128, 2), (64, 208, 8)):
            # The contiguous layout takes 64-row tiles only when every row fits in one of them.
            m = block_m if layout == "contiguous" else 256
            problem = Problem(layout, m, 2112, 7168, groups, hint)
            yield chosen(problem, block_m=block_m, block_n=block_n, num_k_splits=splits)
        for block_n in (16, 64, 128, 208):
            yield chosen(Problem(layout, 64, 2112, 7168, groups, hint), block_m=64, block_n=block_n, k_interleave=1)


def enumerate_multicast():
    """A multicast over CTA pairs (normal layout only): every tile height, and a scaled float32 output added
    into c."""
    for block_m, block_n in ((256, 128), (128, 208), (64, 128)):
        yield chosen(Problem("normal", 4096, 7168, 2048, 1), block_m=block_m, block_n=block_n, multicast_a=1)
    accumulating = Operands(out_dtype="float32", accumulate=True, has_scale_a=True, has_scale_b=True)
    yield chosen(Problem("normal", 4096, 7168, 2048, 1, operands=accumulating), multicast_a=1)


def enumerate_operand_variants():
    """e5m2 operands, fused scales, float32 and accumulating outputs in every layout, the ragged layout, and
    the k_grouped layout on the weight-gradient shapes (ANCHORS-H200.md) and on many small experts."""
    e5m2, f32 = "float8_e5m2", "float32"
    variants = [
        Operands(a_dtype=e5m2),
        Operands(b_dtype=e5m2),
        Operands(a_dtype=e5m2, b_dtype=e5m2, has_scale_a=True, has_scale_b=True),
        Operands(out_dtype=f32, has_scale_b=True),
        Operands(out_dtype=f32, accumulate=True, has_scale_a=True),
    ]
    for operands in variants:
        for m, n, k in ((4096, 7168, 2048), (64, 2112, 7168), (128, 7168, 16384)):
            if operands.accumulate or operands.out_dtype == "float32" or m == 4096:
                yield chosen(Problem("normal", m, n, k, 1, operands=operands))
        if not operands.accumulate:
            yield chosen(Problem("contiguous", 4 * 1024, 4096, 7168, 4, operands=operands))
            yield chosen(Problem("masked", MASKED_MMAX, 4096, 7168, 4, 256, operands=operands))
    for operands in (Operands(), Operands(a_dtype=e5m2, has_scale_a=True, has_scale_b=True), Operands(out_dtype=f32)):
        for m, n, k, groups in ((8 * 4096, 4096, 7168, 8), (256 * 32, 7168, 2048, 256), (300, 264, 208, 3)):
            yield chosen(Problem("ragged", m, n, k, groups, operands=operands))
    for accumulate, sa, sb in ((True, False, False), (False, True, True), (True, True, False)):
        operands = Operands(b_dtype=e5m2, out_dtype=f32, accumulate=accumulate, has_scale_a=sa, has_scale_b=sb)
        for m, n, t, groups in (
            (7168, 4096, 32768, 8),
            (2048, 7168, 16384, 4),
            (7168, 2048, 8192, 256),
            (64, 96, 512, 3),
        ):
            yield chosen(Problem("k_grouped", m, n, t, groups, operands=operands))
    # 256-row masked tiles (forced only): bf16, and scaled with a float32 output.
    scaled_f32 = Operands(out_dtype=f32, has_scale_a=True, has_scale_b=True)
    for operands in (Operands(), Operands(has_scale_b=True), scaled_f32):
        yield chosen(Problem("masked", MASKED_MMAX, 4096, 7168, 4, 1024, operands=operands), block_m=256, block_n=128)
    # bf16 weight gradients straight from the kernel (fp8_ragged_dot's dw), e5m2 dy^T and scales.
    operands = Operands(b_dtype=e5m2, has_scale_a=True, has_scale_b=True)
    for m, n, t, groups in ((2048, 1024, 16384, 16), (7168, 2048, 32768, 64)):
        yield chosen(Problem("k_grouped", m, n, t, groups, operands=operands))


def unique_sources(configs):
    """One config per distinct generated source (equal sources compile to the same cubin)."""
    by_source: dict[str, KernelConfig] = {}
    for config in configs:
        by_source.setdefault(C.generate_source(config.as_attribute()), config)
    return by_source


CHOSEN = unique_sources(enumerate_chosen())
VARIANTS = unique_sources(enumerate_variants())
MULTICAST = unique_sources(enumerate_multicast())
OPERAND_VARIANTS = unique_sources(enumerate_operand_variants())


def config_id(config: KernelConfig) -> str:
    return f"{config.layout}-n{config.n}-k{config.k}-{config.describe().replace(' ', '-')}"


# --- compiling -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compiler(jit_env):
    try:
        return C.compiler_signature()
    except RuntimeError as error:
        pytest.skip(f"no CUDA compiler for the JIT: {error}")


@pytest.fixture(scope="module")
def compiled(compiler):
    """Generated source -> verbose compile result (or the exception), two compiles at a time."""
    sources = {**CHOSEN, **VARIANTS, **MULTICAST, **OPERAND_VARIANTS}

    def build(config: KernelConfig):
        try:
            return C.compile_gemm(config.as_attribute(), True)
        except Exception as error:  # reported by the test of this source
            return error

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        return dict(zip(sources, pool.map(build, sources.values())))


def assert_compiles_clean(result, config: KernelConfig, source: str) -> None:
    context = f"{config}\nsource:\n{source}"
    if isinstance(result, Exception):
        pytest.fail(f"{context}\ncompile failed: {type(result).__name__}: {result}")
    problems = ptxas_report.compile_problems(result, config.launch_shape()["threads"])
    assert not problems, f"{context}\n{problems}\nptxas log:\n{result['log']}"


# --- tests ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", list(CHOSEN), ids=[config_id(c) for c in CHOSEN.values()])
def test_chosen_configs_compile_clean(source, compiled):
    assert_compiles_clean(compiled[source], CHOSEN[source], source)


@pytest.mark.parametrize("source", list(VARIANTS), ids=[config_id(c) for c in VARIANTS.values()])
def test_k_split_variants_compile_clean(source, compiled):
    config = VARIANTS[source]
    assert_compiles_clean(compiled[source], config, source)
    # Both variants keep a fp32 partial tile; k_interleave adds a second math warpgroup, split-K a cluster.
    shape = config.launch_shape()
    plain = KernelConfig(**{**config.as_attribute(), "num_k_splits": 1, "k_interleave": 0, "grid_size": 1})
    assert shape["smem_bytes"] > plain.launch_shape()["smem_bytes"]
    assert shape["cluster_size"] == config.num_k_splits
    assert shape["threads"] == (384 if config.k_interleave or config.block_m == 128 else 256)


@pytest.mark.parametrize("source", list(MULTICAST), ids=[config_id(c) for c in MULTICAST.values()])
def test_multicast_variants_compile_clean(source, compiled):
    config = MULTICAST[source]
    assert_compiles_clean(compiled[source], config, source)
    # A cluster of two CTAs with the plain kernel's shared memory and threads.
    shape = config.launch_shape()
    plain = KernelConfig(**{**config.as_attribute(), "multicast_a": 0})
    assert shape == {**plain.launch_shape(), "cluster_size": 2}


@pytest.mark.parametrize("source", list(OPERAND_VARIANTS), ids=[config_id(c) for c in OPERAND_VARIANTS.values()])
def test_operand_variants_compile_clean(source, compiled):
    assert_compiles_clean(compiled[source], OPERAND_VARIANTS[source], source)


def test_nvrtc_build(jit_env):
    """The same kernel through NVRTC (DG_JIT_USE_NVRTC=1)."""
    jit_env.setenv("DG_JIT_USE_NVRTC", "1")
    try:
        signature = C.compiler_signature()
        config = chosen(Problem("normal", 4096, 7168, 2048, 1))
        result = C.compile_gemm(config.as_attribute(), True)
    except RuntimeError as error:
        if "libnvrtc could not be loaded" in str(error):
            pytest.skip(f"NVRTC is not installed (pip install nvidia-cuda-nvrtc): {error}")
        raise
    finally:
        jit_env.delenv("DG_JIT_USE_NVRTC")
    assert signature.startswith("nvrtc "), signature
    assert_compiles_clean(result, config, f"NVRTC ({signature})")


def test_cpp20_build(jit_env, compiler):
    """DG_JIT_OVERRIDE_CPP_STANDARD=20 compiles the kernel as C++20."""
    config = chosen(Problem("masked", MASKED_MMAX, 7168, 2048, 2, 512))
    jit_env.setenv("DG_JIT_OVERRIDE_CPP_STANDARD", "20")
    try:
        signature = C.compiler_signature()
        result = C.compile_gemm(config.as_attribute(), True)
    finally:
        jit_env.delenv("DG_JIT_OVERRIDE_CPP_STANDARD")
    assert "-std=c++20" in signature, signature
    assert_compiles_clean(result, config, f"C++20 ({signature})")
