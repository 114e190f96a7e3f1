"""Devices (reference §2.3): registration, lookups, status, enable/disable; and the broker's
side: sign-in lookup and presence.

Presence (ONLINE/OFFLINE, the latest sign-in's time and address) is recorded in memory by the
broker's hooks (``device_signed_in``/``device_signed_out``, on the event loop) and written to
the file later by the presence writer (``presence.py``, ``presence_writer.py``); every read
below lays the unwritten state over what the file says."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

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
from .presence import write_batch
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
        """Drop the device lookup caches (``lookup_device``, ``lookup_sign_in``), e.g. when
        another process wrote the registry file, so the next sign-in reads the device afresh."""
        # Counted as a device write: a lookup or preload that read before it caches nothing.
        self._device_writes += 1
        self._device_cache.clear()
        self._sign_in_cache.clear()

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
        touched: list[tuple[str, str]] = []
        with self._device_write(touched) as conn:
            product = self._product(conn, account_id, instance_id, product_key)
            if name is not None and _device_exists(conn, product.product_key, name):
                raise ConflictError(
                    e.ALREADY_EXISTED_DEVICE_NAME,
                    f"DeviceName {name} already exists in this product.",
                )
            iot_id, name = self._insert_device(conn, product.product_key, name, nick, None)
            touched.append((product.product_key, name))  # a cached "no such device"
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
        touched: list[tuple[str, str]] = []
        with self._device_write(touched) as conn:
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
                _iot_id, added = self._insert_device(conn, product.product_key, name, "", apply_id)
                touched.append((product.product_key, added))
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
        overlay = self.presence.overlay
        items = tuple(overlay(_device(r)) for r in rows)
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
        touched: list[tuple[str, str]] = []
        with self._device_write(touched) as conn:
            device = self._device(conn, account_id, instance_id, iot_id, product_key, device_name)
            conn.execute("DELETE FROM devices WHERE iot_id = ?", (device.iot_id,))
            touched.append((device.product_key, device.device_name))
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
        touched: list[tuple[str, str]] = []
        with self._device_write(touched) as conn:
            device = self._device(conn, account_id, instance_id, iot_id, product_key, device_name)
            touched.append((device.product_key, device.device_name))
            if device.status is not DeviceStatus.DISABLE:
                conn.execute(
                    "UPDATE devices SET disabled = 1, online = 0, status_changed_at = ? "
                    "WHERE iot_id = ?",
                    (self._clock(), device.iot_id),
                )
            disabled = self.presence.overlay(
                _device(_device_row(conn, "d.iot_id = ?", (device.iot_id,)))
            )
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
        touched: list[tuple[str, str]] = []
        with self._device_write(touched) as conn:
            device = self._device(conn, account_id, instance_id, iot_id, product_key, device_name)
            touched.append((device.product_key, device.device_name))
            if device.status is DeviceStatus.DISABLE:
                conn.execute(
                    "UPDATE devices SET disabled = 0, status_changed_at = ? WHERE iot_id = ?",
                    (self._clock(), device.iot_id),
                )
            return self.presence.overlay(
                _device(_device_row(conn, "d.iot_id = ?", (device.iot_id,)))
            )

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
        """The device ``deviceName&productKey`` names, in any account, or None; its status is
        the latest the hub knows, written to the file or not.

        Cached (every Pub asks; a hit reads no file): a device write through this Registry
        evicts the device's entry, a presence change updates it in place, and a change made
        by another process is seen within ``device_cache_ttl_s`` (or within half a second,
        when the hub's device watch notices it: ``forget_cached_devices``)."""
        return self._cached_device(self._device_cache, product_key, device_name, overlay=True)

    def lookup_sign_in(self, product_key: str, device_name: str) -> Device | None:
        """``lookup_device`` for a CONNECT's sign-in, cached the same way but in a cache of
        its own whose records are the file's, presence not laid over them: the secret and
        whether the device is disabled are current (a write evicts the entry), its
        ONLINE/OFFLINE status and last sign-in may not be."""
        return self._cached_device(self._sign_in_cache, product_key, device_name, overlay=False)

    def sign_in_cached(self, product_key: str, device_name: str) -> bool:
        """Whether the sign-in cache holds this device (whatever its age): while a shared
        registry is out of reach, only such sign-ins are answered (pg_store.py notes)."""
        return (product_key, device_name) in self._sign_in_cache

    def _cached_device(
        self,
        cache: dict[tuple[str, str], tuple[float, Device | None]],
        product_key: str,
        device_name: str,
        *,
        overlay: bool,
    ) -> Device | None:
        now = time.monotonic()
        key = (product_key, device_name)
        cached = cache.get(key)
        if cached is not None and now - cached[0] < self.device_cache_ttl_s:
            return cached[1]
        writes = self._device_writes
        row = self.store.read_row(_BY_NAME, (product_key, device_name))
        device = None if row is None else _device(row)
        if overlay and device is not None:
            device = self.presence.overlay(device)
        if self._device_writes == writes:  # no device write committed since the read began
            if len(cache) >= _DEVICE_CACHE_LIMIT:
                cache.clear()  # bounded; unknown names from a flood must not grow it
            cache[key] = (now, device)
            if self._device_writes != writes:  # one committed meanwhile (another thread)
                cache.pop(key, None)
        return device

    def preload_sign_ins(self, limit: int, *, chunk: int = 2_000) -> int:
        """Fill the sign-in cache with up to ``limit`` devices, the most recently online
        first; returns how many. For a hub that has just started, on a thread of its own:
        a fleet coming back after a restart then signs in without a read of the file per
        device on the event loop, and one scan costs far less than as many lookups. An entry
        a sign-in has cached meanwhile is kept; once a device write commits, what was read
        before it is dropped and the preload stops (the read may predate the write), as in
        ``_cached_device``."""
        cache = self._sign_in_cache
        limit = min(limit, _DEVICE_CACHE_LIMIT - len(cache))
        loaded = 0
        # Before the read's snapshot is taken: a write committed after it shows here.
        writes = self._device_writes
        with self.store.read() as conn:
            rows = conn.execute(_PRELOAD, (limit,))
            while batch := rows.fetchmany(chunk):
                now = time.monotonic()
                added = []
                for row in batch:
                    key, device = (row["product_key"], row["device_name"]), _device(row)
                    if cache.setdefault(key, (now, device))[1] is device:
                        added.append(key)
                if self._device_writes != writes:
                    for key in added:
                        cache.pop(key, None)
                    break  # the rest of the snapshot may predate the write too
                loaded += len(added)
        return loaded

    # Presence, recorded in memory on the event loop (see the module notes). -------------------

    def device_signed_in(
        self, iot_id: str, product_key: str, device_name: str, *, ip_address: str | None
    ) -> int:
        """A device's CONNECT was accepted: ONLINE now. Returns the connection's online epoch,
        to give back to ``device_signed_out``. Never touches the file."""
        epoch = self.presence.signed_in(iot_id, ip_address)
        self._presence_changed(iot_id, product_key, device_name)
        return epoch

    def device_signed_out(
        self, iot_id: str, product_key: str, device_name: str, *, online_epoch: int | None
    ) -> bool:
        """A device's connection ended: OFFLINE now, unless a newer connection of the device
        took over (``online_epoch`` is not its current one). Returns whether the status
        changed. Never touches the file."""
        changed = self.presence.signed_out(iot_id, online_epoch)
        if changed:
            self._presence_changed(iot_id, product_key, device_name)
        return changed

    def _presence_changed(self, iot_id: str, product_key: str, device_name: str) -> None:
        """The cached record of the device shows its new presence (not evicted: sign-in
        must not read the file again because the device signed in)."""
        key = (product_key, device_name)
        cache = self._device_cache
        writes = self._device_writes
        cached = cache.get(key)
        if cached is None or cached[1] is None or cached[1].iot_id != iot_id:
            return
        # As in lookup_device: a device write (DisableThing on the registry writer thread)
        # that committed meanwhile has evicted the entry; it must not come back.
        if self._device_writes == writes:
            cache[key] = (cached[0], self.presence.overlay(cached[1]))
            if self._device_writes != writes:
                cache.pop(key, None)

    def flush_presence(self) -> None:
        """Write every pending presence change now, on the calling thread (no presence
        writer: the command line, tests). Raises what the write raises; nothing is lost."""
        book = self.presence
        while (batch := book.take(_FLUSH_BATCH)) is not None:
            with self.store.write() as conn:
                write_batch(conn, batch)
            book.written(batch)

    def set_device_online(
        self, product_key: str, device_name: str, *, ip_address: str | None = None
    ) -> Device:
        """``device_signed_in`` and its write, synchronously (for callers without an event
        loop and presence writer). Returns the device with its new ``online_epoch``. An unknown
        device is ``NotFoundError``; a disabled one ``thinghub.DeviceDisabled``."""
        device = self._fresh_device(product_key, device_name)
        if device is None:
            raise NotFoundError(e.NOT_EXISTED_DEVICE, "The specified device does not exist.")
        if device.status is DeviceStatus.DISABLE:
            raise ConflictError(e.DEVICE_DISABLED, "The device is disabled.")
        self.device_signed_in(device.iot_id, product_key, device_name, ip_address=ip_address)
        self.flush_presence()
        online = self._fresh_device(product_key, device_name)
        assert online is not None
        return online

    def set_device_offline(
        self,
        product_key: str,
        device_name: str,
        *,
        online_epoch: int | None = None,
        iot_id: str | None = None,
    ) -> bool:
        """``device_signed_out`` and its write, synchronously. With ``iot_id``, only that
        device record: the late end of a deleted device's connection must not mark a device
        registered since under the same name offline. Returns whether the status changed."""
        device = self._fresh_device(product_key, device_name)
        if device is None or (iot_id is not None and device.iot_id != iot_id):
            return False
        changed = self.device_signed_out(
            device.iot_id, product_key, device_name, online_epoch=online_epoch
        )
        self.flush_presence()
        return changed

    def _fresh_device(self, product_key: str, device_name: str) -> Device | None:
        """``lookup_device`` without the cache."""
        row = self.store.read_row(_BY_NAME, (product_key, device_name))
        return None if row is None else self.presence.overlay(_device(row))

    def mark_all_offline(self) -> int:
        """At start-up, before any sign-in: no device is connected yet, whatever the last
        run recorded. From then on the presence this Registry records is the whole truth
        about who is connected (``PresenceBook.take_ownership``). Returns how many devices
        the file had online."""
        self.flush_presence()
        now = self._clock()
        with self.store.write() as conn:
            # A registry shared by several nodes (pg_store.py): only this node's devices, and
            # the rows of devices online elsewhere are the truth there, not overlaid here.
            node: str | None = getattr(conn, "node", None)
            if node is not None:
                changed = conn.execute(
                    "UPDATE devices SET online = 0, status_changed_at = ? "
                    "WHERE online = 1 AND online_node = ?",
                    (now, node),
                ).rowcount
            else:
                changed = conn.execute(
                    "UPDATE devices SET online = 0, status_changed_at = ? WHERE online = 1",
                    (now,),
                ).rowcount
        self._device_writes += 1
        self.forget_cached_devices()  # once, before any sign-in
        if node is None:
            self.presence.take_ownership()
        return int(changed)


_BY_NAME = f"{_DEVICE_SELECT} WHERE d.product_key = ? AND d.device_name = ?"
# Devices that were online most recently first; those never online last.
_PRELOAD = f"{_DEVICE_SELECT} ORDER BY d.last_online_at IS NULL, d.last_online_at DESC LIMIT ?"
# Entries of the sign-in lookup cache at most (cleared when full).
_DEVICE_CACHE_LIMIT = 100_000
# Presence changes per transaction when flushed synchronously.
_FLUSH_BATCH = 10_000
