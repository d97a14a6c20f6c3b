"""Every jax_dgpt op under ``jax.shard_map``: each device runs the op on its own shard.

Runs in a fresh process with 4 host CPU devices (the device count is fixed when the backend starts),
with ``check_vma`` on (shard_map's default), on an Auto and an Explicit mesh, splitting rows (tokens)
and experts. Each case checks the result against float64 on the CPU reference, and that the program
lowered for CUDA calls the op's FFI target once, on the local shard's shapes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

DEVICES = 4

SCRIPT = r"""
import re, sys
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import jax_dgpt
from jax_dgpt._native import TARGETS
from jax_dgpt.testing import generate_contiguous_indices, generate_fp8

D = jax.device_count()
assert D == DEVICES, D
G, N, K = 8, 24, 64  # G splits over the devices; N % 8 and K % 16 hold, so no padding inside the op
f64 = lambda x: np.asarray(x, np.float64)


def check(name, got, want, rows=None):
    got, want = f64(got), f64(want)
    if rows is not None:
        got, want = got[rows], want[rows]
    if want.size == 0:
        return
    err = np.abs(got - want).max()
    assert err <= 2**-7 * max(np.abs(want).max(), 1e-30), f"{name}: max error {err}"


def run(name, mesh, fn, in_specs, out_specs, args, local_shapes, target):
    placed = [jax.device_put(x, NamedSharding(mesh, s)) for x, s in zip(args, in_specs)]
    f = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs))  # check_vma=True
    out = np.asarray(f(*placed))  # gathered to the host
    text = f.trace(*placed).lower(lowering_platforms=("cuda",)).as_text()
    calls = re.findall(rf"stablehlo\.custom_call @{target}\((.*)", text)
    assert len(calls) == 1, f"{name}: {len(calls)} calls to {target}"
    for shape in local_shapes:
        assert f"tensor<{shape}xf8E4M3FN>" in calls[0], f"{name}: no local operand {shape} in {calls[0][:300]}"
    return out


for axis_type in (AxisType.Auto, AxisType.Explicit):
    mesh = jax.make_mesh((D,), ("x",), axis_types=(axis_type,))
    tag = axis_type.name

    # gemm, rows of A split, B replicated.
    a, b = generate_fp8((64 * D, K), key=1), generate_fp8((N, K), key=2)
    out = run(f"gemm rows {tag}", mesh, jax_dgpt.gemm, (P("x"), P()), P("x"), (a, b),
              [f"64x{K}", f"{N}x{K}"], TARGETS["normal"])
    check(f"gemm rows {tag}", out, f64(a) @ f64(b).T)
    # gemm, columns split: each device holds N / D rows of B.
    b2 = generate_fp8((8 * D, K), key=3)
    out = run(f"gemm columns {tag}", mesh, jax_dgpt.gemm, (P(), P("x")), P(None, "x"), (a, b2),
              [f"{64 * D}x{K}", f"8x{K}"], TARGETS["normal"])
    check(f"gemm columns {tag}", out, f64(a) @ f64(b2).T)

    # contiguous, rows split (tokens data-parallel, every expert on every device): each shard holds
    # whole 128-row blocks of the layout.
    idx = np.concatenate([generate_contiguous_indices([100, 28, 0, 77][d:] + [5] * d, 128)[:256] for d in range(D)])
    idx = np.where(idx >= G, -1, idx).astype(np.int32)
    a = generate_fp8((256 * D, K), key=4)
    bg = generate_fp8((G, N, K), key=5)
    out = run(f"contiguous rows {tag}", mesh, jax_dgpt.grouped_gemm_contiguous, (P("x"), P(), P("x")), P("x"),
              (a, bg, jnp.asarray(idx)), [f"256x{K}", f"{G}x{N}x{K}"], TARGETS["contiguous"])
    want = np.stack([f64(a)[i] @ f64(bg)[e].T if e >= 0 else np.zeros(N) for i, e in enumerate(idx)])
    check(f"contiguous rows {tag}", out, want)
    assert not np.any(f64(out)[idx < 0]), "padding rows must be zero"

    # contiguous, experts split (expert parallel): device d holds experts [d G/D, (d+1) G/D) and the
    # rows routed to them, indexed by local expert ids.
    local_g = G // D
    idx = np.concatenate([generate_contiguous_indices([50 + d, 128 - d][:local_g], 128) for d in range(D)])
    a = generate_fp8((idx.shape[0], K), key=6)
    out = run(f"contiguous experts {tag}", mesh, jax_dgpt.grouped_gemm_contiguous, (P("x"), P("x"), P("x")), P("x"),
              (a, bg, jnp.asarray(idx)), [f"{idx.shape[0] // D}x{K}", f"{local_g}x{N}x{K}"], TARGETS["contiguous"])
    rows = idx.shape[0] // D
    want = np.stack([f64(a)[i] @ f64(bg)[(i // rows) * local_g + e].T if e >= 0 else np.zeros(N)
                     for i, e in enumerate(idx)])
    check(f"contiguous experts {tag}", out, want)

    # masked, experts split: the groups (with their masked_m) are spread over the devices.
    am, mmax = generate_fp8((G, 32, K), key=7), 32
    masked_m = jnp.asarray([32, 0, 5, 17, 1, 32, 40, -3], jnp.int32)
    masked = lambda a, b, m: jax_dgpt.grouped_gemm_masked(a, b, m, 16)
    out = run(f"masked experts {tag}", mesh, masked, (P("x"), P("x"), P("x")), P("x"), (am, bg, masked_m),
              [f"{local_g}x{mmax}x{K}", f"{local_g}x{N}x{K}"], TARGETS["masked"])
    for g in range(G):
        valid = int(np.clip(masked_m[g], 0, mmax))
        check(f"masked experts {tag} group {g}", out[g], f64(am[g]) @ f64(bg[g]).T, rows=slice(0, valid))

    # masked, rows split: every device holds every expert and Mmax / D rows of each; the valid count
    # of a shard comes from the replicated masked_m and the device's position (a varying value).
    def masked_rows(a, b, m):
        rows = a.shape[1]
        local = jnp.clip(m - lax.axis_index("x") * rows, 0, rows).astype(jnp.int32)
        return jax_dgpt.grouped_gemm_masked(a, b, local, 4)

    out = run(f"masked rows {tag}", mesh, masked_rows, (P(None, "x"), P(), P()), P(None, "x"), (am, bg, masked_m),
              [f"{G}x{mmax // D}x{K}", f"{G}x{N}x{K}"], TARGETS["masked"])
    for g in range(G):
        valid = int(np.clip(masked_m[g], 0, mmax))
        check(f"masked rows {tag} group {g}", out[g], f64(am[g]) @ f64(bg[g]).T, rows=slice(0, valid))
        assert not np.any(f64(out[g])[valid:]), f"masked rows {tag}: rows past masked_m are zeros on the CPU"
    print("OK", tag)
print("SHARD_MAP OK")
""".replace("DEVICES", str(DEVICES))


def run_script(script: str, devices: int = DEVICES, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)


def test_every_op_under_shard_map_with_rows_and_experts_split():
    result = run_script(SCRIPT)
    assert result.returncode == 0 and "SHARD_MAP OK" in result.stdout, result.stdout + result.stderr[-4000:]
    assert "OK Auto" in result.stdout and "OK Explicit" in result.stdout


@pytest.mark.parametrize("op", ["contiguous", "masked"])
def test_grouped_op_inside_a_scan_under_shard_map(op):
    """A loop of the user's own around the op (the MoE layers of a model under lax.scan) with a
    carry derived from a sharded input: the reference's loops must type-check inside it too."""
    script = r"""
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
import jax_dgpt
from jax_dgpt.testing import generate_fp8
mesh = jax.make_mesh((4,), ("x",))
b = generate_fp8((3, 4, 16, 32), key=1)                # 3 layers of 4 experts
if OP == "contiguous":
    a = generate_fp8((512, 32), key=2); extra = jnp.asarray(np.repeat(np.arange(4) % 4, 128).astype(np.int32))
    op = lambda a, b, e: jax_dgpt.grouped_gemm_contiguous(a, b, e)
    specs = (P("x"), P(None, "x"), P("x"))
else:
    a = generate_fp8((4, 8, 32), key=2); extra = jnp.full((4,), 8, jnp.int32)
    op = lambda a, b, e: jax_dgpt.grouped_gemm_masked(a, b, e, 8)
    specs = (P("x"), P(None, "x"), P("x"))
def body(a, b, e):
    def layer(carry, w):
        return carry + op(a, w, e).astype(jnp.float32).sum(), None
    return jax.lax.scan(layer, jnp.zeros((), jnp.float32), b)[0][None]
args = [jax.device_put(x, NamedSharding(mesh, s)) for x, s in zip((a, b, extra), specs)]
out = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=P("x")))(*args)
assert out.shape == (4,) and np.all(np.isfinite(np.asarray(out))), out
print("SCAN OK")
""".replace("OP", repr(op))
    result = run_script(script)
    assert result.returncode == 0 and "SCAN OK" in result.stdout, result.stdout + result.stderr[-4000:]


def test_moe_layer_under_shard_map_with_tokens_split():
    """nn.MoE prefill and decode (the layer the issue found crashing), tokens split over 4 devices and
    the layer's parameters replicated, equal to the unsharded layer on each device's tokens."""
    pytest.importorskip("flax")
    script = r"""
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from jax_dgpt import nn
mesh = jax.make_mesh((4,), ("x",))
moe = nn.MoE(hidden=64, expert_hidden=32, num_experts=8, top_k=2, rngs=nnx.Rngs(0))
graphdef, state = nnx.split(moe)
x = jax.random.normal(jax.random.key(1), (4 * 16, 64), jnp.float32)
prefill = lambda state, x: nnx.merge(graphdef, state)(x)
decode = lambda state, x: nnx.merge(graphdef, state).decode(x, capacity=8)[0]
state_specs = jax.tree.map(lambda _: P(), state)
placed_state = jax.tree.map(lambda v: jax.device_put(v, NamedSharding(mesh, P())), state)
placed_x = jax.device_put(x, NamedSharding(mesh, P("x")))
for name, fn in (("prefill", prefill), ("decode", decode)):
    sharded = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(state_specs, P("x")), out_specs=P("x")))
    got = np.asarray(sharded(placed_state, placed_x))
    want = np.concatenate([np.asarray(jax.jit(fn)(state, x[16 * d : 16 * (d + 1)])) for d in range(4)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=name)
print("MOE OK")
"""
    result = run_script(script)
    assert result.returncode == 0 and "MOE OK" in result.stdout, result.stdout + result.stderr[-4000:]
