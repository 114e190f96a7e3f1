"""The delivery trace: what became of each recent message, per session (docs/architecture.md,
*Delivery trace*).

The broker reports to a ``TraceRecorder`` from its delivery path (broker.py, fanout.py,
queue.py, client.py); when tracing is off it holds None, and every report point costs one
attribute check. Everything runs on the event loop.

Bounds (``[trace]`` in config.py). The recorder is a ring of ``max_messages`` slots: a new
message takes the oldest slot, so the trace never holds more, whatever the traffic. A trace
older than ``max_age_s`` is no longer shown (its slot is reused in turn). Per message, the
events of at most ``max_sessions`` sessions are kept (``EVENTS_PER_SESSION`` each, the last
always holding the latest), besides counts by event: a broadcast to 100,000 devices costs as
much as one to ``max_sessions``.

How many (``max_mqtt_per_second``). A message an API call published (it has a MessageId, which
the caller holds) is always traced. An MQTT publish is traced while fewer than
``max_mqtt_per_second`` were traced in the current second; past it, it is counted in
``over_budget`` and not traced: no MessageId, no slot, nothing recorded. Tracing every
message would cost a hub at full speed 20-50% of its throughput in CPython (a fan-in at
190,000 msgs/s, ~5 µs each, pays 1.2 µs more per QoS 0 message, 3 µs per QoS 1), and the
ring would keep well under a second of them anyway; with a budget the cost has a ceiling
(1,000 traces/s: about 0.2% of one core) whatever the rate, and the traces kept span
``max_messages / max_mqtt_per_second`` seconds at least. 0: no budget, every message.

What it costs (measured by bench/trace_cost.py). A message costs its MessageId (the hub's
generator: lock-free within a millisecond, registry/ids.py), one tuple of what it is (its id
and start time included: one store in its slot) and a few list stores; its start time is the
broker's ``received_at`` stamp, not another clock reading. Nothing else is allocated for the
hot case, a QoS 0 fan-out: ``fan_out`` appends the client ids of the first ``max_sessions``
sessions it handed a copy to into the slot's own list (reused by every message the slot
holds), and a QoS 0 copy handed to a connected client *is* sent unless the broker reports a
drop (offline, slow consumer, too large). Everything else (QoS 1/2 copies, drops) is one
event: a dict lookup by MessageId and a tuple appended to the session's list.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from ..errors import ThingHubError
from ..message import Message
from . import fates

log = logging.getLogger("thinghub.trace")

#: events kept per session; past it the last slot is overwritten, so the latest fate shows
EVENTS_PER_SESSION: Final = 8

# What happened to the message as a whole (the JSON's ``outcome``).
ROUTED: Final = "routed"  # handed to at least one session
NO_SUBSCRIBER: Final = "no_subscriber"  # no subscription matched (No Local counts as none)
NOT_AUTHORIZED: Final = "not_authorized"  # hidden from every subscriber (mqtt.deny_subscribe)
SERVICE: Final = "handled_by_service"  # taken by a hub service (AWS device shadows)
REFUSED: Final = "refused"  # the admission gate refused it (broker/admission.py)

#: ``begin``'s answer for a message that is not traced
UNTRACED: Final = -1

#: one event: (what, clock time, detail: the copy's QoS, or the receiver's reason code)
Event = tuple[int, float, int]
# What a message is: (MessageId, account, topic, QoS, retain, origin, payload bytes, started).
_Head = tuple[int, str, str, int, bool, str, int, float]
_COUNT: Final = fates.COUNT
_FIRST_DROP: Final = fates.FIRST_DROP
_NO_COUNTS = (0,) * _COUNT


@dataclass(frozen=True, slots=True)
class MessageTrace:
    """One message's trace as read (``TraceRecorder.get``): what report.py renders."""

    id: int
    account: str
    topic: str
    qos: int
    retain: bool
    origin: str
    payload_bytes: int
    #: the recorder's clock (monotonic) at the publish, and the wall-clock time it was
    started: float
    published_at: float
    outcome: str
    reason: str
    #: copies handed to sessions (fan-out and direct sends); of those, QoS 1/2 copies
    #: offered to a session queue; QoS 0 copies dropped
    copies: int
    offered: int
    qos0_dropped: int
    #: events by kind, the first sessions handed a copy, the events of the first sessions
    #: that had any (None: there were none)
    counts: list[int]
    handed: list[str]
    sessions: dict[str, list[Event]] | None


class TraceRecorder:
    """The recent messages' traces, by MessageId (see the module docstring). The broker
    reports through ``begin`` (which answers the message's slot) and the slot methods while
    it routes a message, and through the MessageId methods afterwards."""

    __slots__ = (
        "_budget_left",
        "_clock",
        "_counts",
        "_debug",
        "_heads",
        "_index",
        "_next",
        "_offered",
        "_outcomes",
        "_qos0_dropped",
        "_sessions",
        "_stamped",
        "_window_end",
        "copies",
        "handed",
        "max_age_s",
        "max_messages",
        "max_mqtt_per_second",
        "max_sessions",
        "over_budget",
        "spent_until",
        "traced",
    )

    def __init__(
        self,
        *,
        max_messages: int,
        max_age_s: float,
        max_sessions: int,
        max_mqtt_per_second: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_messages = size = max_messages
        self.max_age_s = max_age_s
        #: sessions recorded per message (the rest are counted only)
        self.max_sessions = max_sessions
        # Monotonic, for event times and ages: the event loop's own clock has millisecond
        # steps (uvloop), too coarse to tell a PUBLISH from its PUBACK on loopback.
        self._clock = clock
        # The broker stamps each message it accepts with time.monotonic() (Message
        # received_at, Broker._route): with that clock, a message's start is its stamp.
        self._stamped = clock is time.monotonic
        # The level is set before the hub starts (cli.py): asked once, not per message.
        self._debug = log.isEnabledFor(logging.DEBUG)
        self._index: dict[int, int] = {}  # MessageId -> slot
        self._next = 0  # the slot the next message takes (the oldest)
        # The ring, one entry per slot: what the message is (None: never used).
        self._heads: list[_Head | None] = [None] * size
        # What happened besides QoS 0 sends, kept once there is an event (QoS 0 fan-outs
        # have none): the events of the first sessions that had any, by client id; events
        # by kind (fates.py) for every session, recorded or not (COUNT per slot); QoS 1/2
        # copies offered to a session queue and QoS 0 copies dropped (a QoS 0 send is not
        # an event: report.py counts them from these). Reset only when they were used.
        self._sessions: list[dict[str, list[Event]] | None] = [None] * size
        self._counts = [0] * (size * _COUNT)
        self._offered = [0] * size
        self._qos0_dropped = [0] * size
        # The outcome and why, when the message was not routed (refused, hidden, taken by a
        # service); None: ROUTED if copies were handed over, else NO_SUBSCRIBER.
        self._outcomes: list[tuple[str, str] | None] = [None] * size
        #: per slot: copies handed over, and the client ids ``fan_out`` fills (the slot's
        #: own list from its first message on, cleared for the next: nothing allocated)
        self.copies = [0] * size
        self.handed: list[list[str]] = [[]] * size
        #: MQTT publishes traced per second at most (0: all); see the module docstring
        self.max_mqtt_per_second = max_mqtt_per_second
        # What is left of this second's budget (-1: no budget), and when the second ends. A
        # second starts at the first MQTT publish after the last one ended, and the clock is
        # read only once its budget is spent: a publish within it costs one decrement.
        self._budget_left = 0 if max_mqtt_per_second > 0 else -1
        self._window_end = 0.0
        #: while the budget is spent: when its second ends (on the monotonic clock of the
        #: broker's ``received_at`` stamps); MQTT publishes stamped before it are not traced
        self.spent_until = 0.0
        #: messages traced; MQTT publishes left untraced because the budget was spent
        self.traced = 0
        self.over_budget = 0

    def __len__(self) -> int:
        return len(self._index)

    # ------------------------------------------------------------------ while routing

    def begin(self, message: Message, new_message_id: Callable[[], int]) -> int:
        """A message enters routing: its slot, new or (a copy sent again under the same id,
        as PubBroadcast does per device) the one it has; UNTRACED for the hub's own
        statistics under ``$SYS/`` (§4.7.2: they would push the clients' messages out) and
        when no MessageId can be issued (its lease cannot be written: a trace never costs a
        delivery). A message without an id (an MQTT publish) gets one now, which a debug log
        line shows."""
        topic = message.topic
        if topic.startswith("$SYS/"):
            return UNTRACED
        message_id = message.id
        index = self._index
        if message_id:
            slot = index.get(message_id)
            if slot is not None:
                return slot
        else:
            left = self._budget_left
            if left == 0:
                # This second's budget is spent: is it a new second yet?
                now = message.received_at if self._stamped else 0.0
                if not now:
                    now = self._clock()
                if now < self._window_end:
                    self.over_budget += 1
                    return UNTRACED
                self._window_end = now + 1.0
                left = self.max_mqtt_per_second
            if left > 0:
                left -= 1
                self._budget_left = left
                if not left and self._stamped:
                    # Spent: until the second ends the broker leaves MQTT publishes out
                    # without asking (a call costs more than its check of spent_until).
                    self.spent_until = self._window_end
            try:
                message_id = message.id = new_message_id()
            except ThingHubError:
                return UNTRACED
        self.traced += 1
        slot = self._next
        self._next = slot + 1 if slot + 1 < self.max_messages else 0
        heads = self._heads
        old = heads[slot]
        if old is None:
            self.handed[slot] = []  # the slot's first message: its list, for good
        else:
            del index[old[0]]
            # Only what the slot's last message used is reset.
            handed = self.handed[slot]
            if handed:
                handed.clear()
            if self._sessions[slot] is not None:
                # The slot's last message had events (every count comes with its dict).
                self._sessions[slot] = None
                base = slot * _COUNT
                self._counts[base : base + _COUNT] = _NO_COUNTS
                self._offered[slot] = self._qos0_dropped[slot] = 0
            if self._outcomes[slot] is not None:
                self._outcomes[slot] = None
        index[message_id] = slot
        started = message.received_at
        if not (started and self._stamped):
            started = self._clock()
        heads[slot] = (
            message_id,
            message.account,
            topic,
            message.qos,
            message.retain,
            message.origin,
            len(message.payload),
            started,
        )
        self.copies[slot] = 0
        if self._debug:
            log.debug(
                "message %d from %s to %r (QoS %d): `thinghub trace %d` shows its deliveries",
                message_id,
                message.origin or "(the hub)",
                topic,
                message.qos,
                message_id,
            )
        return slot

    def routed(self, slot: int, copies: int) -> None:
        """``fan_out`` handed ``copies`` copies over (and filled ``handed[slot]``)."""
        self.copies[slot] += copies

    def outcome(self, slot: int, outcome: str, reason: str = "") -> None:
        """What became of the message as a whole, when it was not routed."""
        self._outcomes[slot] = (outcome, reason)

    def hidden(self, slot: int, client_ids: Iterator[str]) -> None:
        """The topic is hidden from subscribers: none of the matched sessions gets it."""
        self.outcome(
            slot, NOT_AUTHORIZED, "the topic is hidden from subscribers (mqtt.deny_subscribe)"
        )
        for client_id in client_ids:
            self._record(slot, client_id, fates.NOT_AUTHORIZED, 0)

    def direct(self, message: Message, client_id: str, new_message_id: Callable[[], int]) -> None:
        """A copy sent to one session whatever it subscribed to (``Broker.send_direct``)."""
        slot = self.begin(message, new_message_id)
        if slot == UNTRACED:
            return
        self.copies[slot] += 1
        handed = self.handed[slot]
        if len(handed) < self.max_sessions:
            handed.append(client_id)

    # ------------------------------------------------------------------ by MessageId

    def offered(self, message_id: int, client_id: str, what: int, qos: int) -> None:
        """A QoS 1/2 copy reached the session's queue: SENT at once, QUEUED or QUEUE_FULL."""
        slot = self._index.get(message_id)
        if slot is None:
            return
        self._offered[slot] += 1
        self._counts[slot * _COUNT + what] += 1
        sessions = self._sessions[slot]
        if sessions is None:
            # The message's first event (the common case: one per QoS 1/2 message).
            self._sessions[slot] = {client_id: [(what, self._clock(), qos)]}
        else:
            self._keep(sessions, client_id, (what, self._clock(), qos))

    def event(self, message_id: int, client_id: str, what: int, detail: int = 0) -> None:
        """Something happened to the copy of ``message_id`` for ``client_id`` (fates.py);
        ``detail``: the copy's QoS (the receiver's reason code for REFUSED)."""
        slot = self._index.get(message_id)
        if slot is None:
            return  # older than the trace, or from before a restart
        self._counts[slot * _COUNT + what] += 1
        sessions = self._sessions[slot]
        if sessions is None:
            self._sessions[slot] = {client_id: [(what, self._clock(), detail)]}
        else:
            events = sessions.get(client_id)
            if events is not None and len(events) < EVENTS_PER_SESSION:
                # The common case: the next event of a copy (its PUBACK after its PUBLISH).
                events.append((what, self._clock(), detail))
            else:
                self._keep(sessions, client_id, (what, self._clock(), detail))
        if detail == 0 and what >= _FIRST_DROP:
            # A QoS 0 copy dropped (for REFUSED the detail is a reason code, never 0).
            self._qos0_dropped[slot] += 1

    def _record(self, slot: int, client_id: str, what: int, detail: int) -> None:
        self._counts[slot * _COUNT + what] += 1
        sessions = self._sessions[slot]
        if sessions is None:
            self._sessions[slot] = {client_id: [(what, self._clock(), detail)]}
        else:
            self._keep(sessions, client_id, (what, self._clock(), detail))

    def _keep(self, sessions: dict[str, list[Event]], client_id: str, event: Event) -> None:
        events = sessions.get(client_id)
        if events is None:
            if len(sessions) < self.max_sessions:
                sessions[client_id] = [event]
        elif len(events) < EVENTS_PER_SESSION:
            events.append(event)
        else:
            events[-1] = event

    # ------------------------------------------------------------------ reading

    def get(self, message_id: int) -> MessageTrace | None:
        """The trace of ``message_id``, unless it is unknown or older than ``max_age_s``."""
        slot = self._index.get(message_id)
        if slot is None:
            return None
        head = self._heads[slot]
        if head is None or self._clock() - head[7] > self.max_age_s:
            return None
        return self._read(slot, time.time() - self._clock())

    def recent(
        self, account: str, topic: str | None = None, limit: int = 100
    ) -> list[MessageTrace]:
        """The account's latest traces, newest first (of ``topic`` only, when given)."""
        found: list[MessageTrace] = []
        now = self._clock()
        to_wall = time.time() - now
        size = self.max_messages
        slot = self._next
        for _ in range(size):
            slot = slot - 1 if slot else size - 1
            head = self._heads[slot]
            if head is None or now - head[7] > self.max_age_s:
                break  # the slots before it are older still (or were never used)
            if head[1] == account and (topic is None or head[2] == topic):
                found.append(self._read(slot, to_wall))
                if len(found) >= limit:
                    break
        return found

    def _read(self, slot: int, to_wall: float) -> MessageTrace:
        head = self._heads[slot]
        assert head is not None
        message_id, account, topic, qos, retain, origin, payload_bytes, started = head
        base = slot * _COUNT
        copies = self.copies[slot]
        outcome, reason = self._outcomes[slot] or (ROUTED if copies else NO_SUBSCRIBER, "")
        return MessageTrace(
            id=message_id,
            account=account,
            topic=topic,
            qos=qos,
            retain=retain,
            origin=origin,
            payload_bytes=payload_bytes,
            started=started,
            published_at=started + to_wall,
            outcome=outcome,
            reason=reason,
            copies=copies,
            offered=self._offered[slot],
            qos0_dropped=self._qos0_dropped[slot],
            counts=self._counts[base : base + _COUNT],
            # A copy: the slot's list is cleared for its next message.
            handed=list(self.handed[slot]),
            sessions=self._sessions[slot],
        )
