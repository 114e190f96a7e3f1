"""Counters the broker keeps so that nothing is dropped silently.

They are plain attributes, incremented on the event loop where the event happens (one
increment each: the delivery path pays nothing more), and read when asked: ``/metrics``
(Prometheus, ``observe/metrics.py``), ``/api/stats`` (JSON) and the ``$SYS`` topics.

End-to-end delivery latency is timed on a sample of the copies written to subscribers: one
copy in :data:`DELIVERY_SAMPLE` of each QoS, chosen by the delivered counter that is
incremented anyway. Timing a copy (a clock read, a bucket lookup, a call) costs some 230 ns,
a fifth of what writing a copy costs in a fan-out (about 1.2 µs); sampled, it costs a copy
some 15 ns, and the counter by QoS and the test some 30 ns more than the one counter did.
The time runs from ``Message.received_at`` (``time.monotonic()`` when ``Broker._route``
accepted it) to the write; a copy with the RETAIN flag (a retained message sent to a new
subscriber) is not timed, nor one read back from disk (a persistent session's queue beyond
``queue_page_messages``, or after a restart: the stored message has no ``received_at``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..mqtt.types import ReasonCode
from ..observe.histogram import DELIVERY_BOUNDS, Buckets

if TYPE_CHECKING:
    from .queue import Outgoing

__all__ = ["DELIVERY_SAMPLE", "DROP_REASONS", "SAMPLE_MASK", "Stats"]

#: One copy in this many of each QoS is timed (a power of two: the test is a mask).
DELIVERY_SAMPLE = 16
SAMPLE_MASK = DELIVERY_SAMPLE - 1

#: Why a message (or one copy of it) was dropped, and the counter that says how often.
DROP_REASONS = {
    "queue_full": "dropped_queue_full",
    "slow_consumer": "dropped_slow_consumer",
    "expired": "dropped_expired",
    "too_large": "dropped_too_large",
    "offline_qos0": "dropped_offline_qos0",
    "retained_full": "dropped_retained_full",
    "not_authorized": "dropped_not_authorized",
}

#: Told of each refused CONNECT: peer, client id, user name, reason code name, reason text.
ConnectRefused = Callable[[str, str, str | None, str, str], None]


@dataclass(slots=True)
class Stats:
    # CONNECTs accepted and refused (refused: also by reason, ``connect_refusals``).
    connections_total: int = 0
    connections_refused: int = 0
    protocol_errors: int = 0
    # Messages accepted (every way in, Broker._route and send_direct) and copies written to
    # subscribers' connections, by QoS: index 0, 1, 2.
    received: list[int] = field(default_factory=lambda: [0, 0, 0])
    delivered: list[int] = field(default_factory=lambda: [0, 0, 0])
    # Drops, by cause (DROP_REASONS).
    dropped_queue_full: int = 0
    dropped_slow_consumer: int = 0
    dropped_expired: int = 0
    dropped_too_large: int = 0
    dropped_offline_qos0: int = 0
    dropped_retained_full: int = 0
    dropped_not_authorized: int = 0
    # QoS 1/2 messages refused because the store was not accepting new work.
    refused_store_unavailable: int = 0
    # Connection observers (device presence) that raised; the connection went on.
    observer_errors: int = 0
    # Refused CONNECTs by MQTT 5 reason code name ("not_authorized", "server_busy", ...).
    connect_refusals: dict[str, int] = field(default_factory=dict)
    # Seconds from a message's acceptance to a copy's write, one copy in DELIVERY_SAMPLE.
    delivery_latency: Buckets = field(default_factory=lambda: Buckets(DELIVERY_BOUNDS))
    # The audit log's ear for refused CONNECTs (observe/audit.py); None: nobody listens.
    on_connect_refused: ConnectRefused | None = None

    @property
    def messages_received(self) -> int:
        return sum(self.received)

    @property
    def messages_delivered(self) -> int:
        return sum(self.delivered)

    def time_copy(self, out: Outgoing) -> None:
        """Time one sampled copy, just written (``Client.send_publish``, when the delivered
        counter of its QoS is a multiple of DELIVERY_SAMPLE)."""
        accepted = out.message.received_at
        if accepted and not out.retain:
            self.delivery_latency.observe(time.monotonic() - accepted)

    def connect_refused(
        self, peer: str, client_id: str, username: str | None, reason: int, text: str
    ) -> None:
        """A CONNECT was refused with ``reason`` (``Client._handle_connect``)."""
        self.connections_refused += 1
        try:
            name = ReasonCode(reason).name.lower()
        except ValueError:
            name = f"0x{reason:02x}"
        self.connect_refusals[name] = self.connect_refusals.get(name, 0) + 1
        listener = self.on_connect_refused
        if listener is not None:
            listener(peer, client_id, username, name, text)

    def drops(self) -> dict[str, int]:
        """Drops by reason (the keys of DROP_REASONS)."""
        return {reason: getattr(self, name) for reason, name in DROP_REASONS.items()}

    def as_dict(self) -> dict[str, int]:
        """The counters as ``/api/stats`` shows them (the totals of the per-QoS lists)."""
        return {
            "connections_total": self.connections_total,
            "connections_refused": self.connections_refused,
            "protocol_errors": self.protocol_errors,
            "messages_received": self.messages_received,
            "messages_delivered": self.messages_delivered,
            **{name: getattr(self, name) for name in DROP_REASONS.values()},
            "refused_store_unavailable": self.refused_store_unavailable,
            "observer_errors": self.observer_errors,
        }
