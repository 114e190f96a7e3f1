"""The HTTP fast path (thinghub/http/fastpath.py) on real sockets, in front of a whole hub.

A hub (``thinghub.app.Hub``, as ``thinghub serve`` runs it) runs on its own event loop thread,
once on asyncio's loop and once on uvloop's (``transport.set_protocol`` is each loop's own
code). Requests are signed as the SDKs sign them (botocore's SigV4Auth; the V1 signer of
bench/aliyun_pub.py, itself checked against aliyunsdkcore) and written on raw sockets, so
that every framing case is exact: keep-alive, pipelining, a request a byte at a time,
chunked bodies, ``Expect: 100-continue``, large heads and bodies, ``Connection: close``,
garbage. Whatever the fast path does not serve itself, aiohttp must serve on the same
connection as if it had had it from the start; what it serves must be answered as aiohttp
answers. The official SDKs (boto3, aliyun-python-sdk-core) are pointed at it too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import boto3
import paho.mqtt.client as paho
import pytest
from aiohttp import web
from aliyunsdkcore.auth.composer.rpc_signature_composer import (  # type: ignore[import-untyped]
    get_signed_url,
)
from aliyunsdkcore.client import AcsClient
from aliyunsdkiot.request.v20180120.PubRequest import PubRequest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from paho.mqtt.enums import CallbackAPIVersion

from thinghub.app import Hub
from thinghub.config import load_settings
from thinghub.http import fastpath
from thinghub.http.fastpath import FAST_CONNECTIONS, parse_head, render_response

T = TypeVar("T")
KEY_ID = "LTAIFASTPATH0001"
SECRET = "fastpathsecretfastpathsecret"
TIMEOUT = 5.0


@dataclass
class Running:
    hub: Hub
    loop: asyncio.AbstractEventLoop
    http_port: int
    mqtt_port: int

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT * 2)

    def fast_connections(self) -> int:
        runner = self.hub._http_runner
        assert runner is not None

        async def count() -> int:
            return len(runner.app[FAST_CONNECTIONS])

        return self.run(count())


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def hub(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    data = tmp_path_factory.mktemp("fasthub")
    settings = load_settings(
        None,
        overrides={
            "data_dir": Path(data),
            "mqtt.host": "127.0.0.1",
            "http.host": "127.0.0.1",
            "mqtt.port": 0,
            "http.port": 0,
            "mqtt.allow_anonymous": True,
            "log_level": "warning",
        },
    )
    environ = {"THINGHUB_ROOT_ACCESS_KEY_ID": KEY_ID, "THINGHUB_ROOT_ACCESS_KEY_SECRET": SECRET}
    thub = Hub(settings, environ=environ)
    loop = _new_loop(request.param)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    endpoints = asyncio.run_coroutine_threadsafe(thub.start(), loop).result(20)
    running = Running(thub, loop, endpoints.http[1], endpoints.mqtt[1])
    yield running
    asyncio.run_coroutine_threadsafe(thub.stop(), loop).result(20)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


# --------------------------------------------------------------------------- helpers


class Listener:
    """An anonymous MQTT 5 subscriber (paho) that queues what it receives."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        subscribed = threading.Event()
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(TIMEOUT)

    def expect(self) -> tuple[str, bytes]:
        return self.messages.get(timeout=TIMEOUT)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def listener(hub: Running) -> Iterator[Callable[[str], Listener]]:
    made: list[Listener] = []

    def make(topic: str) -> Listener:
        made.append(Listener(hub.mqtt_port, topic))
        return made[-1]

    yield make
    for item in made:
        item.close()


def publish(hub: Running, topic: str, payload: bytes) -> bytes:
    """AWS Publish of ``payload`` at QoS 0, signed by botocore's SigV4Auth as boto3 signs
    it, written as urllib3 writes it (the whole request's bytes)."""
    netloc = f"127.0.0.1:{hub.http_port}"
    path = "/topics/" + quote(topic, safe="")
    request = AWSRequest(method="POST", url=f"http://{netloc}{path}", data=payload)
    request.headers["Host"] = netloc
    SigV4Auth(Credentials(KEY_ID, SECRET), "iotdata", "us-east-1").add_auth(request)
    lines = [f"POST {path} HTTP/1.1", *(f"{k}: {v}" for k, v in request.headers.items())]
    lines.append(f"Content-Length: {len(payload)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def aliyun_call(hub: Running, action: str, params: list[tuple[str, str]]) -> bytes:
    """An RPC call signed by aliyun-python-sdk-core's own V1 composer, everything in the
    query, as the SDK sends it (a fresh nonce each time)."""
    query = dict(params) | {
        "Version": "2018-01-20",
        "Action": action,
        "Format": "JSON",
        "RegionId": "cn-shanghai",
    }
    url, _ = get_signed_url(query, KEY_ID, SECRET, "JSON", "POST", {})
    lines = [
        f"POST {url} HTTP/1.1",
        f"Host: 127.0.0.1:{hub.http_port}",
        "Accept-Encoding: identity",
        "Accept: */*",
        "Connection: keep-alive",
        f"x-acs-action: {action}",
        "x-acs-version: 2018-01-20",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class Conn:
    """One raw HTTP/1.1 connection: write bytes, read replies (Content-Length framed)."""

    def __init__(self, hub: Running) -> None:
        self.sock = socket.create_connection(("127.0.0.1", hub.http_port), timeout=TIMEOUT)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        self.buffer += chunk

    def reply(self) -> Reply:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Reply(status, headers, body)

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def conn(hub: Running) -> Iterator[Callable[[], Conn]]:
    made: list[Conn] = []

    def make() -> Conn:
        made.append(Conn(hub))
        return made[-1]

    yield make
    for item in made:
        item.close()


def _unique(prefix: str) -> str:
    return f"{prefix}/{os.urandom(4).hex()}"


def _with_header(request: bytes, line: bytes) -> bytes:
    head, _, body = request.partition(b"\r\n\r\n")
    return head + b"\r\n" + line + b"\r\n\r\n" + body


def _chunked(request: bytes) -> bytes:
    head, _, body = request.partition(b"\r\n\r\n")
    lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"content-length:")]
    half = len(body) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:half], body[half:]) if c)
    return (
        b"\r\n".join([*lines, b"Transfer-Encoding: chunked"]) + b"\r\n\r\n" + chunks + b"0\r\n\r\n"
    )


# --------------------------------------------------------------------------- the SDKs


def test_boto3_and_aliyun_sdk_publish_through_the_fast_path(
    hub: Running, listener: Callable[[str], Listener]
) -> None:
    topic = _unique("fast/sdk")
    sub = listener(topic)
    iot = boto3.client(
        "iot-data",
        endpoint_url=f"http://127.0.0.1:{hub.http_port}",
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
    )
    for qos in (0, 1):
        answer = iot.publish(topic=topic, qos=qos, payload=b"from boto3 %d" % qos)
        assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert sub.expect() == (topic, b"from boto3 %d" % qos)
    # boto3 keeps its connection: it is still served by the fast path, not handed over.
    assert hub.fast_connections() >= 1
    iot.close()

    client = AcsClient(KEY_ID, SECRET, "cn-shanghai")
    request = PubRequest()
    request.set_endpoint(f"127.0.0.1:{hub.http_port}")
    request.set_protocol_type("http")
    request.set_ProductKey("a1NoSuchPrd")
    request.set_TopicFullName("/a1NoSuchPrd/dev/user/get")
    request.set_MessageContent(base64.b64encode(b"x").decode())
    answer = json.loads(client.do_action_with_exception(request))
    # The business error of an unknown product: signed, verified, answered by the action.
    assert answer["Success"] is False and answer["Code"] == "iot.prod.NotExistedProduct", answer


# --------------------------------------------------------------------------- framing


def test_keep_alive_and_pipelining_answer_in_order(
    hub: Running, conn: Callable[[], Conn], listener: Callable[[str], Listener]
) -> None:
    topic = _unique("fast/pipe")
    sub = listener(topic)
    c = conn()
    c.send(b"".join(publish(hub, topic, b"m%d" % i) for i in range(3)))
    for _ in range(3):
        reply = c.reply()
        assert reply.status == 200 and b'"message":"OK"' in reply.body
    c.send(publish(hub, topic, b"m3"))
    assert c.reply().status == 200
    assert hub.fast_connections() >= 1  # still the fast path's: nothing was handed over
    assert [sub.expect()[1] for _ in range(4)] == [b"m0", b"m1", b"m2", b"m3"]


def test_a_request_a_byte_at_a_time(
    hub: Running, conn: Callable[[], Conn], listener: Callable[[str], Listener]
) -> None:
    topic = _unique("fast/bytes")
    sub = listener(topic)
    c = conn()
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for byte in publish(hub, topic, b"slow"):
        c.send(bytes([byte]))
    assert c.reply().status == 200
    assert sub.expect() == (topic, b"slow")


def test_chunked_body_is_handed_to_aiohttp_on_the_same_connection(
    hub: Running, conn: Callable[[], Conn], listener: Callable[[str], Listener]
) -> None:
    topic = _unique("fast/chunked")
    sub = listener(topic)
    c = conn()
    c.send(publish(hub, topic, b"before"))
    assert c.reply().status == 200
    c.send(_chunked(publish(hub, topic, b"chunked body")))
    assert c.reply().status == 200
    c.send(publish(hub, topic, b"after"))  # aiohttp's from now on
    assert c.reply().status == 200
    assert [sub.expect()[1] for _ in range(3)] == [b"before", b"chunked body", b"after"]


def test_expect_100_continue(
    hub: Running, conn: Callable[[], Conn], listener: Callable[[str], Listener]
) -> None:
    topic = _unique("fast/expect")
    sub = listener(topic)
    request = _with_header(publish(hub, topic, b"continued"), b"Expect: 100-continue")
    head, _, body = request.partition(b"\r\n\r\n")
    c = conn()
    c.send(head + b"\r\n\r\n")
    interim = c.reply()
    assert interim.status == 100
    c.send(body)
    assert c.reply().status == 200
    assert sub.expect() == (topic, b"continued")


def test_size_limits(
    hub: Running, conn: Callable[[], Conn], listener: Callable[[str], Listener]
) -> None:
    topic = _unique("fast/large")
    sub = listener(topic)
    c = conn()
    # Above the fast path's body limit, within AWS's 128 KB: aiohttp serves it.
    large = b"L" * (fastpath.MAX_BODY + 1000)
    c.send(publish(hub, topic, large))
    assert c.reply().status == 200
    assert sub.expect() == (topic, large)
    # Above AWS's limit: its own answer, from the aiohttp path.
    c2 = conn()
    c2.send(publish(hub, topic, b"X" * (128 * 1024 + 1)))
    reply = c2.reply()
    assert reply.status == 413
    assert reply.headers["x-amzn-errortype"] == "RequestEntityTooLargeException"
    # A head larger than the fast path takes: aiohttp reads it, with its own limits.
    pad = b"\r\n".join(b"X-Pad-%d: %s" % (i, b"p" * 6000) for i in range(3))
    c3 = conn()
    c3.send(_with_header(publish(hub, topic, b"big head"), pad))
    assert c3.reply().status == 200
    assert sub.expect() == (topic, b"big head")
    c4 = conn()
    c4.send(_with_header(publish(hub, topic, b"x"), b"X-Pad: " + b"p" * 9000))
    assert c4.reply().status == 400  # aiohttp's header-field limit (8190 bytes)


def test_connection_close_and_http_1_0_go_to_aiohttp(
    hub: Running, conn: Callable[[], Conn]
) -> None:
    c = conn()
    c.send(_with_header(publish(hub, _unique("fast/close"), b"x"), b"Connection: close"))
    reply = c.reply()
    assert reply.status == 200 and reply.headers.get("connection") == "close"
    assert c.closed_by_peer()
    c2 = conn()
    c2.send(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
    assert c2.reply().status == 200


def test_what_aiohttp_refuses_is_refused(hub: Running, conn: Callable[[], Conn]) -> None:
    topic = _unique("fast/refused")
    for request in [
        b"POST /topics/x HTTP/1.1\r\nBad Header\r\n\r\n",
        b"NOT-HTTP\r\n\r\n",
        _with_header(publish(hub, topic, b"x"), b"Host: twice"),  # a duplicate singleton
        _with_header(publish(hub, topic, b"x"), b"\r\n".join([b"X-A: 1"] * 130)),  # > 128
    ]:
        c = conn()
        c.send(request)
        assert c.reply().status == 400, request[:60]


def test_malformed_requests_are_not_logged_as_errors(
    hub: Running, conn: Callable[[], Conn], caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage from a client gets its 400 and one DEBUG line, not an ERROR with a traceback
    (aiohttp's default), which anyone could use to flood the hub's log."""
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    for request in [b"NOT-HTTP\r\n\r\n", b"POST /topics/x HTTP/1.1\r\nBad Header\r\n\r\n"]:
        c = conn()
        c.send(request)
        assert c.reply().status == 400
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert records, "nothing logged"
    assert all(r.levelno == logging.DEBUG and r.exc_info is None for r in records), records
    assert all("bad HTTP request refused (400)" in r.getMessage() for r in records)


def test_other_routes_on_a_fast_connection(hub: Running, conn: Callable[[], Conn]) -> None:
    c = conn()
    c.send(publish(hub, _unique("fast/mix"), b"x"))
    assert c.reply().status == 200
    c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = c.reply()
    assert reply.status == 200 and json.loads(reply.body) == {"status": "ok"}
    # Dot segments are left to aiohttp's URL handling.
    c2 = conn()
    c2.send(b"POST /topics/../healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert c2.reply().status in (400, 403, 404, 405)


def test_answers_match_aiohttps(hub: Running, conn: Callable[[], Conn]) -> None:
    """The same calls answered by the fast path and by aiohttp (a non-ASCII header value
    hands a request over): the same status, headers and body, but for Date and the ids."""
    cases = [
        publish(hub, _unique("fast/same"), b"x"),
        publish(hub, "$aws/reserved", b"x"),  # an AWS error answer
        aliyun_call(hub, "Pub", [("ProductKey", "a1NoSuchPrd"), ("TopicFullName", "/a/b")]),
        aliyun_call(hub, "NoSuchAction", []),  # a gateway error
    ]
    for request in cases:
        fast = conn()
        fast.send(request)
        ours = fast.reply()
        slow = conn()
        # A fresh signature: the Alibaba gateway refuses a replayed nonce.
        again = request if request.startswith(b"POST /topics") else _resign(hub, request)
        slow.send(_with_header(again, "X-Note: caf\u00e9".encode()))
        theirs = slow.reply()
        assert ours.status == theirs.status
        drop = {"date", "x-amzn-requestid"}
        assert {k: v for k, v in ours.headers.items() if k not in drop} == {
            k: v for k, v in theirs.headers.items() if k not in drop
        }
        assert _without_ids(ours.body) == _without_ids(theirs.body)


def _resign(hub: Running, request: bytes) -> bytes:
    target = request.split(b" ", 2)[1].decode()
    query = dict(part.split("=", 1) for part in target[2:].split("&"))
    business = [(k, unquote(v)) for k, v in query.items() if k in ("ProductKey", "TopicFullName")]
    return aliyun_call(hub, query["Action"], business)


def _without_ids(body: bytes) -> Any:
    value = json.loads(body)
    for key in ("RequestId", "traceId", "HostId"):
        value.pop(key, None)
    return value


def test_idle_connections_close_after_the_keep_alive_timeout(
    hub: Running, conn: Callable[[], Conn], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fastpath, "KEEPALIVE_TIMEOUT", 0.3)
    c = conn()
    c.send(publish(hub, _unique("fast/idle"), b"x"))
    assert c.reply().status == 200
    c.sock.settimeout(5.0)
    started = time.monotonic()
    assert c.closed_by_peer()
    assert time.monotonic() - started < 4.0


# --------------------------------------------------------------------------- units


def test_parse_head_takes_only_the_plain_shape() -> None:
    good = b"POST /topics/a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-Empty:\r\nX-T: a\tb "
    parsed = parse_head(good)
    assert parsed is not None
    method, target, headers, length = parsed
    assert (method, target, length) == ("POST", "/topics/a", 3)
    assert headers["x-t"] == "a\tb" and headers["X-Empty"] == ""
    assert parse_head(b"GET / HTTP/1.1") is not None
    for bad in [
        b"POST /topics/a HTTP/1.0\r\nHost: h",
        b"POST  /topics/a HTTP/1.1",
        b"POST http://h/topics/a HTTP/1.1",
        b"POST /topics/a HTTP/1.1\r\nHost : h",
        b"POST /topics/a HTTP/1.1\r\n folded: h",
        b"POST /topics/a HTTP/1.1\r\nX: caf\xc3\xa9",
        b"POST /topics/a HTTP/1.1\r\nX: a\x00b",
        b"POST /topics/a HTTP/1.1\r\nTransfer-Encoding: chunked",
        b"POST /topics/a HTTP/1.1\r\nContent-Encoding: gzip",
        b"POST /topics/a HTTP/1.1\r\nExpect: 100-continue",
        b"GET /mqtt HTTP/1.1\r\nUpgrade: websocket",
        b"POST /topics/a HTTP/1.1\r\nConnection: close",
        b"POST /topics/a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1",
        b"POST /topics/a HTTP/1.1\r\nContent-Length: -1",
        b"POST /topics/a HTTP/1.1\r\nContent-Length: %d" % (fastpath.MAX_BODY + 1),
        b"POST /topics/a HTTP/1.1\r\nHost: a\r\nhost: b",
        b'POST /topics/a"b HTTP/1.1',
        b"POST /topics/a{b} HTTP/1.1",
        b"POST /topics/a HTTP/1.1\r\n" + b"\r\n".join(b"X-%d: 1" % i for i in range(101)),
    ]:
        assert parse_head(bad) is None, bad


def test_routes_leave_unusual_paths_to_aiohttp() -> None:
    routes = fastpath.FastRoutes()

    async def handler(*_: Any) -> web.StreamResponse:
        return web.Response()

    routes.add("POST", "/topics/", handler, prefix=True)
    routes.add("GET", "/", handler)
    assert routes.match("POST", "/topics/a%2Fb?qos=1") is handler
    assert routes.match("GET", "/?Action=Pub") is handler
    for method, target in [
        ("GET", "/topics/a"),
        ("POST", "/"),
        ("POST", "/topics/../healthz"),
        ("POST", "/topics/%2e%2e/x"),
        ("POST", "/topics/a#b"),
        ("GET", "/x?Action=Pub"),
    ]:
        assert routes.match(method, target) is None, target


def test_render_response_is_what_aiohttp_writes() -> None:
    response = web.Response(status=403, body=b'{"a":1}', headers={"X-Id": "1"})
    response.headers["Content-Type"] = "application/json"
    data = render_response(response)
    assert data is not None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 403 Forbidden" and body == b'{"a":1}'
    assert lines[1:3] == ["X-Id: 1", "Content-Type: application/json"]
    assert "Content-Length: 7" in lines and any(x.startswith("Server: ") for x in lines)
    assert render_response(web.StreamResponse()) is None
    closing = web.Response(body=b"x")
    closing.force_close()
    assert render_response(closing) is None
    with pytest.raises(ValueError):
        render_response(web.Response(body=b"x", headers={"X": "a\r\nInjected: 1"}))
