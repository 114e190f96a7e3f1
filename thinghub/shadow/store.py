"""Shadows on disk: the ``shadows`` table of ``registry.db`` (schema version 2, created by the
registry's migrations in ``thinghub/registry/store.py``; this module only uses it).

Why ``registry.db`` and its own connection: shadows are registry-like state (per account, per
thing, small, not on the message path), so they live and are backed up with the registry;
but they change far more often than the registry, and each change is fsynced (an update
answered 200, or ``/update/accepted``, is on disk: docs/architecture.md "Acknowledged means
durable"). So the shadow service writes through a second connection to the same WAL file, on
its own thread, and the registry's connection on the event loop never waits for a shadow's
fsync (WAL lets readers run beside the writer; a rare registry write waits at most for one
shadow commit, ``busy_timeout``).

Threads: ``ShadowStore`` is used by one thread at a time (the service's writer thread); a
lock makes any other use safe, not fast.

Compatibility notes (STYLE.md §3.14): ``document`` is the JSON ``{"state": {...},
"metadata": {...}}`` of ``document.Shadow`` with only non-empty sections; ``version`` and
``updated_at`` (epoch seconds) are columns. A deleted shadow is a row whose ``document`` is
NULL (a tombstone keeping its version). New fields go into new columns, through a migration
in ``thinghub/registry/store.py``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..registry.errors import RegistryUnreachable, full_disk_refuses
from ..registry.store import FILE_NAME
from .document import Shadow, dumps
from .names import CLASSIC

__all__ = [
    "SCHEMA_VERSION",
    "PgShadowStore",
    "ShadowKey",
    "ShadowStore",
    "ShadowStoreError",
    "StoredShadow",
]

#: the registry schema version that created the shadows table
SCHEMA_VERSION = 2


class ShadowStoreError(Exception):
    """``registry.db`` has no shadows table (it was not migrated) or cannot be used."""


class ShadowKey(NamedTuple):
    """Tenancy first: a shadow is always looked up within its account."""

    account: str
    thing: str
    shadow: str  # CLASSIC ("") for the classic shadow


@dataclass(frozen=True, slots=True)
class StoredShadow:
    """A row: the live shadow, or None for a deleted one that kept its ``version``."""

    shadow: Shadow | None
    version: int
    updated_at: int


class ShadowStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise ShadowStoreError(f"cannot open {self.path}: {error}") from None
        try:
            self._conn.execute("PRAGMA busy_timeout = 5000")
            # Per connection: every commit is on disk before its request is answered.
            self._conn.execute("PRAGMA synchronous = FULL")
            version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
            if version < SCHEMA_VERSION:
                raise ShadowStoreError(
                    f"{self.path} has registry schema version {version}; shadows need version "
                    f"{SCHEMA_VERSION} (open it with the registry first, which migrates it)"
                )
        except BaseException:
            self._conn.close()
            raise

    @classmethod
    def open(cls, data_dir: str | Path) -> ShadowStore:
        """``<data_dir>/registry.db``, already opened (and so migrated) by the registry."""
        return cls(Path(data_dir) / FILE_NAME)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction, committed (fsync) on success, rolled back on any error. A
        full disk raises ``StorageFull`` (registry/errors.py), whether a statement or the
        commit found it; the file keeps its last commit and the next transaction may succeed
        (nothing is left open: a failed COMMIT is rolled back here too)."""
        with self._lock, full_disk_refuses("the shadow cannot be changed now"):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (SQLITE_FULL, SQLITE_IOERR).
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Inside a transaction: undo just this block's writes if it fails."""
        with self._lock:
            self._conn.execute("SAVEPOINT shadow_request")
            try:
                yield
            except BaseException:
                # Unless SQLite rolled the whole transaction back (a full disk): then the
                # savepoint is gone with it, and ``transaction`` reports the failure.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK TO shadow_request")
                    self._conn.execute("RELEASE shadow_request")
                raise
            self._conn.execute("RELEASE shadow_request")

    # --------------------------------------------------------------------- rows

    def load(self, key: ShadowKey) -> StoredShadow | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT version, document, updated_at FROM shadows "
                "WHERE account_id = ? AND thing_name = ? AND shadow_name = ?",
                key,
            ).fetchone()
        if row is None:
            return None
        version, text, updated_at = int(row[0]), row[1], int(row[2])
        if text is None:
            return StoredShadow(None, version, updated_at)
        document = json.loads(text)
        shadow = Shadow(document.get("state", {}), document.get("metadata", {}), version)
        return StoredShadow(shadow, version, updated_at)

    def save(self, key: ShadowKey, shadow: Shadow, now: int) -> None:
        text = dumps({"state": shadow.state, "metadata": shadow.metadata}).decode()
        self._upsert(key, shadow.version, text, now)

    def delete(self, key: ShadowKey, version: int, now: int) -> None:
        """Delete the shadow, keeping its version in a tombstone."""
        self._upsert(key, version, None, now)

    def _upsert(self, key: ShadowKey, version: int, text: str | None, now: int) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO shadows (account_id, thing_name, shadow_name, version, document, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (account_id, thing_name, shadow_name) DO UPDATE SET "
                "version = excluded.version, document = excluded.document, "
                "updated_at = excluded.updated_at",
                (*key, version, text, now),
            )

    def list_names(self, account: str, thing: str, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` names of the thing's live named shadows, in name order, after
        ``after``. The classic shadow is not listed (device-shadow-rest-api,
        ListNamedShadowsForThing: "The unnamed (classic) shadow does not appear")."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT shadow_name FROM shadows WHERE account_id = ? AND thing_name = ? "
                "AND shadow_name > ? AND document IS NOT NULL ORDER BY shadow_name LIMIT ?",
                (account, thing, CLASSIC if after is None else after, limit),
            ).fetchall()
        return [str(row[0]) for row in rows]

    def lock(self, keys: Iterable[ShadowKey]) -> None:
        """Hold these shadows until the transaction ends (nothing to do with one SQLite
        writer: the file's own lock serializes)."""

    def purge_tombstones(self, before: int) -> int:
        """Forget shadows deleted before ``before`` (their versions restart from 0)."""
        with self._lock:
            cursor = self._conn.execute(
                "DELETE FROM shadows WHERE document IS NULL AND updated_at < ?", (before,)
            )
        return cursor.rowcount


# A connection idle longer than this is checked before use (PgShadowStore._connection).
_IDLE_CHECK_S = 1.0


#: The first key of the shadows' advisory locks (PgShadowStore.load).
_SHADOW_LOCKS = 0x5348


class PgShadowStore(ShadowStore):
    """``ShadowStore`` on the PostgreSQL registry (``serve --registry``; the ``shadows`` table
    of ``registry/pg_schema.py``), used by the shadow writer thread alone, so every node reads
    and writes the same shadows. A connection lost is opened again at the next transaction;
    while PostgreSQL cannot be reached, ``RegistryUnreachable`` (503, as a full disk)."""

    def __init__(self, url: str) -> None:  # no SQLite file: nothing of the base is opened
        self.path = self.url = url
        self._lock = threading.RLock()
        self._pg: Any = None
        self._used_at = 0.0

    def _connection(self) -> Any:
        import psycopg  # only a hub with a PostgreSQL registry loads the driver

        conn = self._pg
        if conn is not None and not conn.closed and not conn.broken:
            if time.monotonic() - self._used_at < _IDLE_CHECK_S:
                self._used_at = time.monotonic()
                return conn
            # Idle for a while: the server may have restarted meanwhile. One round trip, so
            # that the first request after an outage does not fail on a dead connection.
            try:
                conn.execute(b"SELECT 1")
                self._used_at = time.monotonic()
                return conn
            except psycopg.OperationalError:
                conn.close()
        try:
            self._pg = psycopg.connect(
                self.url, autocommit=True, connect_timeout=2, application_name="thinghub-shadows"
            )
        except psycopg.Error as error:
            raise RegistryUnreachable(f"the shadow cannot be changed now: {error}") from None
        self._used_at = time.monotonic()
        return self._pg

    def close(self) -> None:
        with self._lock:
            if self._pg is not None:
                self._pg.close()
                self._pg = None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        import psycopg

        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    yield
            except psycopg.OperationalError as error:
                conn.close()
                raise RegistryUnreachable(f"the shadow cannot be changed now: {error}") from None

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        with self._lock, self._connection().transaction():  # nested: a savepoint
            yield

    def _execute(self, sql: bytes, args: tuple[object, ...]) -> Any:
        return self._connection().execute(sql, args)

    def load(self, key: ShadowKey) -> StoredShadow | None:
        row = self._execute(
            b"SELECT version, document, updated_at FROM shadows "
            b"WHERE account_id = %s AND thing_name = %s AND shadow_name = %s",
            tuple(key),
        ).fetchone()
        if row is None:
            return None
        version, text, updated_at = int(row[0]), row[1], int(row[2])
        if text is None:
            return StoredShadow(None, version, updated_at)
        document = json.loads(text)
        shadow = Shadow(document.get("state", {}), document.get("metadata", {}), version)
        return StoredShadow(shadow, version, updated_at)

    def save(self, key: ShadowKey, shadow: Shadow, now: int) -> None:
        text = dumps({"state": shadow.state, "metadata": shadow.metadata}).decode()
        self._upsert(key, shadow.version, text, now)

    def delete(self, key: ShadowKey, version: int, now: int) -> None:
        self._upsert(key, version, None, now)

    def _upsert(self, key: ShadowKey, version: int, text: str | None, now: int) -> None:
        self._execute(
            b"INSERT INTO shadows (account_id, thing_name, shadow_name, version, document, "
            b"updated_at) VALUES (%s, %s, %s, %s, %s, %s) "
            b"ON CONFLICT (account_id, thing_name, shadow_name) DO UPDATE SET "
            b"version = excluded.version, document = excluded.document, "
            b"updated_at = excluded.updated_at",
            (*key, version, text, now),
        )

    def list_names(self, account: str, thing: str, after: str | None, limit: int) -> list[str]:
        rows = self._execute(
            b"SELECT shadow_name FROM shadows WHERE account_id = %s AND thing_name = %s "
            b"AND shadow_name > %s AND document IS NOT NULL ORDER BY shadow_name LIMIT %s",
            (account, thing, CLASSIC if after is None else after, limit),
        ).fetchall()
        return [str(row[0]) for row in rows]

    def lock(self, keys: Iterable[ShadowKey]) -> None:
        """Every node's shadow writer reads, changes and writes its shadows in one transaction:
        without a lock two nodes could read the same version and the later write lose the
        earlier update. A transaction-scoped advisory lock per shadow (the two-key form, apart
        from the registry's one-key locks) serializes them, row or no row yet; taken in one
        order (by name) on every node, so that two batches never wait for each other."""
        for name in sorted({"/".join(key) for key in keys}):  # "/" is in no name; NUL is
            self._execute(  # not allowed in PostgreSQL text
                b"SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_SHADOW_LOCKS, name)
            )

    def purge_tombstones(self, before: int) -> int:
        cursor = self._execute(
            b"DELETE FROM shadows WHERE document IS NULL AND updated_at < %s", (before,)
        )
        return int(cursor.rowcount)
