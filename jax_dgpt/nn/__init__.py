"""jax_dgpt.nn: Flax NNX layers on jax_dgpt's FP8 GEMMs, inference-only by default, trainable on request.

    from flax import nnx
    from jax_dgpt import nn as dgnn

    dense = dgnn.Fp8Dense(1024, 4096, rngs=nnx.Rngs(0))          # y = x W^T + b via jax_dgpt.gemm
    moe = dgnn.MoE(hidden=1024, expert_hidden=512, num_experts=8, top_k=2, rngs=nnx.Rngs(0))
    y = moe(x)                                   # prefill: ragged layout (unpadded), no token dropped
    y, dropped = moe.decode(x, capacity=64)      # decode: masked layout, fixed per-expert capacity

    # Training: float parameters, FP8 forward, dgrad and wgrad (jax_dgpt.fp8_matmul / fp8_ragged_dot).
    dense = dgnn.Fp8Dense(1024, 4096, trainable=True, rngs=nnx.Rngs(0))
    moe = dgnn.MoE(1024, 512, 8, 2, trainable=True, rngs=nnx.Rngs(0))
    grads = nnx.grad(lambda m, x: loss(m(x)))(moe, x)

Public API (all re-exported here):
  layers: ``Fp8Dense``, ``MoE`` (``trainable=``, ``recipe=``, ``use_fp8=``); their functional forms
    ``fp8_dense``, ``moe_prefill``, ``moe_decode`` (inference) and ``dense_train``, ``moe_train`` (training);
  routing (submodule ``jax_dgpt.nn.routing``): ``route``, ``ragged_layout``, ``contiguous_layout``,
    ``masked_layout``;
  FP8 quantization (submodule ``jax_dgpt.nn.quantization``): ``FP8_MAX``, ``per_tensor_scale``,
    ``quantize``, ``quantize_per_tensor``, ``quantize_per_expert``, ``dequantize``.

Needs Flax (``pip install 'jax-dgpt[flax]'``, flax>=0.12,<0.13, checked at import); ``import
jax_dgpt`` alone does not.
"""

import re as _re

try:
    import flax as _flax
    from flax import nnx as _nnx  # noqa: F401
except ImportError as error:
    raise ImportError(
        "jax_dgpt.nn needs Flax NNX: install the extra with pip install 'jax-dgpt[flax]' (flax>=0.12,<0.13)"
    ) from error

_FLAX_SUPPORTED = ((0, 12), (0, 13))  # [lower, upper): flax>=0.12,<0.13, as in pyproject.toml


def _check_flax_version(version: str) -> None:
    """Raises ImportError unless ``version`` (flax.__version__) is >=0.12,<0.13.

    NOTES: only the leading ``major.minor`` is compared, so pre-releases, dev and local builds of
    a supported minor ("0.12.0rc1", "0.12.1.dev3+g1234") pass; a string without one fails.
    """
    match = _re.match(r"\s*v?(\d+)\.(\d+)", str(version))
    found = (int(match.group(1)), int(match.group(2))) if match else None
    if found is None or not _FLAX_SUPPORTED[0] <= found < _FLAX_SUPPORTED[1]:
        raise ImportError(
            f"jax_dgpt.nn needs flax>=0.12,<0.13, found flax {version!r}: install a supported "
            "version with pip install 'jax-dgpt[flax]'"
        )


_check_flax_version(getattr(_flax, "__version__", "unknown"))

from . import quantization, routing  # noqa: E402
from .dense import Fp8Dense, dense_train, fp8_dense  # noqa: E402
from .moe import MoE, moe_decode, moe_prefill, moe_train  # noqa: E402
from .quantization import (  # noqa: E402
    FP8_MAX,
    dequantize,
    per_tensor_scale,
    quantize,
    quantize_per_expert,
    quantize_per_tensor,
)
from .routing import contiguous_layout, masked_layout, ragged_layout, route  # noqa: E402

__all__ = [
    "FP8_MAX",
    "Fp8Dense",
    "MoE",
    "contiguous_layout",
    "dense_train",
    "dequantize",
    "fp8_dense",
    "masked_layout",
    "moe_decode",
    "moe_prefill",
    "moe_train",
    "per_tensor_scale",
    "quantization",
    "quantize",
    "quantize_per_expert",
    "quantize_per_tensor",
    "ragged_layout",
    "route",
    "routing",
]
