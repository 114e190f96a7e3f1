"""MQTT over WebSocket (MQTT 5.0 §6): binary frames carry the byte stream, subprotocol "mqtt",
served at ``/mqtt`` on the HTTP port. A frame may hold part of a packet or several packets
[MQTT-6.0.0-2]; the sans-IO decoder copes with both. Text frames close the connection
[MQTT-6.0.0-1]. Writes are coalesced and sent by one writer task per connection.

An upgrade passes the admission gate (``admission.py``) first, as a TCP connection does: a
refused one is answered 503 and its connection closed.

An upgrade request may carry a credential in its URL: AWS IoT's SigV4 presigned form
(``/mqtt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=...&X-Amz-Signature=...``, what
the AWS IoT device SDKs' ``websockets_with_default_aws_signing`` sends). The application's
``HANDSHAKE_SIGN_IN`` (``auth/signed_url.py``) checks it before the upgrade: a bad one is
answered 403 with the reason, as AWS IoT answers; a good one becomes the connection's
``credential``, which its CONNECT is judged by (``broker/auth.py``). The same handler serves
``/mqtt`` on the HTTP port and on the TLS port (``tcp.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from aiohttp import WSMsgType, web

from ..broker.auth import Credential, CredentialRefused
from ..broker.broker import Broker
from .admission import AdmissionGate

log = logging.getLogger("thinghub.transport")


class HandshakeSignIn(Protocol):
    """Reads the credential of an upgrade request (``HANDSHAKE_SIGN_IN``)."""

    def credential(
        self, method: str, raw_target: str, headers: Mapping[str, str]
    ) -> Credential | None:
        """The request's credential, None when it carries none; raises
        ``CredentialRefused`` when it carries one that does not hold."""
        ...


#: the application's reader of upgrade credentials (set by thinghub/app.py; absent: none)
HANDSHAKE_SIGN_IN = web.AppKey("thinghub.handshake_sign_in", HandshakeSignIn)


class WebSocketLink:
    """Implements the broker's ``Link`` over an aiohttp WebSocket."""

    __slots__ = ("_closing", "_pending", "_pending_bytes", "_wakeup", "_ws", "credential", "peer")

    def __init__(
        self, ws: web.WebSocketResponse, peer: str, credential: Credential | None = None
    ) -> None:
        self._ws = ws
        self.peer = peer
        # What the upgrade request proved (broker/auth.py), for the CONNECT.
        self.credential = credential
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._closing = False
        self._wakeup = asyncio.Event()

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        self._wakeup.set()

    def close(self) -> None:
        self._closing = True
        self._wakeup.set()

    def buffered(self) -> int:
        return self._pending_bytes

    async def run_writer(self) -> None:
        ws = self._ws
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._pending:
                data = b"".join(self._pending)
                self._pending.clear()
                self._pending_bytes = 0
                try:
                    await ws.send_bytes(data)
                except (ConnectionError, RuntimeError):
                    self._closing = True
            if self._closing:
                await ws.close()
                return


def websocket_handler(
    broker: Broker, gate: AdmissionGate | None = None
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    max_frame = broker.settings.max_packet_size + 8

    async def handle(request: web.Request) -> web.StreamResponse:
        sign_in = request.app.get(HANDSHAKE_SIGN_IN)
        credential = None
        if sign_in is not None:
            try:
                credential = sign_in.credential(request.method, request.raw_path, request.headers)
            except CredentialRefused as refusal:
                log.info("WebSocket upgrade from %s refused: %s", request.remote, refusal)
                refused = web.Response(status=403, text=str(refusal))
                refused.force_close()
                return refused
        # The key this connection is counted under at the gate, and whether it still waits
        # for its CONNECT (see admission.py and tcp.py).
        address = None
        pending = False
        if gate is not None:
            address = gate.admit(request.remote or "?")
            if address is None:
                refused = web.Response(status=503, text="too many connections")
                refused.force_close()
                return refused
            pending = True
        try:
            ws = web.WebSocketResponse(protocols=("mqtt",), max_msg_size=max_frame, autoping=True)
            await ws.prepare(request)
        except BaseException:
            if gate is not None and address is not None:
                gate.release(address, pending=pending)
            raise
        peer = f"ws:{request.remote}"
        link = WebSocketLink(ws, peer, credential)
        client = broker.connection_made(link)
        writer = asyncio.create_task(link.run_writer())
        try:
            async for frame in ws:
                if frame.type == WSMsgType.BINARY:
                    client.data_received(frame.data)
                    if pending and (client.connected or client.closed):
                        pending = False
                        if gate is not None:
                            gate.connect_done()  # CONNECT answered (see tcp.py)
                    if client.closed:
                        break
                elif frame.type == WSMsgType.TEXT:
                    log.info("closing %s: text frame on an MQTT WebSocket", peer)
                    break
                else:
                    break
        finally:
            # The client is gone first (its will must not wait for a closing handshake with
            # a peer that may have vanished), then the writer flushes and closes.
            client.connection_lost()
            if gate is not None and address is not None:
                gate.release(address, pending=pending)
            link.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, timeout=5)
        return ws

    return handle
