"""``jax.export`` of jax_dgpt programs (issue 12, finding 8): the custom-call targets must be named in
``disabled_checks`` (from ``jax_dgpt._native.TARGETS``); then export works without a GPU."""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import jax_dgpt
from jax_dgpt import _native
from jax_dgpt.testing import generate_contiguous_indices, generate_fp8

CHECKS = [export.DisabledSafetyCheck.custom_call(target) for target in _native.TARGETS.values()]


def enumerate_ops():
    a, b = generate_fp8((128, 64), key=1), generate_fp8((32, 64), key=2)
    yield "normal", jax_dgpt.gemm, (a, b)
    indices = jnp.asarray(generate_contiguous_indices([100, 28]))
    yield (
        "contiguous",
        jax_dgpt.grouped_gemm_contiguous,
        (generate_fp8((256, 64), key=3), generate_fp8((2, 32, 64), 4), indices),
    )
    masked = functools.partial(jax_dgpt.grouped_gemm_masked, expected_m=8)
    yield (
        "masked",
        masked,
        (generate_fp8((2, 16, 64), key=5), generate_fp8((2, 32, 64), 6), jnp.asarray([16, 3], jnp.int32)),
    )


@pytest.mark.parametrize("layout, fn, args", list(enumerate_ops()), ids=[op[0] for op in enumerate_ops()])
def test_export_for_cuda_needs_the_targets_in_disabled_checks(layout, fn, args):
    with pytest.raises(ValueError, match="custom calls whose targets have no compatibility guarantees"):
        export.export(jax.jit(fn), platforms=("cuda",))(*args)
    exported = export.export(jax.jit(fn), platforms=("cuda",), disabled_checks=CHECKS)(*args)
    assert f"stablehlo.custom_call @{_native.TARGETS[layout]}" in exported.mlir_module()


@pytest.mark.parametrize("layout, fn, args", list(enumerate_ops()), ids=[op[0] for op in enumerate_ops()])
def test_export_for_cuda_and_cpu_runs_the_reference_here(layout, fn, args):
    exported = export.export(jax.jit(fn), platforms=("cuda", "cpu"), disabled_checks=CHECKS)(*args)
    assert exported.platforms == ("cuda", "cpu")
    np.testing.assert_array_equal(np.asarray(exported.call(*args)), np.asarray(jax.jit(fn)(*args)))


def test_readme_documents_export_with_the_targets_of_the_extension():
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Exporting") :]
    section = section[: section.index("\n## ")]
    assert "disabled_checks" in section and "_native.TARGETS" in section, section
    for target in _native.TARGETS.values():
        assert target not in readme, f"the README hard-codes the target name {target}; use _native.TARGETS"
