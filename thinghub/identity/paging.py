"""Keyset paging of the identity listings, one way for all of them.

A page is the rows that sort after the last key the previous page returned, never an offset,
so a listing stays correct while items come and go between pages (``http/aws/paging.py``
wraps the key in the caller's token). A page reads one row more than it returns: that row
only says whether another page follows. Two orders are listed:

* by a text column (a name or a certificate id): ``key_page``, the column's values alone,
  or ``fetch_page`` under a query that ends in ``ORDER BY`` that column;
* in creation order (the ``seq`` column) or its reverse: ``seq_page``, whole records.

Table and column names are this package's constants, never a request's text; values are
always bound parameters.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

from .models import Page

__all__ = ["Sequenced", "fetch_page", "key_page", "seq_page"]


class Sequenced(Protocol):
    """A record listed in creation order: its ``seq`` is its row's ``seq`` column."""

    @property
    def seq(self) -> int: ...


S = TypeVar("S", bound=Sequenced)


def fetch_page(
    conn: sqlite3.Connection, sql: str, args: Sequence[object], limit: int
) -> tuple[list[sqlite3.Row], bool]:
    """The first ``limit`` rows of ``sql`` (a query that ends where its LIMIT would go) and
    whether more rows follow them."""
    rows = conn.execute(f"{sql} LIMIT ?", (*args, limit + 1)).fetchall()
    return rows[:limit], len(rows) > limit


def key_page(
    conn: sqlite3.Connection,
    table: str,
    column: str,
    equal: Mapping[str, object],
    *,
    after: str | None,
    limit: int,
) -> Page[str]:
    """The values of the text ``column`` of the ``table`` rows whose columns are ``equal``
    to the values given, in the column's order, after ``after`` (None: from the start); the
    page resumes after its last value."""
    where, args = _where(equal)
    rows, more = fetch_page(
        conn,
        f"SELECT {column} FROM {table} WHERE {where} AND {column} > ? ORDER BY {column}",
        (*args, after or ""),
        limit,
    )
    keys = tuple(str(r[0]) for r in rows)
    return Page(keys, keys[-1] if more and keys else None)


def seq_page(
    conn: sqlite3.Connection,
    select: str,
    equal: Mapping[str, object],
    record: Callable[[sqlite3.Row], S],
    *,
    after: int | None,
    limit: int,
    ascending: bool,
    seq: str = "seq",
) -> Page[S]:
    """The rows of ``select`` (a query without WHERE) whose columns (or expressions) are
    ``equal`` to the values given, made records by ``record``, ordered by the ``seq`` column
    (ascending or not), after the one whose seq is ``after`` (None: from the start); the page
    resumes after its last record's ``seq``."""
    where, args = _where(equal)
    sql = f"{select} WHERE {where}"
    if after is not None:
        sql += f" AND {seq} > ?" if ascending else f" AND {seq} < ?"
        args.append(after)
    sql += f" ORDER BY {seq} {'ASC' if ascending else 'DESC'}"
    rows, more = fetch_page(conn, sql, args, limit)
    items = tuple(record(r) for r in rows)
    return Page(items, str(items[-1].seq) if more and items else None)


def _where(equal: Mapping[str, object]) -> tuple[str, list[object]]:
    """``a = ? AND b = ?`` for the names of ``equal``, and its values to bind."""
    return " AND ".join(f"{name} = ?" for name in equal), list(equal.values())
