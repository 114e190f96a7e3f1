"""TLS connections hold their place at the admission gate from accept to close, also when the
handshake never completes (thinghub/transport/tcp.py, ``TLSAdmission``): a real ``thinghub
serve`` with a TLS listener and ``mqtt.max_connections_per_address`` = 3, and raw sockets that
break their handshakes in different ways before honest TLS clients take the three places."""

from __future__ import annotations

import re
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import rawmqtt

pytestmark = pytest.mark.thinghub_only

TIMEOUT = 10.0
PLACES = 3


def _tls_port(hub: Any) -> int:
    found = [m for line in hub.output if (m := re.search(r"mqtts=[\d.]+:(\d+)", line))]
    assert found, f"no mqtts endpoint in the ready line:\n{hub.log()}"
    return int(found[0].group(1))


def _closed_by_hub(sock: socket.socket) -> bool:
    """Whether the hub closes ``sock`` (EOF or reset) within the timeout."""
    sock.settimeout(TIMEOUT)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def _mqtt_over_tls(port: int, cert: Path) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(cert))
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock = context.wrap_socket(raw, server_hostname="localhost")
    sock.sendall(rawmqtt.connect(f"tls-{uuid.uuid4().hex}", 5))
    head = _read_exactly(sock, 2)
    assert head[0] == 0x20, f"expected CONNACK, got {head!r}"
    assert _read_exactly(sock, head[1])[1] == 0, "CONNECT refused"
    return sock


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def test_broken_handshakes_give_their_place_back(
    start_hub: Callable[..., Any], certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    hub = start_hub(
        TLS_CERT=str(cert), TLS_KEY=str(key), TLS_PORT=0, MAX_CONNECTIONS_PER_ADDRESS=PLACES
    )
    port = _tls_port(hub)
    # Handshakes that fail: not TLS at all (the hub closes), and a client that hangs up in
    # the middle of its own handshake.
    for _ in range(PLACES + 2):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as garbage:
            garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _closed_by_hub(garbage)
        quitter = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        hello = ssl.create_default_context().wrap_bio(
            ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="localhost"
        )
        with pytest.raises(ssl.SSLWantReadError):
            hello.do_handshake()
        quitter.sendall(outgoing.read())  # the ClientHello, then nothing more
        quitter.close()
    # Every place is free again: exactly PLACES honest clients get in (none was lost, and
    # none was given back twice), the next is closed at once.
    clients: list[ssl.SSLSocket] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while len(clients) < PLACES:
            try:
                clients.append(_mqtt_over_tls(port, cert))
            except (OSError, AssertionError):
                # The hub may not have seen the last quitter's hang-up yet.
                assert time.monotonic() < deadline, "the broken handshakes kept their places"
                time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as extra:
            assert _closed_by_hub(extra), "a fourth connection from one address was admitted"
        for sock in clients:
            sock.sendall(rawmqtt.pingreq())
            assert _read_exactly(sock, 2) == b"\xd0\x00"  # the admitted ones are served
    finally:
        for sock in clients:
            sock.close()
