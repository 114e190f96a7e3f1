"""The registry in PostgreSQL, shared by every node (``serve --registry postgresql://...``).

Theory of operation
-------------------
* **PostgreSQL holds the truth; each node reads a copy.** The registry reads on the event loop
  (a sign-in's cache miss, the APIs' look-ups, the identity reader): against SQLite in WAL
  mode that never waits, against a server it would. So :class:`PgRegistryStore` *is* a
  ``RegistryStore`` over a local SQLite file, ``registry-replica.db`` in the data directory
  (the SQLite migrations' schema, foreign keys off: it is a copy), and reads keep running
  there exactly as without PostgreSQL. Writes (``write()``) run on PostgreSQL, on the writer
  threads, through ``pg_sql.PgConnection`` (the same statements, adapted); reads inside a
  write see PostgreSQL. Each write transaction first takes one advisory lock: one registry
  writer at a time in the whole cluster, as SQLite has one, so the registry's
  check-then-write steps (a name taken, a quota) stay exact under READ COMMITTED.
* **The copy follows by LISTEN/NOTIFY.** Every change of a registry row sends a notification
  at commit (``pg_schema.py``: table and key). A node's own write applies its changes to the
  copy before it returns (so an API call sees its own write: its connection LISTENs for the
  length of the write only, so that no notification waits unread on an idle connection and
  holds back the server's queue); the listener thread
  (``thinghub-registry-listen``) applies every node's, within milliseconds: it fetches the
  rows named and replaces them in the copy (a row gone is deleted). Fetching the current row
  makes the order of notifications irrelevant; one lock around fetch-and-apply keeps an older
  fetch from landing after a newer one.
* **Missed notifications.** Each (re)connection of the listener first LISTENs, then copies
  every table whole (notifications sent meanwhile are applied after it, harmlessly), and
  tells the caches to drop everything (``add_change_listener``).
* **Unreachable.** Writes raise ``RegistryUnreachable`` (503 in both HTTP dialects; presence
  changes stay pending and are retried, ``presence_writer.py``); ``fresh`` is False, the
  ``registry`` component is degraded on ``/healthz``, and the node refuses sign-ins it cannot
  answer from its sign-in cache (``auth/device_watch.RegistrySignInGate``): the copy may lag
  a change it will never hear of. The listener reconnects every ``RETRY_S`` and the node
  recovers by itself.
* **Caches.** Whoever applies a change first (a writer, the listener) compares the copy's row
  before and after: the registry's caches drop the devices it touched
  (``RegistryBase._store_changed``), the sign-in cache only those whose secret, disabled
  flag or name changed (a presence change is no reason), so sign-ins keep being served from
  memory, also while PostgreSQL is out of reach.
* **The device watch** (``auth/device_watch.py``) polls ``data_version`` as it does SQLite's:
  here it counts the applied changes that may take a device's right to sign in, so a device
  disabled or deleted on another node is disconnected here within the watch's half second.
* **Per node:** the MessageId lease stays in the copy's ``meta`` table (never replicated),
  and presence is written with this node's tag (``devices.online_node``), so a node starting
  marks offline only the devices it had online.
* **Nodes that die.** A node killed (SIGKILL, a lost machine) cannot write its devices
  offline. So each node heartbeats a row of ``registry_nodes`` (its tag, ``last_seen`` on
  PostgreSQL's clock) every ``registry.node_heartbeat`` seconds, on a thread of its own
  (``thinghub-registry-heartbeat``: the presence writer sleeps while no device comes or
  goes), and in the same transaction sweeps: one conditional UPDATE marks OFFLINE every
  device online on a node that has not heartbeated for ``registry.node_timeout`` (at the
  node's start, also those of nodes without a row). The transaction takes the registry's
  write lock, so heartbeats and sweeps are serialized and each statement reads the clock
  after the lock is held: two nodes sweeping at once do no harm (the second finds nothing
  left to do). The change reaches every copy by the usual notifications. A device's status
  is so OFFLINE on every node within ``node_timeout`` plus one heartbeat of its node's
  death. The first heartbeat is written at start, before any device can sign in. A node
  whose heartbeats failed (PostgreSQL out of reach) sweeps again only once it has been back
  for ``node_timeout``: after an outage of PostgreSQL itself, every node gets as long to
  heartbeat again before its devices are taken for dead.
* **Nodes gone for good.** The sweep also deletes the rows of nodes silent for a week
  (``FORGET_NODES_AFTER_S``) with nothing online there: a node's tag lives in its data
  directory, so nodes started on new directories would each leave a row behind for good.
* **A node that was swept** (its heartbeats were late: a long pause, PostgreSQL out of
  reach for it only) is told by the ``swept`` flag the sweep left on its row: it writes the
  presence of the devices still connected to it again (``on_swept``: a presence resync,
  ``presence.py``), so they are ONLINE again one heartbeat after it is back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import psycopg

from .errors import RegistryUnreachable, SchemaVersionError
from .ids import wall_clock_ms
from .pg_schema import CHANNEL, PG_MIGRATIONS, REPLICATED, SCHEMA_TABLE
from .pg_sql import PgConnection
from .store import RegistryChange, RegistryStore

__all__ = [
    "REPLICA_FILE",
    "RETRY_S",
    "Changes",
    "PgRegistryStore",
    "node_tag",
]

log = logging.getLogger("thinghub.registry")

REPLICA_FILE = "registry-replica.db"
NODE_FILE = "registry-node"
#: the listener reconnects this often while PostgreSQL is out of reach
RETRY_S = 0.5
CONNECT_TIMEOUT_S = 2
# Keys per fetch of changed rows.
_FETCH_CHUNK = 500
# A migration takes this advisory lock: nodes starting together migrate once.
_MIGRATE_LOCK = 0x7468696E67687562
# Every registry write transaction takes this one (write()).
_WRITE_LOCK_SQL = f"SELECT pg_advisory_xact_lock({_MIGRATE_LOCK + 1})".encode()

#: table -> keys changed (None: every row, after a whole copy)
Changes = dict[str, set[tuple[Any, ...]] | None]


#: told each change applied to the copy (on the thread that applied it)
ChangeListener = Callable[[RegistryChange], None]


def node_tag(data_dir: Path) -> str:
    """This data directory's tag in ``devices.online_node``: made once, kept in a file."""
    path = data_dir / NODE_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        tag = uuid.uuid4().hex
        path.write_text(tag + "\n")
        return tag


# Heartbeat and sweep (module notes, "Nodes that die"). Each statement reads the clock after
# the write lock is held (statement_timestamp(), not the transaction's start).
_WAS_SWEPT_SQL = b"SELECT swept FROM registry_nodes WHERE node = %s"
_HEARTBEAT_SQL = (
    b"INSERT INTO registry_nodes (node, last_seen, swept) VALUES (%s, statement_timestamp(), 0) "
    b"ON CONFLICT (node) DO UPDATE SET last_seen = excluded.last_seen, swept = 0"
)
_LATE_NODES_SQL = (
    b"UPDATE registry_nodes SET swept = 1 WHERE swept = 0 "
    b"AND last_seen < statement_timestamp() - make_interval(secs => %s) RETURNING node"
)
# Each heartbeat: the devices of the late nodes, found through the index of online devices
# by node (pg_schema.py), so a sweep that finds nothing costs a probe per late node.
_SWEEP_SQL = (
    b"UPDATE devices SET online = 0, status_changed_at = %s WHERE online = 1 "
    b"AND online_node IN (SELECT node FROM registry_nodes "
    b"WHERE last_seen < statement_timestamp() - make_interval(secs => %s))"
)
# Rows of nodes silent for FORGET_NODES_AFTER_S, swept, with no device online there, are
# deleted: a node's tag lives in its data directory, so nodes started on new directories (as
# containers are) would leave a row each behind for good. A node that comes back writes its
# row again at its first heartbeat, and its first sweep covers nodes without a row.
FORGET_NODES_AFTER_S = 7 * 24 * 3600.0
_FORGET_NODES_SQL = (
    b"DELETE FROM registry_nodes WHERE swept = 1 "
    b"AND last_seen < statement_timestamp() - make_interval(secs => %s) "
    b"AND NOT EXISTS (SELECT 1 FROM devices WHERE online = 1 "
    b"AND online_node = registry_nodes.node)"
)
# At a node's start, once: also the devices of nodes without a heartbeat row at all (online
# before this schema version, or written by the command line); a scan of the online devices.
_SWEEP_ALL_SQL = (
    b"UPDATE devices SET online = 0, status_changed_at = %s WHERE online = 1 "
    b"AND (online_node IS NULL OR online_node NOT IN (SELECT node FROM registry_nodes "
    b"WHERE last_seen >= statement_timestamp() - make_interval(secs => %s)))"
)


class PgRegistryStore(RegistryStore):
    """``RegistryStore`` whose writes go to PostgreSQL and whose reads run on a local copy
    (module notes). ``start_listening()`` once the hub runs; ``close()`` at stop."""

    shared = True
    # False while the base class migrates the copy (its writes go to the copy then).
    _pg_ready = False

    def __init__(self, url: str, replica_path: str | Path, *, node: str) -> None:
        super().__init__(replica_path)
        # A copy: rows arrive in any order, and a parent's deletion is its own notification.
        with self._lock:
            self._conn.execute("PRAGMA foreign_keys = OFF")
        self.url = url
        self.node = node
        self._pg: psycopg.Connection[Any] | None = None
        self._pg_lock = threading.RLock()
        self._pg_depth = 0
        self._heard: list[psycopg.Notify] = []
        # Set when a writer could not apply its own change to the copy (the listener then
        # copies everything again).
        self._resync_due = threading.Event()
        # Fetch-and-apply, from the writers and the listener, one at a time (module notes).
        self._apply_lock = threading.Lock()
        self._columns: dict[str, tuple[str, ...]] = {}
        self._version = 0
        self._listeners: list[ChangeListener] = []
        #: False while PostgreSQL is out of reach (the copy may lag)
        self.fresh = True
        self.on_reachability: Callable[[bool, str], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listen_conn: psycopg.Connection[Any] | None = None
        self._heartbeat: threading.Thread | None = None
        #: called on the heartbeat thread when another node swept this one's devices
        self.on_swept: Callable[[], None] | None = None
        #: heartbeats that failed (PostgreSQL out of reach) or raised (a bug); sweeps that
        #: marked devices offline, and how many devices
        self.heartbeat_failures = 0
        self.sweeps = 0
        self.swept_devices = 0
        self._heartbeat_failing = False
        # time.monotonic() from which this node sweeps (_beat)
        self._sweep_after = 0.0
        self._pg_ready = True
        listen: psycopg.Connection[Any] | None = None
        try:
            with self._pg_lock:
                conn = self._connect()
                _migrate(conn)
            listen = self._open_listener()
            self._copy_all(listen)
            self._listen_conn = listen
        except BaseException as error:
            if listen is not None:
                listen.close()
            if self._pg is not None:
                self._pg.close()
            super().close()
            if isinstance(error, psycopg.Error):
                raise RegistryUnreachable(f"cannot use the PostgreSQL registry: {error}") from None
            raise

    @classmethod
    def open_url(cls, url: str, data_dir: str | Path) -> PgRegistryStore:
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        return cls(url, directory / REPLICA_FILE, node=node_tag(directory))

    # ------------------------------------------------------------------ writes

    def _connect(self) -> psycopg.Connection[Any]:
        """The write connection, (re)opened if needed. Raises ``RegistryUnreachable``."""
        conn = self._pg
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._pg = None
        try:
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name="thinghub",
            )
            # This session hears its own changes while it writes (write(): it listens only
            # then, so that no notification waits for it unread, which would hold back the
            # server's notification queue); others' are left to the listener.
            conn.add_notify_handler(self._heard.append)
        except psycopg.Error as error:
            raise RegistryUnreachable(f"the registry cannot be written now: {error}") from None
        self._pg = conn
        return conn

    def _listening(self) -> psycopg.Connection[Any]:
        """The write connection, listening for the transaction to come. A connection that
        died while idle (the server restarted) is found here, before anything was done: it
        is opened again once, so the first write after an outage does not fail for it."""
        for attempt in (1, 2):
            conn = self._connect()
            try:
                conn.execute(f"LISTEN {CHANNEL}")
            except psycopg.OperationalError as error:
                conn.close()
                if attempt == 2:
                    raise RegistryUnreachable(
                        f"the registry cannot be written now: {error}"
                    ) from None
            else:
                return conn
        raise AssertionError("unreachable")

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A PostgreSQL transaction, committed on success, rolled back on any exception; the
        changes it made are in the local copy when it returns. Nested use joins it. Raises
        ``RegistryUnreachable`` when PostgreSQL cannot be reached."""
        if not self._pg_ready:
            with super().write() as replica:
                yield replica
            return
        with self._pg_lock:
            if self._pg_depth:
                self._pg_depth += 1
                try:
                    assert self._pg is not None
                    yield cast(sqlite3.Connection, PgConnection(self._pg, node=self.node))
                finally:
                    self._pg_depth -= 1
                return
            conn = self._listening()
            local = self._local
            self._pg_depth = 1
            local.pg_writing = True
            self._heard.clear()
            try:
                try:
                    try:
                        with conn.transaction():
                            # One registry writer at a time, cluster-wide, as SQLite has one:
                            # the registry's check-then-write steps (a name taken, a quota)
                            # stay exact under READ COMMITTED.
                            conn.execute(_WRITE_LOCK_SQL)
                            yield cast(sqlite3.Connection, PgConnection(conn, node=self.node))
                    finally:  # its own notifications came with the COMMIT's answer
                        if not conn.broken:
                            conn.execute(f"UNLISTEN {CHANNEL}")
                except psycopg.OperationalError as error:
                    conn.close()
                    raise RegistryUnreachable(
                        f"the registry cannot be written now: {error}"
                    ) from None
            finally:
                self._pg_depth = 0
                local.pg_writing = False
            heard, self._heard[:] = list(self._heard), []
            own = conn.info.backend_pid
            changes = _changes([n for n in heard if n.pid == own])
            if changes:
                try:
                    self._apply(conn, changes)
                except (psycopg.Error, sqlite3.Error) as error:
                    # The change is committed, and the listener leaves this session's changes
                    # to it: the listener copies everything again.
                    log.warning("the registry's local copy missed a change: %s", error)
                    self._resync_due.set()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """Inside a write of this thread: PostgreSQL (it sees its own changes); otherwise
        the local copy, which waits for nobody."""
        if getattr(self._local, "pg_writing", False):
            with self.write() as conn:
                yield conn
            return
        with super().read() as conn:
            yield conn

    def read_row(self, sql: str, args: tuple[object, ...]) -> sqlite3.Row | None:
        if getattr(self._local, "pg_writing", False):
            with self.write() as conn:
                row: sqlite3.Row | None = conn.execute(sql, args).fetchone()
                return row
        return super().read_row(sql, args)

    def data_version(self) -> int:
        """Changes applied to the copy from other writers that may take a device's right to
        sign in (a device's secret or disabled flag, a device or product gone): the device
        watch polls it, and compares its sessions' devices when it moves."""
        return self._version

    def is_fresh(self) -> bool:
        return self.fresh

    def add_change_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    # The MessageId lease and counters stay in this node's copy (module notes).

    def get_meta(self, key: str) -> int | None:
        with super().read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def set_meta(self, key: str, value: int) -> None:
        with super().write() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def save_id_lease(self, lease_ms: int) -> None:
        with super().write() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('message_id_lease_ms', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
                (lease_ms,),
            )

    # ------------------------------------------------------------------ the copy

    def _replica_columns(self, table: str) -> tuple[str, ...]:
        columns = self._columns.get(table)
        if columns is None:
            with super().read() as conn:
                rows = conn.execute(f"PRAGMA table_info({table})").fetchall()
            columns = self._columns[table] = tuple(str(row[1]) for row in rows)
        return columns

    def _apply(self, pg: psycopg.Connection[Any], changes: Changes) -> None:
        """Fetch the rows ``changes`` names from PostgreSQL and put them in the copy."""
        with self._apply_lock:
            fetched: dict[str, tuple[set[tuple[Any, ...]] | None, list[tuple[Any, ...]]]] = {}
            for table, keys in changes.items():
                columns = self._replica_columns(table)
                select = f"SELECT {', '.join(columns)} FROM {table}"
                if keys is None:
                    rows = pg.execute(select.encode()).fetchall()
                else:
                    rows = []
                    key_columns = REPLICATED[table]
                    ordered = list(keys)
                    for start in range(0, len(ordered), _FETCH_CHUNK):
                        chunk = ordered[start : start + _FETCH_CHUNK]
                        marks = ", ".join(
                            ["(" + ", ".join(["%s"] * len(key_columns)) + ")"] * len(chunk)
                        )
                        sql = f"{select} WHERE ({', '.join(key_columns)}) IN ({marks})"
                        args = [value for key in chunk for value in key]
                        rows.extend(pg.execute(sql.encode(), args).fetchall())
                fetched[table] = (keys, rows)
            change = RegistryChange(frozenset(changes))
            with super().write() as conn:
                for table, (keys, rows) in fetched.items():
                    columns = self._replica_columns(table)
                    key_columns = REPLICATED[table]
                    if table == "devices":
                        change = _device_change(change, conn, keys, columns, rows)
                    elif table in ("iot_certificates", "iot_ca_certificates") and keys:
                        statuses = _status_changes(conn, table, keys, columns, rows)
                        change = (
                            dataclasses.replace(change, certificates=statuses)
                            if table == "iot_certificates"
                            else dataclasses.replace(change, ca_certificates=statuses)
                        )
                    # One statement each over a JSON array, not one step per row: the
                    # sqlite3 module gives the GIL back around every step, and this thread
                    # must not take it from the event loop once per row (presence batches
                    # bring thousands; docs/architecture.md "Signing in").
                    if keys is None:
                        conn.execute(f"DELETE FROM {table}")
                    else:
                        conn.execute(
                            f"DELETE FROM {table} WHERE ({', '.join(key_columns)}) IN "
                            f"(SELECT {_elements(len(key_columns))} FROM json_each(?))",
                            (json.dumps([list(key) for key in keys]),),
                        )
                    if rows:
                        conn.execute(
                            f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) "
                            f"SELECT {_elements(len(columns))} FROM json_each(?)",
                            (json.dumps([list(row) for row in rows]),),
                        )
            # Whoever applies a change first sees it (the copy's row before and after), the
            # writer of this node or the listener: a presence change is no reason to look.
            if change.credentials is None or change.credentials or "products" in change.tables:
                self._version += 1  # a device's right to sign in may have changed
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("a registry change listener failed")

    def _copy_all(self, pg: psycopg.Connection[Any]) -> None:
        self._apply(pg, dict.fromkeys(REPLICATED))

    # ------------------------------------------------------------------ the listener

    def _open_listener(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="thinghub-listen",
        )
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    def start_listening(self) -> None:
        """Start the listener thread (module notes)."""
        self._thread = threading.Thread(
            target=self._listen, name="thinghub-registry-listen", daemon=True
        )
        self._thread.start()

    def _listen(self) -> None:
        conn = self._listen_conn
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = self._listen_conn = self._open_listener()
                    self._copy_all(conn)  # notifications were missed
                    self._set_fresh(True, "")
                self._follow(conn)
            except (psycopg.Error, sqlite3.Error, OSError) as error:
                if conn is not None:
                    conn.close()
                conn = self._listen_conn = None
                self._set_fresh(False, str(error).strip() or type(error).__name__)
                self._stop.wait(RETRY_S)
            except Exception as error:  # a bug: say it, and try again later
                log.exception("the registry listener failed")
                if conn is not None:
                    conn.close()
                conn = self._listen_conn = None
                self._set_fresh(False, f"{type(error).__name__}: {error}")
                self._stop.wait(RETRY_S)
        if conn is not None:
            conn.close()

    def _follow(self, conn: psycopg.Connection[Any]) -> None:
        """Apply notifications as they come, gathered for a few milliseconds; returns when
        asked to stop. Checks the connection every second (a dead server shows there)."""
        while not self._stop.is_set():
            if self._resync_due.is_set():
                self._resync_due.clear()
                self._copy_all(conn)
            heard = list(conn.notifies(timeout=1.0, stop_after=1))
            if not heard:
                conn.execute("SELECT 1")  # raises once the server is gone
                continue
            heard.extend(conn.notifies(timeout=0.005))
            own = self._pg.info.backend_pid if self._pg is not None and not self._pg.closed else -1
            changes = _changes([n for n in heard if n.pid != own])
            if changes:
                self._apply(conn, changes)

    # ------------------------------------------------------------------ nodes that die

    def start_heartbeat(
        self, every_s: float, timeout_s: float, clock: Callable[[], int] = wall_clock_ms
    ) -> None:
        """Heartbeat (and sweep) now, before any device signs in here, then every
        ``every_s`` seconds on a thread; devices online on a node silent for ``timeout_s``
        are marked offline, at ``clock()`` (epoch ms). Module notes, "Nodes that die"."""
        if every_s <= 0 or timeout_s <= every_s:
            raise ValueError("the heartbeat must be above 0 and below the node timeout")
        self._beat(timeout_s, clock, first=True)
        self._heartbeat = threading.Thread(
            target=self._heartbeats,
            args=(every_s, timeout_s, clock),
            name="thinghub-registry-heartbeat",
            daemon=True,
        )
        self._heartbeat.start()

    def _heartbeats(self, every_s: float, timeout_s: float, clock: Callable[[], int]) -> None:
        while not self._stop.wait(every_s):
            try:
                self._beat(timeout_s, clock, first=False)
            except Exception:  # supervised: a bug is said, and the next heartbeat tries again
                self.heartbeat_failures += 1
                log.exception("the registry heartbeat failed")

    def _beat(self, timeout_s: float, clock: Callable[[], int], *, first: bool) -> None:
        # A node that could not heartbeat (PostgreSQL out of reach) sweeps again only once it
        # has been back for a whole timeout: after an outage of everyone's, the others get as
        # long to heartbeat again before their devices are taken for dead.
        sweeps = time.monotonic() >= self._sweep_after
        late: list[str] = []
        swept = forgotten = 0
        try:
            with self.write() as conn:
                raw = cast(PgConnection, conn).raw
                row = raw.execute(_WAS_SWEPT_SQL, (self.node,)).fetchone()
                raw.execute(_HEARTBEAT_SQL, (self.node,))
                if sweeps:
                    late = [str(r[0]) for r in raw.execute(_LATE_NODES_SQL, (timeout_s,))]
                    sweep = _SWEEP_ALL_SQL if first else _SWEEP_SQL
                    swept = raw.execute(sweep, (clock(), timeout_s)).rowcount
                    forgotten = raw.execute(
                        _FORGET_NODES_SQL, (max(FORGET_NODES_AFTER_S, timeout_s),)
                    ).rowcount
        except RegistryUnreachable as error:
            self.heartbeat_failures += 1
            self._sweep_after = math.inf
            if not self._heartbeat_failing:
                self._heartbeat_failing = True
                log.warning("the registry heartbeat cannot be written: %s", error)
            return
        if self._heartbeat_failing:
            self._heartbeat_failing = False
            self._sweep_after = time.monotonic() + timeout_s
            log.warning("the registry heartbeat is written again")
        if forgotten > 0:
            log.info("forgot %d nodes silent for a week (registry_nodes)", forgotten)
        if swept > 0:
            self.sweeps += 1
            self.swept_devices += swept
            log.warning(
                "%d devices marked offline: their node has not heartbeated for %g s "
                "(registry.node_timeout; late nodes: %s)",
                swept,
                timeout_s,
                ", ".join(late) or "seen before",
            )
        was_swept = row is not None and int(row[0]) != 0
        if was_swept and not first:
            log.warning(
                "this node's heartbeat was late and its devices were marked offline by "
                "another node: writing the connected ones online again"
            )
            if self.on_swept is not None:
                self.on_swept()

    def _set_fresh(self, fresh: bool, why: str) -> None:
        if fresh == self.fresh:
            return
        self.fresh = fresh
        if fresh:
            log.warning("the PostgreSQL registry is reachable again; this node's copy is current")
        else:
            log.warning(
                "the PostgreSQL registry is out of reach (%s): registry changes are answered "
                "503 and sign-ins not in the cache are refused until it is back",
                why,
            )
        if self.on_reachability is not None:
            self.on_reachability(fresh, why)

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        with self._pg_lock:
            if self._pg is not None:
                self._pg.close()
                self._pg = None
        if self._listen_conn is not None and thread is None:
            self._listen_conn.close()
        super().close()


def _elements(count: int) -> str:
    """The ``count`` elements of a ``json_each`` row that is an array, as columns."""
    return ", ".join(f"json_extract(value, '$[{i}]')" for i in range(count))


def _changes(heard: list[psycopg.Notify]) -> Changes:
    changes: Changes = {}
    for notify in heard:
        try:
            message = json.loads(notify.payload)
            table, key = str(message["t"]), tuple(message["k"])
        except (ValueError, KeyError, TypeError):
            continue
        if table not in REPLICATED:
            continue
        keys = changes.setdefault(table, set())
        if keys is not None:
            keys.add(key)
    return changes


# What a device row holds that sign-in reads (the sign-in cache keeps it): a change of any
# other column is presence (or a nickname), which sign-in never needs.
_SIGN_IN_COLUMNS = ("product_key", "device_name", "iot_id", "device_secret", "disabled")


def _status_changes(
    conn: sqlite3.Connection,
    table: str,
    keys: set[tuple[Any, ...]],
    columns: tuple[str, ...],
    rows: list[tuple[Any, ...]],
) -> frozenset[tuple[str, str]]:
    """The (account, certificate id) of the rows of ``table`` (a certificates table, keyed
    by seq) whose status ``rows`` change in the copy, or that are gone; before the copy is
    written. A new row is none: nobody signed in with it yet."""
    found = conn.execute(
        "SELECT json_group_array(json_array(seq, account_id, certificate_id, status)) "
        f"FROM {table} WHERE seq IN (SELECT value FROM json_each(?))",
        (json.dumps([key[0] for key in keys]),),
    ).fetchone()
    seq, status = columns.index("seq"), columns.index("status")
    now = {row[seq]: row[status] for row in rows}
    return frozenset(
        (str(account), str(certificate))
        for key, account, certificate, before in json.loads(found[0])
        if now.get(key) != before
    )


def _device_change(
    change: RegistryChange,
    conn: sqlite3.Connection,
    keys: set[tuple[Any, ...]] | None,
    columns: tuple[str, ...],
    rows: list[tuple[Any, ...]],
) -> RegistryChange:
    """``change`` with the devices that ``rows`` (from PostgreSQL, for ``keys``) change in
    the copy, and those whose sign-in columns change; before the copy is written."""
    if keys is None:
        return RegistryChange(change.tables, None, None)
    at = [columns.index(c) for c in _SIGN_IN_COLUMNS]
    new = {row[columns.index("seq")]: tuple(row[i] for i in at) for row in rows}
    # One statement, one row (a JSON array of the rows): one step, not one per row (_apply).
    found = conn.execute(
        f"SELECT json_group_array(json_array(seq, {', '.join(_SIGN_IN_COLUMNS)})) "
        "FROM devices WHERE seq IN (SELECT value FROM json_each(?))",
        (json.dumps([key[0] for key in keys]),),
    ).fetchone()
    old: dict[Any, tuple[Any, ...]] = {row[0]: tuple(row[1:]) for row in json.loads(found[0])}
    devices: set[tuple[str, str]] = set()
    credentials: set[tuple[str, str]] = set()
    for seq in set(old) | set(new):
        before, after = old.get(seq), new.get(seq)
        names = {(str(v[0]), str(v[1])) for v in (before, after) if v is not None}
        devices |= names
        if before != after:
            credentials |= names
    return RegistryChange(change.tables, frozenset(devices), frozenset(credentials))


def _migrate(conn: psycopg.Connection[Any]) -> None:
    """Bring the PostgreSQL schema to ``len(PG_MIGRATIONS)`` (pg_schema.py notes)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (version BIGINT NOT NULL)")
        row = conn.execute(f"SELECT version FROM {SCHEMA_TABLE}").fetchone()
        version = 0 if row is None else int(row[0])
        if version > len(PG_MIGRATIONS):
            raise SchemaVersionError(
                f"the PostgreSQL registry has schema version {version}, but this ThingHub "
                f"knows versions up to {len(PG_MIGRATIONS)}; it was written by a newer ThingHub"
            )
        for target in range(version + 1, len(PG_MIGRATIONS) + 1):
            for statement in PG_MIGRATIONS[target - 1]:
                conn.execute(statement.encode())
            if row is None:
                conn.execute(f"INSERT INTO {SCHEMA_TABLE} (version) VALUES (%s)", (target,))
                row = (target,)
            else:
                conn.execute(f"UPDATE {SCHEMA_TABLE} SET version = %s", (target,))
