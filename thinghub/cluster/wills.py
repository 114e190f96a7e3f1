"""Wills of the clients of a node that died: published by another node.

A client's Will Message is published by the node it is connected to when the connection ends
without a DISCONNECT (§3.1.2.5, broker.py). A node killed outright publishes nothing, and its
devices' wills (the usual "this device went offline") would be lost with it. So while a
client with a will is connected, its node keeps the will in a JetStream key-value bucket
(``<prefix>_wills``), under ``<node>.<boot>.<account>.<client id>`` (escaped tokens,
cluster/subjects.py; ``boot`` is the node's run, cluster/interest.py), and removes it when the
connection ends, whichever way (a will due is then the node's own to publish, as on one hub).
When the other nodes stop hearing a node (``cluster.node_timeout``, cluster/remote.py; a node
that says it stops is not dead), the one of them whose name sorts first reads that node's keys
and publishes each will after its Will Delay Interval (the lower of it and the session's
expiry), unless by then the client connected again [MQTT-3.1.3-9]. A node that restarts
before the others noticed publishes the wills its earlier run left. A will is published only
by whoever deletes its key at the revision it read (compare-and-set), so two nodes never both
publish it.

A node cut off from NATS for ``node_timeout`` counts as dead: the others publish its clients'
wills though those may still be connected to it; when it is back it writes the wills of its
connected clients again (``rejoined``). Keys are written by ``WORKERS`` tasks, those of one key
always on the same one (in order); at most ``cluster.max_pending_claims`` wait, beyond that a
change is dropped and counted (that will is then not covered if its node dies).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import nats
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from ..broker.admission import PublishRefused, Service
from ..broker.session import Will
from ..message import Message
from . import envelope
from .bus import Bus
from .settings import ClusterSettings
from .subjects import Subjects, escape_level

if TYPE_CHECKING:
    from ..broker.broker import Broker
    from ..broker.session import Session

log = logging.getLogger("thinghub.cluster")

WORKERS = 8
#: Who publishes the will of a client of a dead node: not the client's connection (there is
#: none here), so the hub's deny lists apply but no client's own rights (its will was checked
#: against them when it connected, on its node).
WILL_OF_A_DEAD_NODE = Service("will")


@dataclass
class WillCounters:
    kept: int = 0  # wills written to the bucket
    removed: int = 0
    published_for_dead_nodes: int = 0
    # A dead node's will not sent: its client connected again within the will delay.
    cancelled: int = 0
    dropped: int = 0
    failed: int = 0


class ClusterWills:
    def __init__(
        self,
        bus: Bus,
        subjects: Subjects,
        settings: ClusterSettings,
        node: str,
        boot: str,
        broker: Broker,
        live_nodes: Callable[[], Collection[str]],
        owner_of: Callable[[str, str], Any],
    ) -> None:
        """``live_nodes``: the other nodes heard from lately; ``owner_of(account, client id)``:
        an awaitable of the node holding that client id now (cluster/owners.py), or None."""
        self.bus = bus
        self.settings = settings
        self.node = node
        self.broker = broker
        # This run's keys: ``<node>.<boot>.``; an earlier run's keys are that run's leftovers.
        self._prefix = f"{escape_level(node)}.{boot}."
        self.live_nodes = live_nodes
        self.owner_of = owner_of
        self.bucket = subjects.prefix.replace(".", "_") + "_wills"
        self.counters = WillCounters()
        # The sessions whose will this node keeps in the bucket: session key -> bucket key.
        self._kept: dict[str, str] = {}
        self._queues: list[asyncio.Queue[tuple[str, str, bytes]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting = 0
        self._kv: asyncio.Future[KeyValue] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._kv = loop.create_future()
        self._queues = [asyncio.Queue() for _ in range(WORKERS)]
        for queue in self._queues:
            self._spawn(self._work(queue))
        self._spawn(self._open_bucket())

    async def stop(self) -> None:
        """Let the last removals (the connections the hub just closed) reach the bucket,
        briefly, then stop: a will left there would be published by the others."""
        if self.ready and self.bus.connected:
            try:
                await asyncio.wait_for(asyncio.gather(*(q.join() for q in self._queues)), 2.0)
            except TimeoutError:
                log.info("stopping with %d wills unremoved", self._waiting)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except asyncio.CancelledError:
                pass

    @property
    def ready(self) -> bool:
        return self._kv is not None and self._kv.done() and not self._kv.cancelled()

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ from the broker

    def connected(self, session: Session) -> None:
        """A connection opened its session: keep its will, if it has one."""
        client = session.client
        will = None if client is None else client.will
        if client is None or will is None:
            self.closed(session)  # an earlier connection's will, if any, is not this one's
            return
        delay = min(client.will_delay, session.expiry_interval)
        key = f"{self._prefix}{escape_level(session.account)}.{escape_level(session.client_id)}"
        self._kept[session.key] = key
        self._enqueue(key, _value(will, delay, time.time()))

    def closed(self, session: Session) -> None:
        """The session's connection ended: its will, if due, is this node's to publish."""
        key = self._kept.pop(session.key, None)
        if key is not None:
            self._enqueue(key, b"")

    def rejoined(self) -> None:
        """Back on NATS after an absence: the others may have taken this node for dead and
        removed its wills; write those of the clients still connected again."""
        for session in list(self.broker.sessions.values()):
            if session.key in self._kept and session.client is not None:
                self.connected(session)

    def _enqueue(self, key: str, value: bytes) -> None:
        if not self._queues:
            return  # not started
        if self._waiting >= self.settings.max_pending_claims:
            self.counters.dropped += 1
            if self.counters.dropped == 1:
                log.warning("more than %d wills waiting for NATS: dropped (counted)", self._waiting)
            return
        self._waiting += 1
        self._queues[zlib.crc32(key.encode()) % WORKERS].put_nowait(
            ("put" if value else "delete", key, value)
        )

    # ------------------------------------------------------------------ the bucket

    async def _open_bucket(self) -> None:
        assert self._kv is not None
        self._kv.set_result(
            await self.bus.key_value(
                self.bucket, "ThingHub: the wills of connected clients, by node"
            )
        )
        # What an earlier run of this node left: the wills of connections it lost when it
        # stopped without closing them.
        self._spawn(self._publish_wills_of(self.node, skip=self._prefix))

    async def _work(self, queue: asyncio.Queue[tuple[str, str, bytes]]) -> None:
        assert self._kv is not None
        while True:
            kind, key, value = await queue.get()
            try:
                kv = await self._kv
                if kind == "put":
                    await kv.put(key, value)
                    self.counters.kept += 1
                else:
                    await kv.delete(key)
                    self.counters.removed += 1
            except (TimeoutError, nats.errors.Error) as error:
                self.counters.failed += 1
                log.info("will of %s not %s in the cluster: %s", key, kind, error)
            finally:
                self._waiting -= 1
                queue.task_done()

    # ------------------------------------------------------------------ nodes that died

    def nodes_gone(self, names: list[str]) -> None:
        """The others stopped hearing these nodes: if this node's name sorts first of those
        left, it publishes their wills."""
        if not self.ready or min([self.node, *self.live_nodes()]) != self.node:
            return
        for name in names:
            self._spawn(self._publish_wills_of(name))

    async def _publish_wills_of(self, dead: str, skip: str = "") -> None:
        """Publish the wills ``dead`` left (but those under ``skip``, this run's own)."""
        assert self._kv is not None
        kv = await self._kv
        prefix = f"{escape_level(dead)}."
        try:
            watcher = await kv.watch(f"{prefix}>", ignore_deletes=True)
            entries = []
            async for entry in watcher:
                if entry is None:
                    break  # the end of the values the bucket held
                # nats-server before 2.10 may ignore the watch's filter: checked here.
                if entry.key.startswith(prefix) and not (skip and entry.key.startswith(skip)):
                    entries.append(entry)
            await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped
        except (TimeoutError, nats.errors.Error) as error:
            self.counters.failed += 1
            log.warning("the wills of dead node %s could not be read: %s", dead, error)
            return
        if entries:
            log.warning("node %s is gone: publishing the wills of %d clients", dead, len(entries))
        for entry in entries:
            if entry.value:
                self._spawn(self._publish_when_due(kv, entry.key, entry.value, entry.revision))

    async def _publish_when_due(self, kv: KeyValue, key: str, value: bytes, revision: int) -> None:
        try:
            delay, account, client_id, will = _read(value)
        except (ValueError, envelope.EnvelopeError) as error:
            self.counters.failed += 1
            log.warning("an unreadable will in the cluster (%s): %s", key, error)
            return
        try:
            if delay > 0:
                await asyncio.sleep(delay)
                owner = await self.owner_of(account, client_id)
                if owner is not None and escape_level(owner) != key.partition(".")[0]:
                    # Connected again (on another node) within the will delay [MQTT-3.1.3-9].
                    self.counters.cancelled += 1
                    await _delete(kv, key, revision)
                    return
            if not await _delete(kv, key, revision):
                return  # another node published it, or its node came back and removed it
        except (TimeoutError, nats.errors.Error) as error:
            self.counters.failed += 1
            log.warning("the will of %r (node gone) not published: %s", client_id, error)
            return
        self.counters.published_for_dead_nodes += 1
        try:
            self.broker.publish(will, WILL_OF_A_DEAD_NODE)
        except PublishRefused as refusal:
            log.info("will of %r (node gone) not published: %s", client_id, refusal.reason)

    def status(self) -> dict[str, Any]:
        return {"ready": self.ready, "kept": len(self._kept), **self.counters.__dict__}


async def _delete(kv: KeyValue, key: str, revision: int) -> bool:
    """Delete ``key`` if it is still at ``revision``; whether this call did."""
    try:
        await kv.delete(key, last=revision)
    except KeyWrongLastSequenceError:
        return False
    return True


def _value(will: Will, delay: int, wall_now: float) -> bytes:
    """A header line (the delay, the client, the will's expiry interval, when written), then
    the will's envelope (cluster/envelope.py)."""
    message = will.message
    header = {
        "d": delay,
        "a": message.account,
        "c": message.origin,
        "x": message.expiry_interval,
        "t": round(wall_now, 3),
    }
    # Not routed yet: its expiry counts from its publication, so the envelope carries none.
    body = envelope.pack(replace(message, expires_at=None), "", wall_now, 0.0)
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + body


def _read(value: bytes) -> tuple[int, str, str, Message]:
    head, _newline, body = value.partition(b"\n")
    header = json.loads(head)
    arrival = envelope.unpack(body, time.time(), 0.0)
    message = arrival.message
    message.expiry_interval = header.get("x")
    return int(header["d"]), str(header["a"]), str(header["c"]), message
