"""thinghub/health.py: the component health registry, the supervised thread target, and which
write errors heal by themselves."""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass

import pytest

from thinghub.health import Health, describe, heals, supervised
from thinghub.registry.errors import StorageFull


def test_ok_until_something_happens() -> None:
    health = Health()
    health.register("store")
    snapshot = health.snapshot()
    assert snapshot.status == "ok"
    assert snapshot.as_json() == {"status": "ok"}
    assert snapshot.failures == {"store": 0}


def test_a_failure_is_recorded_counted_and_its_traceback_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health = Health()
    with caplog.at_level(logging.ERROR, logger="thinghub.health"):
        for attempt in range(3):
            try:
                raise RuntimeError(f"boom {attempt}")
            except RuntimeError as error:
                reason = health.fail("store", error, "new QoS 1/2 messages are refused")
    assert reason == "RuntimeError: boom 2"
    snapshot = health.snapshot()
    # The first reason stays: it is the one that stopped the component.
    assert snapshot.failed == {"store": "RuntimeError: boom 0"}
    assert snapshot.failures == {"store": 3}
    assert snapshot.status == "failed"
    assert snapshot.as_json() == {
        "status": "failed",
        "components": {"store": "RuntimeError: boom 0"},
    }
    [record] = caplog.records
    assert record.exc_info is not None and "boom 0" in str(record.exc_info[1])
    assert "store failed" in record.getMessage()
    assert "new QoS 1/2 messages are refused" in record.getMessage()


def test_degraded_heals_and_failed_takes_precedence() -> None:
    health = Health()
    health.degrade("nonces", "cannot write nonces.db: database or disk is full")
    assert health.snapshot().as_json() == {
        "status": "degraded",
        "degraded": {"nonces": "cannot write nonces.db: database or disk is full"},
    }
    health.fail("shadows", ValueError("bad row"))
    body = health.snapshot().as_json()
    assert body["status"] == "failed"
    assert body["components"] == {"shadows": "ValueError: bad row"}
    assert health.snapshot().degraded == {
        "nonces": "cannot write nonces.db: database or disk is full"
    }
    health.recover("nonces")
    assert "degraded" not in health.snapshot().as_json()
    assert health.snapshot().failures == {"nonces": 0, "shadows": 1}


@dataclass
class Part:
    failed: str | None = None
    failing: str | None = None
    failures: int = 0


def test_a_watched_part_is_read_at_each_snapshot() -> None:
    health = Health()
    part = Part()
    health.watch("presence", part)
    assert health.snapshot().status == "ok"
    part.failing = "database is locked"
    assert health.snapshot().degraded == {"presence": "database is locked"}
    part.failed, part.failures = "IntegrityError: constraint failed", 1
    snapshot = health.snapshot()
    assert snapshot.failed == {"presence": "IntegrityError: constraint failed"}
    assert snapshot.failures == {"presence": 1}


def test_a_watched_part_with_only_failed_counts_one_failure() -> None:
    @dataclass
    class Minimal:
        failed: str | None = None

    health = Health()
    part = Minimal()
    health.watch("registry-writer", part)
    part.failed = "RuntimeError: x"
    assert health.snapshot().failures == {"registry-writer": 1}


def test_supervised_refuses_first_then_reports(caplog: pytest.LogCaptureFixture) -> None:
    health = Health()
    seen: list[tuple[str, str]] = []

    def boom() -> None:
        raise KeyError("gone")

    def on_failure(reason: str) -> None:
        # The component refuses before /healthz can show the failure.
        seen.append((reason, health.snapshot().status))

    thread = threading.Thread(
        target=supervised(health, "store", boom, consequence="x", on_failure=on_failure)
    )
    thread.start()
    thread.join(5)
    assert seen == [("KeyError: 'gone'", "ok")]
    assert health.snapshot().failed == {"store": "KeyError: 'gone'"}
    assert len([r for r in caplog.records if r.exc_info]) == 1


@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt()])
def test_supervised_catches_base_exceptions_too(error: BaseException) -> None:
    health = Health()

    def stop() -> None:
        raise error

    # A thread whose exception escaped would fail the test (pytest's unhandled thread
    # exception warning is an error here).
    thread = threading.Thread(target=supervised(health, "writer", stop))
    thread.start()
    thread.join(5)
    assert health.snapshot().failed == {"writer": describe(error)}


def test_a_failing_on_failure_is_logged_and_the_failure_still_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health = Health()

    def boom() -> None:
        raise RuntimeError("first")

    def on_failure(reason: str) -> None:
        raise RuntimeError("second")

    supervised(health, "store", boom, on_failure=on_failure)()
    assert health.snapshot().failed == {"store": "RuntimeError: first"}
    messages = [r.getMessage() for r in caplog.records]
    assert any("handling its failure failed too" in m for m in messages)


def test_a_target_that_returns_reports_nothing() -> None:
    health = Health()
    supervised(health, "store", lambda: None)()
    assert health.snapshot().status == "ok"


def test_failures_from_many_threads_are_all_counted() -> None:
    health = Health()
    error = RuntimeError("x")

    def fail_many() -> None:
        for _ in range(500):
            health.fail("store", error)

    threads = [threading.Thread(target=fail_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert health.snapshot().failures == {"store": 4000}


def _caused(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "healing"),
    [
        (sqlite3.OperationalError("database or disk is full"), True),
        (sqlite3.OperationalError("database is locked"), True),
        (OSError(28, "No space left on device"), True),
        (StorageFull("the disk is full"), True),
        (_caused(RuntimeError("wrapped"), sqlite3.OperationalError("disk I/O error")), True),
        (sqlite3.IntegrityError("NOT NULL constraint failed"), False),
        (sqlite3.DatabaseError("database disk image is malformed"), False),
        (ValueError("Expecting property name"), False),
        (RuntimeError("a bug"), False),
    ],
)
def test_which_errors_heal(error: BaseException, healing: bool) -> None:
    assert heals(error) is healing


def test_describe() -> None:
    assert describe(RuntimeError("injected")) == "RuntimeError: injected"
    assert describe(KeyboardInterrupt()) == "KeyboardInterrupt"
