"""Shared pytest set-up: offline HF hub, deterministic seeds, GPU marker handling."""

import os
import threading
import time

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
# each is named when it starts, says it is still running every HEARTBEAT seconds, and
# is timed when it ends; the summary totals them. The test command is never silent
# for more than HEARTBEAT seconds. Under pytest-xdist these hooks run in the
# controller, so every line names its test (two run at once).
_RECIPE_TIMES = {}
HEARTBEAT = 30
_RUNNING = {}


def _heartbeat(reporter, stop, name):
    """Every HEARTBEAT s until `stop`: a line past pytest's output capture (the test's
    own thread is waiting on its training subprocess meanwhile)."""
    start = time.monotonic()
    while not stop.wait(HEARTBEAT):
        with _REPORTER["capture"].global_and_fixture_disabled():
            seconds = time.monotonic() - start
            reporter.write_line(f"[recipe test]   {name} still running, {seconds:.0f} s")


def _is_recipe_test(nodeid):
    return nodeid.startswith("tests/recipes/")


def pytest_runtest_logstart(nodeid, location):
    reporter = _REPORTER.get("terminal")
    if reporter is not None and _is_recipe_test(nodeid):
        reporter.write_line(f"[recipe test] {nodeid} ...", flush=True)
        stop = threading.Event()
        name = nodeid.split("::", 1)[-1]
        threading.Thread(target=_heartbeat, args=(reporter, stop, name), daemon=True).start()
        _RUNNING[nodeid] = stop


def pytest_runtest_logreport(report):
    reporter = _REPORTER.get("terminal")
    if report.when == "call" and _is_recipe_test(report.nodeid):
        _RECIPE_TIMES[report.nodeid] = report.duration
        if reporter is not None:
            name = report.nodeid.split("::", 1)[-1]
            reporter.write_line(f"[recipe test] {name} {report.outcome} in {report.duration:.0f} s")


def pytest_runtest_logfinish(nodeid, location):
    if nodeid in _RUNNING:  # after teardown, whatever the outcome
        _RUNNING.pop(nodeid).set()


_REPORTER = {}


def pytest_sessionstart(session):
    _REPORTER["terminal"] = session.config.pluginmanager.get_plugin("terminalreporter")
    _REPORTER["capture"] = session.config.pluginmanager.get_plugin("capturemanager")


def pytest_terminal_summary(terminalreporter):
    if _RECIPE_TIMES:
        total = sum(_RECIPE_TIMES.values())
        slowest = max(_RECIPE_TIMES, key=_RECIPE_TIMES.get)
        terminalreporter.write_line(
            f"recipe tests: {len(_RECIPE_TIMES)}, {total / 60:.1f} min summed over workers "
            f"(slowest {slowest}: {_RECIPE_TIMES[slowest]:.0f} s)"
        )
