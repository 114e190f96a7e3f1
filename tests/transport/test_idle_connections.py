"""What an idle MQTT connection costs the hub, and that the timeouts still hold for it.

A hub (``thinghub.app.Hub``, as ``thinghub serve`` runs it) runs on its own event-loop thread,
on asyncio's loop and on uvloop's; the clients are raw sockets speaking MQTT 3.1.1 and 5.0.
The timeouts are checked as a client sees them, many connections at once: a connection that
goes silent is closed between 1.5 times its keep alive and one second later (MQTT 5.0
§3.1.2.10 [MQTT-3.1.2-22], 3.1.1 [MQTT-3.1.2-24]; thinghub/broker/timeouts.py sweeps once a
second), and a socket that never sends CONNECT is closed by ``mqtt.connect_timeout``. Each
close is timed by the test thread as it reads the EOF; ``SLACK`` covers the scheduling of a
shared test machine.

Then what the hub holds per connection: no event-loop timer of its own (the deadlines of all
connections share one timer), and the admission gate's counts come back to zero when the
connections close."""

from __future__ import annotations

import asyncio
import gc
import json
import selectors
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import rawmqtt

from thinghub.app import Hub
from thinghub.config import load_settings

T = TypeVar("T")
TIMEOUT = 10.0
# Scheduling delay allowed on top of the protocol's bound (two cores shared with other tests).
SLACK = 0.5
# uvloop's clock counts whole milliseconds: the hub's time of a packet may read up to one
# tick earlier than the test's.
TICK = 0.002
# How many connections the timing tests open at once.
CROWD = 40


@dataclass
class Running:
    hub: Hub
    loop: asyncio.AbstractEventLoop
    port: int
    http_port: int

    def stats(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.http_port}/api/stats"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            body: dict[str, Any] = json.load(response)
        return body

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    def on_loop(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the hub's event loop thread (the broker's state belongs to it)."""

        async def call() -> T:
            return fn()

        return self.run(call())


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


@pytest.fixture(params=["asyncio", "uvloop"])
def start(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """A factory of in-process hubs with ``mqtt.*`` settings; each stopped after the test."""
    started: list[tuple[Running, threading.Thread]] = []

    def make(**mqtt: Any) -> Running:
        overrides: dict[str, Any] = {
            "data_dir": tmp_path / f"data{len(started)}",
            "mqtt.host": "127.0.0.1",
            "http.host": "127.0.0.1",
            "mqtt.port": 0,
            "http.port": 0,
            "mqtt.allow_anonymous": True,
            "log_level": "warning",
        }
        overrides.update({f"mqtt.{key}": value for key, value in mqtt.items()})
        hub = Hub(load_settings(None, overrides=overrides), environ={})
        loop = _new_loop(request.param)
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        endpoints = asyncio.run_coroutine_threadsafe(hub.start(), loop).result(20)
        running = Running(hub, loop, endpoints.mqtt[1], endpoints.http[1])
        started.append((running, thread))
        return running

    yield make
    for running, thread in started:
        running.run(running.hub.stop())
        running.loop.call_soon_threadsafe(running.loop.stop)
        thread.join(10)
        running.loop.close()


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Sockets the test opens; closed after it."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def _open(port: int, opened: list[socket.socket]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    opened.append(sock)
    return sock


def _connect(port: int, opened: list[socket.socket], version: int, keepalive: int) -> socket.socket:
    """A connection that completed CONNECT/CONNACK (success)."""
    return _timed_connect(port, opened, version, keepalive)[0]


def _timed_connect(
    port: int, opened: list[socket.socket], version: int, keepalive: int
) -> tuple[socket.socket, float, float]:
    """A connection that completed CONNECT/CONNACK, with when the CONNECT was sent and when
    the CONNACK was read: the hub's last packet from it came in between."""
    sock = _open(port, opened)
    sent = time.monotonic()
    sock.sendall(rawmqtt.connect(f"idle-{uuid.uuid4().hex}", version, keepalive=keepalive))
    head = _read_exactly(sock, 2)
    assert head[0] == 0x20, f"expected CONNACK, got {head!r}"
    body = _read_exactly(sock, head[1])
    assert body[1] == 0, f"CONNECT refused: {body!r}"
    return sock, sent, time.monotonic()


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def _wait_all_closed(
    socks: list[socket.socket], timeout: float
) -> dict[socket.socket, tuple[float, bytes]]:
    """Wait for the hub to close every socket; for each, when (time.monotonic) its EOF came
    and the bytes it sent before."""
    closed: dict[socket.socket, tuple[float, bytes]] = {}
    received = {sock: b"" for sock in socks}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        while len(closed) < len(socks):
            left = deadline - time.monotonic()
            assert left > 0, f"{len(socks) - len(closed)} of {len(socks)} connections still open"
            for key, _ in selector.select(left):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                try:
                    chunk = ready.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    received[ready] += chunk
                    continue
                closed[ready] = (time.monotonic(), received[ready])
                selector.unregister(ready)
    return closed


def _live_timers() -> int:
    """Event-loop timers that are set (asyncio's and uvloop's ``TimerHandle``)."""
    return sum(
        1 for obj in gc.get_objects() if type(obj).__name__ == "TimerHandle" and not obj.cancelled()
    )


# --------------------------------------------------------------------------- timeouts


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_silent_connections_close_within_one_and_a_half_keep_alives_plus_a_second(
    start: Callable[..., Running], sockets: list[socket.socket], version: int
) -> None:
    hub = start()
    connected = [_timed_connect(hub.port, sockets, version, keepalive=1) for _ in range(CROWD)]
    # One more keeps talking (a PINGREQ every half second, its own thread): it is served
    # while the others are closed around it.
    talker = _connect(hub.port, sockets, version, keepalive=1)
    stop = threading.Event()
    answered: list[float] = []

    def talk() -> None:
        while not stop.wait(0.5):
            talker.sendall(rawmqtt.pingreq())
            if _read_exactly(talker, 2) != b"\xd0\x00":  # PINGRESP
                return
            answered.append(time.monotonic())

    thread = threading.Thread(target=talk, daemon=True)
    thread.start()
    try:
        closed = _wait_all_closed([sock for sock, _, _ in connected], TIMEOUT)
    finally:
        stop.set()
        thread.join(TIMEOUT)
    for sock, connect_sent, connacked in connected:
        when, sent = closed[sock]
        # Not before 1.5 keep alives of silence, at most a second (and SLACK) after.
        assert when - connect_sent >= 1.5 - TICK, f"closed {when - connect_sent:.3f}s after CONNECT"
        assert when - connacked <= 1.5 + 1 + SLACK, f"closed {when - connacked:.2f}s after CONNACK"
        if version == 5:
            # §4.13: the server says why: DISCONNECT with 0x8D Keep Alive timeout.
            assert sent[:1] == b"\xe0" and sent[2] == 0x8D, sent
        else:
            assert sent == b"", sent  # 3.1.1 just closes
    # The talker was served throughout: still open once the others are all closed.
    assert answered, "the talker got no PINGRESP"
    talker.sendall(rawmqtt.pingreq())
    assert _read_exactly(talker, 2) == b"\xd0\x00"
    pinged = time.monotonic()
    # Silent from now on, it goes the same way.
    talker_closed = _wait_all_closed([talker], TIMEOUT)[talker][0]
    assert talker_closed - pinged <= 1.5 + 1 + SLACK


def test_sockets_that_never_send_connect_are_closed_by_the_connect_timeout(
    start: Callable[..., Running], sockets: list[socket.socket]
) -> None:
    hub = start(connect_timeout=1.0, max_connections_per_address=0)
    opened = []
    for _ in range(CROWD):
        before = time.monotonic()
        opened.append((_open(hub.port, sockets), before, time.monotonic()))
    closed = _wait_all_closed([sock for sock, _, _ in opened], TIMEOUT)
    for sock, before, after in opened:
        when, sent = closed[sock]
        assert sent == b""
        assert when - before >= 1.0 - TICK, f"closed {when - before:.3f}s after connecting"
        assert when - after <= 1.0 + 1 + SLACK, f"closed {when - after:.2f}s after connecting"
    assert hub.stats()["connections_pending_connect"] == 0


# --------------------------------------------------------------------------- what one holds


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_an_idle_connection_holds_no_timer_of_its_own(
    start: Callable[..., Running], sockets: list[socket.socket], version: int
) -> None:
    hub = start()
    before = hub.on_loop(_live_timers)
    for _ in range(100):
        _connect(hub.port, sockets, version, keepalive=60)
    # Answered CONNACKs: the keep alive of each is armed.
    assert hub.on_loop(_live_timers) - before < 10


def test_a_socket_waiting_for_connect_holds_no_timer_of_its_own(
    start: Callable[..., Running], sockets: list[socket.socket]
) -> None:
    hub = start(max_connections_per_address=0)
    before = hub.on_loop(_live_timers)
    for _ in range(100):
        _open(hub.port, sockets)
    wait_until(lambda: hub.stats()["connections_pending_connect"] == 100)
    assert hub.on_loop(_live_timers) - before < 10


def test_the_gate_gives_every_place_back(
    start: Callable[..., Running], sockets: list[socket.socket]
) -> None:
    """Each connection holds its place at the admission gate (transport/admission.py) from
    accept to close, and counts as pending until its CONNECT is answered."""
    hub = start(max_connections_per_address=20)
    silent = [_open(hub.port, sockets) for _ in range(10)]
    for _ in range(10):
        _connect(hub.port, sockets, 4, keepalive=60)
    wait_until(lambda: hub.stats()["connections_pending_connect"] == 10)
    refused = _open(hub.port, sockets)
    assert _wait_all_closed([refused], TIMEOUT)[refused][1] == b""
    for sock in silent:
        sock.sendall(rawmqtt.connect(f"late-{uuid.uuid4().hex}", 5))
        assert _read_exactly(sock, 1) == b"\x20"  # CONNACK
    wait_until(lambda: hub.stats()["connections_pending_connect"] == 0)
    for sock in sockets:
        sock.close()
    sockets.clear()
    wait_until(lambda: hub.stats()["connections"] == 0)
    # All twenty places are free again.
    for _ in range(20):
        _connect(hub.port, sockets, 5, keepalive=60)
    assert hub.stats()["connections_refused_per_address"] == 1


def test_the_local_address_is_the_hubs_own(
    start: Callable[..., Running], sockets: list[socket.socket]
) -> None:
    """GetConnection's targetIp/targetPort (http/aws/routes.py) come from the transport."""
    hub = start()
    _connect(hub.port, sockets, 5, keepalive=60)

    def locals_() -> list[object]:
        broker = hub.hub.broker
        assert broker is not None
        return [getattr(client.link, "local", None) for client in broker.clients]

    assert hub.on_loop(locals_) == [f"127.0.0.1:{hub.port}"]


def wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
