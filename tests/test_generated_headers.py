"""The kernel headers: the generated one is current, and each compiles on its own.

``kernels/wgmma_fp8.cuh`` is written by ``scripts/gen_wgmma.py``; a hand edit or a template change
without a rerun shows up here. Each header must include what it uses (the JIT compiles them with
the product's own compiler flags, NVCC and NVRTC), and the wgmma wrappers must cover every BLOCK_N
the kernel configuration allows.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import pathlib
import re
import uuid

import pytest

import jax_dgpt  # noqa: F401  (loads the extension and points it at kernels/)
from jax_dgpt import _native
from jax_dgpt.kernel_config import limits

C = _native.load()
REPO = pathlib.Path(__file__).resolve().parent.parent
KERNELS = REPO / "kernels"
GENERATOR = REPO / "scripts" / "gen_wgmma.py"
GENERATED = KERNELS / "wgmma_fp8.cuh"
HEADERS = sorted(p.name for p in KERNELS.glob("*.cuh"))


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_wgmma", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines render() and main(); writes nothing on import
    return module


def test_generated_header_is_current():
    expected = load_generator().render()
    actual = GENERATED.read_text()
    assert actual == expected, (
        f"{GENERATED.relative_to(REPO)} differs from `python {GENERATOR.relative_to(REPO)}`'s "
        "output: rerun the script (do not edit the header by hand)"
    )


def test_generated_header_covers_every_block_n():
    text = GENERATED.read_text()
    generated = {int(n) for n in re.findall(r"struct WgmmaFp8<(\d+), kAType, kBType>", text)}
    lim = limits()
    wanted = set(range(lim["block_n_step"], lim["max_block_n"] + 1, lim["block_n_step"]))  # every valid block_n
    assert wanted <= generated, f"no wgmma wrapper for BLOCK_N {sorted(wanted - generated)}"
    for n in generated:  # each wrapper names N/2 accumulator registers, as PTX requires
        match = re.search(rf"struct WgmmaFp8<{n}, kAType, kBType> {{\s*static constexpr int kNumAccum = (\d+);", text)
        assert match and int(match.group(1)) == n // 2, f"WgmmaFp8<{n}>"
        assert f'wgmma.mma_async.sync.aligned.m64n{n}k32.f32" TYPES' in text  # the pairing comes last
    for pairing in ("e4m3.e4m3", "e4m3.e5m2", "e5m2.e4m3", "e5m2.e5m2"):  # every fp8 pairing wgmma reads
        assert text.count(f'(".{pairing}")') == len(generated), pairing


def test_kernels_dir_is_the_repository_headers():
    assert os.path.samefile(C.kernels_dir(), KERNELS), C.kernels_dir()
    assert "wgmma_fp8.cuh" in HEADERS and "sm90_fp8_gemm.cuh" in HEADERS, HEADERS


# --- each header compiles alone ----------------------------------------------------------------------
def standalone_source(header: str) -> tuple[str, str]:
    # NOTES: a unique comment makes every run a real compile (the caches would otherwise answer).
    tag = uuid.uuid4().hex[:12]
    stem = header.removesuffix(".cuh")
    return f"standalone_{stem}", (
        f"// standalone compile of {header} ({tag})\n"
        f'#include "{header}"\n'
        f'extern "C" __global__ void standalone_{stem}_{tag}() {{}}\n'
    )


@pytest.mark.parametrize("compiler", ["nvcc", "nvrtc"])
def test_each_header_compiles_alone(jit_env, compiler):
    if compiler == "nvrtc":
        jit_env.setenv("DG_JIT_USE_NVRTC", "1")
    try:
        try:
            signature = C.compiler_signature()
        except RuntimeError as error:
            pytest.skip(f"no {compiler} for the JIT: {error}")

        def build(header: str):
            try:
                C.compile_source(*standalone_source(header))
                return None
            except RuntimeError as error:
                return str(error)

        # NOTES: the env var is read by the worker threads as well, so it stays set until they end.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            failures = dict(zip(HEADERS, pool.map(build, HEADERS)))
    finally:
        if compiler == "nvrtc":
            jit_env.delenv("DG_JIT_USE_NVRTC")
    failed = {h: log for h, log in failures.items() if log is not None}
    assert not failed, f"{signature}: headers that do not compile alone:\n" + "\n\n".join(
        f"{header}:\n{log}" for header, log in failed.items()
    )
