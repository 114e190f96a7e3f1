"""Devices (reference §2.3): registration, lookups, status, enable/disable; and the broker's
side: sign-in lookup and presence."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from . import errors as e
from ._base import (
    _DEVICE_SELECT,
    RegistryBase,
    _device,
    _device_exists,
    _device_row,
)
from .errors import (
    ConflictError,
    InvalidParameterError,
    NotFoundError,
    QuotaExceededError,
)
from .models import (
    AppliedDevice,
    ApplyInfo,
    Device,
    DeviceDetail,
    DeviceStatus,
    Page,
)
from .validation import (
    check_device_name,
    check_nickname,
    check_page,
    check_positive_id,
)

# Told, after the write committed, that a device lost its right to sign in: ``(device,
# deleted)``, deleted True for DeleteDevice, False for DisableThing. The broker side
# (auth/device_watch.py) ends its connections at once; a write by another process (the
# command line) is found by polling instead.
RevokeListener = Callable[[Device, bool], None]


class DevicesMixin(RegistryBase):
    """Device operations, and presence for the broker."""

    # A tuple, replaced on each add: listeners are few and added at start-up.
    _revoke_listeners: tuple[RevokeListener, ...] = ()

    def on_device_revoked(self, listener: RevokeListener) -> None:
        """Call ``listener(device, deleted)`` after each delete or disable through this
        Registry, on the calling thread, once the change is committed."""
        self._revoke_listeners = (*self._revoke_listeners, listener)

    def _revoked(self, device: Device, *, deleted: bool) -> None:
        for listener in self._revoke_listeners:
            listener(device, deleted)

    def forget_cached_devices(self) -> None:
        """Drop the sign-in lookup cache (``lookup_device``), e.g. when another process wrote
        the registry file, so the next sign-in reads the device afresh."""
        self._device_cache.clear()

    def register_device(
        self,
        account_id: str,
        product_key: str | None,
        device_name: str | None = None,
        *,
        nickname: str | None = None,
        instance_id: str | None = None,
    ) -> Device:
        """RegisterDevice (reference §2.3). Without a DeviceName one is generated (20
        alphanumerics). Generates the 32-character DeviceSecret and the IotId."""
        name = None if device_name is None or device_name == "" else check_device_name(device_name)
        nick = check_nickname(nickname)
        with self._device_write() as conn:
            product = self._product(conn, account_id, instance_id, product_key)
            if name is not None and _device_exists(conn, product.product_key, name):
                raise ConflictError(
                    e.ALREADY_EXISTED_DEVICE_NAME,
                    f"DeviceName {name} already exists in this product.",
                )
            iot_id = self._insert_device(conn, product.product_key, name, nick, None)
            return _device(_device_row(conn, "d.iot_id = ?", (iot_id,)))

    def batch_register(
        self,
        account_id: str,
        product_key: str | None,
        *,
        count: int | str | None = None,
        device_names: Sequence[str] | None = None,
        instance_id: str | None = None,
    ) -> ApplyInfo:
        """BatchRegisterDevice (``count`` generated names) or, with ``device_names``, the
        BatchCheckDeviceNames + BatchRegisterDeviceWithApplyId pair in one step. All or
        nothing: one bad or taken name registers none. Returns the application, whose
        ``apply_id`` QueryPageByApplyId pages through. ``count`` is 1..1000 (§2.3;
        ``iot.device.DeviceCountExceeded`` above, ``iot.common.InvalidFormattedParameter``
        when not a positive number)."""
        names: list[str | None]
        if device_names is not None:
            if not device_names:
                raise InvalidParameterError(
                    e.NONE_DEVICE_NAME_ELEMENT, "The device name list cannot be empty."
                )
            checked = [check_device_name(n) for n in device_names]
            if len(set(checked)) != len(checked):
                raise ConflictError(
                    e.ALREADY_EXISTED_DEVICE_NAME, "The device name list has duplicates."
                )
            names = list(checked)
        else:
            try:
                number = int(count)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                number = 0
            if number < 1:
                raise InvalidParameterError(e.INVALID_PARAMETER, "Count must be at least 1.")
            names = [None] * number
        if len(names) > self.max_batch_register:
            raise QuotaExceededError(
                e.DEVICE_COUNT_EXCEEDED,
                f"At most {self.max_batch_register} devices can be registered at once.",
            )
        now = self._clock()
        with self._device_write() as conn:
            product = self._product(conn, account_id, instance_id, product_key)
            for name in names:
                if name is not None and _device_exists(conn, product.product_key, name):
                    raise ConflictError(
                        e.ALREADY_EXISTED_DEVICE_NAME,
                        f"DeviceName {name} already exists in this product.",
                    )
            cursor = conn.execute(
                "INSERT INTO device_applies (account_id, product_key, count, created_at) "
                "VALUES (?, ?, ?, ?)",
                (account_id, product.product_key, len(names), now),
            )
            apply_id = int(cursor.lastrowid or 0)
            for name in names:
                self._insert_device(conn, product.product_key, name, "", apply_id)
        return ApplyInfo(apply_id, account_id, product.product_key, len(names), now)

    def query_apply(self, account_id: str, apply_id: int | str | None) -> ApplyInfo:
        """QueryBatchRegisterDeviceStatus: the application (always CREATE_SUCCESS)."""
        number = check_positive_id(
            apply_id, null_code=e.NULL_APPLY_ID, invalid_code=e.DEVICE_APPLY_NOT_FOUND
        )
        with self.store.read() as conn:
            return self._apply(conn, account_id, number)

    def query_page_by_apply_id(
        self,
        account_id: str,
        apply_id: int | str | None,
        *,
        page: int | str | None = 1,
        page_size: int | str | None = 10,
    ) -> Page[AppliedDevice]:
        """QueryPageByApplyId (reference §2.3): PageSize at most 50, in registration order.
        Devices deleted since are left out."""
        current, size = check_page(page, page_size, default_size=10, max_size=50)
        number = check_positive_id(
            apply_id, null_code=e.NULL_APPLY_ID, invalid_code=e.DEVICE_APPLY_NOT_FOUND
        )
        with self.store.read() as conn:
            self._apply(conn, account_id, number)
            total = conn.execute(
                "SELECT COUNT(*) FROM devices WHERE apply_id = ?", (number,)
            ).fetchone()[0]
            rows = conn.execute(
                "SELECT device_name, device_secret, iot_id FROM devices WHERE apply_id = ? "
                "ORDER BY seq LIMIT ? OFFSET ?",
                (number, size, (current - 1) * size),
            ).fetchall()
        items = tuple(AppliedDevice(r[0], r[1], r[2]) for r in rows)
        return Page(items, int(total), current, size)

    def query_device_detail(
        self,
        account_id: str,
        *,
        iot_id: str | None = None,
        product_key: str | None = None,
        device_name: str | None = None,
        instance_id: str | None = None,
    ) -> DeviceDetail:
        """QueryDeviceDetail: the device and its product (name, node type)."""
        with self.store.read() as conn:
            device = self._device(conn, account_id, instance_id, iot_id, product_key, device_name)
            product = self._product(conn, account_id, instance_id, device.product_key)
        return DeviceDetail(device, product)

    def get_device(
        self,
        account_id: str,
        *,
        iot_id: str | None = None,
        product_key: str | None = None,
        device_name: str | None = None,
        instance_id: str | None = None,
    ) -> Device:
        """One device by IotId, or ProductKey + DeviceName; IotId wins when both are given
        (as in the cloud's QueryDeviceDetail). GetDeviceStatus reads ``status`` and
        ``status_changed_at`` from it."""
        with self.store.read() as conn:
            return self._device(conn, account_id, instance_id, iot_id, product_key, device_name)

    def list_devices(
        self,
        account_id: str,
        product_key: str | None,
        *,
        page: int | str | None = 1,
        page_size: int | str | None = 10,
        instance_id: str | None = None,
    ) -> Page[Device]:
        """QueryDevice (reference §2.3): PageSize at most 50, default 10. Order: newest first
        (the reference does not say; it matches QueryProductList and the console)."""
        current, size = check_page(page, page_size, default_size=10, max_size=50)
        with self.store.read() as conn:
            product = self._product(conn, account_id, instance_id, product_key)
            rows = conn.execute(
                f"{_DEVICE_SELECT} WHERE d.product_key = ? ORDER BY d.seq DESC LIMIT ? OFFSET ?",
                (product.product_key, size, (current - 1) * size),
            ).fetchall()
        items = tuple(_device(r) for r in rows)
        return Page(items, product.device_count, current, size)

    def delete_device(
        self,
        account_id: str,
        *,
        iot_id: str | None = None,
        product_key: str | None = None,
        device_name: str | None = None,
        instance_id: str | None = None,
    ) -> Device:
        """DeleteDevice. Returns the deleted device; the revoke listeners have ended its
        connections and session by then."""
        with self._device_write() as conn:
            device = self._device(conn, account_id, instance_id, iot_id, product_key, device_name)
            conn.execute("DELETE FROM devices WHERE iot_id = ?", (device.iot_id,))
        self._revoked(device, deleted=True)
        return device

    def disable_device(
        self,
        account_id: str,
        *,
        iot_id: str | None = None,
        product_key: str | None = None,
        device_name: str | None = None,
        instance_id: str | None = None,
    ) -> Device:
        """DisableThing: status DISABLE, sign-in refused until enabled; the revoke listeners
        have closed its connections by the time this returns. Disabling a disabled device is
        not an error."""
        with self._device_write() as conn:
            device = self._device(conn, account_id, instance_id, iot_id, product_key, device_name)
            if device.status is not DeviceStatus.DISABLE:
                conn.execute(
                    "UPDATE devices SET disabled = 1, online = 0, status_changed_at = ? "
                    "WHERE iot_id = ?",
                    (self._clock(), device.iot_id),
                )
            disabled = _device(_device_row(conn, "d.iot_id = ?", (device.iot_id,)))
        self._revoked(disabled, deleted=False)
        return disabled

    def enable_device(
        self,
        account_id: str,
        *,
        iot_id: str | None = None,
        product_key: str | None = None,
        device_name: str | None = None,
        instance_id: str | None = None,
    ) -> Device:
        """EnableThing: back to OFFLINE (UNACTIVE if it never signed in)."""
        with self._device_write() as conn:
            device = self._device(conn, account_id, instance_id, iot_id, product_key, device_name)
            if device.status is DeviceStatus.DISABLE:
                conn.execute(
                    "UPDATE devices SET disabled = 0, status_changed_at = ? WHERE iot_id = ?",
                    (self._clock(), device.iot_id),
                )
            return _device(_device_row(conn, "d.iot_id = ?", (device.iot_id,)))

    def batch_get_device_states(
        self,
        account_id: str,
        *,
        product_key: str | None = None,
        device_names: Sequence[str] | None = None,
        iot_ids: Sequence[str] | None = None,
        instance_id: str | None = None,
    ) -> list[Device]:
        """BatchGetDeviceState (reference §2.3): ProductKey + DeviceName.N, or IotId.N; at most
        50. The answer is in the order asked. Any unknown device fails the whole call with
        ``iot.device.NotExistedDevice`` (the reference does not say; a partial answer would
        hide a typo)."""
        if iot_ids:
            refs: list[tuple[str | None, str | None]] = [(i, None) for i in iot_ids]
        elif device_names:
            refs = [(None, n) for n in device_names]
        else:
            raise InvalidParameterError(
                e.NONE_DEVICE_NAME_ELEMENT, "DeviceName.N or IotId.N is required."
            )
        if len(refs) > self.max_batch_status:
            raise InvalidParameterError(
                e.INVALID_PARAMETER, f"At most {self.max_batch_status} devices per call."
            )
        with self.store.read() as conn:
            return [
                self._device(conn, account_id, instance_id, ref_id, product_key, ref_name)
                for ref_id, ref_name in refs
            ]

    # --- the broker's side: sign-in and presence (not scoped) ---------------------------------

    def lookup_device(self, product_key: str, device_name: str) -> Device | None:
        """The device a CONNECT names (``deviceName&productKey``), in any account, or None.

        Cached (sign-in and every Pub ask): any device write through this Registry clears the
        cache; a change made by another process is seen within ``cache_ttl_s``. The cached
        record's ONLINE/OFFLINE status may lag; callers use it for identity, secret and the
        disabled flag, which the writes above keep current."""
        now = time.monotonic()
        key = (product_key, device_name)
        cached = self._device_cache.get(key)
        if cached is not None and now - cached[0] < self.cache_ttl_s:
            return cached[1]
        with self.store.read() as conn:
            row = _device_row(
                conn, "d.product_key = ? AND d.device_name = ?", (product_key, device_name)
            )
        device = None if row is None else _device(row)
        if len(self._device_cache) >= 100_000:
            self._device_cache.clear()  # bounded; unknown names from a flood must not grow it
        self._device_cache[key] = (now, device)
        return device

    def set_device_online(
        self, product_key: str, device_name: str, *, ip_address: str | None = None
    ) -> Device:
        """A device signed in: ONLINE, ``last_online_at`` now, ``activated_at`` on the first
        time. Returns the device with its new ``online_epoch``, to give back to
        ``set_device_offline``. A disabled device gets ``thinghub.DeviceDisabled`` (the sign-in
        check should have refused it already)."""
        now = self._clock()
        with self._device_write() as conn:
            row = _device_row(
                conn, "d.product_key = ? AND d.device_name = ?", (product_key, device_name)
            )
            if row is None:
                raise NotFoundError(e.NOT_EXISTED_DEVICE, "The specified device does not exist.")
            if row["disabled"]:
                raise ConflictError(e.DEVICE_DISABLED, "The device is disabled.")
            conn.execute(
                "UPDATE devices SET online = 1, online_epoch = online_epoch + 1, "
                "last_online_at = ?, activated_at = COALESCE(activated_at, ?), "
                "status_changed_at = ?, ip_address = ? WHERE iot_id = ?",
                (now, now, now, ip_address, row["iot_id"]),
            )
            return _device(_device_row(conn, "d.iot_id = ?", (row["iot_id"],)))

    def set_device_offline(
        self,
        product_key: str,
        device_name: str,
        *,
        online_epoch: int | None = None,
        iot_id: str | None = None,
    ) -> bool:
        """A device's connection ended: OFFLINE. With ``online_epoch``, only if no newer
        sign-in happened since (a take-over). With ``iot_id``, only that device record: the
        late end of a deleted device's connection must not mark a device registered since
        under the same name offline. Returns whether the status changed."""
        now = self._clock()
        sql = (
            "UPDATE devices SET online = 0, status_changed_at = ? "
            "WHERE product_key = ? AND device_name = ? AND online = 1"
        )
        args: list[Any] = [now, product_key, device_name]
        if iot_id is not None:
            sql += " AND iot_id = ?"
            args.append(iot_id)
        if online_epoch is not None:
            sql += " AND online_epoch = ?"
            args.append(online_epoch)
        with self._device_write() as conn:
            return conn.execute(sql, args).rowcount > 0

    def mark_all_offline(self) -> int:
        """At start-up: no device is connected yet, whatever the last run recorded."""
        now = self._clock()
        with self._device_write() as conn:
            return conn.execute(
                "UPDATE devices SET online = 0, status_changed_at = ? WHERE online = 1", (now,)
            ).rowcount
