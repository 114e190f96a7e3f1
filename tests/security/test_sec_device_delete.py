"""Deleting or disabling a device ends its connection (auth/device_watch.py).

The attack: an operator deletes a device (``thinghub device delete`` beside the running hub,
or the Alibaba API's ``DeleteDevice``) because it is lost or compromised. Before the fix the
command line's delete was not noticed: the device stayed connected for at least 12 s (until
a later sign-in), could still publish and subscribe, and when a device of the same name was
registered again, the old connection (and the old persistent session) received that new
device's messages.

A real ``thinghub serve``; devices sign in with the Alibaba scheme through paho-mqtt; the
command line runs in its own process; the API through aliyun-python-sdk-core.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aliyunsdkiot.request.v20180120.DeleteDeviceRequest import DeleteDeviceRequest
from aliyunsdkiot.request.v20180120.DisableThingRequest import DisableThingRequest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sec_paho_device import ADMINISTRATIVE_ACTION, PahoDevice, api, pub, thinghub_cli
from sechub import Device, SecHub

pytestmark = pytest.mark.thinghub_only

# The bound the hub promises: a revoked device's connection is closed within this long.
CLOSE_WITHIN_S = 2.0
BAD_CREDENTIALS = {5: 0x86, 4: 4}
NOT_AUTHORIZED = {5: 0x87, 4: 5}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[SecHub]:
    h = SecHub(tmp_path / "data")
    yield h
    h.stop()


def _device(hub: SecHub) -> Device:
    product_key = hub.product(f"p_{uuid.uuid4().hex[:8]}")
    return hub.device(product_key, f"d{uuid.uuid4().hex[:8]}")


def _closed_within(device: PahoDevice, seconds: float, since: float) -> float:
    assert device.closed.wait(seconds + 1.0), "the deleted device is still connected"
    took = time.monotonic() - since
    assert took <= seconds, f"closed only after {took:.2f} s"
    return took


@pytest.mark.parametrize("version", [5, 4], ids=["v5", "v311"])
def test_device_deleted_from_the_command_line_is_disconnected(hub: SecHub, version: int) -> None:
    device = _device(hub)
    old = PahoDevice(hub, device, version=version)
    assert old.connect() == (0, False)
    old.subscribe(device.topic("user/get"))

    thinghub_cli(hub.data_dir, "device", "delete", device.product_key, device.name)
    deleted_at = time.monotonic()

    _closed_within(old, CLOSE_WITHIN_S, deleted_at)
    if version == 5:
        assert old.disconnect_reason == ADMINISTRATIVE_ACTION
    # It cannot come back and publish: its secret no longer signs anyone in.
    raw, connack = device.sign_in(version, expect=None)
    assert connack.reason == BAD_CREDENTIALS[version]
    assert raw.expect_closed(5.0) == []
    raw.close()
    old.stop()
    hub.assert_alive()


@pytest.mark.parametrize("version", [5, 4], ids=["v5", "v311"])
def test_a_name_registered_again_gets_nothing_of_the_deleted_device(
    hub: SecHub, version: int
) -> None:
    device = _device(hub)
    # The device to be deleted has a persistent session with a message queued for it.
    old = PahoDevice(hub, device, version=version, persistent=True)
    old.connect()
    old.subscribe(device.topic("user/get"))
    old.stop()
    pub(hub, device, b"for the deleted device")
    # A second connection of the old device stays up while it is deleted and its name
    # registered again, as fast as the command line can.
    lingering = PahoDevice(hub, device, version=version, persistent=True)
    assert lingering.connect() == (0, True)
    assert lingering.next_message() == (device.topic("user/get"), b"for the deleted device")

    thinghub_cli(hub.data_dir, "device", "delete", device.product_key, device.name)
    again = thinghub_cli(hub.data_dir, "device", "register", device.product_key, device.name)
    record = again[0] if isinstance(again, list) else again
    new_device = Device(hub, device.product_key, device.name, str(record["device_secret"]))

    # The new device asks to resume a session: there is none of its own.
    new = PahoDevice(hub, new_device, version=version, persistent=True)
    assert new.connect() == (0, False)
    new.subscribe(new_device.topic("user/get"))
    pub(hub, new_device, b"for the new device")
    # The first message it gets is its own: nothing queued for the old one came first.
    assert new.next_message() == (new_device.topic("user/get"), b"for the new device")

    # The old connection was closed, and received nothing of the new device's.
    assert lingering.closed.wait(CLOSE_WITHIN_S + 1.0)
    assert lingering.messages.empty()
    lingering.stop()
    new.stop()


def test_api_delete_ends_the_session_and_disable_closes_the_connection(hub: SecHub) -> None:
    deleted, disabled = _device(hub), _device(hub)
    to_delete = PahoDevice(hub, deleted, persistent=True)
    to_delete.connect()
    to_disable = PahoDevice(hub, disabled)
    to_disable.connect()

    request = DeleteDeviceRequest()
    request.set_ProductKey(deleted.product_key)
    request.set_DeviceName(deleted.name)
    asked = time.monotonic()
    api(hub, request)
    _closed_within(to_delete, CLOSE_WITHIN_S, asked)
    assert to_delete.disconnect_reason == ADMINISTRATIVE_ACTION

    request2 = DisableThingRequest()
    request2.set_ProductKey(disabled.product_key)
    request2.set_DeviceName(disabled.name)
    asked = time.monotonic()
    api(hub, request2)
    _closed_within(to_disable, CLOSE_WITHIN_S, asked)
    assert to_disable.disconnect_reason == ADMINISTRATIVE_ACTION
    raw, connack = disabled.sign_in(5, expect=None)
    assert connack.reason == NOT_AUTHORIZED[5]
    raw.close()
    to_delete.stop()
    to_disable.stop()


def test_device_disabled_from_the_command_line_is_disconnected_and_resumes_when_enabled(
    hub: SecHub,
) -> None:
    device = _device(hub)
    first = PahoDevice(hub, device, persistent=True)
    first.connect()
    first.subscribe(device.topic("user/get"))

    thinghub_cli(hub.data_dir, "device", "disable", device.product_key, device.name)
    _closed_within(first, CLOSE_WITHIN_S, time.monotonic())
    assert first.disconnect_reason == ADMINISTRATIVE_ACTION
    first.stop()
    pub(hub, device, b"while disabled")

    # Disabling keeps the session (as DisableThing does): enabled again, the device resumes
    # it and gets what was queued meanwhile.
    thinghub_cli(hub.data_dir, "device", "enable", device.product_key, device.name)
    deadline = time.monotonic() + CLOSE_WITHIN_S
    while True:  # the hub notices another process's enable within its poll interval
        back = PahoDevice(hub, device, persistent=True)
        connack = back.connect()
        if connack[0] != NOT_AUTHORIZED[5] or time.monotonic() > deadline:
            break
        back.closed.wait(5.0)
        back.stop()
        time.sleep(0.1)
    assert connack == (0, True)
    assert back.next_message() == (device.topic("user/get"), b"while disabled")
    back.stop()


def test_a_device_deleted_while_the_hub_is_down_loses_its_stored_session(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    hub = SecHub(data_dir)
    try:
        kept, deleted = _device(hub), _device(hub)
        for device in (kept, deleted):
            first = PahoDevice(hub, device, persistent=True)
            first.connect()
            first.subscribe(device.topic("user/get"))
            first.stop()
            pub(hub, device, b"queued before the restart")
    finally:
        hub.stop()
    # While the hub is down: the device is deleted and its name registered again.
    thinghub_cli(data_dir, "device", "delete", deleted.product_key, deleted.name)
    again = thinghub_cli(data_dir, "device", "register", deleted.product_key, deleted.name)
    record = again[0] if isinstance(again, list) else again
    renewed = Device(hub, deleted.product_key, deleted.name, str(record["device_secret"]))

    hub = SecHub(data_dir)
    try:
        kept.hub = renewed.hub = hub
        # A device that was not touched resumes its stored session, as before.
        back = PahoDevice(hub, kept, persistent=True)
        assert back.connect() == (0, True)
        assert back.next_message() == (kept.topic("user/get"), b"queued before the restart")
        back.stop()
        # The new device of the deleted one's name has no session, and nothing of the old.
        new = PahoDevice(hub, renewed, persistent=True)
        assert new.connect() == (0, False)
        new.subscribe(renewed.topic("user/get"))
        pub(hub, renewed, b"for the new device")
        assert new.next_message() == (renewed.topic("user/get"), b"for the new device")
        new.stop()
    finally:
        hub.stop()
