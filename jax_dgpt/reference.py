"""Reference implementations in jnp: what the CPU lowering runs, and what the kernels must match.

Products of two fp8 (e4m3) values are exact in float32 (at most 8 significant bits in total), so
casting to float32 and accumulating in float32 gives the exact products summed in fp32, rounded once
to bfloat16. Any K and N work here (padded for the kernel or not).

The grouped references cost about what a plain per-expert jnp computation on the valid rows costs:
each expert's weight is converted to float32 once (one ``[N, K]`` temporary at a time, never all of
B), and only the valid rows are multiplied, in chunks of :data:`CHUNK_ROWS` rows and then of
:data:`TAIL_ROWS` rows, so at most ``TAIL_ROWS - 1`` extra rows per expert. The loops have data-
dependent trip counts (``lax.while_loop``), so one compiled program serves every routing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from .kernel_config import limits

__all__ = ["CHUNK_ROWS", "TAIL_ROWS", "gemm", "grouped_gemm_contiguous", "grouped_gemm_masked"]

_HIGHEST = lax.Precision.HIGHEST
# NOTES: rows per dot of the grouped references: full chunks of CHUNK_ROWS, then the remainder in
# chunks of TAIL_ROWS. A dot of 16 rows already streams the whole float32 weight once, as a per-expert
# jnp dot of the same rows would, so smaller tails would save little; larger chunks amortise the
# per-iteration overhead of the loop.
CHUNK_ROWS = 128
TAIL_ROWS = 16

# One chunk's rows: (expert, first row, static row count) -> float32 [rows, K].
RowSource = Callable[[jax.Array, jax.Array, int], jax.Array]
# Stores one chunk's result: (buffer, expert, first row, valid-row count, float32 [rows, N]) -> buffer.
RowSink = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


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


# NOTES: XLA's CPU backend has no FP8 or bfloat16 gather, slice or dynamic-update-slice: it widens the
# whole operand (all of A, the whole output buffer) to float16 / float32 around each one, which inside
# the loops below is a full-size copy per chunk. So the loops move FP8 values as uint8 and bfloat16
# results as uint16 (bit patterns, reinterpreted for free) and convert only the chunk they work on.
def _as_bits(x: jax.Array) -> jax.Array:
    """An FP8 array as uint8 or a bfloat16 array as uint16: the same bits."""
    return lax.bitcast_convert_type(x, jnp.uint8 if x.dtype.itemsize == 1 else jnp.uint16)


def _fp8_bits_to_f32(bits: jax.Array) -> jax.Array:
    return lax.bitcast_convert_type(bits, jnp.float8_e4m3fn).astype(jnp.float32)


def _f32_to_bf16_bits(x: jax.Array) -> jax.Array:
    return lax.bitcast_convert_type(x.astype(jnp.bfloat16), jnp.uint16)


def _zeros_varying_like(shape: tuple[int, ...], dtype: jnp.dtype, *operands: jax.Array) -> jax.Array:
    """Zeros of ``shape`` that vary over every mesh axis any operand varies over (under shard_map).

    NOTES: a loop's carry must keep its type, including the set of manual mesh axes it varies over
    (``check_vma``). The loop bodies below mix in every operand, so the initial carry must already
    vary like all of them; ``zeros_like`` of each operand (a scalar) carries that operand's axes and
    their sum carries the union. Outside shard_map this is just a broadcast zero.
    """
    scalar = functools.reduce(lambda x, y: x + y, [jnp.zeros_like(x, dtype=dtype, shape=()) for x in operands])
    return jnp.broadcast_to(scalar, shape)


def _expert_rows(
    b: jax.Array,
    counts: jax.Array,
    starts: jax.Array,
    rows_of: RowSource,
    store: RowSink,
    buffer: jax.Array,
) -> jax.Array:
    """For each expert g with ``counts[g] > 0``: ``store(rows_of(g, r, n) . b[g]^T)`` over its rows.

    Expert g's rows are ``starts[g] + [0, counts[g])`` in the numbering of ``rows_of`` and ``store``;
    they are visited in chunks of CHUNK_ROWS, then of TAIL_ROWS (the last chunk may run past the
    expert's rows: ``store`` gets the number of valid rows and must not keep the others). Experts
    with no rows convert nothing and multiply nothing. ``rows_of`` returns float32 ``[rows, K]``;
    ``store`` gets float32 ``[rows, N]``; ``buffer`` is whatever the sink keeps.
    """
    num_groups = b.shape[0]

    def one_expert(g, buffer):
        count, start = counts[g], starts[g]

        def compute(buffer):
            weight = lax.dynamic_index_in_dim(b, g, axis=0, keepdims=False).astype(jnp.float32)  # [N, K]

            def chunks(size: int, first: jax.Array, stop: jax.Array, buffer: jax.Array) -> jax.Array:
                def one_chunk(i, buffer):
                    row = first + i * size
                    out = jnp.dot(
                        rows_of(g, start + row, size),
                        weight.T,
                        precision=_HIGHEST,
                        preferred_element_type=jnp.float32,
                    )
                    return store(buffer, g, start + row, jnp.minimum(stop - row, size), out)

                return lax.fori_loop(0, (stop - first + size - 1) // size, one_chunk, buffer)

            full = count // CHUNK_ROWS * CHUNK_ROWS
            buffer = chunks(CHUNK_ROWS, jnp.zeros_like(full), full, buffer)
            return chunks(TAIL_ROWS, full, count, buffer)

        return lax.cond(count > 0, compute, lambda buffer: buffer, buffer)

    return lax.fori_loop(0, num_groups, one_expert, buffer)


def grouped_gemm_contiguous(a: jax.Array, b: jax.Array, m_indices: jax.Array) -> jax.Array:
    """a [M, K], b [G, N, K], m_indices int32 [M] -> bfloat16 [M, N].

    Row i is ``a[i] . b[m_indices[i]]^T`` when its index is in ``[0, G)`` and equals the index of the
    first row of its 128-row block (the kernel takes a block's expert from that row); every other row
    is exactly zero. With a layout that follows the rules (experts start at multiples of 128) the
    second condition always holds.

    The valid rows are sorted by expert (a stable argsort of M indices) and multiplied per expert;
    the results go back to their rows with one gather. Temporaries: one expert's float32 weight, a
    chunk of rows, a uint8 copy of A and two ``[M, N]`` buffers of bfloat16 bits.
    """
    m, n, num_groups = a.shape[0], b.shape[1], b.shape[0]
    # The kernel reads one expert per block of the contiguous layout's alignment (kernels/kernel_config.cuh).
    block = limits()["m_alignment_contiguous"]
    block_first = m_indices[(jnp.arange(m) // block) * block]
    valid = (m_indices == block_first) & (m_indices >= 0) & (m_indices < num_groups)
    expert = jnp.where(valid, m_indices, num_groups)  # invalid rows sort last
    order = jnp.argsort(expert, stable=True).astype(jnp.int32)
    counts = jnp.zeros((num_groups + 1,), jnp.int32).at[expert].add(1)[:num_groups]
    starts = jnp.cumsum(counts) - counts
    # NOTES: a tail chunk runs up to TAIL_ROWS - 1 rows past an expert's last row, and a full chunk's
    # static size must fit even when M < CHUNK_ROWS: the sorted order and the buffer get CHUNK_ROWS
    # extra rows (pointing at row 0; their results are overwritten by the next expert or dropped).
    order = jnp.concatenate([order, jnp.zeros((CHUNK_ROWS,), jnp.int32)])
    a_bits = _as_bits(a)

    def rows_of(g, row, size):
        del g
        return _fp8_bits_to_f32(a_bits[lax.dynamic_slice_in_dim(order, row, size)])

    def store(buffer, g, row, count, out):
        del g, count  # rows past an expert's end are overwritten by the next expert or dropped below
        return lax.dynamic_update_slice_in_dim(buffer, _f32_to_bf16_bits(out), row, axis=0)

    buffer = _zeros_varying_like((m + CHUNK_ROWS, n), jnp.uint16, a, b, m_indices)
    buffer = _expert_rows(b, counts, starts, rows_of, store, buffer)
    # Back to row order: sorted position of each row; rows past the valid ones are zero.
    position = jnp.zeros((m,), jnp.int32).at[order[:m]].set(jnp.arange(m, dtype=jnp.int32))
    out = jnp.where(valid[:, None], buffer[position], jnp.zeros((), jnp.uint16))
    return lax.bitcast_convert_type(out, jnp.bfloat16)


def grouped_gemm_masked(a: jax.Array, b: jax.Array, masked_m: jax.Array) -> jax.Array:
    """a [G, Mmax, K], b [G, N, K], masked_m int32 [G] -> bfloat16 [G, Mmax, N].

    Rows ``r < clamp(masked_m[g], 0, Mmax)`` of group g are ``a[g, r] . b[g]^T``; the other rows are
    exactly zero (the GPU kernel leaves them unspecified: do not rely on their values). Only the
    valid rows are multiplied.
    """
    num_groups, m_max, _ = a.shape
    n = b.shape[1]
    counts = jnp.clip(masked_m, 0, m_max).astype(jnp.int32)
    # Rows of group g are numbered from 0; padded as the contiguous layout's sorted rows are.
    padded = jnp.pad(_as_bits(a), ((0, 0), (0, CHUNK_ROWS), (0, 0)))

    def rows_of(g, row, size):
        rows = lax.dynamic_slice(padded, (g, row, jnp.zeros_like(row)), (1, size, padded.shape[2]))
        return _fp8_bits_to_f32(rows[0])

    def store(buffer, g, row, count, out):
        keep = jnp.arange(out.shape[0]) < count  # rows past masked_m stay zero
        out = _f32_to_bf16_bits(jnp.where(keep[:, None], out, 0.0))
        return lax.dynamic_update_slice(buffer, out[None], (g, row, jnp.zeros_like(row)))

    buffer = _zeros_varying_like((num_groups, m_max + CHUNK_ROWS, n), jnp.uint16, a, b, masked_m)
    buffer = _expert_rows(b, counts, jnp.zeros_like(counts), rows_of, store, buffer)
    return lax.bitcast_convert_type(buffer[:, :m_max], jnp.bfloat16)
