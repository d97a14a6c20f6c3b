"""The ops under XLA command buffers (CUDA graphs) forced on and turned off, each in a fresh process
because XLA reads its flags once. Replays of one compiled function with new device data (masked_m,
m_indices, inputs) must give fresh, correct results."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gpu

SCRIPT = pathlib.Path(__file__).with_name("gpu_replay_check.py")
FLAGS = {
    "forced_on": "--xla_gpu_graph_min_graph_size=1 --xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUSTOM_CALL",
    "off": "--xla_gpu_enable_command_buffer=",
}


@pytest.mark.parametrize("mode", sorted(FLAGS))
def test_replay_with_fresh_device_data(mode):
    env = dict(os.environ, XLA_FLAGS=FLAGS[mode])
    result = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"mode {mode}:\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    assert "REPLAY OK" in result.stdout, result.stdout
