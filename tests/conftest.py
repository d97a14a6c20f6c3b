"""Pytest hooks and fixtures only: the `gpu` marker, the skip and calc_diff summaries, the JIT environment.

Helpers (shapes, generators, the float64 reference, calc_diff) live in :mod:`jax_dgpt.testing`.
"""

from __future__ import annotations

import collections
import os

import pytest

from jax_dgpt import testing
from jax_dgpt.testing import hopper_gpu_visible

# --- the gpu marker: GPU tests run only where a Hopper (compute capability 9.0) GPU is visible ----
GPU_SKIP_REASON = "needs a Hopper GPU (compute capability 9.0)"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs an sm_90 (Hopper) GPU; skipped elsewhere")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hopper_gpu_visible():
        return
    skip = pytest.mark.skip(reason=GPU_SKIP_REASON)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# --- failures reported as they happen -------------------------------------------------------------
def pytest_runtest_logreport(report) -> None:
    """Print a failed test's name and traceback at once (under pytest-xdist, in the controller), not only in
    the final summary: a GPU run stopped by its time limit never reaches the summary."""
    if report.failed and os.environ.get("DGPT_REPORT_FAILURES_AT_ONCE") == "1":
        print(f"\n--- FAILED {report.nodeid} ({report.when})\n{report.longreprtext[-4000:]}\n", flush=True)


# --- the largest calc_diff of the run (values recorded by jax_dgpt.testing.record_diff) ------------
def pytest_sessionfinish(session, exitstatus) -> None:
    # A pytest-xdist worker hands its values to the controller, which prints the summary.
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["dgpt_recorded_diffs"] = [[float(v), str(c)] for v, c in testing.RECORDED_DIFFS]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """pytest-xdist controller: collect a finished worker's calc_diff values."""
    for value, context in getattr(node, "workeroutput", {}).get("dgpt_recorded_diffs", []):
        testing.RECORDED_DIFFS.append((float(value), str(context)))


def skip_reasons(reports) -> collections.Counter:
    """{reason: count} of skipped test reports (``pytest.skip``/``skipif`` messages, without the
    "Skipped: " prefix pytest adds)."""
    reasons: collections.Counter = collections.Counter()
    for report in reports:
        longrepr = getattr(report, "longrepr", None)
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        reasons[reason.removeprefix("Skipped: ").strip()] += 1
    return reasons


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    # `pytest -q` only counts skips: one line says why, grouped by reason, most frequent first.
    reasons = skip_reasons(terminalreporter.stats.get("skipped", []))
    if reasons:
        grouped = ", ".join(f"{reason}: {count}" for reason, count in reasons.most_common())
        terminalreporter.write_line(f"skipped: {sum(reasons.values())} ({grouped})")
    if testing.RECORDED_DIFFS:
        value, context = max(testing.RECORDED_DIFFS)
        terminalreporter.write_line(
            f"largest calc_diff checked: {value:.3g} ({context}; {len(testing.RECORDED_DIFFS)} checks)"
        )


# --- JIT environment ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jit_env(tmp_path_factory):
    """A private cache directory and no inherited DG_JIT_* settings, for the whole module."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("DG_JIT_"):
                mp.delenv(name)
        mp.setenv("DG_JIT_CACHE_DIR", str(tmp_path_factory.mktemp("jit-cache")))
        yield mp
