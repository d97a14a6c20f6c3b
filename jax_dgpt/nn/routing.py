"""Top-k routing and the two token layouts of the grouped GEMMs, all on the device (no host sync).

An *assignment* is one (token, choice) pair: T tokens with top-k routing make ``A = T * k``
assignments, numbered ``a = t * k + j`` (token-major). Everything here maps assignments to rows of the
GEMM buffers with sorts, cumulative sums and scatters whose sizes are static under ``jax.jit``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "ContiguousLayout",
    "MaskedLayout",
    "RaggedLayout",
    "contiguous_layout",
    "contiguous_rows_bound",
    "expert_ranks",
    "masked_layout",
    "ragged_layout",
    "route",
]


def route(x: jax.Array, kernel: jax.Array, bias: jax.Array, top_k: int) -> tuple[jax.Array, jax.Array]:
    """Softmax top-k router.

    Args:
      x: float ``[T, H]`` tokens.
      kernel: float ``[H, E]`` router weight; bias: float ``[E]``. Computed in float32.
      top_k: static number of experts per token (``1 <= top_k <= E``).

    Returns:
      (weights float32 ``[T, k]``, expert_ids int32 ``[T, k]``), choices in descending probability
      (ties: the lower expert id first). The k weights are the softmax probabilities of the chosen
      experts renormalised to sum to 1 per token (as in Mixtral / DeepSeek-style top-k gating with
      normalisation), so a token's output is a convex combination of its experts' outputs.
    """
    logits = jnp.dot(
        x.astype(jnp.float32),
        kernel.astype(jnp.float32),
        precision=lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )
    probs = jax.nn.softmax(logits + bias.astype(jnp.float32), axis=-1)
    top, expert_ids = lax.top_k(probs, top_k)
    return top / jnp.sum(top, axis=-1, keepdims=True), expert_ids.astype(jnp.int32)


def expert_ranks(expert_ids: jax.Array, num_experts: int) -> tuple[jax.Array, jax.Array]:
    """int32 ``[A]`` expert of each assignment -> (counts int32 ``[E]``, rank int32 ``[A]``).

    ``rank[a]`` is the number of earlier assignments (in assignment order, i.e. token order) routed
    to the same expert: a stable sort by expert, minus the start of each expert's run.
    """
    (num,) = expert_ids.shape
    counts = jnp.zeros((num_experts,), jnp.int32).at[expert_ids].add(1)
    starts = jnp.cumsum(counts) - counts
    order = jnp.argsort(expert_ids, stable=True)
    rank_sorted = jnp.arange(num, dtype=jnp.int32) - starts[expert_ids[order]]
    rank = jnp.zeros((num,), jnp.int32).at[order].set(rank_sorted)
    return counts, rank


def contiguous_rows_bound(num_assignments: int, num_experts: int, alignment: int) -> int:
    """Static row count of the contiguous buffer: ``round_up(A + min(E, A) * (align - 1), align)``.

    NOTES: every non-empty expert is padded by at most ``align - 1`` rows and at most ``min(E, A)``
    experts are non-empty, so the padded total never exceeds this bound whatever the routing; the
    actual total is only known on the device, and a static size keeps one compiled program. The
    cost: up to ``min(E, A) * (align - 1)`` extra rows (E=64, align=128, A=32768: 8128 rows, +25%)
    in the dispatch buffer, the GEMM outputs and the SwiGLU; the kernel skips the MMA of tiles that
    are all padding and only writes their zeros.
    """
    rows = num_assignments + min(num_experts, num_assignments) * (alignment - 1)
    return -(-rows // alignment) * alignment


class RaggedLayout(NamedTuple):
    """Where each assignment sits among the expert-sorted rows (the ragged layout: no padding).

    rows: int32 ``[A]`` row of each assignment in the ``[A, ...]`` buffer (a permutation of ``[0, A)``).
    row_token: int32 ``[A]`` token of each row.
    group_sizes: int32 ``[E]`` rows (assignments) per expert; expert e's rows follow expert e-1's.
    row_assignment: int32 ``[A]`` assignment of each row, the inverse permutation of ``rows``
      (``row_token = row_assignment // k``).
    """

    rows: jax.Array
    row_token: jax.Array
    group_sizes: jax.Array
    row_assignment: jax.Array


def ragged_layout(expert_ids: jax.Array, num_experts: int) -> RaggedLayout:
    """Assignments (int32 ``[T, k]`` expert ids) -> the ragged layout: experts in id order, each expert's
    assignments in token order, ``A = T*k`` rows in all (static)."""
    _, top_k = expert_ids.shape
    flat = expert_ids.reshape(-1)
    counts, rank = expert_ranks(flat, num_experts)
    rows = (jnp.cumsum(counts) - counts)[flat] + rank
    assignment = jnp.arange(flat.shape[0], dtype=jnp.int32)
    row_assignment = jnp.zeros((flat.shape[0],), jnp.int32).at[rows].set(assignment)
    return RaggedLayout(rows, row_assignment // top_k, counts, row_assignment)


class ContiguousLayout(NamedTuple):
    """Where each assignment sits in the contiguous (prefill) layout.

    rows: int32 ``[A]`` row of each assignment in the ``[M_pad, ...]`` buffer.
    row_token: int32 ``[M_pad]`` token of each row; T for padding rows (a zero row).
    m_indices: int32 ``[M_pad]`` expert of each row; -1 for padding rows.
    counts: int32 ``[E]`` assignments per expert.
    """

    rows: jax.Array
    row_token: jax.Array
    m_indices: jax.Array
    counts: jax.Array


def contiguous_layout(expert_ids: jax.Array, num_experts: int, alignment: int) -> ContiguousLayout:
    """Assignments (int32 ``[T, k]`` expert ids) -> the contiguous layout.

    Experts follow in id order; expert e's rows start at ``sum_{f<e} round_up(count_f, align)``
    and hold its assignments in token order, followed by -1 padding rows up to the alignment.
    ``M_pad`` is :func:`contiguous_rows_bound` (static); rows past the last expert are padding.
    """
    num_tokens, top_k = expert_ids.shape
    flat = expert_ids.reshape(-1)
    m_pad = contiguous_rows_bound(flat.shape[0], num_experts, alignment)
    counts, rank = expert_ranks(flat, num_experts)
    padded = (counts + alignment - 1) // alignment * alignment
    group_start = jnp.cumsum(padded) - padded
    rows = group_start[flat] + rank
    token = jnp.arange(flat.shape[0], dtype=jnp.int32) // top_k
    row_token = jnp.full((m_pad,), num_tokens, jnp.int32).at[rows].set(token)
    m_indices = jnp.full((m_pad,), -1, jnp.int32).at[rows].set(flat)
    return ContiguousLayout(rows, row_token, m_indices, counts)


class MaskedLayout(NamedTuple):
    """Where each assignment sits in the masked (decode) layout ``[E, capacity, ...]``.

    slots: int32 ``[A]`` flat slot ``e * capacity + rank``; ``E * capacity`` for a dropped one.
    slot_token: int32 ``[E * capacity]`` token of each slot; T for empty slots (a zero row).
    masked_m: int32 ``[E]`` valid rows per expert, ``min(count, capacity)``.
    dropped: int32 scalar, assignments beyond capacity (``A - sum(masked_m)``).
    """

    slots: jax.Array
    slot_token: jax.Array
    masked_m: jax.Array
    dropped: jax.Array


def masked_layout(expert_ids: jax.Array, num_experts: int, capacity: int) -> MaskedLayout:
    """Assignments (int32 ``[T, k]`` expert ids) -> the masked layout with a static ``capacity``.

    Each expert keeps its first ``capacity`` assignments in token order; the later ones are
    dropped (they contribute nothing to their token's output, and the other choices of that token
    keep their weights: no renormalisation after dropping).
    """
    num_tokens, top_k = expert_ids.shape
    flat = expert_ids.reshape(-1)
    counts, rank = expert_ranks(flat, num_experts)
    num_slots = num_experts * capacity
    slots = jnp.where(rank < capacity, flat * capacity + rank, num_slots)
    token = jnp.arange(flat.shape[0], dtype=jnp.int32) // top_k
    # NOTES: the dropped assignments' slot is out of bounds: mode="drop" skips their writes.
    slot_token = jnp.full((num_slots,), num_tokens, jnp.int32).at[slots].set(token, mode="drop")
    masked_m = jnp.minimum(counts, capacity)
    dropped = jnp.int32(flat.shape[0]) - jnp.sum(masked_m)
    return MaskedLayout(slots, slot_token, masked_m, dropped)
