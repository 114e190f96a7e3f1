"""The registry's SQLite file: ``registry.db`` in the data directory.

Compatibility notes (the on-disk format carries a version, STYLE.md §3.14):

* The schema version is ``PRAGMA user_version``. ``MIGRATIONS[i]`` takes the schema from
  version ``i`` to ``i + 1``; all pending migrations run at open, each in its own transaction
  together with the version bump, so a crash leaves the file at a whole version.
* A file whose version is above ``len(MIGRATIONS)`` was written by a newer ThingHub. It is
  refused with ``SchemaVersionError`` and left untouched: an older build cannot know what the
  newer columns mean.
* Migrations are append-only. Never edit one that has shipped; add the next.

Durability: WAL journal with ``synchronous=FULL``, so a committed registry change (an API call
that answered success) survives a crash or power loss (docs/architecture.md "Acknowledged means
durable"). API writes are rare; the cost is one fsync each. Device presence, which changes at
every sign-in, is written in coalesced batches, one fsync per batch (``presence_writer.py``).

Threads: writes go through one connection guarded by a re-entrant lock, which keeps the
single-writer rule of SQLite explicit (the hub's writers are the registry writer and the
presence writer threads, ``writer.py`` and ``presence_writer.py``). Reads outside a write run on
a connection of the reading thread's own, opened at its first read: in WAL mode a reader takes
no lock a writer holds, so a read on the event loop never waits for a write's fsync or for
the store's lock (docs/architecture.md "Threads"). ``":memory:"`` gives a private in-memory
database for tests: there, the one connection serves reads too, under the lock.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import SchemaVersionError, full_disk_refuses

__all__ = ["FILE_NAME", "MIGRATIONS", "RegistryChange", "RegistryStore"]

FILE_NAME = "registry.db"

# Version 1: accounts, access keys, instances, products, devices, topic categories, batch
# registrations, and a small key/value table for counters (the MessageId lease, ids.py).
_V1: tuple[str, ...] = (
    """CREATE TABLE accounts (
        account_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at INTEGER NOT NULL
    )""",
    """CREATE TABLE access_keys (
        access_key_id TEXT PRIMARY KEY,
        secret TEXT NOT NULL,
        account_id TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
        enabled INTEGER NOT NULL DEFAULT 1,
        created_at INTEGER NOT NULL,
        description TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX access_keys_account ON access_keys(account_id)",
    """CREATE TABLE instances (
        instance_id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        created_at INTEGER NOT NULL
    )""",
    """CREATE TABLE products (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        product_key TEXT NOT NULL UNIQUE,
        account_id TEXT NOT NULL REFERENCES accounts(account_id),
        instance_id TEXT REFERENCES instances(instance_id),
        name TEXT NOT NULL,
        node_type INTEGER NOT NULL,
        data_format INTEGER NOT NULL,
        auth_type TEXT NOT NULL,
        description TEXT NOT NULL,
        product_secret TEXT NOT NULL,
        commodity_code TEXT NOT NULL,
        net_type TEXT,
        category_key TEXT,
        created_at INTEGER NOT NULL,
        UNIQUE (account_id, name)
    )""",
    """CREATE TABLE devices (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        iot_id TEXT NOT NULL UNIQUE,
        product_key TEXT NOT NULL REFERENCES products(product_key),
        device_name TEXT NOT NULL,
        device_secret TEXT NOT NULL,
        nickname TEXT NOT NULL DEFAULT '',
        disabled INTEGER NOT NULL DEFAULT 0,
        online INTEGER NOT NULL DEFAULT 0,
        online_epoch INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        activated_at INTEGER,
        last_online_at INTEGER,
        status_changed_at INTEGER NOT NULL,
        ip_address TEXT,
        apply_id INTEGER,
        UNIQUE (product_key, device_name)
    )""",
    "CREATE INDEX devices_apply ON devices(apply_id) WHERE apply_id IS NOT NULL",
    """CREATE TABLE topic_categories (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        product_key TEXT NOT NULL REFERENCES products(product_key) ON DELETE CASCADE,
        short_name TEXT NOT NULL,
        operation TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL,
        UNIQUE (product_key, short_name)
    )""",
    """CREATE TABLE device_applies (
        apply_id INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
        product_key TEXT NOT NULL,
        count INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    )""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)

# Version 2: AWS IoT device shadows (thinghub/shadow/store.py). One row per shadow of a thing,
# per account; shadow_name is '' for the classic (unnamed) shadow. ``document`` is the JSON
# {"state": ..., "metadata": ...}; a deleted shadow keeps its row with document NULL for 48
# hours, so that a shadow created again under its name continues its version (AWS IoT
# developer guide, device-shadow-data-flow, "DELETE"). Times are epoch seconds, as shadows'.
_V2: tuple[str, ...] = (
    """CREATE TABLE shadows (
        account_id TEXT NOT NULL,
        thing_name TEXT NOT NULL,
        shadow_name TEXT NOT NULL,
        version INTEGER NOT NULL,
        document TEXT,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (account_id, thing_name, shadow_name)
    ) WITHOUT ROWID""",
    "CREATE INDEX shadows_deleted ON shadows(updated_at) WHERE document IS NULL",
)

# Version 3: the AWS IoT control plane's identities (thinghub/identity/, which only uses
# these tables): things and their attributes, X.509 certificates (ids are the SHA-256 of the
# DER, lowercase hex, unique hub-wide: a TLS client certificate names exactly one account),
# registered CA certificates, the registration code of each account, policies and their
# versions, and what is attached to what. Every row belongs to one account. Times are epoch
# milliseconds; ``seq`` orders listings by creation.
_V3: tuple[str, ...] = (
    """CREATE TABLE iot_things (
        account_id TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
        thing_name TEXT NOT NULL,
        thing_id TEXT NOT NULL,
        thing_type_name TEXT,
        version INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        modified_at INTEGER NOT NULL,
        PRIMARY KEY (account_id, thing_name)
    ) WITHOUT ROWID""",
    """CREATE TABLE iot_thing_attributes (
        account_id TEXT NOT NULL,
        thing_name TEXT NOT NULL,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (account_id, thing_name, name),
        FOREIGN KEY (account_id, thing_name) REFERENCES iot_things(account_id, thing_name)
            ON DELETE CASCADE
    ) WITHOUT ROWID""",
    "CREATE INDEX iot_thing_attributes_value ON iot_thing_attributes(account_id, name, value)",
    """CREATE TABLE iot_certificates (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        certificate_id TEXT NOT NULL UNIQUE,
        account_id TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
        status TEXT NOT NULL,
        origin TEXT NOT NULL,
        ca_certificate_id TEXT,
        certificate_mode TEXT NOT NULL,
        pem TEXT NOT NULL,
        not_before INTEGER NOT NULL,
        not_after INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        modified_at INTEGER NOT NULL,
        customer_version INTEGER NOT NULL,
        generation INTEGER NOT NULL
    )""",
    "CREATE INDEX iot_certificates_account ON iot_certificates(account_id, seq)",
    "CREATE INDEX iot_certificates_ca ON iot_certificates(account_id, ca_certificate_id, seq) "
    "WHERE ca_certificate_id IS NOT NULL",
    """CREATE TABLE iot_ca_certificates (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
        certificate_id TEXT NOT NULL,
        subject_hash TEXT NOT NULL,
        status TEXT NOT NULL,
        auto_registration TEXT NOT NULL,
        certificate_mode TEXT NOT NULL,
        registration_config TEXT,
        pem TEXT NOT NULL,
        not_before INTEGER NOT NULL,
        not_after INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        modified_at INTEGER NOT NULL,
        customer_version INTEGER NOT NULL,
        generation INTEGER NOT NULL,
        UNIQUE (account_id, certificate_id)
    )""",
    "CREATE INDEX iot_ca_certificates_subject ON iot_ca_certificates(subject_hash)",
    """CREATE TABLE iot_registration_codes (
        account_id TEXT PRIMARY KEY REFERENCES accounts(account_id) ON DELETE CASCADE,
        code TEXT NOT NULL
    )""",
    """CREATE TABLE iot_policies (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
        policy_name TEXT NOT NULL,
        default_version INTEGER NOT NULL,
        last_version INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        modified_at INTEGER NOT NULL,
        generation INTEGER NOT NULL,
        UNIQUE (account_id, policy_name)
    )""",
    """CREATE TABLE iot_policy_versions (
        account_id TEXT NOT NULL,
        policy_name TEXT NOT NULL,
        version_id INTEGER NOT NULL,
        document TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (account_id, policy_name, version_id),
        FOREIGN KEY (account_id, policy_name) REFERENCES iot_policies(account_id, policy_name)
            ON DELETE CASCADE
    ) WITHOUT ROWID""",
    """CREATE TABLE iot_thing_principals (
        account_id TEXT NOT NULL,
        thing_name TEXT NOT NULL,
        certificate_id TEXT NOT NULL REFERENCES iot_certificates(certificate_id)
            ON DELETE CASCADE,
        exclusive INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (account_id, thing_name, certificate_id),
        FOREIGN KEY (account_id, thing_name) REFERENCES iot_things(account_id, thing_name)
            ON DELETE CASCADE
    ) WITHOUT ROWID""",
    "CREATE INDEX iot_thing_principals_certificate "
    "ON iot_thing_principals(account_id, certificate_id, thing_name)",
    """CREATE TABLE iot_policy_targets (
        account_id TEXT NOT NULL,
        policy_name TEXT NOT NULL,
        certificate_id TEXT NOT NULL REFERENCES iot_certificates(certificate_id)
            ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (account_id, policy_name, certificate_id),
        FOREIGN KEY (account_id, policy_name) REFERENCES iot_policies(account_id, policy_name)
            ON DELETE CASCADE
    ) WITHOUT ROWID""",
    "CREATE INDEX iot_policy_targets_certificate "
    "ON iot_policy_targets(account_id, certificate_id, policy_name)",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2, _V3)


@dataclass(frozen=True, slots=True)
class RegistryChange:
    """What a change applied to the copy of a shared registry touched (pg_store.py): its
    tables, the devices (ProductKey, DeviceName) whose rows changed, those whose sign-in
    columns changed (a presence change is not one), and the (account, certificate id) of
    the certificates and of the CA certificates whose status changed or that are gone. None:
    every one (a whole copy)."""

    tables: frozenset[str]
    devices: frozenset[tuple[str, str]] | None = frozenset()
    credentials: frozenset[tuple[str, str]] | None = frozenset()
    certificates: frozenset[tuple[str, str]] = frozenset()
    ca_certificates: frozenset[tuple[str, str]] = frozenset()


_ID_LEASE_KEY = "message_id_lease_ms"


class RegistryStore:
    """One SQLite connection to ``registry.db`` (or ``":memory:"``), migrated at open."""

    #: whether other processes share the registry through a server (pg_store.py)
    shared = False

    def __init__(
        self,
        path: str | Path,
        *,
        migrations: tuple[tuple[str, ...], ...] = MIGRATIONS,
    ) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        self._depth = 0
        # Per thread: its read connection and how deep it is in read()/write() blocks.
        self._local = threading.local()
        # Every read connection opened, with its thread, to close them (store/close, or once
        # their thread has ended).
        self._readers: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []
        # Taken once per thread (at its first read) and at close: never on a hot path.
        self._readers_lock = threading.Lock()
        self._closed = False
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        try:
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._conn.execute("PRAGMA busy_timeout = 5000")
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._migrate(migrations)
        except BaseException:
            self._conn.close()
            raise

    @classmethod
    def open(cls, data_dir: str | Path) -> RegistryStore:
        """Open (creating if needed) ``<data_dir>/registry.db``."""
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        return cls(directory / FILE_NAME)

    @classmethod
    def in_memory(cls) -> RegistryStore:
        return cls(":memory:")

    def _migrate(self, migrations: tuple[tuple[str, ...], ...]) -> None:
        version = self.schema_version
        if version > len(migrations):
            raise SchemaVersionError(
                f"{self.path} has registry schema version {version}, but this ThingHub knows "
                f"versions up to {len(migrations)}; it was written by a newer ThingHub. "
                "Run that version, or restore a backup made by this one."
            )
        for target in range(version + 1, len(migrations) + 1):
            with self.write() as conn:
                for statement in migrations[target - 1]:
                    conn.execute(statement)
                # PRAGMA cannot take a parameter; target is an int we computed.
                conn.execute(f"PRAGMA user_version = {int(target)}")

    @property
    def schema_version(self) -> int:
        with self._lock:
            row = self._conn.execute("PRAGMA user_version").fetchone()
        return int(row[0])

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``), committed on success, rolled back on any
        exception. Nested use joins the outer transaction. A full disk raises ``StorageFull``,
        with the transaction rolled back."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            local = self._local
            local.writing = True
            try:
                # A full disk is StorageFull (503 in the HTTP dialects), not SQLite's error.
                with full_disk_refuses("the registry cannot be changed now"):
                    try:
                        yield self._conn
                        self._conn.execute("COMMIT")
                    except BaseException:
                        # SQLite may have rolled back already (SQLITE_FULL, SQLITE_IOERR).
                        if self._conn.in_transaction:
                            self._conn.execute("ROLLBACK")
                        raise
            finally:
                self._depth = 0
                local.writing = False

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads; several statements inside see one snapshot. Inside a
        ``write()`` of the same thread, the write's connection (it sees its own changes);
        otherwise the thread's read connection, which waits for no writer (module notes)."""
        local = self._local
        if getattr(local, "writing", False) or self.path == ":memory:":
            with self._lock:
                if self._depth:
                    yield self._conn
                    return
                self._conn.execute("BEGIN")
                self._depth = 1
                try:
                    yield self._conn
                finally:
                    self._depth = 0
                    self._conn.execute("COMMIT")
            return
        depth: int = getattr(local, "read_depth", 0)
        if depth:
            local.read_depth = depth + 1
            try:
                yield local.reader
            finally:
                local.read_depth = depth
            return
        conn = self._reader()
        conn.execute("BEGIN")
        local.read_depth = 1
        try:
            yield conn
        finally:
            local.read_depth = 0
            conn.execute("COMMIT")

    def read_row(self, sql: str, args: tuple[object, ...]) -> sqlite3.Row | None:
        """One row of one statement: ``read()`` without its BEGIN and COMMIT (a single
        statement is its own snapshot), for the sign-in lookup, which runs for every device
        connecting. Inside a ``read()`` block it reads that block's snapshot."""
        if getattr(self._local, "writing", False) or self.path == ":memory:":
            with self.read() as conn:
                row: sqlite3.Row | None = conn.execute(sql, args).fetchone()
                return row
        row = self._reader().execute(sql, args).fetchone()
        return row

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection, opened at its first read."""
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "reader", None)
        if conn is not None:
            return conn
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")  # as the writer's, so reads see the same
            conn.execute("PRAGMA query_only = ON")
            # A WAL reader waits only while the file is being recovered (a rare moment after
            # another process crashed); never for a writer.
            conn.execute("PRAGMA busy_timeout = 1000")
        except BaseException:
            conn.close()
            raise
        with self._readers_lock:
            if self._closed:
                conn.close()
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            self._close_readers_of_ended_threads()
            self._readers.append((weakref.ref(threading.current_thread()), conn))
        local.reader = conn
        return conn

    def _close_readers_of_ended_threads(self) -> None:
        # Threads come and go (executors, tests): their connections must not pile up. Called
        # with _readers_lock held.
        kept: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []
        for thread_ref, conn in list(self._readers):
            thread = thread_ref()
            if thread is None or not thread.is_alive():
                conn.close()
            else:
                kept.append((thread_ref, conn))
        self._readers = kept

    def data_version(self) -> int:
        """``PRAGMA data_version`` of the writing connection: it changes when another
        connection (another process, such as the command line) committed to the file, and
        not for this store's own writes (sqlite.org/pragma.html#pragma_data_version)."""
        with self._lock:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        with self._lock, self._readers_lock:
            self._closed = True
            readers, self._readers = self._readers, []
            for _thread, conn in readers:
                conn.close()
            self._conn.close()

    # --- counters -----------------------------------------------------------------------

    def get_meta(self, key: str) -> int | None:
        with self.read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def set_meta(self, key: str, value: int) -> None:
        with self.write() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # The ``LeaseStore`` protocol of ids.py: the MessageId generator's time lease.

    def load_id_lease(self) -> int:
        value = self.get_meta(_ID_LEASE_KEY)
        return 0 if value is None else value

    def save_id_lease(self, lease_ms: int) -> None:
        # Only ever raised (ids.LeaseStore): a late background save must not lower it.
        with self.write() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
                (_ID_LEASE_KEY, lease_ms),
            )
