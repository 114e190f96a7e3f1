"""``thinghub backup DEST``: a consistent copy of the hub's databases while it runs.

Each file is copied with SQLite's online backup API (``Connection.backup``), which reads a
consistent snapshot of the source however the running hub writes to it (WAL mode lets the
copy and the hub's writer proceed side by side), and writes a self-contained database: the
copy has no ``-wal`` file to go with it. The files are copied one after the other, so they
are each consistent, not consistent with each other (the registry, the broker's sessions and
the used Alibaba signature nonces do not refer to each other's rows). The copy is written
next to its destination and renamed into place, so an interrupted backup never leaves a
half-written file under the final name. ``nonces.db`` is copied too: a hub restored from the
backup must still refuse a request captured before it (http/aliyun/nonce_store.py).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from .errors import StoreError

__all__ = ["DATABASES", "backup"]

# The files of a data directory that hold state (registry first: it is the smaller).
DATABASES = ("registry.db", "broker.db", "nonces.db")
# Pages copied per step; between steps the hub's writer may commit.
_PAGES_PER_STEP = 1024


def backup(data_dir: str | Path, destination: str | Path) -> list[Path]:
    """Copy every database of ``data_dir`` into the directory ``destination`` (created if
    needed; existing copies there are replaced). Returns the files written. Raises
    ``StoreError`` if ``data_dir`` holds no database or a copy fails."""
    source_dir = Path(data_dir)
    target_dir = Path(destination)
    sources = [source_dir / name for name in DATABASES if (source_dir / name).exists()]
    if not sources:
        raise StoreError(f"{source_dir} holds no ThingHub database ({', '.join(DATABASES)})")
    if target_dir.resolve() == source_dir.resolve():
        raise StoreError("the backup destination must not be the data directory itself")
    target_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources:
        target = target_dir / source.name
        partial = target_dir / f".{source.name}.partial"
        partial.unlink(missing_ok=True)
        try:
            # Opened read-only: a backup never writes to the live files.
            src = sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True)
            try:
                dst = sqlite3.connect(partial)
                try:
                    src.backup(dst, pages=_PAGES_PER_STEP)
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
        written.append(target)
    return written
