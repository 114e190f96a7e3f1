"""Ends the connections and sessions of devices that lose their right to them, and keeps the
broker hooks' view of who owns which session (``RegistryHooks.owners``) and which client ids
are reserved for devices (``RegistryHooks.reserved_product_keys``) current.

A device loses its right to its connection when it is deleted or disabled:

* through this process's ``Registry`` (the Alibaba API's DeleteDevice and DisableThing): the
  registry tells the watch once the change is committed (``Registry.on_device_revoked``), and
  the watch acts at once;
* by ``thinghub device delete|disable`` in another process, which writes ``registry.db``
  beside the running hub: found by polling. Every ``WATCH_INTERVAL_S`` the watch asks
  ``RegistryStore.data_version``, the ``PRAGMA data_version`` of the connection this process
  writes the registry with, which changes when any other connection committed
  (sqlite.org/pragma.html#pragma_data_version) and not for this process's own writes (device
  presence, the API's changes, which are told to the watch directly); only then does it read
  the records of the devices that own sessions, ``BATCH_SIZE`` IotIds per query, and
  compare;
* while the hub was down: at start, each session restored from disk is bound to the device
  record it belongs to, or ended when there is none (deleted, or registered again under the
  same name and never signed in since).

A deleted device's session ends with its connection (v5 DISCONNECT 0x98, administrative
action; a 3.1.1 connection is closed): its queued messages and subscriptions are gone, its
will is not sent. A disabled device's connection is closed and its session kept, as
DisableThing documents (http/aliyun/actions.py): it resumes if the device is enabled before
the session expires. A session is bound to the IotId that opened it, so a device registered
again under a deleted one's name never resumes the old session (broker_hooks.RegistryHooks).

The event loop never waits on SQLite here: the reads run on the watch's own thread, on its
own connection (in WAL mode a reader takes no lock a writer holds), and their results are
applied on the loop, checked again against what changed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from ..broker.auth import ClientCertificate, Credential, Decision
from ..broker.broker import Broker, session_key
from ..broker.session import Session
from ..mqtt.packets import Connect
from ..mqtt.types import ReasonCode
from ..registry.models import Device
from ..registry.registry import Registry
from .aliyun_device import device_client_id
from .aws_device import AwsDevices
from .broker_hooks import ANONYMOUS, RegistryHooks, uses_device_sign_in

__all__ = ["BATCH_SIZE", "WATCH_INTERVAL_S", "DeviceWatch", "RegistrySignInGate"]

log = logging.getLogger("thinghub.auth")

# The sign-in cache's TTL while the watch runs (Registry.device_cache_ttl_s): a safety net
# only, the watch's poll is what notices other processes' writes.
WATCHED_DEVICE_CACHE_TTL_S = 300.0

# How often the registry file is checked for other processes' writes: a device deleted or
# disabled from the command line loses its connection within about this long (plus one read).
WATCH_INTERVAL_S = 0.5
# IotIds per query when comparing (well under SQLite's 999 bound parameters of old builds).
BATCH_SIZE = 500
# Owners of sessions that have ended are forgotten every this many polls.
_PRUNE_EVERY = 120

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Record:
    """What the watch needs of a device record."""

    iot_id: str
    account_id: str
    disabled: bool
    activated: bool


class DeviceWatch:
    """Attach to the hooks and broker, ``await start()`` after ``Broker.restore()`` and before
    the listeners accept connections, ``await stop()`` before the registry closes."""

    def __init__(
        self,
        registry: Registry,
        broker: Broker,
        hooks: RegistryHooks,
        *,
        interval_s: float = WATCH_INTERVAL_S,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self._registry = registry
        self._broker = broker
        self._hooks = hooks
        hooks.attach(broker)
        self._interval = interval_s
        self._batch = batch_size
        self._path = registry.store.path
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._failing = False
        self._version: int | None = None  # PRAGMA data_version at the last poll
        # Sessions ended and connections closed because their device was deleted or disabled.
        self.revoked = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._registry.on_device_revoked(self._on_revoked)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thinghub-devwatch")
        await self._in_thread(self._open)
        await self._bind_restored()
        if self._path != ":memory:":  # no other process can write a private database
            self._task = asyncio.create_task(self._run(), name="thinghub-device-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        executor, self._executor = self._executor, None
        if executor is not None:
            # One worker: the close runs after any read still under way.
            await asyncio.wrap_future(executor.submit(self._close))
            executor.shutdown(wait=False)

    def _open(self) -> None:
        if self._path == ":memory:":
            return  # the store's own connection is used instead (_read)
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA query_only = ON")
        conn.execute("PRAGMA busy_timeout = 1000")
        self._version = self._registry.store.data_version()  # the baseline
        self._conn = conn
        # From now on a write by another process empties the sign-in cache within a poll
        # (_compare), so cached devices may live long: a fleet that reconnects minutes later
        # signs in from memory.
        self._registry.device_cache_ttl_s = max(
            self._registry.device_cache_ttl_s, WATCHED_DEVICE_CACHE_TTL_S
        )

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _in_thread(self, work: Callable[[], T]) -> T:
        assert self._loop is not None and self._executor is not None
        return await self._loop.run_in_executor(self._executor, work)

    # ------------------------------------------------------------------ in-process changes

    def _on_revoked(self, device: Device, deleted: bool) -> None:
        """Registry listener: runs on the thread that changed the registry."""
        loop = self._loop
        client_id = device_client_id(device.product_key, device.device_name)
        if threading.get_ident() == self._loop_thread:
            self._revoke(device.account_id, device.iot_id, client_id, deleted)
        elif loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(
                self._revoke, device.account_id, device.iot_id, client_id, deleted
            )

    def _revoke(self, account: str, iot_id: str, client_id: str, deleted: bool) -> None:
        key = session_key(account, client_id)
        session = self._broker.sessions.get(key)
        if session is None or self._hooks.owners.get(key, iot_id) != iot_id:
            return  # no session, or another device record's (registered again since)
        if deleted:
            log.info("device %s (IotId %s) was deleted: its session ends", client_id, iot_id)
            self._hooks.end_session(session)
            self.revoked += 1
        elif session.client is not None:
            log.info("device %s (IotId %s) was disabled: disconnected", client_id, iot_id)
            self._broker.disconnect_client(
                account, client_id, clean_session=False, prevent_will=False
            )
            self.revoked += 1

    # ------------------------------------------------------------------ other processes

    async def _run(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(self._interval)
            ticks += 1
            try:
                if await self._in_thread(self._changed):
                    await self._compare()
                if ticks % _PRUNE_EVERY == 0:
                    self._prune()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a read that failed; the next poll tries again
                if not self._failing:
                    self._failing = True
                    log.warning("cannot check the registry for deleted devices: %s", error)
                continue
            if self._failing:
                self._failing = False
                log.warning("checking the registry for deleted devices works again")

    def _changed(self) -> bool:
        if self._conn is None:
            return False
        # On this thread: it may wait while the hub's own writers hold the store's lock.
        version = self._registry.store.data_version()
        changed = version != self._version
        self._version = version
        return changed

    async def _compare(self) -> None:
        # A device deleted by another process may still sit in the sign-in cache (up to its
        # TTL): drop it first, so a sign-in from now on reads the record afresh, and every
        # sign-in before this point is in the snapshot below. A shared registry's copy has
        # evicted exactly the devices each change touched already (registry/pg_store.py):
        # the cache is kept, and serves sign-ins while PostgreSQL is out of reach.
        if not self._registry.store.shared:
            self._registry.forget_cached_devices()
        owned = [(key, iot) for key, iot in self._hooks.owners.items() if iot != ANONYMOUS]
        anonymous = self._hooks.anonymous_account
        products, present = await self._in_thread(
            lambda: self._read(anonymous, {iot for _key, iot in owned})
        )
        self._hooks.reserved_product_keys = products
        for key, iot in owned:
            disabled = present.get(iot)
            if disabled is False or self._hooks.owners.get(key) != iot:
                continue  # still allowed, or the session changed hands meanwhile
            session = self._broker.sessions.get(key)
            if session is None:
                continue
            self._revoke(session.account, iot, session.client_id, disabled is None)

    def _read(
        self, anonymous: str, iot_ids: Iterable[str]
    ) -> tuple[frozenset[str], dict[str, bool]]:
        """On the watch's thread: the anonymous account's ProductKeys, and for each of
        ``iot_ids`` that still exists whether it is disabled."""
        with self._reading() as conn:
            products = frozenset(
                row[0]
                for row in conn.execute(
                    "SELECT product_key FROM products WHERE account_id = ?", (anonymous,)
                )
            )
            present: dict[str, bool] = {}
            for batch in _batches(list(iot_ids), self._batch):
                marks = ",".join("?" * len(batch))
                rows = conn.execute(
                    f"SELECT iot_id, disabled FROM devices WHERE iot_id IN ({marks})", batch
                )
                present.update((row[0], bool(row[1])) for row in rows)
        return products, present

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """One snapshot: the watch's connection, or, for a private in-memory registry, the
        store's (only at start and in tests)."""
        if self._conn is None:
            with self._registry.store.read() as conn:
                yield conn
            return
        conn = self._conn
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def _prune(self) -> None:
        """Forget the owners of sessions that have ended."""
        sessions = self._broker.sessions
        owners = self._hooks.owners
        for key in [key for key in owners if key not in sessions]:
            del owners[key]

    # ------------------------------------------------------------------ start-up

    async def _bind_restored(self) -> None:
        """Bind each session restored from disk to its device record, or end it: its device
        was deleted while the hub was down (maybe registered again under the same name: a
        record that never signed in cannot own a session)."""
        hooks = self._hooks
        anonymous = hooks.anonymous_account
        restored = [s for s in self._broker.sessions.values() if s.key not in hooks.owners]
        names = sorted(
            {
                (pk, dn)
                for s in restored
                for pk, dot, dn in (s.client_id.partition("."),)
                if dot and pk and dn
            }
        )
        accounts, records = await self._in_thread(lambda: self._read_names(names))
        hooks.reserved_product_keys = frozenset(
            key for key, account in accounts.items() if account == anonymous
        )
        ended = 0
        for session in restored:
            owner = self._owner(session, records, accounts)
            if owner is None:
                hooks.end_session(session)
                ended += 1
            else:
                hooks.owners[session.key] = owner
        if ended:
            log.info("%d stored sessions of deleted devices ended", ended)

    @staticmethod
    def _owner(
        session: Session,
        records: dict[tuple[str, str], _Record],
        accounts: dict[str, str],
    ) -> str | None:
        """A restored session's owner, or None if it has none left. Only a client id
        ``${productKey}.${deviceName}`` of a product in the session's own account is a
        device's (aliyun_device.device_client_id); any other session (an anonymous client's,
        an AWS IoT device's signed in with its certificate, a SigV4 WebSocket client's) is no
        device's, and is kept (ANONYMOUS: the owner of sessions no device owns)."""
        product_key, dot, device_name = session.client_id.partition(".")
        if not dot or accounts.get(product_key) != session.account:
            return ANONYMOUS
        record = records.get((product_key, device_name))
        if record is not None and record.account_id == session.account:
            return record.iot_id if record.activated else None
        return None  # the device was deleted (or registered again and never signed in)

    def _read_names(
        self, names: Sequence[tuple[str, str]]
    ) -> tuple[dict[str, str], dict[tuple[str, str], _Record]]:
        """The account of every product (ProductKeys are unique across accounts), and the
        records of the devices ``names`` (ProductKey, DeviceName) name."""
        records: dict[tuple[str, str], _Record] = {}
        with self._reading() as conn:
            accounts = {
                str(row[0]): str(row[1])
                for row in conn.execute("SELECT product_key, account_id FROM products")
            }
            for batch in _batches(names, self._batch):
                pairs = ",".join(["(?, ?)"] * len(batch))
                args = [value for pair in batch for value in pair]
                rows = conn.execute(
                    "SELECT d.product_key, d.device_name, d.iot_id, p.account_id, d.disabled, "
                    "d.activated_at FROM devices d JOIN products p USING (product_key) "
                    f"WHERE (d.product_key, d.device_name) IN (VALUES {pairs})",
                    args,
                )
                for row in rows:
                    records[(row[0], row[1])] = _Record(
                        row[2], row[3], bool(row[4]), row[5] is not None
                    )
        return accounts, records


# While a shared registry (registry/pg_store.py) is out of reach, this node's copy of it may
# lag a change it will never hear of (a device disabled or deleted meanwhile): a sign-in it
# cannot answer from the sign-in cache is refused before its credentials are looked at, MQTT 5
# 0x88 Server unavailable (§3.2.2.2), 3.1.1 return code 3 (§3.2.2.3); the client retries.
_REGISTRY_UNAVAILABLE = Decision.deny(
    ReasonCode.SERVER_UNAVAILABLE, "the registry is out of reach from this node: try again later"
)


class RegistrySignInGate:
    """The broker's authenticator in front of ``RegistryHooks`` on a node whose registry is
    shared (PostgreSQL). While ``fresh()`` is False: an Alibaba device signs in only if the
    sign-in cache holds it (``Registry.sign_in_cached``), and an AWS IoT client certificate
    only if its sign-in record is cached (``AwsDevices.cached``): what this node knew when it
    lost PostgreSQL holds, nothing new is read from a copy that may be stale. A signed URL is
    refused; an anonymous client, which the registry does not vouch for, is the hooks' to
    judge as always."""

    def __init__(
        self,
        hooks: RegistryHooks,
        registry: Registry,
        fresh: Callable[[], bool],
        aws: AwsDevices | None = None,
    ) -> None:
        self._hooks = hooks
        self._registry = registry
        self._fresh = fresh
        self._aws = aws

    def authenticate(self, connect: Connect, peer: str) -> Decision:
        if not self._fresh() and uses_device_sign_in(connect):
            assert connect.username is not None
            device_name, _amp, product_key = connect.username.partition("&")
            if not self._registry.sign_in_cached(product_key, device_name):
                return _REGISTRY_UNAVAILABLE
        return self._hooks.authenticate(connect, peer)

    def authenticate_credential(
        self, connect: Connect, peer: str, credential: Credential
    ) -> Decision:
        if not self._fresh() and not (
            isinstance(credential, ClientCertificate)
            and self._aws is not None
            and self._aws.cached(credential)
        ):
            return _REGISTRY_UNAVAILABLE
        return self._hooks.authenticate_credential(connect, peer, credential)


def _batches(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
