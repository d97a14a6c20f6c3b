"""Benchmarks of jax_dgpt against XLA's own paths; run from the repository root as modules:

    python -m benchmarks.bench --help
    python -m benchmarks.end_to_end
    python -m benchmarks.report             # benchmarks/RESULTS.md from benchmarks/results/*/

Shared inputs, references and calc_diff come from :mod:`jax_dgpt.testing`.
"""
