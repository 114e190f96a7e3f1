"""The message store's writer under supervision (thinghub/store/sqlite.py, "Faults"), on real
SQLite files: a fault it does not understand fails the store for good (no acknowledgement of
anything not on disk, page reads answered empty, listeners told, memory bounded, the file
left at its last commit), and a fault that may heal is retried and reported as degraded."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from thinghub.health import Health
from thinghub.message import Message
from thinghub.store.base import QueuedDelivery, StoredDelivery
from thinghub.store.sqlite import SQLiteStore

KEY = "acct\x00device-1"
TIMEOUT = 5.0


def message(mid: int) -> Message:
    return Message(topic="t/1", payload=b"x%d" % mid, qos=1, id=mid, account="acct")


def publish(store: SQLiteStore, mid: int) -> None:
    store.save_message(message(mid))
    store.add_delivery(KEY, StoredDelivery(mid, 1, False))


def failing_commit(error: BaseException) -> Callable[..., None]:
    def commit(*args: Any) -> None:
        raise error

    return commit


def test_a_fault_it_does_not_understand_fails_the_store_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    health = Health()
    store = SQLiteStore.open(tmp_path, health=health)
    store.save_session(KEY, 3600)
    publish(store, 1)
    assert store.flush()
    told: list[str] = []
    store.on_failed(lambda: told.append("failed"))

    monkeypatch.setattr(store, "_commit", failing_commit(RuntimeError("injected")))
    acknowledged: list[int] = []
    publish(store, 2)
    store.after_commit(lambda: acknowledged.append(2))  # flushes: returns once it failed
    assert store.failed == "RuntimeError: injected"
    assert not store.accepting
    assert acknowledged == []  # message 2 is not on disk: never acknowledged
    assert told == ["failed"]
    assert health.snapshot().failed == {"store": "RuntimeError: injected"}

    # Afterwards: reads are answered empty, barriers never run but the listeners hear of
    # them, and the journal does not grow.
    pages: list[list[QueuedDelivery]] = []
    store.read_queued(KEY, 10, pages.append)
    assert pages == [[]]
    pending = store.pending_calls
    for mid in range(3, 1003):
        publish(store, mid)
    store.after_commit(lambda: acknowledged.append(3))
    assert store.pending_calls == pending
    assert acknowledged == []
    assert told == ["failed", "failed"]
    assert not store.flush()
    store.close()

    # The file holds its last commit.
    reopened = SQLiteStore.open(tmp_path)
    try:
        state = reopened.load().sessions[KEY]
        assert state.queued == 1  # message 1 only
    finally:
        reopened.close()


def test_an_error_that_heals_is_retried_degraded_then_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    health = Health()
    store = SQLiteStore.open(tmp_path, health=health)
    store.save_session(KEY, 3600)
    assert store.flush()
    original = store._commit
    failures = [sqlite3.OperationalError("disk I/O error")] * 2

    def flaky(*args: Any) -> None:
        if failures:
            raise failures.pop()
        original(*args)

    monkeypatch.setattr(store, "_commit", flaky)
    acknowledged: list[int] = []
    publish(store, 1)
    store.after_commit(lambda: acknowledged.append(1))  # returns at once while failing
    assert acknowledged == []
    assert "disk I/O error" in health.snapshot().degraded["store"]
    assert store.flush(timeout=TIMEOUT)  # the retries commit it
    assert acknowledged == [1]
    assert store.failed is None and store.accepting
    assert health.snapshot().as_json() == {"status": "ok"}
    store.close()


def test_a_constraint_violated_is_no_passing_trouble(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteStore.open(tmp_path)
    monkeypatch.setattr(
        store, "_commit", failing_commit(sqlite3.IntegrityError("UNIQUE constraint failed"))
    )
    publish(store, 1)
    assert not store.flush(timeout=TIMEOUT)  # no retries: it failed at once
    assert store.failed == "IntegrityError: UNIQUE constraint failed"
    store.close()


def test_on_the_loop_listeners_run_at_the_failure_and_for_each_later_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        store = SQLiteStore.open(tmp_path, loop=asyncio.get_running_loop())
        told: asyncio.Queue[str] = asyncio.Queue()
        remove = store.on_failed(lambda: told.put_nowait("failed"))
        acknowledged: list[int] = []
        monkeypatch.setattr(store, "_commit", failing_commit(RuntimeError("injected")))
        store.save_session(KEY, 3600)
        store.after_commit(lambda: acknowledged.append(1))
        assert await asyncio.wait_for(told.get(), TIMEOUT) == "failed"
        # A wait after the failure: told again (on the next turn), never run.
        store.save_session(KEY, 60)
        store.after_commit(lambda: acknowledged.append(2))
        assert await asyncio.wait_for(told.get(), TIMEOUT) == "failed"
        # A listener added now hears of it at once; a removed one no more.
        late: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        store.on_failed(lambda: late.done() or late.set_result(None))
        await asyncio.wait_for(late, TIMEOUT)
        remove()
        store.after_commit(lambda: acknowledged.append(3))
        await asyncio.sleep(0)  # the turn the listeners would run in
        await asyncio.sleep(0)
        assert told.empty()
        assert acknowledged == []
        store.close()

    asyncio.run(scenario())
