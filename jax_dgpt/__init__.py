"""jax_dgpt: DeepGEMM-class FP8 GEMMs for JAX on NVIDIA Hopper, through an XLA FFI custom call.

Every op works inside ``jax.jit``: on an sm_90a GPU it runs a kernel JIT-compiled for the static
shape on XLA's stream; on a CPU the same program runs a jnp reference (exact fp8 products, fp32
accumulation).

    import jax, jax_dgpt
    d = jax.jit(jax_dgpt.gemm)(a, b)  # a f8e4m3fn[M, K], b f8e4m3fn[N, K] -> bf16[M, N]

Training: ``fp8_matmul`` and ``fp8_ragged_dot`` (bf16/f32 in and out, differentiable: forward, dgrad and
wgrad as FP8 GEMMs; scaling recipes ``Fp8Recipe``, ``ROWWISE``, ``PER_TENSOR``) live in :mod:`jax_dgpt.training`.
"""

# NOTES: the one place the version is written; pyproject.toml reads it from here (scikit-build-core's
# regex provider).
__version__ = "0.1.0"

from ._native import load as _load_native
from .device import get_num_sms, set_num_sms
from .ops import (
    gemm,
    gemm_per_tensor_fp8_fp8_bf16_nt,
    get_m_alignment_for_contiguous_layout,
    grouped_gemm_contiguous,
    grouped_gemm_masked,
    grouped_gemm_ragged,
    k_grouped_wgrad_gemm,
    k_grouped_wgrad_gemm_per_tensor_fp8_fp8_fp32_nt,
    m_grouped_gemm_per_tensor_fp8_fp8_bf16_nt_contiguous,
    m_grouped_gemm_per_tensor_fp8_fp8_bf16_nt_masked,
    ragged_dot,
    wgrad_gemm,
    wgrad_gemm_per_tensor_fp8_fp8_fp32_nt,
)
from .training import PER_TENSOR, ROWWISE, Fp8Recipe, fp8_matmul, fp8_ragged_dot

# NOTES: imports the extension and registers its FFI targets and types, once; a missing build fails
# here with one clear ImportError. No module imports ``_C`` itself at import time.
_load_native()

__all__ = [
    "PER_TENSOR",
    "ROWWISE",
    "Fp8Recipe",
    "fp8_matmul",
    "fp8_ragged_dot",
    "gemm",
    "gemm_per_tensor_fp8_fp8_bf16_nt",
    "get_m_alignment_for_contiguous_layout",
    "get_num_sms",
    "grouped_gemm_contiguous",
    "grouped_gemm_masked",
    "grouped_gemm_ragged",
    "k_grouped_wgrad_gemm",
    "k_grouped_wgrad_gemm_per_tensor_fp8_fp8_fp32_nt",
    "m_grouped_gemm_per_tensor_fp8_fp8_bf16_nt_contiguous",
    "m_grouped_gemm_per_tensor_fp8_fp8_bf16_nt_masked",
    "ragged_dot",
    "set_num_sms",
    "wgrad_gemm",
    "wgrad_gemm_per_tensor_fp8_fp8_fp32_nt",
]
