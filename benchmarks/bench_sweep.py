"""The sweep table of benchmarks.bench (--only sweep): the linear layers of real models, at decode and prefill M.

Each layer is a weight ``[N, K]`` (K contiguous, the GEMM's B operand) multiplied by ``M`` tokens; attention
projections with fused q, k and v, MLPs with fused gate and up. The MoE models' expert GEMMs belong to the
ragged table (benchmarks/bench_ragged.py); here are their dense layers. ODD_SHAPES have K and N that are
multiples of 16 but not of 64 or 128, where the tiles and the K loop have tails.

Against XLA's default FP8 dot only (each XLA baseline autotunes at its first call; the normal table has the
others). ``--match`` selects by layer name or shape, e.g. ``--match DeepSeek`` or ``--match 8192x``.
"""

from __future__ import annotations

# (N, K) of each layer: hidden size, heads x head dim, kv heads, intermediate size from the models' configs.
MODEL_LAYERS = {
    "Llama-3 8B qkv": (6144, 4096),  # 32 q heads + 2 x 8 kv heads, head dim 128
    "Llama-3 8B o": (4096, 4096),
    "Llama-3 8B gate+up": (28672, 4096),
    "Llama-3 8B down": (4096, 14336),
    "Llama-3 70B qkv": (10240, 8192),  # 64 q heads + 2 x 8 kv heads
    "Llama-3 70B o": (8192, 8192),
    "Llama-3 70B gate+up": (57344, 8192),
    "Llama-3 70B down": (8192, 28672),
    "Qwen3-235B-A22B qkv": (9216, 4096),  # 64 q heads + 2 x 4 kv heads, head dim 128
    "Qwen3-235B-A22B o": (4096, 8192),
    "DeepSeek-V3 q_a+kv_a": (2112, 7168),  # q_lora 1536 + kv_lora 512 + rope 64
    "DeepSeek-V3 q_b": (24576, 1536),  # 128 heads x (128 + 64)
    "DeepSeek-V3 kv_b": (32768, 512),  # 128 heads x (128 + 128)
    "DeepSeek-V3 o": (7168, 16384),
    "DeepSeek-V3 shared gate+up": (4096, 7168),
    "DeepSeek-V3 shared down": (7168, 2048),
}
# Mixtral 8x7B's attention has Llama-3 8B's shapes (hidden 4096, 32 heads, 8 kv heads).
ODD_SHAPES = {
    "odd K (2064)": (7168, 2064),
    "odd K (7184)": (2112, 7184),
    "odd N (4112)": (4112, 4096),
    "odd N and K (1552, 7184)": (1552, 7184),
}
DECODE_M = (1, 8, 32, 128)
PREFILL_M = (2048, 8192, 16384)
TINY = {"tiny layer": (384, 256), "tiny odd K": (256, 272)}


def layers(tiny: bool = False) -> dict[str, tuple[int, int]]:
    return TINY if tiny else {**MODEL_LAYERS, **ODD_SHAPES}


def shapes(tiny: bool = False) -> list[tuple[int, int, int]]:
    """(M, N, K) of every layer at every M, layer by layer; a shape shared by two layers once."""
    ms = (8, 200) if tiny else DECODE_M + PREFILL_M
    ordered = dict.fromkeys((m, n, k) for n, k in layers(tiny).values() for m in ms)
    return list(ordered)


def labels(tiny: bool = False) -> dict[tuple[int, int], str]:
    """(N, K) -> the layers with that weight shape, joined."""
    out: dict[tuple[int, int], list[str]] = {}
    for name, nk in layers(tiny).items():
        out.setdefault(nk, []).append(name)
    return {nk: ", ".join(names) for nk, names in out.items()}
