"""The registry rows a test hub started with, and the purge that removes every row added
since: how ``reset()`` gives the next test a registry as it was (README *Testing*, *What reset
clears*).

Every table of ``registry.db`` takes part (accounts, access keys, instances, products,
devices, topic categories, batch registrations, device shadows, the AWS IoT things,
certificates, CA certificates, policies and their attachments; and whatever later schema
versions add), keyed by its primary key (rowid for a table without one), except:

* ``meta``: the hub's own counters (the MessageId lease, registry/ids.py). MessageIds keep
  rising across a reset, as they do across a restart.
* SQLite's own tables (``sqlite_sequence``, ``sqlite_stat*``).

Rows that were there at the baseline stay as they are now: a reset deletes what a test
added, it does not undo what a test changed (a baseline access key it disabled stays
disabled).

The purge is one transaction on the registry's writing connection, run on the registry
writer thread (registry/writer.py) like every API write, with the foreign keys checked at its
commit (``PRAGMA defer_foreign_keys``): children and parents go together, in any order, and a
purge that would leave a dangling reference is rolled back whole.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from ..registry.store import RegistryStore

__all__ = ["KEPT_TABLES", "RegistryBaseline"]

#: Tables a reset leaves alone (module notes).
KEPT_TABLES = frozenset({"meta"})

Key = tuple[object, ...]


@dataclass(frozen=True, slots=True)
class _Table:
    name: str
    #: the columns that identify a row: the primary key's, else ``rowid``
    key_columns: tuple[str, ...]

    def select_keys(self) -> str:
        columns = ", ".join(_quote(c) if c != "rowid" else c for c in self.key_columns)
        return f"SELECT {columns} FROM {_quote(self.name)}"

    def delete_one(self) -> str:
        where = " AND ".join(f"{_quote(c) if c != 'rowid' else c} IS ?" for c in self.key_columns)
        return f"DELETE FROM {_quote(self.name)} WHERE {where}"


@dataclass(frozen=True, slots=True)
class RegistryBaseline:
    """The keys of every row of every purged table, read once when the hub has started."""

    rows: dict[str, frozenset[Key]]

    @classmethod
    def capture(cls, store: RegistryStore) -> RegistryBaseline:
        with store.read() as conn:
            return cls({t.name: _keys(conn, t) for t in _tables(conn)})

    def purge(self, store: RegistryStore) -> dict[str, int]:
        """Delete every row that is not in the baseline; rows deleted per table (tables with
        none left out). Runs on the registry writer thread."""
        deleted: dict[str, int] = {}
        with store.write() as conn:
            conn.execute("PRAGMA defer_foreign_keys = ON")
            for table in _tables(conn):
                kept = self.rows.get(table.name, frozenset())
                added = [key for key in _keys(conn, table) if key not in kept]
                if added:
                    conn.executemany(table.delete_one(), added)
                    deleted[table.name] = len(added)
        return deleted


def _tables(conn: sqlite3.Connection) -> list[_Table]:
    names = [
        str(row[0])
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        )
    ]
    tables = []
    for name in names:
        if name in KEPT_TABLES:
            continue
        info = conn.execute(f"PRAGMA table_info({_quote(name)})").fetchall()
        # table_info's sixth column is the column's position in the primary key (0: not in it).
        primary = sorted((int(row[5]), str(row[1])) for row in info if int(row[5]) > 0)
        tables.append(_Table(name, tuple(c for _pos, c in primary) or ("rowid",)))
    return tables


def _keys(conn: sqlite3.Connection, table: _Table) -> frozenset[Key]:
    return frozenset(tuple(row) for row in conn.execute(table.select_keys()))


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
