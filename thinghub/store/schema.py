"""Schema migrations of the hub's SQLite files: ``PRAGMA user_version`` is the file's schema
version, and ``migrations[i]`` (append-only) takes a file from version ``i`` to ``i + 1``."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence


def apply_migrations(
    conn: sqlite3.Connection, migrations: Sequence[Sequence[str]], version: int
) -> None:
    """Take the file from schema ``version`` to ``len(migrations)``, one transaction per step,
    so a crash leaves it at the last step completed."""
    for target in range(version + 1, len(migrations) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in migrations[target - 1]:
                conn.execute(statement)
            # PRAGMA cannot take a parameter; target is an int we computed.
            conn.execute(f"PRAGMA user_version = {int(target)}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
