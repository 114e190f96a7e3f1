"""The live tail: the messages published in the session's account that match a topic filter,
sent to the browser over a WebSocket (``/console/ws/tail?filter=...``).

Theory of operation
-------------------
* **An observer, not a subscriber.** The tail is a broker ``Watch`` (broker/space.py,
  ``Broker.watch``, the seam RRpc waits for replies with): the broker calls it for every
  message routed in the account whose topic the filter matches, before fan-out, with no
  session, QoS or queue of its own, so it changes nothing any client gets. What the broker
  sends to one client only (``send_direct``) is not published to a topic, and not shown.
  Topics the operator hides from subscribers (``mqtt.deny_subscribe``) are hidden here too.
* **Bounded.** The callback runs inside the publish, on the event loop: it only copies what
  the page shows (the topic, the first ``console.tail_payload_bytes`` of the payload and a
  few fields) into a deque of at most ``console.tail_queue`` entries, or counts the message
  as dropped when the deque is full, and wakes the sender. The sender task sends what waits
  as one JSON frame and waits for the socket to take it, so a browser that reads slowly
  makes the deque fill and messages drop (the page shows the count); memory never grows.
* **Limits.** At most ``console.max_tails_per_session`` tails per session and
  ``console.max_tails`` in the hub (429 beyond). A tail ends when the page closes it, when
  its session ends (checked every second) or when the hub stops.

Frames to the page (JSON text): ``{"type": "ready", "filter": F}``, then ``{"type":
"messages", "items": [...], "dropped": N}`` where ``N`` counts every message dropped since the
tail began; ``{"type": "end", "reason": R}`` before the hub closes it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from ..broker.auth import DenyList
from ..broker.broker import Broker
from ..message import Message
from ..topics import SHARE_PREFIX, validate_topic_filter
from .errors import TOO_MANY, ConsoleError
from .sessions import ConsoleSession

__all__ = ["PROTOCOL", "Tail", "TailBook", "check_filter"]

#: the subprotocol the page asks for (beside ``csrf.<token>``, guard.py)
PROTOCOL = "thinghub-console"
# How often a tail looks whether its session is still live (seconds).
_SESSION_CHECK_S = 1.0
# Entries sent in one frame at most (the rest go in the next).
_BATCH = 200


def check_filter(topic_filter: str, max_length: int) -> str:
    """A topic filter the tail may watch: valid MQTT, and not a shared subscription (a
    tail takes no share of anyone's messages). Raises ConsoleError (400)."""
    if topic_filter.startswith(SHARE_PREFIX):
        raise ConsoleError.bad("A live tail takes a plain topic filter, not $share/...")
    error = validate_topic_filter(topic_filter, max_length=max_length)
    if error is not None:
        raise ConsoleError.bad(f"Not a valid topic filter: {error}.")
    return topic_filter


class Tail:
    """One browser's tail: the bounded deque between the broker's callback and the sender."""

    __slots__ = ("_queue", "_wakeup", "dropped", "hidden", "max_payload", "max_queue", "sent")

    def __init__(self, max_queue: int, max_payload: int, hidden: DenyList | None) -> None:
        self.max_queue = max_queue
        self.max_payload = max_payload
        self.hidden = hidden
        self._queue: deque[dict[str, Any]] = deque()
        self._wakeup = asyncio.Event()
        self.dropped = 0
        self.sent = 0

    def __len__(self) -> int:
        return len(self._queue)

    def observe(self, message: Message) -> None:
        """The broker's callback (``Broker.watch``): runs inside the publish; must be cheap."""
        if self.hidden is not None and self.hidden.hides(message.topic):
            return
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            return
        self._queue.append(_entry(message, self.max_payload))
        self._wakeup.set()

    def take(self, limit: int = _BATCH) -> list[dict[str, Any]]:
        queue = self._queue
        items = [queue.popleft() for _ in range(min(limit, len(queue)))]
        if not queue:
            self._wakeup.clear()
        self.sent += len(items)
        return items

    async def wait(self, seconds: float) -> None:
        """Until something waits to be sent, or ``seconds`` pass."""
        if self._queue:
            return
        try:
            async with asyncio.timeout(seconds):
                await self._wakeup.wait()
        except TimeoutError:
            pass


def _entry(message: Message, max_payload: int) -> dict[str, Any]:
    """What the page shows of ``message``: a bounded copy, made now (the message object is not
    kept, so neither is its payload)."""
    payload = message.payload
    shown = payload[:max_payload]
    entry: dict[str, Any] = {
        "topic": message.topic,
        "qos": message.qos,
        "retain": message.retain,
        "bytes": len(payload),
        "truncated": len(payload) > max_payload,
        "origin": message.origin,
        # A string: MessageIds use 63 bits, past what a JavaScript number holds exactly.
        "messageId": str(message.id) if message.id else None,
        "at": int(time.time() * 1000),
    }
    try:
        entry["payload"] = shown.decode("utf-8")
        entry["encoding"] = "utf8"
    except UnicodeDecodeError:
        entry["payload"] = base64.b64encode(shown).decode("ascii")
        entry["encoding"] = "base64"
    content_type = message.properties.content_type
    if content_type:
        entry["contentType"] = content_type
    return entry


class TailBook:
    """The hub's tails, counted per session and in all (the limits in the module notes)."""

    def __init__(self, *, max_per_session: int, max_total: int) -> None:
        self.max_per_session = max_per_session
        self.max_total = max_total
        self.sockets: set[web.WebSocketResponse] = set()

    def admit(self, session: ConsoleSession) -> None:
        """Count a new tail of ``session``, or raise ConsoleError (429)."""
        if session.tails >= self.max_per_session:
            raise ConsoleError(
                TOO_MANY,
                f"This session has {session.tails} live tails, the most it may have; "
                "close one first.",
            )
        if len(self.sockets) >= self.max_total:
            raise ConsoleError(TOO_MANY, "The hub runs as many live tails as it may; try later.")
        session.tails += 1

    async def close_all(self) -> None:
        """At shutdown: tell every page, then close."""
        for ws in list(self.sockets):
            await _end(ws, "the hub is stopping")


async def run_tail(
    ws: web.WebSocketResponse,
    broker: Broker,
    session: ConsoleSession,
    topic_filter: str,
    tail: Tail,
    alive: Callable[[ConsoleSession], bool],
) -> None:
    """Serve one prepared WebSocket until the page or the session ends it."""
    watch = broker.watch(session.account_id, topic_filter, tail.observe)
    sender = asyncio.create_task(_send(ws, session, tail, alive, topic_filter))
    try:
        async for frame in ws:
            # The page sends nothing the tail needs (pausing is the page's own); a text
            # frame is ignored, anything else ends the tail.
            if frame.type is not WSMsgType.TEXT:
                break
    finally:
        watch.cancel()
        sender.cancel()
        try:
            await sender
        except asyncio.CancelledError:
            pass
        if not ws.closed:
            await ws.close()


async def _send(
    ws: web.WebSocketResponse,
    session: ConsoleSession,
    tail: Tail,
    alive: Callable[[ConsoleSession], bool],
    topic_filter: str,
) -> None:
    await ws.send_str(json.dumps({"type": "ready", "filter": topic_filter}))
    dropped_told = 0
    try:
        while True:
            await tail.wait(_SESSION_CHECK_S)
            if not alive(session):
                await _end(ws, "the session ended")
                return
            items = tail.take()
            if items or tail.dropped != dropped_told:
                dropped_told = tail.dropped
                frame = {"type": "messages", "items": items, "dropped": dropped_told}
                # Waits while the socket's buffer is full: the deque fills meanwhile.
                await ws.send_str(json.dumps(frame, ensure_ascii=False))
    except (ConnectionError, RuntimeError):
        return


async def _end(ws: web.WebSocketResponse, reason: str) -> None:
    try:
        await ws.send_str(json.dumps({"type": "end", "reason": reason}))
        await ws.close()
    except (ConnectionError, RuntimeError):
        pass
