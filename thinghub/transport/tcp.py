"""MQTT over TCP and TLS: an asyncio Protocol per connection (no streams: one callback per read,
many packets per read), with writes coalesced per event-loop iteration so that a burst of
deliveries to one client becomes one ``send()`` system call."""

from __future__ import annotations

import asyncio
import logging
import ssl

from ..broker.broker import Broker
from ..broker.client import Client

log = logging.getLogger("thinghub.transport")


class MQTTStreamProtocol(asyncio.Protocol):
    """One client connection; implements the broker's ``Link``."""

    __slots__ = (
        "_broker",
        "_client",
        "_close_after_flush",
        "_loop",
        "_pending",
        "_pending_bytes",
        "_transport",
        "local",
        "peer",
    )

    def __init__(self, broker: Broker, loop: asyncio.AbstractEventLoop) -> None:
        self._broker = broker
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._client: Client | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._close_after_flush = False
        self.peer = "?"
        # The hub's own address of this connection ("ip:port"), for the HTTP APIs.
        self.local = "?"

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
        self._client = self._broker.connection_made(self)

    def data_received(self, data: bytes) -> None:
        client = self._client
        if client is not None:
            client.data_received(data)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        client, self._client = self._client, None
        self._pending.clear()
        self._pending_bytes = 0
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


async def start_tcp_listener(
    broker: Broker,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: MQTTStreamProtocol(broker, loop),
        host=host,
        port=port,
        ssl=ssl_context,
        reuse_address=True,
        backlog=4096,
    )


def make_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context
