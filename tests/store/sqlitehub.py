"""An ``InMemoryHub`` (tests/broker/harness.py) whose broker persists to a real ``broker.db``
through ``SQLiteStore``; ``restart`` closes the file and opens it again, so what the new broker
restores really went through SQLite. The store runs without an event loop, so it is
synchronous for the harness: an acknowledgement that waits for a commit is written before the
call that caused it returns, as the harness's scripted clients expect."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness import InMemoryHub

from thinghub.store.base import BrokerStore
from thinghub.store.sqlite import SQLiteStore, StoreLimits


class SQLiteHub(InMemoryHub):
    def __init__(
        self,
        data_dir: Path,
        *,
        store: BrokerStore | None = None,
        limits: StoreLimits | None = None,
        **settings: Any,
    ):
        assert store is None, "SQLiteHub opens its own store"
        self.data_dir = data_dir
        self.limits = limits
        # The store's wall clock moves with the FakeClock (made by InMemoryHub), from now.
        self._wall_base = time.time()
        super().__init__(store=self._open(), **settings)
        self._clock_base = self.clock.time()

    def _wall(self) -> float:
        return self._wall_base + self.clock.time() - getattr(self, "_clock_base", self.clock.time())

    def _open(self) -> SQLiteStore:
        # The store reads the broker's clock lazily.
        return SQLiteStore.open(
            self.data_dir, clock=lambda: self.clock.time(), wall=self._wall, limits=self.limits
        )

    @property
    def sqlite(self) -> SQLiteStore:
        assert isinstance(self.store, SQLiteStore)
        return self.store

    def restart(self) -> None:
        self.sqlite.close()
        self.store = self._open()
        super().restart()

    def close(self) -> None:
        self.sqlite.close()
