"""The delivery state of one session, and the only code that changes it.

A ``SessionQueue`` owns everything between "this session must get this QoS 1/2 message" and
"the receiver acknowledged it": the messages in flight (by packet identifier, in delivery
order), the queue waiting for room in the inflight window or for the client to come back,
the part of a persistent session's queue that is on disk only (read back a page at a time),
the in-flight messages to resend after a reconnect, the acknowledgement callbacks of spilled
messages, and the byte count that bounds it all. The broker and the connection ask it to do
things; neither touches its containers.

Invariants (checked by ``check`` and by tests/broker/test_session_queue_properties.py):

* ``queued_bytes`` is the size of every queued message, in memory and on disk;
* what is in flight and not waiting for a resend never exceeds the receiver's window (§4.9);
* packet identifiers in flight are unique (§2.2.1);
* order is kept: in flight first, then the memory queue, then what is on disk (§4.6);
* a persistent session's queued messages are on disk before anyone is told they are
  accepted (the journal calls are made here, the acknowledgement waits on the store's
  sequence: docs/architecture.md, *Acknowledged means stored*).

What it needs of the connection it delivers to is ``Receiver``: the seam where a connection
held by another node will plug in. What becomes of each copy (queued, sent, resent, received,
acknowledged, dropped and why) it reports to the delivery trace, ``DeliveryContext.trace``
(thinghub/trace/recorder.py), when tracing is on.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Protocol

from ..config import MQTTSettings
from ..message import Message
from ..store.base import BrokerStore, QueuedDelivery, StoredDelivery
from ..trace import fates
from .stats import Stats

if TYPE_CHECKING:
    from ..trace.recorder import TraceRecorder
    from .broker import AckTicket
    from .session import Session

log = logging.getLogger("thinghub.broker")


@dataclass(slots=True, eq=False)
class Outgoing:
    """A message on its way to one session at a given QoS."""

    message: Message
    qos: int
    retain: bool
    subscription_ids: tuple[int, ...] = ()
    packet_id: int = 0
    # QoS 2: PUBREC received and PUBREL sent; only PUBCOMP is awaited (§4.3.3).
    released: bool = False
    # Called when the receiver acknowledges it (PUBACK, or PUBCOMP), e.g. by an HTTP API
    # waiting for a device's confirmation.
    on_acked: Callable[[], None] | None = None
    # False while a QoS 2 copy for a persistent session waits for the store's commit: it is
    # not sent before it is durable (see Broker._deliver_outgoing).
    durable: bool = True
    # A copy from the cluster's message stream (``offer_stream``): JetStream keeps it, the
    # store never has it.
    streamed: bool = False
    # A streamed QoS 2 copy: records its release where another node resuming the session
    # finds it (cluster/consumers.py); what the PUBREL waits for (``release_ticket``).
    on_released: Callable[[], AckTicket] | None = None

    @property
    def size(self) -> int:
        return len(self.message.payload) + len(self.message.topic)


class Receiver(Protocol):
    """What delivery needs of the connection a session is attached to."""

    @property
    def window(self) -> int:
        """How many QoS 1/2 messages may be unacknowledged (its Receive Maximum, §3.1.2.11.3)."""
        ...

    @property
    def connected(self) -> bool:
        """CONNACK sent and not closed since."""
        ...

    def send_publish(self, out: Outgoing, dup: bool) -> None:
        """Encode and write one PUBLISH (§3.3)."""

    def resend(self, out: Outgoing) -> None:
        """Resend an in-flight message after a reconnect: PUBREL once released, else the
        PUBLISH with DUP set [MQTT-4.4.0-1]."""

    def buffered(self) -> int:
        """Bytes written and not yet handed to the kernel (a slow consumer's backlog)."""
        ...


class Clock(Protocol):
    def time(self) -> float: ...


class _EndedSession:
    """Stands in for the session once it has ended (``SessionQueue.clear``): the queue no
    longer refers to it, so a session and its queue, which refer to each other, are freed by
    reference counting the moment the session goes, rather than left for the cyclic garbage
    collector, whose full passes stall the loop (a fleet reconnecting ends thousands of
    sessions at once). Callbacks still pending (a commit, a page read) find nobody to serve."""

    client: Receiver | None = None
    persistent = False
    key = ""
    client_id = ""


_ENDED = _EndedSession()


class DeliveryContext:
    """What every session queue of one broker shares."""

    __slots__ = ("clock", "new_message_id", "settings", "stats", "store", "trace")

    def __init__(
        self,
        settings: MQTTSettings,
        store: BrokerStore,
        stats: Stats,
        clock: Clock,
        new_message_id: Callable[[], int],
        trace: TraceRecorder | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.stats = stats
        self.clock = clock
        self.new_message_id = new_message_id
        # The delivery trace (thinghub/trace/recorder.py), None when tracing is off: each
        # report below costs one attribute check then.
        self.trace = trace


class PubRecOutcome:
    """What a PUBREC meant for the flow it answers (§4.3.3)."""

    UNKNOWN = 0  # no QoS 2 message in flight under that packet id
    REFUSED = 1  # the receiver refused it (reason code >= 0x80): the flow ended
    RELEASED = 2  # released: PUBREL goes out (after the store has it, when persistent)


class SessionQueue:
    __slots__ = (
        "_ack_waiters",
        "_ctx",
        "_queue",
        "_resend",
        "_session",
        "dropping",
        "ended",
        "inflight",
        "next_packet_id",
        "queued_bytes",
        "reading",
        "spilled",
    )

    def __init__(self, session: Session, ctx: DeliveryContext) -> None:
        self._session: Session | _EndedSession = session
        self._ctx = ctx
        # Insertion-ordered: redelivery after a reconnect keeps the original order (§4.6).
        self.inflight: dict[int, Outgoing] = {}
        # Created on first use: most sessions of an idle fleet never queue anything, and an
        # empty deque costs 760 bytes.
        self._queue: deque[Outgoing] | None = None
        # Packet ids of in-flight messages still to be resent after a reconnect, when the new
        # connection's Receive Maximum is smaller than what was in flight.
        self._resend: deque[int] | None = None
        # Queued messages of a persistent session that are on disk only, after those in
        # ``_queue`` (which holds the oldest); read back a page at a time.
        self.spilled = 0
        # Messages the outstanding read of the store will bring back (0: no read under way).
        self.reading = 0
        # ``on_acked`` callbacks of spilled messages, by message id, given back on reading.
        self._ack_waiters: dict[int, Callable[[], None]] | None = None
        self.queued_bytes = 0
        self.next_packet_id = 1
        # True while queue overflow drops are happening (logged once per episode).
        self.dropping = False
        # The session ended (``clear``): a page read still under way finds nobody.
        self.ended = False

    # ------------------------------------------------------------------ reading

    @property
    def queued(self) -> int:
        """Queued messages, in memory and on disk."""
        return (len(self._queue) if self._queue else 0) + self.spilled

    @property
    def in_memory(self) -> int:
        """Queued messages held in memory (the oldest ones)."""
        return len(self._queue) if self._queue else 0

    @property
    def resending(self) -> int:
        return len(self._resend) if self._resend else 0

    def queued_messages(self) -> Iterator[Outgoing]:
        """The queued messages held in memory, oldest first."""
        return iter(self._queue or ())

    def window_full(self, window: int) -> bool:
        """True when ``window`` messages are sent and unacknowledged (§4.9)."""
        return len(self.inflight) - self.resending >= window

    def has_work(self) -> bool:
        return bool(self._queue or self._resend or self.spilled)

    def allocate_packet_id(self) -> int:
        """A packet identifier not used by any message in flight (§2.2.1)."""
        pid = self.next_packet_id
        inflight = self.inflight
        while pid in inflight:
            pid = pid % 65535 + 1
        self.next_packet_id = pid % 65535 + 1
        return pid

    def check(self) -> None:
        """Assert the invariants of the module docstring (tests call it after every step)."""
        queue = self._queue or ()
        if not self.spilled:
            assert self.queued_bytes == sum(out.size for out in queue), "queued bytes"
        assert self.queued_bytes >= sum(out.size for out in queue), "queued bytes"
        assert self.spilled >= 0 and self.reading >= 0
        assert all(pid == out.packet_id for pid, out in self.inflight.items()), "packet ids"
        assert not any(out.packet_id for out in queue), "a queued message has a packet id"

    # ------------------------------------------------------------------ messages in

    def offer(self, out: Outgoing) -> None:
        """A QoS 1/2 copy for this session: sent now if the receiver has room and nothing is
        ahead of it, else queued (within the bounds: beyond them dropped and counted)."""
        session = self._session
        client: Receiver | None = session.client
        if out.qos == 2 and session.persistent:
            # Exactly once across a crash (§4.3.3): a QoS 2 copy is sent only once it is on
            # disk. Sent earlier, a crash before the commit would lose the broker's record of
            # it while the publisher, never acknowledged, sends it again: a second copy.
            self._enqueue(out, wait_for_commit=True)
            return
        if client is not None and not self.has_work() and not self.window_full(client.window):
            out.packet_id = self.allocate_packet_id()
            if session.persistent:
                self._persist(out)
            self.inflight[out.packet_id] = out
            trace = self._ctx.trace
            # A message without an id is not traced (every traced one has one: Broker._route,
            # TraceRecorder.begin): the hot path of an untraced copy makes no call.
            if trace is not None and out.message.id:
                trace.offered(out.message.id, session.client_id, fates.SENT, out.qos)
            client.send_publish(out, False)
            return
        self._enqueue(out)

    def _enqueue(self, out: Outgoing, wait_for_commit: bool = False) -> None:
        """Queue ``out``, persisting it (unless the queue is full: dropped and counted). A
        persistent session keeps at most a page of its queue in memory, none while offline;
        the rest is on disk only and read back in pages (memory does not grow with queue
        length). With ``wait_for_commit`` a copy kept in memory is not sent before the store
        has committed it."""
        ctx = self._ctx
        limits = ctx.settings
        session = self._session
        size = out.size
        # Messages already on their way back from disk to a connected client do not count: a
        # client back after filling its queue must not lose the first new ones to the read.
        if (
            self.queued - self.reading >= limits.max_queued_messages
            or self.queued_bytes + size > limits.max_queued_bytes
        ):
            ctx.stats.dropped_queue_full += 1
            if ctx.trace is not None:
                ctx.trace.offered(out.message.id, session.client_id, fates.QUEUE_FULL, out.qos)
            if not self.dropping:
                self.dropping = True
                log.warning(
                    "queue of session %r is full (%d messages, %d bytes): dropping new messages",
                    session.client_id,
                    self.queued,
                    self.queued_bytes,
                )
            return
        self.queued_bytes += size
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        if ctx.trace is not None:
            # Before _persist, which gives the message its id when it has none (tracing gave
            # every traced message one already: Broker._route).
            ctx.trace.offered(out.message.id, session.client_id, fates.QUEUED, out.qos)
        if session.persistent:
            self._persist(out)
            if self.spilled or session.client is None or len(queue) >= limits.queue_page_messages:
                # Behind what is on disk already, or no room in memory: on disk only.
                self.spilled += 1
                if out.on_acked is not None:
                    self._waiters()[out.message.id] = out.on_acked
                return
            if wait_for_commit:
                out.durable = False
                queue.append(out)
                # (A store without a writer runs this at once: queued first, then sent.)
                ctx.store.after_commit(partial(self._now_durable, out))
                return
        queue.append(out)

    def _waiters(self) -> dict[int, Callable[[], None]]:
        waiters = self._ack_waiters
        if waiters is None:
            waiters = self._ack_waiters = {}
        return waiters

    def _persist(self, out: Outgoing) -> None:
        message = out.message
        store = self._ctx.store
        if not message.id:
            message.id = self._ctx.new_message_id()
        if not message.stored:
            message.stored = True
            store.save_message(message)
        store.add_delivery(
            self._session.key,
            StoredDelivery(message.id, out.qos, out.retain, out.subscription_ids, out.packet_id),
        )

    def _now_durable(self, out: Outgoing) -> None:
        out.durable = True
        if self._session.client is not None:
            self.fill_window()

    def offer_stream(self, out: Outgoing, packet_id: int, dup: bool) -> bool:
        """A copy from the cluster's message stream (thinghub/cluster/consumers.py), which
        holds it until ``out.on_acked`` acknowledges it there: it is never stored or queued
        here. Sent now under ``packet_id`` (derived from its stream sequence, so that a
        redelivery on another node carries the same one, [MQTT-4.4.0-1]), or the next free
        one; False when the receiver cannot take it now (offline, window full): the stream
        delivers it again later."""
        client: Receiver | None = self._session.client
        if client is None or not client.connected or self.window_full(client.window):
            return False
        inflight = self.inflight
        while packet_id in inflight:
            packet_id = packet_id % 65535 + 1
        out.packet_id = packet_id
        out.streamed = True
        inflight[packet_id] = out
        trace = self._ctx.trace
        if trace is not None:
            fate = fates.RESENT if dup else fates.SENT
            trace.offered(out.message.id, self._session.client_id, fate, out.qos)
        client.send_publish(out, dup)
        return True

    def forget(self, out: Outgoing) -> None:
        """A copy from the cluster's message stream leaves without acknowledgement (its
        connection closed, the session moved to another node): the stream delivers it again
        wherever the session is next."""
        if self.inflight.get(out.packet_id) is out:
            del self.inflight[out.packet_id]

    # ------------------------------------------------------------------ messages out

    def fill_window(self) -> None:
        """Send while the inflight window has room (§4.9): first what awaits a resend after a
        reconnect (same packet ids, DUP set [MQTT-4.4.0-1]), then queued messages in order."""
        session = self._session
        client: Receiver | None = session.client
        if client is None:
            return
        ctx = self._ctx
        queue = self._queue
        resend = self._resend
        inflight = self.inflight
        window = client.window
        now = ctx.clock.time()
        while (
            (resend or queue or self.spilled) and not self.window_full(window) and client.connected
        ):
            if resend:
                pending = inflight.get(resend.popleft())
                if pending is not None:
                    if ctx.trace is not None:
                        ctx.trace.event(
                            pending.message.id, session.client_id, fates.RESENT, pending.qos
                        )
                    client.resend(pending)
                continue
            if not queue:
                self._read_page()  # _page_read resumes
                break
            if not queue[0].durable:
                break  # waits for the store's commit; _now_durable resumes
            out = queue.popleft()
            self.queued_bytes -= out.size
            if self.dropping and len(queue) < ctx.settings.max_queued_messages // 2:
                # The episode of drops is over once the queue has drained to half; the next
                # overflow is logged again.
                self.dropping = False
            message = out.message
            if message.expired(now) or (
                message.keep_until is not None and now >= message.keep_until
            ):
                ctx.stats.dropped_expired += 1
                if ctx.trace is not None:
                    ctx.trace.event(message.id, session.client_id, fates.EXPIRED, out.qos)
                self._done(out)
                continue
            out.packet_id = self.allocate_packet_id()
            inflight[out.packet_id] = out
            if session.persistent:
                ctx.store.set_packet_id(session.key, message.id, out.packet_id)
                if out.qos == 2:
                    # Its packet id is on disk before it leaves: after a crash the hub resends
                    # it under the same id with DUP, which the receiver recognises, rather
                    # than as a new message it would deliver again (§4.3.3, [MQTT-4.4.0-1]).
                    ctx.store.after_commit(partial(self._send_stored, client, out))
                    continue
            if ctx.trace is not None:
                ctx.trace.event(message.id, session.client_id, fates.SENT, out.qos)
            client.send_publish(out, False)

    def _send_stored(self, client: Receiver, out: Outgoing) -> None:
        # Only on the connection it was meant for: after a reconnect, resume resent it.
        if (
            self._session.client is client
            and client.connected
            and self.inflight.get(out.packet_id) is out
            and not out.released
        ):
            trace = self._ctx.trace
            if trace is not None:
                trace.event(out.message.id, self._session.client_id, fates.SENT, out.qos)
            client.send_publish(out, False)

    def _read_page(self) -> None:
        """Ask the store for the next page of the queue (one request at a time)."""
        if self.reading:
            return
        page = self._ctx.settings.queue_page_messages
        self.reading = min(self.spilled, page)
        self._ctx.store.read_queued(self._session.key, page, self._page_read)

    def _page_read(self, page: list[QueuedDelivery]) -> None:
        session = self._session
        self.reading = 0
        if self.ended or not session.persistent:
            return  # the session ended meanwhile
        if session.client is None:
            return  # offline again: the page stays on disk, read again on the next resume
        if not page:
            if self.spilled:
                # The store has none of them (it failed to read, and logged why): stop waiting
                # for them; whatever is on disk is queued again at the next start.
                log.error(
                    "session %r: %d queued messages could not be read back",
                    session.client_id,
                    self.spilled,
                )
                self.spilled = 0
                self.queued_bytes = sum(out.size for out in self._queue or ())
            return
        # The memory queue was empty when the page was asked for and nothing joins it while
        # messages are on disk, so the page is exactly the next messages in order.
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        waiters = self._ack_waiters
        for delivery, message in page[: self.spilled]:
            queue.append(
                Outgoing(
                    message,
                    delivery.qos,
                    delivery.retain,
                    delivery.subscription_ids,
                    on_acked=waiters.pop(message.id, None) if waiters else None,
                )
            )
        self.spilled -= min(len(page), self.spilled)
        self.fill_window()

    def _done(self, out: Outgoing) -> None:
        """A QoS 1/2 delivery left the session: acknowledged, refused, expired or too large."""
        session = self._session
        if session.persistent and not out.streamed:
            self._ctx.store.remove_delivery(session.key, out.message.id)

    # ------------------------------------------------------------------ acknowledgements

    def acknowledged(self, packet_id: int, qos: int) -> None:
        """PUBACK (``qos`` 1) or PUBCOMP (``qos`` 2) from the receiver: the flow is complete
        (§4.3.2, §4.3.3). An acknowledgement of nothing in flight is ignored."""
        out = self.inflight.get(packet_id)
        if out is None or out.qos != qos:
            return
        del self.inflight[packet_id]
        trace = self._ctx.trace
        if trace is not None and out.message.id:  # untraced without an id (as above)
            trace.event(out.message.id, self._session.client_id, fates.ACKNOWLEDGED, qos)
        self._done(out)
        if out.on_acked is not None:
            out.on_acked()
        if self.has_work():
            self.fill_window()

    def received(self, packet_id: int, reason_code: int) -> int:
        """PUBREC for a QoS 2 message in flight (§4.3.3); returns a ``PubRecOutcome``. When
        RELEASED on a persistent session, the release is in the store's journal: the
        PUBREL must wait for its commit (after a crash the hub resends PUBREL, not the
        PUBLISH, which a receiver that completed would take for a new message)."""
        out = self.inflight.get(packet_id)
        if out is None or out.qos != 2:
            return PubRecOutcome.UNKNOWN
        trace = self._ctx.trace
        if reason_code >= 0x80:
            del self.inflight[packet_id]
            if trace is not None:
                trace.event(out.message.id, self._session.client_id, fates.REFUSED, reason_code)
            self._done(out)
            self.fill_window()
            return PubRecOutcome.REFUSED
        if trace is not None and not out.released:
            trace.event(out.message.id, self._session.client_id, fates.RECEIVED, 2)
        out.released = True
        session = self._session
        if session.persistent and not out.streamed:
            self._ctx.store.set_released(session.key, packet_id)
        return PubRecOutcome.RELEASED

    def release_ticket(self, packet_id: int) -> AckTicket | None:
        """After ``received`` answered RELEASED: what the PUBREL must wait for besides the
        store, for a copy from the cluster's message stream (its release recorded in the
        cluster, so that a node resuming the session after this one died sends PUBREL, not
        the PUBLISH again, §4.3.3), or None."""
        out = self.inflight.get(packet_id)
        if out is None or out.on_released is None:
            return None
        return out.on_released()

    def discard(self, out: Outgoing) -> None:
        """A copy the receiver cannot take (bigger than its Maximum Packet Size): discarded as
        if delivered [MQTT-3.1.2-25]."""
        if out.qos and self.inflight.get(out.packet_id) is out:
            del self.inflight[out.packet_id]
            self._done(out)

    # ------------------------------------------------------------------ connection life

    def resume(self, client: Receiver) -> None:
        """A connection took the session: resend what was in flight, in order, with DUP set
        and the original packet ids [MQTT-4.4.0-1], then the queue. The new connection's
        Receive Maximum may be smaller than what was in flight [MQTT-3.3.4-9]: the excess
        waits for a resend and goes out as acknowledgements make room."""
        self._resend = None
        ctx = self._ctx
        trace = ctx.trace
        client_id = self._session.client_id
        now = ctx.clock.time()
        sent = 0
        for packet_id, out in list(self.inflight.items()):
            if not client.connected:
                return
            if not out.released and out.message.expired(now):
                # An expired message is not redelivered (§3.3.2.3.3).
                del self.inflight[packet_id]
                ctx.stats.dropped_expired += 1
                if trace is not None:
                    trace.event(out.message.id, client_id, fates.EXPIRED, out.qos)
                self._done(out)
            elif sent >= client.window:
                if self._resend is None:
                    self._resend = deque()
                self._resend.append(packet_id)
            else:
                sent += 1
                if trace is not None:
                    trace.event(out.message.id, client_id, fates.RESENT, out.qos)
                client.resend(out)
        self.fill_window()

    def went_offline(self) -> None:
        """An offline persistent session keeps no queued message in memory: every one of them
        is in the store's journal already, and comes back with a page read."""
        queue = self._queue
        if not queue:
            return
        for out in queue:
            if out.on_acked is not None:
                self._waiters()[out.message.id] = out.on_acked
        self.spilled += len(queue)
        self._queue = None

    def forget_disk(self) -> None:
        """The session stopped being persistent: its messages on disk went with it."""
        self.spilled = 0
        self._ack_waiters = None
        self.queued_bytes = sum(out.size for out in self._queue or ())

    def clear(self) -> None:
        """The session ended: nothing more is delivered."""
        trace = self._ctx.trace
        if trace is not None:
            # What was on disk only left with the session unseen: the trace's report tells
            # those apart by the session being gone (trace/report.py).
            client_id = self._session.client_id
            for out in (*self.inflight.values(), *(self._queue or ())):
                trace.event(out.message.id, client_id, fates.SESSION_ENDED, out.qos)
        self._queue = None
        self._resend = None
        self.queued_bytes = 0
        self.spilled = 0
        self._ack_waiters = None
        self.inflight.clear()
        self.ended = True
        self._session = _ENDED

    def restore(self, out: Outgoing) -> None:
        """At start-up: a stored delivery, in flight (packet id set) or queued, in order."""
        if out.packet_id:
            self.inflight[out.packet_id] = out
            return
        if self._queue is None:
            self._queue = deque()
        self._queue.append(out)
        self.queued_bytes += out.size

    def restore_spilled(self, count: int, nbytes: int) -> None:
        """At start-up: the queued messages left on disk, read back when the client is."""
        self.spilled += count
        self.queued_bytes += nbytes


def deliver_now(client: Receiver, out: Outgoing, max_buffer: int, stats: Stats) -> bool:
    """A QoS 0 copy to a connected client, unless its write buffer is past ``max_buffer``
    (a slow consumer: dropped and counted, as QoS 0 allows, §4.3.1). False if dropped."""
    if client.buffered() > max_buffer:
        stats.dropped_slow_consumer += 1
        return False
    client.send_publish(out, False)
    return True
