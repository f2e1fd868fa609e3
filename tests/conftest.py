"""Shared pytest set-up: offline HF hub, deterministic seeds, GPU marker handling."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """Skip `gpu`-marked tests with a reason where CUDA is absent."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is available on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Progress of the slow recipe tests (subprocess trainings of tens of seconds each):
# each is named when it starts and timed when it ends, and the summary totals them,
# so the test command never sits silent for minutes.
_RECIPE_TIMES = {}


def _is_recipe_test(nodeid):
    return nodeid.startswith("tests/recipes/")


def pytest_runtest_logstart(nodeid, location):
    reporter = _REPORTER.get("terminal")
    if reporter is not None and _is_recipe_test(nodeid):
        reporter.write_line(f"[recipe test] {nodeid} ...", flush=True)


def pytest_runtest_logreport(report):
    reporter = _REPORTER.get("terminal")
    if report.when == "call" and _is_recipe_test(report.nodeid):
        _RECIPE_TIMES[report.nodeid] = report.duration
        if reporter is not None:
            reporter.write_line(f"[recipe test] {report.outcome} in {report.duration:.0f} s")


_REPORTER = {}


def pytest_sessionstart(session):
    _REPORTER["terminal"] = session.config.pluginmanager.get_plugin("terminalreporter")


def pytest_terminal_summary(terminalreporter):
    if _RECIPE_TIMES:
        total = sum(_RECIPE_TIMES.values())
        slowest = max(_RECIPE_TIMES, key=_RECIPE_TIMES.get)
        terminalreporter.write_line(
            f"recipe tests: {len(_RECIPE_TIMES)} in {total / 60:.1f} min "
            f"(slowest {slowest}: {_RECIPE_TIMES[slowest]:.0f} s)"
        )
