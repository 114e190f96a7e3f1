"""Registering many devices at once (``thinghub device import``): all or nothing, fast, and
beside a running hub.

``register_devices`` checks every row before it writes anything: each value as the API checks
it (``validation.py``, plus ``check_device_secret`` for a secret brought along), no device
twice in the rows, every product known to the account (another account's product is unknown:
docs/architecture.md "Tenancy"), no name already registered (or, with ``skip_existing``, those
rows left out). A refusal lists the lines at fault (``ImportRefused``) and has written nothing.

Then it writes in batches of ``batch_size`` rows, one transaction each (one fsync per batch,
not per device; a batch of 5,000 holds ``registry.db``'s write lock for some tens of
milliseconds, so a hub on the same file keeps writing presence and API changes in between).
Batches make the import fast without one long transaction, but each commits on its own, so
all-or-nothing is kept by undoing: every device written belongs to an application
(``device_applies``, one per product, as BatchRegisterDevice's, so QueryPageByApplyId lists an
import's devices), and if a later batch fails (a name registered by someone else meanwhile, a
full disk, Ctrl-C) the devices of those applications are deleted again before the error is
raised. Only a process killed outright leaves a partial import behind: its devices belong to
the import's applications (QueryPageByApplyId lists them with their secrets), and running the
import again with ``skip_existing`` registers the rest.

A running hub sees the devices as each batch commits: its sign-in lookup reads the file on a
cache miss, and its device watch drops the whole sign-in cache within half a second of any
other process's write (auth/device_watch.py), so a device that tried to sign in before it was
registered is not refused for long either.

Secrets and IotIds are drawn in bulk from ``os.urandom`` (``_random_strings``): the
``secrets.choice`` per character that single registration uses costs one system call per
character, seconds per 100,000 devices.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import errors as e
from ._base import _ALNUM
from .errors import ConflictError, InvalidParameterError, NotFoundError, RegistryError
from .ids import wall_clock_ms
from .registry import Registry
from .validation import check_device_name, check_nickname, check_product_key

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MAX_PROBLEMS_SHOWN",
    "DeviceRow",
    "ImportRefused",
    "ImportResult",
    "ImportedDevice",
    "Problems",
    "RowProblem",
    "check_device_secret",
    "register_devices",
    "withdraw",
]

# Rows per write transaction.
DEFAULT_BATCH_SIZE = 5_000
# A refusal names at most this many lines (and counts the rest).
MAX_PROBLEMS_SHOWN = 20
# Names per existence query: one json_each array, so no bound-parameter limit applies; kept
# moderate so a query's array stays small.
_NAMES_PER_QUERY = 10_000

# A DeviceSecret brought along (devices moved from the cloud or another hub keep theirs). The
# hub issues 32 alphanumerics (_base.py); an imported one is 8 to 64 printable ASCII
# characters without spaces, which covers the cloud's and keeps the MQTT password signable
# (auth/aliyun_device.py signs it with HMAC as bytes). ThingHub's choice: the reference has
# no rule for secrets it did not issue.
_DEVICE_SECRET = re.compile(r"[\x21-\x7e]{8,64}")


def check_device_secret(secret: str) -> str:
    if not _DEVICE_SECRET.fullmatch(secret):
        raise InvalidParameterError(
            e.INVALID_PARAMETER,
            "DeviceSecret must be 8 to 64 printable ASCII characters without spaces.",
        )
    return secret


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """One device to register, as read: ``line`` is where it came from (for errors)."""

    line: int
    product_key: str
    device_name: str
    nickname: str = ""
    device_secret: str | None = None


@dataclass(frozen=True, slots=True)
class ImportedDevice:
    product_key: str
    device_name: str
    device_secret: str
    iot_id: str


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What was registered (in the rows' order), what was left out as already registered,
    and the application each product's devices belong to."""

    registered: list[ImportedDevice]
    skipped: list[DeviceRow]
    apply_ids: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RowProblem:
    line: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.code}: {self.message}"


class ImportRefused(RegistryError):
    """The rows were refused and nothing was registered. ``problems`` holds the first
    ``MAX_PROBLEMS_SHOWN`` (by line), ``count`` how many there were."""

    def __init__(self, problems: Sequence[RowProblem], count: int | None = None) -> None:
        shown = sorted(problems, key=lambda p: p.line)[:MAX_PROBLEMS_SHOWN]
        self.problems = shown
        self.count = len(problems) if count is None else count
        lines = [str(p) for p in shown]
        if self.count > len(shown):
            lines.append(f"... and {self.count - len(shown):,} more")
        super().__init__(shown[0].code, "\n".join(lines))

    def __str__(self) -> str:
        noun = "problem" if self.count == 1 else "problems"
        return f"nothing was registered ({self.count:,} {noun}):\n" + self.message


class Problems:
    """Collects problems, keeping the ``MAX_PROBLEMS_SHOWN`` of the lowest lines (a file
    with a wrong column has a problem on every line: they are counted, not kept)."""

    def __init__(self) -> None:
        self.kept: list[RowProblem] = []
        self.count = 0

    def add(self, line: int, code: str, message: str) -> None:
        self.count += 1
        self.kept.append(RowProblem(line, code, message))
        if len(self.kept) >= 2 * MAX_PROBLEMS_SHOWN:
            self.kept.sort(key=lambda p: p.line)
            del self.kept[MAX_PROBLEMS_SHOWN:]

    def raise_any(self) -> None:
        if self.count:
            raise ImportRefused(self.kept, self.count)


def register_devices(
    registry: Registry,
    account_id: str,
    rows: Sequence[DeviceRow],
    *,
    skip_existing: bool = False,
    instance_id: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int, int], None] | None = None,
    clock: Callable[[], int] = wall_clock_ms,
) -> ImportResult:
    """Register ``rows`` (see the module notes). ``on_batch(done, total)`` is called before
    the first batch and after each committed one. Raises ``ImportRefused`` for bad rows,
    ``ConflictError`` when a name was registered by someone else during the import,
    ``StorageFull`` / ``sqlite3.Error`` when writing fails; in every case nothing stays
    registered."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    problems = Problems()
    checked = _checked_rows(rows, problems)
    _check_products(registry, account_id, instance_id, checked, problems)
    problems.raise_any()
    existing = _registered_names(registry, checked)
    skipped: list[DeviceRow] = []
    if existing:
        if not skip_existing:
            for row in checked:
                if (row.product_key, row.device_name) in existing:
                    problems.add(
                        row.line,
                        e.ALREADY_EXISTED_DEVICE_NAME,
                        f"DeviceName {row.device_name} already exists in product "
                        f"{row.product_key}.",
                    )
            problems.raise_any()
        skipped = [r for r in checked if (r.product_key, r.device_name) in existing]
        checked = [r for r in checked if (r.product_key, r.device_name) not in existing]
    if not checked:
        return ImportResult([], skipped)
    planned = _with_credentials(checked)
    writer = _Writer(registry, account_id, clock)
    try:
        writer.open_applications(planned)
        done = 0
        if on_batch is not None:
            on_batch(0, len(planned))
        for start in range(0, len(planned), batch_size):
            batch = planned[start : start + batch_size]
            skipped.extend(writer.write_batch(batch, skip_existing=skip_existing))
            done += len(batch)
            if on_batch is not None:
                on_batch(done, len(planned))
        writer.close_applications()
    except BaseException:
        # All or nothing (module notes), also for Ctrl-C between two batches.
        writer.undo()
        raise
    return ImportResult(writer.registered, skipped, dict(writer.apply_ids))


def withdraw(registry: Registry, result: ImportResult) -> None:
    """Delete what ``register_devices`` registered (its caller could not hand the secrets
    over, say), as if the import had failed."""
    writer = _Writer(registry, "", wall_clock_ms)
    writer.apply_ids = dict(result.apply_ids)
    writer.touched = [(d.product_key, d.device_name) for d in result.registered]
    writer.undo()


# --- checking ---------------------------------------------------------------------------------


def _checked_rows(rows: Sequence[DeviceRow], problems: Problems) -> list[DeviceRow]:
    """Each row's values as the API checks them, and no device twice."""
    seen: dict[tuple[str, str], int] = {}
    checked: list[DeviceRow] = []
    for row in rows:
        try:
            key = check_product_key(row.product_key)
            name = check_device_name(row.device_name)
            nickname = check_nickname(row.nickname)
            secret = None if row.device_secret is None else check_device_secret(row.device_secret)
        except RegistryError as error:
            problems.add(row.line, error.code, error.message)
            continue
        first = seen.setdefault((key, name), row.line)
        if first != row.line:
            problems.add(
                row.line,
                e.ALREADY_EXISTED_DEVICE_NAME,
                f"DeviceName {name} of product {key} is also on line {first}.",
            )
            continue
        checked.append(DeviceRow(row.line, key, name, nickname, secret))
    return checked


def _check_products(
    registry: Registry,
    account_id: str,
    instance_id: str | None,
    rows: Sequence[DeviceRow],
    problems: Problems,
) -> None:
    first_line: dict[str, int] = {}
    lines: dict[str, int] = {}
    for row in rows:
        first_line.setdefault(row.product_key, row.line)
        lines[row.product_key] = lines.get(row.product_key, 0) + 1
    for key, line in first_line.items():
        try:
            registry.query_product(account_id, key, instance_id=instance_id)
        except NotFoundError as error:
            more = lines[key] - 1
            also = f" (and {more:,} more rows of it)" if more else ""
            problems.add(line, error.code, f"Product {key} does not exist{also}.")


def _registered_names(registry: Registry, rows: Sequence[DeviceRow]) -> set[tuple[str, str]]:
    """The (ProductKey, DeviceName) of ``rows`` already in the registry."""
    with registry.store.read() as conn:
        return _existing(conn, rows)


def _existing(conn: sqlite3.Connection, rows: Sequence[DeviceRow]) -> set[tuple[str, str]]:
    by_product: dict[str, list[str]] = {}
    for row in rows:
        by_product.setdefault(row.product_key, []).append(row.device_name)
    found: set[tuple[str, str]] = set()
    for key, names in by_product.items():
        for start in range(0, len(names), _NAMES_PER_QUERY):
            chunk = json.dumps(names[start : start + _NAMES_PER_QUERY])
            # One index probe per name (UNIQUE (product_key, device_name), store.py).
            cursor = conn.execute(
                "SELECT device_name FROM devices WHERE product_key = ? "
                "AND device_name IN (SELECT value FROM json_each(?))",
                (key, chunk),
            )
            found.update((key, r[0]) for r in cursor)
    return found


# --- writing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Planned:
    row: DeviceRow
    secret: str
    iot_id: str


def _with_credentials(rows: Sequence[DeviceRow]) -> list[_Planned]:
    """Each row with its DeviceSecret (its own, or 32 new alphanumerics) and a new IotId
    (the format of ``_base._iot_id``: 20 alphanumerics, ``0010``, two hex digits)."""
    secrets = _random_strings(_ALNUM, 32, len(rows))
    heads = _random_strings(_ALNUM, 20, len(rows))
    tails = _random_strings("0123456789abcdef", 2, len(rows))
    iot_ids = [f"{h}0010{t}" for h, t in zip(heads, tails, strict=True)]
    taken: set[str] = set()
    for index, iot_id in enumerate(iot_ids):
        while iot_id in taken:  # 62**20 makes this all but impossible; cheap to rule out
            iot_id = _random_strings(_ALNUM, 20, 1)[0] + "0010" + tails[index]
        taken.add(iot_id)
        iot_ids[index] = iot_id
    return [
        _Planned(row, row.device_secret or secret, iot_id)
        for row, secret, iot_id in zip(rows, secrets, iot_ids, strict=True)
    ]


def _random_strings(alphabet: str, length: int, count: int) -> list[str]:
    """``count`` strings of ``length`` characters drawn uniformly from ``alphabet`` (at most
    256 characters) with the OS's CSPRNG. A byte maps to ``alphabet[b % n]`` only below the
    largest multiple of n (rejection sampling), so every character is equally likely."""
    n = len(alphabet)
    limit = 256 - 256 % n
    table = bytes(ord(alphabet[b % n]) if b < limit else 0 for b in range(256))
    reject = bytes(range(limit, 256))
    needed = length * count
    chars = bytearray()
    while len(chars) < needed:
        draw = os.urandom(((needed - len(chars)) * 256) // limit + 64)
        chars += draw.translate(table, reject)
    text = chars[:needed].decode("ascii")
    return [text[i : i + length] for i in range(0, needed, length)]


class _Writer:
    """The writing half of an import: its applications, its batches, and undoing them."""

    def __init__(self, registry: Registry, account_id: str, clock: Callable[[], int]) -> None:
        self.registry = registry
        self.account_id = account_id
        self.clock = clock
        self.apply_ids: dict[str, int] = {}
        self.registered: list[ImportedDevice] = []
        self.touched: list[tuple[str, str]] = []
        self._raced = False

    def open_applications(self, planned: Sequence[_Planned]) -> None:
        counts: dict[str, int] = {}
        for item in planned:
            counts[item.row.product_key] = counts.get(item.row.product_key, 0) + 1
        now = self.clock()
        with self.registry.store.write() as conn:
            for key, number in counts.items():
                cursor = conn.execute(
                    "INSERT INTO device_applies (account_id, product_key, count, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (self.account_id, key, number, now),
                )
                self.apply_ids[key] = int(cursor.lastrowid or 0)

    def write_batch(self, batch: Sequence[_Planned], *, skip_existing: bool) -> list[DeviceRow]:
        """Insert ``batch`` in one transaction; returns the rows left out because their name
        was registered meanwhile (``skip_existing``; otherwise that is a ``ConflictError``)."""
        now = self.clock()
        touched: list[tuple[str, str]] = []
        # A device write of the registry: it evicts the sign-in cache entries of the devices
        # it touches (a cached "no such device" above all), as RegisterDevice's does.
        with self.registry._device_write(touched) as conn:
            taken = _existing(conn, [p.row for p in batch])
            if taken and not skip_existing:
                first = min((p.row for p in batch if (p.row.product_key, p.row.device_name)
                             in taken), key=lambda r: r.line)  # fmt: skip
                raise ConflictError(
                    e.ALREADY_EXISTED_DEVICE_NAME,
                    f"line {first.line}: DeviceName {first.device_name} was registered in "
                    f"product {first.product_key} by someone else during the import; nothing "
                    "was registered.",
                )
            rows = [p for p in batch if (p.row.product_key, p.row.device_name) not in taken]
            touched.extend((p.row.product_key, p.row.device_name) for p in rows)
            self.touched.extend(touched)
            conn.executemany(
                "INSERT INTO devices (iot_id, product_key, device_name, device_secret, "
                "nickname, created_at, status_changed_at, apply_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (p.iot_id, p.row.product_key, p.row.device_name, p.secret,
                     p.row.nickname, now, now, self.apply_ids[p.row.product_key])
                    for p in rows
                ],
            )  # fmt: skip
        self.registered.extend(
            ImportedDevice(p.row.product_key, p.row.device_name, p.secret, p.iot_id) for p in rows
        )
        if len(rows) < len(batch):
            self._raced = True
        return [p.row for p in batch if (p.row.product_key, p.row.device_name) in taken]

    def close_applications(self) -> None:
        """An application counts the devices it really registered (fewer than planned when
        ``skip_existing`` met names registered during the import)."""
        if not self._raced:
            return
        with self.registry.store.write() as conn:
            for apply_id in self.apply_ids.values():
                conn.execute(
                    "UPDATE device_applies SET count = "
                    "(SELECT COUNT(*) FROM devices WHERE apply_id = ?1) WHERE apply_id = ?1",
                    (apply_id,),
                )

    def undo(self) -> None:
        """Delete every device and application this import wrote. If that fails too, the
        error says which ApplyIds hold what is left."""
        if not self.apply_ids:
            return
        ids = json.dumps(sorted(self.apply_ids.values()))
        touched = list(self.touched)
        try:
            with self.registry._device_write(touched) as conn:
                conn.execute(
                    "DELETE FROM devices WHERE apply_id IN (SELECT value FROM json_each(?))",
                    (ids,),
                )
                conn.execute(
                    "DELETE FROM device_applies WHERE apply_id IN (SELECT value FROM json_each(?))",
                    (ids,),
                )
        except (RegistryError, e.StoreUnavailable, sqlite3.Error) as error:
            raise RegistryError(
                e.SYSTEM_EXCEPTION,
                f"the import failed and its devices could not be removed ({error}); they "
                f"belong to ApplyId {', '.join(str(i) for i in sorted(self.apply_ids.values()))}",
            ) from error
        self.apply_ids = {}
        self.registered = []
