"""The durable ``BrokerStore``: ``broker.db`` in the data directory.

Theory of operation
-------------------
The broker reports every change that must survive a restart as a journal of small calls
(``base.py``). Those calls are made on the event loop thread, on the hot path, so here each one
only appends a tuple to a list. Everything else happens on ONE writer thread:

1. *Sealing.* The first call after a seal schedules ``_seal`` with ``loop.call_soon``. It runs
   between two callbacks of the loop, never inside one, so a sealed batch always holds whole
   publishes: a message body and every delivery that refers to it travel together.
2. *Group commit.* The writer takes every batch sealed so far and applies them in ONE
   transaction, then commits: one fsync for what may be thousands of calls. While it commits,
   the loop keeps sealing new batches, which become the next group. Durability costs one fsync
   per group, not per message ("committed in groups ... so durability costs little").
3. *Coalescing.* Within a group, a delivery added and removed again (an online persistent
   session that acknowledged before the commit) is dropped altogether, with its packet id and
   QoS 2 updates, and so is a message body that no surviving delivery needs. Copies of one
   message to one session are interchangeable, so a removal cancels the oldest pending copy.
4. *Acknowledgements.* ``after_commit(callback)`` puts a barrier into the journal. After the
   group holding it commits, the writer hands the group's callbacks to the loop thread
   (``call_soon_threadsafe``, one call per group), which sends the PUBACKs/PUBRECs and answers
   the HTTP publishers. Acknowledged therefore means on disk (docs/architecture.md).

Faults
------
* A group that fails to commit (``sqlite3.OperationalError``: "database or disk is full", an
  I/O error) is rolled back: the file keeps its last committed state, nothing old is touched.
  The group's callbacks are held (its publishers are not acknowledged while their messages are
  not on disk), the store stops ``accepting``, the failure is logged once, and the group's
  journal calls are retried with backoff (merged with what came after), so the file catches up
  with the broker's memory as soon as space is back; then the held callbacks run (late but
  true acknowledgements, and nothing in the broker that waits on a commit waits for ever), and
  recovery is logged once too.
* ``accepting`` is also False while the writer is behind past ``max_pending_calls`` /
  ``max_pending_bytes``, or while the database is past ``max_size_bytes``: the broker then
  refuses new QoS 1/2 work instead of accepting what it might lose. Past the soft size limit
  there is headroom up to a hard limit (``PRAGMA max_page_count``) so that work accepted just
  before the refusal still commits.
* Anything else the writer meets (a row read back that does not decode, a constraint
  violated, a bug) is not retried: it would fail again. The writer thread stops (it runs under
  ``health.supervised``), the traceback is logged once, and the store has *failed* for good
  (``failed``; ``/healthz`` answers 503 until the hub restarts): ``accepting`` is False, the
  open transaction is rolled back, nothing more is written, and no callback of a group that
  was not committed ever runs (no publisher is acknowledged for a message not on disk). What
  waited on a commit is told instead: pending page reads get an empty page (as for a read
  that fails), and the ``on_failed`` listeners run on the loop, then again whenever something
  waits on a commit after that, so that whoever waits gives up (an HTTP publisher gets its
  503 at once; the broker disconnects the MQTT clients whose acknowledgements wait, MQTT 5
  §4.13) instead of hanging.
* A file that is not a SQLite database, cannot be opened, or holds a newer schema raises a
  ``StoreError`` at open, before anything is written.

Compatibility notes (STYLE.md §3.14)
------------------------------------
* Schema version: ``PRAGMA user_version``. ``MIGRATIONS[i]`` takes the file from version ``i``
  to ``i + 1``; each runs in one transaction with its version bump. Append-only: never edit a
  migration that shipped. A file above ``len(MIGRATIONS)`` is refused, untouched.
* Times on disk are wall-clock milliseconds since the epoch (message expiry, session disconnect
  time, storage time), so expiry and retention count while the hub is down. The broker's own
  clock is monotonic; ``offset = wall() - clock()`` converts at each group and at load.
* Message properties are JSON (only the MQTT 5 properties that travel with a message), NULL
  when there are none.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..health import Health, heals, supervised
from ..message import Message
from ..mqtt.properties import NO_PROPERTIES, Properties
from ..observe.histogram import COMMIT_BOUNDS, Buckets
from .base import QueuedDelivery, StoredDelivery, StoredSession, StoredState, StoredSubscription
from .errors import SchemaVersionError, StoreOpenError
from .lock import DataDirLock
from .schema import apply_migrations

__all__ = ["COMPONENT", "FILE_NAME", "MIGRATIONS", "SQLiteStore", "StoreLimits"]

log = logging.getLogger("thinghub.store")

FILE_NAME = "broker.db"
#: the store's name in ``Health`` (``/healthz``, ``/metrics``)
COMPONENT = "store"
MIB = 1024 * 1024
# Session Expiry Interval 0xFFFFFFFF: the session never expires (§3.1.2.11.2).
NEVER_EXPIRES = 0xFFFFFFFF

# Version 1 (the first release).
_V1: tuple[str, ...] = (
    """CREATE TABLE sessions (
        key TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        client_id TEXT NOT NULL,
        expiry_interval INTEGER NOT NULL,
        disconnected_at_ms INTEGER
    )""",
    """CREATE TABLE subscriptions (
        session_key TEXT NOT NULL,
        full_filter TEXT NOT NULL,
        qos INTEGER NOT NULL,
        no_local INTEGER NOT NULL,
        retain_as_published INTEGER NOT NULL,
        retain_handling INTEGER NOT NULL,
        subscription_id INTEGER,
        PRIMARY KEY (session_key, full_filter)
    ) WITHOUT ROWID""",
    # A message body, stored once whatever the number of sessions it goes to.
    """CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        account TEXT NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        qos INTEGER NOT NULL,
        retain INTEGER NOT NULL,
        properties TEXT,
        origin TEXT NOT NULL,
        expiry_interval INTEGER,
        expires_at_ms INTEGER,
        stored_at_ms INTEGER NOT NULL
    )""",
    # One message towards one session; seq (the rowid, always max + 1) is the delivery order.
    """CREATE TABLE deliveries (
        seq INTEGER PRIMARY KEY,
        session_key TEXT NOT NULL,
        message_id INTEGER NOT NULL,
        qos INTEGER NOT NULL,
        retain INTEGER NOT NULL,
        subscription_ids TEXT,
        packet_id INTEGER NOT NULL,
        released INTEGER NOT NULL
    )""",
    "CREATE INDEX deliveries_by_session ON deliveries (session_key, message_id)",
    # Is a message body still referenced? (checked when a delivery goes)
    "CREATE INDEX deliveries_by_message ON deliveries (message_id)",
    # PUBREC -> set_released(session, packet id); only in-flight rows have a packet id.
    "CREATE INDEX deliveries_in_flight ON deliveries (session_key, packet_id) WHERE packet_id <> 0",
    """CREATE TABLE inbound_qos2 (
        session_key TEXT NOT NULL,
        packet_id INTEGER NOT NULL,
        PRIMARY KEY (session_key, packet_id)
    ) WITHOUT ROWID""",
    # Retained messages keep their own copy of the body: they live by topic, not by session.
    """CREATE TABLE retained (
        account TEXT NOT NULL,
        topic TEXT NOT NULL,
        id INTEGER NOT NULL,
        payload BLOB NOT NULL,
        qos INTEGER NOT NULL,
        properties TEXT,
        origin TEXT NOT NULL,
        expiry_interval INTEGER,
        expires_at_ms INTEGER,
        stored_at_ms INTEGER NOT NULL,
        PRIMARY KEY (account, topic)
    ) WITHOUT ROWID""",
)

# Version 2: queued deliveries are read in pages (``read_queued``), oldest first, so the hub
# need not hold them in memory: this index serves "the next page of this session's queue"
# without sorting the session's whole backlog.
_V2: tuple[str, ...] = (
    "CREATE INDEX deliveries_queued ON deliveries (session_key, seq) WHERE packet_id = 0",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2)


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """Bounds of the store (docs/architecture.md "Everything is bounded")."""

    # Journal calls / bytes (message bodies, plus ~100 bytes a call) written by the broker
    # and not committed yet; past either, ``accepting`` is False.
    max_pending_calls: int = 200_000
    max_pending_bytes: int = 64 * MIB
    # Size of the live data in broker.db; past it, ``accepting`` is False. 0: no limit.
    max_size_bytes: int = 0
    # The hard limit (``PRAGMA max_page_count``) where commits fail; None: the soft limit plus
    # a quarter (at least 16 MiB), room for the work accepted before the refusal took effect.
    hard_size_bytes: int | None = None
    # Queued messages older than this are dropped at start-up (7 days by default).
    retention_s: int = 7 * 24 * 3600


# Journal opcodes: the first item of each journal tuple.
_SESSION = 0  # (op, session_key, expiry_interval)
_DEL_SESSION = 1  # (op, session_key)
_SUB = 2  # (op, session_key, StoredSubscription)
_DEL_SUB = 3  # (op, session_key, full_filter)
_MESSAGE = 4  # (op, Message)
_ADD = 5  # (op, session_key, StoredDelivery)
_PACKET_ID = 6  # (op, session_key, message_id, packet_id)
_RELEASED = 7  # (op, session_key, packet_id)
_REMOVE = 8  # (op, session_key, message_id)
_QOS2_IN = 9  # (op, session_key, packet_id, present)
_RETAIN = 10  # (op, Message)
_DEL_RETAIN = 11  # (op, account, topic)
_CONNECTED = 12  # (op, session_key)
_DISCONNECTED = 13  # (op, session_key, at_ms)
_BARRIER = 14  # (op, callback)
_READ = 15  # (op, session_key, limit, callback)

Op = tuple[Any, ...]
# What runs once a group is committed: a callback, or a ``_READ`` entry whose page is read first.
AfterCommit = Callable[[], None] | Op
# A group's bookkeeping: (journal calls, pending-bytes estimate).
_CALL_BYTES = 100


class SQLiteStore:
    """``BrokerStore`` on ``<data_dir>/broker.db``; see the module notes.

    With ``loop`` given, calls come from that loop's thread, batches are sealed by the loop and
    callbacks run on it. Without a loop (tests, command-line tools) the store is synchronous
    for its caller: ``after_commit`` waits for the commit and runs the callback before it
    returns."""

    def __init__(
        self,
        path: str | Path,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        clock: Callable[[], float] | None = None,
        wall: Callable[[], float] = time.time,
        limits: StoreLimits | None = None,
        lock: DataDirLock | None = None,
        own_lock: bool = False,
        health: Health | None = None,
    ) -> None:
        self.path = Path(path)
        self.limits = limits or StoreLimits()
        self._loop = loop
        # The broker's clock (Message.expires_at is a reading of it) and the wall clock.
        self._clock: Callable[[], float] = clock or (loop.time if loop else time.monotonic)
        self._wall = wall
        self._lock = lock
        self._own_lock = own_lock
        self._conn = _open(self.path)
        try:
            self._configure(self._conn)
        except BaseException:
            self._conn.close()
            raise
        # Loop-thread state: the open journal and the counters it alone writes.
        self._journal: list[Op] = []
        # BrokerStore.sequence: writes reported so far (loop thread).
        self.sequence = 0
        self._journal_bytes = 0
        self._seal_requested = False
        self._sealed_calls = 0
        self._sealed_bytes = 0
        # Handed over to the writer; deque append/popleft are thread-safe.
        self._batches: deque[tuple[list[Op], int, int]] = deque()
        # Writer-thread state, read (never written) by other threads.
        self._done_calls = 0
        self._done_bytes = 0
        self._failing: str | None = None  # the write error while writing fails, else None
        self._over_size = False
        # What the writer holds (taken from ``_batches``, and callbacks of groups that failed
        # to commit): read by the loop once the writer has stopped (``_abandon``).
        self._taken: list[Op] = []
        self._held: list[AfterCommit] = []
        # Why the writer stopped for good (see the module notes), None while it works.
        self.failed: str | None = None
        # Loop-thread state: the on_failed listeners.
        self._listeners: dict[int, Callable[[], None]] = {}
        self._listener_ids = 0
        self._notify_scheduled = False
        self._health = health if health is not None else Health()
        self._health.register(COMPONENT)
        self._stopping = False
        self._closed = False
        self._refusing_logged = False
        self._limits_changed = False
        # Callbacks of committed groups, for the loop-less mode.
        self._ready: deque[Callable[[], None]] = deque()
        self._update_size(self._conn)
        self._wake = threading.Event()
        self._progress = threading.Condition()
        # How long each committed group took (its transaction and fsync), for /metrics;
        # written by the writer thread only (observe/histogram.py).
        self.commit_seconds = Buckets(COMMIT_BOUNDS)
        run = supervised(
            self._health,
            COMPONENT,
            self._run,
            consequence=f"{self.path} is not written any more and new QoS 1/2 messages are "
            "refused; what waited for a commit is refused",
            on_failure=self._writer_failed,
        )
        self._thread = threading.Thread(target=run, name="thinghub-store", daemon=True)
        self._thread.start()

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        clock: Callable[[], float] | None = None,
        wall: Callable[[], float] = time.time,
        limits: StoreLimits | None = None,
        lock: DataDirLock | None = None,
        health: Health | None = None,
    ) -> SQLiteStore:
        """Open (creating if needed) ``<data_dir>/broker.db``. Without ``lock`` the data
        directory is locked here (``DataDirLocked`` if another hub has it) until ``close``.
        ``health``: where the writer reports (``thinghub/health.py``)."""
        directory = Path(data_dir)
        own = lock is None
        if lock is None:
            lock = DataDirLock.acquire(directory)
        try:
            return cls(
                directory / FILE_NAME,
                loop=loop,
                clock=clock,
                wall=wall,
                limits=limits,
                lock=lock,
                own_lock=own,
                health=health,
            )
        except BaseException:
            if own:
                lock.release()
            raise

    def _configure(self, conn: sqlite3.Connection) -> None:
        version = _schema_version(conn, self.path)
        if version > len(MIGRATIONS):
            raise SchemaVersionError(
                f"{self.path} has broker schema version {version}, but this ThingHub knows "
                f"versions up to {len(MIGRATIONS)}; it was written by a newer ThingHub. Run "
                "that version, or restore a backup made by this one."
            )
        conn.execute("PRAGMA busy_timeout = 5000")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreOpenError(f"{self.path}: cannot use WAL mode (got {mode!r})")
        # FULL, not NORMAL: in WAL mode NORMAL syncs only at checkpoints, so a commit survives
        # a process crash (kill -9) but may vanish on power loss or an OS crash. FULL syncs the
        # WAL at every commit; with group commit that is one fsync per group, which is what
        # "acknowledged means durable" costs (docs/architecture.md; "fsync per group").
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA temp_store = MEMORY")
        apply_migrations(conn, MIGRATIONS, version)
        self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        self._apply_size_limit(conn)

    def _apply_size_limit(self, conn: sqlite3.Connection) -> None:
        limits = self.limits
        hard = limits.hard_size_bytes
        if hard is None and limits.max_size_bytes:
            hard = max(limits.max_size_bytes * 5 // 4, limits.max_size_bytes + 16 * MIB)
        # SQLite's own maximum when there is no limit (it never goes below the current size).
        pages = max(1, hard // self._page_size) if hard else 0xFFFFFFFE
        conn.execute(f"PRAGMA max_page_count = {pages}")

    # ------------------------------------------------------------------ state for the broker

    @property
    def accepting(self) -> bool:
        if self._failing is not None or self._over_size or self.failed is not None:
            return False
        limits = self.limits
        calls = len(self._journal) + self._sealed_calls - self._done_calls
        if calls >= limits.max_pending_calls:
            return self._refuse("journal calls", calls)
        nbytes = self._journal_bytes + self._sealed_bytes - self._done_bytes + calls * _CALL_BYTES
        if nbytes >= limits.max_pending_bytes:
            return self._refuse("bytes", nbytes)
        self._refusing_logged = False
        return True

    def _refuse(self, what: str, amount: int) -> bool:
        if not self._refusing_logged:
            self._refusing_logged = True
            log.warning(
                "the store's writer is behind (%d %s not yet on disk): refusing new QoS 1/2 "
                "messages until it catches up",
                amount,
                what,
            )
        return False

    def set_limits(self, limits: StoreLimits) -> None:
        """Change the bounds of a running store (the writer applies the size limits before its
        next commit, so a store stopped by its hard limit can be let go on)."""
        self.limits = limits
        self._limits_changed = True
        self._wake.set()

    @property
    def pending_calls(self) -> int:
        """Journal calls not yet committed (for metrics and tests)."""
        return len(self._journal) + self._sealed_calls - self._done_calls

    # ------------------------------------------------------------------ the journal (loop thread)

    def _write(self, op: Op) -> None:
        """A journal call that changes the store: it takes the next sequence number."""
        self.sequence += 1
        self._append(op)

    def _append(self, op: Op) -> None:
        if self.failed is not None:
            self._after_failure(op)
            return
        self._journal.append(op)
        if not self._seal_requested and self._loop is not None:
            self._seal_requested = True
            self._loop.call_soon(self._seal)

    def save_session(self, session_key: str, expiry_interval: int) -> None:
        self._write((_SESSION, session_key, expiry_interval))

    def delete_session(self, session_key: str) -> None:
        self._write((_DEL_SESSION, session_key))

    def session_connected(self, session_key: str) -> None:
        self._write((_CONNECTED, session_key))

    def session_disconnected(self, session_key: str, at_ms: int) -> None:
        self._write((_DISCONNECTED, session_key, at_ms))

    def save_subscription(self, session_key: str, subscription: StoredSubscription) -> None:
        self._write((_SUB, session_key, subscription))

    def delete_subscription(self, session_key: str, full_filter: str) -> None:
        self._write((_DEL_SUB, session_key, full_filter))

    def save_message(self, message: Message) -> None:
        self._journal_bytes += len(message.payload) + len(message.topic)
        self._write((_MESSAGE, message))

    def add_delivery(self, session_key: str, delivery: StoredDelivery) -> None:
        self._write((_ADD, session_key, delivery))

    def set_packet_id(self, session_key: str, message_id: int, packet_id: int) -> None:
        self._write((_PACKET_ID, session_key, message_id, packet_id))

    def set_released(self, session_key: str, packet_id: int) -> None:
        self._write((_RELEASED, session_key, packet_id))

    def remove_delivery(self, session_key: str, message_id: int) -> None:
        self._write((_REMOVE, session_key, message_id))

    def set_inbound_qos2(self, session_key: str, packet_id: int, present: bool) -> None:
        self._write((_QOS2_IN, session_key, packet_id, present))

    def save_retained(self, message: Message) -> None:
        self._journal_bytes += len(message.payload) + len(message.topic)
        self._write((_RETAIN, message))

    def delete_retained(self, account: str, topic: str) -> None:
        self._write((_DEL_RETAIN, account, topic))

    def after_commit(self, callback: Callable[[], None]) -> None:
        self._append((_BARRIER, callback))
        if self._loop is None:
            self.flush()

    def read_queued(
        self,
        session_key: str,
        limit: int,
        callback: Callable[[list[QueuedDelivery]], None],
    ) -> None:
        # A journal entry like a barrier: the writer reads after committing the group that
        # holds it, so the page sees every delivery added and every packet id set before it.
        self._append((_READ, session_key, limit, callback))
        if self._loop is None:
            self.flush()

    def _seal(self) -> None:
        """Hand the open journal to the writer as one batch (loop thread)."""
        self._seal_requested = False
        ops = self._journal
        if not ops:
            return
        self._journal = []
        nbytes, self._journal_bytes = self._journal_bytes, 0
        self._sealed_calls += len(ops)
        self._sealed_bytes += nbytes
        self._batches.append((ops, len(ops), nbytes))
        self._wake.set()

    def flush(self, timeout: float | None = None) -> bool:
        """Seal the journal and wait until everything in it is committed; True if it was
        (False on timeout, or while writing fails). Without a loop, also runs the callbacks of
        committed groups. While writing fails it returns False at once, unless a ``timeout``
        says how long to wait for the writer's retries. Call it from the thread that makes the
        journal calls."""
        self._seal()
        target = self._sealed_calls
        give_up_on_failure = timeout is None
        with self._progress:
            self._progress.wait_for(
                lambda: (
                    self._done_calls >= target
                    or (give_up_on_failure and self._failing is not None)
                    or self.failed is not None
                    or not self._thread.is_alive()
                ),
                timeout,
            )
        if self._loop is None:
            _run_callbacks(self._drain_ready())
        return self._done_calls >= target

    def _drain_ready(self) -> list[Callable[[], None]]:
        ready = []
        while self._ready:
            ready.append(self._ready.popleft())
        return ready

    # ------------------------------------------------------------------ failure (loop thread)

    def on_failed(self, callback: Callable[[], None]) -> Callable[[], None]:
        """``BrokerStore.on_failed``: run ``callback`` on the loop when the writer has
        failed (on the next turn if it already has), and again whenever something waits on a
        commit after that. Returns the function that removes it."""
        key = self._listener_ids = self._listener_ids + 1
        self._listeners[key] = callback
        if self.failed is not None:
            self._later(callback)

        def remove() -> None:
            self._listeners.pop(key, None)

        return remove

    def _after_failure(self, op: Op) -> None:
        """A journal call once the writer has failed: nothing will commit it. A page read
        gets an empty page (the broker stops waiting for it, as for a read that fails); a
        barrier is never run (what it would acknowledge is not on disk), its waiter is told
        through the listeners; a write is dropped, so memory stays bounded."""
        kind = op[0]
        if kind == _READ:
            self._later(partial(op[3], []))
        elif kind == _BARRIER and not self._notify_scheduled:
            self._notify_scheduled = True
            self._later(self._notify)

    def _abandon(self) -> None:
        """Loop thread, once the writer has stopped for good: drop what it will never
        write, answer the page reads waiting with an empty page, tell the listeners."""
        pending: list[AfterCommit] = [*self._taken, *self._held, *self._journal]
        while self._batches:
            pending.extend(self._batches.popleft()[0])
        self._taken, self._held, self._journal = [], [], []
        self._journal_bytes = 0
        for entry in pending:
            if isinstance(entry, tuple) and entry[0] == _READ:
                _run_callbacks([partial(entry[3], [])])
        self._notify()

    def _notify(self) -> None:
        self._notify_scheduled = False
        for listener in list(self._listeners.values()):
            try:
                listener()
            except Exception:
                log.exception("an on_failed listener of the store failed")

    def _later(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop's next turn (without a loop: at the next flush)."""
        if self._loop is not None:
            self._loop.call_soon(callback)
        else:
            self._ready.append(callback)

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        conn = self._conn
        retry: list[Op] = []
        # Callbacks of groups that failed to commit: run once their retried calls commit.
        held: list[AfterCommit] = []
        retry_calls = retry_bytes = 0
        delay = 0.1
        while True:
            if not self._stopping:
                self._wake.wait(delay if retry else None)
            self._wake.clear()
            ops = list(retry)
            calls, nbytes = retry_calls, retry_bytes
            while self._batches:
                batch, n, b = self._batches.popleft()
                ops.extend(batch)
                calls += n
                nbytes += b
            if not ops:
                if self._stopping:
                    return
                continue
            self._taken, self._held = ops, held
            live, callbacks = _coalesce(ops)
            callbacks = held + callbacks
            # ``ready``: the callbacks with each read's page bound, filled inside the group's
            # transaction just before its COMMIT (see ``_commit``).
            ready: list[Callable[[], None]] = []
            try:
                started = time.perf_counter()
                self._commit(conn, live, callbacks, ready)
                if live:
                    self.commit_seconds.observe(time.perf_counter() - started)
            except Exception as error:
                if not heals(error):
                    # It would fail again: the store has failed (``_writer_failed``, run by
                    # ``supervised``), and this group's callbacks never run.
                    raise
                _rollback(conn)
                # The file keeps its last commit. The calls are retried, so disk catches up
                # with memory once there is room; their callbacks are held until then (the
                # publishers are acknowledged only once their messages are on disk, and the
                # broker's waits on commits, e.g. QoS 2 deliveries, resume then). Reads that
                # were served before the COMMIT failed go out now: a client can drain its
                # queue while the disk is full (the pages saw the group's uncommitted state,
                # which the retries keep re-applying, so a page never repeats a delivery).
                retry, retry_calls, retry_bytes = live, calls, nbytes
                if len(ready) == len(callbacks):
                    reads = [r for r, c in zip(ready, callbacks, strict=True) if _is_read(c)]
                    if reads:
                        self._dispatch(reads)
                    held = [c for c in callbacks if not _is_read(c)]
                else:
                    held = callbacks
                self._taken, self._held = [], held
                if self._failing is None:
                    log.error(
                        "cannot write %s (%s): refusing new QoS 1/2 messages; %d "
                        "acknowledgement(s) withheld; retrying",
                        self.path,
                        error,
                        len(callbacks),
                    )
                self._failing = str(error)
                self._report_degraded()
                with self._progress:
                    self._progress.notify_all()
                if self._stopping:
                    log.error(
                        "stopping with %d journal call(s) not written to %s; their publishers "
                        "were not acknowledged",
                        calls,
                        self.path,
                    )
                    return
                delay = min(delay * 2, 5.0)
                continue
            retry, retry_calls, retry_bytes, delay = [], 0, 0, 0.1
            held = []
            self._taken, self._held = [], []
            if self._failing is not None:
                self._failing = None
                self._report_degraded()
                log.warning("writing %s works again: accepting QoS 1/2 messages", self.path)
            # The group is committed: its acknowledgements go out before anything else can
            # fail on this thread (measuring the file's size reads it too).
            if ready:
                self._dispatch(ready)
            self._update_size(conn)
            with self._progress:
                self._done_calls += calls
                self._done_bytes += nbytes
                self._progress.notify_all()

    def _writer_failed(self, reason: str) -> None:
        """Writer thread, as it stops for good (``supervised``): refuse from now on, and
        have the loop tell whatever waits on a commit (``_abandon``)."""
        _rollback(self._conn)  # the group's transaction, if it was open
        with self._progress:
            # Together, so that a flush() that sees ``failed`` finds ``_abandon`` ready.
            self.failed = reason
            self._dispatch([self._abandon])
            self._progress.notify_all()  # flush() returns False now

    def _dispatch(self, callbacks: list[Callable[[], None]]) -> None:
        if self._loop is None:
            self._ready.extend(callbacks)
            return
        try:
            self._loop.call_soon_threadsafe(_run_callbacks, callbacks)
        except RuntimeError:  # the loop is closed: nobody is left to acknowledge
            pass

    def _update_size(self, conn: sqlite3.Connection) -> None:
        limit = self.limits.max_size_bytes
        if not limit:
            return
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        over = (pages - free) * self._page_size >= limit
        if over != self._over_size:
            self._over_size = over
            self._report_degraded()
            if over:
                log.warning(
                    "%s reached its size limit (%d bytes): refusing new QoS 1/2 messages",
                    self.path,
                    limit,
                )
            else:
                log.warning("%s is below its size limit again", self.path)

    def _report_degraded(self) -> None:
        """Writer thread: tell ``Health`` whether the store refuses QoS 1/2 work for a
        reason that passes (QoS 0 and everything else keep working meanwhile)."""
        if self._failing is not None:
            self._health.degrade(
                COMPONENT,
                f"cannot write {self.path} ({self._failing}): new QoS 1/2 messages are refused",
            )
        elif self._over_size:
            self._health.degrade(
                COMPONENT,
                f"{self.path} reached its size limit: new QoS 1/2 messages are refused",
            )
        else:
            self._health.recover(COMPONENT)

    def _commit(
        self,
        conn: sqlite3.Connection,
        ops: Sequence[Op],
        callbacks: Sequence[AfterCommit],
        ready: list[Callable[[], None]],
    ) -> None:
        """Write and commit ``ops``; fill ``ready`` with ``callbacks``, each read's page bound,
        read inside the transaction before its COMMIT (so it sees what it would see after)."""
        offset = self._clock() - self._wall()
        retention = self.limits.retention_s
        if not ops and not self._limits_changed:
            # Everything coalesced away: no transaction, no fsync.
            ready.extend(_read_page(conn, c, offset, retention) for c in callbacks)
            return
        if self._limits_changed:
            self._limits_changed = False
            self._apply_size_limit(conn)
        offset_ms = (self._wall() - self._clock()) * 1000.0
        now_ms = int(self._wall() * 1000)
        conn.execute("BEGIN IMMEDIATE")
        _write(conn, ops, now_ms, offset_ms)
        ready.extend(_read_page(conn, c, offset, retention) for c in callbacks)
        conn.execute("COMMIT")

    # ------------------------------------------------------------------ start-up and shutdown

    def load(self) -> StoredState:
        """What ``Broker.restore`` needs: sessions, subscriptions, in-flight deliveries in their
        original order with their bodies, queued deliveries counted, retained messages. Drops
        (from the file too) sessions whose expiry passed while the hub was down, messages
        whose expiry or retention passed, and anything no longer referenced."""
        self.flush()
        now_ms = int(self._wall() * 1000)
        offset = self._clock() - self._wall()
        conn = _open(self.path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                _collect_garbage(conn, now_ms, self.limits.retention_s * 1000)
                state = _read_state(conn, offset)
            except BaseException:
                _rollback(conn)
                raise
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as error:
            raise StoreOpenError(f"cannot read {self.path}: {error}") from None
        finally:
            conn.close()
        return state

    def close(self) -> None:
        """Commit what is pending, stop the writer, close the file, release the lock."""
        if self._closed:
            return
        self._closed = True
        self._seal()
        self._stopping = True
        self._wake.set()
        self._thread.join()
        if self._loop is None:
            _run_callbacks(self._drain_ready())
        self._conn.close()
        if self._own_lock and self._lock is not None:
            self._lock.release()


# ---------------------------------------------------------------------------- writing


def _coalesce(ops: list[Op]) -> tuple[list[Op], list[AfterCommit]]:
    """The group's calls with adds cancelled by later removes (and their packet id and
    release updates, and message bodies nobody needs any more) left out, and its callbacks."""
    out: list[Op | None] = list(ops)
    callbacks: list[AfterCommit] = []
    pending: dict[tuple[str, int], list[int]] = {}
    in_flight: dict[tuple[str, int], int] = {}
    saved: dict[int, int] = {}
    live_adds: dict[int, int] = {}
    for i, op in enumerate(ops):
        kind = op[0]
        if kind == _ADD:
            delivery: StoredDelivery = op[2]
            mid = delivery.message_id
            pending.setdefault((op[1], mid), []).append(i)
            live_adds[mid] = live_adds.get(mid, 0) + 1
            if delivery.packet_id:
                in_flight[(op[1], delivery.packet_id)] = i
        elif kind == _REMOVE:
            waiting = pending.get((op[1], op[2]))
            if waiting:
                j = waiting.pop(0)
                out[i] = out[j] = None
                live_adds[op[2]] -= 1
        elif kind == _PACKET_ID:
            for j in pending.get((op[1], op[2]), ()):
                delivery = ops[j][2]
                if out[j] is not None and not delivery.packet_id:
                    delivery.packet_id = op[3]
                    in_flight[(op[1], op[3])] = j
                    out[i] = None
                    break
        elif kind == _RELEASED:
            j = in_flight.get((op[1], op[2]), -1)
            if j >= 0 and out[j] is not None and ops[j][2].packet_id == op[2]:
                ops[j][2].released = True
                out[i] = None
        elif kind == _MESSAGE:
            saved[op[1].id] = i
        elif kind == _BARRIER:
            callbacks.append(op[1])
            out[i] = None
        elif kind == _READ:
            callbacks.append(op)
            out[i] = None
    for mid, i in saved.items():
        # Its deliveries came and went within the group (a batch holds whole publishes, so
        # none can follow in a later one): the body need not be written at all.
        if live_adds.get(mid, 1) == 0:
            out[i] = None
    return [op for op in out if op is not None], callbacks


_SQL = {
    _SESSION: "INSERT INTO sessions (key, account, client_id, expiry_interval) "
    "VALUES (?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET expiry_interval = excluded.expiry_interval",
    _SUB: "INSERT OR REPLACE INTO subscriptions (session_key, full_filter, qos, no_local, "
    "retain_as_published, retain_handling, subscription_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
    _DEL_SUB: "DELETE FROM subscriptions WHERE session_key = ? AND full_filter = ?",
    _MESSAGE: "INSERT OR REPLACE INTO messages (id, account, topic, payload, qos, retain, "
    "properties, origin, expiry_interval, expires_at_ms, stored_at_ms) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    _ADD: "INSERT INTO deliveries (session_key, message_id, qos, retain, subscription_ids, "
    "packet_id, released) VALUES (?, ?, ?, ?, ?, ?, ?)",
    _PACKET_ID: "UPDATE deliveries SET packet_id = ? WHERE seq = (SELECT min(seq) FROM "
    "deliveries WHERE session_key = ? AND message_id = ? AND packet_id = 0)",
    _RELEASED: "UPDATE deliveries SET released = 1 "
    "WHERE session_key = ? AND packet_id = ? AND packet_id <> 0",
    _REMOVE: "DELETE FROM deliveries WHERE seq = (SELECT min(seq) FROM deliveries "
    "WHERE session_key = ? AND message_id = ?)",
    _RETAIN: "INSERT OR REPLACE INTO retained (account, topic, id, payload, qos, properties, "
    "origin, expiry_interval, expires_at_ms, stored_at_ms) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    _DEL_RETAIN: "DELETE FROM retained WHERE account = ? AND topic = ?",
    _CONNECTED: "UPDATE sessions SET disconnected_at_ms = NULL WHERE key = ?",
    _DISCONNECTED: "UPDATE sessions SET disconnected_at_ms = ? WHERE key = ?",
}
_QOS2_ADD = "INSERT OR IGNORE INTO inbound_qos2 (session_key, packet_id) VALUES (?, ?)"
_QOS2_DEL = "DELETE FROM inbound_qos2 WHERE session_key = ? AND packet_id = ?"
_ORPHAN = (
    "DELETE FROM messages WHERE id = ? "
    "AND NOT EXISTS (SELECT 1 FROM deliveries WHERE message_id = ?)"
)


def _write(conn: sqlite3.Connection, ops: Sequence[Op], now_ms: int, offset_ms: float) -> None:
    """Apply journal calls in order; runs of one statement go through ``executemany``."""
    sql = ""
    rows: list[tuple[Any, ...]] = []
    # Message ids whose last delivery may have gone: bodies checked at the end of the group.
    released: set[int] = set()

    def flush() -> None:
        if rows:
            conn.executemany(sql, rows)
            rows.clear()

    for op in ops:
        kind = op[0]
        params: tuple[Any, ...]
        if kind == _ADD:
            d: StoredDelivery = op[2]
            ids = ",".join(map(str, d.subscription_ids)) if d.subscription_ids else None
            params = (op[1], d.message_id, d.qos, d.retain, ids, d.packet_id, d.released)
        elif kind == _REMOVE:
            released.add(op[2])
            params = (op[1], op[2])
        elif kind == _MESSAGE:
            m: Message = op[1]
            params = (
                m.id,
                m.account,
                m.topic,
                m.payload,
                m.qos,
                m.retain,
                _dump_properties(m.properties),
                m.origin,
                m.expiry_interval,
                None if m.expires_at is None else int(m.expires_at * 1000 + offset_ms),
                now_ms,
            )
        elif kind == _PACKET_ID:
            params = (op[3], op[1], op[2])
        elif kind == _SESSION:
            account, _, client_id = op[1].partition("\x00")
            params = (op[1], account, client_id, op[2])
        elif kind == _SUB:
            s: StoredSubscription = op[2]
            params = (
                op[1],
                s.full_filter,
                s.qos,
                s.no_local,
                s.retain_as_published,
                s.retain_handling,
                s.subscription_id,
            )
        elif kind == _QOS2_IN:
            statement = _QOS2_ADD if op[3] else _QOS2_DEL
            if statement != sql:
                flush()
                sql = statement
            rows.append((op[1], op[2]))
            continue
        elif kind == _RETAIN:
            m = op[1]
            params = (
                m.account,
                m.topic,
                m.id,
                m.payload,
                m.qos,
                _dump_properties(m.properties),
                m.origin,
                m.expiry_interval,
                None if m.expires_at is None else int(m.expires_at * 1000 + offset_ms),
                now_ms,
            )
        elif kind == _DISCONNECTED:
            params = (op[2], op[1])
        elif kind == _DEL_SESSION:
            flush()
            sql = ""
            key = op[1]
            released.update(
                row[0]
                for row in conn.execute(
                    "SELECT message_id FROM deliveries WHERE session_key = ?", (key,)
                )
            )
            for table, column in _SESSION_TABLES:
                conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (key,))
            continue
        else:  # _DEL_SUB, _RELEASED, _DEL_RETAIN, _CONNECTED: the call's arguments
            params = op[1:]
        statement = _SQL[kind]
        if statement != sql:
            flush()
            sql = statement
        rows.append(params)
    flush()
    if released:
        conn.executemany(_ORPHAN, [(mid, mid) for mid in released])


_SESSION_TABLES = (
    ("deliveries", "session_key"),
    ("subscriptions", "session_key"),
    ("inbound_qos2", "session_key"),
    ("sessions", "key"),
)


_QUEUED_PAGE = (
    "SELECT d.message_id, d.qos, d.retain, d.subscription_ids, m.account, m.topic, m.payload, "
    "m.qos, m.retain, m.properties, m.origin, m.expiry_interval, m.expires_at_ms, "
    "m.stored_at_ms FROM deliveries d JOIN messages m ON m.id = d.message_id "
    "WHERE d.session_key = ? AND d.packet_id = 0 ORDER BY d.seq LIMIT ?"
)


def _read_page(
    conn: sqlite3.Connection, item: AfterCommit, offset: float, retention_s: int
) -> Callable[[], None]:
    """``item`` itself, or for a ``_READ`` entry its callback bound to the page it asked for
    (writer thread, after the commit; served by the ``deliveries_queued`` index). Each message
    carries ``keep_until``, the end of its retention period on the broker's clock."""
    if not isinstance(item, tuple):
        return item
    _op, session_key, limit, callback = item
    page: list[QueuedDelivery] = []
    try:
        for row in conn.execute(_QUEUED_PAGE, (session_key, limit)):
            mid, qos, retain, ids = row[0], row[1], row[2], row[3]
            message = _message(mid, row[4], row[5], row[6], row[7], row[8], row[9:13], offset)
            message.keep_until = row[13] / 1000.0 + retention_s + offset
            page.append((StoredDelivery(mid, qos, bool(retain), _ids(ids)), message))
    except sqlite3.Error as error:
        # An empty page: the broker then stops waiting for this queue (see Broker._page_read);
        # the rows stay on disk and come back with the next start.
        log.error("cannot read the queue of session %r: %s", session_key, error)
        page = []
    return partial(callback, page)


def _is_read(item: AfterCommit) -> bool:
    return isinstance(item, tuple)


def _ids(text: str | None) -> tuple[int, ...]:
    return tuple(int(i) for i in text.split(",")) if text else ()


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # no transaction was open (BEGIN itself failed)


def _run_callbacks(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("after_commit callback failed")


# ---------------------------------------------------------------------------- opening


def _open(path: Path) -> sqlite3.Connection:
    """A connection to ``path``, which must be a SQLite database (or not exist yet)."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as error:
        raise StoreOpenError(f"cannot open {path}: {error}") from None
    return conn


def _schema_version(conn: sqlite3.Connection, path: Path) -> int:
    """Reads the header (nothing is written): a file that is not a database fails here."""
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.DatabaseError as error:
        raise StoreOpenError(
            f"cannot open {path}: {error}. The file is damaged or is not a ThingHub broker "
            "database; it was left as it is (restore a backup, or move it away to start empty)"
        ) from None


# ---------------------------------------------------------------------------- loading


def _collect_garbage(conn: sqlite3.Connection, now_ms: int, retention_ms: int) -> None:
    expired = [
        row[0]
        for row in conn.execute(
            "SELECT key FROM sessions WHERE expiry_interval = 0 OR ("
            "disconnected_at_ms IS NOT NULL AND expiry_interval < ? "
            "AND disconnected_at_ms + expiry_interval * 1000 <= ?)",
            (NEVER_EXPIRES, now_ms),
        )
    ]
    for key in expired:
        for table, column in _SESSION_TABLES:
            conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (key,))
    for table in ("deliveries", "subscriptions", "inbound_qos2"):
        conn.execute(f"DELETE FROM {table} WHERE session_key NOT IN (SELECT key FROM sessions)")
    # A message past its expiry or retention goes, unless a QoS 2 flow towards a session was
    # already released (only PUBREL/PUBCOMP remain, which expiry does not stop, §4.3.3).
    conn.execute(
        "DELETE FROM messages WHERE (expires_at_ms <= ? OR stored_at_ms <= ?) "
        "AND id NOT IN (SELECT message_id FROM deliveries WHERE released)",
        (now_ms, now_ms - retention_ms),
    )
    conn.execute("DELETE FROM deliveries WHERE message_id NOT IN (SELECT id FROM messages)")
    conn.execute("DELETE FROM messages WHERE id NOT IN (SELECT message_id FROM deliveries)")
    conn.execute("DELETE FROM retained WHERE expires_at_ms <= ?", (now_ms,))


def _read_state(conn: sqlite3.Connection, offset: float) -> StoredState:
    sessions: dict[str, StoredSession] = {}
    for key, account, client_id, expiry, disconnected in conn.execute(
        "SELECT key, account, client_id, expiry_interval, disconnected_at_ms FROM sessions"
    ):
        sessions[key] = StoredSession(client_id, expiry, account, disconnected_at_ms=disconnected)
    for key, full_filter, qos, no_local, rap, rh, sub_id in conn.execute(
        "SELECT session_key, full_filter, qos, no_local, retain_as_published, "
        "retain_handling, subscription_id FROM subscriptions"
    ):
        sessions[key].subscriptions[full_filter] = StoredSubscription(
            full_filter, qos, bool(no_local), bool(rap), rh, sub_id
        )
    # Only the in-flight deliveries and their bodies are read (a window per session); queued
    # ones are counted here and read in pages as their sessions take them (``read_queued``),
    # so start-up time and memory do not grow with the backlog.
    messages: dict[int, Message] = {}
    for row in conn.execute(
        "SELECT id, account, topic, payload, qos, retain, properties, origin, "
        "expiry_interval, expires_at_ms FROM messages "
        "WHERE id IN (SELECT message_id FROM deliveries WHERE packet_id <> 0)"
    ):
        messages[row[0]] = _message(row[0], row[1], row[2], row[3], row[4], row[5], row[6:], offset)
    for key, mid, qos, retain, ids, packet_id, released in conn.execute(
        "SELECT session_key, message_id, qos, retain, subscription_ids, packet_id, released "
        "FROM deliveries WHERE packet_id <> 0 ORDER BY seq"
    ):
        sessions[key].deliveries.append(
            StoredDelivery(mid, qos, bool(retain), _ids(ids), packet_id, bool(released))
        )
    for key, count, nbytes in conn.execute(
        "SELECT d.session_key, count(*), sum(length(m.payload) + length(m.topic)) "
        "FROM deliveries d JOIN messages m ON m.id = d.message_id "
        "WHERE d.packet_id = 0 GROUP BY d.session_key"
    ):
        sessions[key].queued = count
        sessions[key].queued_bytes = nbytes or 0
    for key, packet_id in conn.execute("SELECT session_key, packet_id FROM inbound_qos2"):
        sessions[key].inbound_qos2.add(packet_id)
    retained = [
        _message(row[2], row[0], row[1], row[3], row[4], True, row[5:], offset)
        for row in conn.execute(
            "SELECT account, topic, id, payload, qos, properties, origin, expiry_interval, "
            "expires_at_ms FROM retained ORDER BY account, topic"
        )
    ]
    return StoredState(sessions=sessions, messages=messages, retained=retained)


def _message(
    mid: int,
    account: str,
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    rest: tuple[Any, ...],
    offset: float,
) -> Message:
    properties, origin, expiry_interval, expires_at_ms = rest
    return Message(
        topic=topic,
        payload=bytes(payload),
        qos=qos,
        retain=bool(retain),
        properties=_load_properties(properties),
        id=mid,
        stored=True,
        account=account,
        origin=origin,
        expiry_interval=expiry_interval,
        # Back onto the broker's clock: the time left is what was left on the wall clock.
        expires_at=None if expires_at_ms is None else expires_at_ms / 1000.0 + offset,
    )


# ---------------------------------------------------------------------------- properties


def _dump_properties(props: Properties) -> str | None:
    """The MQTT 5 properties that travel with a message (§3.3.2.3), as compact JSON; the
    per-hop ones (topic alias, subscription ids) never reach the store."""
    if props is NO_PROPERTIES:
        return None
    data: dict[str, Any] = {}
    if props.payload_format_indicator is not None:
        data["pfi"] = props.payload_format_indicator
    if props.content_type is not None:
        data["ct"] = props.content_type
    if props.response_topic is not None:
        data["rt"] = props.response_topic
    if props.correlation_data is not None:
        data["cd"] = props.correlation_data.hex()
    if props.user_properties:
        data["up"] = [list(pair) for pair in props.user_properties]
    return json.dumps(data, separators=(",", ":")) if data else None


def _load_properties(text: str | None) -> Properties:
    if not text:
        return NO_PROPERTIES
    data = json.loads(text)
    cd = data.get("cd")
    return Properties(
        payload_format_indicator=data.get("pfi"),
        content_type=data.get("ct"),
        response_topic=data.get("rt"),
        correlation_data=None if cd is None else bytes.fromhex(cd),
        user_properties=tuple((str(k), str(v)) for k, v in data.get("up", ())),
    )
