"""tests/broker/test_broker_restart.py, re-run with the broker on a real ``broker.db``: every
restart there closes the SQLite file and opens it again (``SQLiteHub``). The tests of the commit
barrier itself (``DeferredStore``) are about the broker, not the store, and are not repeated."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import test_broker_restart as restart_tests
from sqlitehub import SQLiteHub

_MEMORY_ONLY = {
    "test_ack_waits_for_the_store_when_the_message_was_stored",
    "test_ack_not_written_when_the_connection_closed_before_commit",
    "test_acks_keep_their_order_when_one_waits_for_the_store",
    "test_qos2_to_a_persistent_session_is_sent_only_once_stored",
    "test_v5_publish_refused_with_quota_exceeded_when_the_store_is_full",
    "test_v311_publisher_is_disconnected_when_the_store_is_full",
}

for _name in dir(restart_tests):
    if _name.startswith("test_") and _name not in _MEMORY_ONLY:
        globals()[_name] = getattr(restart_tests, _name)


@pytest.fixture(autouse=True)
def on_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every InMemoryHub those tests build is a SQLiteHub on a fresh data directory."""
    made: list[SQLiteHub] = []

    def make(**settings: Any) -> SQLiteHub:
        hub = SQLiteHub(tmp_path / f"data{len(made)}", **settings)
        made.append(hub)
        return hub

    factory: Callable[..., SQLiteHub] = make
    monkeypatch.setattr(restart_tests, "InMemoryHub", factory)
    yield
    for hub in made:
        hub.close()


def test_the_tests_ran_here() -> None:
    names = [n for n in globals() if n.startswith("test_")]
    assert len(names) > 10
