"""The thread that writes device presence (``presence.py``) to ``registry.db``.

Theory of operation
-------------------
* **One thread, batches.** The event loop records presence in the registry's
  :class:`~.presence.PresenceBook` and wakes this thread (``queue.SimpleQueue.put``, which never
  blocks) when changes start to wait. The thread asks the loop for a batch
  (``call_soon_threadsafe``; the loop answers through another ``SimpleQueue``), writes it in one
  transaction (one fsync for up to ``batch`` rows), and tells the loop which changes are
  written. While it writes, the next changes gather and coalesce. The loop never waits for it.
* **A write that fails** (a full disk, a lock held too long by another process: ``StorageFull``,
  ``sqlite3.Error``, ``OSError``) changes nothing: the changes stay pending (coalesced with
  later ones) and are tried again after ``retry_s``. Failures are counted in
  ``write_failures`` and said once per episode; devices keep connecting meanwhile (their
  status is bookkeeping; refusing them would lock them out of what is queued for them).
* **Stop** (:meth:`PresenceWriter.close`, once no connection is left) writes what is pending,
  trying again for up to ``STOP_DEADLINE_S`` if writes fail. What still cannot be written is
  said; the next start marks every device offline anyway (``Registry.mark_all_offline``).
* **Supervised.** Anything else raised on the thread (a bug) is caught at its top, logged once
  with its traceback, counted in ``failures`` and named in ``failed`` (for ``/healthz``). The
  loop goes on recording (bounded by ``registry.presence_max_pending``) and reads still see the
  truth; only the file lags until the hub restarts.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from .errors import StoreUnavailable
from .presence import PresenceBatch, PresenceBook, write_batch
from .store import RegistryStore

__all__ = ["RETRY_S", "STOP_DEADLINE_S", "PresenceWriter"]

log = logging.getLogger("thinghub.registry")

# A failed batch is tried again after this long.
RETRY_S = 1.0
# At stop, failing writes are tried again for this long at most.
STOP_DEADLINE_S = 3.0
# How a presence write fails when the registry cannot be written now (a full disk is
# StorageFull; an I/O error or a lock held too long is SQLite's).
PRESENCE_FAILURES = (StoreUnavailable, sqlite3.Error, OSError)

_WAKE: Final = "wake"
_STOP: Final = "stop"


class _Round(enum.Enum):
    """How a round of writing ended (PresenceWriter._drain)."""

    EMPTY = "nothing left"
    MORE = "caught up; changes may have arrived meanwhile"
    FAILED = "a write failed"


class PresenceWriter:
    """``start(loop)`` once presence is recorded on ``loop``; ``await close()`` at stop."""

    def __init__(
        self,
        store: RegistryStore,
        book: PresenceBook,
        *,
        batch: int = 10_000,
        retry_s: float = RETRY_S,
        interval_s: float = 0.1,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self._store = store
        self._book = book
        self._batch = batch
        self._retry_s = retry_s
        # After a wake-up the thread waits this long before it takes a batch: a fleet
        # signing in becomes a few large batches, not one small transaction (and a round of
        # thread hand-overs with the loop) per device.
        self._interval_s = interval_s
        #: why the thread stopped ("ExceptionType: message"), None while it works
        self.failed: str | None = None
        #: the thread's unexpected failures (0 or 1: it is not restarted)
        self.failures = 0
        #: the last write error while writes fail (a full disk), else None
        self.failing: str | None = None
        #: batches and rows committed; writes that failed (each retried later)
        self.batches = 0
        self.rows_written = 0
        self.write_failures = 0
        self._wake: queue.SimpleQueue[str] = queue.SimpleQueue()
        # The loop's answers to the thread's requests for a batch.
        self._answers: queue.SimpleQueue[tuple[PresenceBatch | None]] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ lag, for /metrics

    @property
    def pending(self) -> int:
        """Devices whose presence change waits to be written."""
        return len(self._book.pending)

    @property
    def oldest_pending_s(self) -> float:
        """How long the oldest unwritten change has waited, in seconds."""
        return self._book.oldest_pending_s()

    @property
    def changes(self) -> int:
        """Presence changes recorded (``rows_written`` below it is the coalescing at work)."""
        return self._book.changes

    @property
    def overflows(self) -> int:
        """Changes that found ``registry.presence_max_pending`` devices waiting (module notes
        of ``presence.py``: a resync then puts every status right)."""
        return self._book.overflows

    # ------------------------------------------------------------------ lifecycle (loop)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._book.wake = self._wake_up
        self._thread = threading.Thread(target=self._run, name="thinghub-presence", daemon=True)
        self._thread.start()
        if self._book.pending or self._book.resync_due:
            self._wake_up()

    async def close(self) -> None:
        """Write what is pending (module notes), then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._book.wake = None
        thread = self._thread
        if thread is not None:
            self._wake.put(_STOP)
            await asyncio.to_thread(thread.join)
        left = len(self._book.pending)
        if left:
            log.warning(
                "%d device status changes could not be written to the registry before the "
                "stop; every device is marked offline at the next start",
                left,
            )

    def _wake_up(self) -> None:
        self._wake.put(_WAKE)

    # ------------------------------------------------------------------ the loop's side

    def _hand_over(self) -> None:
        """Loop thread: answer the writer's request for the next batch."""
        self._answers.put((self._book.take(self._batch),))

    def _written(self, batch: PresenceBatch) -> None:
        self._book.written(batch)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        try:
            self._work()
        except BaseException as error:  # supervised: whatever it was, say it once
            self.failures += 1
            self.failed = f"{type(error).__name__}: {error}"
            log.error(
                "the presence writer failed; device statuses are no longer written to the "
                "registry until the hub restarts (the hub still knows them)",
                exc_info=True,
            )

    def _work(self) -> None:
        stopping = False
        more = False  # the last round left changes behind (it wrote a batch)
        while not stopping:
            if not more:
                timeout = self._retry_s if self.failing is not None else None
                try:
                    stopping = self._wake.get(timeout=timeout) == _STOP
                except queue.Empty:
                    pass  # time to try the failed batch again
            # Let the burst gather for an interval; a STOP ends the wait at once.
            gather_until = time.monotonic() + self._interval_s
            while not stopping and (left := gather_until - time.monotonic()) > 0:
                try:
                    stopping = self._wake.get(timeout=left) == _STOP
                except queue.Empty:
                    break
            while True:  # every wake-up sent meanwhile is answered by the round below
                try:
                    stopping = self._wake.get_nowait() == _STOP or stopping
                except queue.Empty:
                    break
            # One round: batches back to back only while they come full (a backlog); a
            # partial batch means the writer has caught up, and what arrives meanwhile waits
            # for the next round, one interval later, rather than a transaction (and two
            # hand-overs with the loop) each for a handful of rows.
            more = self._drain(until_empty=False) is _Round.MORE
        deadline = time.monotonic() + STOP_DEADLINE_S
        while self._drain(until_empty=True) is _Round.FAILED and time.monotonic() < deadline:
            time.sleep(min(self._retry_s, 0.2))

    def _drain(self, *, until_empty: bool) -> _Round:
        """Write batches: until none is left (EMPTY), or with ``until_empty`` False until one
        is not full (MORE: changes may be left for the next round), or until a write fails
        (FAILED)."""
        while True:
            batch = self._take()
            if batch is None:
                return _Round.EMPTY
            try:
                with self._store.write() as conn:
                    write_batch(conn, batch)
            except PRESENCE_FAILURES as error:
                self._write_failed(error)
                return _Round.FAILED
            self.batches += 1
            self.rows_written += len(batch.changes) + len(batch.resync or ())
            self._write_worked()
            if not self._call(self._written, batch):
                return _Round.EMPTY  # the loop is gone: nobody records any more
            if not until_empty and len(batch.changes) < self._batch:
                return _Round.MORE

    def _take(self) -> PresenceBatch | None:
        """Ask the loop for the next batch; None when there is none (or no loop)."""
        loop = self._loop
        assert loop is not None
        if not self._call(self._hand_over):
            return None
        while True:
            try:
                return self._answers.get(timeout=1.0)[0]
            except queue.Empty:
                if loop.is_closed() or not loop.is_running():
                    return None

    def _call(self, callback: Callable[..., None], *args: Any) -> bool:
        loop = self._loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed
            return False
        return True

    def _write_failed(self, error: Exception) -> None:
        self.write_failures += 1
        if self.failing is None:
            log.warning(
                "device ONLINE/OFFLINE status cannot be written to the registry (%s); devices "
                "still connect, their status lags in registry.db until writes work again "
                "(%d changes wait)",
                error,
                len(self._book.pending),
            )
        self.failing = str(error) or type(error).__name__

    def _write_worked(self) -> None:
        if self.failing is not None:
            self.failing = None
            log.warning("device status writes work again (%d failed so far)", self.write_failures)
