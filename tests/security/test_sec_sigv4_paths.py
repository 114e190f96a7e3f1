"""A SigV4 signature binds the path that is routed: dot and empty segments are refused.

botocore signs the path with ``.``/``..`` and empty segments removed (its
``normalize_url_path``); a hub that verified that form but routed the literal path let a
request signed for ``POST /topics/status?qos=1&retain=true`` be sent to
``/topics/cmd/reboot/../../status`` (or ``/topics/./status``, ``/topics//status`` ...) and
publish, retained, to that literal topic: the signature check passed and a subscriber got a
message nobody signed for. Likewise a signature for ``GET /retainedMessage`` (listing, which
shows no payloads) read the payload of ``secret/..`` at ``/retainedMessage/secret/..``.

Each attack here takes a request signed by botocore's own ``SigV4Auth`` for one path and sends
it, byte for byte, to another path with ``http.client`` (which sends the target as given), over
a keep-alive connection (the fast path, ``thinghub/http/fastpath.py``, where it takes the
request) and with ``Connection: close`` (aiohttp). The hub must answer 400
``InvalidRequestException`` in the iot-data error shape (``thinghub/http/aws/errors.py``) and
publish nothing: a subscriber to ``#`` sees only the sentinel published after the attacks.
Topics with ``.`` and ``..`` *levels* are legal MQTT topic names, and boto3 sends them as one
``%2F``-encoded segment: they still work. A topic that is exactly ``.`` or ``..`` cannot be
signed by botocore (``/topics/..`` is signed as ``/``): boto3 gets the same 400.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import paho.mqtt.client as mqtt
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

pytestmark = pytest.mark.thinghub_only

ROOT = Path(__file__).resolve().parents[2]
KEY_ID, SECRET = "AKIDSIGV4PATHS000000", "sigv4-paths-secret-0123456789abcdef"
READY = re.compile(r"ready mqtt=[\d.]+:(\d+) http=[\d.]+:(\d+)")
TIMEOUT = 10.0


class Hub:
    """``thinghub serve`` on loopback ports, anonymous MQTT clients in the root account (the
    root access key's topic space)."""

    def __init__(self, data_dir: Path) -> None:
        env = {
            **os.environ,
            "THINGHUB_MQTT_ALLOW_ANONYMOUS": "true",
            "THINGHUB_ROOT_ACCESS_KEY_ID": KEY_ID,
            "THINGHUB_ROOT_ACCESS_KEY_SECRET": SECRET,
        }
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/thinghub"), "serve", "--mqtt-port", "0", "--http-port", "0",
             "--host", "127.0.0.1", "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        self.log: list[str] = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.ready.wait(30):
            self.proc.kill()
            self.proc.wait()
            pytest.fail("the hub did not start:\n" + "".join(self.log))
        match = READY.search("".join(self.log))
        assert match is not None
        self.mqtt_port, self.http_port = int(match.group(1)), int(match.group(2))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)
            if READY.search(line):
                self.ready.set()

    def stop(self) -> None:
        self.proc.terminate()
        code = self.proc.wait(15)
        self.reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        assert code == 0, "".join(self.log[-30:])

    def boto3(self) -> Any:
        return boto3.client(
            "iot-data",
            endpoint_url=f"http://127.0.0.1:{self.http_port}",
            region_name="us-east-1",
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
        )

    def signed_headers(self, method: str, target: str, body: bytes = b"") -> dict[str, str]:
        """The headers botocore's SigV4Auth adds to ``method target`` (as boto3 signs)."""
        url = f"http://127.0.0.1:{self.http_port}{target}"
        request = AWSRequest(method=method, url=url, data=body)
        request.headers["Host"] = f"127.0.0.1:{self.http_port}"
        SigV4Auth(Credentials(KEY_ID, SECRET), "iotdata", "us-east-1").add_auth(request)
        return dict(request.headers.items())

    def send(
        self, method: str, target: str, headers: dict[str, str], body: bytes, *, close: bool
    ) -> Answer:
        """``method target`` exactly as given (http.client does not resolve dot segments)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=TIMEOUT)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            if close:  # not on the fast path's plain shape: aiohttp serves it
                conn.putheader("Connection", "close")
            conn.endheaders(body)
            response = conn.getresponse()
            return Answer(response.status, response.getheader("x-amzn-ErrorType"), response.read())
        finally:
            conn.close()


@dataclass
class Answer:
    status: int
    error_type: str | None
    body: bytes


class Subscriber:
    """A paho MQTT 5 client subscribed to ``#``, recording (topic, payload) in order."""

    def __init__(self, hub: Hub) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )  # fmt: skip
        self.received: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()
        subscribed = threading.Event()

        def on_message(_c: Any, _u: Any, message: Any) -> None:
            with self.cond:
                self.received.append((message.topic, message.payload))
                self.cond.notify_all()

        self.client.on_message = on_message
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect("127.0.0.1", hub.mqtt_port)
        self.client.loop_start()
        # Retain Handling 2 (MQTT 5 §3.8.3.1): no retained messages of earlier tests.
        self.client.subscribe(("#", SubscribeOptions(qos=1, retainHandling=2)))
        assert subscribed.wait(TIMEOUT), "no SUBACK"

    def wait_for(self, topic: str) -> list[tuple[str, bytes]]:
        """Everything received up to and including the first message on ``topic``."""
        with self.cond:
            assert self.cond.wait_for(lambda: any(t == topic for t, _ in self.received), TIMEOUT), (
                f"nothing on {topic!r}; got {self.received}"
            )
            return list(self.received)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    h = Hub(tmp_path_factory.mktemp("sigv4-paths") / "data")
    yield h
    h.stop()


@pytest.fixture
def watcher(hub: Hub) -> Iterator[Subscriber]:
    s = Subscriber(hub)
    yield s
    s.stop()


def _refused(answer: Answer) -> None:
    """400 InvalidRequestException in the shape botocore parses (errors.py)."""
    assert (answer.status, answer.error_type) == (400, "InvalidRequestException"), answer
    body = json.loads(answer.body)
    assert set(body) == {"message", "traceId"} and "not canonical" in body["message"]


def _sentinel(hub: Hub, watcher: Subscriber) -> list[tuple[str, bytes]]:
    """Publish a sentinel with boto3 and return all the watcher got up to it: the hub answers
    a QoS 1 publish after queuing it to the subscriber's session, in order, so anything an
    earlier request published arrived before the sentinel."""
    topic = f"sentinel/{uuid.uuid4().hex[:8]}"
    hub.boto3().publish(topic=topic, qos=1, payload=b"sentinel")
    return watcher.wait_for(topic)


# Each: sent to this path, with a signature for /topics/status (botocore resolves it to that).
REPLAYED_PUBLISH_PATHS = [
    "/topics/cmd/reboot/../../status",
    "/topics/./status",
    "/topics/evil/../status",
    "/topics/status/.",
    "/topics//status",
    "/topics/status/x/..",
    # Percent-encoded dot segments (RFC 3986 §6.2.2.2: the same as "..").
    "/topics/cmd/reboot/%2e%2e/%2E%2E/status",
    "/topics/cmd/.%2e/status",
]


@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "aiohttp"])
def test_publish_signed_for_one_topic_cannot_be_sent_to_another(
    hub: Hub, watcher: Subscriber, close: bool
) -> None:
    query = "?qos=1&retain=true"
    body = b'{"cmd":"reboot"}'
    # The signature is good for its own path.
    legit = hub.send("POST", "/topics/status" + query, _signed(hub, query, body), body, close=close)
    assert legit.status == 200, legit
    for path in REPLAYED_PUBLISH_PATHS:
        answer = hub.send("POST", path + query, _signed(hub, query, body), body, close=close)
        _refused(answer)
    got = _sentinel(hub, watcher)
    assert [topic for topic, _ in got if not topic.startswith("sentinel/")] == ["status"]
    # Nothing was retained on the literal topics either.
    retained = {m["topic"] for m in hub.boto3().list_retained_messages()["retainedTopics"]}
    literal = {path[len("/topics/") :] for path in REPLAYED_PUBLISH_PATHS}
    assert retained & literal == set()


def _signed(hub: Hub, query: str, body: bytes) -> dict[str, str]:
    return hub.signed_headers("POST", "/topics/status" + query, body)


@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "aiohttp"])
def test_list_signature_cannot_read_a_retained_payload(hub: Hub, close: bool) -> None:
    # A device retains a secret on "secret/.." (a legal MQTT topic: levels are literal).
    device = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    device.connect("127.0.0.1", hub.mqtt_port)
    device.loop_start()
    try:
        device.publish("secret/..", b"the-secret", qos=1, retain=True).wait_for_publish(TIMEOUT)
    finally:
        device.disconnect()
        device.loop_stop()
    # A signature for ListRetainedMessages (GET /retainedMessage: topics and sizes, no
    # payloads), sent to /retainedMessage/secret/.. (botocore resolves it to the same).
    headers = hub.signed_headers("GET", "/retainedMessage")
    answer = hub.send("GET", "/retainedMessage/secret/..", headers, b"", close=close)
    _refused(answer)
    assert base64.b64encode(b"the-secret") not in answer.body
    # The owner reads it with boto3 as usual: "secret/.." is one %2F-encoded segment.
    message = hub.boto3().get_retained_message(topic="secret/..")
    assert message["payload"] == b"the-secret"


# Legal MQTT topic names with "." / ".." / empty levels; boto3 encodes each as one segment.
DOT_LEVEL_TOPICS = ["a/../b", "../a", "a/..", "./a", "a/./b", "...", "a//b", "/a", "a/"]


def test_boto3_publishes_to_dot_level_topics(hub: Hub, watcher: Subscriber) -> None:
    client = hub.boto3()
    for topic in DOT_LEVEL_TOPICS:
        client.publish(topic=topic, qos=1, payload=topic.encode())
    got = _sentinel(hub, watcher)
    assert got[: len(DOT_LEVEL_TOPICS)] == [(t, t.encode()) for t in DOT_LEVEL_TOPICS]
    client.publish(topic="a/../b", qos=1, retain=True, payload=b"kept")
    assert client.get_retained_message(topic="a/../b")["payload"] == b"kept"


@pytest.mark.parametrize("topic", [".", ".."])
def test_boto3_cannot_sign_a_dot_topic_and_is_told_so(
    hub: Hub, watcher: Subscriber, topic: str
) -> None:
    # botocore signs /topics/.. as "/" (and /topics/. as "/topics"): the signature does not
    # cover the topic, so the hub refuses the path instead of publishing to it.
    client = hub.boto3()
    with pytest.raises(ClientError) as refused:
        client.publish(topic=topic, qos=1, payload=b"x")
    error = refused.value.response
    assert error["Error"]["Code"] == "InvalidRequestException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert isinstance(refused.value, client.exceptions.InvalidRequestException)
    got = _sentinel(hub, watcher)
    assert all(t.startswith("sentinel/") for t, _ in got), got
