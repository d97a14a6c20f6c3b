"""Reads what a JIT compile produced: the ``ptxas -v`` report and the cubin's ELF header.

Shared by the compile-check tests (every configuration must build an sm_90a cubin with no stack frame
and no spills) and ``scripts/sass_stats.py``. Input is the dict that ``jax_dgpt._C.compile_gemm`` (or
``compile_source``) returns: key, origin, cubin_size, log, path.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct

__all__ = ["ENTRY", "MAX_REGISTERS", "REGISTERS_PER_SM", "FunctionReport", "compile_problems", "cubin_sm", "parse"]

ENTRY = "dgpt_kernel"  # the kernel's entry point in every generated source
MAX_REGISTERS = 255
REGISTERS_PER_SM = 65536


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
    r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, (?P<loads>\d+) bytes spill loads"
)
_REGISTERS_RE = re.compile(r"Used (?P<registers>\d+) registers")


def parse(log: str) -> dict[str, FunctionReport]:
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
            report.stack_frame, report.spill_stores, report.spill_loads = (
                int(match["stack"]),
                int(match["stores"]),
                int(match["loads"]),
            )
        elif (match := _REGISTERS_RE.search(line)) and entry is not None:
            reports[entry].registers = int(match["registers"])
    return reports


def cubin_sm(cubin: bytes) -> int:
    """The SM version an ELF cubin was built for (EM_CUDA header, either flags layout)."""
    if cubin[:4] != b"\x7fELF" or cubin[4] != 2:
        raise ValueError("not a 64-bit ELF file")
    (machine,) = struct.unpack_from("<H", cubin, 18)
    if machine != 190:
        raise ValueError(f"ELF machine {machine} is not EM_CUDA (190)")
    (flags,) = struct.unpack_from("<I", cubin, 48)
    # NOTES: CUDA 13 cubins (ELF ABI version >= 8) keep the SM in bits 8-15 of e_flags; older ones in
    # bits 0-7. The "a" of sm_90a is not in the header: ptxas's report shows it.
    return (flags >> 8) & 0xFF if cubin[8] >= 8 else flags & 0xFF


def compile_problems(result: dict, threads_per_block: int, entry_name: str = ENTRY) -> list[str]:
    """Everything wrong with a verbose compile of the kernel (entry point ``entry_name``: the GEMM's, or
    ``dgpt_quantize``): not a fresh sm_90a cubin, a stack frame, spills, serialised wgmma, or more registers
    than one SM holds for the block. Empty when clean."""
    log, problems = result["log"], []
    if result["origin"] != "compiled":
        problems.append(f"origin {result['origin']!r}: verbose builds must bypass the caches")
    path = result.get("path")
    if not path or not os.path.isfile(path):
        return [*problems, "no cubin on disk"]
    with open(path, "rb") as f:
        cubin = f.read()
    if len(cubin) != result["cubin_size"] or cubin_sm(cubin) != 90:
        problems.append(f"cubin of {len(cubin)} bytes for sm_{cubin_sm(cubin)} (want {result['cubin_size']}, sm_90)")
    reports = parse(log)
    entry = reports.get(entry_name)
    if entry is None:
        return [*problems, f"no ptxas report for {entry_name}"]
    if entry.arch != "sm_90a":
        problems.append(f"entry compiled for {entry.arch}")
    for name, report in reports.items():  # the entry and any function ptxas kept out of line
        if report.stack_frame or report.spill_stores or report.spill_loads:
            problems.append(f"{name}: {report}")
    if entry.stack_frame is None:
        problems.append("no stack/spill line for the entry")
    if entry.registers is None or entry.registers > MAX_REGISTERS:
        problems.append(f"registers: {entry.registers}")
    # NOTES: __launch_bounds__ keeps the launch's register file within one SM; check that it held.
    elif entry.registers * threads_per_block > REGISTERS_PER_SM:
        problems.append(f"{entry.registers} registers x {threads_per_block} threads > {REGISTERS_PER_SM}")
    if "Potential Performance Loss" in log:
        problems.append("ptxas serialised wgmma")
    return problems
