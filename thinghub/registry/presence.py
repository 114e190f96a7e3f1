"""Device presence as the hub knows it, and the changes not yet written to ``registry.db``.

Theory of operation
-------------------
* **The event loop owns it.** A device's sign-in and the end of its connection
  (``auth/broker_hooks.py``) are recorded here, in memory: :meth:`PresenceBook.signed_in`,
  :meth:`PresenceBook.signed_out`. Nothing waits for the disk or for a lock; the presence
  writer thread (``presence_writer.py``) writes the changes later, in batches.
* **Coalesced.** ``pending`` holds one entry per device (by IotId): its latest state, which
  replaces any earlier change not yet written, in place (so the dict stays ordered by the
  time each device's oldest unwritten change was made). A connect, a disconnect and a
  connect inside one batch are one row write. A later change keeps what an earlier one still
  has to write: the time and address of a sign-in (``last_online_at``, ``ip_address``) and
  the first sign-in (``activated_at``).
* **Taken as a copy, dropped once written.** :meth:`PresenceBook.take` hands the writer the
  oldest ``limit`` entries and leaves them pending, so reads still see them and a failed write
  (a full disk) loses nothing: the next attempt takes them again, coalesced with whatever
  happened meanwhile. :meth:`PresenceBook.written` drops each entry that the batch wrote and
  that was not replaced while it was written.
* **The online epoch** of each connected device lives in ``online``: every sign-in takes a new
  one, and the end of a connection marks the device offline only if it still holds the
  device's current epoch, so the old connection of a take-over cannot mark the new one's
  device offline.
* **Reads see the latest state.** :meth:`PresenceBook.overlay` lays what is pending (and, in
  the running hub, who is online now) over a device read from the file: GetDeviceStatus,
  BatchGetDeviceState, QueryDeviceDetail and QueryDevice answer the truth even before the
  writer has caught up. Once :meth:`PresenceBook.take_ownership` has run (at the hub's start,
  after ``Registry.mark_all_offline``), ``online`` is the whole truth about who is connected:
  every sign-in since goes through this book.
* **Bounded.** At most ``max_pending`` devices wait. A change of a device that finds no room
  is not kept; it is counted in ``overflows`` and a *resync* is due: the next batch first marks
  every device offline and then writes every device of ``online`` (with its sign-in time and
  address) in the same transaction, so each device's status is right again once the writer
  catches up. What such a change loses is only a time: a device that signed in and left while
  there was no room keeps its earlier ``last_online_at`` (and stays UNACTIVE if it had never
  signed in before).

Threads: every method runs on one thread (the event loop's, in the hub; the caller's, for the
synchronous ``Registry.set_device_online`` of the command line and tests). Other threads may
call :meth:`overlay`, which only reads (single dict look-ups, atomic in CPython).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from .ids import wall_clock_ms
from .models import Device, DeviceStatus

__all__ = [
    "Connected",
    "PresenceBatch",
    "PresenceBook",
    "PresenceChange",
    "write_batch",
]

log = logging.getLogger("thinghub.registry")


class PresenceChange(NamedTuple):
    """The state a device's row must be given. Times are epoch milliseconds. (Tuples: made
    on every sign-in and disconnect, they cost a third of a frozen dataclass.)"""

    iot_id: str
    online: bool
    # GetDeviceStatus ``Timestamp``: when the device went online or offline.
    changed_at: int
    # The latest sign-in not yet written (``last_online_at``, ``ip_address``), or None.
    signed_in_at: int | None
    ip_address: str | None
    # The first sign-in not yet written (``activated_at``, if the row has none), or None.
    first_signed_in_at: int | None
    # time.monotonic() when the device's oldest unwritten change was made (the writer's lag).
    since: float


class Connected(NamedTuple):
    """A device connected now: its connection's epoch, when and from where it signed in."""

    epoch: int
    signed_in_at: int
    ip_address: str | None


@dataclass(frozen=True, slots=True)
class PresenceBatch:
    """What the writer writes in one transaction."""

    changes: tuple[PresenceChange, ...]
    # After an overflow: every connected device, to write as the whole truth first.
    resync: tuple[tuple[str, Connected], ...] | None
    # ``PresenceBook.overflows`` when taken: a resync covers the overflows up to it.
    overflows: int
    # The clock when taken: the status time of the devices a resync finds offline.
    taken_at: int


class PresenceBook:
    """See the module notes."""

    def __init__(
        self,
        *,
        max_pending: int = 200_000,
        clock: Callable[[], int] = wall_clock_ms,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.max_pending = max_pending
        self._clock = clock
        self._monotonic = monotonic
        # IotId -> the change its row waits for; oldest first.
        self.pending: dict[str, PresenceChange] = {}
        # IotId -> its connection now.
        self.online: dict[str, Connected] = {}
        # Whether ``online`` is the whole truth about who is connected (take_ownership).
        self.authoritative = False
        # Changes recorded, and those that found no room (a resync is then due).
        self.changes = 0
        self.overflows = 0
        self._resync_due = False
        self._overflowing = False
        self._epochs = itertools.count(1)
        # Called when pending goes from empty to not empty: the writer's wake-up.
        self.wake: Callable[[], None] | None = None

    # ------------------------------------------------------------------ recording

    def take_ownership(self) -> None:
        """From now on every sign-in and disconnect goes through this book, and the file says
        no device is online (``Registry.mark_all_offline`` has just run): ``online`` is the
        truth, and reads are overlaid with it."""
        self.online.clear()
        self.authoritative = True

    def signed_in(self, iot_id: str, ip_address: str | None) -> int:
        """A device signed in: ONLINE now. Returns its connection's epoch."""
        now = self._clock()
        epoch = next(self._epochs)
        self.online[iot_id] = Connected(epoch, now, ip_address)
        self._record(iot_id, True, now, now, ip_address)
        return epoch

    def signed_out(self, iot_id: str, epoch: int | None) -> bool:
        """A device's connection ended: OFFLINE now, unless the connection was not its latest
        (``epoch`` is not the current one: a take-over). Without ``epoch``, whichever
        connection it has. Returns whether the device went offline."""
        current = self.online.get(iot_id)
        if current is None or (epoch is not None and current.epoch != epoch):
            return False
        del self.online[iot_id]
        self._record(iot_id, False, self._clock(), None, None)
        return True

    def _record(
        self,
        iot_id: str,
        online: bool,
        at: int,
        signed_in_at: int | None,
        ip_address: str | None,
    ) -> None:
        self.changes += 1
        pending = self.pending
        old = pending.get(iot_id)
        if old is not None:
            first = old.first_signed_in_at
            if first is None:
                first = signed_in_at
            if signed_in_at is None:  # an end keeps the sign-in still to be written
                signed_in_at, ip_address = old.signed_in_at, old.ip_address
            # Assigned in place: the entry keeps its position (and its age) in the dict.
            pending[iot_id] = PresenceChange(
                iot_id, online, at, signed_in_at, ip_address, first, old.since
            )
            return
        if len(pending) >= self.max_pending:
            self.overflows += 1
            self._resync_due = True
            if not self._overflowing:
                self._overflowing = True
                log.warning(
                    "%d device status changes wait for the registry; later ones are not "
                    "kept one by one: every device's status is written afresh once the "
                    "writer catches up (registry.presence_max_pending)",
                    len(pending),
                )
            return
        pending[iot_id] = PresenceChange(
            iot_id, online, at, signed_in_at, ip_address, signed_in_at, self._monotonic()
        )
        if len(pending) == 1 and self.wake is not None:
            self.wake()

    def resync(self) -> None:
        """Write every connected device's status afresh, as after an overflow: the registry
        lost them (another node swept this one's devices offline: ``pg_store.py``)."""
        self._resync_due = True
        if self.wake is not None:
            self.wake()

    # ------------------------------------------------------------------ the writer's side

    def take(self, limit: int) -> PresenceBatch | None:
        """The next batch: the oldest ``limit`` pending changes (left pending until
        ``written``), and the resync if one is due. None when there is nothing to write."""
        if not self.pending and not self._resync_due:
            return None
        changes = tuple(itertools.islice(self.pending.values(), limit))
        resync = tuple(self.online.items()) if self._resync_due else None
        return PresenceBatch(changes, resync, self.overflows, self._clock())

    def written(self, batch: PresenceBatch) -> None:
        """``batch`` is committed: drop the changes it wrote, unless replaced meanwhile."""
        pending = self.pending
        for change in batch.changes:
            if pending.get(change.iot_id) is change:
                del pending[change.iot_id]
        if batch.resync is not None and batch.overflows == self.overflows:
            self._resync_due = False
        if self._overflowing and not self._resync_due and len(pending) < self.max_pending // 2:
            self._overflowing = False
            log.warning("device status changes are kept one by one again")

    # ------------------------------------------------------------------ readers

    @property
    def resync_due(self) -> bool:
        return self._resync_due

    def oldest_pending_s(self) -> float:
        """How long the oldest change not yet written has waited (0 when none waits)."""
        for change in self.pending.values():
            return max(0.0, self._monotonic() - change.since)
        return 0.0

    def overlay(self, device: Device) -> Device:
        """``device`` as read from the file, with its presence as this book knows it now."""
        iot_id = device.iot_id
        change = self.pending.get(iot_id)
        connected = self.online.get(iot_id)
        if self.authoritative:
            online = connected is not None
            if change is None and not online and device.status is not DeviceStatus.ONLINE:
                return device  # nothing known beyond the file (the usual case)
        elif change is not None:
            online = change.online
        elif connected is not None:
            return _with_epoch(device, connected.epoch)
        else:
            return device
        last_online_at, ip_address = device.last_online_at, device.ip_address
        activated_at = device.activated_at
        if change is not None and change.signed_in_at is not None:
            last_online_at, ip_address = change.signed_in_at, change.ip_address
            if activated_at is None:
                activated_at = change.first_signed_in_at
        if connected is not None:
            last_online_at, ip_address = connected.signed_in_at, connected.ip_address
            if activated_at is None:
                activated_at = connected.signed_in_at
        if device.status is DeviceStatus.DISABLE:
            status = DeviceStatus.DISABLE
        elif online:
            status = DeviceStatus.ONLINE
        elif activated_at is None:
            status = DeviceStatus.UNACTIVE
        else:
            status = DeviceStatus.OFFLINE
        # Built directly: dataclasses.replace costs three times as much, on every sign-in.
        return Device(
            device.iot_id,
            device.product_key,
            device.device_name,
            device.device_secret,
            device.nickname,
            status,
            device.account_id,
            device.instance_id,
            device.created_at,
            activated_at,
            last_online_at,
            device.status_changed_at if change is None else change.changed_at,
            ip_address,
            device.online_epoch if connected is None else connected.epoch,
        )


def _with_epoch(device: Device, epoch: int) -> Device:
    if device.online_epoch == epoch:
        return device
    return dataclasses.replace(device, online_epoch=epoch)


# ---------------------------------------------------------------------------- the SQL

# A disabled device is never written ONLINE (DisableThing set it offline; its connection is
# being closed). A row deleted meanwhile is simply not found.
#
# A batch is ONE statement over a JSON array of rows (json_each, UPDATE ... FROM, SQLite
# 3.33+), not one execution per row: the sqlite3 module releases the GIL around every step it
# takes, and a thread stepping once per row would take the GIL back from the event loop once
# per row (thousands of thread switches per batch on the loop's core); one statement gives it
# back once. Each element: [online, changed_at, signed_in_at, ip_address,
# first_signed_in_at, iot_id].
_CHANGES = (
    "UPDATE devices SET "
    "online = CASE WHEN disabled THEN 0 ELSE json_extract(c.value, '$[0]') END, "
    "status_changed_at = json_extract(c.value, '$[1]'), "
    "last_online_at = COALESCE(json_extract(c.value, '$[2]'), last_online_at), "
    "ip_address = COALESCE(json_extract(c.value, '$[3]'), ip_address), "
    "activated_at = COALESCE(activated_at, json_extract(c.value, '$[4]')) "
    "FROM json_each(?) AS c WHERE devices.iot_id = json_extract(c.value, '$[5]')"
)
_ALL_OFFLINE = "UPDATE devices SET online = 0, status_changed_at = ? WHERE online = 1"


# The same on the PostgreSQL registry (pg_store.py), where several nodes write presence: a row
# records the node that wrote it online (``online_node``), and a node writes a device offline
# only if it is the one that had it online (the device may have signed in on another node
# since); a resync marks offline only this node's devices. Elements as above.
_PG_CHANGES = (
    "UPDATE devices SET "
    "online = CASE WHEN disabled <> 0 THEN 0 ELSE (c.value->>0)::bigint END, "
    "status_changed_at = (c.value->>1)::bigint, "
    "last_online_at = COALESCE((c.value->>2)::bigint, last_online_at), "
    "ip_address = COALESCE(c.value->>3, ip_address), "
    "activated_at = COALESCE(activated_at, (c.value->>4)::bigint), "
    "online_node = CASE WHEN (c.value->>0) = '1' THEN ? ELSE online_node END "
    "FROM json_array_elements(?::json) AS c(value) WHERE devices.iot_id = c.value->>5 "
    "AND ((c.value->>0) = '1' OR devices.online_node IS NOT DISTINCT FROM ?)"
)
_PG_ALL_OFFLINE = (
    "UPDATE devices SET online = 0, status_changed_at = ? WHERE online = 1 AND online_node = ?"
)


def write_batch(conn: sqlite3.Connection, batch: PresenceBatch) -> None:
    """Write ``batch`` inside the caller's transaction (``RegistryStore.write``)."""
    node: str | None = getattr(conn, "node", None)
    if node is not None:
        _write_batch_pg(conn, batch, node)
        return
    if batch.resync is not None:
        conn.execute(_ALL_OFFLINE, (batch.taken_at,))
        rows: list[tuple[int, int, int | None, str | None, int | None, str]] = [
            (1, c.signed_in_at, c.signed_in_at, c.ip_address, c.signed_in_at, iot_id)
            for iot_id, c in batch.resync
        ]
        conn.execute(_CHANGES, (json.dumps(rows),))
    rows = [
        (
            int(c.online),
            c.changed_at,
            c.signed_in_at,
            c.ip_address,
            c.first_signed_in_at,
            c.iot_id,
        )
        for c in batch.changes
    ]
    if rows:
        conn.execute(_CHANGES, (json.dumps(rows),))


def _write_batch_pg(conn: sqlite3.Connection, batch: PresenceBatch, node: str) -> None:
    if batch.resync is not None:
        conn.execute(_PG_ALL_OFFLINE, (batch.taken_at, node))
        resync = [
            (1, c.signed_in_at, c.signed_in_at, c.ip_address, c.signed_in_at, iot_id)
            for iot_id, c in batch.resync
        ]
        conn.execute(_PG_CHANGES, (node, json.dumps(resync), node))
    rows = [
        (int(c.online), c.changed_at, c.signed_in_at, c.ip_address, c.first_signed_in_at, c.iot_id)
        for c in batch.changes
    ]
    if rows:
        conn.execute(_PG_CHANGES, (node, json.dumps(rows), node))
