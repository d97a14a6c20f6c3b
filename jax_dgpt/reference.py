"""Reference implementations in jnp: what the CPU lowering runs, and what the kernels must match.

Operands are fp8 of dtype ``float8_e4m3fn`` or ``float8_e5m2``, chosen independently for a and b.
The product of two fp8 values is exact in float32 for every pairing: e4m3 has 4 significant bits and
e5m2 has 3, so a product has at most 8 (the float32 significand has 24), and its exponent (at worst
about 2^-32 to 2^32 for e5m2 x e5m2) stays inside float32's normal range. Casting to float32 and
accumulating in float32 therefore sums the exact products in fp32.

Scales (optional, float32): ``scale_a`` per row of A and ``scale_b`` per row of B (per output column),
shape ``()`` meaning one for the whole tensor. The contract, here and in the kernels: the float32
accumulator ``acc`` becomes ``(acc * scale_a_row) * scale_b_col``, two float32 multiplications
evaluated left to right, then ONE rounding to ``out_dtype`` (bfloat16 by default, or float32). A
missing scale is no multiplication at all (not a multiplication by 1). The weight-gradient
references return float32 ``c + (acc * scale_a_row) * scale_b_col``: the add of ``c`` comes after
the scaling, in float32. Any K and N work here (padded for the kernel or not).

The grouped references cost about what a plain per-expert jnp computation on the valid rows costs:
each expert's weight is converted to float32 once (one ``[N, K]`` temporary at a time, never all of
B), and only the valid rows are multiplied, in chunks of :data:`CHUNK_ROWS` rows and then of
:data:`TAIL_ROWS` rows, so at most ``TAIL_ROWS - 1`` extra rows per expert. The scales are applied
per chunk (``scale_a``'s rows of the chunk, ``scale_b``'s row of the chunk's expert), so they add no
full-size temporary. The loops have data-dependent trip counts (``lax.while_loop``), so one compiled
program serves every routing. :func:`grouped_gemm_ragged` walks each group's rows of A in place
(the groups' bounds from :func:`ragged_bounds`), and :func:`k_grouped_wgrad_gemm` walks each group's
columns the same way (chunks of ``CHUNK_ROWS`` columns, then of ``TAIL_ROWS``); both layouts share one
clamping rule for their group sizes (:func:`ragged_bounds`, alias :func:`k_grouped_bounds`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from .kernel_config import limits

__all__ = [
    "CHUNK_ROWS",
    "TAIL_ROWS",
    "gemm",
    "grouped_gemm_contiguous",
    "grouped_gemm_masked",
    "grouped_gemm_ragged",
    "k_grouped_bounds",
    "k_grouped_wgrad_gemm",
    "ragged_bounds",
    "wgrad_gemm",
]

_HIGHEST = lax.Precision.HIGHEST
# NOTES: rows per dot of the grouped references: full chunks of CHUNK_ROWS, then the remainder in
# chunks of TAIL_ROWS. A dot of 16 rows already streams the whole float32 weight once, as a per-expert
# jnp dot of the same rows would, so smaller tails would save little; larger chunks amortise the
# per-iteration overhead of the loop. k_grouped_wgrad_gemm uses the same sizes for its chunks of K.
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


def _as_f32(scale: jax.Array | None) -> jax.Array | None:
    return None if scale is None else jnp.asarray(scale).astype(jnp.float32)


def _apply_scales(acc: jax.Array, row_scale: jax.Array | None, col_scale: jax.Array | None) -> jax.Array:
    """``(acc * row_scale[:, None]) * col_scale[None, :]`` in float32, left to right.

    acc float32 [rows, N]; row_scale None, () or [rows]; col_scale None, () or [N]. A missing scale is
    no multiplication.
    """
    if row_scale is not None:
        acc = acc * (row_scale if row_scale.ndim == 0 else row_scale[:, None])
    if col_scale is not None:
        acc = acc * (col_scale if col_scale.ndim == 0 else col_scale[None, :])
    return acc


def gemm(
    a: jax.Array,
    b: jax.Array,
    *,
    scale_a: jax.Array | None = None,
    scale_b: jax.Array | None = None,
    out_dtype: jnp.dtype = jnp.bfloat16,
) -> jax.Array:
    """a [M, K], b [N, K] (fp8) -> out_dtype [M, N] = (A . B^T) * scale_a[:, None] * scale_b[None, :].

    scale_a: None, () or [M]; scale_b: None, () or [N] (float32). The product and the scaling are
    float32; the result is rounded once to ``out_dtype`` (bfloat16 or float32).
    """
    acc = _apply_scales(_nt_dot_f32(a, b), _as_f32(scale_a), _as_f32(scale_b))
    return acc.astype(out_dtype)


def wgrad_gemm(
    a: jax.Array,
    b: jax.Array,
    c: jax.Array | None = None,
    *,
    scale_a: jax.Array | None = None,
    scale_b: jax.Array | None = None,
) -> jax.Array:
    """a [M, K], b [N, K] (fp8), c None or float32 [M, N] -> float32 [M, N].

    ``c + (A . B^T) * scale_a[:, None] * scale_b[None, :]``, all in float32, the add of ``c`` after
    the scaling; without ``c`` the scaled product itself (c = zeros). scale_a: None, () or [M];
    scale_b: None, () or [N].
    """
    out = _apply_scales(_nt_dot_f32(a, b), _as_f32(scale_a), _as_f32(scale_b))
    return out if c is None else c.astype(jnp.float32) + out


# NOTES: XLA's CPU backend has no FP8 or bfloat16 gather, slice or dynamic-update-slice: it widens the
# whole operand (all of A, the whole output buffer) to float16 / float32 around each one, which inside
# the loops below is a full-size copy per chunk. So the loops move FP8 values as uint8 and bfloat16
# results as uint16 (bit patterns, reinterpreted for free) and convert only the chunk they work on.
# The bits carry no dtype: the fp8 dtype (e4m3 or e5m2) travels alongside and converts them back.
def _as_bits(x: jax.Array) -> jax.Array:
    """An FP8 array as uint8 or a bfloat16 array as uint16: the same bits."""
    return lax.bitcast_convert_type(x, jnp.uint8 if x.dtype.itemsize == 1 else jnp.uint16)


def _fp8_bits_to_f32(bits: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """uint8 bits of fp8 values of ``dtype`` (float8_e4m3fn or float8_e5m2) -> their float32 values."""
    return lax.bitcast_convert_type(bits, dtype).astype(jnp.float32)


def _store_dtype(out_dtype: jnp.dtype) -> jnp.dtype:
    """What the loops' result buffers hold: the bits of a 16-bit ``out_dtype``, float32 itself."""
    out_dtype = jnp.dtype(out_dtype)
    return out_dtype if out_dtype.itemsize == 4 else jnp.dtype(jnp.uint16)


def _f32_to_stored(x: jax.Array, out_dtype: jnp.dtype) -> jax.Array:
    """float32 -> ``out_dtype`` (one rounding), as bits when ``out_dtype`` is 16-bit."""
    out = x.astype(out_dtype)
    return out if jnp.dtype(out_dtype).itemsize == 4 else lax.bitcast_convert_type(out, jnp.uint16)


def _stored_to_out(x: jax.Array, out_dtype: jnp.dtype) -> jax.Array:
    return x if x.dtype == jnp.dtype(out_dtype) else lax.bitcast_convert_type(x, out_dtype)


def _zeros_varying_like(shape: tuple[int, ...], dtype: jnp.dtype, *operands: jax.Array | None) -> jax.Array:
    """Zeros of ``shape`` that vary over every mesh axis any operand varies over (under shard_map).

    NOTES: a loop's carry must keep its type, including the set of manual mesh axes it varies over
    (``check_vma``). The loop bodies below mix in every operand, so the initial carry must already
    vary like all of them; ``zeros_like`` of each operand (a scalar) carries that operand's axes and
    their sum carries the union. Outside shard_map this is just a broadcast zero. ``None`` operands
    (absent scales) are skipped.
    """
    zeros = [jnp.zeros_like(x, dtype=dtype, shape=()) for x in operands if x is not None]
    scalar = functools.reduce(lambda x, y: x + y, zeros)
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
    ``store`` gets float32 ``[rows, N]`` (unscaled: the sink scales); ``buffer`` is whatever the sink
    keeps.
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


def _expert_col_scale(scale_b: jax.Array | None, g: jax.Array) -> jax.Array | None:
    """Expert g's column scale from a grouped op's scale_b of shape (), [G] or [G, N]: (), () or [N]."""
    if scale_b is None or scale_b.ndim == 0:
        return scale_b
    return lax.dynamic_index_in_dim(scale_b, g, axis=0, keepdims=False)


def grouped_gemm_contiguous(
    a: jax.Array,
    b: jax.Array,
    m_indices: jax.Array,
    *,
    scale_a: jax.Array | None = None,
    scale_b: jax.Array | None = None,
    out_dtype: jnp.dtype = jnp.bfloat16,
) -> jax.Array:
    """a [M, K], b [G, N, K] (fp8), m_indices int32 [M] -> out_dtype [M, N].

    Row i is ``(a[i] . b[e]^T) * scale_a[i] * scale_b[e]`` with ``e = m_indices[i]`` when its index
    is in ``[0, G)`` and equals the index of the first row of its 128-row block (the kernel takes a
    block's expert from that row); every other row is exactly zero (whatever the scales hold). With a
    layout that follows the rules (experts start at multiples of 128) the second condition always
    holds. scale_a: None, () or [M] (per row of a); scale_b: None, () , [G] (per expert) or [G, N]
    (per expert and output column); float32. ``out_dtype``: bfloat16 or float32.

    The valid rows are sorted by expert (a stable argsort of M indices) and multiplied per expert;
    the results go back to their rows with one gather. Temporaries: one expert's float32 weight, a
    chunk of rows, a uint8 copy of A and two ``[M, N]`` buffers of bfloat16 bits (of float32 for a
    float32 output).
    """
    m, n, num_groups = a.shape[0], b.shape[1], b.shape[0]
    scale_a, scale_b = _as_f32(scale_a), _as_f32(scale_b)
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
        return _fp8_bits_to_f32(a_bits[lax.dynamic_slice_in_dim(order, row, size)], a.dtype)

    def store(buffer, g, row, count, out):
        del count  # rows past an expert's end are overwritten by the next expert or dropped below
        row_scale = scale_a
        if scale_a is not None and scale_a.ndim == 1:
            row_scale = scale_a[lax.dynamic_slice_in_dim(order, row, out.shape[0])]
        out = _apply_scales(out, row_scale, _expert_col_scale(scale_b, g))
        return lax.dynamic_update_slice_in_dim(buffer, _f32_to_stored(out, out_dtype), row, axis=0)

    stored = _store_dtype(out_dtype)
    buffer = _zeros_varying_like((m + CHUNK_ROWS, n), stored, a, b, m_indices, scale_a, scale_b)
    buffer = _expert_rows(b, counts, starts, rows_of, store, buffer)
    # Back to row order: sorted position of each row; rows past the valid ones are zero.
    position = jnp.zeros((m,), jnp.int32).at[order[:m]].set(jnp.arange(m, dtype=jnp.int32))
    out = jnp.where(valid[:, None], buffer[position], jnp.zeros((), stored))
    return _stored_to_out(out, out_dtype)


def grouped_gemm_masked(
    a: jax.Array,
    b: jax.Array,
    masked_m: jax.Array,
    *,
    scale_a: jax.Array | None = None,
    scale_b: jax.Array | None = None,
    out_dtype: jnp.dtype = jnp.bfloat16,
) -> jax.Array:
    """a [G, Mmax, K], b [G, N, K] (fp8), masked_m int32 [G] -> out_dtype [G, Mmax, N].

    Rows ``r < clamp(masked_m[g], 0, Mmax)`` of group g are ``(a[g, r] . b[g]^T) * scale_a[g, r] *
    scale_b[g]``; the other rows are exactly zero (the GPU kernel leaves them unspecified: do not
    rely on their values). scale_a: None, () or [G, Mmax]; scale_b: None, (), [G] or [G, N];
    float32. ``out_dtype``: bfloat16 or float32. Only the valid rows are multiplied.
    """
    num_groups, m_max, _ = a.shape
    n = b.shape[1]
    scale_a, scale_b = _as_f32(scale_a), _as_f32(scale_b)
    counts = jnp.clip(masked_m, 0, m_max).astype(jnp.int32)
    # Rows of group g are numbered from 0; padded as the contiguous layout's sorted rows are.
    padded = jnp.pad(_as_bits(a), ((0, 0), (0, CHUNK_ROWS), (0, 0)))
    if scale_a is not None and scale_a.ndim == 2:
        scale_a = jnp.pad(scale_a, ((0, 0), (0, CHUNK_ROWS)))  # a chunk's rows past Mmax are dropped

    def rows_of(g, row, size):
        rows = lax.dynamic_slice(padded, (g, row, jnp.zeros_like(row)), (1, size, padded.shape[2]))
        return _fp8_bits_to_f32(rows[0], a.dtype)

    def store(buffer, g, row, count, out):
        row_scale = scale_a
        if scale_a is not None and scale_a.ndim == 2:
            row_scale = lax.dynamic_slice(scale_a, (g, row), (1, out.shape[0]))[0]
        out = _apply_scales(out, row_scale, _expert_col_scale(scale_b, g))
        keep = jnp.arange(out.shape[0]) < count  # rows past masked_m stay zero
        out = _f32_to_stored(jnp.where(keep[:, None], out, 0.0), out_dtype)
        return lax.dynamic_update_slice(buffer, out[None], (g, row, jnp.zeros_like(row)))

    stored = _store_dtype(out_dtype)
    buffer = _zeros_varying_like((num_groups, m_max + CHUNK_ROWS, n), stored, a, b, masked_m, scale_a, scale_b)
    buffer = _expert_rows(b, counts, jnp.zeros_like(counts), rows_of, store, buffer)
    return _stored_to_out(buffer[:, :m_max], out_dtype)


def ragged_bounds(group_sizes: jax.Array, total: int) -> tuple[jax.Array, jax.Array]:
    """(starts, ends) int32 [G] of groups laid end to end over ``total`` rows (ragged) or columns (k-grouped).

    The one rule of both layouts: a negative size counts as 0, each group starts where the previous one
    ends (the first at 0), and the running end is clamped to ``total`` (a group reaching past it loses
    its part past ``total``; a group starting at or past it is empty). ``ends = min(cumsum(max(sizes,
    0)), total)``, ``starts`` = the previous group's end. Works on traced sizes (one program for every
    value); no int32 overflow for ``total < 2**30``, whatever the sizes hold.
    """
    sizes = jnp.clip(jnp.asarray(group_sizes), 0, total).astype(jnp.int32)
    if sizes.shape[0] == 0:
        return sizes, sizes
    # Saturating addition is associative: a running sum clamped to `total` at every step.
    ends = lax.associative_scan(lambda x, y: jnp.minimum(x + y, total), sizes)
    starts = jnp.concatenate([jnp.zeros((1,), jnp.int32), ends[:-1]])
    return starts, ends


# The k-grouped layout's name for the same rule (over the T columns of its operands).
k_grouped_bounds = ragged_bounds


def grouped_gemm_ragged(
    a: jax.Array,
    b: jax.Array,
    group_sizes: jax.Array,
    *,
    scale_a: jax.Array | None = None,
    scale_b: jax.Array | None = None,
    out_dtype: jnp.dtype = jnp.bfloat16,
) -> jax.Array:
    """a [M, K], b [G, N, K] (fp8), group_sizes int32 [G] -> out_dtype [M, N].

    Group g owns rows ``[starts[g], ends[g])`` of a (:func:`ragged_bounds` over M: exclusive
    cumulative sum of the sizes, negative sizes count as 0, the running end clamped to M, so a group
    starting at or past M is empty). Row i of group g is ``(a[i] . b[g]^T) * scale_a[i] *
    scale_b[g]``; rows past the last group's end are exactly zero, whatever a and the scales hold
    there (NaN included). scale_a: None, () or [M] (per row of a); scale_b: None, (), [G] (per group)
    or [G, N] (per group and output column); float32. ``out_dtype``: bfloat16 or float32.

    One program serves every ``group_sizes`` (traced). Each group's rows are multiplied in place, in
    chunks of CHUNK_ROWS and then of TAIL_ROWS rows (the last chunk masked to the group's rows):
    about ``(rows in groups + G * TAIL_ROWS) * N * K`` multiply-adds, and no work at all for empty
    groups. Groups are visited in order, so a chunk's masked rows past its group's end are zeros
    that the next group overwrites. Temporaries: one group's float32 weight, a chunk of rows, a uint8
    copy of A and one ``[M + CHUNK_ROWS, N]`` buffer of bfloat16 bits (of float32 for a float32
    output), sliced to ``[M, N]``.
    """
    m, n, num_groups = a.shape[0], b.shape[1], b.shape[0]
    scale_a, scale_b = _as_f32(scale_a), _as_f32(scale_b)
    if m == 0 or num_groups == 0:
        return _zeros_varying_like((m, n), out_dtype, a, b, group_sizes, scale_a, scale_b)
    starts, ends = ragged_bounds(group_sizes, m)
    # NOTES: a chunk starts inside its group (row < M) and has at most CHUNK_ROWS rows: with CHUNK_ROWS
    # rows of padding, no dynamic slice or update runs past the end (which XLA would clamp, shifting it).
    a_bits = jnp.pad(_as_bits(a), ((0, CHUNK_ROWS), (0, 0)))
    if scale_a is not None and scale_a.ndim == 1:
        scale_a = jnp.pad(scale_a, (0, CHUNK_ROWS))  # a chunk's rows past the group are dropped

    def rows_of(g, row, size):
        del g
        return _fp8_bits_to_f32(lax.dynamic_slice_in_dim(a_bits, row, size), a.dtype)

    def store(buffer, g, row, count, out):
        row_scale = scale_a
        if scale_a is not None and scale_a.ndim == 1:
            row_scale = lax.dynamic_slice_in_dim(scale_a, row, out.shape[0])
        out = _apply_scales(out, row_scale, _expert_col_scale(scale_b, g))
        keep = jnp.arange(out.shape[0]) < count  # rows past the group: zero (a later group overwrites)
        out = _f32_to_stored(jnp.where(keep[:, None], out, 0.0), out_dtype)
        return lax.dynamic_update_slice_in_dim(buffer, out, row, axis=0)

    stored = _store_dtype(out_dtype)
    buffer = _zeros_varying_like((m + CHUNK_ROWS, n), stored, a, b, group_sizes, scale_a, scale_b)
    buffer = _expert_rows(b, ends - starts, starts, rows_of, store, buffer)
    return _stored_to_out(buffer[:m], out_dtype)


def k_grouped_wgrad_gemm(
    a: jax.Array,
    b: jax.Array,
    group_sizes: jax.Array,
    c: jax.Array | None = None,
    *,
    scale_a: jax.Array | None = None,
    scale_b: jax.Array | None = None,
    out_dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """a [M, T], b [N, T] (fp8), group_sizes int32 [G], c None or float32 [G, M, N] -> [G, M, N] in out_dtype
    (float32, or bfloat16 without c: the float32 result rounded once).

    Group g contracts over columns ``[starts[g], ends[g])`` of a and b (:func:`ragged_bounds` over T:
    exclusive cumulative sum of the sizes, negative sizes count as 0, ends clamped to T; columns past
    the total are ignored): ``out[g] = c[g] + (A_g . B_g^T) * scale_a_g[:, None] * scale_b_g[None, :]``
    in float32, the add after the scaling. An empty group gives ``c[g]`` (zeros without c). scale_a:
    None, (), [M] or [G, M] (per group and row of a); scale_b: None, (), [N] or [G, N].

    One program serves every ``group_sizes`` (traced; loops with data-dependent trip counts). Each
    group's columns are walked in chunks of CHUNK_ROWS columns, then of TAIL_ROWS (the last chunk of
    each size is masked to the group's columns, in both operands so that values outside the group,
    NaN included, never reach the product). Cost: about ``(T + G * TAIL_ROWS) * M * N``
    multiply-adds (the columns of non-empty groups, plus at most ``TAIL_ROWS - 1`` wasted columns
    per group), not ``G * T * M * N``. Temporaries: uint8 copies of a and b padded by CHUNK_ROWS
    columns, one chunk of each in float32 (``[M, CHUNK_ROWS]``, ``[N, CHUNK_ROWS]``), one group's
    float32 ``[M, N]`` accumulator and the ``[G, M, N]`` result.
    """
    m, total = a.shape
    n = b.shape[0]
    num_groups = group_sizes.shape[0]
    scale_a, scale_b = _as_f32(scale_a), _as_f32(scale_b)
    starts, ends = ragged_bounds(group_sizes, total)
    a_bits = jnp.pad(_as_bits(a), ((0, 0), (0, CHUNK_ROWS)))
    b_bits = jnp.pad(_as_bits(b), ((0, 0), (0, CHUNK_ROWS)))

    def group_scale(scale, g, per_group_ndim):
        if scale is None or scale.ndim < per_group_ndim:
            return scale
        return lax.dynamic_index_in_dim(scale, g, axis=0, keepdims=False)

    def one_group(g, out):
        start, end = starts[g], ends[g]

        def compute(out):
            def chunks(size: int, first: jax.Array, stop: jax.Array, acc: jax.Array) -> jax.Array:
                def one_chunk(i, acc):
                    col = first + i * size
                    keep = (col + jnp.arange(size)) < stop
                    zero = jnp.zeros_like(col)
                    a_chunk = _fp8_bits_to_f32(lax.dynamic_slice(a_bits, (zero, col), (m, size)), a.dtype)
                    b_chunk = _fp8_bits_to_f32(lax.dynamic_slice(b_bits, (zero, col), (n, size)), b.dtype)
                    a_chunk = jnp.where(keep[None, :], a_chunk, 0.0)
                    b_chunk = jnp.where(keep[None, :], b_chunk, 0.0)
                    return acc + jnp.dot(a_chunk, b_chunk.T, precision=_HIGHEST, preferred_element_type=jnp.float32)

                return lax.fori_loop(0, (stop - first + size - 1) // size, one_chunk, acc)

            full = start + (end - start) // CHUNK_ROWS * CHUNK_ROWS
            acc = _zeros_varying_like((m, n), jnp.float32, a, b, group_sizes)
            acc = chunks(CHUNK_ROWS, start, full, acc)
            acc = chunks(TAIL_ROWS, full, end, acc)
            acc = _apply_scales(acc, group_scale(scale_a, g, 2), group_scale(scale_b, g, 2))
            result = acc if c is None else lax.dynamic_index_in_dim(out, g, axis=0, keepdims=False) + acc
            return lax.dynamic_update_index_in_dim(out, result, g, axis=0)

        return lax.cond(end > start, compute, lambda out: out, out)

    out = _zeros_varying_like((num_groups, m, n), jnp.float32, a, b, group_sizes, c, scale_a, scale_b)
    if c is not None:
        out = c.astype(jnp.float32) + out
    if num_groups == 0:
        return out.astype(out_dtype)  # nothing to index: the loop body could not even be traced
    return lax.fori_loop(0, num_groups, one_group, out).astype(out_dtype)
