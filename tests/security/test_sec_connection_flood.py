"""Connection exhaustion: sockets that never send CONNECT, many connections from one address,
a flood that would take every file descriptor, and HTTP clients that trickle their request.

Each test starts a real ``thinghub serve`` with small bounds (``THINGHUB_MQTT_*`` and
``THINGHUB_HTTP_*``), attacks it over loopback with raw sockets, and checks what the attacker
and an honest client see: the attacker's surplus connections are closed at once (EOF or
reset), the honest client keeps publishing and receiving, ``/healthz`` answers, and the hub
takes new clients again once the attack stops (thinghub/transport/admission.py,
thinghub/http/fastpath.py)."""

from __future__ import annotations

import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scenarios"))
import rawmqtt
from sechub import SecHub

pytestmark = pytest.mark.thinghub_only

TIMEOUT = 10.0


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., SecHub]]:
    hubs: list[SecHub] = []

    def make(nofile: int | None = None, **settings: Any) -> SecHub:
        hub = SecHub(tmp_path / f"data{len(hubs)}", nofile=nofile, **settings)
        hubs.append(hub)
        return hub

    yield make
    codes = [hub.stop() for hub in hubs]
    for hub, code in zip(hubs, codes, strict=True):
        assert code == 0, hub.log()


# --------------------------------------------------------------------------- helpers


def silent_sockets(port: int, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """``count`` connections that never send a byte (the attack)."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


def closed_by_peer(socks: list[socket.socket], deadline_s: float) -> int:
    """How many of ``socks`` the hub closes (EOF or reset) within ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    open_ = list(socks)
    closed = 0
    while open_ and time.monotonic() < deadline:
        still = []
        for s in open_:
            s.settimeout(0.0)
            try:
                data = s.recv(1)
            except BlockingIOError:
                still.append(s)
                continue
            except OSError:
                closed += 1
                continue
            if data == b"":
                closed += 1
            else:
                still.append(s)
        open_ = still
        if open_:
            time.sleep(0.05)
    return closed


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


class BoundClient(rawmqtt.RawClient):
    """A raw MQTT 5 client whose connection comes from ``source`` (any 127.x address)."""

    def __init__(self, port: int, source: str) -> None:
        self.version, self.timeout, self._buf, self.closed = 5, TIMEOUT, b"", False
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0)
        )


def connect(port: int, source: str = "127.0.0.1") -> BoundClient:
    """A new MQTT 5 client from ``source``, past CONNACK 0."""
    c = BoundClient(port, source)
    c.connect(f"flood-{uuid.uuid4().hex[:12]}")
    return c


def refused(port: int, source: str = "127.0.0.1") -> bool:
    """Whether a new connection from ``source`` is closed at once, before any CONNACK."""
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(TIMEOUT)
    s.connect(("127.0.0.1", port))
    try:
        s.sendall(rawmqtt.connect(f"probe-{uuid.uuid4().hex[:8]}", version=5))
        return s.recv(64) == b""
    except OSError:
        return True  # reset
    finally:
        s.close()


def round_trip(client: BoundClient, topic: str) -> None:
    """The established client still publishes, and receives what it subscribed to."""
    payload = uuid.uuid4().hex.encode()
    client.publish(topic, payload)
    assert client.collect(payload, timeout=TIMEOUT) == []


def subscribed_client(port: int) -> tuple[BoundClient, str]:
    topic = f"flood/{uuid.uuid4().hex[:8]}"
    c = connect(port)
    assert c.subscribe(topic) == [0]
    return c, topic


def wait_for(condition: Callable[[], bool], deadline_s: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# --------------------------------------------------------------------------- MQTT


def test_silent_sockets_beyond_the_pending_bound_are_closed_at_once(
    start: Callable[..., SecHub],
) -> None:
    # The CONNECT timeout is long: without the bound every silent socket would stay open.
    hub = start(
        MQTT_MAX_PENDING_CONNECTS=50, MQTT_MAX_CONNECTIONS_PER_ADDRESS=0, MQTT_CONNECT_TIMEOUT=60
    )
    client, topic = subscribed_client(hub.mqtt_port)
    flood = silent_sockets(hub.mqtt_port, 200)
    try:
        # All but the 50 the hub may wait for are closed at once, not after 60 s.
        assert closed_by_peer(flood, 5.0) >= 150
        assert hub.get("/healthz")[0] == 200
        round_trip(client, topic)
        assert refused(hub.mqtt_port)  # still flooded: a new connection is turned away
        stats = hub.stats()
        assert stats["connections_refused_pending"] >= 150
        assert stats["connections_pending_connect"] == 50
    finally:
        close_all(flood)
    # The flood is gone: a new client gets in.
    assert wait_for(lambda: hub.stats()["connections_pending_connect"] == 0)
    connect(hub.mqtt_port).close()
    round_trip(client, topic)
    client.close()
    assert hub.log().count("refusing new MQTT connections") == 1  # once per episode


def test_one_address_cannot_take_every_connection(start: Callable[..., SecHub]) -> None:
    hub = start(MQTT_MAX_CONNECTIONS_PER_ADDRESS=20, MQTT_CONNECT_TIMEOUT=60)
    client, topic = subscribed_client(hub.mqtt_port)
    flood = silent_sockets(hub.mqtt_port, 30, source="127.0.0.2")
    try:
        assert closed_by_peer(flood, 5.0) >= 10
        assert refused(hub.mqtt_port, source="127.0.0.2")
        # Other addresses are not affected.
        connect(hub.mqtt_port, source="127.0.0.3").close()
        round_trip(client, topic)
        assert hub.get("/healthz")[0] == 200
        # Connected clients count too, not only silent ones.
        devices = [connect(hub.mqtt_port, source="127.0.0.4") for _ in range(20)]
        assert refused(hub.mqtt_port, source="127.0.0.4")
        devices.pop().close()
        assert wait_for(lambda: not refused(hub.mqtt_port, source="127.0.0.4"))
        close_all([d.sock for d in devices])
        assert hub.stats()["connections_refused_per_address"] >= 12
    finally:
        close_all(flood)
    assert wait_for(lambda: not refused(hub.mqtt_port, source="127.0.0.2"))
    client.close()


def test_a_flood_cannot_take_the_last_file_descriptors(start: Callable[..., SecHub]) -> None:
    # 512 descriptors in all, 128 kept back: the flood gets at most ~380, /healthz and the
    # established client keep working, and accept() running out (EMFILE) is survived.
    hub = start(
        nofile=512,
        MQTT_RESERVED_FILE_DESCRIPTORS=128,
        MQTT_MAX_PENDING_CONNECTS=0,
        MQTT_MAX_CONNECTIONS_PER_ADDRESS=0,
        MQTT_CONNECT_TIMEOUT=60,
    )
    client, topic = subscribed_client(hub.mqtt_port)
    flood = silent_sockets(hub.mqtt_port, 600)
    try:
        assert closed_by_peer(flood, 5.0) >= 600 - (512 - 128)
        for _ in range(5):
            assert hub.get("/healthz")[0] == 200
        round_trip(client, topic)
        stats = hub.stats()
        assert stats["connections_refused_fd"] > 0
        assert 0 < stats["file_descriptors_free"] < 512
        assert refused(hub.mqtt_port)
    finally:
        close_all(flood)
    assert wait_for(lambda: not refused(hub.mqtt_port))
    round_trip(client, topic)
    client.close()
    assert hub.proc.poll() is None


# --------------------------------------------------------------------------- HTTP


def _trickle(port: int, data: bytes, interval: float, deadline_s: float) -> float | None:
    """Send ``data`` a byte every ``interval`` s; seconds until the hub closed the connection
    (None: still open after ``deadline_s``)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    started = time.monotonic()
    try:
        for byte in data:
            if time.monotonic() - started > deadline_s:
                return None
            try:
                s.sendall(bytes([byte]))
            except OSError:
                return time.monotonic() - started
            s.settimeout(interval)
            try:
                answer = s.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return time.monotonic() - started
            if answer:
                assert answer.startswith(b"HTTP/1.1 408"), answer
                s.settimeout(TIMEOUT)
                while s.recv(4096):
                    pass
            return time.monotonic() - started
        return None
    finally:
        s.close()


def test_a_client_trickling_its_head_is_cut_off(start: Callable[..., SecHub]) -> None:
    hub = start(HTTP_HEADER_TIMEOUT=1, HTTP_BODY_TIMEOUT=1)
    head = b"GET /healthz HTTP/1.1\r\nHost: hub\r\nX-Slow: " + b"a" * 200
    closed_after = _trickle(hub.http_port, head, 0.3, 8.0)
    assert closed_after is not None and closed_after < 4.0
    # A head larger than the fast path reads itself goes on to aiohttp: the clock goes on too.
    s = socket.create_connection(("127.0.0.1", hub.http_port), timeout=TIMEOUT)
    fields = b"".join(b"\r\nX-Big-%d: " % i + b"b" * 3000 for i in range(3))
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: hub" + fields)
    started = time.monotonic()
    assert s.recv(4096).startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < 4.0
    s.close()
    # A silent connection is closed too, without an answer.
    s = socket.create_connection(("127.0.0.1", hub.http_port), timeout=TIMEOUT)
    assert s.recv(4096) == b""
    s.close()
    # An honest client is served, and the timeouts were counted.
    assert hub.get("/healthz")[0] == 200
    assert hub.stats()["http_header_timeouts"] >= 3


def _trickle_body(port: int, path: str, length: int) -> tuple[bytes, float]:
    """POST a head declaring ``length`` bytes, then a byte of body every 0.3 s: what the hub
    answered, and when it closed the connection (seconds)."""
    head = f"POST {path} HTTP/1.1\r\nHost: hub\r\nContent-Length: {length}\r\n\r\n".encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    s.sendall(head)
    started = time.monotonic()
    answer = b""
    for _ in range(30):
        try:
            s.sendall(b"x")
        except OSError:
            break
        s.settimeout(0.3)
        try:
            chunk = s.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        answer += chunk
        if not chunk:
            break
    elapsed = time.monotonic() - started
    s.close()
    return answer, elapsed


@pytest.mark.parametrize(("path", "length"), [("/topics/slow?qos=0", 100), ("/", 100_000)])
def test_a_client_trickling_its_body_is_cut_off(
    start: Callable[..., SecHub], path: str, length: int
) -> None:
    # A body of 100 bytes to AWS Publish is read by the fast path; one past its 64 KiB is
    # handed to aiohttp, where the Alibaba RPC handler reads it.
    hub = start(HTTP_HEADER_TIMEOUT=1, HTTP_BODY_TIMEOUT=1)
    answer, elapsed = _trickle_body(hub.http_port, path, length)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert answer.endswith(b"408 Request Timeout")
    assert elapsed < 4.0
    # A route that answers without reading the body (404): the rest of the body must still
    # come in time; the connection is closed, with no second answer.
    answer, elapsed = _trickle_body(hub.http_port, "/unknown-route", 100)
    assert answer.startswith(b"HTTP/1.1 404") and answer.count(b"HTTP/1.1") == 1, answer
    assert elapsed < 4.0
    # A keep-alive connection between requests is not cut off by the head timeout.
    s = socket.create_connection(("127.0.0.1", hub.http_port), timeout=TIMEOUT)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: hub\r\n\r\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    s.settimeout(2.0)
    with pytest.raises(TimeoutError):
        s.recv(4096)  # 2 s idle, still open
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: hub\r\n\r\n")
    s.settimeout(TIMEOUT)
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    s.close()
    assert hub.stats()["http_body_timeouts"] >= 1
