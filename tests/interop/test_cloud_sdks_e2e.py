"""End to end through `thinghub serve`, as a user meets it: the demo device made at first start
signs in with the Alibaba scheme, and the official SDKs publish to it through the hub's HTTP
port with the root access key given in the environment."""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import paho.mqtt.client as mqtt
import pytest
from aliyunsdkcore.client import AcsClient
from aliyunsdkiot.request.v20180120.PubRequest import PubRequest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from thinghub.cli import main

pytestmark = pytest.mark.thinghub_only
ROOT = Path(__file__).resolve().parents[2]
KEY_ID, SECRET = "LTAIe2eTestKey000000000", "e2e-secret-0123456789abcdefghij"
TIMEOUT = 10


@dataclass
class Served:
    mqtt_port: int
    http_port: int
    data_dir: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("e2e")
    env = {
        **os.environ,
        "THINGHUB_ROOT_ACCESS_KEY_ID": KEY_ID,
        "THINGHUB_ROOT_ACCESS_KEY_SECRET": SECRET,
    }
    env.pop("THINGHUB_MQTT_ALLOW_ANONYMOUS", None)
    hub = subprocess.Popen(
        [str(ROOT / ".venv/bin/thinghub"), "serve", "--mqtt-port", "0", "--http-port", "0",
         "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    assert hub.stdout is not None
    ports = None
    for line in hub.stdout:
        if m := re.match(r"ready mqtt=[\d.]+:(\d+) http=[\d.]+:(\d+)", line):
            ports = int(m.group(1)), int(m.group(2))
            break
    assert ports, "the hub did not start"
    try:
        yield Served(ports[0], ports[1], data_dir)
    finally:
        hub.terminate()
        assert hub.wait(10) == 0
        hub.stdout.close()


@pytest.fixture
def device(served: Served) -> Iterator[tuple[str, str, queue.Queue[Any]]]:
    """The demo device, signed in and subscribed to its /user/get topic."""
    out = CliRunner().invoke(
        main, ["product", "list", "--data-dir", str(served.data_dir), "--json"]
    )
    pk = json.loads(out.output)[0]["product_key"]
    out = CliRunner().invoke(
        main, ["device", "show", pk, "demo-device", "--data-dir", str(served.data_dir), "--json"]
    )
    creds = json.loads(out.output)["mqtt"]
    inbox: queue.Queue[Any] = queue.Queue()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=creds["client_id"], protocol=mqtt.MQTTv5
    )
    client.username_pw_set(creds["username"], creds["password"])
    client.on_connect = lambda _c, _u, _f, rc, _p=None: inbox.put(("connack", rc))
    client.on_subscribe = lambda _c, _u, _m, codes, _p=None: inbox.put(("suback", codes))
    client.on_message = lambda _c, _u, message: inbox.put(message)
    client.connect("127.0.0.1", served.mqtt_port)
    client.loop_start()
    try:
        kind, rc = inbox.get(timeout=TIMEOUT)
        assert kind == "connack" and not rc.is_failure
        client.subscribe(f"/{pk}/demo-device/user/get", qos=1)
        kind, codes = inbox.get(timeout=TIMEOUT)
        assert kind == "suback" and not codes[0].is_failure
        yield pk, f"/{pk}/demo-device/user/get", inbox
    finally:
        client.disconnect()
        client.loop_stop()


def test_alibaba_pub_reaches_the_demo_device(
    served: Served, device: tuple[str, str, queue.Queue[Any]]
) -> None:
    pk, topic, inbox = device
    request = PubRequest()
    request.set_endpoint(f"127.0.0.1:{served.http_port}")
    request.set_protocol_type("http")
    request.set_ProductKey(pk)
    request.set_TopicFullName(topic)
    request.set_MessageContent(base64.b64encode(b"hello from Pub").decode())
    request.set_Qos(1)
    answer = json.loads(AcsClient(KEY_ID, SECRET, "cn-shanghai").do_action_with_exception(request))
    assert answer["Success"] is True and isinstance(answer["MessageId"], int)
    message = inbox.get(timeout=TIMEOUT)
    assert (message.topic, message.payload, message.qos) == (topic, b"hello from Pub", 1)


def test_boto3_publish_reaches_the_demo_device(
    served: Served, device: tuple[str, str, queue.Queue[Any]]
) -> None:
    _pk, topic, inbox = device
    client = boto3.client(
        "iot-data",
        endpoint_url=f"http://127.0.0.1:{served.http_port}",
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
    )
    client.publish(topic=topic, qos=1, payload=b"hello from boto3", contentType="text/plain")
    message = inbox.get(timeout=TIMEOUT)
    assert (message.topic, message.payload) == (topic, b"hello from boto3")
    assert message.properties.ContentType == "text/plain"


def test_wrong_secret_is_refused(served: Served) -> None:
    client = boto3.client(
        "iot-data",
        endpoint_url=f"http://127.0.0.1:{served.http_port}",
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key="not-the-secret",
    )
    with pytest.raises(client.exceptions.ForbiddenException):
        client.publish(topic="a/b", qos=0, payload=b"x")
