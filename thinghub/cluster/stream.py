"""The cluster's message stream: a QoS 1/2 message is acknowledged once JetStream has it.

Every QoS 1/2 message published on a node goes to NATS on its "q" subject
(``Subjects.queued``), as a JetStream publish: the stream ``<prefix>_msgs`` captures those
subjects, replicated (``cluster.stream_replicas``), in files, bounded (``stream_max_bytes``,
``stream_max_msgs``, ``stream_max_age``; discard new, so a full stream refuses rather than
drops what it holds). A message is kept while a consumer (the persistent sessions'
subscriptions, cluster/consumers.py) may still need it: every ``cluster.stream_trim_interval``
one node (the live one whose name sorts first) purges what lies below every consumer's
acknowledgement floor (``_trim``). Not JetStream's
interest retention, which does that by itself: with replicated consumers, nats-server 2.9
removes now and then a message one filtered consumer has not delivered yet once the others
acknowledged it, so that session never gets it (tests/cluster/test_cluster_crash.py found it;
the same test passes with this trim). Other nodes' core subscriptions receive the same
NATS message, so the online routing is the one of QoS 0 (cluster/node.py).

It is published on every QoS 1/2 message, whatever the interest table says: the node of an
offline persistent session may be dead, and then nobody announces its filters.

The answer (JetStream's PubAck) comes back on this node's reply inbox, one subscription for
all, handled inline in wire order (cluster/bus.py): no task and no future per message. Each
publish hands back a ``Ticket`` part; the publisher's acknowledgement (PUBACK, PUBREC, an
HTTP 200 with a MessageId) waits on the ticket as it waits on the store's commit
(broker/client.py ``_acknowledge``, http/publishing.py), and is refused when JetStream
refuses the message (stream full, no quorum), when no answer comes within
``cluster.request_timeout`` or when nats-py cannot send it. At most
``cluster.max_unacked_publishes`` wait at once: past that ``can_take`` says no and the
publisher is refused before anything is delivered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import nats
from nats.js.api import (
    ConsumerInfo,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from .bus import COMPONENT, Bus
from .settings import ClusterSettings
from .subjects import Subjects

log = logging.getLogger("thinghub.cluster")

#: Called once with 0 (JetStream stored the message), else the MQTT 5 reason code to refuse
#: its publisher with (§3.4.2.1): 0x97 Quota exceeded when a bound was reached (the stream
#: full: discard new), 0x80 Unspecified error when there was no answer (no quorum, NATS
#: gone).
Done = Callable[[int], None]
QUOTA_EXCEEDED = 0x97
UNSPECIFIED = 0x80
#: JetStream lists at most this many consumers per request.
_CONSUMERS_PAGE = 256


class Ticket:
    """The JetStream acknowledgements one publication waits for (usually one; more when a
    service published while it was routed). ``then`` calls back once all are in, with the
    first refusal's reason code (0: all stored); at once when none is outstanding."""

    __slots__ = ("_callbacks", "_reason", "_waiting")

    def __init__(self) -> None:
        self._waiting = 0
        self._reason = 0
        self._callbacks: list[Done] = []

    def part(self) -> Done:
        self._waiting += 1
        return self._one

    def then(self, callback: Done) -> None:
        if self._waiting:
            self._callbacks.append(callback)
        else:
            callback(self._reason)

    def _one(self, reason: int) -> None:
        if reason and not self._reason:
            self._reason = reason
        self._waiting -= 1
        if not self._waiting:
            callbacks, self._callbacks = self._callbacks, []
            for callback in callbacks:
                callback(self._reason)


@dataclass
class StreamCounters:
    # QoS 1/2 messages JetStream acknowledged, refused (stream full, no quorum, no stream),
    # and those whose answer did not come within request_timeout or that nats-py would not
    # send.
    acknowledged: int = 0
    refused: int = 0
    timed_out: int = 0
    # Turns of ``_trim`` done, and messages it purged below every consumer's acknowledgement
    # floor.
    trims: int = 0
    trimmed: int = 0
    # Turns that purged nothing because a replica of the stream was offline or behind.
    trims_skipped: int = 0


class MessageStream:
    def __init__(
        self,
        bus: Bus,
        subjects: Subjects,
        settings: ClusterSettings,
        trims: Callable[[], bool] = lambda: True,
    ) -> None:
        """``trims``: whether this node is the one that trims the stream now."""
        self.bus = bus
        self.trims = trims
        self.settings = settings
        self.name = subjects.prefix.replace(".", "_") + "_msgs"
        self.subjects = subjects.queued_all
        self.counters = StreamCounters()
        # Replies come to "<inbox>.<token>"; tokens count up, so the oldest waits first.
        self._inbox = f"_INBOX.thinghub.{secrets.token_hex(8)}"
        self._next = 0
        self._waiting: dict[int, Done] = {}
        self._deadlines: deque[tuple[float, int]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._logged_refusal = False
        # (monotonic time, the stream's last sequence then), one per trim: a purge goes no
        # further than what the stream held ``stream_trim_delay`` seconds ago.
        self._marks: deque[tuple[float, int]] = deque()
        self.ready = False
        self.problem = "not set up yet"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.bus.subscribe(self._inbox + ".*", self._answered)

    def connected(self) -> None:
        """(Re)connected to NATS: make sure the stream is there (JetStream keeps it, but the
        first node of a new cluster creates it)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for done in list(self._waiting.values()):
            done(UNSPECIFIED)
        self._waiting.clear()
        self._deadlines.clear()

    async def _run(self) -> None:
        await self._ensure()
        while True:
            # What the stream holds beyond what the consumers need is at most this long's
            # QoS 1/2 traffic (against stream_max_msgs / _bytes).
            await asyncio.sleep(self.settings.stream_trim_interval)
            if not self.trims():
                continue  # another node does it: one listing of the consumers, not one per node
            try:
                await self._trim()
            except (TimeoutError, nats.errors.Error) as error:
                log.info("message stream not trimmed: %s", error)  # again at the next turn

    async def _trim(self) -> None:
        """Purge what no consumer needs any more: below the lowest acknowledgement floor of
        the consumers with something pending or unacknowledged. The stream's last sequence is
        read before the consumers: a consumer with nothing pending needs nothing up to it (a
        consumer created later delivers only newer messages, deliver policy "new"). Nothing is
        purged when a consumer is missing from the list or has no leader (one being elected
        after a NATS server went): its floor is unknown.

        A consumer's count of what is pending comes from its leader's copy of the stream,
        which may lag behind the stream's leader (a NATS server catching up after a restart):
        it then says "nothing pending" of messages it has not seen yet. So nothing is purged
        while a replica of the stream is offline or not current, and a purge goes no further
        than the stream's last sequence ``stream_trim_delay`` seconds ago."""
        js = self.bus.jetstream()
        info = await js.stream_info(self.name)
        state = info.state
        now = time.monotonic()
        marks = self._marks
        marks.append((now, state.last_seq))
        settled = now - self.settings.stream_trim_delay
        while len(marks) > 1 and marks[1][0] <= settled:
            marks.popleft()  # the newest mark old enough stays first
        replicas = info.cluster.replicas if info.cluster is not None else None
        if marks[0][0] > settled or any(
            peer.offline or not peer.current for peer in replicas or ()
        ):
            self.counters.trims_skipped += 1
            return
        floor = marks[0][1] + 1
        consumers = await self._consumers()
        for consumer in consumers:
            if consumer.cluster is not None and not consumer.cluster.leader:
                return
            if consumer.num_pending or consumer.num_ack_pending:
                acked = consumer.ack_floor.stream_seq if consumer.ack_floor else 0
                floor = min(floor, (acked or 0) + 1)
        if len(consumers) < state.consumer_count:
            return
        if floor > state.first_seq and state.messages:
            await js.purge_stream(self.name, seq=floor)
            self.counters.trimmed += min(floor - state.first_seq, state.messages)
        self.counters.trims += 1

    async def consumer_names(self) -> list[str]:
        return [consumer.name for consumer in await self._consumers()]

    async def _consumers(self) -> list[ConsumerInfo]:
        """Every consumer of the stream, page by page."""
        js = self.bus.jetstream()
        found: list[ConsumerInfo] = []
        while True:
            page = await js.consumers_info(self.name, len(found) or None)
            found.extend(page)
            if len(page) < _CONSUMERS_PAGE:
                return found

    async def _ensure(self) -> None:
        settings = self.settings
        config = StreamConfig(
            name=self.name,
            description="ThingHub: QoS 1/2 messages until every persistent session has them",
            subjects=[self.subjects],
            # Kept until _trim finds every consumer past it (see the module's docstring).
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=settings.stream_replicas,
            max_bytes=settings.stream_max_bytes,
            max_msgs=settings.stream_max_msgs,
            max_age=settings.stream_max_age,
            discard=DiscardPolicy.NEW,
        )
        while True:
            js = self.bus.jetstream()
            try:
                try:
                    info = await js.stream_info(self.name)
                except NotFoundError:
                    await js.add_stream(config)
                else:
                    if info.config.retention == RetentionPolicy.INTEREST:
                        # JetStream cannot change a stream's retention; trimming still works.
                        log.warning(
                            "message stream %s has interest retention (made by an older "
                            "ThingHub): nats-server 2.9 may drop messages a persistent session "
                            "has not had; delete it while the cluster is idle to recreate it",
                            self.name,
                        )
            except (TimeoutError, nats.errors.Error) as error:
                # No JetStream meta leader yet, or another node created it at this moment.
                self.problem = f"message stream not ready: {error}"
                log.info("%s", self.problem)
                # QoS 1/2 work is refused meanwhile: /healthz says why.
                self.bus.health.degrade(COMPONENT, self.problem)
                await asyncio.sleep(settings.reconnect_wait)
                continue
            if self.problem and self.bus.connected:
                self.bus.health.recover(COMPONENT)
            self.ready = True
            self.problem = ""
            return

    # ------------------------------------------------------------------ publishing

    @property
    def unacknowledged(self) -> int:
        return len(self._waiting)

    def can_take(self, size: int) -> bool:
        """Whether ``publish`` would take a message of ``size`` bytes now."""
        return (
            self.ready
            and len(self._waiting) < self.settings.max_unacked_publishes
            and self.bus.can_take(size)
        )

    def publish(
        self, subject: str, data: bytes, done: Done, headers: dict[str, str] | None = None
    ) -> bool:
        """Publish into the stream; ``done`` is called with the outcome. False (``done`` not
        called) when the stream cannot take it now."""
        if not self.ready or len(self._waiting) >= self.settings.max_unacked_publishes:
            return False
        token = self._next
        self._next += 1
        reply = f"{self._inbox}.{token}"
        if not self.bus.send(subject, data, reply, lambda: self._fail(token), headers):
            return False
        self._waiting[token] = done
        loop = asyncio.get_running_loop()
        self._deadlines.append((loop.time() + self.settings.request_timeout, token))
        if self._timer is None:
            self._timer = loop.call_later(self.settings.request_timeout, self._expire)
        return True

    def _answered(self, subject: bytes, data: bytes) -> None:
        try:
            token = int(subject.rsplit(b".", 1)[1])
        except (IndexError, ValueError):
            return
        waiting = self._waiting
        done = waiting.pop(token, None)
        deadlines = self._deadlines
        while deadlines and deadlines[0][1] not in waiting:
            deadlines.popleft()  # answered: no deadline to watch
        if done is None:
            return  # answered after its time ran out: the publisher was told already
        code = UNSPECIFIED
        reason = "no JetStream stream answered"  # an empty 503 status: no responders
        if data:
            try:
                answer = json.loads(data)
                error = answer.get("error")
                if error is None and "seq" in answer:
                    code = 0
                else:
                    reason = str(error)
                    # "maximum messages/bytes exceeded", "insufficient resources": a bound.
                    text = str(error.get("description", "")).lower()
                    if "exceeded" in text or "insufficient" in text:
                        code = QUOTA_EXCEEDED
            except (ValueError, AttributeError):
                reason = "unreadable answer"
        if not code:
            self.counters.acknowledged += 1
        else:
            self.counters.refused += 1
            if not self._logged_refusal:
                self._logged_refusal = True
                log.warning("the message stream refused a message (logged once): %s", reason)
        done(code)

    def _fail(self, token: int) -> None:
        done = self._waiting.pop(token, None)
        if done is not None:
            self.counters.timed_out += 1
            done(UNSPECIFIED)

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadlines = self._deadlines
        while deadlines and (deadlines[0][0] <= now or deadlines[0][1] not in self._waiting):
            _deadline, token = deadlines.popleft()
            self._fail(token)
        if deadlines:
            self._timer = loop.call_later(max(0.01, deadlines[0][0] - now), self._expire)

    def status(self) -> dict[str, object]:
        return {
            "ready": self.ready,
            "name": self.name,
            "unacknowledged": len(self._waiting),
            "acknowledged": self.counters.acknowledged,
            "refused": self.counters.refused,
            "timed_out": self.counters.timed_out,
            "trims": self.counters.trims,
            "trimmed": self.counters.trimmed,
            "trims_skipped": self.counters.trims_skipped,
        }
