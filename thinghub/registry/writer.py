"""The thread that runs the registry writes made through the HTTP API.

Theory of operation
-------------------
* **Off the loop.** An Alibaba action that changes the registry (RegisterDevice,
  DeleteDevice, CreateProduct ...: ``http/aliyun/actions.py``) hands its ``Registry`` call to
  :meth:`RegistryWriter.run` and awaits the result. The call runs, with its SQLite transaction
  and its fsync, on this one thread, in the order given: SQLite has one writer, and one thread
  keeps the writes from queueing on the store's lock inside the event loop. Broker side
  effects (closing a deleted device's connection ...) happen on the loop once the write has
  returned; the registry's revoke listeners (``auth/device_watch.py``) hop to the loop by
  themselves.
* **Errors travel back.** Whatever the call raises (a ``RegistryError`` for a refused request,
  ``StorageFull`` on a full disk, anything else) is raised to the awaiting request, which
  answers it in its dialect's shape (``http/aliyun/api.py``).
* **Bounded.** At most ``max_pending`` writes wait or run; past that, :meth:`run` raises
  ``StoreUnavailable`` at once (the Alibaba gateway's 503 ``ServiceUnavailable``, which the
  SDKs retry), having queued nothing. A request that stops waiting (its client went away)
  still has its write done: it was accepted.
* **Supervised.** Anything raised by the thread's own loop (a bug, not a call's error) is
  caught at its top, logged once with its traceback, counted in ``failures`` and named in
  ``failed`` (for ``/healthz``); every write waiting then, and every later one, is refused
  with ``StoreUnavailable`` instead of hanging.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import StoreUnavailable

__all__ = ["RegistryWriter"]

log = logging.getLogger("thinghub.registry")

T = TypeVar("T")


class RegistryWriter:
    """``start(loop)``, then ``await run(work)`` on ``loop``; ``await close()`` at stop."""

    def __init__(self, *, max_pending: int = 10_000) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.max_pending = max_pending
        #: why the thread stopped ("ExceptionType: message"), None while it works
        self.failed: str | None = None
        #: the thread's unexpected failures (0 or 1: it is not restarted)
        self.failures = 0
        #: writes done (whatever their outcome), and refused because too many waited
        self.writes = 0
        self.refused = 0
        self._jobs: queue.SimpleQueue[Callable[[], Any] | None] = queue.SimpleQueue()
        # Loop thread: the futures of the writes handed to the thread, in its order.
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._refusing = False

    @property
    def pending(self) -> int:
        """Writes handed to the thread and not yet done."""
        return len(self._waiting)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run, name="thinghub-registry-writer", daemon=True
        )
        self._thread.start()

    async def close(self) -> None:
        """Finish the writes handed over, then stop the thread. Call it once no request
        can call :meth:`run` any more (the HTTP server is closed)."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(thread.join)

    async def run(self, work: Callable[[], T]) -> T:
        """``work()`` on the writer thread; its result, or what it raised. Raises
        StoreUnavailable, having run nothing, when the writer cannot take it."""
        loop = self._loop
        if loop is None or self._closed or self.failed is not None:
            self.refused += 1
            raise StoreUnavailable(self._why())
        waiting = self._waiting
        if len(waiting) >= self.max_pending:
            self.refused += 1
            if not self._refusing:
                self._refusing = True
                log.warning(
                    "%d registry writes wait for the registry writer; more are answered 503 "
                    "(registry.max_pending_writes)",
                    len(waiting),
                )
            raise StoreUnavailable("too many registry changes wait to be written; try again")
        done: asyncio.Future[T] = loop.create_future()
        waiting.append(done)
        self._jobs.put(work)
        return await done

    def _why(self) -> str:
        if self.failed is not None:
            return f"the registry writer failed ({self.failed})"
        return "the registry writer is not running"

    # ------------------------------------------------------------------ the loop's side

    def _settle(self, ok: bool, outcome: Any) -> None:
        """Loop thread: the oldest write handed over is done."""
        future = self._waiting.popleft()
        if not future.done():  # its request may have stopped waiting
            if ok:
                future.set_result(outcome)
            else:
                future.set_exception(outcome)
        if self._refusing and len(self._waiting) <= self.max_pending // 2:
            self._refusing = False
            log.warning("the registry writer caught up")

    def _refuse_waiting(self) -> None:
        """Loop thread, after the thread failed: refuse every write it will not do."""
        waiting = self._waiting
        while waiting:
            future = waiting.popleft()
            if not future.done():
                future.set_exception(StoreUnavailable(self._why()))

    def _dispatch(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        try:
            self._work()
        except BaseException as error:  # supervised: whatever it was, say it once and refuse
            self.failures += 1
            self.failed = f"{type(error).__name__}: {error}"
            log.error(
                "the registry writer failed; registry changes through the API are answered "
                "503 until the hub restarts",
                exc_info=True,
            )
            self._dispatch(self._refuse_waiting)

    def _work(self) -> None:
        while True:
            work = self._jobs.get()
            if work is None:
                return
            try:
                result = work()
            except sqlite3.OperationalError as error:
                # The file stayed locked past the busy timeout (another process writing) or
                # could not be written: the change was not made, try again later (503).
                self.writes += 1
                refusal = StoreUnavailable(f"the registry cannot be written now: {error}")
                self._dispatch(self._settle, False, refusal)
            except Exception as error:  # the call's own outcome: its request answers it
                self.writes += 1
                self._dispatch(self._settle, False, error)
            else:
                self.writes += 1
                self._dispatch(self._settle, True, result)
