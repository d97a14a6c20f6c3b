"""The host launch path (tensor maps, kernel parameter, grid, clusters) against a stand-in driver, on the CPU.

`tests/fake_driver/fake_libcuda.c` is built into a libcuda.so.1 that launches nothing and records every
call; each test runs in a subprocess whose loader finds it first. The kernels are really compiled (nvcc);
only the driver is replaced. What the GPU tests cannot see directly is checked here: which tensor maps a
launch encodes and what they describe, that the kernel parameter is reused while the buffers repeat and
re-encoded when any of them changes, that an encoding failure is reported and not cached, and that cluster
grids are capped at the co-resident clusters.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from jax_dgpt import _C
from jax_dgpt.kernel_config import KernelConfig

HERE = os.path.dirname(os.path.abspath(__file__))
CUDA_INCLUDE = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "include")

PRELUDE = """
import ctypes, json, struct
fake = ctypes.CDLL("libcuda.so.1")  # the stand-in: the extension's dlopen gets this same library
from jax_dgpt import _C
from jax_dgpt.kernel_config import KernelConfig
assert _C.driver_available()[0], _C.driver_available()

def launcher(**fields):
    return _C._LauncherForTests(KernelConfig(**{"num_groups": 1, **fields}).as_attribute())

def last_launch():
    out = (ctypes.c_uint * 4)()
    fake.fake_last_launch(out)
    return dict(zip(("grid", "cluster", "smem", "block"), out))

def last_params():
    raw = (ctypes.c_ubyte * 640)()  # sizeof(GemmParams), kernels/dgpt_types.cuh
    fake.fake_last_params(raw, 640)
    words = struct.unpack("<80Q", bytes(raw))
    fields = ("address", "inner", "rows", "box_inner", "box_rows", "swizzle", "l2")
    maps = {name: dict(zip(fields, words[16 * i : 16 * i + 7])) for i, name in enumerate(("a", "b", "d", "d_tail"))}
    lo, hi = (lambda w: w & 0xFFFFFFFF), (lambda w: w >> 32)
    return dict(maps=maps, grouped_layout=words[64], d_direct=words[65], d_group_stride=words[66],
                scale_a=words[67], scale_b=words[68], scale_a_strides=(lo(words[69]), hi(words[69])),
                scale_b_strides=(lo(words[70]), hi(words[70])), shape_m=lo(words[71]), num_groups=hi(words[71]),
                a_box_rows=lo(words[72]))
"""


@pytest.fixture(scope="module")
def fake_driver_dir(tmp_path_factory):
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or not os.path.exists(os.path.join(CUDA_INCLUDE, "cuda.h")):
        pytest.skip("needs a C compiler and the CUDA headers to build the stand-in driver")
    try:
        _C.compiler_signature()
    except RuntimeError as error:
        pytest.skip(f"no CUDA compiler for the JIT: {error}")
    out = tmp_path_factory.mktemp("fake_driver")
    subprocess.run(
        [
            compiler,
            "-shared",
            "-fPIC",
            "-O1",
            "-I",
            CUDA_INCLUDE,
            "-o",
            str(out / "libcuda.so.1"),
            os.path.join(HERE, "fake_driver", "fake_libcuda.c"),
        ],
        check=True,
    )
    return out


def run(fake_driver_dir, tmp_path, body: str) -> dict:
    """Runs PRELUDE + body in a fresh interpreter that loads the stand-in driver; returns its last JSON line."""
    env = dict(
        os.environ,
        LD_LIBRARY_PATH=f"{fake_driver_dir}:{os.environ.get('LD_LIBRARY_PATH', '')}",
        DG_JIT_CACHE_DIR=str(tmp_path / "cache"),
        JAX_PLATFORMS="cpu",
    )
    env["PATH"] = env.get("PATH", "") + os.pathsep + os.path.join(os.path.dirname(CUDA_INCLUDE), "bin")
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def smem(**fields) -> int:
    config = KernelConfig(**{"layout": "normal", "m": 1, "n": 4096, "k": 4096, "num_groups": 1, **fields})
    return config.launch_shape()["smem_bytes"]


# CUtensorMapL2promotion values: rows of whole 128-byte lines get 256-byte promotion, others 128-byte
# (ffi/tma.cc says why).
L2_128, L2_256 = 2, 3

# Configs of the tests below (every field but the defaults named).
BIG = "layout='normal', m=4096, n=7168, k=2048, block_m=128, block_n=208, num_stages=4, grid_size=132"


def test_parameter_is_encoded_once_per_set_of_buffers(fake_driver_dir, tmp_path):
    r = run(
        fake_driver_dir,
        tmp_path,
        """
        k = launcher(BIG)
        A, B, D = 0x10000, 0x20000, 0x30000
        counts, moved = [], {}
        for d in (D, D, D, D + 4096, D + 4096, D):
            k.launch(A, B, d)
            counts.append((fake.fake_encodes(), fake.fake_replaces()))
            if d != D:
                moved = last_params()["maps"]
        k.launch(A + 256, B, D)
        counts.append((fake.fake_encodes(), fake.fake_replaces()))
        moved_a = last_params()["maps"]
        k.launch(A, B, D)
        launches = fake.fake_launches()
        print(json.dumps(dict(counts=counts, moved=moved, moved_a=moved_a, launches=launches, launch=last_launch(),
                              params=last_params())))
    """.replace("BIG", BIG),
    )
    # 208 columns = 3 x 64 (128B swizzle) + 16 (32B): four maps encoded once; a new output buffer replaces the
    # address of its two maps, a new A of one; nothing while the buffers repeat.
    assert r["counts"] == [[4, 0], [4, 0], [4, 0], [4, 2], [4, 2], [4, 4], [4, 5]], r["counts"]
    assert r["moved"]["d"]["address"] == r["moved"]["d_tail"]["address"] == 0x30000 + 4096
    assert r["moved"]["d"]["box_inner"] == 64 and r["moved"]["a"]["address"] == 0x10000
    assert r["moved_a"]["a"]["address"] == 0x10000 + 256 and r["moved_a"]["d"]["address"] == 0x30000
    assert r["launches"] == 8
    assert r["launch"] == dict(
        grid=132, cluster=1, smem=smem(block_m=128, block_n=208, num_stages=4, grid_size=132), block=384
    )
    p = r["params"]
    assert p["maps"]["a"] == dict(
        address=0x10000, inner=2048, rows=4096, box_inner=128, box_rows=128, swizzle=3, l2=L2_256
    )
    assert p["maps"]["b"] == dict(
        address=0x20000, inner=2048, rows=7168, box_inner=128, box_rows=208, swizzle=3, l2=L2_256
    )
    assert p["maps"]["d"] == dict(
        address=0x30000, inner=7168, rows=4096, box_inner=64, box_rows=64, swizzle=3, l2=L2_256
    )
    assert p["maps"]["d_tail"] == dict(
        address=0x30000, inner=7168, rows=4096, box_inner=16, box_rows=64, swizzle=1, l2=L2_256
    )
    assert (p["shape_m"], p["num_groups"], p["a_box_rows"], p["grouped_layout"]) == (4096, 1, 128, 0)


def test_small_m_and_grouped_parameters(fake_driver_dir, tmp_path):
    r = run(
        fake_driver_dir,
        tmp_path,
        """
        out = {}
        k = launcher(layout="normal", m=5, n=256, k=4096, block_m=64, block_n=128, num_stages=6, grid_size=4,
                     num_k_splits=2)
        k.launch(0x10000, 0x20000, 0x30000)
        out["small"] = dict(params=last_params(), launch=last_launch(), encodes=fake.fake_encodes())
        g = launcher(layout="masked", m=512, n=256, k=1024, num_groups=3, block_m=128, block_n=128, num_stages=6,
                     grid_size=132)
        g.launch(0x40000, 0x50000, 0x60000, 0x70000)
        out["masked"] = dict(params=last_params(), launch=last_launch())
        ki = launcher(layout="normal", m=5, n=256, k=4096, block_m=64, block_n=128, num_stages=4, grid_size=4,
                      k_interleave=1)
        ki.launch(0x10000, 0x20000, 0x30000)
        out["k_interleave"] = dict(launch=last_launch())
        print(json.dumps(out))
    """,
    )
    # k_interleave on a 64-row tile: two math warpgroups plus the producer, and the fp32 partial tile.
    ki_smem = smem(block_m=64, block_n=128, num_stages=4, grid_size=4, k_interleave=1)
    assert ki_smem == smem(block_m=64, block_n=128, num_stages=4, grid_size=4) + 64 * 128 * 4
    assert r["k_interleave"]["launch"] == dict(grid=4, cluster=1, smem=ki_smem, block=384)
    small = r["small"]
    assert small["params"]["a_box_rows"] == 8 and small["params"]["maps"]["a"]["box_rows"] == 8  # trimmed A box
    assert small["params"]["maps"]["d_tail"]["address"] == 0 and small["encodes"] == 3  # 128 columns: no tail map
    assert small["launch"]["cluster"] == 2 and small["launch"]["grid"] == 4 and small["launch"]["block"] == 256
    masked = r["masked"]["params"]
    assert masked["grouped_layout"] == 0x70000 and (masked["shape_m"], masked["num_groups"]) == (512, 3)
    assert masked["maps"]["a"]["rows"] == 512 and masked["maps"]["b"]["rows"] == 256


def test_float32_output_scales_and_k_grouped_parameters(fake_driver_dir, tmp_path):
    r = run(
        fake_driver_dir,
        tmp_path,
        """
        k = launcher(layout="k_grouped", m=512, n=256, k=1024, num_groups=3, block_m=128, block_n=128,
                     num_stages=6, grid_size=132, out_dtype=1, accumulate=1, has_scale_a=1, has_scale_b=1)
        k.launch(0x10000, 0x20000, 0x30000, 0x70000, 0x80000, 0x90000)
        out = dict(params=last_params(), encodes=fake.fake_encodes())
        try:
            k.launch(0x10000, 0x20000, 0x30000, 0x70000, 0x80000)  # scale_b missing
        except RuntimeError as error:
            out["missing"] = str(error)
        print(json.dumps(out))
    """,
    )
    p = r["params"]
    # The fp32 D leaves through TMA in 32-column (128-byte) atoms: 128 columns need no tail map. d_direct
    # stays set for the ragged layout's row-by-row tiles.
    assert r["encodes"] == 3 and p["maps"]["d_tail"]["address"] == 0
    assert p["maps"]["d"] == dict(address=0x30000, inner=256, rows=512, box_inner=32, box_rows=64, swizzle=3, l2=L2_256)
    assert (p["d_direct"], p["d_group_stride"]) == (0x30000, 512 * 256)
    # One A [M, T] and one B [N, T] for every group; the sizes are the grouped-layout array.
    assert p["maps"]["a"]["rows"] == 512 and p["maps"]["b"]["rows"] == 256 and p["grouped_layout"] == 0x70000
    assert (p["scale_a"], p["scale_b"], p["scale_a_strides"], p["scale_b_strides"]) == (
        0x80000,
        0x90000,
        [0, 0],
        [0, 0],
    )
    assert "scale operands do not match" in r["missing"]


def test_cluster_grid_is_capped_at_co_resident_clusters(fake_driver_dir, tmp_path):
    r = run(
        fake_driver_dir,
        tmp_path,
        """
        out = {}
        fake.fake_set_max_clusters(60)
        split = "layout='normal', m=64, n=2112, k=7168, block_m=64, block_n=32, num_stages=8, num_k_splits=2"
        sk = eval(f"launcher({split}, grid_size=132)")
        sk.launch(0x10000, 0x20000, 0x30000)
        sk.launch(0x10000, 0x20000, 0x40000)
        out["capped"] = dict(launch=last_launch(), queries=fake.fake_occupancy_queries())
        fake.fake_set_max_clusters(-1)  # the query fails: the grid stays as configured
        sk2 = eval(f"launcher({split}, grid_size=130)")
        sk2.launch(0x10000, 0x20000, 0x30000)
        out["failed"] = last_launch()
        plain = launcher(BIG)
        plain.launch(0x10000, 0x20000, 0x30000)
        out["plain"] = dict(launch=last_launch(), queries=fake.fake_occupancy_queries())
        print(json.dumps(out))
    """.replace("BIG", BIG),
    )
    assert r["capped"]["launch"]["grid"] == 120 and r["capped"]["launch"]["cluster"] == 2
    assert r["capped"]["queries"] == 1  # asked once per kernel, not per launch
    assert r["failed"]["grid"] == 130 and r["failed"]["cluster"] == 2
    assert r["plain"]["launch"]["grid"] == 132 and r["plain"]["queries"] == 2  # no query without clusters


def test_encoding_failure_is_reported_and_not_cached(fake_driver_dir, tmp_path):
    r = run(
        fake_driver_dir,
        tmp_path,
        """
        k = launcher(layout="normal", m=256, n=512, k=256, block_m=128, block_n=128, num_stages=6, grid_size=132)
        errors = []
        fake.fake_fail_encodes(1)
        try:
            k.launch(0x10000, 0x20000, 0x30000)
        except RuntimeError as e:
            errors.append(str(e))
        k.launch(0x10000, 0x20000, 0x30000)  # encoded afresh, launched
        fake.fake_fail_replaces(1)
        try:
            k.launch(0x10010, 0x20000, 0x30000)
        except RuntimeError as e:
            errors.append(str(e))
        launches_after_failure, encodes_before = fake.fake_launches(), fake.fake_encodes()
        k.launch(0x10010, 0x20000, 0x30000)  # same buffers again: encoded afresh (the update was dropped)
        encodes_after = fake.fake_encodes()
        for a in (0x10008, 0x10004):  # not 16-byte aligned: refused before the driver, whichever path
            try:
                k.launch(a, 0x20000, 0x30000)
            except RuntimeError as e:
                errors.append(str(e))
        print(json.dumps(dict(errors=errors, launches_after_failure=launches_after_failure,
                              encodes=(encodes_before, encodes_after), launches=fake.fake_launches(),
                              params=last_params())))
    """,
    )
    assert "operand a: cuTensorMapEncodeTiled failed" in r["errors"][0], r["errors"]
    assert "operand a: cuTensorMapReplaceAddress failed" in r["errors"][1], r["errors"]
    assert all("operand a: TMA needs a 16-byte aligned buffer" in e for e in r["errors"][2:]), r["errors"]
    assert len(r["errors"]) == 4
    assert r["launches_after_failure"] == 1 and r["launches"] == 2
    assert r["encodes"][1] == r["encodes"][0] + 3  # a, b and d (128 columns: no tail map)
    assert r["params"]["maps"]["a"]["address"] == 0x10010


def test_rows_of_split_lines_get_128_byte_promotion(fake_driver_dir, tmp_path):
    r = run(
        fake_driver_dir,
        tmp_path,
        """
        k = launcher(layout="normal", m=256, n=1552, k=2064, block_m=128, block_n=112, num_stages=4, grid_size=28)
        k.launch(0x10000, 0x20000, 0x30000)
        print(json.dumps(last_params()))
    """,
    )
    # 2064-byte rows of A and B split their 128-byte boxes over two L2 lines; D's 3104-byte rows are loaded by
    # no one (the promotion only matters for loads) and follow the same rule.
    assert r["maps"]["a"]["l2"] == L2_128 and r["maps"]["b"]["l2"] == L2_128
    assert r["maps"]["d"]["l2"] == L2_128 and r["maps"]["d"]["inner"] == 1552
