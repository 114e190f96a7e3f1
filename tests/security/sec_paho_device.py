"""A device signing in with the Alibaba scheme through paho-mqtt (v5 or 3.1.1), for the attack
tests on device sign-in, and the hub's Alibaba API through aliyun-python-sdk-core. Waits are
on events with timeouts."""

from __future__ import annotations

import base64
import json
import queue
import subprocess
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from aliyunsdkcore.client import AcsClient
from aliyunsdkcore.request import RpcRequest
from aliyunsdkiot.request.v20180120.PubRequest import PubRequest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sechub import KEY_ID, ROOT, SECRET, TIMEOUT, Device, SecHub

from thinghub.auth.aliyun_device import build_credentials

ADMINISTRATIVE_ACTION = 0x98


class PahoDevice:
    """One connection of a device. ``connect()`` returns (reason code, session present);
    ``closed`` is set when the hub ends the connection (``disconnect_reason`` says how)."""

    def __init__(
        self, hub: SecHub, device: Device, *, version: int = 5, persistent: bool = False
    ) -> None:
        self.hub = hub
        self.device = device
        self.version = version
        self.persistent = persistent
        client_id, username, password = build_credentials(
            device.product_key, device.name, device.secret
        )
        if version == 5:
            self.client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
            )
        else:
            self.client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=mqtt.MQTTv311,
                clean_session=not persistent,
            )
        self.client.username_pw_set(username, password)
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connected = threading.Event()
        self.closed = threading.Event()
        self.acked = threading.Event()
        self.connack: tuple[int, bool] | None = None
        self.disconnect_reason: int | None = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, m.payload))
        self.client.on_subscribe = lambda *_a: self.acked.set()
        self.pubacks: dict[int, int] = {}
        self.puback = threading.Condition()
        self.client.on_publish = self._on_publish

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        self.connack = (reason.value, bool(flags.session_present))
        self.connected.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self.puback:
            self.pubacks[mid] = reason.value
            self.puback.notify_all()

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1; the PUBACK's reason code (0 on 3.1.1)."""
        mid = self.client.publish(topic, payload, qos=1).mid
        with self.puback:
            assert self.puback.wait_for(lambda: mid in self.pubacks, TIMEOUT), "no PUBACK"
            return self.pubacks[mid]

    def _on_disconnect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.disconnect_reason = reason.value
        # No automatic reconnect: a test signs in again explicitly.
        client.disconnect()
        self.closed.set()

    def connect(self) -> tuple[int, bool]:
        properties = None
        if self.version == 5:
            properties = Properties(PacketTypes.CONNECT)
            if self.persistent:
                properties.SessionExpiryInterval = 3600
        self.client.connect(
            self.hub.host,
            self.hub.mqtt_port,
            clean_start=not self.persistent
            if self.version == 5
            else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT), "no CONNACK"
        assert self.connack is not None
        return self.connack

    def subscribe(self, topic_filter: str) -> None:
        self.acked.clear()
        self.client.subscribe(topic_filter, qos=1)
        assert self.acked.wait(TIMEOUT), "no SUBACK"

    def next_message(self, timeout: float = TIMEOUT) -> tuple[str, bytes]:
        return self.messages.get(timeout=timeout)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def thinghub_cli(data_dir: Path, *args: str) -> Any:
    """``thinghub ARGS --data-dir D --json`` in its own process, as an operator would run it
    beside the running hub."""
    done = subprocess.run(
        [str(ROOT / ".venv/bin/thinghub"), *args, "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout) if done.stdout.strip() else None


def api(hub: SecHub, request: RpcRequest) -> dict[str, Any]:
    """An Alibaba API call with the root key (aliyun-python-sdk-core, signature V1)."""
    request.set_endpoint(f"{hub.host}:{hub.http_port}")
    request.set_protocol_type("http")
    client = AcsClient(KEY_ID, SECRET, "cn-shanghai", auto_retry=False)
    answer: dict[str, Any] = json.loads(client.do_action_with_exception(request))
    assert answer.get("Success", True), answer
    return answer


def pub(hub: SecHub, device: Device, payload: bytes) -> None:
    """Pub at QoS 1 to the device's ``/user/get`` topic."""
    request = PubRequest()
    request.set_ProductKey(device.product_key)
    request.set_TopicFullName(device.topic("user/get"))
    request.set_MessageContent(base64.b64encode(payload).decode())
    request.set_Qos(1)
    api(hub, request)
