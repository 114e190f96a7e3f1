"""Nothing is left behind when a test fails or the run is interrupted: no thread, no child
process, no listening port, no temporary data directory. Checked from outside a pytest run
that uses the fixtures: one whose test fails, one whose test raises KeyboardInterrupt, one
that gets a real SIGINT (Ctrl-C) while a test runs, and one killed outright (SIGKILL), in
which case a child process hub stops by itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pluginrun import (
    REPORTING_CONFTEST,
    TIMEOUT,
    assert_nothing_left,
    preload,
    process_gone,
    read_reports,
    wait_until,
)

pytest_plugins = ["pytester"]
preload()

MODES = [pytest.param((), id="thread"), pytest.param(("--thinghub-process",), id="process")]

FAILING = """
import pytest

def test_fails_with_devices_connected(thinghub, iot_device, aws_iot_data):
    device = iot_device(clean_start=False, session_expiry=600)
    device.subscribe(device.topic("get"))
    aws_iot = iot_device(kind="aws")
    assert False, "the test failed"

@pytest.mark.thinghub(scope="function")
def test_fails_on_a_hub_of_its_own(thinghub, iot_device):
    iot_device()
    raise RuntimeError("boom")
"""

INTERRUPTED = """
from conftest import report

def test_interrupted(thinghub, iot_device):
    iot_device()
    report(thinghub)
    raise KeyboardInterrupt

def test_never_runs(thinghub):
    pass
"""

# Signals readiness through a file, then waits to be interrupted or killed.
WAITING = """
import os, threading
from conftest import report

def test_waits(thinghub, iot_device):
    iot_device()
    report(thinghub)
    open(os.environ["HUB_READY"], "w").close()
    threading.Event().wait(60)
"""


def hub_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t is not threading.current_thread()}


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makeconftest(REPORTING_CONFTEST)
    monkeypatch.setenv("HUB_REPORT", str(pytester.path / "hubs.jsonl"))
    return pytester


@pytest.mark.parametrize("mode", MODES)
def test_a_failing_test_leaves_nothing_behind(
    inner: pytest.Pytester, mode: tuple[str, ...]
) -> None:
    inner.makepyfile(test_failing=FAILING)
    before = hub_threads()
    result = inner.runpytest_inprocess(*mode)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*the test failed*", "*RuntimeError: boom*"], consecutive=False)
    assert_nothing_left(read_reports(inner.path / "hubs.jsonl"))
    assert hub_threads() - before == set(), "threads the run started are still alive"


@pytest.mark.parametrize("mode", MODES)
def test_a_keyboard_interrupt_in_a_test_leaves_nothing_behind(
    inner: pytest.Pytester, mode: tuple[str, ...]
) -> None:
    inner.makepyfile(test_interrupted=INTERRUPTED)
    before = hub_threads()
    # pytester re-raises an inner KeyboardInterrupt unless told not to.
    recorder = inner.inline_run(*mode, no_reraise_ctrlc=True)
    assert recorder.ret == pytest.ExitCode.INTERRUPTED
    assert_nothing_left(read_reports(inner.path / "hubs.jsonl"))
    assert hub_threads() - before == set(), "threads the run started are still alive"


def start_waiting_run(inner: pytest.Pytester, mode: tuple[str, ...]) -> subprocess.Popen[bytes]:
    """A pytest process whose test holds a hub and a device and waits; returns once the
    test has reported its hub."""
    inner.makepyfile(test_waiting=WAITING)
    ready = inner.path / "ready"
    env = {**os.environ, "HUB_READY": str(ready)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *mode, "test_waiting.py"],
        cwd=inner.path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(ready.exists, "the inner test reported its hub")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


@pytest.mark.parametrize("mode", MODES)
def test_ctrl_c_during_a_test_leaves_nothing_behind(
    inner: pytest.Pytester, mode: tuple[str, ...]
) -> None:
    proc = start_waiting_run(inner, mode)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(TIMEOUT) == pytest.ExitCode.INTERRUPTED
    assert_nothing_left(read_reports(inner.path / "hubs.jsonl"))


def test_a_process_hub_stops_by_itself_when_the_test_process_is_killed(
    inner: pytest.Pytester,
) -> None:
    proc = start_waiting_run(inner, ("--thinghub-process",))
    proc.kill()
    proc.wait()
    (record,) = read_reports(inner.path / "hubs.jsonl")
    wait_until(lambda: process_gone(record["pid"]), "the hub's process exits")
    wait_until(lambda: not Path(record["data_dir"]).exists(), "its data directory goes")
    assert_nothing_left([record])
