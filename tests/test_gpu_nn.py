"""The Flax layers on an sm_90a GPU: the same checks as tests/test_nn_layers.py, run on the kernels.

The CPU suite runs these against the reference implementation; here they run where the default
backend is a Hopper GPU, so the layers' routing, packing and scaling are checked against float32
through the real grouped GEMMs (contiguous and masked) and the dense GEMM.
"""

from __future__ import annotations

import pytest
import test_nn_layers as nn_tests

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("lead", [(48,), (2, 3, 8)])
def test_fp8_dense_on_gpu(lead):
    nn_tests.test_fp8_dense_matches_f32(lead, use_bias=True)


@pytest.mark.parametrize(
    "check",
    [
        nn_tests.test_moe_prefill_and_decode_match_f32_reference,
        nn_tests.test_moe_expert_with_no_tokens,
        nn_tests.test_moe_all_tokens_on_one_expert,
        nn_tests.test_moe_decode_capacity_overflow_drops_later_tokens,
        nn_tests.test_jit_compiles_once_per_token_count,
    ],
    ids=lambda f: f.__name__.removeprefix("test_"),
)
def test_moe_on_gpu(check):
    check()
