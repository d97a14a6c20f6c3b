"""jax_dgpt.training: differentiable FP8 ops (forward, dgrad and wgrad GEMMs in FP8) and their scaling recipes.

    import jax, jax_dgpt
    y = jax_dgpt.fp8_matmul(x, w)                       # x [..., K], w [N, K], bf16/f32 -> [..., N]
    dx, dw = jax.grad(lambda x, w: jax_dgpt.fp8_matmul(x, w).sum(), (0, 1))(x, w)
    y = jax_dgpt.fp8_ragged_dot(x, w, group_sizes)      # MoE experts: x [M, K], w [G, N, K] -> [M, N]

Modules: :mod:`.recipes` (``Fp8Recipe``, the quantizer), :mod:`.matmul` (``fp8_matmul``), :mod:`.ragged`
(``fp8_ragged_dot``). ``plain_matmul`` and ``plain_ragged_dot`` are the same contractions without FP8 (XLA's
dot and ``jax.lax.ragged_dot``), the high-precision references. docs/training.md has the rules and bounds.
"""

from .matmul import fp8_matmul, plain_matmul
from .ragged import fp8_ragged_dot, plain_ragged_dot
from .recipes import PER_TENSOR, ROWWISE, Fp8Recipe, quantize, quantize_segments

__all__ = [
    "PER_TENSOR",
    "ROWWISE",
    "Fp8Recipe",
    "fp8_matmul",
    "fp8_ragged_dot",
    "plain_matmul",
    "plain_ragged_dot",
    "quantize",
    "quantize_segments",
]
