"""The sign-in cache (Registry.lookup_sign_in) and its preload at start: what a sign-in reads
for a device, on a real registry.db, and that writes through the registry still win."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from thinghub.registry import DeviceStatus, Registry, RegistryStore
from thinghub.registry.store import FILE_NAME


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Registry, str, str]]:
    store = RegistryStore.open(tmp_path)
    clock = Clock()
    reg = Registry(store, clock=clock)
    account = reg.create_account("fleet").account_id
    pk = reg.create_product(account, "Meter_01", 0).product_key
    for i in range(6):
        reg.register_device(account, pk, f"meter-{i}")
    # meter-0 .. meter-3 signed in once, meter-3 the latest; meter-4 and meter-5 never did.
    for i in range(4):
        clock.now += 1000
        device = reg.lookup_device(pk, f"meter-{i}")
        assert device is not None
        epoch = reg.device_signed_in(device.iot_id, pk, device.device_name, ip_address="10.0.0.1")
        reg.device_signed_out(device.iot_id, pk, device.device_name, online_epoch=epoch)
    reg.flush_presence()
    yield reg, account, pk
    store.close()


def delete_behind_its_back(data_dir: Path, pk: str, names: list[str]) -> None:
    """Rows gone from the file without this Registry knowing (as if the cache were all that
    could still answer)."""
    conn = sqlite3.connect(data_dir / FILE_NAME)
    try:
        conn.executemany(
            "DELETE FROM devices WHERE product_key = ? AND device_name = ?",
            [(pk, n) for n in names],
        )
        conn.commit()
    finally:
        conn.close()


def test_preload_reads_the_most_recently_online_devices_first(
    world: tuple[Registry, str, str], tmp_path: Path
) -> None:
    reg, _account, pk = world
    reg.forget_cached_devices()
    assert reg.preload_sign_ins(2) == 2
    names = [f"meter-{i}" for i in range(6)]
    delete_behind_its_back(tmp_path, pk, names)
    found = {n for n in names if reg.lookup_sign_in(pk, n) is not None}
    assert found == {"meter-3", "meter-2"}


def test_preload_takes_every_device_when_there_is_room(
    world: tuple[Registry, str, str], tmp_path: Path
) -> None:
    reg, _account, pk = world
    reg.forget_cached_devices()
    assert reg.preload_sign_ins(100) == 6
    names = [f"meter-{i}" for i in range(6)]
    delete_behind_its_back(tmp_path, pk, names)
    records = [reg.lookup_sign_in(pk, n) for n in names]
    assert all(r is not None and r.device_secret for r in records)


def test_a_write_through_the_registry_evicts_a_preloaded_device(
    world: tuple[Registry, str, str],
) -> None:
    reg, account, pk = world
    reg.forget_cached_devices()
    reg.preload_sign_ins(100)
    device = reg.lookup_sign_in(pk, "meter-1")
    assert device is not None and device.status is DeviceStatus.OFFLINE
    reg.disable_device(account, iot_id=device.iot_id)
    again = reg.lookup_sign_in(pk, "meter-1")
    assert again is not None and again.status is DeviceStatus.DISABLE
    reg.delete_device(account, iot_id=device.iot_id)
    assert reg.lookup_sign_in(pk, "meter-1") is None


def test_sign_in_records_do_not_follow_presence_but_lookup_device_does(
    world: tuple[Registry, str, str],
) -> None:
    reg, _account, pk = world
    before = reg.lookup_sign_in(pk, "meter-4")
    assert before is not None and before.status is DeviceStatus.UNACTIVE
    reg.device_signed_in(before.iot_id, pk, "meter-4", ip_address="10.0.0.9")
    # The status users read is current; the sign-in record is the file's, its secret right.
    shown = reg.lookup_device(pk, "meter-4")
    assert shown is not None and shown.status is DeviceStatus.ONLINE
    assert shown.ip_address == "10.0.0.9"
    record = reg.lookup_sign_in(pk, "meter-4")
    assert record is before
    assert record.device_secret == shown.device_secret


def test_forgetting_the_caches_stops_a_preload_from_keeping_what_it_read_before(
    world: tuple[Registry, str, str], tmp_path: Path
) -> None:
    """Another process's write is seen by the device watch, which forgets the caches: a
    preload that read before that must not put its older records back."""
    reg, _account, pk = world
    reg.forget_cached_devices()
    original = reg._device_writes
    real_read = reg.store.read

    def read_then_another_process_writes():  # type: ignore[no-untyped-def]
        context = real_read()
        conn = context.__enter__()
        conn.execute("SELECT 1").fetchone()
        reg.forget_cached_devices()  # as DeviceWatch does when the file changed
        return _Entered(context, conn)

    reg.store.read = read_then_another_process_writes  # type: ignore[method-assign]
    try:
        assert reg.preload_sign_ins(100) == 0
    finally:
        reg.store.read = real_read  # type: ignore[method-assign]
    assert reg._device_writes == original + 1
    delete_behind_its_back(tmp_path, pk, ["meter-0"])
    assert reg.lookup_sign_in(pk, "meter-0") is None


class _Entered:
    def __init__(self, context: object, conn: sqlite3.Connection) -> None:
        self._context, self._conn = context, conn

    def __enter__(self) -> sqlite3.Connection:
        return self._conn

    def __exit__(self, *exc: object) -> None:
        self._context.__exit__(*exc)  # type: ignore[attr-defined]
