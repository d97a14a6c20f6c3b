"""Compile-only checks of every kernel configuration the heuristics pick for the anchor shapes.

No GPU is needed: each configuration is JIT-compiled with the product's compiler (nvcc by default)
to an sm_90a cubin with ``ptxas -v``, and ptxas's report must show no stack frame, no spills and at
most 255 registers for the entry ``dgpt_kernel`` (issue 2 item 7, issue 3 item 5).

The shapes are those of ../shared/ANCHORS-H100.md (copied below: the file is not in the repo), the
odd M values of issue 2, and the grouped tables of issue 3. Many shapes share one kernel (M, the
group count and the SM count are run-time values), so each distinct generated source is compiled
once, two at a time, into a temporary cache directory (the user's ~/.jax_dgpt is never touched).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import re
import struct

import pytest

import jax_dgpt  # noqa: F401  (loads the extension and points it at kernels/)
from jax_dgpt import _native, device, heuristics
from jax_dgpt.testing import CONTIGUOUS_ANCHORS, MASKED_ANCHORS, MASKED_MMAX, NORMAL_ANCHORS, ODD_M

C = _native.load()
NUM_SMS = device.DEFAULT_NUM_SMS  # what a CPU-side lowering uses (an H100 SXM)
ENTRY = "dgpt_kernel"
MAX_REGISTERS = 255
REGISTERS_PER_SM = 65536
K_ALIGNMENT, N_ALIGNMENT = 16, 8  # what the public ops pad K and N to before the kernel


# --- shape enumeration -----------------------------------------------------------------------------
CONTIGUOUS_ALIGNMENT = 128
CONTIGUOUS_SKEW = 1.3  # groups are sized expected_m x U(0.7, 1.3): an upper bound on every group


@dataclasses.dataclass(frozen=True)
class Problem:
    """One static problem as the lowering sees it (K and N already padded) and its config."""

    kind: str
    m: int  # M (normal, contiguous: all groups) or Mmax (masked)
    n: int
    k: int
    num_groups: int
    expected_m: int | None
    config: heuristics.GemmConfig

    def describe(self) -> str:
        hint = f" expected_m={self.expected_m}" if self.expected_m is not None else ""
        c = self.config
        return (
            f"{self.kind} m={self.m} n={self.n} k={self.k} groups={self.num_groups}{hint} -> "
            f"block_m={c.block_m} block_n={c.block_n} stages={c.num_stages} sms={c.num_sms} k_splits={c.num_k_splits}"
        )

    def compile_args(self) -> tuple:
        c = self.config
        return (
            self.kind,
            self.m,
            self.n,
            self.k,
            self.num_groups,
            c.block_m,
            c.block_n,
            c.num_stages,
            c.num_sms,
            c.num_k_splits,
        )

    def compile(self, **kwargs) -> dict:
        *args, splits = self.compile_args()
        return C.compile_gemm(*args, num_k_splits=splits, **kwargs)


def make_problem(kind, m, n, k, num_groups=1, expected_m=None) -> Problem:
    n, k = heuristics.round_up(n, N_ALIGNMENT), heuristics.round_up(k, K_ALIGNMENT)
    config = heuristics.select_config(kind, m, n, k, num_groups, NUM_SMS, expected_m=expected_m)
    return Problem(kind, m, n, k, num_groups, expected_m, config)


def enumerate_normal_shapes():
    yield from NORMAL_ANCHORS
    pairs = [(n, k) for m, n, k in NORMAL_ANCHORS if m == 64]  # the 7 (N, K) of the table
    for m in ODD_M:
        for n, k in pairs:
            yield m, n, k


def enumerate_problems():
    for m, n, k in enumerate_normal_shapes():
        yield make_problem("normal", m, n, k)
    for groups, expected_m, n, k in CONTIGUOUS_ANCHORS:
        rows = heuristics.round_up(math.ceil(expected_m * CONTIGUOUS_SKEW), CONTIGUOUS_ALIGNMENT)
        yield make_problem("contiguous", groups * rows, n, k, groups)
    for groups, expected_m, n, k in MASKED_ANCHORS:
        yield make_problem("masked", MASKED_MMAX, n, k, groups, expected_m)


PROBLEMS = list(enumerate_problems())


def problem_id(problem: Problem) -> str:
    hint = f"-em{problem.expected_m}" if problem.expected_m is not None else ""
    return f"{problem.kind}-m{problem.m}-n{problem.n}-k{problem.k}-g{problem.num_groups}{hint}"


def source_of(problem: Problem) -> str:
    """The generated source: problems with equal sources compile to the same cubin."""
    return C.generate_source(*problem.compile_args())


# --- ptxas report and cubin parsing --------------------------------------------------------------
@dataclasses.dataclass
class FunctionReport:
    arch: str | None = None
    stack_frame: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    registers: int | None = None


_ENTRY_RE = re.compile(r"Compiling entry function '(?P<name>[^']+)' for '(?P<arch>[^']+)'")
_PROPERTIES_RE = re.compile(r"Function properties for (?P<name>\S+)")
_FRAME_RE = re.compile(
    r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, "
    r"(?P<loads>\d+) bytes spill loads"
)
_REGISTERS_RE = re.compile(r"Used (?P<registers>\d+) registers")


def parse_ptxas_log(log: str) -> dict[str, FunctionReport]:
    """Function name -> what ``ptxas -v`` reported (nvcc and NVRTC spell the lines alike)."""
    reports: dict[str, FunctionReport] = {}
    entry = properties = None
    for line in log.replace("\x00", "").splitlines():
        if match := _ENTRY_RE.search(line):
            entry = match["name"]
            reports.setdefault(entry, FunctionReport()).arch = match["arch"]
        elif match := _PROPERTIES_RE.search(line):
            properties = match["name"]
            reports.setdefault(properties, FunctionReport())
        elif (match := _FRAME_RE.search(line)) and properties is not None:
            report = reports[properties]
            report.stack_frame = int(match["stack"])
            report.spill_stores = int(match["stores"])
            report.spill_loads = int(match["loads"])
        elif (match := _REGISTERS_RE.search(line)) and entry is not None:
            reports[entry].registers = int(match["registers"])
    return reports


def cubin_sm(cubin: bytes) -> int:
    """The SM version an ELF cubin was built for (EM_CUDA header, either flags layout)."""
    assert cubin[:4] == b"\x7fELF", "not an ELF file"
    assert cubin[4] == 2, "not a 64-bit ELF file"
    (machine,) = struct.unpack_from("<H", cubin, 18)
    assert machine == 190, f"ELF machine {machine} is not EM_CUDA (190)"
    (flags,) = struct.unpack_from("<I", cubin, 48)
    # NOTES: CUDA 13 cubins (ELF ABI version >= 8) keep the SM in bits 8-15 of e_flags; older
    # ones in bits 0-7. The "a" of sm_90a is not in the header: ptxas's report shows it.
    return (flags >> 8) & 0xFF if cubin[8] >= 8 else flags & 0xFF


def threads_per_block(block_m: int) -> int:
    """One producer warpgroup plus one math warpgroup per 64 rows (kernels/dgpt_types.cuh)."""
    return 128 * (1 + block_m // 64)


def check_compiled(result: dict, context: str) -> FunctionReport:
    """Asserts the compile result is an sm_90a cubin whose entry has no stack frame and no spills."""
    log = result["log"]
    where = f"{context}\nptxas log:\n{log}"
    assert result["origin"] == "compiled", f"{where}\nverbose builds must bypass the caches"
    assert result["cubin_size"] > 0, where
    assert result["path"] and os.path.isfile(result["path"]), f"{where}\nno cubin on disk"
    with open(result["path"], "rb") as f:
        cubin = f.read()
    assert len(cubin) == result["cubin_size"], where
    assert cubin_sm(cubin) == 90, f"{where}\ncubin is not for sm_90"

    reports = parse_ptxas_log(log)
    assert ENTRY in reports, f"{where}\nno ptxas report for entry {ENTRY}"
    entry = reports[ENTRY]
    assert entry.arch == "sm_90a", f"{where}\nentry compiled for {entry.arch}"
    assert (entry.stack_frame, entry.spill_stores, entry.spill_loads) == (0, 0, 0), (
        f"{where}\nstack frame {entry.stack_frame} B, spill stores {entry.spill_stores} B, "
        f"spill loads {entry.spill_loads} B (all must be 0)"
    )
    assert entry.registers is not None, f"{where}\nno register count"
    assert entry.registers <= MAX_REGISTERS, f"{where}\n{entry.registers} registers"
    for name, report in reports.items():  # any function ptxas kept out of line, too
        assert not report.stack_frame and not report.spill_stores and not report.spill_loads, (
            f"{where}\nfunction {name}: {report}"
        )
    assert "Potential Performance Loss" not in log, f"{where}\nptxas serialised wgmma"
    return entry


# --- fixtures ----------------------------------------------------------------------------------------
def _skip_without_compiler() -> None:
    try:
        C.compiler_signature()
    except RuntimeError as error:
        pytest.skip(f"no CUDA compiler for the JIT: {error}")


@pytest.fixture(scope="module")
def compiled(request, jit_env):
    """Generated source -> compile result (or the exception), for the problems selected to run.

    Each distinct source is compiled once with ``ptxas_verbose=True``, two at a time
    (``compile_gemm`` releases the GIL while nvcc runs).
    """
    _skip_without_compiler()
    wanted: dict[str, Problem] = {}
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if item.module is request.module and callspec and "problem" in callspec.params:
            problem = callspec.params["problem"]
            wanted.setdefault(source_of(problem), problem)

    def build(problem: Problem):
        try:
            return problem.compile(ptxas_verbose=True)
        except Exception as error:  # reported by every test of this source
            return error

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = dict(zip(wanted, pool.map(build, wanted.values())))
    return results


# --- tests ---------------------------------------------------------------------------------------------
def test_enumeration_covers_the_issue_tables():
    assert len(NORMAL_ANCHORS) == 22
    kinds = [p.kind for p in PROBLEMS]
    assert kinds.count("normal") == 22 + len(ODD_M) * 7
    assert kinds.count("contiguous") == 6 and kinds.count("masked") == 6


@pytest.mark.parametrize("problem", PROBLEMS, ids=problem_id)
def test_config_fits_shared_memory(problem):
    c = problem.config
    smem = C.smem_size(c.block_m, c.block_n, c.num_stages, c.num_k_splits)
    assert smem <= C.MAX_SMEM_BYTES, f"{problem.describe()}: {smem} > {C.MAX_SMEM_BYTES} bytes"
    assert 1 <= c.num_sms <= NUM_SMS, problem.describe()


@pytest.mark.parametrize("problem", PROBLEMS, ids=problem_id)
def test_config_compiles_without_spills(problem, compiled):
    source = source_of(problem)
    result = compiled[source]
    context = f"{problem.describe()}\nsource:\n{source}"
    if isinstance(result, Exception):
        pytest.fail(f"{context}\ncompile failed: {type(result).__name__}: {result}")
    entry = check_compiled(result, context)
    # NOTES: __launch_bounds__ keeps the launch register file within one SM; check it held.
    threads = threads_per_block(problem.config.block_m)
    assert entry.registers * threads <= REGISTERS_PER_SM, (
        f"{context}\n{entry.registers} registers x {threads} threads > {REGISTERS_PER_SM}"
    )


def test_nvrtc_build(jit_env):
    """The same kernel through NVRTC (DG_JIT_USE_NVRTC=1): sm_90a, no spills, no stack frame."""
    jit_env.setenv("DG_JIT_USE_NVRTC", "1")
    try:
        signature = C.compiler_signature()
    except RuntimeError as error:
        if "libnvrtc could not be loaded" in str(error):
            pytest.skip(f"NVRTC is not installed (pip install nvidia-cuda-nvrtc): {error}")
        raise
    finally:
        jit_env.delenv("DG_JIT_USE_NVRTC")
    assert signature.startswith("nvrtc "), signature
    problem = make_problem("normal", 4096, 7168, 2048)
    jit_env.setenv("DG_JIT_USE_NVRTC", "1")
    try:
        result = problem.compile(ptxas_verbose=True)
    finally:
        jit_env.delenv("DG_JIT_USE_NVRTC")
    check_compiled(result, f"NVRTC ({signature}) {problem.describe()}")


def test_cpp20_build(jit_env):
    """DG_JIT_OVERRIDE_CPP_STANDARD=20 compiles the kernel as C++20."""
    _skip_without_compiler()
    problem = make_problem("masked", MASKED_MMAX, 7168, 2048, 2, expected_m=512)
    jit_env.setenv("DG_JIT_OVERRIDE_CPP_STANDARD", "20")
    try:
        signature = C.compiler_signature()
        result = problem.compile(ptxas_verbose=True)
    finally:
        jit_env.delenv("DG_JIT_OVERRIDE_CPP_STANDARD")
    assert "-std=c++20" in signature, signature
    check_compiled(result, f"C++20 ({signature}) {problem.describe()}")


# --- split-K (clusters of CTAs sharing a tile; not chosen by the heuristics yet) ---------------------
@pytest.mark.parametrize("kind", ["normal", "contiguous", "masked"])
@pytest.mark.parametrize("block_m, block_n, splits", [(64, 128, 2), (64, 64, 4), (128, 128, 2), (64, 208, 8)])
def test_split_k_configs_compile_without_spills(kind, block_m, block_n, splits, tmp_path, monkeypatch):
    monkeypatch.setenv("DG_JIT_CACHE_DIR", str(tmp_path))
    from jax_dgpt import _C, heuristics

    n, k = 2112, 7168
    stages = heuristics.select_num_stages(block_m, block_n, splits)
    groups = 1 if kind == "normal" else 4
    result = _C.compile_gemm(
        kind, 256, n, k, groups, block_m, block_n, stages, 128, ptxas_verbose=True, num_k_splits=splits
    )
    log = result["log"]
    context = f"{kind} block_m={block_m} block_n={block_n} stages={stages} splits={splits}\n{log}"
    assert "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" in log, context
    assert "Potential Performance Loss" not in log, context
    assert _C.smem_size(block_m, block_n, stages, splits) <= _C.MAX_SMEM_BYTES


# --- B multicast (pairs of CTAs sharing B tiles; not chosen by the heuristics yet) ------------------
@pytest.mark.parametrize("block_m, block_n", [(128, 208), (128, 128), (64, 16), (64, 208)])
def test_multicast_configs_compile_without_spills(block_m, block_n, tmp_path, monkeypatch):
    monkeypatch.setenv("DG_JIT_CACHE_DIR", str(tmp_path))
    from jax_dgpt import _C, heuristics

    stages = heuristics.select_num_stages(block_m, block_n)
    result = _C.compile_gemm(
        "normal", 4096, 7168, 2048, 1, block_m, block_n, stages, 132, ptxas_verbose=True, num_multicast=2
    )
    log = result["log"]
    context = f"multicast block_m={block_m} block_n={block_n} stages={stages}\n{log}"
    assert "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" in log, context
    assert "Potential Performance Loss" not in log, context


@pytest.mark.parametrize(
    "kind, splits, multicast, sms, rule",
    [
        ("masked", 1, 2, 132, "B multicast is for normal GEMMs without split-K"),
        ("normal", 2, 2, 132, "B multicast is for normal GEMMs without split-K"),
        ("normal", 1, 3, 132, "num_multicast must be 1 or 2"),
        ("normal", 1, 2, 131, "whole clusters"),
    ],
)
def test_multicast_configs_are_validated(kind, splits, multicast, sms, rule):
    from jax_dgpt import _C

    groups = 1 if kind == "normal" else 2
    with pytest.raises(ValueError, match=rule):
        _C.generate_source(kind, 256, 512, 256, groups, 128, 128, 4, sms, splits, multicast)


# --- pingpong (math warpgroups taking turns; measured no faster on 128-row tiles, never chosen) --------
@pytest.mark.parametrize(
    "kind, block_n, splits, multicast",
    [
        ("normal", 208, 1, 1),
        ("normal", 128, 1, 1),
        ("normal", 208, 1, 2),
        ("normal", 176, 2, 1),
        ("contiguous", 208, 1, 1),
        ("masked", 144, 1, 1),
    ],
)
def test_pingpong_configs_compile_without_spills(kind, block_n, splits, multicast, tmp_path, monkeypatch):
    monkeypatch.setenv("DG_JIT_CACHE_DIR", str(tmp_path))
    from jax_dgpt import _C, heuristics

    stages = heuristics.select_num_stages(128, block_n, splits)
    groups = 1 if kind == "normal" else 4
    result = _C.compile_gemm(
        kind,
        4096,
        7168,
        2048,
        groups,
        128,
        block_n,
        stages,
        132,
        ptxas_verbose=True,
        num_k_splits=splits,
        num_multicast=multicast,
        pingpong=1,
    )
    log = result["log"]
    context = f"pingpong {kind} block_n={block_n} stages={stages} splits={splits} multicast={multicast}\n{log}"
    assert "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" in log, context
    assert "Potential Performance Loss" not in log, context
    # Off is the verified kernel: the generated source names the flag, and turns exist only when on.
    source = _C.generate_source(kind, 4096, 7168, 2048, groups, 128, block_n, stages, 132, splits, multicast, 1)
    assert source.rstrip().endswith(", 1)"), source


# Pingpong on 64-row tiles: a second math warpgroup takes the odd K blocks of the same rows.
@pytest.mark.parametrize(
    "kind, block_n",
    [("normal", 16), ("normal", 64), ("normal", 128), ("normal", 208), ("contiguous", 128), ("masked", 208)],
)
def test_pingpong_64_row_configs_compile_without_spills(kind, block_n, tmp_path, monkeypatch):
    monkeypatch.setenv("DG_JIT_CACHE_DIR", str(tmp_path))
    from jax_dgpt import _C, heuristics

    stages = heuristics.select_num_stages(64, block_n, 1, 1)
    groups = 1 if kind == "normal" else 4
    m = 64 if kind == "contiguous" else 4096
    result = _C.compile_gemm(kind, m, 2112, 7168, groups, 64, block_n, stages, 132, ptxas_verbose=True, pingpong=1)
    log = result["log"]
    context = f"pingpong 64-row {kind} block_n={block_n} stages={stages}\n{log}"
    assert "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" in log, context
    assert "Potential Performance Loss" not in log, context
    assert stages % 2 == 0, stages  # the warpgroups alternate stages: each stage keeps one reader
    # Three warpgroups (two math, one producer) and a fp32 partial tile in shared memory.
    assert _C.smem_size(64, block_n, stages, 1, 1) == _C.smem_size(64, block_n, stages, 1, 0) + 64 * block_n * 4
    assert _C.smem_size(64, block_n, stages, 1, 1) <= _C.MAX_SMEM_BYTES


@pytest.mark.parametrize(
    "block_m, pingpong, splits, multicast, rule",
    [
        (64, 1, 2, 1, "pingpong on block_m=64 .* excludes split-K and B multicast"),
        (64, 1, 1, 2, "pingpong on block_m=64 .* excludes split-K and B multicast"),
        (64, 1, 1, 1, "pingpong on block_m=64 needs an even num_stages"),
        (128, 2, 1, 1, "pingpong must be 0 or 1"),
        (128, -1, 1, 1, "pingpong must be 0 or 1"),
    ],
)
def test_pingpong_configs_are_validated(block_m, pingpong, splits, multicast, rule):
    from jax_dgpt import _C

    stages = 3 if "even" in rule else 4
    with pytest.raises(ValueError, match=rule):
        _C.generate_source("normal", 256, 512, 256, 1, block_m, 128, stages, 132, splits, multicast, pingpong)
