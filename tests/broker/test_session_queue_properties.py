"""Property-based tests of a session's delivery state (broker/queue.py ``SessionQueue``).

Hypothesis drives one session through any interleaving of messages offered at QoS 1 and 2,
acknowledgements (in any order, as MQTT allows across packet ids), PUBREC refusals,
disconnects and reconnects with any Receive Maximum, for a persistent session (with a real
in-memory store, so the queue spills to "disk" and is read back in pages) and for a clean
one. After every step the invariants hold:

* nothing is lost or duplicated: every message offered is acknowledged, refused, in flight,
  queued (memory or disk) or counted as dropped because the queue was full, exactly once;
* first transmissions go out in the order the messages were offered (§4.6), and a message is
  first-sent once: later copies are resends with DUP and the same packet id [MQTT-4.4.0-1];
* no more than Receive Maximum messages are unacknowledged on a connection (§4.9);
* the byte and count bounds hold (``mqtt.max_queued_messages``).

The receiver below is the connection's side of the ``Receiver`` interface, recording what a
client would see on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from thinghub.broker.queue import DeliveryContext, Outgoing, PubRecOutcome
from thinghub.broker.session import Session
from thinghub.broker.stats import Stats
from thinghub.config import MQTTSettings
from thinghub.message import Message
from thinghub.store.memory import MemoryStore


class FixedClock:
    def time(self) -> float:
        return 1_000.0


@dataclass
class WireReceiver:
    """One connection: what it was sent, in order."""

    window: int
    connected: bool = True
    # (message id, packet id, dup) for each PUBLISH; packet ids of each PUBREL.
    publishes: list[tuple[int, int, bool]] = field(default_factory=list)
    releases: list[int] = field(default_factory=list)

    def send_publish(self, out: Outgoing, dup: bool) -> None:
        assert self.connected
        self.publishes.append((out.message.id, out.packet_id, dup))

    def resend(self, out: Outgoing) -> None:
        if out.released:
            self.releases.append(out.packet_id)
        else:
            self.send_publish(out, True)

    def buffered(self) -> int:
        return 0


class SessionQueueMachine(RuleBasedStateMachine):
    @initialize(
        persistent=st.booleans(),
        max_queued=st.integers(1, 12),
        page=st.integers(1, 5),
        window=st.integers(1, 4),
    )
    def start(self, persistent: bool, max_queued: int, page: int, window: int) -> None:
        self.settings = MQTTSettings(
            max_queued_messages=max_queued, queue_page_messages=page, max_inflight=65535
        )
        self.store = MemoryStore()
        self.stats = Stats()
        context = DeliveryContext(self.settings, self.store, self.stats, FixedClock(), self._id)
        self.session = Session("c", 3600 if persistent else 0, "acct", context)
        self.session.persistent = persistent
        if persistent:
            self.store.save_session(self.session.key, 3600)
        self.queue = self.session.delivery
        self.next_id = 0
        self.offered: list[int] = []
        self.acked: set[int] = set()
        self.refused: set[int] = set()
        self.first_sent: list[int] = []
        self.receiver: WireReceiver | None = None
        self.seen = 0  # publishes of the current receiver already checked
        self.connect(window)

    def _id(self) -> int:
        raise AssertionError("messages carry their ids here")

    def connect(self, window: int) -> None:
        receiver = WireReceiver(window)
        self.receiver, self.seen = receiver, 0
        self.session.client = receiver  # type: ignore[assignment]
        self.queue.resume(receiver)

    def _collect(self) -> None:
        """Record first transmissions of the current receiver since the last look."""
        receiver = self.receiver
        if receiver is None:
            return
        for mid, _pid, dup in receiver.publishes[self.seen :]:
            if not dup:
                assert mid not in self.first_sent, f"message {mid} first-sent twice"
                self.first_sent.append(mid)
            else:
                assert mid in self.first_sent, f"resend of {mid} that was never sent"
        self.seen = len(receiver.publishes)

    # -------------------------------------------------------------- rules

    @rule(qos=st.sampled_from([1, 2]))
    def offer(self, qos: int) -> None:
        self.next_id += 1
        message = Message(topic="t", payload=b"x" * 3, qos=qos, id=self.next_id, account="acct")
        self.offered.append(self.next_id)
        self.queue.offer(Outgoing(message, qos, False))
        self._collect()

    @precondition(lambda self: self.receiver is not None and self.queue.inflight)
    @rule(data=st.data())
    def acknowledge(self, data: st.DataObject) -> None:
        packet_id = data.draw(st.sampled_from(sorted(self.queue.inflight)))
        out = self.queue.inflight[packet_id]
        mid = out.message.id
        if out.qos == 1:
            self.queue.acknowledged(packet_id, 1)
            self.acked.add(mid)
        elif not out.released:
            refuse = data.draw(st.booleans())
            outcome = self.queue.received(packet_id, 0x80 if refuse else 0)
            if refuse:
                assert outcome == PubRecOutcome.REFUSED
                self.refused.add(mid)
            else:
                assert outcome == PubRecOutcome.RELEASED
        else:
            self.queue.acknowledged(packet_id, 2)
            self.acked.add(mid)
        self._collect()

    @precondition(lambda self: self.receiver is not None)
    @rule()
    def disconnect(self) -> None:
        assert self.receiver is not None
        self._collect()
        self.receiver.connected = False
        self.receiver = None
        self.session.client = None
        if self.session.persistent:
            self.queue.went_offline()

    @precondition(lambda self: self.receiver is None)
    @rule(window=st.integers(1, 4))
    def reconnect(self, window: int) -> None:
        self.connect(window)
        self._collect()

    # -------------------------------------------------------------- invariants

    @invariant()
    def structure_holds(self) -> None:
        self.queue.check()

    @invariant()
    def nothing_lost_or_duplicated(self) -> None:
        inflight = {out.message.id for out in self.queue.inflight.values()}
        queued = self.queue.queued
        dropped = self.stats.dropped_queue_full
        assert self.acked.isdisjoint(inflight) and self.refused.isdisjoint(inflight)
        assert len(self.acked) + len(self.refused) + len(inflight) + queued + dropped == len(
            self.offered
        )

    @invariant()
    def first_transmissions_keep_the_order(self) -> None:
        assert self.first_sent == sorted(self.first_sent)

    @invariant()
    def window_is_respected(self) -> None:
        receiver = self.receiver
        if receiver is not None:
            assert len(self.queue.inflight) - self.queue.resending <= receiver.window

    @invariant()
    def queue_bound_holds(self) -> None:
        assert self.queue.queued <= self.settings.max_queued_messages

    @invariant()
    def connected_receiver_is_kept_busy(self) -> None:
        """Work does not stall: with room in the window, nothing waits in memory."""
        receiver = self.receiver
        if receiver is not None and not self.queue.window_full(receiver.window):
            assert self.queue.queued == 0 and self.queue.resending == 0


SessionQueueMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
test_session_queue = SessionQueueMachine.TestCase
