"""The persistent tile scheduler (kernels/tile_scheduler.cuh) run on the host: every CTA of a grid walks its tiles
(tests/scheduler_host/harness.cc, the device loads replaced by plain reads), and the union over CTAs must be exactly
the layout's tiles, each once: every (row block, column block) of a normal or contiguous GEMM; every row block of
each masked group's clamped rows; the ragged groups' rows in order, then the rows past the total as zero tiles;
every k_grouped group with its own clamped columns. Sizes include empty, negative and oversized groups."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import numpy as np
import pytest

from jax_dgpt.testing import k_grouped_offsets

ROOT = pathlib.Path(__file__).resolve().parents[1]
HOST = ROOT / "tests" / "scheduler_host"
LAYOUTS = {"normal": 0, "contiguous": 1, "masked": 2, "k_grouped": 3, "ragged": 4}
COMPILER = shutil.which("c++") or shutil.which("g++")
pytestmark = pytest.mark.skipif(COMPILER is None, reason="no host C++ compiler")


def run(tmp_path, layout, *, m, n, k, groups, values, grid, block_m=128, block_n=64, bands=2, cluster=1, columns=1):
    """Tiles of every CTA: a list of dicts."""
    for name in ("tile_scheduler.cuh", "kernel_config.cuh", "dgpt_types.cuh"):
        shutil.copy(ROOT / "kernels" / name, tmp_path / name)  # beside the stand-in ptx.cuh
    shutil.copy(HOST / "ptx.cuh", tmp_path / "ptx.cuh")
    exe = tmp_path / f"harness_{layout}"
    defines = dict(
        DGPT_LAYOUT=LAYOUTS[layout],
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        N=n,
        K=k,
        BANDS=bands,
        CLUSTER=cluster,
        COLUMNS=columns,
    )
    cmd = [COMPILER, "-std=c++17", "-O1", f"-I{tmp_path}", *(f"-D{a}={b}" for a, b in defines.items())]
    subprocess.run([*cmd, str(HOST / "harness.cc"), "-o", str(exe)], check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe), str(m), str(groups), str(grid), *map(str, values)], capture_output=True, text=True)
    assert out.returncode == 0, out
    fields = (
        "cta",
        "m_block",
        "n_block",
        "row",
        "row_end",
        "group_a",
        "group_b",
        "compute",
        "k_begin",
        "k_end",
        "exists",
        "peer_only",
    )
    return [dict(zip(fields, map(int, line.split()))) for line in out.stdout.splitlines()]


def real(tiles):
    return [t for t in tiles if t["exists"]]


def assert_once(keys, expected, context):
    assert len(keys) == len(set(keys)), f"{context}: a tile taken twice"
    assert set(keys) == set(expected), (
        f"{context}: missing {sorted(set(expected) - set(keys))[:5]}, extra {sorted(set(keys) - set(expected))[:5]}"
    )


@pytest.mark.parametrize("m, grid", [(1000, 7), (128, 132), (4096, 16)])
def test_normal_and_contiguous_cover_every_tile_once(tmp_path, m, grid):
    n_blocks = -(-200 // 64)
    expected = [(mb, nb) for mb in range(-(-m // 128)) for nb in range(n_blocks)]
    tiles = real(run(tmp_path, "normal", m=m, n=200, k=256, groups=1, values=[], grid=grid))
    assert_once([(t["m_block"], t["n_block"]) for t in tiles], expected, "normal")
    experts = np.repeat(np.arange(-(-m // 128)) % 3, 128)[:m]  # each 128-row block one expert
    experts[5 * 128 % m :: 7] = -1  # padding rows
    tiles = real(run(tmp_path, "contiguous", m=m, n=200, k=256, groups=3, values=list(experts), grid=grid))
    assert_once([(t["m_block"], t["n_block"]) for t in tiles], expected, "contiguous")
    for t in tiles:
        expert = experts[t["row"]]
        assert t["compute"] == (0 <= expert < 3) and (not t["compute"] or t["group_b"] == expert)


@pytest.mark.parametrize(
    "m, n, grid, bands", [(1000, 200, 8, 2), (4096, 7168, 128, 8), (300, 64, 132, 8), (4096, 320, 6, 4)]
)
def test_multicast_pairs_cover_every_tile_once(tmp_path, m, n, grid, bands):
    """multicast_a: the two CTAs of a cluster take the two columns of a pair in one row block, in step; a pair's
    column past N is peer-only on its CTA, and every real tile is taken once."""
    n_blocks = -(-n // 64)
    tiles = run(tmp_path, "normal", m=m, n=n, k=256, groups=1, values=[], grid=grid, bands=bands, cluster=2, columns=2)
    owned = [t for t in tiles if not t["peer_only"]]
    expected = [(mb, nb) for mb in range(-(-m // 128)) for nb in range(n_blocks)]
    assert_once([(t["m_block"], t["n_block"]) for t in owned], expected, "multicast pairs")
    assert all(t["n_block"] >= n_blocks for t in tiles if t["peer_only"])
    by_cta = {c: [t for t in tiles if t["cta"] == c] for c in range(grid)}
    for c in range(0, grid, 2):
        first, second = by_cta[c], by_cta[c + 1]
        assert len(first) == len(second), "the CTAs of a pair walk the same number of tiles"
        for a, b in zip(first, second):
            assert (a["m_block"], a["n_block"] % 2, b["n_block"], a["peer_only"]) == (
                b["m_block"],
                0,
                a["n_block"] + 1,
                0,
            )


MASKED = {"mixed": [300, 0, 1, 129, -4, 5000], "all empty": [0, 0], "one group": [640]}


@pytest.mark.parametrize("name", sorted(MASKED))
@pytest.mark.parametrize("grid, cluster", [(5, 1), (132, 1), (8, 2)])
def test_masked_covers_each_groups_rows(tmp_path, name, grid, cluster):
    sizes, mmax = MASKED[name], 1024
    tiles = real(
        run(tmp_path, "masked", m=mmax, n=128, k=256, groups=len(sizes), values=sizes, grid=grid, cluster=cluster)
    )
    expected = [
        (g, mb, nb) for g, s in enumerate(sizes) for mb in range(-(-min(max(s, 0), mmax) // 128)) for nb in range(2)
    ]
    keys = [(t["group_b"], t["m_block"], t["n_block"]) for t in tiles if t["cta"] % cluster == 0]
    assert_once(keys, expected, f"masked {name}")
    assert all(t["compute"] and t["row"] == t["m_block"] * 128 and t["group_a"] == t["group_b"] for t in tiles)
    if cluster > 1:  # the CTAs of a cluster take the same tiles
        by_cta = {c: [(t["group_b"], t["m_block"], t["n_block"]) for t in tiles if t["cta"] == c] for c in range(grid)}
        assert all(by_cta[c] == by_cta[c - c % cluster] for c in range(grid))


RAGGED = {
    "mixed": [300, 0, 1, 129, -4, 200],  # total 630 < M
    "clamped": [700, 700, 700],  # total past M
    "exact": [128, 256, 616],
    "empty": [0, 0, 0],
    "many small": [int(x) for x in np.random.default_rng(0).integers(0, 40, size=64)],
}


@pytest.mark.parametrize("name", sorted(RAGGED))
@pytest.mark.parametrize("grid", [3, 132])
def test_ragged_rows_partition_into_groups(tmp_path, name, grid):
    sizes, m, n_blocks = RAGGED[name], 1000, 3
    tiles = real(run(tmp_path, "ragged", m=m, n=192, k=256, groups=len(sizes), values=sizes, grid=grid))
    starts, ends = k_grouped_offsets(sizes, m)  # the ragged rule: negative sizes count 0, the total clamped to M
    owner = np.full(m, len(sizes))
    for g, (s, e) in enumerate(zip(starts, ends)):
        owner[s:e] = g
    for nb in range(n_blocks):
        covered = np.zeros(m, int)
        for t in (t for t in tiles if t["n_block"] == nb):
            rows = slice(t["row"], min(t["row"] + 128, t["row_end"]))
            covered[rows] += 1
            group = owner[t["row"]]
            assert np.all(owner[rows] == group), f"{name}: a tile spans two groups"
            assert t["compute"] == (group < len(sizes)) and (not t["compute"] or t["group_b"] == group)
        assert np.all(covered == 1), f"{name}: rows covered {sorted(set(covered))} times (column block {nb})"


@pytest.mark.parametrize("sizes", [[300, 0, 129, -2, 5000], [0, 0], [64] * 16])
def test_k_grouped_gives_every_group_its_columns(tmp_path, sizes):
    t_total = 1024
    tiles = real(run(tmp_path, "k_grouped", m=256, n=128, k=t_total, groups=len(sizes), values=sizes, grid=7))
    expected = [(g, mb, nb) for g in range(len(sizes)) for mb in range(2) for nb in range(2)]
    assert_once([(t["group_b"], t["m_block"], t["n_block"]) for t in tiles], expected, "k_grouped")
    starts, ends = k_grouped_offsets(sizes, t_total)
    for t in tiles:
        g = t["group_b"]
        assert (t["k_begin"], t["k_end"]) == (starts[g], ends[g]) and t["compute"] == (ends[g] > starts[g])
