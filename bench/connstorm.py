"""Connect storms: many MQTT connections opened at once, dropped at once, opened again.

The sign-in scenario (bench/signin.py) measures how fast a hub admits a crowd of devices: a
*cold* sign-in (every device connects to a freshly started hub) and a *reconnect storm* (every
connection is dropped without DISCONNECT and every device comes straight back). This module is
the generator's side of it, and knows nothing of Alibaba or ThingHub: it is given one CONNECT
packet per client, pre-encoded, and counts the CONNACKs with return/reason code 0.

How it stays cheap and honest:

* Every CONNECT is built before the clock starts (:func:`connect_packet`): a connect costs the
  generator a socket, a ``connect()`` and one ``write``, not an HMAC.
* ``window`` connects are in flight at once (TCP connect sent, CONNACK not yet read): a crowd
  of devices does not wait for each other, but the hub's pending-CONNECT and accept queues are
  not flooded past what a real reconnect wave through a load balancer would bring.
* One host holds the whole crowd. A TCP connection is named by (source address, source port,
  destination): from one source address to one port the ephemeral range (about 28,000 ports)
  runs out, so the clients are spread over several loopback source addresses (127.0.0.2,
  127.0.0.3, ...; the whole of 127/8 is loopback on Linux) and bound with
  ``IP_BIND_ADDRESS_NO_PORT`` so the kernel picks the port at ``connect()``, per destination
  (ip(7)).
* Every socket has ``SO_LINGER`` {on, 0}: closing it sends RST and leaves no TIME_WAIT behind
  (socket(7)). That is the abrupt drop of the storm (a device that lost its network says
  nothing), and it keeps the port space free for the next wave.
* The phase deadline bounds the whole wave; a connect that has not got its CONNACK by then is
  an error, as is any CONNACK other than 0, a reset or a refused connect.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import socket
import ssl
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from bench.mqttload import ProcessProbe, mqtt_string, remaining_length

# ip(7): defer the source port choice to connect() (Linux 4.2+; the constant is 24 there).
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
LINGER_RESET = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0}
DISCONNECT = b"\xe0\x00"  # 3.1.1 DISCONNECT; in 5.0 the same bytes are reason 0x00 (3.14.2.1)
MAX_ERRORS_KEPT = 5
# Clients per loopback source address: well inside the ephemeral range (net.ipv4.
# ip_local_port_range, 32768-60999 by default) even with a previous wave's sockets around.
CLIENTS_PER_SOURCE = 10_000


def connect_packet(
    version: int,
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    keepalive: int = 1200,
) -> bytes:
    """A CONNECT with Clean Session / Clean Start, no Will; ``version`` 4 (3.1.1) or 5 (with
    an empty property list, 3.1.2.11)."""
    if version not in (4, 5):
        raise ValueError(f"MQTT protocol level must be 4 or 5, not {version}")
    flags = 0x02
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = mqtt_string("MQTT") + bytes([version, flags]) + struct.pack(">H", keepalive)
    if version == 5:
        body += b"\x00"
    body += mqtt_string(client_id)
    if username is not None:
        body += mqtt_string(username)
    if password is not None:
        body += mqtt_string(password)  # Binary Data: the same 2-byte length prefix (1.5.6)
    return b"\x10" + remaining_length(len(body)) + body


def source_addresses(clients: int) -> list[str]:
    """Loopback source addresses enough for ``clients`` connections to one port."""
    count = max(2, -(-clients // CLIENTS_PER_SOURCE))
    if count > 250:
        raise ValueError(f"{clients} clients need more than 250 loopback source addresses")
    return [f"127.0.0.{2 + i}" for i in range(count)]


@dataclass
class WaveResult:
    """One wave of connects: how many got CONNACK 0 and how fast."""

    name: str
    attempted: int
    connected: int
    elapsed_s: float
    rate: float  # CONNACK 0 per second, first connect() to last CONNACK
    gen_cpu: float  # % of one core used by this process over the wave
    hub_cpu: float | None
    started_ns: int  # time.perf_counter_ns() (CLOCK_MONOTONIC, shared with other processes)
    ended_ns: int
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)


class _Conn(asyncio.Protocol):
    """One client: writes its CONNECT, reads the CONNACK, then only waits to be closed."""

    __slots__ = ("buf", "code", "fleet", "packet", "transport", "waiter")

    def __init__(self, fleet: Fleet, packet: bytes) -> None:
        self.fleet = fleet
        self.packet = packet
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] = fleet.loop.create_future()
        self.code: int | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence a cast.
        self.transport = cast(asyncio.Transport, transport)
        self.fleet.alive += 1
        self.transport.write(self.packet)

    def data_received(self, data: bytes) -> None:
        if self.code is not None:
            return  # nothing else is expected; a v5 DISCONNECT is seen as connection_lost
        buf = self.buf + data
        # Fixed header, Remaining Length (1-4 bytes, 2.2.3), then the CONNACK's second byte is
        # the 3.1.1 return code (3.2.2.3) and the 5.0 reason code (3.2.2.2) alike.
        length, shift, i = 0, 0, 1
        while True:
            if i >= len(buf):
                self.buf = buf
                return
            byte = buf[i]
            length |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                self._fail("malformed Remaining Length")
                return
        if len(buf) < i + min(length, 2):
            self.buf = buf
            return
        self.buf = b""
        if buf[0] != 0x20 or length < 2:
            self._fail(f"expected CONNACK, got packet type {buf[0] >> 4} (length {length})")
            return
        self.code = buf[i + 1]
        if not self.waiter.done():
            self.waiter.set_result(self.code)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fleet.alive -= 1
        self.fleet.closed()
        if not self.waiter.done():
            why = f"connection closed before CONNACK ({exc or 'EOF'})"
            self.waiter.set_exception(ConnectionError(why))

    def _fail(self, why: str) -> None:
        if not self.waiter.done():
            self.waiter.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.abort()


class Fleet:
    """``len(packets)`` clients of one hub, connected in waves of ``window`` in flight."""

    def __init__(
        self,
        host: str,
        port: int,
        packets: Sequence[bytes],
        *,
        window: int = 512,
        sources: Sequence[str] | None = None,
        contexts: Sequence[ssl.SSLContext] | None = None,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.loop = asyncio.get_running_loop()
        self.address = (host, port)
        self.packets = packets
        # TLS, one client context (its own certificate) per client: bench/mtls.py.
        self.contexts = contexts
        self.window = window
        self.sources = list(sources or source_addresses(len(packets)))
        self.conns: list[_Conn | None] = [None] * len(packets)
        self.alive = 0
        self._all_closed: asyncio.Event = asyncio.Event()

    def closed(self) -> None:
        if self.alive <= 0:
            self._all_closed.set()

    @property
    def connected(self) -> int:
        """Clients whose CONNACK was 0 and whose connection is still open."""
        return sum(
            1
            for c in self.conns
            if c is not None
            and c.code == 0
            and c.transport is not None
            and not c.transport.is_closing()
        )

    async def _open(self, index: int) -> None:
        # The C-level socket type: the Python wrapper's enum-converting properties, read by
        # the event loop on every call, cost as much as the rest of a connect here.
        sock = _socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            with contextlib.suppress(OSError):  # an old kernel: bind() picks the port
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((self.sources[index % len(self.sources)], 0))
            await self.loop.sock_connect(sock, self.address)  # type: ignore[arg-type]
        except BaseException:
            sock.close()
            raise
        packet = self.packets[index]
        contexts = self.contexts
        if contexts is None:
            _, conn = await self.loop.create_connection(  # type: ignore[call-overload]
                lambda: _Conn(self, packet), sock=sock
            )
        else:  # the CONNECT goes once the handshake is done (connection_made)
            _, conn = await self.loop.create_connection(  # type: ignore[call-overload]
                lambda: _Conn(self, packet), sock=sock, ssl=contexts[index], server_hostname=""
            )
        self.conns[index] = conn
        code = await conn.waiter
        if code != 0:
            raise ConnectionRefusedError(f"CONNACK code {code:#04x}")

    async def connect_all(
        self, name: str, deadline_s: float, probe: ProcessProbe | None = None
    ) -> WaveResult:
        """Connect every client not connected yet, ``window`` at a time."""
        indices = [i for i, c in enumerate(self.conns) if c is None]
        todo = iter(indices)
        attempted = len(indices)
        connected = 0
        errors: list[str] = []
        error_count = 0

        async def worker() -> None:
            nonlocal connected, error_count
            for index in todo:
                try:
                    await self._open(index)
                    connected += 1
                except (OSError, ConnectionError) as error:
                    error_count += 1
                    if len(errors) < MAX_ERRORS_KEPT:
                        errors.append(f"client {index}: {type(error).__name__}: {error}")

        self._all_closed.clear()
        hub0 = probe.cpu_seconds() if probe is not None else 0.0
        cpu0 = time.process_time()
        started = time.perf_counter_ns()
        tasks = [asyncio.ensure_future(worker()) for _ in range(min(self.window, attempted))]
        try:
            async with asyncio.timeout(deadline_s):
                await asyncio.gather(*tasks)
        except TimeoutError:
            unfinished = attempted - connected - error_count
            error_count += unfinished
            errors.append(f"deadline of {deadline_s:.0f} s: {unfinished} connects unfinished")
        finally:
            for task in tasks:
                task.cancel()
        ended = time.perf_counter_ns()
        elapsed = max(1e-9, (ended - started) / 1e9)
        return WaveResult(
            name=name,
            attempted=attempted,
            connected=connected,
            elapsed_s=elapsed,
            rate=connected / elapsed,
            gen_cpu=100.0 * (time.process_time() - cpu0) / elapsed,
            hub_cpu=(100.0 * (probe.cpu_seconds() - hub0) / elapsed if probe is not None else None),
            started_ns=started,
            ended_ns=ended,
            errors=error_count,
            first_errors=errors,
        )

    async def _wait_closed(self, timeout_s: float) -> bool:
        if self.alive <= 0:
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await self._all_closed.wait()
        except TimeoutError:
            return False
        return True

    async def drop_all(self, timeout_s: float = 30.0) -> None:
        """Close every connection abruptly (RST, no DISCONNECT), and wait until the loop has
        released them all; the next :meth:`connect_all` opens them all again."""
        self._all_closed.clear()
        for conn in self.conns:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
        await self._wait_closed(timeout_s)
        self.conns = [None] * len(self.packets)

    async def disconnect_all(self, timeout_s: float = 60.0) -> int:
        """MQTT DISCONNECT on every connection, then wait for the server to close them (it
        must, 3.14.4); returns how many it had not closed by ``timeout_s`` (closed here)."""
        self._all_closed.clear()
        for conn in self.conns:
            if conn is not None and conn.transport is not None and not conn.transport.is_closing():
                conn.transport.write(DISCONNECT)
        closed = await self._wait_closed(timeout_s)
        left = 0 if closed else self.alive
        for conn in self.conns:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
        await self._wait_closed(5.0)
        self.conns = [None] * len(self.packets)
        return left
