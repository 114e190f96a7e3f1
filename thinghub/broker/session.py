"""Session state (§4.1): what outlives a network connection.

A session holds the client's subscriptions, the QoS 1/2 messages in flight towards it (with
their packet identifiers and QoS 2 progress), a bounded queue of messages waiting for a free
slot in the inflight window or for the client to come back, and the packet identifiers of
inbound QoS 2 messages awaiting PUBREL. The connection-level state (protocol version, topic
aliases, keep alive) lives in ``Client``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..message import Message
from .auth import ClientInfo

if TYPE_CHECKING:
    from .client import Client


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


@dataclass(slots=True, eq=False)
class SubscriptionEntry:
    """One subscription of one session, as stored in the subscription trie."""

    session: Session
    # The filter as the client sent it (with any ``$share/{group}/`` prefix) and the part that
    # is matched against topics.
    full_filter: str
    topic_filter: str
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    subscription_id: int | None = None
    share_group: str | None = None
    # Wall-clock time of the SUBSCRIBE, in milliseconds (reported by the HTTP APIs).
    subscribed_at_ms: int = 0


@dataclass(slots=True, eq=False)
class SharedGroup:
    """The members of one ``$share/{group}/{filter}`` (§4.8.2): each message goes to one of
    them, chosen round-robin, preferring members that are connected."""

    name: str
    topic_filter: str
    members: list[SubscriptionEntry]
    next_index: int = 0

    def pick(self) -> SubscriptionEntry:
        count = len(self.members)
        for step in range(count):
            entry = self.members[(self.next_index + step) % count]
            if entry.session.client is not None:
                self.next_index = (self.next_index + step + 1) % count
                return entry
        entry = self.members[self.next_index % count]
        self.next_index = (self.next_index + 1) % count
        return entry


@dataclass(frozen=True, slots=True)
class Will:
    """A client's Will Message (§3.1.2.5) and the client it is published as."""

    message: Message
    publisher: ClientInfo


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

    @property
    def size(self) -> int:
        return len(self.message.payload) + len(self.message.topic)


class Session:
    __slots__ = (
        "account",
        "ack_waiters",
        "client",
        "client_id",
        "dropping",
        "expiry_interval",
        "expiry_timer",
        "inbound_qos2",
        "inflight",
        "key",
        "next_packet_id",
        "pending_will",
        "persistent",
        "queue",
        "queued_bytes",
        "reading",
        "resend",
        "spilled",
        "subscription_bytes",
        "subscriptions",
        "will_timer",
    )

    def __init__(self, client_id: str, expiry_interval: int, account: str = "") -> None:
        self.client_id = client_id
        self.account = account
        # Sessions are per account and client id; U+0000 cannot occur in a client id
        # [MQTT-1.5.4-2], so it separates the two. Also the store's key for the session.
        self.key = f"{account}\x00{client_id}"
        self.expiry_interval = expiry_interval
        # Outlives its connection (Session Expiry Interval > 0), so its state is persisted.
        self.persistent = False
        self.client: Client | None = None
        # Keyed by the filter as sent (with any $share prefix) [MQTT-3.8.4-3].
        self.subscriptions: dict[str, SubscriptionEntry] = {}
        # Bytes of those filters (mqtt.max_subscription_bytes).
        self.subscription_bytes = 0
        # Insertion-ordered: redelivery after reconnect keeps the original order (§4.6).
        self.inflight: dict[int, Outgoing] = {}
        self.queue: deque[Outgoing] = deque()
        # Packet ids of in-flight messages still to be resent after a reconnect, when the new
        # connection's Receive Maximum is smaller than what was in flight (see Client._resume).
        self.resend: deque[int] = deque()
        # Queued messages of a persistent session that are on disk only, after those in
        # ``queue`` (which holds the oldest); read back a page at a time (Broker._read_queued).
        # ``queued_bytes`` counts both.
        self.spilled = 0
        # Messages the outstanding read of the store will bring back (0: no read under way).
        self.reading = 0
        # ``on_acked`` callbacks of spilled messages, by message id, given back on reading.
        self.ack_waiters: dict[int, Callable[[], None]] = {}
        self.queued_bytes = 0
        self.inbound_qos2: set[int] = set()
        self.next_packet_id = 1
        self.expiry_timer: TimerHandle | None = None
        self.will_timer: TimerHandle | None = None
        # The will of the last connection, waiting for its Will Delay Interval (§3.1.3.2.2).
        self.pending_will: Will | None = None
        # True while queue overflow drops are happening (logged once per episode).
        self.dropping = False

    @property
    def queued(self) -> int:
        """Queued messages, in memory and on disk."""
        return len(self.queue) + self.spilled

    def window_full(self, window: int) -> bool:
        """True when ``window`` messages are sent and unacknowledged (§4.9)."""
        return len(self.inflight) - len(self.resend) >= window

    def allocate_packet_id(self) -> int:
        """A packet identifier not used by any message in flight (§2.2.1)."""
        pid = self.next_packet_id
        inflight = self.inflight
        while pid in inflight:
            pid = pid % 65535 + 1
        self.next_packet_id = pid % 65535 + 1
        return pid

    def cancel_timers(self) -> None:
        if self.expiry_timer is not None:
            self.expiry_timer.cancel()
            self.expiry_timer = None
        if self.will_timer is not None:
            self.will_timer.cancel()
            self.will_timer = None
