"""The broker's persistence interface.

The broker keeps its working state in memory and reports every change that must survive a
restart to a ``BrokerStore`` as a journal of small calls. Only *persistent* sessions (Session
Expiry Interval > 0) are reported: a clean session ends with its connection, so nothing of it
needs keeping. A message that goes to many persistent sessions is stored once (``save_message``)
and referenced per session, as mosquitto's msg_store does.

A durable implementation may buffer these calls and commit them in groups; ``after_commit``
runs a callback once everything reported before it is durable. The broker acknowledges a QoS 1/2
publish (PUBACK, PUBREC) only from such a callback, so "acknowledged" means "stored".

``load()`` returns what the broker needs to rebuild its state at start-up: sessions, their
subscriptions and in-flight messages, and retained messages. Queued messages (no packet id yet)
are only counted there; the broker reads them in pages with ``read_queued`` when their session
is ready to take them, so a large backlog costs neither start-up time nor memory.

Sessions are named by ``session_key`` (``Session.key``: the account and the client id joined by
U+0000); retained messages by their account and topic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..message import Message


@dataclass(frozen=True, slots=True)
class StoredSubscription:
    full_filter: str
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    subscription_id: int | None = None


@dataclass(slots=True)
class StoredDelivery:
    """One message queued or in flight towards one session, in delivery order."""

    message_id: int
    qos: int
    retain: bool
    subscription_ids: tuple[int, ...] = ()
    # 0 while queued; the packet identifier once sent (§4.4: resent with the same id).
    packet_id: int = 0
    # QoS 2: PUBREC received and PUBREL sent.
    released: bool = False


@dataclass(slots=True)
class StoredSession:
    client_id: str
    expiry_interval: int
    account: str = ""
    subscriptions: dict[str, StoredSubscription] = field(default_factory=dict)
    # In flight (packet id set), in delivery order.
    deliveries: list[StoredDelivery] = field(default_factory=list)
    # Queued deliveries (no packet id yet), after the in-flight ones: how many, and the size
    # of their topics and payloads (for the session's queue bounds); read with read_queued.
    queued: int = 0
    queued_bytes: int = 0
    # Inbound QoS 2 packet ids that got PUBREC and await PUBREL (§4.3.3).
    inbound_qos2: set[int] = field(default_factory=set)
    # Wall-clock time (ms since the epoch) its last connection ended; None while connected
    # (or when the hub stopped with it connected). The session's expiry counts from here, also
    # while the hub is down ("Expiry and retention").
    disconnected_at_ms: int | None = None


@dataclass(slots=True)
class StoredState:
    sessions: dict[str, StoredSession]
    # The bodies of the in-flight deliveries.
    messages: dict[int, Message]
    retained: list[Message]


# A queued delivery read back from the store, with its message.
QueuedDelivery = tuple[StoredDelivery, Message]


class StoreHealth(Protocol):
    """What a store tells about itself besides its journal: whether its writer has failed
    for good (``thinghub/health.py``), and who must hear of it."""

    @property
    def failed(self) -> str | None:
        """Why the store stopped writing for good (it is not restarted), None while it
        works. Once set, ``accepting`` is False and nothing reported is committed: no
        ``after_commit`` callback runs any more, and ``read_queued`` answers an empty page."""
        ...

    def on_failed(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` on the broker's thread when the store fails (on the next turn
        if it already has), and again whenever something waits on a commit (``after_commit``)
        after that: whoever waits on a commit then gives up (answers 503, disconnects the
        client, MQTT 5 §4.13) instead of hanging, and acknowledges nothing. Returns the
        function that removes ``callback``."""
        ...


class BrokerStore(StoreHealth, Protocol):
    @property
    def accepting(self) -> bool:
        """False while the store cannot promise to keep new work: its writer is behind past
        the configured bound, the store is past its size limit, or writing failed (disk full).
        The broker then refuses new QoS 1/2 publishes (MQTT 5: 0x97 Quota exceeded) rather
        than accept them and lose them. Calls that finish work already accepted
        (acks, session changes) are still made."""
        ...

    @property
    def sequence(self) -> int:
        """The sequence number of the latest write reported: every call below that changes
        the store (not ``after_commit`` nor ``read_queued``) advances it, inside the store.
        Whoever must answer only once its request is durable compares it before and after
        handling the request and, if it moved, waits for ``after_commit`` (docs/architecture.md,
        *Acknowledged means stored*): nothing outside the store counts writes."""
        ...

    # Sessions ---------------------------------------------------------------------
    def save_session(self, session_key: str, expiry_interval: int) -> None: ...

    def delete_session(self, session_key: str) -> None: ...

    def session_connected(self, session_key: str) -> None:
        """A connection took the session: its expiry clock is stopped."""

    def session_disconnected(self, session_key: str, at_ms: int) -> None:
        """The session's connection ended at wall-clock ``at_ms`` (ms since the epoch): its
        expiry clock runs from then, also while the hub is down."""

    def save_subscription(self, session_key: str, subscription: StoredSubscription) -> None: ...

    def delete_subscription(self, session_key: str, full_filter: str) -> None: ...

    # Messages towards sessions ------------------------------------------------------
    def save_message(self, message: Message) -> None:
        """Store a message body once (keyed by ``message.id``) before deliveries refer to it."""

    def add_delivery(self, session_key: str, delivery: StoredDelivery) -> None: ...

    def set_packet_id(self, session_key: str, message_id: int, packet_id: int) -> None: ...

    def set_released(self, session_key: str, packet_id: int) -> None: ...

    def remove_delivery(self, session_key: str, message_id: int) -> None:
        """The delivery is complete (acknowledged), dropped or expired. A message body that no
        session refers to any more may be deleted."""

    def set_inbound_qos2(self, session_key: str, packet_id: int, present: bool) -> None: ...

    # Retained messages ----------------------------------------------------------------
    def save_retained(self, message: Message) -> None: ...

    def delete_retained(self, account: str, topic: str) -> None: ...

    # Commit barrier and recovery ------------------------------------------------------
    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once everything reported so far is durable."""

    def read_queued(
        self,
        session_key: str,
        limit: int,
        callback: Callable[[list[QueuedDelivery]], None],
    ) -> None:
        """Call ``callback`` with the session's oldest ``limit`` queued deliveries (packet id 0),
        in delivery order, read once everything reported before this call is durable. Like
        ``after_commit``, the callback runs on the broker's thread, in journal order."""

    def load(self) -> StoredState: ...
