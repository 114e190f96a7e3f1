"""SQLiteStore on real files: the journal round trip through ``load()`` (checked against
MemoryStore on random journals), order, message bodies stored once, expiry while the hub is
down, and the faults it must survive: newer schema, corrupt file, locked data directory, disk full,
a writer that falls behind. No sleeps: waits are on the store's own commit barrier."""

from __future__ import annotations

import asyncio
import hashlib
import random
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from thinghub.message import Message
from thinghub.mqtt.properties import Properties
from thinghub.registry.store import RegistryStore
from thinghub.store.backup import backup
from thinghub.store.base import QueuedDelivery, StoredDelivery, StoredState, StoredSubscription
from thinghub.store.errors import DataDirLocked, SchemaVersionError, StoreError, StoreOpenError
from thinghub.store.memory import MemoryStore
from thinghub.store.sqlite import FILE_NAME, MIGRATIONS, SQLiteStore, StoreLimits

A = "acct\x00a"
B = "acct\x00b"


class Clocks:
    """The broker's monotonic clock and the wall clock, moved by the test."""

    def __init__(self) -> None:
        self.mono = 500.0
        self.wall = 1_700_000_000.0

    def advance(self, seconds: float, *, down: bool = False) -> None:
        """Time passes; while the hub is ``down`` the monotonic clock starts over elsewhere."""
        self.wall += seconds
        self.mono = 10.0 if down else self.mono + seconds


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def open_store(tmp_path: Path, clocks: Clocks) -> Iterator[Callable[..., SQLiteStore]]:
    opened: list[SQLiteStore] = []

    def open_(data_dir: Path = tmp_path / "data", **kwargs: Any) -> SQLiteStore:
        store = SQLiteStore.open(
            data_dir, clock=lambda: clocks.mono, wall=lambda: clocks.wall, **kwargs
        )
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def message(mid: int, payload: bytes = b"p", **kwargs: Any) -> Message:
    return Message(topic=f"t/{mid}", payload=payload, qos=1, id=mid, account="acct", **kwargs)


def committed(store: SQLiteStore) -> bool:
    """Put a barrier in the journal and tell whether its callback ran (it has, if the group
    committed: without a loop, after_commit waits for the commit)."""
    ran: list[bool] = []
    store.after_commit(lambda: ran.append(True))
    return ran == [True]


def rows(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(data_dir / FILE_NAME)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# ---------------------------------------------------------------------------- round trips


def test_every_journal_call_round_trips(open_store: Callable[..., SQLiteStore], clocks: Clocks):
    store = open_store()
    store.save_session(A, 300)
    store.save_session(B, 0xFFFFFFFF)
    store.save_subscription(A, StoredSubscription("t/#", 2, True, True, 2, 7))
    store.save_subscription(A, StoredSubscription("gone", 1))
    store.delete_subscription(A, "gone")
    props = Properties(
        payload_format_indicator=1,
        content_type="application/json",
        response_topic="reply/here",
        correlation_data=b"\x00\xff",
        user_properties=(("k", "v"), ("k", "v2")),
    )
    body = message(11, b"\x00body", properties=props, retain=True, origin="dev1")
    body.expiry_interval = 60
    body.expires_at = clocks.mono + 60
    store.save_message(body)
    store.add_delivery(A, StoredDelivery(11, 2, True, (7, 9)))
    store.add_delivery(B, StoredDelivery(11, 1, False, (), packet_id=5))
    store.set_packet_id(A, 11, 3)
    store.set_released(A, 3)
    store.set_inbound_qos2(A, 4, True)
    store.set_inbound_qos2(A, 6, True)
    store.set_inbound_qos2(A, 6, False)
    kept = Message(topic="r/1", payload=b"r", qos=1, retain=True, id=12, account="acct")
    store.save_retained(kept)
    store.save_retained(Message(topic="r/2", payload=b"x", retain=True, id=13, account="acct"))
    store.delete_retained("acct", "r/2")
    store.session_disconnected(B, int(clocks.wall * 1000))
    assert committed(store)
    store.close()

    state = loaded(open_store())
    a, b = state.sessions[A], state.sessions[B]
    assert (a.client_id, a.account, a.expiry_interval) == ("a", "acct", 300)
    assert b.expiry_interval == 0xFFFFFFFF
    assert a.disconnected_at_ms is None and b.disconnected_at_ms == int(clocks.wall * 1000)
    assert list(a.subscriptions.values()) == [StoredSubscription("t/#", 2, True, True, 2, 7)]
    assert a.deliveries == [StoredDelivery(11, 2, True, (7, 9), 3, True)]
    assert b.deliveries == [StoredDelivery(11, 1, False, (), 5, False)]
    assert a.inbound_qos2 == {4}
    got = state.messages[11]
    assert (got.topic, got.payload, got.qos, got.retain, got.origin) == (
        "t/11",
        b"\x00body",
        1,
        True,
        "dev1",
    )
    assert got.properties == props and got.stored and got.expiry_interval == 60
    assert got.expires_at == pytest.approx(clocks.mono + 60)
    assert [(m.topic, m.payload, m.retain) for m in state.retained] == [("r/1", b"r", True)]
    assert len(rows(store.path.parent, "SELECT id FROM messages")) == 1  # one body, two refs


def test_deliveries_load_in_their_original_order(open_store: Callable[..., SQLiteStore]):
    store = open_store()
    store.save_session(A, 100)
    order = []
    for mid in range(1, 301):
        store.save_message(message(mid))
        store.add_delivery(A, StoredDelivery(mid, 1, False))
        order.append(mid)
        if mid % 7 == 0:
            store.remove_delivery(A, mid - 3)
            order.remove(mid - 3)
        if mid % 50 == 0:
            assert committed(store)  # group boundaries in between
    for mid in (100, 101, 102):
        store.set_packet_id(A, mid, mid)  # in flight now (102 is gone already)
    store.close()
    store = open_store()
    state = store.load()
    # In flight: listed, with their bodies; queued: counted, and read back in pages, in order.
    assert [d.message_id for d in state.sessions[A].deliveries] == [100, 101]
    assert set(state.messages) == {100, 101}
    assert state.sessions[A].queued == len(order) - 2
    queued = [mid for mid in order if mid not in (100, 101)]
    pages: list[list[int]] = []
    while sum(map(len, pages)) < len(queued):
        page: list[QueuedDelivery] = []
        store.read_queued(A, 64, page.extend)
        pages.append([d.message_id for d, _m in page])
        for d, _m in page:  # taken: in flight, then acknowledged
            store.set_packet_id(A, d.message_id, 1)
            store.remove_delivery(A, d.message_id)
    assert len(pages) == 4 and all(len(p) == 64 for p in pages)  # 256 queued
    assert [mid for p in pages for mid in p] == queued


def test_a_message_body_goes_with_its_last_delivery(
    open_store: Callable[..., SQLiteStore], tmp_path: Path
):
    store = open_store()
    for key in (A, B):
        store.save_session(key, 100)
    store.save_message(message(1))
    store.add_delivery(A, StoredDelivery(1, 1, False))
    store.add_delivery(B, StoredDelivery(1, 1, False))
    assert committed(store)
    store.remove_delivery(A, 1)
    assert committed(store)
    assert rows(tmp_path / "data", "SELECT id FROM messages") == [(1,)]
    store.remove_delivery(B, 1)
    assert committed(store)
    assert rows(tmp_path / "data", "SELECT id FROM messages") == []
    store.save_message(message(2))
    store.add_delivery(A, StoredDelivery(2, 1, False))
    assert committed(store)
    store.delete_session(A)
    assert committed(store)
    assert rows(tmp_path / "data", "SELECT count(*) FROM messages") == [(0,)]


def test_a_delivery_acknowledged_within_its_group_is_never_written(
    open_store: Callable[..., SQLiteStore], tmp_path: Path
):
    store = open_store()
    store.save_session(A, 100)
    store.save_message(message(1))
    store.add_delivery(A, StoredDelivery(1, 2, False, packet_id=9))
    store.set_released(A, 9)
    store.remove_delivery(A, 1)
    assert committed(store)
    assert rows(tmp_path / "data", "SELECT count(*) FROM messages") == [(0,)]
    assert rows(tmp_path / "data", "SELECT count(*) FROM deliveries") == [(0,)]


class JournalFuzz:
    """Random journals as the broker makes them (a delivery is added once per session and
    message, a packet id is set on a queued one, released on an in-flight one)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.sessions: dict[str, list[list[int]]] = {}
        self.next_id = 1

    def step(self, stores: list[Any], flush: Callable[[], None]) -> None:
        rng = self.rng
        roll = rng.random()
        keys = list(self.sessions)
        if roll < 0.08 or not keys:
            key = f"acct\x00c{rng.randrange(6)}"
            self.sessions.setdefault(key, [])
            expiry = rng.choice((10, 100, 0xFFFFFFFF))
            for s in stores:
                s.save_session(key, expiry)
        elif roll < 0.11:
            key = rng.choice(keys)
            del self.sessions[key]
            for s in stores:
                s.delete_session(key)
        elif roll < 0.45:
            mid = self.next_id
            self.next_id += 1
            body = message(mid, rng.randbytes(rng.randrange(1, 40)))
            targets = rng.sample(keys, rng.randrange(0, min(3, len(keys)) + 1))
            if targets:
                for s in stores:
                    s.save_message(body)
            for key in targets:
                pid = rng.choice((0, 0, mid % 65535 + 1))
                qos = rng.choice((1, 2))
                self.sessions[key].append([mid, pid, qos])
                for s in stores:
                    s.add_delivery(key, StoredDelivery(mid, qos, False, (mid % 5,), pid))
        elif roll < 0.6:
            key = rng.choice(keys)
            queued = [d for d in self.sessions[key] if d[1] == 0]
            if queued:
                d = rng.choice(queued)
                d[1] = d[0] % 65535 + 1
                for s in stores:
                    s.set_packet_id(key, d[0], d[1])
        elif roll < 0.68:
            key = rng.choice(keys)
            flying = [d for d in self.sessions[key] if d[1] and d[2] == 2]
            if flying:
                d = rng.choice(flying)
                d[2] = 0  # released once
                for s in stores:
                    s.set_released(key, d[1])
        elif roll < 0.88:
            key = rng.choice(keys)
            if self.sessions[key]:
                d = self.sessions[key].pop(rng.randrange(len(self.sessions[key])))
                for s in stores:
                    s.remove_delivery(key, d[0])
        elif roll < 0.92:
            key = rng.choice(keys)
            pid, present = rng.randrange(1, 5), rng.random() < 0.6
            for s in stores:
                s.set_inbound_qos2(key, pid, present)
        elif roll < 0.95:
            key = rng.choice(keys)
            sub = StoredSubscription(f"f/{rng.randrange(4)}", rng.randrange(3))
            for s in stores:
                s.save_subscription(key, sub)
        elif roll < 0.97:
            key, gone = rng.choice(keys), f"f/{rng.randrange(4)}"
            for s in stores:
                s.delete_subscription(key, gone)
        else:
            flush()


def loaded(store: SQLiteStore | MemoryStore) -> StoredState:
    """``load()``, with each session's queued deliveries read back (``read_queued``) after
    its in-flight ones, bodies included: the whole stored state, for comparisons."""
    state = store.load()
    for key, session in state.sessions.items():
        page: list[QueuedDelivery] = []
        store.read_queued(key, 1 << 30, page.extend)
        assert len(page) == session.queued
        assert sum(len(m.payload) + len(m.topic) for _d, m in page) == session.queued_bytes
        for delivery, body in page:
            session.deliveries.append(delivery)
            state.messages[body.id] = body
    return state


def normal(state: StoredState) -> Any:
    sessions = {
        key: (
            s.client_id,
            s.account,
            s.expiry_interval,
            sorted(s.subscriptions.items()),
            [
                (d.message_id, d.qos, d.subscription_ids, d.packet_id, d.released)
                for d in s.deliveries
            ],
            sorted(s.inbound_qos2),
        )
        for key, s in state.sessions.items()
    }
    referenced = {d.message_id for s in state.sessions.values() for d in s.deliveries}
    bodies = {mid: state.messages[mid].payload for mid in referenced}
    return sessions, bodies


@pytest.mark.parametrize("seed", range(6))
def test_random_journals_load_as_memory_store_does(
    seed: int, open_store: Callable[..., SQLiteStore]
):
    memory = MemoryStore()
    store = open_store()
    fuzz = JournalFuzz(seed)
    for _ in range(1500):
        fuzz.step([memory, store], lambda: store.flush())
    store.close()
    assert normal(loaded(open_store())) == normal(loaded(memory))


# ---------------------------------------------------------------------------- expiry while down


def test_expiry_counts_while_the_hub_is_down(
    open_store: Callable[..., SQLiteStore], clocks: Clocks
):
    store = open_store()
    for key, expiry in ((A, 60), (B, 0xFFFFFFFF), ("acct\x00live", 60), ("acct\x00late", 3600)):
        store.save_session(key, expiry)
    now_ms = int(clocks.wall * 1000)
    store.session_disconnected(A, now_ms)
    store.session_disconnected(B, now_ms)
    store.session_disconnected("acct\x00late", now_ms)
    short, long, never = message(1), message(2), message(3)
    short.expires_at = clocks.mono + 30
    long.expires_at = clocks.mono + 600
    for body in (short, long, never):
        store.save_message(body)
        store.add_delivery("acct\x00late", StoredDelivery(body.id, 1, False))
    retained = Message(topic="r", payload=b"r", retain=True, id=9, account="acct")
    retained.expires_at = clocks.mono + 30
    store.save_retained(retained)
    store.close()

    clocks.advance(120, down=True)
    state = loaded(open_store())
    # A (60 s, disconnected) is gone; B never expires; "live" was connected when the hub
    # stopped (its clock starts at restart); "late" has an hour.
    assert set(state.sessions) == {B, "acct\x00live", "acct\x00late"}
    assert [d.message_id for d in state.sessions["acct\x00late"].deliveries] == [2, 3]
    assert state.messages[2].expires_at == pytest.approx(clocks.mono + 480)
    assert state.messages[3].expires_at is None
    assert state.retained == []


def test_messages_past_the_retention_period_are_dropped(
    open_store: Callable[..., SQLiteStore], clocks: Clocks
):
    store = open_store(limits=StoreLimits(retention_s=3600))
    store.save_session(A, 0xFFFFFFFF)
    store.save_message(message(1))
    store.add_delivery(A, StoredDelivery(1, 1, False))
    store.close()
    clocks.advance(3601, down=True)
    assert loaded(open_store(limits=StoreLimits(retention_s=3600))).sessions[A].deliveries == []


# ---------------------------------------------------------------------------- migrations


def test_a_version_1_file_is_migrated_with_its_data(
    open_store: Callable[..., SQLiteStore], tmp_path: Path
):
    """A broker.db written by the first release (schema 1, no deliveries_queued index) opens,
    is migrated in place, and its queue reads back in pages."""
    data = tmp_path / "data"
    data.mkdir()
    conn = sqlite3.connect(data / FILE_NAME)
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("INSERT INTO sessions VALUES (?, 'acct', 'a', 100, NULL)", (A,))
    for mid in (1, 2, 3):
        conn.execute(
            "INSERT INTO messages VALUES (?, 'acct', 't', ?, 1, 0, NULL, 'p', NULL, NULL, ?)",
            (mid, f"m{mid}".encode(), 1_700_000_000_000),
        )
        conn.execute(
            "INSERT INTO deliveries (session_key, message_id, qos, retain, subscription_ids, "
            "packet_id, released) VALUES (?, ?, 1, 0, NULL, ?, 0)",
            (A, mid, 7 if mid == 1 else 0),
        )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()

    store = open_store()
    state = store.load()
    assert rows(data, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert ("deliveries_queued",) in rows(data, "SELECT name FROM sqlite_master")
    assert [(d.message_id, d.packet_id) for d in state.sessions[A].deliveries] == [(1, 7)]
    page: list[QueuedDelivery] = []
    store.read_queued(A, 10, page.extend)
    assert [(d.message_id, m.payload) for d, m in page] == [(2, b"m2"), (3, b"m3")]


# ---------------------------------------------------------------------------- faults at open


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_newer_schema_is_refused_and_left_alone(
    open_store: Callable[..., SQLiteStore], tmp_path: Path
):
    open_store().close()
    path = tmp_path / "data" / FILE_NAME
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    before = digest(path)
    with pytest.raises(SchemaVersionError, match="newer ThingHub"):
        open_store()
    assert digest(path) == before
    # The refusal released the lock: the directory is usable once the file is dealt with.
    path.unlink()
    open_store().close()


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(
    open_store: Callable[..., SQLiteStore], tmp_path: Path
):
    data = tmp_path / "data"
    data.mkdir()
    path = data / FILE_NAME
    path.write_bytes(b"definitely not sqlite\n" * 500)
    before = digest(path)
    with pytest.raises(StoreOpenError, match="damaged or is not a ThingHub broker database"):
        open_store()
    assert digest(path) == before
    assert sorted(p.name for p in data.iterdir()) == [FILE_NAME, "thinghub.lock"]


def test_a_data_directory_in_use_is_refused(open_store: Callable[..., SQLiteStore]):
    first = open_store()
    with pytest.raises(DataDirLocked, match="in use by another running ThingHub"):
        open_store()
    first.close()
    open_store().close()  # released at close


# ---------------------------------------------------------------------------- faults at run time


def test_disk_full_keeps_old_data_holds_acks_until_written_and_recovers(
    open_store: Callable[..., SQLiteStore], tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    # A hard limit just above the empty schema stands in for a full disk: SQLite answers
    # "database or disk is full" (SQLITE_FULL), as it does when the disk is.
    store = open_store(limits=StoreLimits(hard_size_bytes=64 * 1024))
    store.save_session(A, 100)
    store.save_message(message(1, b"small"))
    store.add_delivery(A, StoredDelivery(1, 1, False))
    assert committed(store)
    before = rows(tmp_path / "data", "SELECT id, payload FROM messages")

    store.save_message(message(2, b"x" * 300_000))
    store.add_delivery(A, StoredDelivery(2, 1, False))
    withheld: list[str] = []
    store.after_commit(lambda: withheld.append("acked"))
    assert withheld == []  # not acknowledged while its message is not on disk
    assert not store.accepting
    store.save_message(message(3, b"y" * 300_000))
    store.add_delivery(A, StoredDelivery(3, 1, False))
    assert not committed(store)  # still full: nothing new is acknowledged either
    assert [r.getMessage() for r in caplog.records].count(
        next(r.getMessage() for r in caplog.records if "cannot write" in r.getMessage())
    ) == 1  # logged once
    assert rows(tmp_path / "data", "SELECT id, payload FROM messages") == before
    assert rows(tmp_path / "data", "PRAGMA integrity_check") == [("ok",)]

    store.set_limits(StoreLimits())  # room again
    assert store.flush(timeout=30)
    assert store.accepting
    assert committed(store)
    # Held while failing, run once the retried calls are on disk: the acknowledgement is
    # late but true, and nothing that waits on a commit (QoS 2 deliveries, ordered acks)
    # is left waiting for ever.
    assert withheld == ["acked"]
    store.close()
    # The journal calls of the failed groups were retried: disk caught up with memory.
    state = loaded(open_store())
    assert [d.message_id for d in state.sessions[A].deliveries] == [1, 2, 3]


def test_a_writer_behind_its_bounds_stops_accepting(open_store: Callable[..., SQLiteStore]):
    store = open_store(limits=StoreLimits(max_pending_calls=10, max_pending_bytes=50_000))
    assert store.accepting
    for pid in range(1, 10):
        store.set_inbound_qos2(A, pid, True)
    assert store.accepting  # 9 calls not on disk yet (without a loop they wait for a flush)
    store.set_inbound_qos2(A, 10, True)
    assert not store.accepting and store.pending_calls == 10
    assert store.flush()
    assert store.accepting and store.pending_calls == 0
    store.save_message(message(1, b"z" * 60_000))
    assert not store.accepting  # bytes bound
    assert store.flush()
    assert store.accepting


def test_past_the_size_limit_the_store_stops_accepting(
    open_store: Callable[..., SQLiteStore],
):
    store = open_store(limits=StoreLimits(max_size_bytes=256 * 1024))
    store.save_session(A, 100)
    for mid in range(1, 5):
        store.save_message(message(mid, b"s" * 100_000))
        store.add_delivery(A, StoredDelivery(mid, 1, False))
    assert committed(store)
    assert not store.accepting
    for mid in range(1, 5):
        store.remove_delivery(A, mid)
    assert committed(store)
    assert store.accepting  # freed pages count as free


# ---------------------------------------------------------------------------- with a loop


def test_groups_commit_off_the_loop_and_callbacks_run_on_it_in_order(
    open_store: Callable[..., SQLiteStore], tmp_path: Path
):
    async def main() -> tuple[list[int], set[int], int]:
        loop = asyncio.get_running_loop()
        store = SQLiteStore.open(tmp_path / "looped", loop=loop)
        store.save_session(A, 100)
        order: list[int] = []
        threads: set[int] = set()
        done = asyncio.Event()
        count = 2000

        def acked(i: int) -> None:
            order.append(i)
            threads.add(threading.get_ident())
            if i == count - 1:
                done.set()

        for i in range(count):
            store.save_message(message(i + 1))
            store.add_delivery(A, StoredDelivery(i + 1, 1, False))
            store.after_commit(lambda i=i: acked(i))
            if i % 100 == 99:
                await asyncio.sleep(0)  # let the loop seal a batch now and then
        await asyncio.wait_for(done.wait(), 30)
        store.close()
        return order, threads, threading.get_ident()

    order, threads, loop_thread = asyncio.run(main())
    assert order == list(range(2000))
    assert threads == {loop_thread}
    state = loaded(open_store(tmp_path / "looped"))
    assert len(state.sessions[A].deliveries) == 2000


# ---------------------------------------------------------------------------- backup


def test_backup_copies_both_databases_while_they_are_open(
    open_store: Callable[..., SQLiteStore], tmp_path: Path
):
    store = open_store()
    registry = RegistryStore.open(tmp_path / "data")
    registry.set_meta("probe", 42)
    store.save_session(A, 100)
    store.save_message(message(1, b"kept"))
    store.add_delivery(A, StoredDelivery(1, 1, False))
    assert committed(store)  # in the WAL, not yet checkpointed into broker.db
    written = backup(tmp_path / "data", tmp_path / "copy")
    assert sorted(p.name for p in written) == ["broker.db", "registry.db"]
    registry.close()
    store.close()
    copy = loaded(open_store(tmp_path / "copy"))
    assert copy.messages[1].payload == b"kept"
    assert RegistryStore.open(tmp_path / "copy").get_meta("probe") == 42
    with pytest.raises(StoreError, match="holds no ThingHub database"):
        backup(tmp_path / "nothing", tmp_path / "copy2")


def test_backup_copies_the_hub_certificate_authority_with_its_key_kept_private(
    tmp_path: Path,
) -> None:
    """A hub restored from a backup keeps its CA: the certificates it issued still verify."""
    data = tmp_path / "data"
    RegistryStore.open(data).close()
    ca = data / "ca"
    ca.mkdir(mode=0o700)
    (ca / "ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    key = ca / "ca.key"
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o600)
    written = backup(data, tmp_path / "copy")
    copied = tmp_path / "copy" / "ca"
    assert {p.name for p in written} >= {"registry.db", "ca.pem", "ca.key"}
    assert (copied / "ca.key").read_bytes() == key.read_bytes()
    assert (copied / "ca.key").stat().st_mode & 0o777 == 0o600
    assert copied.stat().st_mode & 0o777 == 0o700
    assert not list(copied.glob(".*.partial"))
