"""A full disk must not lock devices out: a device's sign-in writes its presence (ONLINE, its
IP, the time) to the registry, and that write failing must neither refuse nor drop the
connection (auth/broker_hooks.py, ``RegistryHooks.connected``).

The attack: fill the disk the data directory lives on (anything that can write to that disk
can). Before the fix a device signing in got CONNACK 0 and at once DISCONNECT 0x83
(implementation specific error): the failed presence write escaped the CONNECT handler, and
the device could never reach the messages queued for it until the disk had room again.

A real full disk: an 8 MiB tmpfs as the data directory (the tests run as root; skipped where
``mount`` is not permitted), a real ``thinghub serve`` on it, a filler file written until
``ENOSPC``; the device signs in with the Alibaba scheme through paho-mqtt.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sec_paho_device import PahoDevice
from sechub import Filler, SecHub, publish_qos1, wait_for

pytestmark = pytest.mark.thinghub_only


@pytest.fixture
def hub(small_disk: Path) -> Iterator[SecHub]:
    h = SecHub(small_disk / "data")
    try:
        yield h
    finally:
        h.stop()


def test_device_signs_in_and_drains_its_queue_on_a_full_disk(hub: SecHub) -> None:
    product_key = hub.product(f"p_{uuid.uuid4().hex[:8]}")
    device = hub.device(product_key, f"d{uuid.uuid4().hex[:8]}")
    first = PahoDevice(hub, device, persistent=True)
    first.connect()
    first.subscribe(device.topic("user/get"))
    first.stop()
    publish_qos1(hub, device.topic("user/get"), [f"queued {n}".encode() for n in range(3)])

    Filler(hub.data_dir / "filler").fill()

    # Twice: each sign-in's presence write fails, and the failure is logged once, not per
    # sign-in.
    for attempt in range(2):
        back = PahoDevice(hub, device, persistent=True)
        assert back.connect() == (0, True)
        if attempt == 0:
            got = [back.next_message() for _ in range(3)]
            assert got == [(device.topic("user/get"), f"queued {n}".encode()) for n in range(3)]
        # Still connected: a round trip after everything queued has arrived (the PUBACK may
        # say 0x97, quota exceeded: the store takes no new QoS 1 work on a full disk).
        assert back.publish(device.topic("user/update"), b"alive") in (0x00, 0x10, 0x97)
        assert not back.closed.is_set(), f"dropped with reason {back.disconnect_reason}"
        back.stop()

    # The presence writer lets changes gather (registry.presence_interval) before it tries.
    wait_for(
        lambda: any("status cannot be written" in line for line in hub.output),
        what="the presence writer to meet the full disk",
    )
    warnings = [line for line in hub.output if "status cannot be written" in line]
    assert len(warnings) == 1, hub.log()
    assert "0x83" not in hub.log() and "Traceback" not in hub.log(), hub.log()
    (hub.data_dir / "filler").unlink()
