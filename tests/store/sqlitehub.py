"""An ``InMemoryHub`` (tests/broker/harness.py) whose broker persists to a real ``broker.db``
through ``SQLiteStore``; ``restart`` closes the file and opens it again, so what the new broker
restores really went through SQLite. The store runs without an event loop, so it is
synchronous for the harness: an acknowledgement that waits for a commit is written before the
call that caused it returns, as the harness's scripted clients expect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import InMemoryHub

from thinghub.store.base import BrokerStore
from thinghub.store.sqlite import SQLiteStore


class SQLiteHub(InMemoryHub):
    def __init__(self, data_dir: Path, *, store: BrokerStore | None = None, **settings: Any):
        assert store is None, "SQLiteHub opens its own store"
        self.data_dir = data_dir
        super().__init__(store=self._open(), **settings)

    def _open(self) -> SQLiteStore:
        # The store reads the broker's clock (the FakeClock, made by InMemoryHub) lazily.
        return SQLiteStore.open(self.data_dir, clock=lambda: self.clock.time())

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
