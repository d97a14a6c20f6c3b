"""Reference implementations in jnp: what the CPU lowering runs, and what the kernels must match.

Products of two fp8 (e4m3) values are exact in float32 (at most 8 significant bits in total), so
casting to float32 and accumulating in float32 gives the exact products summed in fp32, rounded once
to bfloat16. Any K and N work here (padded for the kernel or not).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["gemm", "grouped_gemm_contiguous", "grouped_gemm_masked"]

_HIGHEST = lax.Precision.HIGHEST
# Rows of the contiguous layout's alignment: the kernel reads one expert per block of this many rows.
CONTIGUOUS_BLOCK_ROWS = 128


def _nt_dot_f32(a: jax.Array, b: jax.Array) -> jax.Array:
    """[M, K] x [N, K] -> float32 [M, N] from the exact fp8 values."""
    return jnp.dot(
        a.astype(jnp.float32),
        b.astype(jnp.float32).T,
        precision=_HIGHEST,
        preferred_element_type=jnp.float32,
    )


def gemm(a: jax.Array, b: jax.Array) -> jax.Array:
    """a [M, K], b [N, K] -> bfloat16 [M, N] = A . B^T."""
    return _nt_dot_f32(a, b).astype(jnp.bfloat16)


def grouped_gemm_contiguous(a: jax.Array, b: jax.Array, m_indices: jax.Array) -> jax.Array:
    """a [M, K], b [G, N, K], m_indices int32 [M] -> bfloat16 [M, N].

    Row i is ``a[i] . b[m_indices[i]]^T`` when its index is in ``[0, G)`` and equals the index of the
    first row of its 128-row block (the kernel takes a block's expert from that row); every other row
    is exactly zero. With a layout that follows the rules (experts start at multiples of 128) the
    second condition always holds. One full product per expert (a loop, not a gather of b per row,
    to keep memory at O(M N)).
    """
    m, n, num_groups = a.shape[0], b.shape[1], b.shape[0]
    block_first = m_indices[(jnp.arange(m) // CONTIGUOUS_BLOCK_ROWS) * CONTIGUOUS_BLOCK_ROWS]
    expert = jnp.where(m_indices == block_first, m_indices, -1)

    def body(g, out):
        rows = _nt_dot_f32(a, lax.dynamic_index_in_dim(b, g, axis=0, keepdims=False))
        return jnp.where((expert == g)[:, None], rows, out)

    out = lax.fori_loop(0, num_groups, body, jnp.zeros((m, n), jnp.float32))
    return out.astype(jnp.bfloat16)


def grouped_gemm_masked(a: jax.Array, b: jax.Array, masked_m: jax.Array) -> jax.Array:
    """a [G, Mmax, K], b [G, N, K] -> bfloat16 [G, Mmax, N].

    Every row is computed, also rows at or past ``masked_m[g]`` (the GPU kernel leaves those
    unspecified); ``masked_m`` is taken to match the primitive's signature and is not read.
    """
    del masked_m
    out = jnp.einsum(
        "gmk,gnk->gmn",
        a.astype(jnp.float32),
        b.astype(jnp.float32),
        precision=_HIGHEST,
        preferred_element_type=jnp.float32,
    )
    return out.astype(jnp.bfloat16)
