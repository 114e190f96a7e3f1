"""Session state (§4.1): what outlives a network connection.

A session holds the client's subscriptions, its delivery state (``SessionQueue`` in queue.py:
the QoS 1/2 messages in flight towards it and those waiting, in memory or on disk), the
packet identifiers of inbound QoS 2 messages awaiting PUBREL, its expiry and its pending
will. The connection-level state (protocol version, topic aliases, keep alive) lives in
``Client``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..message import Message
from .auth import ClientInfo
from .queue import DeliveryContext, SessionQueue

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


class Session:
    __slots__ = (
        "account",
        "client",
        "client_id",
        "delivery",
        "expiry_interval",
        "expiry_timer",
        "inbound_qos2",
        "key",
        "pending_will",
        "persistent",
        "streamed",
        "subscription_bytes",
        "subscriptions",
        "will_timer",
    )

    def __init__(
        self, client_id: str, expiry_interval: int, account: str, context: DeliveryContext
    ) -> None:
        self.client_id = client_id
        self.account = account
        # Sessions are per account and client id; U+0000 cannot occur in a client id
        # [MQTT-1.5.4-2], so it separates the two. Also the store's key for the session.
        self.key = f"{account}\x00{client_id}"
        self.expiry_interval = expiry_interval
        # Outlives its connection (Session Expiry Interval > 0), so its state is persisted.
        self.persistent = False
        # In a cluster: its QoS 1/2 copies of the messages in the cluster's message stream
        # come from its JetStream consumers (thinghub/cluster/consumers.py), not from the
        # broker's fan-out, which skips them (Broker._route_here).
        self.streamed = False
        self.client: Client | None = None
        # Keyed by the filter as sent (with any $share prefix) [MQTT-3.8.4-3].
        self.subscriptions: dict[str, SubscriptionEntry] = {}
        # Bytes of those filters (mqtt.max_subscription_bytes).
        self.subscription_bytes = 0
        # Messages towards the client: in flight, queued, on disk (queue.py owns them).
        self.delivery = SessionQueue(self, context)
        # Inbound QoS 2 packet ids that got PUBREC and await PUBREL (§4.3.3); None until the
        # first one (an empty set costs 216 bytes, and most clients never publish QoS 2).
        self.inbound_qos2: set[int] | None = None
        self.expiry_timer: TimerHandle | None = None
        self.will_timer: TimerHandle | None = None
        # The will of the last connection, waiting for its Will Delay Interval (§3.1.3.2.2).
        self.pending_will: Will | None = None

    def awaits_release(self, packet_id: int) -> bool:
        """A QoS 2 message under ``packet_id`` was received and awaits its PUBREL."""
        pending = self.inbound_qos2
        return pending is not None and packet_id in pending

    def receiving(self, packet_id: int, present: bool) -> None:
        """Record (PUBREC sent) or forget (PUBREL received) an inbound QoS 2 packet id."""
        pending = self.inbound_qos2
        if present:
            if pending is None:
                pending = self.inbound_qos2 = set()
            pending.add(packet_id)
        elif pending is not None:
            pending.discard(packet_id)

    def cancel_timers(self) -> None:
        if self.expiry_timer is not None:
            self.expiry_timer.cancel()
            self.expiry_timer = None
        if self.will_timer is not None:
            self.will_timer.cancel()
            self.will_timer = None
