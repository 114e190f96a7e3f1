"""What the identity operations share: the registry's SQLite store (tables of schema version 3,
``thinghub/registry/store.py``), the ARN naming, the clock, and the mapping of rows to records.

Threads (docs/architecture.md, "Threads"): the operations are plain synchronous calls. Reads
use the reading thread's own connection (``RegistryStore.read``: on the event loop they wait
for no writer). Writes open ``RegistryStore.write`` transactions; in the running hub the HTTP
API hands them to the registry writer thread (``registry/writer.py``), so the event loop never
waits on the disk or the store's lock. Every check of a write runs inside its transaction,
before anything is changed: a refused call changes nothing.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

from ..registry.ids import wall_clock_ms
from ..registry.store import RegistryStore
from .arns import Arns
from .changes import IdentityChanges
from .errors import IdentityError, Problem
from .models import (
    CACertificate,
    CAStatus,
    Certificate,
    CertificateMode,
    CertificateOrigin,
    CertificateStatus,
    Policy,
    Thing,
)

__all__ = [
    "IdentityStore",
    "ca_certificate_row",
    "certificate_row",
    "lookup",
    "policy_row",
    "thing_row",
]


class IdentityStore:
    """The store, ARN naming and clock every operation class is built on, and the counters
    its writes raise once committed (``changes.py``: how the sign-in caches learn of them)."""

    def __init__(
        self,
        store: RegistryStore,
        arns: Arns,
        *,
        clock: Callable[[], int] = wall_clock_ms,
        changes: IdentityChanges | None = None,
    ) -> None:
        self.store = store
        self.arns = arns
        self._clock = clock
        self.changes = IdentityChanges() if changes is None else changes

    @contextmanager
    def _write(self, *, trust: bool = False) -> Iterator[sqlite3.Connection]:
        """``store.write()``, and the change counters raised once it has committed (also when
        the write turns out to change nothing: a cache read again costs one WAL read)."""
        with self.store.write() as conn:
            yield conn
        self.changes.committed(trust=trust)

    def now_ms(self) -> int:
        return self._clock()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock() / 1000, UTC)

    # ----------------------------------------------------------- scoped lookups

    def _certificate(
        self, conn: sqlite3.Connection, account_id: str, certificate_id: str
    ) -> Certificate:
        row = lookup(
            conn,
            "SELECT * FROM iot_certificates WHERE certificate_id = ? AND account_id = ?",
            (certificate_id, account_id),
            f"The certificate {certificate_id} does not exist.",
        )
        return certificate_row(row)

    def _require_thing(self, conn: sqlite3.Connection, account_id: str, name: str) -> int:
        """The thing's version; NOT_FOUND when the account has no such thing."""
        row = lookup(
            conn,
            "SELECT version FROM iot_things WHERE account_id = ? AND thing_name = ?",
            (account_id, name),
            f"The thing {name} does not exist.",
        )
        return int(row[0])


def lookup(conn: sqlite3.Connection, sql: str, args: Sequence[object], missing: str) -> sqlite3.Row:
    """The first row of ``sql``; when there is none, the caller named a resource its account
    does not hold: NOT_FOUND, ``missing`` saying which."""
    row: sqlite3.Row | None = conn.execute(sql, args).fetchone()
    if row is None:
        raise IdentityError(Problem.NOT_FOUND, missing)
    return row


def thing_row(row: sqlite3.Row, attributes: dict[str, str]) -> Thing:
    return Thing(
        account_id=row["account_id"],
        name=row["thing_name"],
        thing_id=row["thing_id"],
        type_name=row["thing_type_name"],
        attributes=attributes,
        version=row["version"],
        created_at=row["created_at"],
        modified_at=row["modified_at"],
    )


def certificate_row(row: sqlite3.Row) -> Certificate:
    return Certificate(
        account_id=row["account_id"],
        certificate_id=row["certificate_id"],
        status=CertificateStatus(row["status"]),
        origin=CertificateOrigin(row["origin"]),
        ca_certificate_id=row["ca_certificate_id"],
        mode=CertificateMode(row["certificate_mode"]),
        pem=row["pem"],
        not_before=row["not_before"],
        not_after=row["not_after"],
        created_at=row["created_at"],
        modified_at=row["modified_at"],
        customer_version=row["customer_version"],
        generation=row["generation"],
        seq=row["seq"],
    )


def ca_certificate_row(row: sqlite3.Row) -> CACertificate:
    config = row["registration_config"]
    return CACertificate(
        account_id=row["account_id"],
        certificate_id=row["certificate_id"],
        status=CAStatus(row["status"]),
        auto_registration=row["auto_registration"],
        mode=CertificateMode(row["certificate_mode"]),
        registration_config=None if config is None else json.loads(config),
        pem=row["pem"],
        not_before=row["not_before"],
        not_after=row["not_after"],
        created_at=row["created_at"],
        modified_at=row["modified_at"],
        customer_version=row["customer_version"],
        generation=row["generation"],
        seq=row["seq"],
    )


def policy_row(row: sqlite3.Row) -> Policy:
    """A row of ``iot_policies`` joined with its default version's ``document``."""
    return Policy(
        account_id=row["account_id"],
        name=row["policy_name"],
        default_version=row["default_version"],
        document=row["document"],
        created_at=row["created_at"],
        modified_at=row["modified_at"],
        generation=row["generation"],
        seq=row["seq"],
    )
