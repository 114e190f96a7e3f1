"""``thinghub backup DEST``: a consistent copy of the hub's databases while it runs.

Each file is copied with SQLite's online backup API (``Connection.backup``), which reads a
consistent snapshot of the source however the running hub writes to it (WAL mode lets the
copy and the hub's writer proceed side by side), and writes a self-contained database: the
copy has no ``-wal`` file to go with it. The files are copied one after the other, so they
are each consistent, not consistent with each other (the registry, the broker's sessions and
the used Alibaba signature nonces do not refer to each other's rows). The copy is written
next to its destination and renamed into place, so an interrupted backup never leaves a
half-written file under the final name. ``nonces.db`` is copied too: a hub restored from the
backup must still refuse a request captured before it (http/aliyun/nonce_store.py). The hub's
certificate authority (``ca/``: identity/ca.py) is copied as well, its private files kept
readable by their owner only: a hub restored without it would make a new CA, and the
certificates devices hold would no longer be trusted.

Progress: SQLite's backup copies ``_PAGES_PER_STEP`` pages per step and tells how many of the
file's pages remain after each (the ``progress`` callback of ``Connection.backup``). A
``progress(done, total)`` given to ``backup`` hears that in bytes over all the files, once at
the start and after every step. ``total`` is measured before the copy starts and corrected as
each file is copied (the hub may grow the files meanwhile), and ``done`` may go back: when the
hub writes a file during its copy, SQLite starts that file over at the next step
(sqlite.org/c3ref/backup_finish.html, "sqlite3_backup_step()").
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from .errors import StoreError

__all__ = ["DATABASES", "Progress", "backup"]

# The files of a data directory that hold state (registry first: it is the smaller).
DATABASES = ("registry.db", "broker.db", "nonces.db")
# The directory of the hub's certificate authority (identity/ca.py ``CA_DIR``): its key and
# certificates, copied as they are.
CA_DIR = "ca"
# Pages copied per step; between steps the hub's writer may commit.
_PAGES_PER_STEP = 1024

# ``progress(done_bytes, total_bytes)``.
Progress = Callable[[int, int], None]


def backup(
    data_dir: str | Path, destination: str | Path, *, progress: Progress | None = None
) -> list[Path]:
    """Copy every database of ``data_dir`` into the directory ``destination`` (created if
    needed; existing copies there are replaced). Returns the files written. Raises
    ``StoreError`` if ``data_dir`` holds no database or a copy fails. ``progress`` hears of
    the bytes copied (module notes)."""
    # Absolute: a relative path has no file: URI, which the read-only open needs.
    source_dir = Path(data_dir).resolve()
    target_dir = Path(destination)
    sources = [source_dir / name for name in DATABASES if (source_dir / name).exists()]
    if not sources:
        raise StoreError(f"{source_dir} holds no ThingHub database ({', '.join(DATABASES)})")
    if target_dir.resolve() == source_dir.resolve():
        raise StoreError("the backup destination must not be the data directory itself")
    target_dir.mkdir(parents=True, exist_ok=True)
    tally = _Tally(progress, [_size(source) for source in sources])
    written = []
    for index, source in enumerate(sources):
        target = target_dir / source.name
        partial = target_dir / f".{source.name}.partial"
        partial.unlink(missing_ok=True)
        try:
            # Opened read-only: a backup never writes to the live files.
            src = sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True)
            try:
                page_size = int(src.execute("PRAGMA page_size").fetchone()[0])
                dst = sqlite3.connect(partial)
                try:
                    src.backup(
                        dst,
                        pages=_PAGES_PER_STEP,
                        progress=tally.pages_of(index, page_size),
                    )
                    # The copy stands alone: no WAL file to carry along.
                    dst.execute("PRAGMA journal_mode = DELETE")
                finally:
                    dst.close()
            finally:
                src.close()
            with open(partial, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(partial, target)
        except (sqlite3.Error, OSError) as error:
            partial.unlink(missing_ok=True)
            raise StoreError(f"cannot back up {source} to {target}: {error}") from None
        size = target.stat().st_size
        tally.step(index, size, size)
        written.append(target)
    written.extend(_copy_ca(source_dir / CA_DIR, target_dir / CA_DIR))
    return written


def _copy_ca(source: Path, target: Path) -> list[Path]:
    """The CA's files, each written beside its final name, synced and renamed into place,
    with the permissions they had (the key: 0600, the directory 0700)."""
    if not source.is_dir():
        return []
    written = []
    try:
        target.mkdir(mode=0o700, exist_ok=True)
        os.chmod(target, 0o700)
        for path in sorted(p for p in source.iterdir() if p.is_file()):
            final = target / path.name
            partial = target / f".{path.name}.partial"
            partial.unlink(missing_ok=True)
            mode = path.stat().st_mode & 0o777
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as out:
                out.write(path.read_bytes())
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, final)
            written.append(final)
    except OSError as error:
        raise StoreError(f"cannot back up {source} to {target}: {error}") from None
    return written


def _size(path: Path) -> int:
    """The bytes of ``path``'s database as SQLite will copy them (its pages, with those
    still in the WAL), or the file's size if it cannot be asked."""
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            return int(pages) * int(page_size)
        finally:
            conn.close()
    except sqlite3.Error:
        return path.stat().st_size


class _Tally:
    """Bytes copied over all the files, for ``progress``."""

    def __init__(self, progress: Progress | None, sizes: list[int]) -> None:
        self._progress = progress
        self._done = [0] * len(sizes)
        self._sizes = sizes
        self._report()

    def pages_of(self, index: int, page_size: int) -> Callable[[int, int, int], None]:
        """The ``Connection.backup`` callback of file ``index``: (status, remaining pages,
        total pages) after each step."""

        def step(_status: int, remaining: int, total: int) -> None:
            self.step(index, (total - remaining) * page_size, total * page_size)

        return step

    def step(self, index: int, done: int, total: int) -> None:
        self._done[index] = done
        self._sizes[index] = total
        self._report()

    def _report(self) -> None:
        if self._progress is not None:
            self._progress(sum(self._done), sum(self._sizes))
