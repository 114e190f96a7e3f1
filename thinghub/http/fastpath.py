"""A small HTTP/1.1 front on the hub's HTTP port: the hot API calls (AWS ``Publish``, the
Alibaba RPC endpoint) without aiohttp's per-request machinery; everything else, aiohttp.

Theory of operation
-------------------
aiohttp costs about 75 µs of CPU per request here (the do-nothing endpoint runs at ~13,000
requests/s on one core): request and response objects, routing, several awaits to write the
answer. That is as much as a signed ``Publish`` itself. So every connection starts with a
:class:`FastConnection`, which reads requests itself while they have the one plain shape the
SDKs send for those calls:

* an ASCII head of at most :data:`MAX_HEAD` bytes (below aiohttp's 8,190-byte limit of one
  field): ``METHOD SP target SP HTTP/1.1``, the target of RFC 3986 characters only, then at
  most :data:`MAX_HEADERS` ``name:value`` lines, names RFC 9110 tokens, values printable ASCII
  (tabs allowed), no name twice (aiohttp refuses some duplicates);
* a target that a route of :class:`FastRoutes` takes;
* at most one ``Content-Length``, of at most :data:`MAX_BODY` bytes; no ``Transfer-Encoding``,
  ``Content-Encoding``, ``Expect`` or ``Upgrade``; ``Connection`` absent or ``keep-alive``.

At the first request that is anything else (another route, a chunked or compressed body,
``Expect: 100-continue``, a large body, HTTP/1.0, ``Connection: close``, an odd byte, an
incomplete head past :data:`MAX_HEAD` ...) the connection is **handed over** to aiohttp, at
that request boundary, with every byte not yet consumed: aiohttp's protocol takes the
transport (``transport.set_protocol``) and serves that request and all later ones exactly as
if it had had the connection from the start. The fast path therefore never rejects or
interprets anything unusual itself: aiohttp's parser, its limits and its error answers apply
to all of it.

A request it keeps is given, as (method, raw target, headers, body), to the route's handler:
the same function the aiohttp route calls after reading the body (the dialects'
``serve``). The :class:`aiohttp.web.Response` it returns is written as aiohttp writes it: the
status line, its headers, then ``Content-Length``, ``Date`` and ``Server`` unless it set them.

Requests on one connection are answered in order, one at a time: pipelined requests wait in
the buffer, and reading pauses while more than :data:`MAX_BUFFER` bytes wait. While the
client does not read (writing paused), no further request is handled. An idle connection is
closed after :data:`KEEPALIVE_TIMEOUT` seconds (aiohttp's old default; the hub gives aiohttp the
same). :meth:`FastConnections.shutdown` (the application's ``on_shutdown``) closes idle
connections and lets busy ones finish their answer first.

Read timeouts
-------------
A client may take ``http.header_timeout`` seconds to send a request's head (counted from the
connection's start for its first request, from the request's first byte for later ones), then
``http.body_timeout`` seconds for its body; past either it is answered ``408 Request Timeout``
and the connection is closed (a connection that never sent a byte is just closed). Without
this a client trickling a byte now and then would hold its connection, and its descriptor,
for ever. aiohttp has neither timeout, so a handed-over connection keeps a thin
:class:`WatchedConnection` between its transport and aiohttp's protocol: it forwards every
event and keeps the same two clocks, told by the :func:`watch_requests` middleware when
aiohttp starts and finishes a request. The timeouts only bound how long a request may take to
*arrive*; how long an answer takes is the handler's business (RRpc, MQTT over WebSocket).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.typedefs import Handler
from multidict import CIMultiDict, CIMultiDictProxy

if TYPE_CHECKING:
    from ..transport.admission import AdmissionGate

__all__ = [
    "FAST_CONNECTIONS",
    "FAST_ROUTES",
    "KEEPALIVE_TIMEOUT",
    "MAX_BODY",
    "MAX_BUFFER",
    "MAX_HEAD",
    "MAX_HEADERS",
    "FastConnection",
    "FastConnections",
    "FastHandler",
    "FastRoutes",
    "FastSite",
    "ReadTimeouts",
    "WatchedConnection",
    "parse_head",
    "render_response",
    "watch_requests",
]

log = logging.getLogger("thinghub.http")

#: The largest request head (request line and headers) kept on the fast path: below aiohttp's
#: limit of one header field (8,190 bytes), so that no field it would refuse is kept here.
MAX_HEAD = 8000
#: The most header lines kept on the fast path (aiohttp refuses more than 128).
MAX_HEADERS = 100
#: The largest body kept on the fast path (every dialect accepts at least 128 KB).
MAX_BODY = 64 * 1024
#: Reading pauses while this many bytes wait behind the request being answered.
MAX_BUFFER = 256 * 1024
#: Idle keep-alive connections are closed after this long (aiohttp's default, 75 s).
KEEPALIVE_TIMEOUT = 75.0

#: (method, raw request target, headers, body) -> the answer.
FastHandler = Callable[[str, str, CIMultiDictProxy[str], bytes], Awaitable[web.StreamResponse]]

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# An origin-form request target of RFC 3986 characters (pchar, "/", "?", escapes).
_TARGET = re.compile(r"/[A-Za-z0-9\-._~%!$&'()*+,;=:@/?]*+")
# The header lines of a head: "name:value" lines joined by CRLF; values printable or tabs.
_HEADER_LINES = re.compile(rf"{_TOKEN}:[\t\x20-\x7e]*+(?:\r\n{_TOKEN}:[\t\x20-\x7e]*+)*+")
# Headers whose presence means a request this module does not serve (see the docstring).
_HAND_OVER_HEADERS = ("Transfer-Encoding", "Content-Encoding", "Expect", "Upgrade")


class FastRoutes:
    """The requests the fast path serves: an exact path, or a path prefix, per method."""

    __slots__ = ("_exact", "_prefixes")

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], FastHandler] = {}
        self._prefixes: list[tuple[str, str, FastHandler]] = []

    def add(self, method: str, path: str, handler: FastHandler, *, prefix: bool = False) -> None:
        if prefix:
            self._prefixes.append((method, path, handler))
        else:
            self._exact[(method, path)] = handler

    def match(self, method: str, target: str) -> FastHandler | None:
        """The handler for a raw request target, or None (then aiohttp serves it).

        Only plain paths match: no dot segments, escaped dots or fragments, which aiohttp's
        URL handling might resolve to another route."""
        path, _, _query = target.partition("?")
        if "/." in path or "#" in target or "%2e" in path or "%2E" in path:
            return None
        handler = self._exact.get((method, path))
        if handler is not None:
            return handler
        for route_method, route_prefix, route_handler in self._prefixes:
            if method == route_method and path.startswith(route_prefix):
                return route_handler
        return None


def parse_head(head: bytes) -> tuple[str, str, CIMultiDictProxy[str], int] | None:
    """(method, target, headers, Content-Length) of a request head (without its final empty
    line) that has the fast path's shape, else None."""
    if not head.isascii():
        return None
    request_line, _, lines = head.decode("ascii").partition("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or parts[2] != "HTTP/1.1":
        return None
    method, target, _version = parts
    if _TARGET.fullmatch(target) is None:
        return None
    if lines:
        if _HEADER_LINES.fullmatch(lines) is None:
            return None
        pairs = [(name, value.strip(" \t")) for name, _, value in _split_lines(lines)]
        headers = CIMultiDict(pairs)
        if len(pairs) > MAX_HEADERS or len({name.lower() for name, _ in pairs}) != len(pairs):
            return None
    else:
        headers = CIMultiDict()
    for name in _HAND_OVER_HEADERS:
        if name in headers:
            return None
    connection = headers.getall("Connection", None)
    if connection is not None and (len(connection) > 1 or connection[0].lower() != "keep-alive"):
        return None
    lengths = headers.getall("Content-Length", None)
    if lengths is None:
        length = 0
    else:
        if len(lengths) > 1 or not lengths[0].isdigit() or len(lengths[0]) > 9:
            return None
        length = int(lengths[0])
        if length > MAX_BODY:
            return None
    return method, target, CIMultiDictProxy(headers), length


def _split_lines(lines: str) -> list[tuple[str, str, str]]:
    return [line.partition(":") for line in lines.split("\r\n")]


def render_response(response: web.StreamResponse) -> bytes | None:
    """The bytes aiohttp writes for ``response`` to a keep-alive HTTP/1.1 request, or None
    for what only aiohttp can write (streamed, compressed or empty-by-status answers,
    cookies, a connection to close)."""
    if type(response) is not web.Response:
        return None
    body = response.body
    status = response.status
    if (
        type(body) is not bytes
        or status < 200
        or status in (204, 304)
        or response.chunked
        or response.compression
        or response.cookies
        or response.keep_alive is False
    ):
        return None
    headers = response.headers
    parts = [f"HTTP/1.1 {status} {response.reason}\r\n"]
    for name, value in headers.items():
        # aiohttp refuses to write these (header injection); so does this.
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"newline in response header {name!r}")
        parts.append(f"{name}: {value}\r\n")
    if "Content-Length" not in headers:
        parts.append(f"Content-Length: {len(body)}\r\n")
    if body and "Content-Type" not in headers:
        parts.append("Content-Type: application/octet-stream\r\n")
    if "Date" not in headers:
        parts.append(f"Date: {rfc822_formatted_time()}\r\n")
    if "Server" not in headers:
        parts.append(f"Server: {SERVER_SOFTWARE}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1") + body


# What aiohttp answers a handler that failed, before closing the connection.
_INTERNAL_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 25\r\nConnection: close\r\n\r\n500 Internal Server Error"
)
# A request that did not arrive in time (RFC 9110 §15.5.9), in the same form.
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 19\r\nConnection: close\r\n\r\n408 Request Timeout"
)
# Timers may fire this much before their time (libuv counts milliseconds).
_TIMER_SLACK = 0.002


class ReadTimeouts:
    """The read timeouts of one HTTP server (seconds; None: none), and where their expiries
    are counted (the admission gate's counters, shown at ``/metrics``)."""

    __slots__ = ("body", "gate", "header")

    def __init__(
        self,
        header: float | None = None,
        body: float | None = None,
        gate: AdmissionGate | None = None,
    ) -> None:
        self.header = header
        self.body = body
        self.gate = gate

    def expired(self, transport: asyncio.BaseTransport, *, body: bool, answer: bool) -> None:
        """Count one expiry; answer 408 (``answer``) and close."""
        gate = self.gate
        if gate is not None:
            if body:
                gate.http_body_timeouts += 1
            else:
                gate.http_header_timeouts += 1
        if answer:
            cast(asyncio.Transport, transport).write(_REQUEST_TIMEOUT)
        transport.close()


_NO_TIMEOUTS = ReadTimeouts()


class FastConnections:
    """The fast connections of one server, for shutdown."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: set[FastConnection] = set()

    def __len__(self) -> int:
        return len(self._open)

    def add(self, connection: FastConnection) -> None:
        self._open.add(connection)

    def discard(self, connection: FastConnection) -> None:
        self._open.discard(connection)

    async def shutdown(self, grace_s: float = 60.0) -> None:
        """Close idle connections now, busy ones after their answer (waiting at most
        ``grace_s`` seconds for them)."""
        tasks = [c.close_when_idle() for c in list(self._open)]
        busy = [task for task in tasks if task is not None]
        if busy:
            await asyncio.wait(busy, timeout=grace_s)


class FastConnection(asyncio.Protocol):
    """One connection of the HTTP port, on the fast path until it is handed over."""

    __slots__ = (
        "_body_since",
        "_buffer",
        "_busy",
        "_closing",
        "_connections",
        "_counted",
        "_deadline",
        "_deadline_timer",
        "_eof",
        "_fallback",
        "_head_since",
        "_idle_timer",
        "_last_active",
        "_loop",
        "_read_paused",
        "_routes",
        "_task",
        "_timeouts",
        "_transport",
        "_waiter",
        "_write_paused",
    )

    def __init__(
        self,
        fallback: Callable[[], asyncio.Protocol],
        routes: FastRoutes,
        connections: FastConnections,
        loop: asyncio.AbstractEventLoop,
        timeouts: ReadTimeouts = _NO_TIMEOUTS,
    ) -> None:
        self._fallback = fallback
        self._routes = routes
        self._connections = connections
        self._loop = loop
        self._timeouts = timeouts
        # When the head of the request being received began to arrive (the connection's
        # start for the first one; None between requests), and when its body began.
        self._head_since: float | None = None
        self._body_since: float | None = None
        # The read deadline being waited for, and the timer that wakes the task at it.
        self._deadline: float | None = None
        self._deadline_timer: asyncio.TimerHandle | None = None
        # Counted as open by the admission gate (its file descriptor budget).
        self._counted = False
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_active = 0.0
        self._eof = False
        self._busy = False
        self._closing = False
        self._read_paused = False
        self._write_paused = False

    # asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement its interface.
        self._transport = cast(asyncio.Transport, transport)
        gate = self._timeouts.gate
        if gate is not None:
            if not gate.http_opened():
                # Too few file descriptors left (transport/admission.py): close at once.
                self._closing = True
                transport.close()
                return
            self._counted = True
        self._connections.add(self)
        self._last_active = self._head_since = self._loop.time()
        self._idle_timer = self._loop.call_at(
            self._last_active + KEEPALIVE_TIMEOUT, self._check_idle
        )
        self._task = self._loop.create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._last_active = now = self._loop.time()
        if self._head_since is None:
            self._head_since = now  # the first byte of a new request
        if len(self._buffer) > MAX_BUFFER and not self._read_paused and self._transport:
            self._read_paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return True  # keep the transport: an answer may still be written; _serve closes it

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._clear_deadline()
        if self._counted:
            self._counted = False
            gate = self._timeouts.gate
            if gate is not None:
                gate.http_closed()
        self._wake()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake()

    # the connection's task ----------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def _serve(self) -> None:
        try:
            await self._serve_requests()
        except Exception:
            log.exception("HTTP connection failed")
            self._close()

    def _clear_deadline(self) -> None:
        self._deadline = None
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None

    def _deadline_due(self) -> None:
        self._deadline_timer = None
        self._deadline = None
        self._wake()

    def _past(self, deadline: float) -> bool:
        """Whether ``deadline`` has passed; if not, the task is woken when it does."""
        if self._loop.time() >= deadline - _TIMER_SLACK:
            return True
        if self._deadline != deadline:
            self._clear_deadline()
            self._deadline = deadline
            self._deadline_timer = self._loop.call_at(deadline, self._deadline_due)
        return False

    def _timed_out(self, *, body: bool) -> None:
        """The request did not arrive in time: 408 (unless not a byte of it came) and close."""
        self._closing = True
        self._connections.discard(self)
        if self._transport is not None and not self._transport.is_closing():
            self._timeouts.expired(self._transport, body=body, answer=bool(self._buffer))

    async def _serve_requests(self) -> None:
        transport = self._transport
        assert transport is not None
        buffer = self._buffer
        routes = self._routes
        timeouts = self._timeouts
        while True:
            if self._closing:
                self._close()
                return
            if self._write_paused:
                await self._wait()
                continue
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    self._hand_over()
                    return
                if self._eof:
                    self._close()
                    return
                header_timeout = timeouts.header
                since = self._head_since
                if (
                    header_timeout is not None
                    and since is not None
                    and self._past(since + header_timeout)
                ):
                    self._timed_out(body=False)
                    return
                await self._wait()
                continue
            parsed = parse_head(bytes(buffer[:end])) if end <= MAX_HEAD else None
            handler = None if parsed is None else routes.match(parsed[0], parsed[1])
            if parsed is None or handler is None:
                self._hand_over()
                return
            method, target, headers, length = parsed
            start = end + 4
            if len(buffer) < start + length:
                if self._eof:
                    self._close()  # the client will not send the rest of the body
                    return
                if self._body_since is None:
                    self._body_since = self._loop.time()
                body_timeout = timeouts.body
                if body_timeout is not None and self._past(self._body_since + body_timeout):
                    self._timed_out(body=True)
                    return
                await self._wait()
                continue
            body = bytes(buffer[start : start + length])
            del buffer[: start + length]
            # The next request's clocks: its head began now if bytes of it are here already.
            self._body_since = None
            self._head_since = self._loop.time() if buffer else None
            if self._deadline is not None:
                self._clear_deadline()
            if self._read_paused and len(buffer) <= MAX_BUFFER:
                self._read_paused = False
                transport.resume_reading()
            self._busy = True
            try:
                response = await handler(method, target, headers, body)
                data = render_response(response)
            except Exception:
                log.exception("HTTP %s %s failed", method, target.partition("?")[0])
                data = None
            finally:
                self._busy = False
            self._last_active = self._loop.time()
            if data is None:
                # Only a bug gets here (the dialects answer every error themselves).
                if not transport.is_closing():
                    transport.write(_INTERNAL_ERROR)
                self._close()
                return
            if not transport.is_closing():
                transport.write(data)

    def _hand_over(self) -> None:
        """Give the transport, and every byte not consumed, to aiohttp's protocol (behind a
        :class:`WatchedConnection`, which keeps the read timeouts and the gate's count)."""
        transport = self._transport
        assert transport is not None
        self._connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._clear_deadline()
        protocol = self._fallback()
        watched = WatchedConnection(
            protocol, transport, self._loop, self._timeouts, self._counted, self._head_since
        )
        self._counted = False  # the watcher's now
        transport.set_protocol(watched)
        protocol.connection_made(transport)
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        data = bytes(self._buffer)
        self._buffer.clear()
        if data:
            protocol.data_received(data)
        if self._eof and not protocol.eof_received():
            transport.close()

    def _close(self) -> None:
        self._closing = True
        self._connections.discard(self)
        if self._transport is not None:
            self._transport.close()

    def _check_idle(self) -> None:
        self._idle_timer = None
        if self._closing:
            return
        # Idle: no answer being prepared, and nothing received or sent for the timeout
        # (a head that stays incomplete that long counts as idle too).
        due = self._last_active + KEEPALIVE_TIMEOUT
        if self._busy or self._loop.time() < due:
            self._idle_timer = self._loop.call_at(
                max(due, self._loop.time() + 1.0), self._check_idle
            )
            return
        self._close()
        self._wake()

    def close_when_idle(self) -> asyncio.Task[None] | None:
        """Close now if idle; else return the task, which closes after its answer."""
        if self._closing:
            return None
        self._closing = True
        if not self._busy:
            self._close()
            self._wake()
            return None
        return self._task


class WatchedConnection(asyncio.Protocol):
    """Between a handed-over connection's transport and aiohttp's protocol: forwards every
    event to aiohttp, and keeps the read timeouts aiohttp does not have (module docstring).

    The head clock runs while aiohttp waits for a request and bytes of one have arrived; it
    stops when the :func:`watch_requests` middleware reports the request started. The body
    clock runs from then until aiohttp has the whole body (the payload's end of file), also
    after an answer that did not wait for it (aiohttp then reads and drops the rest)."""

    __slots__ = (
        "_body_timer",
        "_counted",
        "_head_timer",
        "_in_request",
        "_loop",
        "_mark",
        "_protocol",
        "_received",
        "_request_no",
        "_timeouts",
        "_transport",
    )

    def __init__(
        self,
        protocol: asyncio.Protocol,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        timeouts: ReadTimeouts,
        counted: bool,
        head_since: float | None,
    ) -> None:
        self._protocol = protocol
        self._transport = transport
        self._loop = loop
        self._timeouts = timeouts
        self._counted = counted
        self._in_request = False
        self._request_no = 0
        self._received = 0  # bytes received since the hand-over
        self._mark = 0  # ... when the current request's body was complete
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        if head_since is not None and timeouts.header is not None:
            self._head_timer = loop.call_at(head_since + timeouts.header, self._head_due)

    # asyncio.Protocol, forwarded ----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        if not self._in_request and self._head_timer is None and self._body_timer is None:
            header = self._timeouts.header
            if header is not None:
                self._head_timer = self._loop.call_later(header, self._head_due)
        self._protocol.data_received(data)

    def eof_received(self) -> bool | None:
        return self._protocol.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self._counted:
            self._counted = False
            gate = self._timeouts.gate
            if gate is not None:
                gate.http_closed()
        self._protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._protocol.resume_writing()

    # the middleware's reports -------------------------------------------------------------

    def request_started(self, request: web.BaseRequest) -> int:
        self._in_request = True
        self._request_no += 1
        number = self._request_no
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._mark = self._received
        content = request.content
        body = self._timeouts.body
        if body is not None and request.body_exists and not content.is_eof():
            self._body_timer = self._loop.call_later(body, self._body_due, request, number)
            content.on_eof(lambda: self._body_done(number))
        return number

    def request_finished(self, number: int) -> None:
        if number != self._request_no:
            return
        self._in_request = False
        if self._body_timer is not None:
            return  # the body is still arriving: its clock goes on (_body_done, _body_due)
        header = self._timeouts.header
        # Bytes after this request's body: (part of) the next head is already here.
        if header is not None and self._received > self._mark and self._head_timer is None:
            self._head_timer = self._loop.call_later(header, self._head_due)

    # timers -------------------------------------------------------------------------------

    def _body_done(self, number: int) -> None:
        if number == self._request_no:
            self._mark = self._received
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

    def _head_due(self) -> None:
        self._head_timer = None
        transport = self._transport
        if self._in_request or transport.is_closing():
            return
        # 408 unless an answer may still be on its way out (it would be cut in two).
        answer = transport.get_write_buffer_size() == 0
        self._timeouts.expired(transport, body=False, answer=answer)

    def _body_due(self, request: web.BaseRequest, number: int) -> None:
        self._body_timer = None
        transport = self._transport
        if number != self._request_no or request.content.is_eof() or transport.is_closing():
            return
        # 408 unless the handler has begun to answer already (then just close).
        answer = request.writer.output_size == 0 and transport.get_write_buffer_size() == 0
        self._timeouts.expired(transport, body=True, answer=answer)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None


@web.middleware
async def watch_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tells a handed-over connection's :class:`WatchedConnection` when aiohttp starts and
    finishes a request (its head has arrived; its answer is being written)."""
    transport = request.transport
    watched = transport.get_protocol() if transport is not None else None
    if not isinstance(watched, WatchedConnection):
        return await handler(request)
    number = watched.request_started(request)
    try:
        return await handler(request)
    finally:
        watched.request_finished(number)


#: Set on the hub's application by ``build_http_app``: the routes the fast path serves (the
#: dialects' ``add_routes`` add theirs) and its open connections (closed at shutdown).
FAST_ROUTES = web.AppKey("fast_routes", FastRoutes)
FAST_CONNECTIONS = web.AppKey("fast_connections", FastConnections)


class FastSite(web.TCPSite):
    """``web.TCPSite`` whose connections start on the fast path, when the application has
    fast routes (``FAST_ROUTES`` and ``FAST_CONNECTIONS``) and the site is plain TCP; else
    exactly a TCPSite. ``timeouts``: the read timeouts of its connections (none by default)
    and the admission gate that may refuse new ones (transport/admission.py)."""

    def __init__(self, *args: Any, timeouts: ReadTimeouts = _NO_TIMEOUTS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timeouts = timeouts

    async def start(self) -> None:
        runner = self._runner
        app = runner.app if isinstance(runner, web.AppRunner) else None
        routes = app.get(FAST_ROUTES) if app is not None else None
        connections = app.get(FAST_CONNECTIONS) if app is not None else None
        if routes is None or connections is None or self._ssl_context is not None:
            await super().start()
            return
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        server = runner.server
        assert server is not None

        timeouts = self._timeouts

        def connection() -> FastConnection:
            return FastConnection(server, routes, connections, loop, timeouts)

        # As TCPSite.start does, with the protocol factory above.
        self._server = await loop.create_server(
            connection,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
