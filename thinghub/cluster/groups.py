"""Shared subscriptions' QoS 1/2 messages in JetStream: one durable consumer per group, so
that a group's copy of each message waits in replicated storage, not in one node's store,
until a member anywhere in the cluster has it (MQTT 5 §4.8.2).

* **One consumer per group.** A group ``$share/{ShareName}/{filter}`` of one account has a
  durable push consumer on the message stream (cluster/stream.py) per subject of its filter
  (two for "a/#", as a session's subscription has: cluster/consumers.py), named after the
  account, ShareName and filter (``g`` and a hash), deliver new, explicit acknowledgement,
  ``max_ack_pending = cluster.shared_max_inflight``. Every node with a member of the group
  creates it (the same name and configuration: creating it again changes nothing) before the
  member's SUBACK leaves, so a message stored after the SUBACK reaches the group. The
  broker's fan-out leaves shared groups out of every streamed (QoS 1/2) message
  (Broker._route_here); QoS 0 messages keep the publishing node's plan (cluster/shared.py).
* **Delivery.** A node binds to the consumer's deliver subject (queue group "dlv": JetStream
  gives each delivery to one bound node) while a member of the group is connected to it, and
  unbinds when none is. A delivery goes to a connected member, in turn (one whose window is
  full is passed over; when every one's is, it comes back in a second), at the lower of the
  message's QoS and the member's, with the member's Retain As Published and subscription
  identifier, under packet id ``seq % 65535 + 1`` (the next free one if taken), with DUP
  when JetStream delivers it again. While no member is connected anywhere nothing is bound,
  and the consumer keeps the group's messages (within the stream's bounds) for the first
  member that connects or subscribes, on any node: a persistent member that resumes on
  another node finds the group's backlog there.
* **Acknowledgement.** A QoS 0 copy is acknowledged in JetStream once handed over, a QoS 1
  copy at the member's PUBACK. A member whose connection closes, or whose session ends or
  moves, gives back (NAK) the QoS 1 copies it had not acknowledged, which another member then
  gets at once (§4.8.2: the server "MAY attempt to send the message to another Client as soon
  as it loses its connection"). QoS 2 is stricter: the member chosen must complete the
  delivery when it reconnects, and if its session ends first no other member may get the
  message [MQTT-4.8.2-4, -5]. So a QoS 2 copy for a persistent member becomes that
  session's own: it is published into the stream for the session alone and delivered by the
  session's direct consumer (``PersistentSessions.send_copy``), with every guarantee its own
  messages have, on whichever node it resumes; the group's copy is acknowledged once that
  one is stored. A clean member's QoS 2 copy is acknowledged at its PUBCOMP, or when its
  session ends (the message is then dropped).
* **Redeliveries of what was acknowledged** (the "+ACK" lost with a NATS connection, a new
  consumer leader): each group remembers the stream sequences this node acknowledged within
  ``cluster.redelivery_memory`` (cluster/completed.py) and acknowledges such a delivery again
  instead of sending it.
* **Removal.** The node that trims the stream also removes the consumers of groups nobody
  holds: no member on this node, on any other node (their announced filters,
  cluster/remote.py, all known) or in any persistent session's record, on two sweeps in a row
  ``cluster.session_sweep_interval`` apart.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import nats

from ..broker.queue import Outgoing
from ..broker.session import SharedGroup, SubscriptionEntry
from ..topics import SHARE_PREFIX, parse_shared
from .bus import Bus, BusSubscription
from .completed import Completed
from .consumers import (
    ACK,
    NAK,
    NAK_LATER,
    PersistentSessions,
    ack_metadata,
    consumer_config,
    deliver_subject,
    read_delivery,
)
from .remote import RemoteNode
from .settings import ClusterSettings
from .stream import MessageStream, Ticket
from .subjects import Subjects, unescape_level

if TYPE_CHECKING:
    from ..broker.broker import Broker
    from ..broker.session import Session

log = logging.getLogger("thinghub.cluster")

#: (account, ShareName, the filter after "$share/{ShareName}/")
GroupKey = tuple[str, str, str]
#: (consumer name, stream sequence)
Delivery = tuple[str, int]


@dataclass
class GroupCounters:
    # Copies JetStream delivered to this node's members (the first time, and again),
    # acknowledged by them, acknowledged again (already completed here), given back (a
    # connection closed, every window full, no member connected); consumers created and
    # removed (nobody holds their group); creations that failed.
    deliveries: int = 0
    redeliveries: int = 0
    acknowledged: int = 0
    acknowledged_again: int = 0
    given_back: int = 0
    # QoS 2 copies made a persistent member's own (its direct consumer delivers them).
    handed_over: int = 0
    consumers_created: int = 0
    consumers_removed: int = 0
    failed: int = 0


@dataclass(eq=False)
class _Group:
    key: GroupKey
    names: tuple[str, ...]
    subjects: tuple[str, ...]
    # Its consumers exist (this node created or confirmed them), or are being created.
    created: bool = False
    creating: bool = False
    subscriptions: list[BusSubscription] = field(default_factory=list)
    turn: int = 0
    # The stream sequences acknowledged here lately (its consumers' messages are distinct
    # stream sequences: a message matches one subject).
    completed: Completed | None = None


@dataclass(eq=False)
class _Copy:
    reply: bytes
    out: Outgoing
    session: Session
    delivery: Delivery
    group: _Group


class SharedConsumers:
    def __init__(
        self,
        bus: Bus,
        subjects: Subjects,
        settings: ClusterSettings,
        broker: Broker,
        stream: MessageStream,
        persistent: PersistentSessions,
        remote_nodes: Callable[[], Iterable[RemoteNode]],
    ) -> None:
        self.bus = bus
        self.subjects = subjects
        self.settings = settings
        self.broker = broker
        self.stream = stream
        self.persistent = persistent
        self.remote_nodes = remote_nodes
        self.counters = GroupCounters()
        # The groups this node has members of, connected or not.
        self._groups: dict[GroupKey, _Group] = {}
        # Copies in flight to this node's members: by delivery, and by session.
        self._inflight: dict[Delivery, _Copy] = {}
        self._by_session: dict[str, dict[Delivery, _Copy]] = {}
        # QoS 2 copies being handed over to a persistent member: their latest reply subject.
        self._handing: dict[Delivery, bytes] = {}
        # Consumers found unused on the last sweep (removed if still so on the next).
        self._unused: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sweep())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def connected(self) -> None:
        """(Re)connected to NATS: create what could not be created while away."""
        for group in list(self._groups.values()):
            self._refresh(group)

    # ------------------------------------------------------------------ from the broker

    def joined(self, account: str, full_filter: str, ticket: Ticket | None) -> None:
        """A member subscribed here (or a session holding one was resumed or restored): the
        group's consumers exist before its SUBACK leaves (``ticket``)."""
        share_name, topic_filter = parse_shared(full_filter)
        if share_name is None:
            return
        key = (account, share_name, topic_filter)
        group = self._groups.get(key)
        if group is None:
            subjects = self.subjects.queued_filters(account, topic_filter)
            if subjects is None:
                # Too long for a subject of its own: an implementation limit (0x97).
                if ticket is not None:
                    ticket.part()(0x97)
                return
            names = tuple(group_consumer_name(key, index) for index in range(len(subjects)))
            group = self._groups[key] = _Group(key, names, subjects)
        if not group.created:
            self._create(group, ticket.part() if ticket is not None else None)
        self._refresh(group)

    def left(self, account: str, full_filter: str) -> None:
        """A member left (unsubscribed, or its session ended) here."""
        share_name, topic_filter = parse_shared(full_filter)
        if share_name is None:
            return
        group = self._groups.get((account, share_name, topic_filter))
        if group is not None:
            self._refresh(group)

    def session_changed(self, session: Session) -> None:
        """A member's connection came or went: bind or unbind its groups here."""
        for entry in session.subscriptions.values():
            if entry.share_group is not None:
                group = self._groups.get((session.account, entry.share_group, entry.topic_filter))
                if group is not None:
                    self._refresh(group)

    def give_back(self, session: Session) -> None:
        """The session's connection is gone (or the session ended or moved): what it had not
        acknowledged goes back to its groups, at once."""
        copies = self._by_session.pop(session.key, None)
        if not copies:
            return
        for delivery, copy in copies.items():
            self._inflight.pop(delivery, None)
            if copy.out.qos == 2:
                # A clean session's (a persistent one's are its own: ``_delivered``): it ends
                # with its connection, and no other member may get the message
                # [MQTT-4.8.2-5]. Its PUBREL, if released, is the session's business.
                self._complete(copy.group, copy.reply, delivery)
                continue
            session.delivery.forget(copy.out)
            self.bus.send(copy.reply.decode(), NAK)
            self.counters.given_back += 1

    # ------------------------------------------------------------------ consumers

    def _create(self, group: _Group, done: Callable[[int], None] | None) -> None:
        created = Ticket()
        group.creating = True
        settings = self.settings
        for name, subject in zip(group.names, group.subjects, strict=True):
            config = consumer_config(
                name,
                deliver_subject(self.subjects, name),
                subject,
                settings.consumer_ack_wait,
                settings.shared_max_inflight,
            )
            self.persistent.change(name, ("add_consumer", config, created.part()))
        created.then(partial(self._created, group, done))

    def _created(self, group: _Group, done: Callable[[int], None] | None, refused: int) -> None:
        group.creating = False
        if refused:
            self.counters.failed += 1
        else:
            if not group.created:
                self.counters.consumers_created += len(group.names)
            group.created = True
        if done is not None:
            done(refused)
        if self._groups.get(group.key) is not group:
            return
        if refused:
            # Tried again when NATS is back (``connected``) or the next member comes.
            return
        self._refresh(group)

    def _refresh(self, group: _Group) -> None:
        """Bound while a member is connected here and the consumers exist; forgotten when
        no member is left here."""
        shared = self._shared_group(group.key)
        if shared is None:
            self._unbind(group)
            del self._groups[group.key]
            return
        if not group.created:
            if not group.creating and self.bus.connected:
                self._create(group, None)
            return
        connected = any(member.session.client is not None for member in shared.members)
        if connected and not group.subscriptions:
            for name in group.names:
                handler = partial(self._delivered, group, name)
                group.subscriptions.append(
                    self.bus.subscribe_with_reply(
                        deliver_subject(self.subjects, name), handler, "dlv"
                    )
                )
        elif not connected and group.subscriptions:
            self._unbind(group)

    def _unbind(self, group: _Group) -> None:
        for subscription in group.subscriptions:
            self.bus.unsubscribe(subscription)
        group.subscriptions = []

    def _shared_group(self, key: GroupKey) -> SharedGroup | None:
        space = self.broker.spaces.get(key[0])
        return None if space is None else space.groups.get((key[1], key[2]))

    # ------------------------------------------------------------------ delivery

    def _delivered(
        self, group: _Group, name: str, _subject: bytes, reply: bytes, data: bytes
    ) -> None:
        if self._groups.get(group.key) is not group or not group.subscriptions:
            self.bus.send(reply.decode(), NAK)  # not bound here any more: to another node
            return
        count, sequence = ack_metadata(reply)
        delivery = (name, sequence)
        counters = self.counters
        if group.completed is not None and sequence in group.completed:
            counters.acknowledged_again += 1
            self.bus.send(reply.decode(), ACK)
            return
        copy = self._inflight.get(delivery)
        if copy is not None:
            copy.reply = reply  # delivered again while in flight here: acknowledged once
            return
        if delivery in self._handing:
            self._handing[delivery] = reply  # delivered again while handed over here
            return
        arrival = read_delivery(self.bus, self.broker, reply, data)
        if arrival is None:
            return
        if arrival.expired:
            self.broker.stats.dropped_expired += 1  # on the way (§3.3.2.3.3)
            self.bus.send(reply.decode(), ACK)
            return
        message = arrival.message
        message.id = message.id or arrival.origin_message_id
        shared = self._shared_group(group.key)
        members: list[SubscriptionEntry] = (
            [m for m in shared.members if m.session.client is not None] if shared else []
        )
        if count > 1:
            counters.redeliveries += 1
        else:
            counters.deliveries += 1
        for step in range(len(members)):
            entry = members[(group.turn + step) % len(members)]
            session = entry.session
            qos = min(message.qos, entry.qos)
            retain = message.retain and entry.retain_as_published
            ids = () if entry.subscription_id is None else (entry.subscription_id,)
            if qos == 0:
                group.turn += step + 1
                self.broker.deliver(session, message, 0, retain, ids)
                self._complete(group, reply, delivery)
                return
            if qos == 2 and session.persistent:
                # Once chosen, this member must get it, also after a reconnection on another
                # node, and no other member may [MQTT-4.8.2-4, -5]: the group's copy becomes
                # the session's own, delivered by its direct consumer (cluster/consumers.py).
                # Stored once for the group (its Nats-Msg-Id), however often JetStream
                # delivers the group's copy again while the hand-over waits, here or on
                # another node.
                done = partial(self._handed_over, group, delivery)
                message_id = f"{name}.{sequence}"
                self._handing[delivery] = reply
                if self.persistent.send_copy(session, message, 2, retain, ids, done, message_id):
                    group.turn += step + 1
                    counters.handed_over += 1
                    return
                del self._handing[delivery]
                continue
            out = Outgoing(message, qos, retain, ids)
            copy = _Copy(reply, out, session, delivery, group)
            out.on_acked = partial(self._acknowledged, copy)
            if session.delivery.offer_stream(out, sequence % 65535 + 1, count > 1):
                group.turn += step + 1
                self._inflight[delivery] = copy
                self._by_session.setdefault(session.key, {})[delivery] = copy
                return
        # No member connected here after all, or every window full: in a second, to
        # whichever node is bound then.
        counters.given_back += 1
        self.bus.send(reply.decode(), NAK_LATER if members else NAK)

    def _handed_over(self, group: _Group, delivery: Delivery, refused: int) -> None:
        """The member's own copy is stored (or not: the group's goes back, for whichever
        member is next)."""
        reply = self._handing.pop(delivery, None)
        if reply is None:
            return
        if refused:
            self.counters.given_back += 1
            self.bus.send(reply.decode(), NAK_LATER)
        else:
            self._complete(group, reply, delivery)

    def _acknowledged(self, copy: _Copy) -> None:
        """PUBACK (QoS 1) or PUBCOMP (QoS 2)."""
        self._inflight.pop(copy.delivery, None)
        copies = self._by_session.get(copy.session.key)
        if copies is not None:
            copies.pop(copy.delivery, None)
            if not copies:
                del self._by_session[copy.session.key]
        self._complete(copy.group, copy.reply, copy.delivery)

    def _complete(self, group: _Group, reply: bytes, delivery: Delivery) -> None:
        self.counters.acknowledged += 1
        self.bus.send(reply.decode(), ACK)
        if group.completed is None:
            group.completed = Completed(self.settings.redelivery_memory)
        group.completed.add(delivery[1], time.monotonic())

    # ------------------------------------------------------------------ removal

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.settings.session_sweep_interval)
            if not (self.stream.ready and self.bus.connected and self.stream.trims()):
                continue
            try:
                await self._remove_unused()
            except (TimeoutError, nats.errors.Error) as error:
                log.info("shared groups' consumers not swept: %s", error)

    async def _remove_unused(self) -> None:
        held = self._held_names()
        if held is None:
            self._unused = set()
            return  # another node's filters are not known yet
        listed = await self.stream.consumer_names()
        unused = {name for name in listed if name.startswith("g") and name not in held}
        js = self.bus.jetstream()
        for name in unused & self._unused:
            try:
                await js.delete_consumer(self.stream.name, name)
            except nats.js.errors.NotFoundError:
                pass
            self.counters.consumers_removed += 1
        self._unused = unused - self._unused

    def _held_names(self) -> set[str] | None:
        """The consumers of every group some node or session record holds; None while
        another node's filters are not all known."""
        names: set[str] = set()
        for group in self._groups.values():
            names.update(group.names)
        for node in self.remote_nodes():
            if not node.synced:
                return None
            for account, full_filter in node.filters:
                names.update(self._names(account, full_filter))
        for key, record in self.persistent.records.items():
            try:
                account = unescape_level(key.split(".", 1)[0])
            except ValueError:
                continue
            for stored in record.get("s", ()):
                names.update(self._names(account, str(stored.get("f", ""))))
        return names

    def _names(self, account: str, full_filter: str) -> tuple[str, ...]:
        if not full_filter.startswith(SHARE_PREFIX):
            return ()
        share_name, topic_filter = parse_shared(full_filter)
        if share_name is None:
            return ()
        subjects = self.subjects.queued_filters(account, topic_filter) or ()
        key = (account, share_name, topic_filter)
        return tuple(group_consumer_name(key, index) for index in range(len(subjects)))

    def status(self) -> dict[str, Any]:
        return {
            "groups": len(self._groups),
            "bound": sum(1 for group in self._groups.values() if group.subscriptions),
            "in_flight": len(self._inflight),
            "handing_over": len(self._handing),
            **self.counters.__dict__,
        }


def group_consumer_name(key: GroupKey, index: int) -> str:
    digest = hashlib.sha256("\x00".join(key).encode())
    return f"g{digest.hexdigest()[:30]}{index}"
