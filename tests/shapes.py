"""The problem shapes of shared/ANCHORS-H100.md, in one place for the tests and the benchmark."""

from __future__ import annotations

# The 7 (N, K) pairs of the normal GEMM table.
NK_PAIRS = [(7168, 576), (2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048)]
# The 22 normal shapes (M, N, K).
NORMAL_ANCHORS = [(m, n, k) for m in (64, 128, 4096) for n, k in NK_PAIRS] + [(8192, 8192, 8192)]
# M values that miss every tile size, checked with every (N, K) pair.
ODD_M = (1, 7, 65, 1000, 4097)
# Decode-sized M values of the performance issue, with every (N, K) pair.
DECODE_M = (1, 16, 32)
# (G, expected_m, N, K) of the contiguous and masked tables.
CONTIGUOUS_ANCHORS = [
    (4, 8192, 4096, 7168),
    (4, 8192, 7168, 2048),
    (8, 4096, 4096, 7168),
    (8, 4096, 7168, 2048),
    (32, 256, 4096, 7168),
    (32, 256, 7168, 2048),
]
MASKED_ANCHORS = [
    (1, 1024, 4096, 7168),
    (1, 1024, 7168, 2048),
    (2, 512, 4096, 7168),
    (2, 512, 7168, 2048),
    (4, 256, 4096, 7168),
    (4, 256, 7168, 2048),
]
MASKED_MMAX = 4096  # rows per group of A in the masked table
