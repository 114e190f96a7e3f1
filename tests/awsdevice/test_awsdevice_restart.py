"""A persistent session of an AWS IoT device, in an account other than the root one, outlives
a restart of the hub: the device comes back to its subscriptions and to the messages queued
for it meanwhile. (Restored sessions are checked against the registry at start: only a
client id ``${productKey}.${deviceName}`` of the session's own account is an Alibaba
device's, and ends with its device; an AWS device's id is no such thing.)"""

from __future__ import annotations

import queue
import ssl
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from devhub import TIMEOUT, DevHub
from paho.mqtt.enums import CallbackAPIVersion

pytestmark = pytest.mark.thinghub_only


def persistent_client(hub: DevHub, client_id: str, cert: Path, key: Path) -> tuple[Any, Any]:
    inbox: queue.Queue[Any] = queue.Queue()
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311,
        clean_session=False,
    )  # fmt: skip
    client.tls_set(
        ca_certs=str(hub.ca_file), certfile=str(cert), keyfile=str(key),
        cert_reqs=ssl.CERT_REQUIRED,
    )  # fmt: skip
    client.on_connect = lambda _c, _u, flags, rc, _p=None: inbox.put(("connack", flags, rc))
    client.on_subscribe = lambda _c, _u, _m, codes, _p=None: inbox.put(("suback", codes))
    client.on_message = lambda _c, _u, m: inbox.put(("message", m.topic, m.payload))
    client.connect(hub.host, hub.tls_port)
    client.loop_start()
    return client, inbox


def test_a_tenant_devices_persistent_session_outlives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hub = DevHub(data)
    try:
        key_id, secret, iot = hub.tenant()
        device = hub.device(iot)
        topic = f"cmd/{device.thing}"
        client, inbox = persistent_client(hub, device.thing, device.cert_file, device.key_file)
        kind, flags, rc = inbox.get(timeout=TIMEOUT)
        assert kind == "connack" and not rc.is_failure, rc
        client.subscribe(topic, qos=1)
        assert inbox.get(timeout=TIMEOUT)[0] == "suback"
        client.disconnect()
        client.loop_stop()
        # Queued while the device is away, through the tenant's own data plane.
        hub.iot_data(key_id, secret).publish(topic=topic, qos=1, payload=b"while you were away")
    finally:
        hub.stop()
    hub = DevHub(data)
    try:
        client, inbox = persistent_client(hub, device.thing, device.cert_file, device.key_file)
        try:
            kind, flags, rc = inbox.get(timeout=TIMEOUT)
            assert kind == "connack" and not rc.is_failure, rc
            assert flags.session_present, "the session did not survive the restart"
            assert inbox.get(timeout=TIMEOUT) == ("message", topic, b"while you were away")
        finally:
            client.disconnect()
            client.loop_stop()
    finally:
        hub.stop()
