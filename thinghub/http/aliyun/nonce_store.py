"""Used ``SignatureNonce``\\ s on disk: ``nonces.db`` in the data directory, so that a signed
request captured before a restart cannot be replayed after it while its timestamp is valid.

Theory of operation
-------------------
* **The check stays in memory.** ``signing.verify`` decides, synchronously and on the event
  loop, whether a ``(AccessKeyId, nonce)`` pair was used (:class:`~.signing.NonceCache`). This
  module only makes the cache's contents survive a restart: :func:`open_nonce_store` loads
  the unexpired rows into a fresh cache before the HTTP port opens.
* **Durable before the answer.** The API layer calls :meth:`NonceStore.use` after
  ``verify``: it queues the pair and waits until a transaction holding it has committed.
  Only then is the action run and answered, so a request acknowledged as accepted is one
  whose nonce a restart will not forget (a crash between the commit and the action at worst
  burns the nonce of a request that did nothing). A nonce the store cannot take is
  forgotten by the cache again, as its request is refused having done nothing.
* **One writer thread, group commit.** On the loop thread, :meth:`NonceStore.use` appends
  the pair to a journal and a future to a queue of waiters; the journal is sealed once per
  loop iteration (``call_soon``) into a ``queue.SimpleQueue`` whose ``put`` never blocks. The
  writer takes every sealed batch (up to ``_MAX_BATCH`` rows) into ONE transaction, then
  reports the count with one ``loop.call_soon_threadsafe``, which resolves that many waiters
  in order. While it commits, the next batch gathers. The event loop never waits for the
  disk or for a lock the writer holds.
* **Append-only rows.** Whether a nonce was used is the cache's question; the file only has
  to give the pairs back. So the table has no unique key: an insert appends to the end of
  the table and of the expiry index, and a commit writes a few pages, not two random B-tree
  leaves per nonce. (A nonce used again once expired is a second row; the first one is
  expired by then, so only one loads.)
* **Durability level.** WAL with ``synchronous = NORMAL``: COMMIT has written the
  transaction into the WAL file (the OS page cache) when it returns, so it survives a
  process crash or ``kill -9``; only an OS crash or a power loss can lose the last commits
  (WAL is fsynced at checkpoints, which are made rare: ``_CHECKPOINT_PAGES``). That is
  enough against the replay this guards: a fsync per group on every signed call is not
  worth closing the window a power cut would leave (``broker.db`` uses FULL because it holds
  messages acknowledged to their publishers, ``thinghub/store/sqlite.py``). Only the hub
  opens the file (``locking_mode = EXCLUSIVE``); ``thinghub backup`` does not copy it.
* **Bounded.** At most ``max_pending`` nonces wait for the writer; past that, or once the
  writer has failed or the store is closed, :meth:`NonceStore.use` raises
  :class:`NonceStoreUnavailable` at once (the API answers 503 ``ServiceUnavailable``). A
  nonce not committed within ``COMMIT_TIMEOUT_S`` (a stalled disk) is refused the same way
  by a once-a-second watchdog. On disk: expired rows are purged at load and every
  ``_PURGE_EVERY_S`` by the writer, and only the ``max_rows`` latest-expiring rows are kept
  (the cache holds no more either).
* **A full disk** (any ``sqlite3.OperationalError`` while writing) refuses the nonces of that
  batch (503; their requests changed nothing and may be sent again), is logged once per
  episode and shown in ``failing``; the next batch tries again, so the store recovers by
  itself when the disk does.
* **Supervised.** The writer runs under ``health.supervised``: any other exception on its
  thread (a bug, a violated constraint) is logged once with its traceback, counted in
  ``failures``, and recorded in ``failed``, both here and in the hub's ``Health``
  (``/healthz`` 503, ``/metrics``); every nonce waiting then, and every later one, is refused
  (503) instead of hanging. A failed store stays failed until the hub restarts. A full disk
  shows in ``Health`` as degraded while it lasts.

Compatibility notes: ``PRAGMA user_version`` is the schema version (``MIGRATIONS[i]`` takes
the file from ``i`` to ``i + 1``, append-only). The AccessKeyId and the nonce are stored as
UTF-8 BLOBs (``surrogatepass``: a header value may hold any ``str``), expiry as epoch seconds.
Losing the file is harmless beyond the replay window: it holds nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from ...health import Health, supervised
from ...store.errors import SchemaVersionError, StoreOpenError
from ...store.schema import apply_migrations
from .signing import NONCE_CACHE_ENTRIES, NonceCache

__all__ = [
    "COMMIT_TIMEOUT_S",
    "COMPONENT",
    "FILE_NAME",
    "MIGRATIONS",
    "NonceStore",
    "NonceStoreUnavailable",
    "open_nonce_store",
]

log = logging.getLogger("thinghub.http.aliyun.nonces")

FILE_NAME = "nonces.db"
#: the writer's name in ``Health`` (``/healthz``, ``/metrics``)
COMPONENT = "nonces"
#: nonces waiting for the writer, hub-wide, before new requests are answered 503
MAX_PENDING = 10_000
#: how long a request waits for its nonce's commit before it is answered 503
COMMIT_TIMEOUT_S = 10.0
# Nonces committed in one transaction at most: bounds how long the first of them waits.
_MAX_BATCH = 1024
# Often enough that a purge under a flood deletes a few seconds' worth of rows, not minutes'.
_PURGE_EVERY_S = 10.0
_WATCH_EVERY_S = 1.0
_CHECKPOINT_PAGES = 16_384  # 64 MiB of 4 KiB pages
_WAL_KEEP_BYTES = 4 * 1024 * 1024

_V1: tuple[str, ...] = (
    """CREATE TABLE nonces (
        access_key_id BLOB NOT NULL,
        nonce BLOB NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX nonces_by_expiry ON nonces (expires_at)",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1,)

# One used nonce: (AccessKeyId, nonce, expires_at).
_Row = tuple[str, str, float]


class NonceStoreUnavailable(Exception):
    """The nonce cannot be made durable now (the writer is behind, failed, or closed): the
    request must be refused with the gateway's "service unavailable", having done nothing."""


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _decode(blob: bytes) -> str:
    return blob.decode("utf-8", "surrogatepass")


class NonceStore:
    """``<data_dir>/nonces.db``; see the module notes.

    :meth:`use` and :meth:`close` are called on the event loop given to :meth:`start`;
    :meth:`load` before :meth:`start`, from any one thread."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_pending: int = MAX_PENDING,
        max_rows: int = NONCE_CACHE_ENTRIES,
        wall: Callable[[], float] = time.time,
        health: Health | None = None,
    ) -> None:
        if max_pending < 1 or max_rows < 1:
            raise ValueError("max_pending and max_rows must be at least 1")
        self.path = Path(path)
        self.max_pending = max_pending
        self.max_rows = max_rows
        self._wall = wall
        self._conn = _open(self.path)
        try:
            _configure(self._conn, self.path)
        except BaseException:
            self._conn.close()
            raise
        #: why the writer stopped ("ExceptionType: message"), None while it works
        self.failed: str | None = None
        #: the last write error while writing fails and may work again (a full disk), else None
        self.failing: str | None = None
        #: writer failures (0 or 1: a failed writer is not restarted)
        self.failures = 0
        #: requests answered 503 because the store could not take their nonce
        self.refused = 0
        # Sealed batches for the writer (None stops it); put() never blocks.
        self._queue: queue.SimpleQueue[list[_Row] | None] = queue.SimpleQueue()
        # Loop-thread state. The journal gathers this loop iteration's nonces (sealed by a
        # call_soon, so one put and one writer wake-up per iteration, not per request);
        # _waiting holds (queued at, future) of every nonce not yet reported by the writer,
        # in the order the writer commits them.
        self._journal: list[_Row] = []
        self._seal_scheduled = False
        self._waiting: deque[tuple[float, asyncio.Future[bool]]] = deque()
        self._refusing = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._health = health if health is not None else Health()
        self._health.register(COMPONENT)

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        *,
        max_pending: int = MAX_PENDING,
        max_rows: int = NONCE_CACHE_ENTRIES,
        wall: Callable[[], float] = time.time,
        health: Health | None = None,
    ) -> NonceStore:
        """Open (creating if needed) ``<data_dir>/nonces.db``. The caller holds the data
        directory lock (``thinghub/store/lock.py``)."""
        path = Path(data_dir) / FILE_NAME
        return cls(path, max_pending=max_pending, max_rows=max_rows, wall=wall, health=health)

    # ------------------------------------------------------------------ start-up and shutdown

    def load(self, cache: NonceCache, now: float | None = None) -> int:
        """Purge expired rows, then put the unexpired ones into ``cache`` (oldest expiry
        first, at most its ``max_entries``, the latest). Returns how many were loaded."""
        current = self._wall() if now is None else now
        try:
            _purge(self._conn, current, self.max_rows)
            rows = self._conn.execute(
                "SELECT access_key_id, nonce, expires_at FROM nonces WHERE expires_at > ? "
                "ORDER BY expires_at DESC LIMIT ?",
                (current, cache.max_entries),
            ).fetchall()
        except sqlite3.DatabaseError as error:  # a damaged file: a clear error at start
            raise StoreOpenError(
                f"cannot read {self.path}: {error}. It holds only used SignatureNonces: move "
                "it away to start with an empty one"
            ) from None
        for access_key_id, nonce, expires_at in reversed(rows):
            cache.use(_decode(access_key_id), _decode(nonce), float(expires_at), current)
        return len(rows)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the writer; ``loop`` is where :meth:`use` is awaited."""
        self._loop = loop
        run = supervised(
            self._health,
            COMPONENT,
            self._write,
            consequence=f"{self.path}: Alibaba API calls are answered 503",
            on_failure=self._writer_failed,
        )
        self._thread = threading.Thread(target=run, name="thinghub-nonces", daemon=True)
        self._thread.start()
        self._watchdog = loop.call_later(_WATCH_EVERY_S, self._watch)

    async def close(self) -> None:
        """Commit what is queued, stop the writer, close the file. Call it once nothing
        calls :meth:`use` any more (the HTTP server is closed)."""
        if self._closed:
            return
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        thread = self._thread
        if thread is not None:
            self._seal()
            self._queue.put(None)
            await asyncio.to_thread(thread.join)
        self._conn.close()

    # ------------------------------------------------------------------ the loop side

    @property
    def pending(self) -> int:
        """Nonces taken and not yet reported committed (or failed) by the writer."""
        return len(self._waiting)

    async def use(self, access_key_id: str, nonce: str, expires_at: float) -> None:
        """Return once ``(access_key_id, nonce)`` is committed with its expiry. Raises
        NonceStoreUnavailable, having queued nothing, when the store cannot take it, and
        when the commit fails or does not come within COMMIT_TIMEOUT_S."""
        loop = self._loop
        if loop is None or self._closed or self.failed is not None:
            self.refused += 1
            raise NonceStoreUnavailable(self._why())
        waiting = self._waiting
        if len(waiting) >= self.max_pending:
            self.refused += 1
            if not self._refusing:
                self._refusing = True
                log.warning(
                    "%s: %d nonces wait for the writer; Alibaba API calls are answered 503",
                    self.path,
                    len(waiting),
                )
            raise NonceStoreUnavailable("too many requests wait for their nonce to be stored")
        done: asyncio.Future[bool] = loop.create_future()
        self._journal.append((access_key_id, nonce, expires_at))
        waiting.append((loop.time(), done))
        if not self._seal_scheduled:
            self._seal_scheduled = True
            loop.call_soon(self._seal)
        if not await done:
            self.refused += 1
            raise NonceStoreUnavailable(self._why())

    def _why(self) -> str:
        if self.failed is not None:
            return f"the nonce store failed ({self.failed})"
        if self._closed or self._loop is None:
            return "the nonce store is not open"
        return "the nonce store did not commit in time"

    def _seal(self) -> None:
        """Loop thread, between two callbacks: hand this iteration's nonces to the writer."""
        self._seal_scheduled = False
        if self._journal:
            self._queue.put(self._journal)
            self._journal = []

    def _committed(self, count: int) -> None:
        """Loop thread: the writer committed the next ``count`` nonces."""
        waiting = self._waiting
        for _ in range(count):
            future = waiting.popleft()[1]
            if not future.done():  # not timed out or cancelled meanwhile
                future.set_result(True)
        if self._refusing and len(waiting) <= self.max_pending // 2:
            self._refusing = False
            log.warning("%s: the nonce writer caught up", self.path)

    def _refused(self, count: int) -> None:
        """Loop thread: the writer could not commit the next ``count`` nonces."""
        waiting = self._waiting
        for _ in range(count):
            future = waiting.popleft()[1]
            if not future.done():
                future.set_result(False)

    def _refuse_waiting(self) -> None:
        """Loop thread, after the writer failed: refuse every nonce it will not commit. On
        the loop, as ``use`` is, so none is taken after this (``failed`` is already set)."""
        self._journal = []
        waiting = self._waiting
        while waiting:
            future = waiting.popleft()[1]
            if not future.done():
                future.set_result(False)

    def _watch(self) -> None:
        """Loop thread, every _WATCH_EVERY_S: nonces waiting past COMMIT_TIMEOUT_S (a stalled
        disk) are refused, so their requests get 503 instead of hanging. They stay in
        ``_waiting`` (and count against ``max_pending``) until the writer reports them."""
        assert self._loop is not None
        deadline = self._loop.time() - COMMIT_TIMEOUT_S
        for queued_at, future in self._waiting:
            if queued_at > deadline:
                break
            if not future.done():
                future.set_result(False)
        if not self._closed:
            self._watchdog = self._loop.call_later(_WATCH_EVERY_S, self._watch)

    def _dispatch(self, callback: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    # ------------------------------------------------------------------ the writer thread

    def _writer_failed(self, reason: str) -> None:
        """Writer thread, as it stops for good (``supervised`` logged it): refuse every
        nonce from now on, those waiting too."""
        self.failures += 1
        self.failed = reason
        _rollback(self._conn)  # the batch's transaction, if it was open
        self._dispatch(self._refuse_waiting)

    def _write_failed(self, error: sqlite3.Error) -> None:
        """Writer thread: a write that may work later failed; said once per episode."""
        if self.failing is None:
            log.error(
                "cannot write %s (%s): Alibaba API calls are answered 503 until it works again",
                self.path,
                error,
            )
        self.failing = str(error)
        self._health.degrade(COMPONENT, f"cannot write {self.path}: {error}")

    def _write_worked(self) -> None:
        if self.failing is not None:
            self.failing = None
            self._health.recover(COMPONENT)
            log.warning("writing %s works again", self.path)

    def _write(self) -> None:
        """Commit sealed batches, several per transaction (group commit), until None."""
        conn = self._conn
        source = self._queue
        purge_at = self._wall() + _PURGE_EVERY_S
        while True:
            rows: list[tuple[bytes, bytes, float]] = []
            stopping = False
            try:
                batch = source.get(timeout=max(0.0, purge_at - self._wall()))
                while True:
                    if batch is None:
                        stopping = True
                        break
                    rows += [(_encode(k), _encode(n), expires) for k, n, expires in batch]
                    if len(rows) >= _MAX_BATCH:
                        break
                    batch = source.get_nowait()
            except queue.Empty:
                pass
            if rows:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.executemany(
                        "INSERT INTO nonces (access_key_id, nonce, expires_at) VALUES (?, ?, ?)",
                        rows,
                    )
                    conn.execute("COMMIT")
                except sqlite3.OperationalError as error:
                    # A full disk or an I/O error: these nonces are refused (their requests
                    # get 503, change nothing and may be sent again) and the next batch tries
                    # again, so the store recovers by itself when the disk does.
                    _rollback(conn)
                    self._write_failed(error)
                    self._dispatch(self._refused, len(rows))
                else:
                    self._write_worked()
                    self._dispatch(self._committed, len(rows))
            if self._wall() >= purge_at:
                try:
                    _purge(conn, self._wall(), self.max_rows)
                except sqlite3.OperationalError as error:
                    self._write_failed(error)  # purged at the next round instead
                purge_at = self._wall() + _PURGE_EVERY_S
            if stopping:
                return


async def open_nonce_store(
    data_dir: str | Path, cache: NonceCache | None = None, health: Health | None = None
) -> tuple[NonceStore, NonceCache]:
    """Open ``nonces.db``, load its unexpired nonces into ``cache`` (a new one by default)
    and start the writer on the running loop, reporting to ``health``. The file work runs on
    a worker thread."""
    nonces = cache if cache is not None else NonceCache()

    def opened() -> NonceStore:
        store = NonceStore.open(data_dir, max_rows=nonces.max_entries, health=health)
        try:
            loaded = store.load(nonces)
        except BaseException:
            store._conn.close()
            raise
        if loaded:
            log.info("%d unexpired SignatureNonces loaded from %s", loaded, store.path)
        return store

    store = await asyncio.to_thread(opened)
    store.start(asyncio.get_running_loop())
    return store, nonces


# ---------------------------------------------------------------------------- the file


def _open(path: Path) -> sqlite3.Connection:
    try:
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as error:
        raise StoreOpenError(f"cannot open {path}: {error}") from None


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    """WAL + NORMAL (see the module notes), then the migrations. A file that is not a
    database, or holds a newer schema, is refused untouched."""
    # Normal locking, not EXCLUSIVE: the hub writes the file alone (the data directory lock,
    # thinghub/store/lock.py), but ``thinghub backup`` reads it while the hub runs, and the
    # writer commits in batches, so the file-lock system calls cost little.
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as error:
        raise StoreOpenError(
            f"cannot open {path}: {error}. It holds only used SignatureNonces: move it away "
            "to start with an empty one"
        ) from None
    if version > len(MIGRATIONS):
        raise SchemaVersionError(
            f"{path} has nonce schema version {version}, but this ThingHub knows versions up "
            f"to {len(MIGRATIONS)}; it was written by a newer ThingHub"
        )
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreOpenError(f"{path}: cannot use WAL mode (got {mode!r})")
    # Survives a process crash (kill -9), not a power loss: see the module notes.
    conn.execute("PRAGMA synchronous = NORMAL")
    # NORMAL fsyncs at checkpoints only; SQLite's default of one per 1000 WAL pages would be
    # several a second under a flood of Pubs (each commit appends a few pages).
    conn.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit = {_WAL_KEEP_BYTES}")  # the WAL shrinks back
    apply_migrations(conn, MIGRATIONS, version)


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # SQLite rolled back already, or no transaction was open


def _purge(conn: sqlite3.Connection, now: float, max_rows: int) -> None:
    """Forget expired nonces, and all but the ``max_rows`` latest-expiring ones (the cache
    would not hold more of them either)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM nonces WHERE expires_at <= ?", (now,))
        conn.execute(
            "DELETE FROM nonces WHERE expires_at < (SELECT expires_at FROM nonces "
            "ORDER BY expires_at DESC LIMIT 1 OFFSET ?)",
            (max_rows - 1,),
        )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
