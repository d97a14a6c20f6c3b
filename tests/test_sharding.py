"""jax_dgpt ops under shard_map: each device runs the kernel on its own shard (checked on two host CPU
devices in a fresh process, since the device count is fixed when the backend starts)."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = r"""
import re
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
import jax_dgpt

mesh = jax.make_mesh((2,), ("x",))
rng = np.random.default_rng(0)
a = jnp.asarray(rng.standard_normal((128, 64)).astype(jnp.float8_e4m3fn))
b = jnp.asarray(rng.standard_normal((32, 64)).astype(jnp.float8_e4m3fn))
a = jax.device_put(a, NamedSharding(mesh, P("x")))
b = jax.device_put(b, NamedSharding(mesh, P()))
f = jax.jit(jax.shard_map(jax_dgpt.gemm, mesh=mesh, in_specs=(P("x"), P()), out_specs=P("x")))
out = np.asarray(f(a, b), np.float64)
ref = np.asarray(a, np.float64) @ np.asarray(b, np.float64).T
assert np.abs(out - ref).max() <= 2**-7 * np.abs(ref).max(), np.abs(out - ref).max()
text = f.trace(a, b).lower(lowering_platforms=("cuda",)).as_text()
assert text.count("stablehlo.custom_call @dgpt_gemm") == 1, text
assert re.findall(r"\bm = (\d+) : i64", text) == ["64"], re.findall(r"\bm = (\d+) : i64", text)
print("SHARD_MAP OK")
"""


def test_shard_map_runs_one_kernel_per_shard():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "SHARD_MAP OK" in result.stdout, result.stderr[-3000:]
