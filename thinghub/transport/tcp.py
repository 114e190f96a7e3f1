"""MQTT over TCP and TLS: an asyncio Protocol per connection (no streams: one callback per read,
many packets per read), with writes coalesced per event-loop iteration so that a burst of
deliveries to one client becomes one ``send()`` system call.

Every connection first passes the admission gate (``admission.py``): refused ones are closed
at once, before the broker sees them. A TLS connection passes it before its handshake (the
listener is plain TCP, and ``TLSAdmission`` wraps each admitted connection in the event loop's
own TLS layer), so that silent sockets on the TLS port are bounded like any others and a
handshake that does not finish within the CONNECT timeout ends the connection.

On the TLS listener a connection may also be MQTT over WebSocket (what the AWS IoT device
SDKs open on port 443): one whose first bytes are an HTTP request (``GET ``) is handed, TLS
layer and all, to the hub's HTTP server, which serves ``/mqtt`` (``websocket.py``); it must
have sent its request head within the CONNECT timeout. And a TLS client may have presented a
certificate, which the handshake verified (``tls.py``): the connection's ``credential``, read
when its CONNECT comes (``broker/auth.py``).

Most connections of a fleet sit idle, so what one holds between packets is kept small: the
protocol object (nine slots; what all connections of a listener share sits in one
``Listener``), its peer address, and nothing else of this module's: the write buffer exists
only from a write to the flush in the same loop iteration, the local address is asked of the
transport when wanted, and the place at the admission gate is the gate's interned address key,
not an object. Timeouts are not timers of the connection either (broker/timeouts.py)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from asyncio import sslproto
from collections.abc import Callable
from typing import Any

from ..broker.auth import ClientCertificate
from ..broker.broker import Broker
from ..broker.client import Client
from .admission import AdmissionGate
from .tls import ServerTLS

log = logging.getLogger("thinghub.transport")

#: a new protocol of the hub's HTTP server for one connection (None: it is not serving)
HTTPProtocols = Callable[[], asyncio.Protocol | None]


class Listener:
    """What every connection of one listener shares: one reference per connection instead of
    one per item (each slot of a connection costs 8 bytes, times every idle connection)."""

    __slots__ = ("broker", "gate", "http", "loop", "tls")

    def __init__(
        self,
        broker: Broker,
        loop: asyncio.AbstractEventLoop,
        gate: AdmissionGate | None,
        tls: ServerTLS | None = None,
        http: HTTPProtocols | None = None,
    ) -> None:
        self.broker = broker
        self.loop = loop
        self.gate = gate
        # The TLS listener's contexts, and where its HTTP requests go (None: nowhere).
        self.tls = tls
        self.http = http


class MQTTStreamProtocol(asyncio.Protocol):
    """One client connection; implements the broker's ``Link``.

    It holds only what a connection needs while it is idle: no write buffer between writes
    (``_pending`` exists from a write to the flush that follows in the same loop iteration),
    no local address (asked of the transport when the HTTP APIs want it), and its place at the
    admission gate as the address key the gate counts it under, not an object of its own."""

    __slots__ = (
        "_address",
        "_awaiting_connect",
        "_client",
        "_close_after_flush",
        "_listener",
        "_pending",
        "_pending_bytes",
        "_transport",
        "peer",
    )

    def __init__(self, listener: Listener, address: str | None = None) -> None:
        self._listener = listener
        self._transport: asyncio.Transport | None = None
        self._client: Client | None = None
        self._pending: list[bytes] | None = None
        self._pending_bytes = 0
        self._close_after_flush = False
        # Admission (admission.py): the key this connection is counted under at the gate, None
        # when it is not counted (no gate, or released). Asked in connection_made unless the
        # connection came admitted (TLS, admitted before its handshake).
        self._address = address
        # Counted as waiting for its CONNECT (mqtt.max_pending_connects).
        self._awaiting_connect = address is not None
        self.peer = "?"

    @property
    def connected(self) -> bool:
        """Whether ``connection_made`` has run (a TLS connection: its handshake is done)."""
        return self._transport is not None

    @property
    def local(self) -> str:
        """The hub's own address of this connection ("ip:port"), for the HTTP APIs; "?" when
        the transport cannot tell (closed)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return "?"
        try:
            sockname = transport.get_extra_info("sockname")
        except OSError:
            return "?"
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            return f"{sockname[0]}:{sockname[1]}"
        return "?"

    # asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement its interface.
        self._transport = transport  # type: ignore[assignment]
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple) and len(peername) >= 2:
            self.peer = f"{peername[0]}:{peername[1]}"
        listener = self._listener
        gate = listener.gate
        if gate is not None and self._address is None:
            host = peername[0] if isinstance(peername, tuple) and peername else "?"
            address = gate.admit(str(host))
            if address is None:
                transport.close()  # refused: the broker never sees it
                return
            self._address = address
            self._awaiting_connect = True
        self._client = listener.broker.connection_made(self)

    def data_received(self, data: bytes) -> None:
        client = self._client
        if client is not None:
            client.data_received(data)
            # CONNECT answered (accepted or refused) or the connection ending: it no longer
            # counts as waiting for CONNECT (the broker handles CONNECT synchronously).
            if self._awaiting_connect and (client.connected or client.closed):
                self._awaiting_connect = False
                gate = self._listener.gate
                if gate is not None and self._address is not None:
                    gate.connect_done()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        client, self._client = self._client, None
        self._pending = None
        self._pending_bytes = 0
        self.release()
        if client is not None:
            client.connection_lost()

    def release(self) -> None:
        """Give this connection's place at the admission gate back (once; later calls do
        nothing)."""
        address, self._address = self._address, None
        gate = self._listener.gate
        if address is not None and gate is not None:
            gate.release(address, pending=self._awaiting_connect)
        self._awaiting_connect = False

    # Link ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._close_after_flush or self._transport is None:
            return
        pending = self._pending
        if pending is None:
            self._pending = [data]
            self._listener.loop.call_soon(self._flush)
        else:
            pending.append(data)
        self._pending_bytes += len(data)

    def _flush(self) -> None:
        transport = self._transport
        pending, self._pending = self._pending, None
        self._pending_bytes = 0
        if transport is None or transport.is_closing():
            return
        if pending:
            transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
        if self._close_after_flush:
            transport.close()

    def close(self) -> None:
        if self._transport is None or self._close_after_flush:
            return
        self._close_after_flush = True
        if self._pending is None:
            self._listener.loop.call_soon(self._flush)

    def buffered(self) -> int:
        transport = self._transport
        if transport is None:
            return 0
        return self._pending_bytes + transport.get_write_buffer_size()


class TLSAdmission(asyncio.Protocol):
    """A new connection on the TLS port, admitted (or refused) before its handshake, then
    wrapped in the event loop's own TLS layer around an :class:`MQTTStreamProtocol` that
    holds its place at the gate: exactly what ``loop.create_server(ssl=...)`` does for each
    connection (uvloop's ``UVStreamServer._on_listen``, asyncio's ``_accept_connection2``),
    with the gate in front. Done within ``connection_made``, so that no byte of the handshake
    can arrive before the TLS layer is there (``loop.start_tls`` would start only on the next
    loop iteration). The handshake must end within ``mqtt.connect_timeout``."""

    __slots__ = ("_listener",)

    def __init__(self, listener: Listener) -> None:
        self._listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        listener = self._listener
        address = None
        if listener.gate is not None:
            peername = transport.get_extra_info("peername")
            host = peername[0] if isinstance(peername, tuple) and peername else "?"
            address = listener.gate.admit(str(host))
            if address is None:
                transport.close()
                return
        loop = listener.loop
        protocol = MQTTTLSProtocol(listener, address)
        waiter: asyncio.Future[None] = loop.create_future()
        assert listener.tls is not None
        tls = _ssl_protocol_class(loop)(
            loop,
            protocol,
            listener.tls.context(),
            waiter,
            server_side=True,
            ssl_handshake_timeout=listener.broker.settings.connect_timeout,
        )
        transport.set_protocol(tls)
        tls.connection_made(transport)

        def handshake_done(done: asyncio.Future[None]) -> None:
            # A failed handshake (or a connection lost during it) never reaches the MQTT
            # protocol's connection_lost, which would give its place at the gate back.
            failed = done.cancelled() or done.exception() is not None
            if failed or not protocol.connected:
                transport.close()
                protocol.release()

        waiter.add_done_callback(handshake_done)


class MQTTTLSProtocol(MQTTStreamProtocol):
    """A connection of the TLS listener: MQTT, whose client may have shown a certificate, or
    an HTTP request (MQTT over WebSocket), handed to the HTTP server."""

    __slots__ = ()

    @property
    def credential(self) -> ClientCertificate | None:
        """The client certificate the handshake verified (read at CONNECT; nothing kept)."""
        transport = self._transport
        if transport is None:
            return None
        ssl_object = transport.get_extra_info("ssl_object")
        der = None if ssl_object is None else ssl_object.getpeercert(binary_form=True)
        return None if der is None else ClientCertificate(der)

    def data_received(self, data: bytes) -> None:
        client = self._client
        # An MQTT connection starts with CONNECT (0x10); an HTTP one with its method.
        if client is not None and not client.connected and data.startswith(b"GET "):
            http = self._listener.http
            protocol = None if http is None else http()
            if protocol is not None:
                self._to_http(client, protocol, data)
                return
        super().data_received(data)

    def _to_http(self, client: Client, protocol: asyncio.Protocol, data: bytes) -> None:
        """Hand the connection, TLS layer and all, to the HTTP server. Its place at the gate
        goes back: the WebSocket upgrade takes one of its own (websocket.py)."""
        transport = self._transport
        assert transport is not None
        self._client = None
        self._transport = None
        self.release()
        client.connection_lost()  # never connected: it only leaves the broker's books
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(data)
        listener = self._listener
        listener.loop.call_later(
            listener.broker.settings.connect_timeout, _upgrade_due, transport, protocol
        )


def _upgrade_due(transport: asyncio.BaseTransport, protocol: asyncio.Protocol) -> None:
    """An HTTP request on the TLS port must have been an upgrade by now (its head read within
    the CONNECT timeout, as a CONNECT would be); aiohttp's request handler says so in
    ``_upgraded`` (aiohttp 3.x; if it ever does not, the handler's own keep-alive timeout is
    what ends an idle connection)."""
    if not transport.is_closing() and getattr(protocol, "_upgraded", True) is False:
        transport.close()


def _ssl_protocol_class(loop: asyncio.AbstractEventLoop) -> Any:
    """The TLS protocol of ``loop``'s own ``create_server(ssl=...)``."""
    if type(loop).__module__.startswith("uvloop"):
        import uvloop.loop

        return uvloop.loop.SSLProtocol  # type: ignore[attr-defined]
    return sslproto.SSLProtocol


async def start_tcp_listener(
    broker: Broker,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | ServerTLS | None = None,
    gate: AdmissionGate | None = None,
    http: HTTPProtocols | None = None,
) -> asyncio.Server:
    """Serve MQTT on ``host:port`` (TLS with ``ssl_context``: a fixed context, or the hub's
    ``ServerTLS``), admitting connections through ``gate`` when given. On TLS, ``http()``
    gives the protocol that serves a connection that turns out to be an HTTP request."""
    loop = asyncio.get_running_loop()
    tls = _FixedTLS(ssl_context) if isinstance(ssl_context, ssl.SSLContext) else ssl_context
    listener = Listener(broker, loop, gate, tls, http)
    factory: Callable[[], asyncio.Protocol]
    if tls is None:

        def factory() -> asyncio.Protocol:
            return MQTTStreamProtocol(listener)

    else:

        def factory() -> asyncio.Protocol:
            return TLSAdmission(listener)

    return await loop.create_server(factory, host=host, port=port, reuse_address=True, backlog=4096)


class _FixedTLS(ServerTLS):
    """One context for ever (a caller that made its own)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._fixed = context

    def context(self) -> ssl.SSLContext:
        return self._fixed


def make_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context
