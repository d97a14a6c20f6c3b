"""Docs that run: every ```python block of README.md, executed as written on the CPU.

Each block runs on its own in a fresh interpreter (so each must be self-contained) with 4 host CPU
devices (the "Several GPUs" blocks need a mesh of several devices; the others do not mind).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
DEVICES = 4


def python_blocks(text: str) -> list[tuple[str, str]]:
    """(id, code) of every ```python block, the id naming the section it is in and its line."""
    blocks, heading = [], "top"
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = re.sub(r"[^a-z0-9]+", "-", line.lstrip("#").strip().lower()).strip("-")
        if line.strip() == "```python":
            start = i + 1
            end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
            blocks.append((f"{heading}-line{start + 1}", "\n".join(lines[start:end]) + "\n"))
            i = end
        i += 1
    return blocks


BLOCKS = python_blocks(README.read_text())


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 6, [name for name, _ in BLOCKS]


@pytest.mark.parametrize("name, code", BLOCKS, ids=[name for name, _ in BLOCKS])
def test_readme_block_runs(name, code):
    if re.search(r"^\s*(from flax|import flax)|jax_dgpt import nn", code, re.M):
        pytest.importorskip("flax")
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600, cwd=README.parent
    )
    assert result.returncode == 0, f"README block {name} failed:\n{code}\n--- stderr ---\n{result.stderr[-4000:]}"
