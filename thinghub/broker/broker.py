"""The broker facade: sessions, routing, retained messages, wills.

Every way into the hub ends in ``Broker.publish(message, publisher)``: an MQTT client's
PUBLISH and its Will (via ``Client``), the HTTP dialects, the hub's services. ``publish`` first
asks the admission gate (admission.py) whether that publisher may send that message now, then
stores a retained message, looks up the
matching subscriptions in the trie, merges overlapping ones per session (one copy at the
highest granted QoS, all subscription identifiers, §3.3.4), picks one member of each shared
group (§4.8.2), and hands each copy to ``deliver``, which either writes it to the connected
client or queues it on the session, within the configured bounds.

Nothing here touches sockets: a connected client is reached through its ``Link``; timers and
the time come from the ``Clock`` seam so tests can drive them.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from ..config import MQTTSettings
from ..errors import ThingHubError
from ..message import Message
from ..mqtt.packets import Subscription
from ..mqtt.types import ReasonCode
from ..store.base import BrokerStore, StoredState, StoredSubscription
from ..store.memory import MemoryStore
from ..topics import parse_shared
from ..trace import fates
from ..trace.recorder import REFUSED as TRACE_REFUSED
from ..trace.recorder import SERVICE as TRACE_SERVICE
from ..trace.recorder import UNTRACED, TraceRecorder
from .admission import Admission, Publisher, PublishRefused, Refusal
from .auth import (
    AllowAnonymous,
    Authenticator,
    Authorizer,
    ConnectionObserver,
    DenyList,
    RequireCredentials,
)
from .client import Client, Link
from .fanout import fan_out
from .queue import DeliveryContext, Outgoing, deliver_now
from .session import Session, SharedGroup, SubscriptionEntry, TimerHandle, Will
from .space import RetainedBudget, TopicSpace, TrieKey, TrieValue, Watch
from .stats import Stats
from .timeouts import Deadlines

log = logging.getLogger("thinghub.broker")


class Clock(Protocol):
    """The time seam: an asyncio event loop satisfies it; tests may pass a fake."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle: ...


class SharePlan(Protocol):
    """Which shared groups this node delivers a message to (one copy per group in the whole
    cluster, thinghub/cluster/shared.py)."""

    def keep(
        self, matches: tuple[tuple[TrieKey, TrieValue], ...]
    ) -> tuple[tuple[TrieKey, TrieValue], ...]: ...


class AckTicket(Protocol):
    """Replicated storage an acknowledgement waits for besides the store's commit (the
    cluster's message stream, thinghub/cluster/stream.py): ``then`` calls back once, with 0
    when it is stored there, else the MQTT 5 reason code its publisher is refused with."""

    def then(self, callback: Callable[[int], None]) -> None: ...


class ClusterLink(Protocol):
    """The seam to the other nodes of a cluster (thinghub/cluster/node.py); None on a hub of
    its own. Asked, for each message published here, which node delivers each shared group
    (``plan``; None when no shared group is concerned), and told of the message after the
    local fan-out (``forward`` returns 1 when other nodes may deliver it, and may raise
    ThingHubError to refuse a QoS 1/2 message it cannot pass on); told of each filter
    entering or leaving the tries, and of each session opened or ended
    (docs/architecture.md, *Cluster*)."""

    def plan(self, message: Message) -> SharePlan | None: ...

    def forward(self, message: Message, plan: SharePlan | None) -> int: ...

    def take_ticket(self) -> AckTicket | None:
        """What the acknowledgement of the message just published waits for, if anything."""

    def subscribed(self, account: str, full_filter: str) -> None: ...

    def unsubscribed(self, account: str, full_filter: str) -> None: ...

    def session_opened(self, session: Session, clean_start: bool) -> None: ...

    def session_ended(self, session: Session) -> None: ...

    # Persistent sessions kept in the cluster (thinghub/cluster/consumers.py): their
    # subscriptions and QoS 1/2 copies live in JetStream, so they resume on any node.

    def streams(self, message: Message) -> bool:
        """Whether ``message`` goes through the cluster's message stream (then the fan-out
        skips the copies of the sessions whose consumers bring them: ``Session.streamed``)."""

    def resume_session(self, session: Session) -> bool:
        """A new session here, not clean: rebuilt from the cluster's record of it, if it was
        held on another node (its subscriptions restored); True then (Session Present)."""

    def session_closed(self, session: Session) -> None:
        """The session's connection is gone; the session lives on (its expiry runs)."""

    def check_subscription(self, session: Session, topic_filter: str, qos: int) -> int | None:
        """None if the subscription can be kept in the cluster, else the reason code to
        refuse it with (its message stream or NATS out of reach: MQTT 5 0x97 / 0x80)."""

    def subscription_kept(self, session: Session, entry: SubscriptionEntry, new: bool) -> None:
        """A subscription of a persistent session (its SUBACK waits: ``take_ticket``)."""

    def subscription_dropped(self, session: Session, full_filter: str) -> None:
        """A persistent session's UNSUBSCRIBE (its UNSUBACK waits: ``take_ticket``)."""

    def send_retained(
        self, session: Session, message: Message, qos: int, subscription_ids: tuple[int, ...]
    ) -> bool:
        """A retained message for a persistent session's new subscription, at QoS 1/2: True
        when the cluster's message stream takes it (then it moves with the session), False
        when this node should deliver it."""


class Broker:
    def __init__(
        self,
        settings: MQTTSettings,
        clock: Clock,
        *,
        authenticator: Authenticator | None = None,
        authorizer: Authorizer | None = None,
        store: BrokerStore | None = None,
        new_message_id: Callable[[], int] | None = None,
        observers: Sequence[ConnectionObserver] = (),
        trace: TraceRecorder | None = None,
    ) -> None:
        self.observers = tuple(observers)
        self.settings = settings
        self.store: BrokerStore = MemoryStore() if store is None else store
        self._new_message_id = new_message_id or _counter()
        self.clock = clock
        self.stats = Stats()
        # The CONNACK every MQTT 5 client gets unless its own expiry or an assigned client id
        # shows in it, by Session Present: encoded at the first connect (Client._handle_connect).
        self.v5_connacks: dict[bool, bytes] = {}
        if authenticator is None:
            authenticator = AllowAnonymous() if settings.allow_anonymous else RequireCredentials()
        self.authenticator = authenticator
        if authorizer is None and (settings.deny_publish or settings.deny_subscribe):
            authorizer = DenyList(settings.deny_publish, settings.deny_subscribe)
        self.admission = Admission(settings, authorizer, self.store)
        # A store that fails for good commits nothing more: acknowledgements waiting on it
        # would never leave (store/base.py, StoreHealth).
        self.store.on_failed(self._store_failed)
        # What every session's delivery queue shares (queue.py).
        # The delivery trace (thinghub/trace), None when it is off; the queues share it.
        self.trace = trace
        self.delivery_context = DeliveryContext(
            settings, self.store, self.stats, clock, self._new_message_id, trace
        )
        self.retained_budget = RetainedBudget()
        # Bytes of topic filters held by all sessions (mqtt.max_subscription_bytes_total).
        self.subscription_bytes = 0
        # deny_subscribe also keeps its topics from subscriptions that are broader than any
        # deny filter (``#``): checked once per message, only when configured.
        self._hidden = DenyList((), settings.deny_subscribe) if settings.deny_subscribe else None
        # Sessions by Session.key (account and client id).
        self.sessions: dict[str, Session] = {}
        self.clients: set[Client] = set()
        # The CONNECT timeouts and keep alives of every connection, on one timer
        # (timeouts.py): a loop timer per connection would cost ~600 bytes each.
        self.deadlines: Deadlines[Client] = Deadlines(Client.deadline_passed, clock)
        # One topic space per account: nothing crosses accounts (see space.py).
        self.spaces: dict[str, TopicSpace] = {}
        # CONNECTs handled in this turn of the loop, and the clients whose CONNECT waits for
        # a later turn (mqtt.connects_per_turn; see may_connect_now).
        self._connects_this_turn = 0
        self._turn_scheduled = False
        self._waiting_connects: deque[Client] = deque()
        # Ended connections whose session work waits for a later turn (may_end_now).
        self._ends_this_turn = 0
        self._waiting_ends: deque[Client] = deque()
        # The other nodes of a cluster, when there are (ClusterLink above).
        self.cluster: ClusterLink | None = None
        # Services answering requests on reserved topics, by topic prefix (see intercept).
        self._interceptors: dict[str, Callable[[Message], bool]] = {}
        self._intercepted_prefixes: tuple[str, ...] = ()

    @property
    def authorizer(self) -> Authorizer | None:
        """Who may publish and subscribe where; the admission gate asks it for publishes."""
        return self.admission.authorizer

    @authorizer.setter
    def authorizer(self, authorizer: Authorizer | None) -> None:
        self.admission.authorizer = authorizer

    def _store_failed(self) -> None:
        """The store stopped writing: end the connections whose acknowledgements wait on a
        commit that will not come, so that their clients send those messages again, to
        this hub once it is back or to another (MQTT 5 §4.13: 0x80 Unspecified error)."""
        for client in list(self.clients):
            if client.acks_waiting:
                client.disconnect(ReasonCode.UNSPECIFIED_ERROR, "the message store failed")

    def space(self, account: str) -> TopicSpace:
        space = self.spaces.get(account)
        if space is None:
            space = self.spaces[account] = TopicSpace(account, self.retained_budget)
        return space

    # ------------------------------------------------------------------ connections

    def connection_made(self, link: Link) -> Client:
        """A transport accepted a connection: the returned Client takes its bytes."""
        client = Client(self, link)
        self.clients.add(client)
        return client

    def may_connect_now(self, client: Client) -> bool:
        """Whether ``client`` may handle its CONNECT in this turn of the event loop. A sign-in
        costs far more than a message (a signature to check, a session to open), and a fleet
        coming back at once brings thousands in one turn: at most ``mqtt.connects_per_turn``
        are handled per turn, the others wait, in order, for the next turns
        (``Client.resume_connect``), while established clients' traffic flows in between."""
        limit = self.settings.connects_per_turn
        if not limit:
            return True
        self._schedule_turn()
        if self._waiting_connects or self._connects_this_turn >= limit:
            self._waiting_connects.append(client)
            return False
        self._connects_this_turn += 1
        return True

    def may_end_now(self, client: Client) -> bool:
        """Whether the session work of ``client``'s ended connection (its will, the session's
        expiry, the observers) is done in this turn. A fleet whose network drops closes
        thousands of sockets at once: at most ``mqtt.disconnects_per_turn`` are wound down
        per turn, the others in the next turns (``Client.end_connection``), in order. A
        client that comes back meanwhile takes its session over as from a live connection."""
        limit = self.settings.disconnects_per_turn
        if not limit:
            return True
        self._schedule_turn()
        if self._waiting_ends or self._ends_this_turn >= limit:
            self._waiting_ends.append(client)
            return False
        self._ends_this_turn += 1
        return True

    def finish_pending(self) -> None:
        """At shutdown: wind down every ended connection still waiting for its turn (their
        sessions' state must reach the store before it closes)."""
        waiting = self._waiting_ends
        while waiting:
            waiting.popleft().end_connection()

    def _schedule_turn(self) -> None:
        if not self._turn_scheduled:
            self._turn_scheduled = True
            self.clock.call_later(0, self._next_turn)

    def _next_turn(self) -> None:
        self._turn_scheduled = False
        self._connects_this_turn = 0
        self._ends_this_turn = 0
        # Ends first: a client coming back finds its old connection wound down.
        ends = self._waiting_ends
        end_limit = self.settings.disconnects_per_turn
        while ends and self._ends_this_turn < end_limit:
            self._ends_this_turn += 1
            ends.popleft().end_connection()
        waiting = self._waiting_connects
        limit = self.settings.connects_per_turn
        while waiting and self._connects_this_turn < limit:
            client = waiting.popleft()
            if client.closed:
                continue
            self._connects_this_turn += 1
            client.resume_connect()
        if waiting or ends:
            self._schedule_turn()

    def open_session(self, client: Client, clean_start: bool, expiry: int) -> tuple[Session, bool]:
        """Attach ``client`` to its session (§3.1.2.4), taking over any live connection.
        Returns the session and the Session Present flag."""
        client_id = client.client_id
        key = session_key(client.account, client_id)
        session = self.sessions.get(key)
        if session is not None and session.client is not None:
            old = session.client
            # A new connection with a Will Delay resumes this session, so the old will waits
            # for the delay (and is then cancelled on resume) [MQTT-3.1.3-9]... unless the new
            # connection starts clean, which ends the session and sends the will at once.
            old.taken_over(publish_will=clean_start or session.expiry_interval == 0)
            if session.expiry_interval == 0:
                # The old connection is closed, and a session with expiry 0 ends with it
                # (§3.1.2.11.2; 3.1.1 [MQTT-3.1.2-6]): the new connection does not resume it.
                self.end_session(session)
                session = None
        if session is not None:
            session.cancel_timers()
            if clean_start:
                self.end_session(session)
                session = None
            else:
                # The session resumed before the will delay ran out: no will [MQTT-3.1.3-9].
                session.pending_will = None
        present = session is not None
        if session is None:
            session = Session(client_id, expiry, client.account, self.delivery_context)
            # Keyed by the session's own key string: one copy per session, not two.
            self.sessions[session.key] = session
        if present and expiry == 0 and session.persistent:
            # The expiry a CONNECT asks for decides what happens when *this* connection ends
            # (§3.1.2.11.2); the session it resumes is still what it was, with its queue on
            # disk: that is delivered now, and the session ends with the connection
            # (close_session). Should the hub crash meanwhile, the session comes back with its
            # earlier expiry, as if this connection had not happened.
            session.expiry_interval = 0
        else:
            self.set_session_expiry(session, expiry)
        session.client = client
        if self.cluster is not None:
            if not present and not clean_start and session.persistent:
                # Held on another node until now (or on one that died): resumed here.
                present = self.cluster.resume_session(session)
            self.cluster.session_opened(session, clean_start)  # a client id is cluster-wide
        if session.persistent:
            # Durability: the session's expiry clock is stopped while connected.
            self.store.session_connected(session.key)
        return session, present

    def set_session_expiry(self, session: Session, expiry: int) -> None:
        """Only sessions that outlive their connection are persisted (§4.1)."""
        was_persistent = session.persistent
        session.expiry_interval = expiry
        session.persistent = expiry > 0
        if session.persistent:
            self.store.save_session(session.key, expiry)
            if not was_persistent:
                # Becoming persistent mid-session: record what it already has.
                for entry in session.subscriptions.values():
                    self.store.save_subscription(session.key, _stored(entry))
        elif was_persistent:
            self.store.delete_session(session.key)
            # Its messages on disk went with it (the session ends with its connection).
            session.delivery.forget_disk()

    def close_session(self, session: Session, will: Will | None, will_delay: int) -> None:
        """The session's connection is gone: start its expiry clock and schedule its will."""
        session.client = None
        if self.cluster is not None:
            self.cluster.session_closed(session)
        expiry = session.expiry_interval
        if session.persistent and expiry > 0:
            # Durability: the store counts the expiry from this wall-clock time, so
            # it also runs while the hub is down.
            self.store.session_disconnected(session.key, int(time.time() * 1000))
            session.delivery.went_offline()
        if will is not None:
            delay = min(will_delay, expiry)
            if delay <= 0:
                self.publish_will(will)
            else:
                session.pending_will = will
                session.will_timer = self.clock.call_later(delay, self._will_due, session)
        if expiry == 0:
            self.end_session(session)
        elif expiry < 0xFFFFFFFF:
            session.expiry_timer = self.clock.call_later(expiry, self._session_expired, session)

    def _will_due(self, session: Session) -> None:
        session.will_timer = None
        will, session.pending_will = session.pending_will, None
        if will is not None:
            self.publish_will(will)

    def publish_will(self, will: Will) -> None:
        """Publish a Will as its client would have (§3.1.2.5): through the same gate, so a
        client's rights when it connected are its Will's rights when it fires."""
        try:
            self.publish(will.message, will.publisher)
        except PublishRefused as refusal:
            log.info("will of %s not published: %s", will.publisher.client_id, refusal.reason)

    def _session_expired(self, session: Session) -> None:
        session.expiry_timer = None
        if self.sessions.get(session.key) is session and session.client is None:
            self.end_session(session)

    def end_session(self, session: Session) -> None:
        """Discard a session: its subscriptions, queue and in-flight messages (§4.1). A will
        still waiting for its delay is sent now, since the session ended first (§3.1.3.2.2)."""
        session.cancel_timers()
        will, session.pending_will = session.pending_will, None
        for entry in list(session.subscriptions.values()):
            self._remove_from_trie(entry)
        session.subscriptions.clear()
        queued = session.delivery.queued
        if queued:
            log.debug("session %s ended with %d queued messages", session.client_id, queued)
        session.delivery.clear()
        self.subscription_bytes -= session.subscription_bytes
        session.subscription_bytes = 0
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]
            if self.cluster is not None:
                self.cluster.session_ended(session)
        if session.persistent:
            session.persistent = False
            self.store.delete_session(session.key)
        if will is not None:
            self.publish_will(will)

    # ------------------------------------------------------------------ subscriptions

    def subscribe(self, session: Session, sub: Subscription, subscription_id: int | None) -> bool:
        """Add or replace a subscription [MQTT-3.8.4-3]. Returns True if it is new."""
        group, topic_filter = parse_shared(sub.topic_filter)
        entry = SubscriptionEntry(
            session=session,
            full_filter=sub.topic_filter,
            topic_filter=topic_filter,
            qos=sub.qos,
            no_local=sub.no_local,
            retain_as_published=sub.retain_as_published,
            retain_handling=sub.retain_handling,
            subscription_id=subscription_id,
            share_group=group,
            subscribed_at_ms=int(time.time() * 1000),
        )
        old = session.subscriptions.get(sub.topic_filter)
        if old is not None:
            self._remove_from_trie(old)
        else:
            size = len(sub.topic_filter)
            session.subscription_bytes += size
            self.subscription_bytes += size
        session.subscriptions[sub.topic_filter] = entry
        space = self.space(session.account)
        if group is None:
            space.subscriptions.add(topic_filter, session.client_id, entry)
        else:
            shared = space.groups.get((group, topic_filter))
            if shared is None:
                shared = SharedGroup(name=group, topic_filter=topic_filter, members=[])
                space.groups[(group, topic_filter)] = shared
            shared.members.append(entry)
            space.subscriptions.add(topic_filter, ("$share", group), shared)
        cluster = self.cluster
        if cluster is not None:
            cluster.subscribed(session.account, sub.topic_filter)
            if session.persistent:
                cluster.subscription_kept(session, entry, old is None)
        if session.persistent:
            self.store.save_subscription(session.key, _stored(entry))
        return old is None

    def unsubscribe(self, session: Session, full_filter: str) -> bool:
        entry = session.subscriptions.pop(full_filter, None)
        if entry is None:
            return False
        session.subscription_bytes -= len(full_filter)
        self.subscription_bytes -= len(full_filter)
        self._remove_from_trie(entry)
        if session.persistent:
            self.store.delete_subscription(session.key, full_filter)
            if self.cluster is not None:
                self.cluster.subscription_dropped(session, full_filter)
        return True

    def _remove_from_trie(self, entry: SubscriptionEntry) -> None:
        space = self.space(entry.session.account)
        if entry.share_group is None:
            space.subscriptions.remove(entry.topic_filter, entry.session.client_id)
        else:
            group_key = (entry.share_group, entry.topic_filter)
            shared = space.groups.get(group_key)
            if shared is not None:
                shared.members = [m for m in shared.members if m is not entry]
                if not shared.members:
                    del space.groups[group_key]
                    space.subscriptions.remove(entry.topic_filter, ("$share", entry.share_group))
        if self.cluster is not None:
            # After the removal: the cluster looks at who is left in a shared group.
            self.cluster.unsubscribed(entry.session.account, entry.full_filter)

    # ------------------------------------------------------------------ publishing

    def publish(self, message: Message, publisher: Publisher) -> int:
        """Route one message to every matching subscription; returns how many sessions it was
        handed to. Retained messages are stored (or deleted, for an empty payload) first.
        Raises PublishRefused, having changed nothing, when the admission gate refuses it."""
        space = self.spaces.get(message.account)
        self._admit(message, publisher, space)
        try:
            return self._route(message, space)
        except PublishRefused:
            raise  # refused before any delivery (ClusterLink.plan)
        except ThingHubError as error:
            # A MessageId could not be issued for a persistent copy (its lease cannot be
            # written: the disk is full). Nothing was stored; copies already handed to online
            # clean sessions stay delivered, which QoS 1 allows and a retry repeats.
            self.stats.refused_store_unavailable += 1
            raise PublishRefused(
                Refusal.UNAVAILABLE, ReasonCode.QUOTA_EXCEEDED, str(error)
            ) from error

    def _route(
        self,
        message: Message,
        space: TopicSpace | None,
        forward: bool = True,
        plan: SharePlan | None = None,
    ) -> int:
        self.stats.received[message.qos] += 1
        message.received_at = time.monotonic()  # accepted: delivery latency counts from here
        recorder = self.trace
        if recorder is None:
            slot = UNTRACED
        elif message.received_at < recorder.spent_until and not message.id:
            # The trace's budget of MQTT publishes is spent for this second: its check in
            # TraceRecorder.begin, inlined (the call would cost more than the message's trace).
            recorder.over_budget += 1
            slot = UNTRACED
        else:
            # Every traced message has a MessageId from here on (TraceRecorder.begin).
            slot = recorder.begin(message, self._new_message_id)
        prefixes = self._intercepted_prefixes
        if prefixes and message.topic.startswith(prefixes) and self._intercepted(message):
            if recorder is not None and slot != UNTRACED:
                recorder.outcome(slot, TRACE_SERVICE)
            return 1  # one receiver, the service: a v5 PUBACK says Success, not 0x10
        cluster = self.cluster
        if not forward or cluster is None:
            return self._route_here(message, space, recorder, slot, plan)
        plan = cluster.plan(message)
        copies = self._route_here(message, space, recorder, slot, plan)
        return copies + cluster.forward(message, plan)

    def route_from_cluster(self, message: Message, plan: SharePlan | None = None) -> int:
        """Route a message another node of the cluster published: to this node's sessions
        only (and, of the shared groups, those ``plan`` gives this node), never back to the
        cluster. The publishing node checked its admission."""
        return self._route(message, self.spaces.get(message.account), False, plan)

    def keep_retained(self, message: Message) -> None:
        """Keep (or, with an empty payload, forget) a retained message another node of the
        cluster published while this one was away: stored, not routed."""
        self._store_retained(self.space(message.account), message)

    def _route_here(
        self,
        message: Message,
        space: TopicSpace | None,
        recorder: TraceRecorder | None,
        slot: int,
        plan: SharePlan | None = None,
    ) -> int:
        """Retained message kept, watches told, local fan-out: how many copies were made."""
        if message.expiry_interval is not None and message.expires_at is None:
            message.expires_at = self.clock.time() + message.expiry_interval
        if message.retain:
            if space is None:
                space = self.space(message.account)
            self._store_retained(space, message)
        if space is None:
            return 0
        if space.watches:
            for _key, watch in space.watches.match(message.topic):
                watch.callback(message)
        matches = space.subscriptions.match(message.topic)
        if plan is not None:
            matches = plan.keep(matches)  # the shared groups another node delivers go
        if not matches:
            return 0
        if self._hidden is not None and self._hidden.hides(message.topic):
            self.stats.dropped_not_authorized += 1
            if recorder is not None and slot != UNTRACED:
                recorder.hidden(slot, _subscribers(matches))
            return 0
        deliver = self.deliver
        cluster = self.cluster
        if cluster is not None and message.qos and cluster.streams(message):
            # The persistent sessions' QoS 1/2 copies come from their JetStream consumers,
            # and so do the shared groups' (thinghub/cluster/groups.py).
            if recorder is None or slot == UNTRACED:
                return fan_out(
                    message, matches, self._deliver_unstreamed, None, 0, _streamed_elsewhere
                )
            copies = fan_out(
                message,
                matches,
                self._deliver_unstreamed,
                recorder.handed[slot],
                recorder.max_sessions,
                _streamed_elsewhere,
            )
            recorder.routed(slot, copies)
            return copies
        if recorder is None or slot == UNTRACED:
            return fan_out(message, matches, deliver)
        copies = fan_out(message, matches, deliver, recorder.handed[slot], recorder.max_sessions)
        recorder.routed(slot, copies)
        return copies

    def _admit(self, message: Message, publisher: Publisher, space: TopicSpace | None) -> None:
        try:
            self.admission.admit(message, publisher, space, self.retained_budget)
        except PublishRefused as refusal:
            stats = self.stats
            if refusal.kind is Refusal.NOT_AUTHORIZED:
                stats.dropped_not_authorized += 1
            elif refusal.kind is Refusal.QUOTA:
                stats.dropped_retained_full += 1
                if space is not None and not space.retained_full_logged:
                    space.retained_full_logged = True
                    log.warning(
                        "retained messages of account %r are at their limit (%s); new or "
                        "larger retained messages are refused",
                        space.account,
                        refusal.reason,
                    )
            else:
                stats.refused_store_unavailable += 1
            recorder = self.trace
            if recorder is not None:
                # Traced too: a 3.1.1 publisher is not told (§3.4).
                slot = recorder.begin(message, self._new_message_id)
                if slot != UNTRACED:
                    recorder.outcome(slot, TRACE_REFUSED, refusal.reason)
            raise

    def deliver(
        self,
        session: Session,
        message: Message,
        qos: int,
        retain: bool,
        subscription_ids: tuple[int, ...] = (),
    ) -> None:
        """Hand one copy of a message to a session: QoS 0 goes to a connected client or
        nowhere (not kept for offline sessions, §4.1 "MAY", as mosquitto does); QoS 1/2 to
        the session's queue (queue.py), which sends it or keeps it."""
        if qos == 0:
            client = session.client
            if client is None:
                self.stats.dropped_offline_qos0 += 1
                if self.trace is not None:
                    self.trace.event(message.id, session.client_id, fates.OFFLINE_QOS0)
                return
            out = Outgoing(message, 0, retain, subscription_ids)
            # A copy sent is not reported to the trace: fan_out said who got one.
            if (
                not deliver_now(client, out, self.settings.max_write_buffer, self.stats)
                and self.trace is not None
            ):
                self.trace.event(message.id, session.client_id, fates.SLOW_CONSUMER)
            return
        session.delivery.offer(Outgoing(message, qos, retain, subscription_ids))

    def _deliver_unstreamed(
        self,
        session: Session,
        message: Message,
        qos: int,
        retain: bool,
        subscription_ids: tuple[int, ...] = (),
    ) -> None:
        if qos and session.streamed:
            return  # its consumer in the cluster's message stream brings this copy
        self.deliver(session, message, qos, retain, subscription_ids)

    def deliver_retained(
        self, session: Session, message: Message, qos: int, subscription_ids: tuple[int, ...]
    ) -> None:
        """A retained message for a new subscription (§3.3.1.3: RETAIN 1). In a cluster a
        persistent session's QoS 1/2 copy goes through the message stream, so that it moves
        with the session until acknowledged (thinghub/cluster/consumers.py)."""
        cluster = self.cluster
        if (
            qos
            and session.persistent
            and cluster is not None
            and cluster.send_retained(session, message, qos, subscription_ids)
        ):
            return
        self.deliver(session, message, qos, True, subscription_ids)

    # ------------------------------------------------------------------ retained

    def _store_retained(self, space: TopicSpace, message: Message) -> None:
        # The admission gate has checked the account's and the hub's retained limits.
        if not message.payload:
            # A retained message with an empty payload deletes the one stored [MQTT-3.3.1-6].
            if space.forget_retained(message.topic):
                self.store.delete_retained(message.account, message.topic)
            return
        if not message.id:
            message.id = self._new_message_id()
        space.retain(message)
        self.store.save_retained(message)

    def retained_for(self, account: str, topic_filter: str) -> list[Message]:
        """The unexpired retained messages of ``account`` matched by ``topic_filter``."""
        space = self.spaces.get(account)
        if space is None:
            return []
        now = self.clock.time()
        found: list[Message] = []
        hidden = self._hidden
        for topic, message in space.retained.match(topic_filter):
            if hidden is not None and hidden.hides(topic):
                continue
            if message.expired(now):
                # Expired retained messages go too (§3.3.2.3.3).
                space.forget_retained(topic)
                self.store.delete_retained(account, topic)
                continue
            # Its body may have left the store with its last delivery; the next persistent
            # delivery saves it again (saving is idempotent).
            message.stored = False
            found.append(message)
        return found

    # ------------------------------------------------------------------ for the HTTP APIs

    def new_message_id(self) -> int:
        """A 63-bit, time-ordered MessageId (the hub's generator when one is configured)."""
        return self._new_message_id()

    def watch(self, account: str, topic_filter: str, callback: Callable[[Message], None]) -> Watch:
        """Call ``callback`` for every message published in ``account`` matching the filter,
        until the returned watch is cancelled."""
        space = self.space(account)
        watch = Watch(space, topic_filter, callback)
        space.watches.add(topic_filter, id(watch), watch)
        return watch

    def intercept(self, prefix: str, handler: Callable[[Message], bool] | None) -> None:
        """Offer every message published to a topic starting with ``prefix`` to ``handler``
        first, whoever published it (an MQTT client, an HTTP dialect, a will). A handler that
        returns True has consumed the message: it is neither retained nor routed. For hub
        services that answer requests on reserved topics (the AWS device shadow service,
        ``$aws/things/``); they publish their answers with ``publish`` like anyone else.
        ``None`` removes the handler of ``prefix``."""
        if handler is None:
            self._interceptors.pop(prefix, None)
        else:
            self._interceptors[prefix] = handler
        self._intercepted_prefixes = tuple(self._interceptors)

    def _intercepted(self, message: Message) -> bool:
        topic = message.topic
        return any(
            topic.startswith(prefix) and handler(message)
            for prefix, handler in self._interceptors.items()
        )

    def session_of(self, account: str, client_id: str) -> Session | None:
        return self.sessions.get(session_key(account, client_id))

    def retained_message(self, account: str, topic: str) -> Message | None:
        space = self.spaces.get(account)
        if space is None:
            return None
        message = space.retained.get(topic)
        if message is not None and message.expired(self.clock.time()):
            return None
        return message

    def retained_messages(self, account: str) -> list[Message]:
        """Every unexpired retained message of the account, sorted by topic (for paging)."""
        space = self.spaces.get(account)
        if space is None:
            return []
        now = self.clock.time()
        found = [m for _topic, m in space.retained.items() if not m.expired(now)]
        found.sort(key=lambda m: m.topic)
        return found

    def disconnect_client(
        self, account: str, client_id: str, *, clean_session: bool, prevent_will: bool
    ) -> bool:
        """Close a client's connection as an administrator (v5 DISCONNECT 0x98). With
        ``clean_session`` its session ends too; with ``prevent_will`` its will is not sent.
        Returns False if the client is not connected."""
        session = self.session_of(account, client_id)
        if session is None or session.client is None:
            return False
        client = session.client
        if prevent_will:
            client.will = None
        if clean_session:
            self.set_session_expiry(session, 0)
        client.disconnect(ReasonCode.ADMINISTRATIVE_ACTION, "disconnected by an administrator")
        return True

    def send_direct(
        self,
        account: str,
        client_id: str,
        message: Message,
        publisher: Publisher,
        on_acked: Callable[[], None] | None = None,
    ) -> bool:
        """Deliver a message to one connected client whatever its subscriptions, at the
        message's QoS; ``on_acked`` runs when a QoS 1/2 copy is acknowledged. Returns False
        if the client is not connected. Raises PublishRefused as ``publish`` does."""
        session = self.session_of(account, client_id)
        if session is None or session.client is None:
            return False
        self._admit(message, publisher, self.spaces.get(account))
        self.stats.received[message.qos] += 1
        message.received_at = time.monotonic()
        if self.trace is not None:
            self.trace.direct(message, session.client_id, self._new_message_id)
        if message.qos == 0:
            self.deliver(session, message, 0, False)
            if on_acked is not None:
                on_acked()
            return True
        session.delivery.offer(Outgoing(message, message.qos, False, on_acked=on_acked))
        return True

    # ------------------------------------------------------------------ recovery

    def restore(self) -> None:
        """Rebuild persistent sessions (offline), their subscriptions, queued and in-flight
        messages, and retained messages from the store, at start-up."""
        state: StoredState = self.store.load()
        for retained in state.retained:
            self.space(retained.account).retain(retained)
        for stored in state.sessions.values():
            session = Session(
                stored.client_id, stored.expiry_interval, stored.account, self.delivery_context
            )
            session.persistent = stored.expiry_interval > 0
            self.sessions[session.key] = session
            for sub in stored.subscriptions.values():
                self._restore_subscription(session, sub)
            for delivery in stored.deliveries:
                message = state.messages.get(delivery.message_id)
                if message is None:
                    continue
                message.stored = True
                session.delivery.restore(
                    Outgoing(
                        message,
                        delivery.qos,
                        delivery.retain,
                        delivery.subscription_ids,
                        delivery.packet_id,
                        delivery.released,
                    )
                )
            # The queue stays on disk until the session's client is back.
            session.delivery.restore_spilled(stored.queued, stored.queued_bytes)
            if stored.inbound_qos2:
                session.inbound_qos2 = set(stored.inbound_qos2)
            if session.expiry_interval < 0xFFFFFFFF:
                # The time the hub was down counts against the expiry; the store
                # already dropped sessions whose expiry passed while it was down.
                left = float(session.expiry_interval)
                if stored.disconnected_at_ms is not None:
                    down_s = (time.time() * 1000 - stored.disconnected_at_ms) / 1000
                    left = max(0.0, left - down_s)
                session.expiry_timer = self.clock.call_later(left, self._session_expired, session)

    def _restore_subscription(self, session: Session, stored: StoredSubscription) -> None:
        persistent, session.persistent = session.persistent, False  # already stored
        self.subscribe(
            session,
            Subscription(
                topic_filter=stored.full_filter,
                qos=stored.qos,
                no_local=stored.no_local,
                retain_as_published=stored.retain_as_published,
                retain_handling=stored.retain_handling,
            ),
            stored.subscription_id,
        )
        session.persistent = persistent

    # ------------------------------------------------------------------ shutdown

    def close_all(self) -> None:
        for client in list(self.clients):
            client.server_shutdown()


def _stored(entry: SubscriptionEntry) -> StoredSubscription:
    return StoredSubscription(
        full_filter=entry.full_filter,
        qos=entry.qos,
        no_local=entry.no_local,
        retain_as_published=entry.retain_as_published,
        retain_handling=entry.retain_handling,
        subscription_id=entry.subscription_id,
    )


def _counter() -> Callable[[], int]:
    """A process-local message id source, for brokers built without the hub's id generator."""
    state = [0]

    def next_id() -> int:
        state[0] += 1
        return state[0]

    return next_id


def session_key(account: str, client_id: str) -> str:
    """The key of a session in ``Broker.sessions`` (the same as ``Session.key``)."""
    return f"{account}\x00{client_id}"


def _subscribers(matches: Sequence[tuple[TrieKey, TrieValue]]) -> Iterator[str]:
    """The client ids of every session behind ``matches`` (shared groups: each member), for
    the trace of a message none of them gets."""
    seen: set[str] = set()
    for _key, value in matches:
        entries = value.members if type(value) is SharedGroup else (value,)
        for entry in entries:
            assert type(entry) is SubscriptionEntry
            client_id = entry.session.client_id
            if client_id not in seen:
                seen.add(client_id)
                yield client_id


def _streamed_elsewhere(
    session: Session,
    message: Message,
    qos: int,
    retain: bool,
    subscription_ids: tuple[int, ...] = (),
) -> None:
    """A shared group's copy of a streamed message: its JetStream consumer brings it to
    one member, wherever in the cluster (thinghub/cluster/groups.py)."""
