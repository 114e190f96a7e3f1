"""The console's registry reads: device search, one device, products and their topic
categories. Each is one function over ``registry.db`` in one read transaction (one snapshot),
scoped by the caller's account first, so another account's IotId or ProductKey is simply not
found (tenancy, docs/architecture.md).

They run on the console's reader threads (:class:`Reader`), never on the event loop (the
registry's per-thread WAL read connections wait for no writer: registry/store.py), and lay
the hub's in-memory presence over what the file says (``PresenceBook.overlay``, safe from
any thread), so a device that signed in a moment ago shows ONLINE before the presence writer
has written it.

Device search pages by key, not by offset: newest first (``seq`` descending, as QueryDevice
orders them), each page asks for the devices before the last one it showed, so the 2,000th
page costs what the first does. A name prefix is an index range on ``(product_key,
device_name)``; a substring is ``instr`` over the account's devices (a scan: 100,000 rows take
a few tens of milliseconds). The status filter reads the file's columns, which the presence
writer keeps within ``registry.presence_interval`` of the truth; each row shows the live
status.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from ..registry.models import Device, DeviceStatus
from ..registry.registry import Registry, device_from_row
from .errors import UNAVAILABLE, ConsoleError

__all__ = [
    "MATCH_MODES",
    "DeviceFound",
    "DevicePage",
    "Reader",
    "device_by_iot_id",
    "product_with_categories",
    "products",
    "search_devices",
]

T = TypeVar("T")

MATCH_MODES = ("prefix", "substring")
# Past this many matches a search says "more than" instead of counting them all: a count is
# a scan, and the page itself never needs one.
COUNT_LIMIT = 1_000_000


class Reader:
    """Runs registry reads (and, in a hub without a registry writer thread, writes) on the
    console's own threads, ``threads`` of them, with at most ``max_waiting`` calls waiting:
    beyond that a request is answered 503 at once instead of queueing behind a burst."""

    def __init__(self, *, threads: int = 2, max_waiting: int = 32) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="thinghub-console")
        self.max_waiting = max_waiting
        self._waiting = 0

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        if self._waiting >= self.max_waiting:
            raise ConsoleError(UNAVAILABLE, "The console is busy; try again in a moment.")
        self._waiting += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, functools.partial(work, *args))
        finally:
            self._waiting -= 1

    async def close(self) -> None:
        """Let the reads under way finish (they use registry.db, which the hub closes after
        the HTTP side), without making the event loop wait for them."""
        await asyncio.to_thread(self._pool.shutdown, True, cancel_futures=True)


@dataclass(frozen=True, slots=True)
class DeviceFound:
    seq: int
    device: Device
    product_name: str


@dataclass(frozen=True, slots=True)
class DevicePage:
    devices: list[DeviceFound]
    #: matches in all (at most COUNT_LIMIT; ``total_capped`` says it stopped there)
    total: int
    total_capped: bool
    #: the ``before`` of the next page, None on the last one
    next_before: int | None


_COLUMNS = (
    "d.seq, d.iot_id, d.product_key, d.device_name, d.device_secret, d.nickname, d.disabled, "
    "d.online, d.created_at, d.activated_at, d.last_online_at, d.status_changed_at, "
    "d.ip_address, p.account_id, p.instance_id, p.name AS product_name"
)
_FROM = "devices d JOIN products p ON p.product_key = d.product_key"

# The file's columns that make each status (as registry/_base.py ``_status`` reads them).
_STATUS_WHERE = {
    DeviceStatus.DISABLE: "d.disabled = 1",
    DeviceStatus.ONLINE: "d.disabled = 0 AND d.online = 1",
    DeviceStatus.OFFLINE: "d.disabled = 0 AND d.online = 0 AND d.activated_at IS NOT NULL",
    DeviceStatus.UNACTIVE: "d.disabled = 0 AND d.online = 0 AND d.activated_at IS NULL",
}


def search_devices(
    registry: Registry,
    account_id: str,
    *,
    product_key: str | None,
    name: str | None,
    match: str,
    status: DeviceStatus | None,
    before: int | None,
    limit: int,
) -> DevicePage:
    """One page of the account's devices, newest first (see the module notes)."""
    where = ["p.account_id = ?"]
    args: list[Any] = [account_id]
    if product_key:
        where.append("d.product_key = ?")
        args.append(product_key)
    if name:
        if match == "prefix":
            # An index range (BINARY order of UTF-8): every name that starts with ``name``.
            where.append("d.device_name >= ? AND d.device_name < ?")
            args += [name, name + "\U0010ffff"]
        else:
            where.append("instr(d.device_name, ?) > 0")
            args.append(name)
    if status is not None:
        where.append(_STATUS_WHERE[status])
    condition = " AND ".join(where)
    page_where = condition + ("" if before is None else " AND d.seq < ?")
    page_args = [*args] + ([] if before is None else [before])
    with registry.store.read() as conn:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM {_FROM} WHERE {page_where} ORDER BY d.seq DESC LIMIT ?",
            [*page_args, limit + 1],
        ).fetchall()
        total = conn.execute(
            f"SELECT COUNT(*) FROM (SELECT 1 FROM {_FROM} WHERE {condition} LIMIT ?)",
            [*args, COUNT_LIMIT],
        ).fetchone()[0]
    more = len(rows) > limit
    rows = rows[:limit]
    overlay = registry.presence.overlay
    found = [DeviceFound(r["seq"], overlay(device_from_row(r)), r["product_name"]) for r in rows]
    return DevicePage(
        devices=found,
        total=int(total),
        total_capped=total >= COUNT_LIMIT,
        next_before=found[-1].seq if more and found else None,
    )


def device_by_iot_id(registry: Registry, account_id: str, iot_id: str) -> DeviceFound | None:
    """The account's device ``iot_id`` (any instance), or None."""
    with registry.store.read() as conn:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM {_FROM} WHERE d.iot_id = ? AND p.account_id = ?",
            (iot_id, account_id),
        ).fetchone()
    if row is None:
        return None
    device = registry.presence.overlay(device_from_row(row))
    return DeviceFound(row["seq"], device, row["product_name"])


def products(registry: Registry, account_id: str) -> list[dict[str, Any]]:
    """Every product of the account (at most ``registry.max_products_per_account``), newest
    first, with its device count."""
    with registry.store.read() as conn:
        rows = conn.execute(
            f"{_PRODUCT_SELECT} WHERE p.account_id = ? ORDER BY p.seq DESC", (account_id,)
        ).fetchall()
    return [_product(r) for r in rows]


def product_with_categories(
    registry: Registry, account_id: str, product_key: str
) -> dict[str, Any] | None:
    """The account's product with its topic categories (creation order), or None."""
    with registry.store.read() as conn:
        row = conn.execute(
            f"{_PRODUCT_SELECT} WHERE p.account_id = ? AND p.product_key = ?",
            (account_id, product_key),
        ).fetchone()
        if row is None:
            return None
        categories = conn.execute(
            "SELECT id, short_name, operation, description FROM topic_categories "
            "WHERE product_key = ? ORDER BY id",
            (product_key,),
        ).fetchall()
    product = _product(row)
    product["categories"] = [
        {
            "id": c["id"],
            "topic": f"/{product_key}/${{deviceName}}/user/{c['short_name']}",
            "shortName": c["short_name"],
            "operation": c["operation"],
            "description": c["description"],
        }
        for c in categories
    ]
    return product


_PRODUCT_SELECT = (
    "SELECT p.product_key, p.name, p.node_type, p.instance_id, p.description, p.created_at, "
    "p.data_format, p.auth_type, "
    "(SELECT COUNT(*) FROM devices d WHERE d.product_key = p.product_key) AS devices "
    "FROM products p"
)


def _product(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "productKey": row["product_key"],
        "name": row["name"],
        "nodeType": "GATEWAY" if row["node_type"] == 1 else "DEVICE",
        "instanceId": row["instance_id"],
        "description": row["description"],
        "createdAt": row["created_at"],
        "dataFormat": "ALINK_JSON" if row["data_format"] == 1 else "CUSTOM",
        "authType": row["auth_type"],
        "devices": row["devices"],
    }
