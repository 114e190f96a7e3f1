"""A store past its size limit refuses new QoS 1 work in every dialect, keeps serving QoS 0,
and takes work again once space is freed ("Storage is bounded": "new QoS 1/2 messages
are refused with the protocol's quota error ... rather than accepted and lost").

A real `thinghub serve` with `store.max_size_bytes` of 2 MiB; an offline persistent session
fills it; then each way in is tried with its own client: paho-mqtt v5 (PUBACK 0x97 Quota
exceeded), boto3 `iot-data` Publish and SendDirectMessage (ServiceUnavailableException, 503),
and Alibaba `Pub` through aliyun-python-sdk-core (gateway error ServiceUnavailable, 503)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import paho.mqtt.client as mqtt
import pytest
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkiot.request.v20180120.PubRequest import PubRequest
from botocore.config import Config
from botocore.exceptions import ClientError
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from thinghub.cli import main as cli_main

pytestmark = pytest.mark.thinghub_only

ROOT = Path(__file__).resolve().parents[2]
KEY_ID, SECRET = "LTAIfullStoreKey0000000", "full-store-secret-0123456789abcdef"
READY = re.compile(r"ready mqtt=[\d.]+:(\d+) http=[\d.]+:(\d+)")
TIMEOUT = 30.0
QUOTA_EXCEEDED = 0x97
BODY = b"x" * 8192


class Hub:
    def __init__(self, data_dir: Path) -> None:
        env = {
            **os.environ,
            "THINGHUB_MQTT_ALLOW_ANONYMOUS": "true",
            "THINGHUB_MQTT_MAX_QUEUED_MESSAGES": "100000",
            "THINGHUB_MQTT_MAX_QUEUED_BYTES": str(1 << 30),
            "THINGHUB_STORE_MAX_SIZE_BYTES": str(2 << 20),
            "THINGHUB_ROOT_ACCESS_KEY_ID": KEY_ID,
            "THINGHUB_ROOT_ACCESS_KEY_SECRET": SECRET,
        }
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/thinghub"), "serve", "--mqtt-port", "0", "--http-port", "0",
             "--host", "127.0.0.1", "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.log: list[str] = []
        for line in self.proc.stdout:
            self.log.append(line)
            if m := READY.search(line):
                self.mqtt_port, self.http_port = int(m.group(1)), int(m.group(2))
                break
        else:
            pytest.fail("the hub did not start:\n" + "".join(self.log))
        stdout = self.proc.stdout
        self.reader = threading.Thread(target=lambda: self.log.extend(stdout), daemon=True)
        self.reader.start()

    def stop(self) -> None:
        self.proc.terminate()
        code = self.proc.wait(15)
        self.reader.join(5)  # EOF once the hub is gone
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        assert code == 0, "".join(self.log[-30:])


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(tmp_path / "data")
    yield h
    h.stop()


class V5Client:
    """A paho MQTT 5 client; ``publish`` returns the PUBACK's reason code."""

    def __init__(self, hub: Hub, client_id: str, *, persistent: bool = False) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.acks: dict[int, int] = {}
        self.received: list[bytes] = []
        self.cond = threading.Condition()

        def on_publish(_c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
            with self.cond:
                self.acks[mid] = rc.value
                self.cond.notify_all()

        def on_message(_c: Any, _u: Any, message: Any) -> None:
            with self.cond:
                self.received.append(message.payload)
                self.cond.notify_all()

        self.client.on_publish = on_publish
        self.client.on_message = on_message
        props = Properties(PacketTypes.CONNECT)
        if persistent:
            props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", hub.mqtt_port, clean_start=False, properties=props)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes) -> int:
        mid = self.client.publish(topic, payload, qos=1).mid
        with self.cond:
            assert self.cond.wait_for(lambda: mid in self.acks, TIMEOUT), "no PUBACK"
            return self.acks[mid]

    def subscribe(self, topic_filter: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_a: done.set()
        self.client.subscribe(topic_filter, qos=1)
        assert done.wait(TIMEOUT)

    def wait_received(self, count: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.received) >= count, TIMEOUT), (
                f"{len(self.received)} of {count} received"
            )

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def aws_client(hub: Hub) -> Any:
    return boto3.client(
        "iot-data",
        endpoint_url=f"http://127.0.0.1:{hub.http_port}",
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        config=Config(retries={"max_attempts": 1}),
    )


def aliyun_pub(hub: Hub, qos: int) -> dict[str, Any]:
    products = CliRunner().invoke(
        cli_main, ["product", "list", "--data-dir", str(hub.data_dir), "--json"]
    )
    pk = json.loads(products.output)[0]["product_key"]
    request = PubRequest()
    request.set_endpoint(f"127.0.0.1:{hub.http_port}")
    request.set_protocol_type("http")
    request.set_ProductKey(pk)
    request.set_TopicFullName(f"/{pk}/demo-device/user/get")
    request.set_MessageContent("aGk=")
    request.set_Qos(qos)
    client = AcsClient(KEY_ID, SECRET, "cn-shanghai", auto_retry=False)
    return dict(json.loads(client.do_action_with_exception(request)))


def test_a_full_store_refuses_qos1_everywhere_and_recovers(hub: Hub) -> None:
    keeper = V5Client(hub, "keeper", persistent=True)
    keeper.subscribe("full/#")
    keeper.stop()  # offline: every QoS 1 message to it is stored
    publisher = V5Client(hub, "publisher")
    stored = 0
    while (code := publisher.publish("full/t", BODY)) == 0:
        stored += 1
        assert stored < 2000, "the store never reached its limit"
    assert code == QUOTA_EXCEEDED
    assert stored * len(BODY) >= 1 << 20  # about the 2 MiB limit, not refused early

    # QoS 0 is not stored, so it is still served.
    aws = aws_client(hub)
    aws.publish(topic="full/qos0", qos=0, payload=b"fine")
    # Every QoS 1 way in is refused, with its dialect's error.
    with pytest.raises(ClientError) as refused:
        aws.publish(topic="full/t", qos=1, payload=b"refused")
    assert refused.value.response["Error"]["Code"] == "ServiceUnavailableException"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    direct = V5Client(hub, "direct")
    with pytest.raises(ClientError) as refused:
        aws.send_direct_message(clientId="direct", topic="d", payload=b"x", confirmation=True)
    assert refused.value.response["Error"]["Code"] == "ServiceUnavailableException"
    with pytest.raises(ServerException) as gateway:
        aliyun_pub(hub, qos=1)
    assert (gateway.value.get_error_code(), gateway.value.get_http_status()) == (
        "ServiceUnavailable",
        503,
    )
    assert publisher.publish("full/t", b"still refused") == QUOTA_EXCEEDED

    # The session drains: its messages leave the store, and QoS 1 is taken again.
    back = V5Client(hub, "keeper", persistent=True)
    back.wait_received(stored)
    assert back.received == [BODY] * stored  # nothing refused was stored
    back.stop()
    publisher.client.publish("full/wake", b"", qos=0)  # any commit re-measures the file

    def accepts() -> bool:
        return publisher.publish("full/after", b"taken again") == 0

    assert any(accepts() for _ in range(50)), "the store did not accept work again"
    aws.publish(topic="full/after", qos=1, payload=b"taken again")
    assert aliyun_pub(hub, qos=1)["Success"] is True
    direct.stop()
    publisher.stop()
