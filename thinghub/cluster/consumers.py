"""Persistent sessions kept in JetStream, so that they resume on any node.

Modelled on how nats-server keeps MQTT sessions (server/mqtt.go), written for ThingHub:

* **Where a session's QoS 1/2 messages wait.** Each QoS 1/2 subscription (not shared) of a
  persistent session (Session Expiry Interval above 0; 3.1.1: clean session 0) is a durable
  JetStream consumer on the cluster's message stream (cluster/stream.py): filter = the
  subscription's "q" subject (two consumers for "a/#", which maps to two subjects: one
  filter per consumer, as nats-server 2.9 needed; 2.10 and later could take both in one,
  not used yet), deliver new, explicit acknowledgement,
  ``max_ack_pending`` = the hub's inflight bound (``mqtt.max_inflight``), ``ack_wait`` =
  ``cluster.consumer_ack_wait``. The stream keeps a message until every consumer it matches
  has acknowledged it (cluster/stream.py trims below their floors). The consumer is created
  before the SUBACK leaves (the SUBACK waits, as for the store's commit), deleted at
  UNSUBSCRIBE and when the session ends or expires. The broker's fan-out skips these
  sessions' QoS 1/2 copies of streamed messages (``Session.streamed``,
  Broker._deliver_unstreamed): they come from the consumer only, so nothing arrives twice;
  QoS 0 copies and direct sends (SendDirectMessage, RRpc) still take the broker's own path.
  Shared subscriptions have a consumer per group (cluster/groups.py). A retained message
  sent at SUBSCRIBE at QoS 1/2, and a shared group's QoS 2 copy once this session is chosen
  for it, are published into the stream as copies for the session alone, delivered by the
  session's direct consumer (``send_copy``), so that they move with the session too.
* **Delivery.** While the session's client is connected to this node, the node subscribes to
  each consumer's deliver subject (``<prefix>.dlv.<consumer>``, in a queue group: one node
  gets each delivery). A delivery is checked for No Local (the envelope's origin,
  [MQTT-3.8.3-3]) and its expiry (an absolute time, §3.3.2.3.3), given the subscription's
  options (QoS downgrade, Retain As Published, subscription identifier), and handed to the
  session's queue (broker/queue.py ``offer_stream``) under a packet id derived from its
  stream sequence (``seq % 65535 + 1``, the next free one if taken), with DUP when JetStream
  delivers it again (delivery count above 1): a redelivery on another node carries the same
  packet id, so a QoS 2 receiver that got it before answers PUBREC again and hands it on
  once (§4.3.3). The client's PUBACK (QoS 1) or PUBCOMP (QoS 2) acknowledges it in
  JetStream. The node's own store (store/) never holds these copies.
* **The session's record** is a key of the key-value bucket ``<prefix>_session_state``
  (replicated like the stream), ``account.clientid`` (escaped as in cluster/owners.py):
  protocol level, expiry interval, when it went offline, the generation of its consumers,
  its subscriptions with their options and consumers, its direct consumer, the QoS 2 copies
  it released. Written at CONNECT, before the
  SUBACK/UNSUBACK, at disconnection; deleted when the session ends. Every node keeps a copy
  of the bucket in memory (a watch), so that a CONNECT can be answered at once: a CONNECT
  with Clean Start 0 on a node that does not hold the session rebuilds it from the record
  (CONNACK Session Present 1), claims it (cluster/owners.py), binds to its consumers and
  delivers what waits. The node that held it, told of the takeover, gives back (NAK) what it
  had in flight, which comes back at once; if that node died, it comes back after
  ``consumer_ack_wait``.
* **Expiry.** A node that finds an expired record when a client claims it removes its
  consumers and the record; besides, every node sweeps the records every
  ``cluster.session_sweep_interval`` seconds and removes those offline past their expiry
  (their node died: nobody else would). Removing twice is harmless.
* **Faults.** While NATS, the bucket or the stream is not available, a persistent session's
  SUBSCRIBE is refused (SUBACK 0x80: its record cannot be written), and a failed consumer
  creation or record write refuses it too (and removes it); at most
  ``cluster.max_pending_claims`` changes wait (past that: 0x97).

Limits (docs/architecture.md, *Cluster*): a message published while a subscription's
consumer is being created may miss it (the SUBACK has not been sent); overlapping QoS 1/2
subscriptions of one session get a copy each ([MQTT-3.3.4-2] allows it); an acknowledgement
lost while NATS is out of reach makes JetStream deliver the message again after
``consumer_ack_wait``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import nats
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
)
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from ..broker.queue import Outgoing
from ..message import Message
from ..mqtt.packets import Subscription
from . import envelope
from .bus import Bus, BusSubscription
from .completed import Completed
from .recordfilters import RecordFilters
from .settings import ClusterSettings
from .stream import UNSPECIFIED, MessageStream, Ticket
from .subjects import Subjects, escape_level

if TYPE_CHECKING:
    from ..broker.broker import Broker
    from ..broker.session import Session, SubscriptionEntry

log = logging.getLogger("thinghub.cluster")

WORKERS = 16
FORMAT = 1
NAK_LATER = b'-NAK {"delay": 1000000000}'  # the receiver's window is full: in a second
NAK = b"-NAK"
ACK = b"+ACK"

#: What a change waits on: called with 0 (done) or a refusal's reason code.
Done = Callable[[int], None]
#: The account token of the copies meant for one session (``send_copy``): "=" followed
#: by no two hexadecimal digits is no escaped account's token (cluster/subjects.py), so no
#: filter's subject, nor an account's wildcard, matches these.
DIRECT_TOKEN = "=d"
#: Stands for the direct consumer where a subscription's filter is expected (``_bind``).
_DIRECT = "\x00direct"


@dataclass
class ConsumerCounters:
    # Copies JetStream delivered to this node's sessions (the first time, and again: the
    # session moved, its node died, or no acknowledgement came within consumer_ack_wait),
    # acknowledged by their receivers, given back (a connection closed, the session moved,
    # the window was full); consumers created and deleted; sessions resumed from another
    # node's record; expired records removed; changes that failed.
    deliveries: int = 0
    redeliveries: int = 0
    acknowledged: int = 0
    # Redeliveries of what this node's receiver had acknowledged already (``_Held.completed``).
    acknowledged_again: int = 0
    given_back: int = 0
    consumers_created: int = 0
    consumers_deleted: int = 0
    resumed: int = 0
    expired: int = 0
    failed: int = 0
    dropped: int = 0


@dataclass(eq=False)
class _Copy:
    reply: bytes
    out: Outgoing


@dataclass(eq=False)
class _Held:
    """A persistent session of this node that has consumers: what binds it to them."""

    session: Session
    generation: str
    # The session's key in the records bucket; also what orders its changes (one worker).
    record_key: str
    # Bound to its consumers' deliver subjects (its client is connected here).
    attached: bool = False
    # Full filter -> its consumers' names.
    consumers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Deliver subscriptions while the client is connected here.
    subscriptions: list[BusSubscription] = field(default_factory=list)
    # Stream sequence -> the copy in flight here.
    copies: dict[int, _Copy] = field(default_factory=dict)
    # The stream sequences its receiver acknowledged lately (cluster/completed.py; made at
    # the first): a redelivery of one is acknowledged again, not delivered again.
    completed: Completed | None = None
    # QoS 2 copies released (PUBREC received, PUBREL sent), by packet id -> stream sequence:
    # in the session's record before the PUBREL leaves, so that a node resuming the session
    # after this one died sends PUBREL again, not the PUBLISH (§4.3.3, §4.4).
    released: dict[int, int] = field(default_factory=dict)
    # The consumer of the copies meant for this session alone (``send_copy``), "" until the
    # first; whether it is known to exist; the copies waiting for its creation.
    direct: str = ""
    direct_created: bool = False
    direct_waiting: list[tuple[str, bytes, dict[str, str] | None, Done]] | None = None


class PersistentSessions:
    def __init__(
        self,
        bus: Bus,
        subjects: Subjects,
        settings: ClusterSettings,
        broker: Broker,
        stream: MessageStream,
        node: str,
        alive: Callable[[], set[str]],
    ) -> None:
        # This node's name, and the nodes heard of lately (cluster/interest.py): a record
        # held by a node that is not among them is expired from when that was first seen.
        self.node = node
        self.alive = alive
        self._dead_since: dict[str, float] = {}
        self.bus = bus
        self.subjects = subjects
        self.settings = settings
        self.broker = broker
        self.stream = stream
        self.counters = ConsumerCounters()
        self.bucket = subjects.prefix.replace(".", "_") + "_session_state"
        # Every session record of the cluster, by bucket key (the watch keeps it current),
        # changed through _keep_record / _forget_record only, which keep ``filters`` in step.
        self.records: dict[str, dict[str, Any]] = {}
        self.filters = RecordFilters()
        self._held: dict[str, _Held] = {}
        # Sessions ending here because another node took them over (kept in JetStream).
        self._moving: set[str] = set()
        # Set while a session is rebuilt from its record: its consumers exist already.
        self._resuming: dict[str, tuple[str, ...]] | None = None
        self._kv: KeyValue | None = None
        self._watching = False
        self._queues: list[asyncio.Queue[tuple[Any, ...]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._watch_task: asyncio.Task[None] | None = None
        self._waiting = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._queues = [asyncio.Queue() for _ in range(WORKERS)]
        self._tasks = [loop.create_task(self._work(queue)) for queue in self._queues]
        self._tasks.append(loop.create_task(self._sweep()))

    def connected(self) -> None:
        """(Re)connected to NATS: open the bucket and (re)read every record."""
        if self._watch_task is not None and not self._watch_task.done():
            self._watch_task.cancel()
        self._watching = False
        self._watch_task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self.bus.connected and self._waiting:
            try:
                await asyncio.wait_for(asyncio.gather(*(q.join() for q in self._queues)), 2.0)
            except TimeoutError:
                log.info("stopping with %d session record changes unwritten", self._waiting)
        tasks = [*self._tasks, *([self._watch_task] if self._watch_task else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass

    @property
    def ready(self) -> bool:
        return self._kv is not None and self._watching and self.stream.ready

    # ------------------------------------------------------------------ from the broker

    def check_subscription(self, session: Session, topic_filter: str, qos: int) -> int | None:
        """Every subscription of a persistent session goes into its record (a QoS 1/2 one
        also gets consumers): refused while they cannot be written."""
        if not (self.ready and self.bus.connected):
            return UNSPECIFIED
        if self._waiting >= self.settings.max_pending_claims:
            return 0x97
        if (
            qos
            and not topic_filter.startswith("$share/")
            and self.subjects.queued_filters(session.account, topic_filter) is None
        ):
            return 0x97  # too long for a subject of its own: an implementation limit
        return None

    def kept(self, session: Session, entry: SubscriptionEntry, ticket: Ticket) -> None:
        """A subscription of a persistent session: its consumers (new ones created, those of
        a filter now at QoS 0 deleted), then the session's record."""
        held = self._hold(session)
        streamed = bool(entry.qos) and entry.share_group is None
        resuming = self._resuming
        if resuming is not None:
            # Rebuilt from its record: the consumers exist, the record is current.
            if streamed:
                session.streamed = True
                held.consumers[entry.full_filter] = resuming.get(entry.full_filter, ())
            return
        key = held.record_key
        names = held.consumers.pop(entry.full_filter, ())
        if streamed:
            session.streamed = True
            subjects = self.subjects.queued_filters(session.account, entry.topic_filter) or ()
            wanted = tuple(
                _consumer_name(session.key, held.generation, entry.full_filter, index)
                for index in range(len(subjects))
            )
            held.consumers[entry.full_filter] = wanted
            for name, subject in zip(wanted, subjects, strict=True):
                if name not in names:
                    self._enqueue(key, ("consumer", name, subject, ticket.part()))
                    if held.attached:
                        self._bind(held, entry.full_filter, name)
            names = tuple(n for n in names if n not in wanted)
        for name in names:
            self._enqueue(key, ("delete_consumer", name, ticket.part()))
        self.save(session, ticket)

    def dropped(self, session: Session, full_filter: str, ticket: Ticket) -> None:
        held = self._held.get(session.key)
        if held is None:
            return
        for name in held.consumers.pop(full_filter, ()):
            self._enqueue(held.record_key, ("delete_consumer", name, ticket.part()))
        self.save(session, ticket)

    def resume(self, session: Session) -> bool:
        """Rebuild ``session`` from its record, if another node held it: True then."""
        key = _record_key(session.account, session.client_id)
        record = self.records.get(key)
        if record is None:
            return False
        if _expired(record, time.time()):
            self._remove_record(key, record)
            return False
        generation = str(record.get("g", "")) or secrets.token_hex(6)
        held = self._held[session.key] = _Held(session, generation, key)
        held.direct = str(record.get("dc") or "")
        held.direct_created = bool(held.direct)
        resuming: dict[str, tuple[str, ...]] = {}
        subscriptions: list[tuple[Subscription, int | None]] = []
        try:
            for stored in record.get("s", ()):
                resuming[str(stored["f"])] = tuple(str(c) for c in stored.get("c", ()))
                sub = Subscription(
                    topic_filter=str(stored["f"]),
                    qos=int(stored["q"]),
                    no_local=bool(stored.get("nl")),
                    retain_as_published=bool(stored.get("rap")),
                    retain_handling=int(stored.get("rh", 0)),
                )
                sid = stored.get("id")
                subscriptions.append((sub, None if sid is None else int(sid)))
        except (KeyError, TypeError, ValueError) as error:
            log.warning("session record of %r unreadable, not resumed: %s", key, error)
            del self._held[session.key]
            return False
        self._resuming = resuming
        try:
            for sub, sid in subscriptions:
                self.broker.subscribe(session, sub, sid)
        finally:
            self._resuming = None
        self._rebuild_released(self._held[session.key], record.get("r") or {})
        self.counters.resumed += 1
        return True

    def _rebuild_released(self, held: _Held, released: dict[str, Any]) -> None:
        """The QoS 2 copies the session's last node had released: in flight here as
        released, so that the connection's resume sends PUBREL for them (§4.4); their stream
        copies, redelivered meanwhile, are acknowledged at the PUBCOMP, never sent again."""
        session = held.session
        for raw_packet_id, raw_sequence in released.items():
            try:
                packet_id, sequence = int(raw_packet_id), int(raw_sequence)
            except (TypeError, ValueError):
                continue
            if not 0 < packet_id <= 65535 or packet_id in session.delivery.inflight:
                continue
            out = Outgoing(
                Message(topic="", payload=b"", account=session.account),
                2,
                False,
                packet_id=packet_id,
                released=True,
                streamed=True,
            )
            out.on_acked = partial(self._acknowledged, held, sequence)
            session.delivery.restore(out)
            held.copies[sequence] = _Copy(b"", out)
            held.released[packet_id] = sequence

    def opened(self, session: Session, clean_start: bool) -> None:
        """A connection took the session here: a clean one replaces whatever record the
        cluster held; then its consumers deliver here."""
        key = _record_key(session.account, session.client_id)
        if clean_start:
            record = self.records.get(key)
            held = self._held.get(session.key)
            if record is not None and (held is None or record.get("g") != held.generation):
                self._remove_record(key, record, keep_record=session.persistent)
        if not session.persistent:
            return
        held = self._hold(session)
        self.save(session, None)
        self._attach(held)

    def closed(self, session: Session) -> None:
        held = self._held.get(session.key)
        if held is None:
            return
        self._detach(held)
        if session.persistent and session.key not in self._moving:
            self.save(session, None, offline_since=int(time.time() * 1000))

    def ended(self, session: Session) -> None:
        held = self._held.pop(session.key, None)
        moving = session.key in self._moving
        self._moving.discard(session.key)
        if held is not None:
            self._detach(held)
        if moving:
            return  # another node holds it now, with its consumers and record
        key = _record_key(session.account, session.client_id)
        if held is not None:
            for names in held.consumers.values():
                for name in names:
                    self._enqueue(key, ("delete_consumer", name, None))
            if held.direct:
                self._enqueue(key, ("delete_consumer", held.direct, None))
        if held is not None or key in self.records:
            self._forget_record(key)
            self._enqueue(key, ("delete", key, None))

    def moving(self, session: Session) -> None:
        """``session`` is about to end here because another node resumed it."""
        self._moving.add(session.key)

    def save(self, session: Session, ticket: Ticket | None, offline_since: int = 0) -> None:
        held = self._held.get(session.key)
        record = {
            "v": FORMAT,
            "n": self.node,
            "e": session.expiry_interval,
            "d": offline_since or None,
            "g": held.generation if held is not None else "",
            "s": [
                {
                    "f": entry.full_filter,
                    "q": entry.qos,
                    "nl": entry.no_local,
                    "rap": entry.retain_as_published,
                    "rh": entry.retain_handling,
                    "id": entry.subscription_id,
                    "c": list(held.consumers.get(entry.full_filter, ())) if held else [],
                }
                for entry in session.subscriptions.values()
            ],
        }
        if session.client is not None:
            record["p"] = int(session.client.version)
        if held is not None and held.released:
            record["r"] = {str(pid): seq for pid, seq in held.released.items()}
        if held is not None and held.direct:
            record["dc"] = held.direct
        key = _record_key(session.account, session.client_id)
        self._keep_record(key, record)  # this node's view at once; the watch confirms it
        done = ticket.part() if ticket is not None else None
        self._enqueue(key, ("put", key, json.dumps(record).encode(), done))

    def send_retained(
        self, session: Session, message: Message, qos: int, subscription_ids: tuple[int, ...]
    ) -> bool:
        """A retained message sent at SUBSCRIBE (§3.3.1.3: RETAIN 1) to a persistent session
        held here, at QoS ``qos`` (1 or 2), as a copy for the session alone (``send_copy``),
        so that it moves with the session until acknowledged. False when it cannot be: the
        broker then delivers it from this node."""
        return self.send_copy(session, message, qos, True, subscription_ids, None, "")

    def send_copy(
        self,
        session: Session,
        message: Message,
        qos: int,
        retain: bool,
        subscription_ids: tuple[int, ...],
        done: Done | None,
        message_id: str,
    ) -> bool:
        """A copy of ``message`` for one persistent session held here, at QoS ``qos`` (1 or
        2), published into the message stream on ``<prefix>.q.=d.<its direct consumer>.<its
        subscription identifier>`` (``=d`` is no account's token, so no filter's subject
        matches it) and delivered by that consumer like the session's other QoS 1/2 messages,
        wherever the session is. ``done`` is told once it is stored (0) or not (a reason
        code); without it a copy not stored is delivered from this node's queue. A
        ``message_id`` makes JetStream store the copy once however often it is sent within
        the stream's duplicate window (``Nats-Msg-Id``). False when it cannot be tried (NATS
        or the stream out of reach, too many changes waiting)."""
        held = self._held.get(session.key)
        if (
            held is None
            or not qos
            or not (self.ready and self.bus.connected)
            or self._waiting >= self.settings.max_pending_claims
        ):
            return False
        if not held.direct:
            held.direct = _consumer_name(session.key, held.generation, _DIRECT, 0)
            self.save(session, None)
            if held.attached:
                self._bind(held, _DIRECT, held.direct)
        root = f"{self.subjects.prefix}.q.{DIRECT_TOKEN}.{held.direct}"
        sid = subscription_ids[0] if subscription_ids else 0
        copy = replace(message, qos=qos, retain=retain, encoded={})
        data = envelope.pack_now(copy, self.node, self.broker.clock.time)
        if done is None:
            done = partial(self._direct_stored, held, message, qos, subscription_ids)
        headers = {"Nats-Msg-Id": message_id} if message_id else None
        subject = f"{root}.{sid}"
        if held.direct_created:
            return self.stream.publish(subject, data, done, headers)
        # The first copies wait for the consumer (deliver new) to exist; then they go into
        # the stream as any QoS 1/2 message does, never waiting on a worker.
        waiting = held.direct_waiting
        if waiting is None:
            waiting = held.direct_waiting = []
            created = partial(self._direct_created, held)
            self._enqueue(held.record_key, ("direct_consumer", held, root, created))
        if len(waiting) >= self.settings.max_unacked_publishes:
            return False
        waiting.append((subject, data, headers, done))
        return True

    def _direct_created(self, held: _Held, refused: int) -> None:
        waiting, held.direct_waiting = held.direct_waiting or [], None
        for subject, data, headers, done in waiting:
            if refused:
                done(refused)
            elif not self.stream.publish(subject, data, done, headers):
                done(UNSPECIFIED)

    def _direct_stored(
        self,
        held: _Held,
        message: Message,
        qos: int,
        subscription_ids: tuple[int, ...],
        refused: int,
    ) -> None:
        if refused and self._held.get(held.session.key) is held:
            # Not in the stream: from this node's own queue, as on a hub of its own.
            self.broker.deliver(held.session, message, qos, True, subscription_ids)

    # ------------------------------------------------------------------ delivery

    def _hold(self, session: Session) -> _Held:
        held = self._held.get(session.key)
        if held is None:
            generation = secrets.token_hex(6)
            consumers: dict[str, tuple[str, ...]] = {}
            # A session restored from this node's store after a restart: its consumers are
            # those of its record.
            key = _record_key(session.account, session.client_id)
            record = self.records.get(key)
            direct = ""
            if record is not None and record.get("g"):
                generation = str(record["g"])
                direct = str(record.get("dc") or "")
                for stored in record.get("s", ()):
                    names = tuple(str(c) for c in stored.get("c", ()))
                    if names:
                        consumers[str(stored["f"])] = names
                        session.streamed = True
            held = self._held[session.key] = _Held(session, generation, key, False, consumers)
            held.direct = direct
            held.direct_created = bool(direct)
        return held

    def _attach(self, held: _Held) -> None:
        self._detach(held)
        held.attached = True
        for full_filter, names in held.consumers.items():
            for name in names:
                self._bind(held, full_filter, name)
        if held.direct:
            self._bind(held, _DIRECT, held.direct)

    def _bind(self, held: _Held, full_filter: str, name: str) -> None:
        handler = partial(self._delivered, held, full_filter)
        held.subscriptions.append(
            self.bus.subscribe_with_reply(deliver_subject(self.subjects, name), handler, "dlv")
        )

    def _detach(self, held: _Held) -> None:
        held.attached = False
        for subscription in held.subscriptions:
            self.bus.unsubscribe(subscription)
        held.subscriptions = []
        session = held.session
        released = {}
        for sequence, copy in held.copies.items():
            if copy.out.released:
                # PUBREL state, in the session's record too: resent by the session's next
                # connection (§4.4), here or on the node that resumes it; acknowledged in the
                # stream at its PUBCOMP, never sent again as a PUBLISH.
                released[sequence] = copy
                continue
            session.delivery.forget(copy.out)
            self.bus.send(copy.reply.decode(), NAK)  # back at once, wherever it is wanted
            self.counters.given_back += 1
        held.copies = released

    def _delivered(
        self, held: _Held, full_filter: str, subject: bytes, reply: bytes, data: bytes
    ) -> None:
        session = held.session
        if self._held.get(session.key) is not held or session.client is None:
            # Not this node's any more (moved, ended): back to the stream for the one it is.
            self.bus.send(reply.decode(), NAK)
            return
        count, sequence = ack_metadata(reply)
        counters = self.counters
        if count > 1:
            counters.redeliveries += 1
        else:
            counters.deliveries += 1
        # Acknowledged here lately: a redelivery, also one a newly elected consumer leader
        # counts as the first when it did not learn of the delivery.
        completed = held.completed
        if completed is not None and sequence in completed:
            counters.acknowledged_again += 1
            self.bus.send(reply.decode(), ACK)
            return
        copy = held.copies.get(sequence)
        if copy is not None:
            copy.reply = reply  # delivered again while in flight here: acknowledged once
            return
        arrival = read_delivery(self.bus, self.broker, reply, data)
        if arrival is None:
            return
        message = arrival.message
        if full_filter == _DIRECT:
            # A copy for this session alone (``send_retained``): its QoS and RETAIN flag as
            # they are, its subscription identifier the subject's last token.
            if arrival.expired:
                self.broker.stats.dropped_expired += 1
                self.bus.send(reply.decode(), ACK)
                return
            sid = _direct_subscription_id(subject)
            out = Outgoing(message, message.qos, message.retain, (sid,) if sid else ())
        else:
            entry = session.subscriptions.get(full_filter)
            if (
                entry is None
                or arrival.expired
                or (entry.no_local and message.origin == session.client_id)
            ):
                # Unsubscribed meanwhile, expired on the way (§3.3.2.3.3), or No Local.
                if arrival.expired:
                    self.broker.stats.dropped_expired += 1
                self.bus.send(reply.decode(), ACK)
                return
            out = Outgoing(
                message,
                min(message.qos, entry.qos),
                message.retain and entry.retain_as_published,
                () if entry.subscription_id is None else (entry.subscription_id,),
            )
        message.id = message.id or arrival.origin_message_id
        out.on_acked = partial(self._acknowledged, held, sequence)
        if out.qos == 2:
            out.on_released = partial(self._released, held, sequence)
        if not session.delivery.offer_stream(out, sequence % 65535 + 1, count > 1):
            counters.given_back += 1
            self.bus.send(reply.decode(), NAK_LATER)
            return
        held.copies[sequence] = _Copy(reply, out)

    def _released(self, held: _Held, sequence: int) -> Ticket:
        """PUBREC for a streamed QoS 2 copy: its release goes into the session's record; the
        PUBREL waits for the record (broker/client.py)."""
        copy = held.copies.get(sequence)
        if copy is not None:
            held.released[copy.out.packet_id] = sequence
        ticket = Ticket()
        self.save(held.session, ticket)
        return ticket

    def _acknowledged(self, held: _Held, sequence: int) -> None:
        copy = held.copies.pop(sequence, None)
        if copy is not None:
            self.counters.acknowledged += 1
            held.released.pop(copy.out.packet_id, None)
            if copy.reply:  # a release rebuilt on resume has none until JetStream redelivers
                self.bus.send(copy.reply.decode(), ACK)
            completed = held.completed
            if completed is None:
                completed = held.completed = Completed(self.settings.redelivery_memory)
            completed.add(sequence, time.monotonic())

    # ------------------------------------------------------------------ JetStream work

    def change(self, key: str, op: tuple[Any, ...]) -> None:
        """A JetStream change of another part of the node (cluster/groups.py: consumers of
        shared groups), done in order with the others of ``key``, within the same bound."""
        self._enqueue(key, op)

    def _enqueue(self, key: str, op: tuple[Any, ...]) -> None:
        done: Done | None = op[-1]
        if self._waiting >= self.settings.max_pending_claims or not self._queues:
            self.counters.dropped += 1
            if done is not None:
                done(0x97)
            return
        self._waiting += 1
        self._queues[zlib.crc32(key.encode()) % WORKERS].put_nowait(op)

    async def _work(self, queue: asyncio.Queue[tuple[Any, ...]]) -> None:
        while True:
            op = await queue.get()
            done: Done | None = op[-1]
            outcome = 0
            try:
                kv = self._kv
                if not self.bus.connected or (kv is None and op[0] in ("put", "delete")):
                    raise TimeoutError("NATS or the session records bucket not available")
                await self._apply(kv, op)
            except (TimeoutError, nats.errors.Error) as error:
                self.counters.failed += 1
                outcome = UNSPECIFIED
                log.info("session record change %s failed: %s", op[0], error)
            finally:
                queue.task_done()
                self._waiting -= 1
            if done is not None:
                done(outcome)

    async def _apply(self, kv: KeyValue | None, op: tuple[Any, ...]) -> None:
        kind = op[0]
        js = self.bus.jetstream()
        if kind == "add_consumer":
            await js.add_consumer(self.stream.name, op[1])
        elif kind == "consumer":
            _kind, name, subject, _done = op
            await js.add_consumer(
                self.stream.name,
                consumer_config(
                    name,
                    deliver_subject(self.subjects, name),
                    subject,
                    self.settings.consumer_ack_wait,
                    self.broker.settings.max_inflight,
                ),
            )
            self.counters.consumers_created += 1
        elif kind == "direct_consumer":
            # The consumer of the copies for one session alone (``send_copy``).
            _kind, held, root, _done = op
            if not held.direct_created:
                await js.add_consumer(
                    self.stream.name,
                    consumer_config(
                        held.direct,
                        deliver_subject(self.subjects, held.direct),
                        root + ".*",
                        self.settings.consumer_ack_wait,
                        self.broker.settings.max_inflight,
                    ),
                )
                held.direct_created = True
                self.counters.consumers_created += 1
        elif kind == "delete_consumer":
            try:
                await js.delete_consumer(self.stream.name, op[1])
            except NotFoundError:
                pass
            self.counters.consumers_deleted += 1
            # Said, as a consumer made again (deliver new) skips what came in between: the
            # trail a missing message is traced with (tests/cluster/test_cluster_crash.py).
            log.info("persistent session consumer %s deleted", op[1])
        elif kind == "put":
            assert kv is not None
            await kv.put(op[1], op[2])
        else:
            assert kv is not None
            try:
                await kv.delete(op[1])
            except NotFoundError:
                pass

    async def _watch(self) -> None:
        while True:
            kv = await self.bus.key_value(
                self.bucket, "ThingHub: persistent sessions, resumed on any node"
            )
            try:
                watcher = await kv.watchall()
            except (TimeoutError, nats.errors.Error) as error:
                log.info("session records bucket not ready: %s", error)
                await asyncio.sleep(self.settings.reconnect_wait)
                continue
            self._kv = kv
            records: dict[str, dict[str, Any]] = {}
            try:
                async for entry in watcher:
                    if entry is None:
                        # Caught up: the bucket as it is, and this node's own view of the
                        # sessions it holds (newer, or not written yet).
                        for held in self._held.values():
                            mine = self.records.get(held.record_key)
                            if mine is not None:
                                records[held.record_key] = mine
                        self.records = records
                        self.filters.reset(records)
                        self._watching = True
                        continue
                    if entry.operation in ("DEL", "PURGE") or not entry.value:
                        if self._watching:
                            self._forget_record(entry.key)
                        else:
                            records.pop(entry.key, None)
                        continue
                    try:
                        record = json.loads(entry.value)
                    except ValueError:
                        continue
                    if not isinstance(record, dict):
                        continue  # not a session record
                    if self._watching:
                        self._keep_record(entry.key, record)
                    else:
                        records[entry.key] = record
            finally:
                try:
                    await watcher.stop()  # type: ignore[no-untyped-call]
                except (nats.errors.Error, AttributeError):
                    pass
            return

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.settings.session_sweep_interval)
            if not self.ready:
                continue
            now = time.time()
            mine = {held.record_key for held in self._held.values()}
            alive = self.alive() | {self.node}
            dead_since = self._dead_since
            for key, record in list(self.records.items()):
                if key in mine:
                    continue
                if not record.get("d") and record.get("n") not in alive:
                    # Its node went while the client was connected there: offline since
                    # this node noticed, for its expiry's sake.
                    record = {**record, "d": int(dead_since.setdefault(key, now) * 1000)}
                else:
                    dead_since.pop(key, None)
                if _expired(record, now):
                    dead_since.pop(key, None)
                    self._remove_record(key, record)

    def _remove_record(self, key: str, record: dict[str, Any], keep_record: bool = False) -> None:
        """An expired or replaced session: its consumers and (unless replaced) record go."""
        self.counters.expired += 1
        for stored in record.get("s", ()):
            for name in stored.get("c", ()):
                self._enqueue(key, ("delete_consumer", str(name), None))
        if record.get("dc"):
            self._enqueue(key, ("delete_consumer", str(record["dc"]), None))
        if not keep_record:
            self._forget_record(key)
            self._enqueue(key, ("delete", key, None))

    def _keep_record(self, key: str, record: dict[str, Any]) -> None:
        self.records[key] = record
        self.filters.put(key, record)

    def _forget_record(self, key: str) -> None:
        self.records.pop(key, None)
        self.filters.drop(key)

    def takes(self, account: str, topic: str) -> bool:
        """True when a persistent session of the cluster, connected or not, on a live node
        or a dead one, waits for QoS 1/2 messages of ``topic`` (cluster/recordfilters.py)."""
        return self.filters.takes(account, topic)

    def status(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "records": len(self.records),
            "held": len(self._held),
            "waiting": self._waiting,
            **self.counters.__dict__,
        }


def consumer_config(
    name: str, deliver: str, subject: str, ack_wait: float, max_ack_pending: int
) -> ConsumerConfig:
    """A durable push consumer delivering new messages of ``subject`` to ``deliver``, in the
    queue group every node binds with (one node gets each delivery), acknowledged one by
    one and delivered again until acknowledged."""
    return ConsumerConfig(
        durable_name=name,
        deliver_subject=deliver,
        deliver_group="dlv",
        filter_subject=subject,
        deliver_policy=DeliverPolicy.NEW,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_ack_pending=max_ack_pending,
        max_deliver=-1,
    )


def read_delivery(bus: Bus, broker: Broker, reply: bytes, data: bytes) -> envelope.Arrival | None:
    """The envelope a consumer delivered; None for one that cannot be read, which is
    acknowledged (skipped: delivering it again would not make it readable)."""
    try:
        return envelope.unpack(data, time.time(), broker.clock.time())
    except envelope.EnvelopeError as error:
        log.info("an unreadable message in the stream was skipped: %s", error)
        bus.send(reply.decode(), ACK)
        return None


def deliver_subject(subjects: Subjects, name: str) -> str:
    return f"{subjects.prefix}.dlv.{name}"


def _record_key(account: str, client_id: str) -> str:
    return f"{escape_level(account)}.{escape_level(client_id)}"


def _consumer_name(session_key: str, generation: str, full_filter: str, index: int) -> str:
    digest = hashlib.sha256(f"{session_key}\x00{generation}\x00{full_filter}".encode())
    return f"s{digest.hexdigest()[:30]}{index}"


def _direct_subscription_id(subject: bytes) -> int:
    """The subscription identifier a direct copy's subject ends with (0: none)."""
    try:
        return int(subject.rsplit(b".", 1)[1])
    except (IndexError, ValueError):
        return 0


def _expired(record: dict[str, Any], now: float) -> bool:
    offline = record.get("d")
    expiry = record.get("e", 0)
    if not offline or not isinstance(expiry, int) or expiry >= 0xFFFFFFFF:
        return False
    return bool(now * 1000 >= int(offline) + expiry * 1000)


def ack_metadata(reply: bytes) -> tuple[int, int]:
    """(delivery count, stream sequence) of a JetStream delivery's reply subject:
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``,
    or the longer form with domain and account hash (nats-server 2.10+)."""
    tokens = reply.split(b".")
    try:
        if len(tokens) == 9:
            return int(tokens[4]), int(tokens[5])
        return int(tokens[6]), int(tokens[7])
    except (IndexError, ValueError):
        return 1, 0
