"""The node's one connection to NATS: kept up, its outbound traffic bounded and in order.

What the rest of the cluster code sees is synchronous and never waits: ``send`` queues a
message (False when the bound is reached or NATS is out of reach, so that the caller drops or
refuses it and says so), ``subscribe``/``unsubscribe`` queue an interest change, and the
handler of a subscription is called with each message as it comes off the wire. One task
(the pump) hands the queued operations to nats-py in the order they were made, so that an
announcement made after a subscription reaches the other nodes after the subscription does
(docs/architecture.md, *Cluster*).

Batches: ``send_batched`` gathers the messages of one event-loop turn per subject and hands
each subject's to NATS as one message (cluster/envelope.py ``pack_batch``) when the turn ends
(once per turn, ``loop.call_soon``), before any other operation queued after them, and early
once ``cluster.batch_bytes`` wait; so the order of messages on one subject (one MQTT topic of one
account: MQTT orders per topic, §4.6) is the order they were sent in, and everything queued
after a batched message still reaches NATS after it.

Inbound messages are handled in wire order, in nats-py's reading task. nats-py runs each
subscription's callback on a task of its own, which loses the order between subscriptions
(a message matched through "a.*" could be handled before an earlier one matched through
"a.>"), and MQTT keeps the order per publisher and topic (§4.6). ``_Connection`` therefore
hands the messages of this node's subscriptions to their handler from ``_process_msg``, the
one place nats-py sees every message in order; that method is nats-py's own (2.16.0, pinned
in pyproject.toml), and tests/cluster/test_cluster_bus.py checks the order against a real
nats-server. A handler must not block: it runs between two reads of the socket.

Supervision: the first connection is tried until it works, nats-py reconnects after that (to
any server of ``cluster.nats_urls`` or that the cluster announced), and subscriptions are
renewed by nats-py on reconnect. While NATS is out of reach the hub's health says
``degraded`` (component "cluster"); nothing else stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client as NATSClient
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from ..health import Health
from .envelope import pack_batch
from .natsserver import MIN_VERSION, too_old
from .settings import ClusterSettings

log = logging.getLogger("thinghub.cluster")

#: Called with the subject (bytes, as it came off the wire) and the payload of a message.
Handler = Callable[[bytes, bytes], None]
#: Called with the subject, the reply subject and the payload (JetStream deliveries, whose
#: reply subject is where they are acknowledged: cluster/consumers.py).
ReplyHandler = Callable[[bytes, bytes, bytes], None]
COMPONENT = "cluster"


class _Connection(NATSClient):
    """nats-py's client with this node's subscriptions served inline, in wire order."""

    def __init__(self, on_error: Callable[[BaseException], None]) -> None:
        super().__init__()
        self.inline: dict[int, Handler] = {}
        self.inline_reply: dict[int, ReplyHandler] = {}
        self._on_error = on_error

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        handler = self.inline.get(sid)
        if handler is None:
            with_reply = self.inline_reply.get(sid)
            if with_reply is None:
                # JetStream API replies and anything else nats-py serves itself.
                await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
                return
            self.stats["in_msgs"] += 1
            self.stats["in_bytes"] += len(data)
            try:
                with_reply(subject, reply, data)
            except Exception as error:
                self._on_error(error)
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        try:
            handler(subject, data)
        except Exception as error:
            # A bug in a handler costs that message, never the connection.
            self._on_error(error)


@dataclass(eq=False)
class BusSubscription:
    """One subscription of this node; renewed by nats-py on every reconnect."""

    subject: str
    queue: str
    handler: Handler | None
    sub: Subscription | None = None
    cancelled: bool = False
    reply_handler: ReplyHandler | None = None


@dataclass
class BusCounters:
    sent: int = 0
    sent_bytes: int = 0
    # Messages not handed to NATS: the outbound bound was reached, or NATS was out of reach.
    refused_full: int = 0
    refused_disconnected: int = 0
    # Messages nats-py would not take (its own reconnect buffer full, a payload too large).
    failed: int = 0
    handler_errors: int = 0
    connects: int = 0
    disconnects: int = 0


@dataclass(eq=False)
class Bus:
    settings: ClusterSettings
    node: str
    health: Health
    counters: BusCounters = field(default_factory=BusCounters)
    # Called (on the loop) each time the connection is (re)established: the interest table
    # resynchronises, since announcements may have been lost meanwhile.
    on_connected: Callable[[], None] | None = None
    _nc: _Connection | None = None
    _ops: deque[tuple[Any, ...]] = field(default_factory=deque)
    _queued_bytes: int = 0
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _connected: asyncio.Event = field(default_factory=asyncio.Event)
    _closing: bool = False
    _logged_errors: int = 0
    # The nats-server versions already warned of as too old (cluster/natsserver.py).
    _warned_versions: set[str] = field(default_factory=set)
    # send_batched's messages of this loop turn, per subject, in the order first sent.
    _batches: dict[str, list[bytes]] = field(default_factory=dict)
    _batched_bytes: int = 0
    _seal_scheduled: bool = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> bool:
        """Connect (in the background from now on) and wait up to ``connect_timeout`` for the
        first connection. False if it is not there yet: the hub starts anyway, degraded."""
        self.health.register(COMPONENT)
        self.health.degrade(COMPONENT, "connecting to NATS")
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._connect_loop()), loop.create_task(self._pump())]
        try:
            await asyncio.wait_for(self._connected.wait(), self.settings.connect_timeout)
        except TimeoutError:
            log.warning(
                "NATS (%s) not reachable within %ss; the hub starts without the cluster and "
                "keeps trying",
                ", ".join(self.settings.nats_urls),
                self.settings.connect_timeout,
            )
            return False
        return True

    async def close(self) -> None:
        """Hand what is queued to NATS (briefly), then close the connection."""
        self._closing = True
        if self._nc is not None and self._nc.is_connected:
            try:
                await asyncio.wait_for(self._drain_ops(), 2.0)
                await self._nc.flush(timeout=2)
            except (TimeoutError, nats.errors.Error) as error:
                log.info("closing the NATS connection with work left: %s", error)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._nc is not None:
            try:
                await self._nc.close()
            except nats.errors.Error as error:  # already closed, or the socket died
                log.debug("NATS close: %s", error)
        self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def server(self) -> str | None:
        """The NATS server this node is connected to now, as a URL."""
        nc = self._nc
        url = nc.connected_url if nc is not None else None
        return None if url is None else url.geturl()

    @property
    def server_version(self) -> str | None:
        """The version the NATS server this node is connected to announced."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            return None
        announced = nc.connected_server_version
        return f"{announced.major}.{announced.minor}.{announced.patch}"

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def jetstream(self) -> JetStreamContext:
        """The JetStream API on this connection (to be called once connected)."""
        assert self._nc is not None
        return self._nc.jetstream(timeout=self.settings.request_timeout)

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def key_value(self, bucket: str, description: str) -> KeyValue:
        """The cluster's key-value bucket ``bucket`` (one value per key, replicated like the
        streams), made by whichever node needs it first. Waits for NATS, and tries again while
        JetStream cannot answer (no meta leader yet, or another node making it at the same
        moment)."""
        while True:
            await self.wait_connected()
            js = self.jetstream()
            try:
                try:
                    return await js.key_value(bucket)
                except BucketNotFoundError:
                    return await js.create_key_value(
                        KeyValueConfig(
                            bucket=bucket,
                            history=1,
                            replicas=self.settings.stream_replicas,
                            storage=StorageType.FILE,
                            description=description,
                        )
                    )
            except (TimeoutError, nats.errors.Error) as error:
                log.info("bucket %s not ready: %s", bucket, error)
                await asyncio.sleep(self.settings.reconnect_wait)

    # ------------------------------------------------------------------ operations

    def can_take(self, size: int) -> bool:
        """Whether ``send`` would take a message of ``size`` bytes now."""
        return (
            self._connected.is_set()
            and self._queued_bytes + size <= self.settings.outbound_buffer_bytes
        )

    def send(
        self,
        subject: str,
        payload: bytes,
        reply: str = "",
        on_failed: Callable[[], None] | None = None,
        headers: dict[str, str] | None = None,
    ) -> bool:
        """Queue one message for NATS. False, and nothing queued, when NATS is out of reach
        or ``outbound_buffer_bytes`` are already waiting. ``reply``: where the answer goes (a
        JetStream publish acknowledgement, cluster/stream.py); ``on_failed`` is called if
        nats-py will not take the message after all."""
        if not self._connected.is_set():
            self.counters.refused_disconnected += 1
            return False
        size = len(payload)
        if self._queued_bytes + size > self.settings.outbound_buffer_bytes:
            self.counters.refused_full += 1
            return False
        self._queued_bytes += size
        if self._batches:
            self._seal()
        self._ops.append(("pub", subject, payload, reply, on_failed, headers))
        self._wake.set()
        return True

    def send_batched(self, subject: str, payload: bytes) -> bool:
        """``send``, gathered with the other messages for ``subject`` of this loop turn into
        one NATS message (see the module's docstring); for envelopes (cluster/envelope.py)
        the receiving node reads with ``split_batch``."""
        if not self._connected.is_set():
            self.counters.refused_disconnected += 1
            return False
        size = len(payload)
        if self._queued_bytes + size > self.settings.outbound_buffer_bytes:
            self.counters.refused_full += 1
            return False
        self._queued_bytes += size
        batch = self._batches.get(subject)
        if batch is None:
            self._batches[subject] = [payload]
            if not self._seal_scheduled:
                self._seal_scheduled = True
                asyncio.get_running_loop().call_soon(self._seal)
        else:
            batch.append(payload)
        self._batched_bytes += size
        if self._batched_bytes >= self.settings.batch_bytes:
            self._seal()
        return True

    def _seal(self) -> None:
        """The waiting batches into the queue of operations, as one message each."""
        self._seal_scheduled = False
        batches = self._batches
        if not batches:
            return
        self._batches = {}
        self._batched_bytes = 0
        ops = self._ops
        for subject, envelopes in batches.items():
            if len(envelopes) == 1:
                payload = envelopes[0]
            else:
                payload = pack_batch(envelopes)
                self._queued_bytes += len(payload) - sum(map(len, envelopes))
            ops.append(("pub", subject, payload, "", None, None))
        self._wake.set()

    def subscribe(self, subject: str, handler: Handler, queue: str = "") -> BusSubscription:
        """Subscribe (once connected, and again after every reconnect); ``queue`` makes it a
        member of that queue group: NATS gives each message to one member of a group."""
        subscription = BusSubscription(subject, queue, handler)
        self._seal()
        self._ops.append(("sub", subscription))
        self._wake.set()
        return subscription

    def subscribe_with_reply(
        self, subject: str, handler: ReplyHandler, queue: str = ""
    ) -> BusSubscription:
        """``subscribe`` for a handler that needs each message's reply subject."""
        subscription = BusSubscription(subject, queue, None, reply_handler=handler)
        self._seal()
        self._ops.append(("sub", subscription))
        self._wake.set()
        return subscription

    def unsubscribe(self, subscription: BusSubscription) -> None:
        subscription.cancelled = True
        self._seal()
        self._ops.append(("unsub", subscription))
        self._wake.set()

    # ------------------------------------------------------------------ the tasks

    async def _connect_loop(self) -> None:
        """Until the first connection works; nats-py keeps it up after that."""
        settings = self.settings
        attempt = 0
        while not self._closing:
            nc = _Connection(self._handler_failed)
            try:
                await nc.connect(
                    servers=list(settings.nats_urls),
                    name=f"thinghub-{self.node}",
                    # A node never hears its own messages back (no loops).
                    no_echo=True,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=settings.reconnect_wait,  # type: ignore[arg-type]
                    connect_timeout=max(1, int(settings.request_timeout)),
                    # A dead server is noticed within a few heartbeats, not NATS' 2 minutes.
                    ping_interval=max(1, int(settings.node_timeout)),
                    max_outstanding_pings=2,
                    pending_size=settings.outbound_buffer_bytes,
                    error_cb=self._error,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    closed_cb=self._closed,
                )
            except (OSError, TimeoutError, nats.errors.Error) as error:
                attempt += 1
                if attempt == 1:
                    log.warning("cannot reach NATS yet (%s); retrying", error)
                self.health.degrade(COMPONENT, f"cannot reach NATS: {error}")
                await asyncio.sleep(settings.reconnect_wait)
                continue
            self._nc = nc
            self._up()
            return

    def _up(self) -> None:
        self.counters.connects += 1
        self.health.recover(COMPONENT)
        version = self.server_version
        log.info("connected to NATS at %s (nats-server %s) as node %s", self.server, version,
                 self.node)  # fmt: skip
        if version is not None and too_old(version) and version not in self._warned_versions:
            self._warned_versions.add(version)
            log.warning(
                "nats-server %s at %s is older than %d.%d: its replicated JetStream consumers "
                "can skip messages after a server failure, so persistent sessions may lose "
                "acknowledged messages (cluster/natsserver.py); upgrade NATS",
                version, self.server, *MIN_VERSION,
            )  # fmt: skip
        self._connected.set()
        self._wake.set()
        if self.on_connected is not None:
            self.on_connected()

    async def _disconnected(self) -> None:
        if self._closing:
            return
        self.counters.disconnects += 1
        self._connected.clear()
        self.health.degrade(COMPONENT, "connection to NATS lost; reconnecting")
        log.warning("connection to NATS lost; reconnecting")

    async def _reconnected(self) -> None:
        self._up()

    async def _closed(self) -> None:
        self._connected.clear()

    async def _error(self, error: Exception) -> None:
        if not self._closing:
            log.info("NATS: %s", error)

    def _handler_failed(self, error: BaseException) -> None:
        self.counters.handler_errors += 1
        if self._logged_errors < 1:
            self._logged_errors += 1
            log.error(
                "a cluster message handler failed (logged once)",
                exc_info=(type(error), error, error.__traceback__),
            )

    async def _pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._connected.is_set():
                continue  # woken again by _up
            await self._drain_ops()

    async def _drain_ops(self) -> None:
        self._seal()
        nc = self._nc
        assert nc is not None
        ops = self._ops
        counters = self.counters
        while ops and nc.is_connected:
            op = ops.popleft()
            kind = op[0]
            if kind == "pub":
                payload: bytes = op[2]
                self._queued_bytes -= len(payload)
                try:
                    await nc.publish(op[1], payload, reply=op[3], headers=op[5])
                except nats.errors.Error as error:
                    counters.failed += 1
                    log.debug("NATS would not take a message: %s", error)
                    if op[4] is not None:
                        op[4]()
                    continue
                counters.sent += 1
                counters.sent_bytes += len(payload)
            elif kind == "sub":
                subscription: BusSubscription = op[1]
                if subscription.cancelled:
                    continue
                sub = await nc.subscribe(subscription.subject, queue=subscription.queue)
                subscription.sub = sub
                if subscription.handler is not None:
                    nc.inline[sub._id] = subscription.handler
                elif subscription.reply_handler is not None:
                    nc.inline_reply[sub._id] = subscription.reply_handler
            else:
                subscription = op[1]
                held = subscription.sub
                if held is not None:
                    nc.inline.pop(held._id, None)
                    nc.inline_reply.pop(held._id, None)
                    subscription.sub = None
                    try:
                        await held.unsubscribe()
                    except nats.errors.Error as error:
                        log.debug("NATS unsubscribe: %s", error)
