"""A full disk under the presence writer (thinghub/registry/presence_writer.py): the batch
that cannot be written stays pending (coalesced with what happens meanwhile) and is tried
again, the failures are counted and said once, the statuses the registry answers stay right,
and once there is room again registry.db catches up by itself, without a restart.

A real full disk: the 8 MiB tmpfs of ``conftest.small_disk``, a registry on it, a filler file
written until ``ENOSPC``; the event loop runs in the test. Devices' sign-ins and disconnects are
recorded through ``Registry.device_signed_in``/``device_signed_out``, as the broker hooks do.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sechub import Filler

from thinghub.registry import DeviceStatus, Registry, RegistryStore
from thinghub.registry.presence_writer import PresenceWriter

pytestmark = pytest.mark.thinghub_only

DEVICES = 300
TIMEOUT = 15.0


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_presence_waits_out_a_full_disk(small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = small_disk / "data"
    store = RegistryStore.open(data)
    registry = Registry(store)
    account = registry.ensure_root_account().account_id
    pk = registry.create_product(account, "FullDisk", 0).product_key
    apply = registry.batch_register(account, pk, count=DEVICES)
    devices = [
        d
        for page in range(1, DEVICES // 50 + 1)
        for d in registry.query_page_by_apply_id(
            account, apply.apply_id, page=page, page_size=50
        ).items
    ]
    assert len(devices) == DEVICES
    registry.mark_all_offline()
    filler = Filler(small_disk / "filler")

    def sign_in(n: int) -> int:
        d = devices[n]
        return registry.device_signed_in(d.iot_id, pk, d.device_name, ip_address="192.0.2.1")

    def file_online() -> dict[str, int]:
        conn = sqlite3.connect(f"file:{data / 'registry.db'}?mode=ro", uri=True)
        try:
            return dict(conn.execute("SELECT device_name, online FROM devices").fetchall())
        finally:
            conn.close()

    async def scenario() -> PresenceWriter:
        writer = PresenceWriter(store, registry.presence, batch=1000, retry_s=0.2)
        writer.start(asyncio.get_running_loop())
        filler.fill()
        # The whole fleet signs in, and a third of it leaves again, on a full disk.
        epochs = [sign_in(n) for n in range(len(devices))]
        for n in range(0, len(devices), 3):
            d = devices[n]
            registry.device_signed_out(d.iot_id, pk, d.device_name, online_epoch=epochs[n])
        await until(lambda: writer.write_failures >= 3, "the write to be tried again")
        assert writer.failing is not None and writer.pending == len(devices)
        assert all(online == 0 for online in file_online().values())
        # The registry answers the truth meanwhile.
        states = registry.batch_get_device_states(
            account, product_key=pk, device_names=[d.device_name for d in devices[:6]]
        )
        assert [s.status for s in states] == [
            DeviceStatus.OFFLINE if n % 3 == 0 else DeviceStatus.ONLINE for n in range(6)
        ]
        filler.remove()
        await until(lambda: writer.pending == 0, "the writer to catch up once there is room")
        assert writer.failing is None
        await writer.close()
        return writer

    try:
        with caplog.at_level(logging.WARNING, logger="thinghub.registry"):
            writer = asyncio.run(scenario())
        online = file_online()
        assert {d.device_name: online[d.device_name] for d in devices} == {
            d.device_name: int(n % 3 != 0) for n, d in enumerate(devices)
        }
        # Coalesced: one row per device, whatever was tried meanwhile.
        assert writer.rows_written == len(devices)
        messages = [r.getMessage() for r in caplog.records]
        assert len([m for m in messages if "status cannot be written" in m]) == 1, messages
        assert len([m for m in messages if "status writes work again" in m]) == 1, messages
        assert writer.failed is None
    finally:
        filler.remove()
        store.close()
