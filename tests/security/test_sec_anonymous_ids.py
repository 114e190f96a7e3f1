"""With ``mqtt.allow_anonymous = true``, the client ids of devices are theirs alone
(auth/broker_hooks.py, ``RegistryHooks._reserved_for_a_device``).

The attack: a signed-in device's session is keyed by ``${productKey}.${deviceName}`` in its
product's account; anonymous clients live in the root account. Before the fix an anonymous
client that connected with a root-account device's client id took over the device's session:
the device got DISCONNECT 0x8E (session taken over) and the attacker received the QoS 1
messages queued for the device. Now such a CONNECT is refused with 0x85 (client identifier not
valid; 3.1.1 return code 2, identifier rejected), the device keeps its connection and its
messages.

A real ``thinghub serve`` (anonymous allowed); the device signs in with the Alibaba scheme
through paho-mqtt; the attacker is a raw MQTT socket.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rawmqtt
from sec_paho_device import PahoDevice, pub
from sechub import Device, SecHub

pytestmark = pytest.mark.thinghub_only

IDENTIFIER_REFUSED = {5: 0x85, 4: 2}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[SecHub]:
    h = SecHub(tmp_path / "data", mqtt_allow_anonymous=True)
    yield h
    h.stop()


def _device(hub: SecHub) -> Device:
    product_key = hub.product(f"p_{uuid.uuid4().hex[:8]}")
    return hub.device(product_key, f"d{uuid.uuid4().hex[:8]}")


def _anonymous(hub: SecHub, client_id: str, version: int, **kwargs: Any) -> rawmqtt.Packet:
    with hub.raw(version) as attacker:
        attacker.send(rawmqtt.connect(client_id, version, **kwargs))
        connack = attacker.expect(rawmqtt.CONNACK)
        if connack.reason:
            assert attacker.expect_closed(5.0) == []
        return connack


@pytest.mark.parametrize("version", [5, 4], ids=["v5", "v311"])
def test_anonymous_client_cannot_take_a_devices_session(hub: SecHub, version: int) -> None:
    device = _device(hub)
    # The device has a persistent session and a message queued for it while it is away.
    owner = PahoDevice(hub, device, version=version, persistent=True)
    owner.connect()
    owner.subscribe(device.topic("user/get"))
    owner.stop()
    pub(hub, device, b"meant for the device only")

    # The attacker resumes "the session" of that client id: refused, nothing delivered.
    connack = _anonymous(hub, device.client_id, version, clean=False)
    assert connack.reason == IDENTIFIER_REFUSED[version]

    # While the device is connected, the attempt does not kick it either.
    back = PahoDevice(hub, device, version=version, persistent=True)
    assert back.connect() == (0, True)
    assert back.next_message() == (device.topic("user/get"), b"meant for the device only")
    connack = _anonymous(hub, device.client_id, version)
    assert connack.reason == IDENTIFIER_REFUSED[version]
    pub(hub, device, b"still connected")
    assert back.next_message() == (device.topic("user/get"), b"still connected")
    assert not back.closed.is_set()
    back.stop()


def test_the_products_id_space_is_reserved_and_other_ids_still_work(hub: SecHub) -> None:
    device = _device(hub)
    # A name not registered yet: squatting on it would be waiting for the device's messages.
    # The product was created by another process (the command line): the hub reads the
    # registry's products within its poll interval.
    squatted = f"{device.product_key}.not-registered-yet"
    deadline = time.monotonic() + 2.0
    while _anonymous(hub, squatted, 5).reason != IDENTIFIER_REFUSED[5]:
        assert time.monotonic() < deadline, "the product's client ids are not reserved"
        time.sleep(0.05)
    assert _anonymous(hub, squatted, 4).reason == IDENTIFIER_REFUSED[4]
    # Anonymous access as such still works, with any id outside the devices' ids.
    assert _anonymous(hub, f"sensor-{uuid.uuid4().hex[:8]}", 5).reason == 0
    assert _anonymous(hub, "a1NoSuchProd.meter-7", 4).reason == 0
    hub.assert_alive()
