"""The presence writer (thinghub/registry/presence_writer.py) and the registry writer
(thinghub/registry/writer.py) on a real event loop and a real registry.db: coalesced batches,
an event loop that never waits while the file is locked by another connection, the bound on
API writes, and a failing thread that says so instead of dying silently.

The loop runs in the test (``asyncio.run``); "the file is locked" is a second sqlite3
connection holding ``BEGIN IMMEDIATE``, as another process writing registry.db would."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from thinghub.registry import Device, DeviceStatus, NotFoundError, Registry, RegistryStore
from thinghub.registry.errors import StoreUnavailable
from thinghub.registry.presence import PresenceChange
from thinghub.registry.presence_writer import PresenceWriter
from thinghub.registry.writer import RegistryWriter

TIMEOUT = 10.0


class World:
    def __init__(self, data_dir: Path, devices: int = 3) -> None:
        self.data_dir = data_dir
        self.store = RegistryStore.open(data_dir)
        self.registry = Registry(self.store)
        account = self.registry.ensure_root_account().account_id
        self.account = account
        self.pk = self.registry.create_product(account, "Presence", 0).product_key
        self.devices = [
            self.registry.register_device(account, self.pk, f"dev-{n}") for n in range(devices)
        ]
        self.registry.mark_all_offline()

    def sign_in(self, device: Device, ip: str = "192.0.2.1") -> int:
        return self.registry.device_signed_in(
            device.iot_id, device.product_key, device.device_name, ip_address=ip
        )

    def sign_out(self, device: Device, epoch: int) -> bool:
        return self.registry.device_signed_out(
            device.iot_id, device.product_key, device.device_name, online_epoch=epoch
        )

    def file_rows(self) -> dict[str, int]:
        """``online`` per device name, read by another connection (what a restart finds)."""
        conn = sqlite3.connect(self.data_dir / "registry.db")
        try:
            return dict(conn.execute("SELECT device_name, online FROM devices").fetchall())
        finally:
            conn.close()

    def lock_file(self) -> sqlite3.Connection:
        """Another writer holding registry.db's write lock (until rolled back)."""
        conn = sqlite3.connect(self.data_dir / "registry.db", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        return conn


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "data")
    yield w
    w.store.close()


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_a_burst_of_changes_is_written_coalesced(world: World) -> None:
    async def scenario() -> PresenceWriter:
        writer = PresenceWriter(world.store, world.registry.presence, batch=100)
        writer.start(asyncio.get_running_loop())
        flapping, steady, leaving = world.devices
        for _ in range(200):  # one device connects and disconnects 200 times
            assert world.sign_out(flapping, world.sign_in(flapping))
        world.sign_in(flapping)
        world.sign_in(steady)
        world.sign_out(leaving, world.sign_in(leaving))
        await until(lambda: writer.pending == 0, "the writer to catch up")
        await writer.close()
        return writer

    writer = asyncio.run(scenario())
    changes = world.registry.presence.changes
    assert changes == 404
    assert writer.rows_written < changes / 10, (writer.rows_written, writer.batches)
    assert writer.write_failures == 0 and writer.failed is None
    assert world.file_rows() == {"dev-0": 1, "dev-1": 1, "dev-2": 0}
    states = world.registry.batch_get_device_states(
        world.account, iot_ids=[d.iot_id for d in world.devices]
    )
    assert [d.status for d in states] == [
        DeviceStatus.ONLINE,
        DeviceStatus.ONLINE,
        DeviceStatus.OFFLINE,
    ]


def test_the_loop_does_not_wait_while_the_file_is_locked(world: World) -> None:
    """Another connection holds registry.db's write lock for 2 s: sign-ins are recorded and
    read back at once, the loop keeps turning, and the file converges once the lock goes."""
    device = world.devices[0]
    gaps: list[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async def scenario() -> PresenceWriter:
        loop = asyncio.get_running_loop()
        writer = PresenceWriter(world.store, world.registry.presence, batch=100)
        writer.start(loop)
        stop = asyncio.Event()
        ticks = asyncio.create_task(ticker(stop))
        locker = world.lock_file()
        try:
            started = time.monotonic()
            for _ in range(50):
                world.sign_out(device, world.sign_in(device))
            epoch = world.sign_in(device)
            assert time.monotonic() - started < 0.5
            seen = world.registry.get_device(world.account, iot_id=device.iot_id)
            assert seen.status is DeviceStatus.ONLINE and seen.online_epoch == epoch
            await asyncio.sleep(2.0)  # the lock is held this long, by design of the test
            assert writer.pending == 1  # coalesced, waiting for the lock
            assert world.file_rows()["dev-0"] == 0
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        await until(lambda: writer.pending == 0, "the writer to catch up")
        stop.set()
        await ticks
        await writer.close()
        return writer

    asyncio.run(scenario())
    assert max(gaps) < 0.25, f"the loop stalled for {max(gaps):.3f} s"
    assert world.file_rows()["dev-0"] == 1


def test_pending_changes_are_written_at_close(world: World) -> None:
    async def scenario() -> None:
        writer = PresenceWriter(world.store, world.registry.presence, batch=1)
        writer.start(asyncio.get_running_loop())
        for device in world.devices:
            world.sign_in(device)
        await writer.close()
        assert writer.pending == 0

    asyncio.run(scenario())
    assert world.file_rows() == {"dev-0": 1, "dev-1": 1, "dev-2": 1}


def test_close_does_not_wait_out_the_gathering_interval(world: World) -> None:
    """A hub stopping while changes gather writes them at once: close is not held up by
    ``registry.presence_interval`` (an hour here)."""

    async def scenario() -> None:
        writer = PresenceWriter(world.store, world.registry.presence, batch=100, interval_s=3600.0)
        writer.start(asyncio.get_running_loop())
        for device in world.devices:
            world.sign_in(device)
        await asyncio.wait_for(writer.close(), TIMEOUT)

    asyncio.run(scenario())
    assert world.file_rows() == {"dev-0": 1, "dev-1": 1, "dev-2": 1}


def test_a_failing_writer_thread_says_so_and_the_hub_goes_on(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug on the writer thread (here: a change no SQL can bind) is caught at its top:
    logged once with its traceback, named in ``failed``; presence is still recorded."""
    device = world.devices[0]

    async def scenario() -> PresenceWriter:
        book = world.registry.presence
        writer = PresenceWriter(world.store, book, batch=10)
        writer.start(asyncio.get_running_loop())
        book.pending["broken"] = PresenceChange("broken", object(), 0, None, None, None, 0.0)  # type: ignore[arg-type]
        world.sign_in(device)
        writer._wake_up()  # what the first change recorded would have done
        await until(lambda: writer.failed is not None, "the failure to be reported")
        world.sign_out(device, world.sign_in(device))  # still recorded, in memory
        await writer.close()
        return writer

    with caplog.at_level(logging.ERROR, logger="thinghub.registry"):
        writer = asyncio.run(scenario())
    assert writer.failures == 1 and writer.failed is not None
    assert writer.failed.startswith("TypeError")
    failures = [r for r in caplog.records if "presence writer failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    seen = world.registry.get_device(world.account, iot_id=device.iot_id)
    assert seen.status is DeviceStatus.OFFLINE


def test_api_writes_run_on_the_registry_writer_and_are_bounded(world: World) -> None:
    """Writes run on the writer's thread, in order, their errors raised to the caller; while
    one waits for the file's lock, a second one past ``max_pending`` is refused at once with
    StoreUnavailable (the API's 503) and the loop never waits."""
    registry = world.registry

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        writer = RegistryWriter(max_pending=1)
        writer.start(loop)
        added = await writer.run(
            lambda: registry.register_device(world.account, world.pk, "wdev-1")
        )
        assert added.device_name == "wdev-1"
        with pytest.raises(NotFoundError):
            await writer.run(lambda: registry.delete_device(world.account, iot_id="x" * 26))
        locker = world.lock_file()
        try:
            first = asyncio.ensure_future(
                writer.run(lambda: registry.register_device(world.account, world.pk, "wdev-2"))
            )
            await asyncio.sleep(0)  # handed to the thread, which waits for the lock
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await writer.run(
                    lambda: registry.register_device(world.account, world.pk, "wdev-3")
                )
            assert time.monotonic() - started < 0.1
            assert writer.refused == 1 and not first.done()
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert (await asyncio.wait_for(first, TIMEOUT)).device_name == "wdev-2"
        await writer.close()
        with pytest.raises(StoreUnavailable):
            await writer.run(lambda: None)
        assert writer.writes == 3 and writer.failed is None

    asyncio.run(scenario())
    assert set(world.file_rows()) == {"dev-0", "dev-1", "dev-2", "wdev-1", "wdev-2"}


def test_an_api_write_that_finds_the_file_locked_too_long_is_refused_as_unavailable(
    world: World,
) -> None:
    """Another process holds registry.db past the busy timeout: the change is not made and
    the caller gets StoreUnavailable (the API's 503, "try again"), not an internal error."""
    registry = world.registry
    world.store._conn.execute("PRAGMA busy_timeout = 200")  # 5 s in the hub; short here

    async def scenario() -> None:
        writer = RegistryWriter(max_pending=4)
        writer.start(asyncio.get_running_loop())
        locker = world.lock_file()
        try:
            with pytest.raises(StoreUnavailable, match="cannot be written now"):
                await writer.run(
                    lambda: registry.register_device(world.account, world.pk, "late-1")
                )
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        added = await writer.run(
            lambda: registry.register_device(world.account, world.pk, "late-1")
        )
        assert added.device_name == "late-1" and writer.failed is None
        await writer.close()

    asyncio.run(scenario())
