"""Retained messages, cluster-wide: every node keeps them all, and a node that was away
catches up from JetStream.

A retained message (or the empty one that deletes it) is published to every node, on one
subject per topic (``Subjects.retained``), and each node keeps it in its topic space and its
store as if it had been published there (cluster/node.py). A JetStream stream
(``<prefix>_retained``) captures those subjects, keeping the last message of each
(``max_msgs_per_subject = 1``): the cluster's retained messages, replicated
(``cluster.stream_replicas``). A node catches up from it every time it (re)connects to NATS,
since retained messages published while it was away or not yet started never reached it.

The catch-up reads the last message of every subject and keeps each as the topic's retained
message (or forgets the topic, for a deletion); it routes none of them, their subscribers of
the time got them where they were published. A retained message arriving live meanwhile is
newer than, or the same as, what the catch-up holds for its topic, so the catch-up leaves the
topics that live messages have touched alone (``live``) and cannot put an older message back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from ..message import Message
from . import envelope
from .bus import Bus
from .settings import ClusterSettings
from .subjects import Subjects

log = logging.getLogger("thinghub.cluster")

_BATCH = 256

#: Keeps a retained message of another node without routing it (Broker.keep_retained).
Keep = Callable[[Message], None]


class RetainedStream:
    def __init__(
        self,
        bus: Bus,
        subjects: Subjects,
        settings: ClusterSettings,
        keep: Keep,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self.bus = bus
        self.subjects = subjects
        self.settings = settings
        self.keep = keep
        self.clock = clock
        self.wall_clock = wall_clock
        self.stream = subjects.prefix.replace(".", "_") + "_retained"
        self.filter = subjects.retained_all
        # The topics live retained messages touched during a catch-up; None outside one.
        self._live: set[tuple[str, str]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.catch_ups = 0
        self.kept = 0
        self.ready = False

    def connected(self) -> None:
        """(Re)connected to NATS: catch up (again)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._catch_up())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def live(self, account: str, topic: str) -> None:
        """A retained message for ``topic`` arrived live: the catch-up must not overwrite it."""
        if self._live is not None:
            self._live.add((account, topic))

    async def _catch_up(self) -> None:
        while True:
            self._live = set()
            try:
                await self._ensure_stream()
                kept = await self._read_all()
            except (TimeoutError, nats.errors.Error) as error:
                log.info("retained messages not caught up yet: %s", error)
                await asyncio.sleep(self.settings.reconnect_wait)
                continue
            finally:
                self._live = None
            self.catch_ups += 1
            self.kept += kept
            self.ready = True
            if kept:
                log.info("%d retained messages caught up from the cluster", kept)
            return

    async def _ensure_stream(self) -> None:
        js = self.bus.jetstream()
        try:
            await js.stream_info(self.stream)
        except NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=self.stream,
                    description="ThingHub: the last retained message of each topic",
                    subjects=[self.filter],
                    max_msgs_per_subject=1,
                    num_replicas=self.settings.stream_replicas,
                    storage=StorageType.FILE,
                )
            )

    async def _read_all(self) -> int:
        js = self.bus.jetstream()
        sub = await js.pull_subscribe(
            self.filter,
            stream=self.stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=30.0,
            ),
        )
        kept = 0
        try:
            pending = (await sub.consumer_info()).num_pending or 0
            while pending > 0:
                batch = await sub.fetch(min(pending, _BATCH), timeout=self.settings.request_timeout)
                for msg in batch:
                    pending = msg.metadata.num_pending
                    kept += self._apply(msg.data)
        finally:
            await sub.unsubscribe()
        return kept

    def _apply(self, data: bytes) -> int:
        try:
            arrival = envelope.unpack(data, self.wall_clock(), self.clock())
        except envelope.EnvelopeError as error:
            log.info("a retained message in the stream could not be read: %s", error)
            return 0
        message = arrival.message
        live = self._live
        if arrival.expired or (live is not None and (message.account, message.topic) in live):
            return 0
        self.keep(message)
        return 1
