"""jax_dgpt.nn: Flax NNX layers on jax_dgpt's FP8 GEMMs (inference only for now).

    from flax import nnx
    from jax_dgpt import nn as dgnn

    dense = dgnn.Fp8Dense(1024, 4096, rngs=nnx.Rngs(0))          # y = x W^T + b via jax_dgpt.gemm
    moe = dgnn.MoE(hidden=1024, expert_hidden=512, num_experts=8, top_k=2, rngs=nnx.Rngs(0))
    y = moe(x)                                   # prefill: contiguous layout, no token dropped
    y, dropped = moe.decode(x, capacity=64)      # decode: masked layout, fixed per-expert capacity

Needs Flax (``pip install 'jax-dgpt[flax]'``, flax>=0.12,<0.13); ``import jax_dgpt`` alone does not.
"""

try:
    import flax
    from flax import nnx as _nnx  # noqa: F401
except ImportError as error:
    raise ImportError(
        "jax_dgpt.nn needs Flax NNX: install the extra with pip install 'jax-dgpt[flax]' "
        "(flax>=0.12,<0.13)"
    ) from error

_FLAX_VERSION = tuple(int(part) for part in flax.__version__.split(".")[:2] if part.isdigit())
if _FLAX_VERSION < (0, 12):
    raise ImportError(
        f"jax_dgpt.nn needs flax>=0.12,<0.13 (pip install 'jax-dgpt[flax]'), found {flax.__version__}"
    )

from .dense import Fp8Dense, fp8_dense  # noqa: E402
from .moe import MoE, moe_decode, moe_prefill  # noqa: E402
from .quantize import (  # noqa: E402
    FP8_MAX,
    dequantize,
    per_tensor_scale,
    quantize,
    quantize_per_expert,
    quantize_per_tensor,
)
from .routing import contiguous_layout, masked_layout, route  # noqa: E402

__all__ = [
    "FP8_MAX",
    "Fp8Dense",
    "MoE",
    "contiguous_layout",
    "dequantize",
    "fp8_dense",
    "masked_layout",
    "moe_decode",
    "moe_prefill",
    "per_tensor_scale",
    "quantize",
    "quantize_per_expert",
    "quantize_per_tensor",
    "route",
]
