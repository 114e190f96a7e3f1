"""The data directory lock: one hub per data directory.

Two hubs writing one ``broker.db`` would each trust their own memory and journal over the
other's rows; SQLite's own locking keeps the file intact but not the meaning. So the first
thing a hub does with its data directory is take an exclusive ``flock`` on
``<data_dir>/thinghub.lock`` and hold it for its lifetime. The kernel drops the lock when the
process dies, ``kill -9`` included, so a crashed hub never leaves a stale lock behind (a PID
file alone would). The file holds the owner's PID, for the error message only.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import DataDirLocked, StoreOpenError

__all__ = ["LOCK_FILE", "DataDirLock"]

LOCK_FILE = "thinghub.lock"


class DataDirLock:
    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, data_dir: str | Path) -> DataDirLock:
        """Lock ``data_dir`` (created if needed) or raise ``DataDirLocked``."""
        directory = Path(data_dir)
        path = directory / LOCK_FILE
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise StoreOpenError(
                f"cannot use data directory {directory}: {error.strerror or error}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f" (pid {owner})" if owner.isdigit() else ""
            raise DataDirLocked(
                f"data directory {directory} is in use by another running ThingHub{who}; "
                "stop it, or give this one another --data-dir"
            ) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd, path)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
