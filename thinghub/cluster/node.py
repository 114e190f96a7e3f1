"""One node of a ThingHub cluster: the broker's seam to the others.

``Broker`` holds a ``ClusterLink`` (broker/broker.py) and asks or tells it five things: which
node delivers each shared group a message matches (before its local fan-out), the message
(after it), a filter that entered or left its tries, a session opened, a session ended.
``ClusterNode`` is that link (docs/architecture.md, *Cluster*):

* a message published on this node goes to NATS, in an envelope (cluster/envelope.py), when
  some other node's filters match it (cluster/remote.py), on the subject of its topic
  (cluster/subjects.py), so that NATS carries it to those nodes only; else it is kept local.
  Both are counted. A retained message (or its deletion) goes to every node, which all keep
  the retained messages (cluster/retained.py; their own subscribers get it like any
  message). ``$SYS`` topics are each node's own and never leave it.
* a message from NATS is routed on this node as if published here, to its local sessions
  only: it never goes back to NATS (no loops; NATS' no_echo keeps a node's own messages from
  it). The receiving node's fan-out gives each copy its QoS (the lower of the message's and
  the subscription's), its subscription identifiers, No Local (the envelope carries the
  publishing client's id) and Retain As Published, exactly as for a local publisher; of the
  shared groups, it serves those the publishing node gave it (cluster/shared.py).
* sessions: claimed and released in the cluster's owners bucket (cluster/owners.py), and
  taken over when a connection for the same client id comes to another node; a persistent
  one is kept in JetStream (its record, a consumer per QoS 1/2 subscription) and resumed on
  whichever node its client comes back to (cluster/consumers.py).

A QoS 0 message crosses on core NATS (at most once), in one NATS message with the others for
its subject of the same loop turn (cluster/bus.py ``send_batched``). A QoS 1/2 message is
published into the cluster's replicated message stream (cluster/stream.py), whatever the
interest table says: the other nodes' core subscriptions get it from the same publication,
and its publisher's acknowledgement waits for JetStream's (``take_ticket``), as it waits for
the store's commit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..broker.admission import PublishRefused, Refusal
from ..broker.session import SharedGroup
from ..errors import ThingHubError
from ..health import Health
from ..message import Message
from ..mqtt.types import ReasonCode
from ..topics import SHARE_PREFIX
from . import envelope
from .bus import Bus
from .consumers import PersistentSessions
from .groups import SharedConsumers
from .interest import Interest
from .owners import Owners
from .retained import RetainedStream
from .rpc import ClusterRpc
from .settings import ClusterSettings
from .shared import SharePlan, SharePlanner
from .stream import MessageStream, Ticket
from .subjects import MAX_SUBJECT, Subjects
from .wills import ClusterWills

if TYPE_CHECKING:
    from ..broker.broker import Broker
    from ..broker.broker import SharePlan as BrokerSharePlan
    from ..broker.session import Session, SubscriptionEntry

log = logging.getLogger("thinghub.cluster")

#: Topics each node publishes about itself (thinghub/observe/systopics.py).
NODE_LOCAL_PREFIX = "$SYS/"
#: An envelope's bytes besides its topic and payload, at most: the header, the node, account
#: and origin (each length-bounded by MQTT or the settings), MQTT 5 properties.
_ENVELOPE_OVERHEAD = 64 * 1024


class ClusterUnavailable(ThingHubError):
    """A QoS 1/2 message for other nodes that NATS cannot take now: the publisher is refused
    (MQTT 5 0x97, HTTP 503) rather than told it was accepted."""


@dataclass
class MessageCounters:
    # Published here: sent to NATS for other nodes, or kept here (no other node's filter
    # matched), or not sent (NATS out of reach or the outbound bound reached).
    forwarded: int = 0
    kept_local: int = 0
    not_forwarded: int = 0
    # From other nodes: routed here, dropped as expired on the way, unreadable.
    received: int = 0
    expired: int = 0
    unreadable: int = 0
    # Routed here but refused by this node (a MessageId could not be issued).
    failed: int = 0


class ClusterNode:
    def __init__(
        self, settings: ClusterSettings, broker: Broker, health: Health, number: int = 0
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.name = settings.node()
        # The node number in this node's MessageIds (cluster/numbers.py).
        self.number = number
        self.subjects = Subjects(settings.subject_prefix)
        self.clock = broker.clock
        self.counters = MessageCounters()
        self.bus = Bus(settings, self.name, health, on_connected=self._connected)
        self.interest = Interest(
            self.bus,
            self.subjects,
            self.name,
            self._arrived,
            heartbeat_interval=settings.heartbeat_interval,
            node_timeout=settings.node_timeout,
            clock=self.clock.time,
            nodes_gone=self._nodes_gone,
        )
        self.owners = Owners(self.bus, self.subjects, settings, self.name, self._taken_over)
        # Wills of connected clients, for the others to publish should this node die.
        self.wills = ClusterWills(
            self.bus,
            self.subjects,
            settings,
            self.name,
            self.interest.boot,
            broker,
            lambda: self.interest.remote.nodes,
            self.owners.owner,
        )
        self.retained = RetainedStream(
            self.bus, self.subjects, settings, broker.keep_retained, self.clock.time, time.time
        )
        self._retained_prefix = f"{self.subjects.prefix}.r.".encode()
        # QoS 1/2 messages in replicated storage before they are acknowledged.
        self.stream = MessageStream(
            self.bus,
            self.subjects,
            settings,
            lambda: min([self.name, *self.interest.remote.nodes]) == self.name,
        )
        # The JetStream acknowledgements the message being published waits for.
        self.ticket: Ticket | None = None
        # Persistent sessions in JetStream: resumed on any node (cluster/consumers.py).
        self.persistent = PersistentSessions(
            self.bus,
            self.subjects,
            settings,
            broker,
            self.stream,
            self.name,
            lambda: set(self.interest.remote.nodes),
        )
        # Shared groups' QoS 1/2 messages, one consumer per group (cluster/groups.py).
        self.groups = SharedConsumers(
            self.bus,
            self.subjects,
            settings,
            broker,
            self.stream,
            self.persistent,
            lambda: self.interest.remote.nodes.values(),
        )
        self.planner = SharePlanner(self.name)
        # What the HTTP APIs here ask of the node holding a session (cluster/rpc.py).
        self.rpc = ClusterRpc(
            self.bus,
            self.subjects,
            settings,
            self.name,
            broker,
            self.owners.bucket,
            lambda: self.interest.remote.nodes,
            number,
        )
        self._logged_unreadable = False

    async def start(self) -> bool:
        """Join the cluster: from now on the broker tells this node what it routes. Returns
        False when NATS was not reached within ``connect_timeout`` (the node keeps trying)."""
        self.interest.start()
        self.owners.start()
        self.wills.start()
        self.rpc.start()
        self.stream.start()
        self.persistent.start()
        self.groups.start()
        # The sessions restored from this node's store hold filters already, and one may
        # have been taken over elsewhere while this node was down.
        for session in list(self.broker.sessions.values()):
            # Its QoS 1/2 copies come from its consumers (cluster/consumers.py), not from
            # this node's fan-out as well.
            session.streamed = session.persistent
            for full_filter in session.subscriptions:
                self.interest.added(session.account, full_filter)
                self.groups.joined(session.account, full_filter, None)
            self.owners.verify(session.account, session.client_id)
        self.broker.cluster = self
        return await self.bus.start()

    async def stop(self) -> None:
        self.broker.cluster = None
        self.interest.stop()
        await self.rpc.stop()
        await self.owners.stop()
        await self.wills.stop()
        await self.retained.stop()
        await self.persistent.stop()
        await self.groups.stop()
        await self.bus.close()
        await self.stream.stop()

    def _connected(self) -> None:
        self.interest.connected()
        self.retained.connected()
        self.stream.connected()
        self.persistent.connected()
        self.groups.connected()
        self.wills.rejoined()

    def accepts_sign_ins(self) -> bool:
        """Whether a new connection may be accepted now: only while this node can claim its
        client id in the cluster (cluster/owners.py). Otherwise two nodes could each hold a
        session of the same client id, unseen by each other; the connection is refused with
        CONNACK 0x88 Server unavailable (3.1.1: return code 3) and tries again later
        (auth/broker_hooks.py)."""
        return self.bus.connected and self.owners.ready

    # ------------------------------------------------------------------ the broker's seam

    def plan(self, message: Message) -> SharePlan | None:
        """Before local fan-out: which node delivers each shared group the message matches
        (cluster/shared.py); None when the cluster holds no shared group it matches.

        Raises ClusterUnavailable, before anything is delivered, for a QoS 1/2 message other
        nodes must get that NATS cannot take now, and for every QoS 1/2 message while the
        message stream cannot take it (an offline persistent session elsewhere may need it):
        the publisher is refused and sends again, and no subscriber here gets it twice (a QoS
        2 copy delivered, then its publication refused and repeated, would be). Raises
        PublishRefused (INVALID) for a QoS 1/2 message the stream cannot hold at all."""
        self.ticket = None  # a new publication: its own acknowledgements only
        account, topic = message.account, message.topic
        if topic.startswith(NODE_LOCAL_PREFIX):
            return None
        if message.qos:
            if self.subjects.queued(account, topic) is None:
                # Acknowledged means replicated: a QoS 1/2 message the message stream cannot
                # hold (its topic too long for a subject) is refused, not acknowledged
                # unstored; nothing is delivered. A v5 publisher is told 0x90.
                self.counters.not_forwarded += 1
                raise PublishRefused(
                    Refusal.INVALID,
                    ReasonCode.TOPIC_NAME_INVALID,
                    f"in a cluster a QoS 1/2 topic may take at most {MAX_SUBJECT} bytes as a "
                    "NATS subject (its levels escaped); publish it at QoS 0 or shorten it",
                )
            size = _ENVELOPE_OVERHEAD + len(topic) * 3 + len(message.payload)
            refused = not self.stream.can_take(size)
            if refused:
                self.counters.not_forwarded += 1
                raise ClusterUnavailable(
                    "the cluster cannot take the message now (NATS or its message stream out "
                    "of reach, or behind)"
                )
            # Its shared groups' copies come from their consumers (cluster/groups.py).
            return None
        if not self.interest.any_shared:
            return None
        remote = self.interest.remote.shared_nodes(account, topic)
        local: list[tuple[str, str]] = []
        space = self.broker.spaces.get(account)
        if space is not None and space.groups:
            local = [
                (value.name, value.topic_filter)
                for _key, value in space.subscriptions.match(topic)
                if type(value) is SharedGroup
            ]
        if not remote and not local:
            return None
        return SharePlan(self.name, self.planner.plan(account, local, remote))

    def forward(self, message: Message, plan: BrokerSharePlan | None = None) -> int:
        """After local fan-out: send ``message`` to the nodes with interest, with ``plan``'s
        choice of node for each shared group. Returns 1 when some other node may deliver it
        (a v5 publisher is then not told 0x10), or, for QoS 1/2, when a persistent session
        anywhere waits for it in the stream, else 0. Raises ClusterUnavailable for a QoS
        1/2 message that NATS cannot take now."""
        topic = message.topic
        if topic.startswith(NODE_LOCAL_PREFIX):
            return 0
        account = message.account
        # Interest.interested, one call less: asked once per message published here.
        interested = self.interest.remote.interested(account, topic, self.clock.time())
        queued = self.subjects.queued(account, topic) if message.qos else None
        if not (message.retain or interested or queued):
            self.counters.kept_local += 1
            return 0
        shares = plan.shares if isinstance(plan, SharePlan) else None  # made by ``plan``
        data = envelope.pack_now(message, self.name, self.clock.time, shares)
        sent = True
        if message.retain:
            # Every node keeps it; a QoS 1/2 one is routed from its "q" publication below
            # (_arrived), so that no subscriber gets it twice.
            sent = self.bus.send(self.subjects.retained(account, topic), data)
        if sent and queued is not None:
            ticket = self.ticket
            if ticket is None:
                ticket = self.ticket = Ticket()
            sent = self.stream.publish(queued, data, ticket.part())
        elif sent and interested and not message.retain:
            # With the other messages for its subject of this loop turn (cluster/bus.py).
            sent = self.bus.send_batched(self.subjects.message(account, topic), data)
        if sent:
            # Counted by interest: a QoS 1/2 message no other node's filter matches went
            # into the stream only (for persistent sessions), not to another node.
            if interested or message.retain:
                self.counters.forwarded += 1
            else:
                self.counters.kept_local += 1
            if interested:
                return 1
            # No node announces a matching filter, yet a persistent session offline, or
            # whose node died, may wait for it in the stream: not "no subscribers" then.
            return 1 if queued is not None and self.persistent.takes(account, topic) else 0
        self.counters.not_forwarded += 1
        if message.qos:
            raise ClusterUnavailable(
                "the cluster cannot take the message now (NATS out of reach or behind)"
            )
        return 0

    def take_ticket(self) -> Ticket | None:
        """What the acknowledgement of the message just published must wait for (its
        JetStream publications), None when nothing; cleared."""
        ticket, self.ticket = self.ticket, None
        return ticket

    def subscribed(self, account: str, full_filter: str) -> None:
        self.interest.added(account, full_filter)
        if full_filter.startswith(SHARE_PREFIX):
            # The group's consumers exist before the SUBACK leaves.
            self.groups.joined(account, full_filter, self._ticket())

    def unsubscribed(self, account: str, full_filter: str) -> None:
        self.interest.removed(account, full_filter)
        self.groups.left(account, full_filter)

    def session_opened(self, session: Session, clean_start: bool) -> None:
        self.owners.claim(session.account, session.client_id, clean_start)
        self.persistent.opened(session, clean_start)
        self.groups.session_changed(session)
        self.wills.connected(session)

    def session_ended(self, session: Session) -> None:
        self.owners.release(session.account, session.client_id)
        self.groups.give_back(session)
        self.persistent.ended(session)
        self.wills.closed(session)

    def session_closed(self, session: Session) -> None:
        self.groups.give_back(session)
        self.groups.session_changed(session)
        self.persistent.closed(session)
        self.wills.closed(session)

    def send_retained(
        self, session: Session, message: Message, qos: int, subscription_ids: tuple[int, ...]
    ) -> bool:
        return self.persistent.send_retained(session, message, qos, subscription_ids)

    def _nodes_gone(self, names: list[str]) -> None:
        self.wills.nodes_gone(names)

    def streams(self, message: Message) -> bool:
        topic = message.topic
        return (
            not topic.startswith(NODE_LOCAL_PREFIX)
            and self.subjects.queued(message.account, topic) is not None
        )

    def resume_session(self, session: Session) -> bool:
        return self.persistent.resume(session)

    def check_subscription(self, session: Session, topic_filter: str, qos: int) -> int | None:
        return self.persistent.check_subscription(session, topic_filter, qos)

    def subscription_kept(self, session: Session, entry: SubscriptionEntry, new: bool) -> None:
        self.persistent.kept(session, entry, self._ticket())

    def subscription_dropped(self, session: Session, full_filter: str) -> None:
        self.persistent.dropped(session, full_filter, self._ticket())

    def _ticket(self) -> Ticket:
        ticket = self.ticket
        if ticket is None:
            ticket = self.ticket = Ticket()
        return ticket

    # ------------------------------------------------------------------ from other nodes

    def _arrived(self, subject: bytes, data: bytes) -> None:
        """A NATS message on one of this node's subjects: one envelope, or a batch of them
        for the same subject (cluster/envelope.py), routed in order."""
        wall_now, loop_now = time.time(), self.clock.time()
        retained = subject.startswith(self._retained_prefix)
        envelopes: list[bytes] | tuple[bytes] = (data,)
        if envelope.is_batch(data):
            try:
                envelopes = envelope.split_batch(data)
            except envelope.EnvelopeError as error:
                self._unreadable(error)
                return
        counters = self.counters
        route = self.broker.route_from_cluster
        for one in envelopes:
            try:
                arrival = envelope.unpack(one, wall_now, loop_now)
            except envelope.EnvelopeError as error:
                self._unreadable(error)
                continue
            if arrival.node == self.name:
                continue  # no_echo keeps these away; a second node of the same name would not
            counters.received += 1
            message = arrival.message
            # Its copies here are traced under the id the publishing node traced it with, so
            # that a trace asked of any node finds this node's part (cluster/rpc.py).
            message.id = arrival.origin_message_id
            if retained:
                self.retained.live(message.account, message.topic)
                if message.qos and self.subjects.queued(message.account, message.topic):
                    # Kept here; routed from its publication into the message stream, which
                    # this node receives when its filters match (forward).
                    if not arrival.expired:
                        self.broker.keep_retained(message)
                    continue
            if arrival.expired:
                # Its Message Expiry Interval ran out on the way (§3.3.2.3.3).
                counters.expired += 1
                self.broker.stats.dropped_expired += 1
                continue
            try:
                route(message, SharePlan(self.name, arrival.shares) if arrival.shares else None)
            except ThingHubError as error:
                counters.failed += 1
                log.info("a message from node %s could not be routed: %s", arrival.node, error)

    def _unreadable(self, error: envelope.EnvelopeError) -> None:
        self.counters.unreadable += 1
        if not self._logged_unreadable:
            self._logged_unreadable = True
            log.warning("a message from the cluster could not be read (logged once): %s", error)

    def _taken_over(self, account: str, client_id: str, clean_start: bool) -> None:
        """A connection for this client id came to another node, which now holds its
        session: the connection here is told 0x8E (as within one node, [MQTT-3.1.4-3]) and the
        session's copy here ends (a persistent one lives on in JetStream, resumed there:
        cluster/consumers.py). Its will goes out as
        on one node: at once if its delay is 0 or the new connection starts clean, never if
        the client resumed elsewhere within the delay [MQTT-3.1.3-9]."""
        broker = self.broker
        session = broker.session_of(account, client_id)
        if session is None:
            return
        # Its consumers and record stay: the node that took it over holds them now, and
        # gets back what was in flight here (cluster/consumers.py).
        self.persistent.moving(session)
        client = session.client
        if client is not None:
            client.taken_over(publish_will=clean_start)
        if not clean_start:
            session.pending_will = None
        broker.end_session(session)

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        bus = self.bus
        return {
            "node": self.name,
            "number": self.number,
            "accepting_sign_ins": self.accepts_sign_ins(),
            "nats": {
                "connected": bus.connected,
                "server": bus.server,
                "server_version": bus.server_version,
                "queued_bytes": bus.queued_bytes,
                **asdict(bus.counters),
            },
            "messages": asdict(self.counters),
            "interest": self.interest.status(),
            "owners": {
                "ready": self.owners.ready,
                "held": len(self.owners.claims),
                **asdict(self.owners.counters),
            },
            "stream": self.stream.status(),
            "persistent_sessions": self.persistent.status(),
            "shared_groups": self.groups.status(),
            "rpc": {"nodes": self.rpc.nodes(), **asdict(self.rpc.counters)},
            "wills": self.wills.status(),
            "retained": {
                "ready": self.retained.ready,
                "catch_ups": self.retained.catch_ups,
                "kept": self.retained.kept,
            },
        }
