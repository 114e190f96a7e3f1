"""tests/broker/test_broker_restart.py, re-run with the broker on a real ``broker.db``: every
restart there closes the SQLite file and opens it again (``SQLiteHub``). The tests of the commit
barrier itself (``DeferredStore``) are about the broker, not the store, and are not repeated."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import test_broker_restart as restart_tests
from harness import V5
from sqlitehub import SQLiteHub

from thinghub.store.sqlite import StoreLimits

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


def test_queued_messages_past_the_retention_period_are_dropped_when_read(tmp_path: Path) -> None:
    """Retention (7 days by default) also runs while the hub runs: a queued message
    read back from disk after its retention period is dropped, as an expired one is."""
    hub = SQLiteHub(tmp_path / "data", limits=StoreLimits(retention_s=3600))
    sub = hub.client(V5)
    sub.connect("sub", clean_start=False, session_expiry=86400)
    sub.subscribe("t", qos=1)
    sub.drop()
    pub = hub.connect("pub", V5)
    pub.publish("t", b"old-1", 1)
    pub.publish("t", b"old-2", 1)
    hub.advance(1800)
    pub.publish("t", b"recent", 1)
    hub.advance(1801)  # old ones: 3601 s queued; the recent one: 1801 s
    again = hub.client(V5)
    assert again.connect("sub", clean_start=False, session_expiry=86400).session_present
    got = again.publishes()
    assert [p.payload for p in got] == [b"recent"]
    assert got[0].properties.message_expiry_interval is None  # retention is not sent
    assert hub.stats.dropped_expired == 2
    again.ack(got[0])
    again.drop()
    hub.restart()
    back = hub.client(V5)
    assert back.connect("sub", clean_start=False, session_expiry=86400).session_present
    back.assert_nothing_pending()  # the dropped ones left the disk too
    hub.close()
