"""MQTT over TCP and TLS: an asyncio Protocol per connection (no streams: one callback per read,
many packets per read), with writes coalesced per event-loop iteration so that a burst of
deliveries to one client becomes one ``send()`` system call.

Every connection first passes the admission gate (``admission.py``): refused ones are closed
at once, before the broker sees them. A TLS connection passes it before its handshake (the
listener is plain TCP, and ``TLSAdmission`` wraps each admitted connection in the event loop's
own TLS layer), so that silent sockets on the TLS port are bounded like any others and a
handshake that does not finish within the CONNECT timeout ends the connection."""

from __future__ import annotations

import asyncio
import logging
import ssl
from asyncio import sslproto
from collections.abc import Callable
from typing import Any

from ..broker.broker import Broker
from ..broker.client import Client
from .admission import AdmissionGate, Ticket

log = logging.getLogger("thinghub.transport")


class MQTTStreamProtocol(asyncio.Protocol):
    """One client connection; implements the broker's ``Link``."""

    __slots__ = (
        "_awaiting_connect",
        "_broker",
        "_client",
        "_close_after_flush",
        "_gate",
        "_loop",
        "_pending",
        "_pending_bytes",
        "_ticket",
        "_transport",
        "local",
        "peer",
    )

    def __init__(
        self,
        broker: Broker,
        loop: asyncio.AbstractEventLoop,
        gate: AdmissionGate | None = None,
        ticket: Ticket | None = None,
    ) -> None:
        self._broker = broker
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._client: Client | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._close_after_flush = False
        # Admission (admission.py): asked in connection_made unless a ticket came with the
        # connection (TLS, admitted before its handshake).
        self._gate = gate
        self._ticket = ticket
        self._awaiting_connect = ticket is not None
        self.peer = "?"
        # The hub's own address of this connection ("ip:port"), for the HTTP APIs.
        self.local = "?"

    @property
    def connected(self) -> bool:
        """Whether ``connection_made`` has run (a TLS connection: its handshake is done)."""
        return self._transport is not None

    # asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement its interface.
        self._transport = transport  # type: ignore[assignment]
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple) and len(peername) >= 2:
            self.peer = f"{peername[0]}:{peername[1]}"
        sockname = transport.get_extra_info("sockname")
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            self.local = f"{sockname[0]}:{sockname[1]}"
        gate = self._gate
        if gate is not None and self._ticket is None:
            host = peername[0] if isinstance(peername, tuple) and peername else "?"
            self._ticket = gate.admit(str(host))
            if self._ticket is None:
                transport.close()  # refused: the broker never sees it
                return
            self._awaiting_connect = True
        self._client = self._broker.connection_made(self)

    def data_received(self, data: bytes) -> None:
        client = self._client
        if client is not None:
            client.data_received(data)
            # CONNECT answered (accepted or refused) or the connection ending: it no longer
            # counts as waiting for CONNECT (the broker handles CONNECT synchronously).
            if self._awaiting_connect and (client.connected or client.closed):
                self._awaiting_connect = False
                if self._ticket is not None:
                    self._ticket.connect_done()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        client, self._client = self._client, None
        self._pending.clear()
        self._pending_bytes = 0
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            ticket.release()
        if client is not None:
            client.connection_lost()

    # Link ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._close_after_flush or self._transport is None:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)
        self._pending_bytes += len(data)

    def _flush(self) -> None:
        transport = self._transport
        pending = self._pending
        if transport is None or transport.is_closing():
            pending.clear()
            self._pending_bytes = 0
            return
        if pending:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            self._pending_bytes = 0
            transport.write(data)
        if self._close_after_flush:
            transport.close()

    def close(self) -> None:
        if self._transport is None or self._close_after_flush:
            return
        self._close_after_flush = True
        if not self._pending:
            self._loop.call_soon(self._flush)

    def buffered(self) -> int:
        transport = self._transport
        if transport is None:
            return 0
        return self._pending_bytes + transport.get_write_buffer_size()


class TLSAdmission(asyncio.Protocol):
    """A new connection on the TLS port, admitted (or refused) before its handshake, then
    wrapped in the event loop's own TLS layer around an :class:`MQTTStreamProtocol` that
    holds its ticket: exactly what ``loop.create_server(ssl=...)`` does for each connection
    (uvloop's ``UVStreamServer._on_listen``, asyncio's ``_accept_connection2``), with the gate
    in front. Done within ``connection_made``, so that no byte of the handshake can arrive
    before the TLS layer is there (``loop.start_tls`` would start only on the next loop
    iteration). The handshake must end within ``mqtt.connect_timeout``."""

    __slots__ = ("_broker", "_context", "_gate", "_loop")

    def __init__(
        self,
        broker: Broker,
        loop: asyncio.AbstractEventLoop,
        context: ssl.SSLContext,
        gate: AdmissionGate | None,
    ) -> None:
        self._broker = broker
        self._loop = loop
        self._context = context
        self._gate = gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ticket = None
        if self._gate is not None:
            peername = transport.get_extra_info("peername")
            host = peername[0] if isinstance(peername, tuple) and peername else "?"
            ticket = self._gate.admit(str(host))
            if ticket is None:
                transport.close()
                return
        loop = self._loop
        protocol = MQTTStreamProtocol(self._broker, loop, ticket=ticket)
        waiter: asyncio.Future[None] = loop.create_future()
        tls = _ssl_protocol_class(loop)(
            loop,
            protocol,
            self._context,
            waiter,
            server_side=True,
            ssl_handshake_timeout=self._broker.settings.connect_timeout,
        )
        transport.set_protocol(tls)
        tls.connection_made(transport)

        def handshake_done(done: asyncio.Future[None]) -> None:
            # A failed handshake (or a connection lost during it) never reaches the MQTT
            # protocol, whose connection_lost would release the ticket.
            failed = done.cancelled() or done.exception() is not None
            if failed or not protocol.connected:
                transport.close()
                if ticket is not None:
                    ticket.release()

        waiter.add_done_callback(handshake_done)


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
    ssl_context: ssl.SSLContext | None = None,
    gate: AdmissionGate | None = None,
) -> asyncio.Server:
    """Serve MQTT on ``host:port`` (TLS with ``ssl_context``), admitting connections through
    ``gate`` when given."""
    loop = asyncio.get_running_loop()
    factory: Callable[[], asyncio.Protocol]
    if ssl_context is None:

        def factory() -> asyncio.Protocol:
            return MQTTStreamProtocol(broker, loop, gate)

    else:
        context = ssl_context

        def factory() -> asyncio.Protocol:
            return TLSAdmission(broker, loop, context, gate)

    return await loop.create_server(factory, host=host, port=port, reuse_address=True, backlog=4096)


def make_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context
