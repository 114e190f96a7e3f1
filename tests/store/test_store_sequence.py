"""The store owns the sequence number acknowledgements wait on (store/base.py
``BrokerStore.sequence``): every call that changes the store advances it, inside the store,
and the calls that change nothing do not. A write method that forgot would let an
acknowledgement leave before its fsync; this test lists the Protocol's methods, so a new write
method is covered the day it is added."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from thinghub.message import Message
from thinghub.store.base import BrokerStore, StoredDelivery, StoredSubscription
from thinghub.store.memory import MemoryStore
from thinghub.store.sqlite import SQLiteStore

KEY = "acct\x00device-1"
MESSAGE = Message(topic="t/1", payload=b"x", qos=1, id=7, account="acct")

# How to call each write method of the Protocol with valid arguments, in an order that makes
# each call meaningful (the session exists before its deliveries...).
WRITES: dict[str, Callable[[Any], None]] = {
    "save_session": lambda s: s.save_session(KEY, 60),
    "session_connected": lambda s: s.session_connected(KEY),
    "save_subscription": lambda s: s.save_subscription(KEY, StoredSubscription("t/#", 1)),
    "save_message": lambda s: s.save_message(MESSAGE),
    "add_delivery": lambda s: s.add_delivery(KEY, StoredDelivery(7, 1, False)),
    "set_packet_id": lambda s: s.set_packet_id(KEY, 7, 1),
    "set_released": lambda s: s.set_released(KEY, 1),
    "set_inbound_qos2": lambda s: s.set_inbound_qos2(KEY, 5, True),
    "remove_delivery": lambda s: s.remove_delivery(KEY, 7),
    "save_retained": lambda s: s.save_retained(MESSAGE),
    "delete_retained": lambda s: s.delete_retained("acct", "t/1"),
    "delete_subscription": lambda s: s.delete_subscription(KEY, "t/#"),
    "session_disconnected": lambda s: s.session_disconnected(KEY, 1_000),
    "delete_session": lambda s: s.delete_session(KEY),
}
# Calls that change nothing: they must not make anyone wait.
NOT_WRITES = {"sequence", "accepting", "after_commit", "read_queued", "load"}


def test_every_method_of_the_protocol_is_classified() -> None:
    methods = {
        name
        for name, _ in inspect.getmembers(BrokerStore)
        if not name.startswith("_") and name in BrokerStore.__dict__
    }
    assert methods == set(WRITES) | NOT_WRITES


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    sqlite = SQLiteStore.open(tmp_path)
    try:
        yield sqlite
    finally:
        sqlite.close()


def test_each_write_advances_the_sequence_by_one(store: BrokerStore) -> None:
    for name, call in WRITES.items():
        before = store.sequence
        call(store)
        assert store.sequence == before + 1, name


def test_barriers_and_page_reads_do_not_advance_it(store: BrokerStore) -> None:
    WRITES["save_session"](store)
    before = store.sequence
    seen: list[object] = []
    store.after_commit(lambda: seen.append("commit"))
    store.read_queued(KEY, 10, seen.append)
    if isinstance(store, SQLiteStore):
        assert store.flush(timeout=10)
    assert seen == ["commit", []]
    assert store.sequence == before
