"""The registry's shared machinery: settings, tenancy-scoping lookups, id generation, and the
mapping from SQLite rows to the frozen records of ``models``.

Every scoped lookup (``_product``, ``_device``, ``_category``) takes the caller's account and
instance and answers "not found" for a resource of anyone else (docs/architecture.md "Tenancy").
"""

from __future__ import annotations

import secrets
import sqlite3
import string
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from . import errors as e
from .errors import (
    InvalidParameterError,
    NotFoundError,
)
from .ids import wall_clock_ms
from .models import (
    AccessKey,
    ApplyInfo,
    Device,
    DeviceStatus,
    NodeType,
    Operation,
    Product,
    TopicCategory,
)
from .presence import PresenceBook
from .store import RegistryChange, RegistryStore
from .validation import (
    check_device_name,
    check_iot_id,
    check_positive_id,
    check_product_key,
)
from .writer import RegistryWriter

# Reference §2.4 and §3 "Topics": every new product gets these custom topic categories.
DEFAULT_TOPIC_CATEGORIES: tuple[tuple[str, Operation, str], ...] = (
    ("update", Operation.PUB, ""),
    ("update/error", Operation.PUB, ""),
    ("get", Operation.SUB, ""),
)

_ALNUM = string.ascii_letters + string.digits
_LOWER_ALNUM = string.ascii_lowercase + string.digits

# Reference §2.2 CreateProduct optional values.
_AUTH_TYPES = frozenset({"secret", "id2", "x509"})
_COMMODITY_CODES = frozenset({"iothub", "iothub_senior"})
_DATA_FORMATS = frozenset({0, 1})


def _random(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _product_key() -> str:
    """Like Alibaba's: 11 characters, ``a1`` and nine alphanumerics (``a1BwAGVxxxx``)."""
    return "a1" + _random(_ALNUM, 9)


def _iot_id() -> str:
    """Like Alibaba's 26-character IotIds (``CqXL5h5ysRTA4NxjABjj0010fa``, reference §2.3)."""
    return _random(_ALNUM, 20) + "0010" + _random("0123456789abcdef", 2)


class RegistryBase:
    """State and scoping helpers shared by the operation mixins of ``Registry``."""

    def __init__(
        self,
        store: RegistryStore,
        *,
        clock: Callable[[], int] = wall_clock_ms,
        max_products_per_account: int = 1000,
        max_topic_categories_per_product: int = 50,
        max_batch_register: int = 1000,
        max_batch_status: int = 50,
        cache_ttl_s: float = 2.0,
        presence_max_pending: int = 200_000,
    ) -> None:
        self.store = store
        self._clock = clock
        # Limits: ProductCountExceedMax (Alibaba's documented 1,000 products per account),
        # TopicTemplateCountExceedMax (50, reference §2.5 and §3), BatchRegisterDevice Count
        # (1,000, §2.3), BatchGetDeviceState (50, §2.3).
        self.max_products_per_account = max_products_per_account
        self.max_topic_categories_per_product = max_topic_categories_per_product
        self.max_batch_register = max_batch_register
        self.max_batch_status = max_batch_status
        # Hot lookups (every API call's access key, every device publish's topic categories)
        # are cached. A change made through this Registry invalidates its entry at once; a
        # change made by another process on the same file (the `thinghub` command line beside
        # a running hub) is seen within ``cache_ttl_s``.
        self.cache_ttl_s = cache_ttl_s
        # The sign-in lookups' own TTL. A hub running a DeviceWatch (auth/device_watch.py)
        # raises it: the watch drops the whole device cache within half a second of any write
        # by another process, so the TTL is only a safety net there, and a fleet reconnecting
        # minutes later signs in without reading the file.
        self.device_cache_ttl_s = cache_ttl_s
        self._category_cache: dict[str, tuple[float, tuple[TopicCategory, ...]]] = {}
        self._key_cache: dict[str, tuple[float, AccessKey | None]] = {}
        # Two lookup caches by (ProductKey, DeviceName); a device write evicts the entries it
        # touched in both. ``lookup_device``'s records carry presence, updated in place when it
        # changes. The sign-in cache (``lookup_sign_in``) holds the records as the file has
        # them: sign-in needs the secret and whether the device is disabled, never presence,
        # so a reconnect storm builds no record per connect and disconnect.
        self._device_cache: dict[tuple[str, str], tuple[float, Device | None]] = {}
        self._sign_in_cache: dict[tuple[str, str], tuple[float, Device | None]] = {}
        # Bumped after every device write commits: a lookup that read the file meanwhile
        # does not cache what it read (it may predate the write).
        self._device_writes = 0
        # Device presence as the hub knows it, and the changes not yet written (presence.py).
        self.presence = PresenceBook(max_pending=presence_max_pending, clock=clock)
        # The thread the API's registry writes run on while the hub runs (writer.py, set by
        # app.py); None: on the caller's thread (the command line, tests).
        self.writer: RegistryWriter | None = None
        # A registry shared with other nodes (pg_store.py) tells what their writes changed.
        listen = getattr(store, "add_change_listener", None)
        if listen is not None:
            listen(self._store_changed)

    def _store_changed(self, change: RegistryChange) -> None:
        """A change reached the local copy of a shared registry (pg_store.py; on the thread
        that applied it): drop what the caches hold of it. A presence change leaves the
        sign-in cache alone (it holds no presence)."""
        tables = change.tables
        if "access_keys" in tables or "accounts" in tables:
            self._key_cache.clear()
        if "topic_categories" in tables or "products" in tables:
            self._category_cache.clear()
        if "devices" not in tables and "products" not in tables:
            return
        self._device_writes += 1
        if change.devices is None or "products" in tables:
            self._device_cache.clear()
        else:
            for key in change.devices:
                self._device_cache.pop(key, None)
        if change.credentials is None or "products" in tables:
            self._sign_in_cache.clear()
        else:
            for key in change.credentials:
                self._sign_in_cache.pop(key, None)

    @contextmanager
    def _device_write(self, touched: list[tuple[str, str]]) -> Iterator[sqlite3.Connection]:
        """A write that changes devices; the block appends the (ProductKey, DeviceName) of
        each device it changes to ``touched``. Their lookup cache entries are evicted once the
        write is over (committed or not), and only theirs."""
        try:
            with self.store.write() as conn:
                yield conn
        finally:
            self._device_writes += 1
            cache, sign_in_cache = self._device_cache, self._sign_in_cache
            for key in touched:
                cache.pop(key, None)
                sign_in_cache.pop(key, None)

    # ===== scoping helpers ====================================================================

    def _require_account(self, conn: sqlite3.Connection, account_id: str) -> None:
        if not _exists(conn, "accounts", "account_id", account_id):
            raise NotFoundError(e.NOT_EXISTED_ACCOUNT, f"Account {account_id} does not exist.")

    def _check_instance(
        self, conn: sqlite3.Connection, account_id: str, instance_id: str | None
    ) -> None:
        if instance_id is None:
            return
        row = conn.execute(
            "SELECT 1 FROM instances WHERE instance_id = ? AND account_id = ?",
            (instance_id, account_id),
        ).fetchone()
        if row is None:
            raise NotFoundError(e.INSTANCE_NOT_FOUND, "The IotInstanceId does not exist.")

    def _product(
        self,
        conn: sqlite3.Connection,
        account_id: str,
        instance_id: str | None,
        product_key: str | None,
    ) -> Product:
        key = check_product_key(product_key)
        self._check_instance(conn, account_id, instance_id)
        row = conn.execute(
            f"{_PRODUCT_SELECT} WHERE p.product_key = ? AND p.account_id = ? "
            "AND p.instance_id IS ?",
            (key, account_id, instance_id),
        ).fetchone()
        if row is None:
            raise NotFoundError(e.NOT_EXISTED_PRODUCT, "The specified product does not exist.")
        return _product(row)

    def _product_key(
        self,
        conn: sqlite3.Connection,
        account_id: str,
        instance_id: str | None,
        product_key: str | None,
    ) -> str:
        """``_product`` without reading the product: checks it exists in the account and
        instance (a device lookup must not count the product's devices every time)."""
        key = check_product_key(product_key)
        self._check_instance(conn, account_id, instance_id)
        row = conn.execute(
            "SELECT 1 FROM products WHERE product_key = ? AND account_id = ? AND instance_id IS ?",
            (key, account_id, instance_id),
        ).fetchone()
        if row is None:
            raise NotFoundError(e.NOT_EXISTED_PRODUCT, "The specified product does not exist.")
        return key

    def _device(
        self,
        conn: sqlite3.Connection,
        account_id: str,
        instance_id: str | None,
        iot_id: str | None,
        product_key: str | None,
        device_name: str | None,
    ) -> Device:
        self._check_instance(conn, account_id, instance_id)
        if iot_id:
            row = _device_row(
                conn,
                "d.iot_id = ? AND p.account_id = ? AND p.instance_id IS ?",
                (check_iot_id(iot_id), account_id, instance_id),
            )
        else:
            if not product_key and not device_name:
                raise InvalidParameterError(
                    e.INVALID_PARAMETER, "IotId, or ProductKey and DeviceName, is required."
                )
            key = self._product_key(conn, account_id, instance_id, product_key)
            row = _device_row(
                conn,
                "d.product_key = ? AND d.device_name = ?",
                (key, check_device_name(device_name)),
            )
        if row is None:
            raise NotFoundError(e.NOT_EXISTED_DEVICE, "The specified device does not exist.")
        return self.presence.overlay(_device(row))

    def _category(
        self,
        conn: sqlite3.Connection,
        account_id: str,
        instance_id: str | None,
        topic_id: int | str | None,
    ) -> TopicCategory:
        number = check_positive_id(
            topic_id, null_code=e.NULL_TOPIC_TEMPLATE_ID, invalid_code=e.TOPIC_TEMPLATE_NOT_FOUND
        )
        self._check_instance(conn, account_id, instance_id)
        row = conn.execute(
            "SELECT t.* FROM topic_categories t JOIN products p USING (product_key) "
            "WHERE t.id = ? AND p.account_id = ? AND p.instance_id IS ?",
            (number, account_id, instance_id),
        ).fetchone()
        if row is None:
            raise NotFoundError(e.TOPIC_TEMPLATE_NOT_FOUND, "The topic category is not found.")
        return _category(row)

    def _apply(self, conn: sqlite3.Connection, account_id: str, apply_id: int) -> ApplyInfo:
        row = conn.execute(
            "SELECT * FROM device_applies WHERE apply_id = ? AND account_id = ?",
            (apply_id, account_id),
        ).fetchone()
        if row is None:
            raise NotFoundError(e.DEVICE_APPLY_NOT_FOUND, "The ApplyId is not found.")
        return ApplyInfo(
            row["apply_id"], row["account_id"], row["product_key"], row["count"], row["created_at"]
        )

    def _insert_device(
        self,
        conn: sqlite3.Connection,
        product_key: str,
        device_name: str | None,
        nickname: str,
        apply_id: int | None,
    ) -> tuple[str, str]:
        """Insert a device; its IotId and DeviceName (generated when None)."""
        now = self._clock()
        if device_name is None:
            device_name = _random(_ALNUM, 20)
            while _device_exists(conn, product_key, device_name):
                device_name = _random(_ALNUM, 20)
        iot_id = _iot_id()
        while _exists(conn, "devices", "iot_id", iot_id):
            iot_id = _iot_id()
        conn.execute(
            "INSERT INTO devices (iot_id, product_key, device_name, device_secret, nickname, "
            "created_at, status_changed_at, apply_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (iot_id, product_key, device_name, _random(_ALNUM, 32), nickname, now, now, apply_id),
        )
        return iot_id, device_name


# ===== row mapping ============================================================================

_PRODUCT_SELECT = (
    "SELECT p.*, (SELECT COUNT(*) FROM devices d WHERE d.product_key = p.product_key) "
    "AS device_count FROM products p"
)
_DEVICE_SELECT = (
    "SELECT d.*, p.account_id, p.instance_id FROM devices d JOIN products p USING (product_key)"
)


def _exists(conn: sqlite3.Connection, table: str, column: str, value: str) -> bool:
    # table and column are constants of this module, never input.
    sql = f"SELECT 1 FROM {table} WHERE {column} = ?"
    return conn.execute(sql, (value,)).fetchone() is not None


def _exists_name(
    conn: sqlite3.Connection, account_id: str, name: str, except_key: str | None
) -> bool:
    row = conn.execute(
        "SELECT 1 FROM products WHERE account_id = ? AND name = ? AND product_key IS NOT ?",
        (account_id, name, except_key),
    ).fetchone()
    return row is not None


def _device_exists(conn: sqlite3.Connection, product_key: str, device_name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM devices WHERE product_key = ? AND device_name = ?",
        (product_key, device_name),
    ).fetchone()
    return row is not None


def _category_exists(
    conn: sqlite3.Connection, product_key: str, short_name: str, except_id: int | None
) -> bool:
    row = conn.execute(
        "SELECT 1 FROM topic_categories WHERE product_key = ? AND short_name = ? AND id IS NOT ?",
        (product_key, short_name, except_id),
    ).fetchone()
    return row is not None


def _check_data_format(value: int | str | None) -> int:
    if value is None or value == "":
        return 1
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number not in _DATA_FORMATS:
        raise InvalidParameterError(
            e.INVALID_PARAMETER, "DataFormat must be 0 (custom) or 1 (Alink JSON)."
        )
    return number


def _access_key(row: sqlite3.Row) -> AccessKey:
    return AccessKey(
        row["access_key_id"],
        row["secret"],
        row["account_id"],
        bool(row["enabled"]),
        row["created_at"],
        row["description"],
    )


def _product(row: sqlite3.Row) -> Product:
    return Product(
        product_key=row["product_key"],
        account_id=row["account_id"],
        instance_id=row["instance_id"],
        name=row["name"],
        node_type=NodeType(row["node_type"]),
        data_format=row["data_format"],
        auth_type=row["auth_type"],
        description=row["description"],
        product_secret=row["product_secret"],
        created_at=row["created_at"],
        aliyun_commodity_code=row["commodity_code"],
        net_type=row["net_type"],
        category_key=row["category_key"],
        device_count=row["device_count"],
    )


def _device_row(conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> Any:
    return conn.execute(f"{_DEVICE_SELECT} WHERE {where}", args).fetchone()


def _status(row: sqlite3.Row) -> DeviceStatus:
    if row["disabled"]:
        return DeviceStatus.DISABLE
    if row["online"]:
        return DeviceStatus.ONLINE
    if row["activated_at"] is None:
        return DeviceStatus.UNACTIVE
    return DeviceStatus.OFFLINE


def device_from_row(row: sqlite3.Row) -> Device:
    """A device as its row of ``_DEVICE_SELECT`` holds it (presence not laid over it), for
    readers of registry.db outside this package (console/reads.py)."""
    return _device(row)


def _device(row: sqlite3.Row) -> Device:
    return Device(
        iot_id=row["iot_id"],
        product_key=row["product_key"],
        device_name=row["device_name"],
        device_secret=row["device_secret"],
        nickname=row["nickname"],
        status=_status(row),
        account_id=row["account_id"],
        instance_id=row["instance_id"],
        created_at=row["created_at"],
        activated_at=row["activated_at"],
        last_online_at=row["last_online_at"],
        status_changed_at=row["status_changed_at"],
        ip_address=row["ip_address"],
        # The column (schema version 1) is no longer written: epochs live in memory now
        # (presence.py), and the presence overlay gives a connected device its own.
    )


def _category(row: sqlite3.Row) -> TopicCategory:
    return TopicCategory(
        row["id"],
        row["product_key"],
        row["short_name"],
        Operation(row["operation"]),
        row["description"],
    )


def _categories(conn: sqlite3.Connection, product_key: str) -> tuple[TopicCategory, ...]:
    rows = conn.execute(
        "SELECT * FROM topic_categories WHERE product_key = ? ORDER BY id", (product_key,)
    )
    return tuple(_category(r) for r in rows)
