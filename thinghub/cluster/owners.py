"""A client id is unique in the cluster: who holds each session, and takeovers across nodes.

The owner of every session is a key of a JetStream key-value bucket (``<prefix>_sessions``):
``<account>.<client id>`` (escaped tokens, cluster/subjects.py) -> the node holding it. When a
client connects, its node claims the key: it reads the key, then writes itself there on the
condition that the key is still at the revision it read (compare-and-set), retrying when
another claim came in between. Claims are therefore totally ordered by the bucket's
revisions, and the last one wins, as the newest connection wins on one node [MQTT-3.1.4-3].
The claimer then tells the previous owner, on that node's own subject, "taken over at
revision R"; the previous owner ends its connection (v5 DISCONNECT 0x8E, as within one node)
and its session there, unless its own connection claimed after R or is still claiming (its
claim will land after R and tell the other). A session that ends releases its key, again
only at the revision it holds, so a release never undoes a newer claim elsewhere.

Why a bucket and not only a message to every node: the record with its revision is what the
next step needs (persistent sessions in JetStream resumed on any node: a node must know, with
certainty, that it holds a session before it takes its state), and a node learns the previous
owner without asking every node. Why not a watch of the bucket by every node: every connect
would reach every node; here only the previous owner hears of it.

The CONNACK does not wait for the claim: the connection is served at once and a takeover
lands a round trip later. Claims run on ``WORKERS`` tasks, those of one key always on the same
one (in order); at most ``cluster.max_pending_claims`` wait, beyond that a claim is dropped
and counted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from .bus import Bus
from .settings import ClusterSettings
from .subjects import Subjects, escape_level

log = logging.getLogger("thinghub.cluster")

WORKERS = 16
_ATTEMPTS = 8

#: Told that another node took a session over: (account, client id, clean start there).
TakenOver = Callable[[str, str, bool], None]


@dataclass
class OwnerCounters:
    claims: int = 0
    takeovers_sent: int = 0
    takeovers_received: int = 0
    # Takeovers this node ignored because its own connection claimed later.
    takeovers_stale: int = 0
    releases: int = 0
    dropped: int = 0
    failed: int = 0


class Owners:
    def __init__(
        self,
        bus: Bus,
        subjects: Subjects,
        settings: ClusterSettings,
        node: str,
        taken_over: TakenOver,
    ) -> None:
        self.bus = bus
        self.subjects = subjects
        self.settings = settings
        self.node = node
        self.bucket = subjects.prefix.replace(".", "_") + "_sessions"
        self.taken_over = taken_over
        self.counters = OwnerCounters()
        # The revision of this node's latest confirmed claim, per session key; and the claims
        # of each key still in flight.
        self.claims: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}
        self._queues: list[asyncio.Queue[tuple[Any, ...]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._waiting = 0
        self._kv: asyncio.Future[KeyValue] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._kv = loop.create_future()
        self._queues = [asyncio.Queue() for _ in range(WORKERS)]
        self._tasks = [loop.create_task(self._work(queue)) for queue in self._queues]
        self._tasks.append(loop.create_task(self._open_bucket()))
        self.bus.subscribe(self.subjects.node(self.node), self._takeover)

    async def stop(self) -> None:
        """Let the last claims and releases (the sessions of the connections the hub just
        closed) reach the bucket, briefly, then stop."""
        if self.ready and self.bus.connected:
            try:
                await asyncio.wait_for(asyncio.gather(*(q.join() for q in self._queues)), 2.0)
            except TimeoutError:
                log.info("stopping with %d session ownership changes unwritten", self._waiting)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass

    @property
    def ready(self) -> bool:
        return self._kv is not None and self._kv.done() and not self._kv.cancelled()

    # ------------------------------------------------------------------ from the broker

    def claim(self, account: str, client_id: str, clean_start: bool) -> None:
        key = _session_key(account, client_id)
        if self._enqueue(key, ("claim", key, account, client_id, clean_start)):
            self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def verify(self, account: str, client_id: str) -> None:
        """A session this node restored from its store at start: if another node claimed it
        meanwhile (its client connected there while this node was down, and the takeover
        notice found nobody), the copy here is ended as if taken over."""
        self._enqueue(_session_key(account, client_id), ("verify", "", account, client_id, False))

    def release(self, account: str, client_id: str) -> None:
        key = _session_key(account, client_id)
        if key in self.claims or key in self._in_flight:
            self._enqueue(key, ("release", key, account, client_id, False))

    async def owner(self, account: str, client_id: str) -> str | None:
        """The node holding the client id now, as the bucket says (None: no node). Raises
        TimeoutError or nats' errors when the bucket cannot be read."""
        assert self._kv is not None
        kv = await self._kv
        try:
            entry = await kv.get(_kv_key(account, client_id))
        except KeyNotFoundError:
            return None
        return _owner(entry.value)

    def _enqueue(self, key: str, op: tuple[Any, ...]) -> bool:
        if self._waiting >= self.settings.max_pending_claims:
            self.counters.dropped += 1
            if self.counters.dropped == 1:
                log.warning(
                    "more than %d session ownership claims waiting for NATS: claims are "
                    "dropped (counted) until it catches up",
                    self.settings.max_pending_claims,
                )
            return False
        self._waiting += 1
        self._queues[zlib.crc32(key.encode()) % WORKERS].put_nowait(op)
        return True

    # ------------------------------------------------------------------ the workers

    async def _open_bucket(self) -> None:
        assert self._kv is not None
        self._kv.set_result(
            await self.bus.key_value(self.bucket, "ThingHub: the node holding each session")
        )

    async def _work(self, queue: asyncio.Queue[tuple[Any, ...]]) -> None:
        assert self._kv is not None
        while True:
            op = await queue.get()
            kv = await self._kv
            kind, key, account, client_id, clean_start = op
            try:
                if kind == "claim":
                    await self._claim(kv, key, account, client_id, clean_start)
                elif kind == "verify":
                    await self._verify(kv, account, client_id)
                else:
                    await self._release(kv, key, account, client_id)
            except (TimeoutError, nats.errors.Error) as error:
                self.counters.failed += 1
                log.info("session ownership %s of %r failed: %s", kind, client_id, error)
            finally:
                queue.task_done()
                self._waiting -= 1
                if kind == "claim":
                    left = self._in_flight.get(key, 1) - 1
                    if left:
                        self._in_flight[key] = left
                    else:
                        self._in_flight.pop(key, None)

    async def _claim(
        self, kv: KeyValue, key: str, account: str, client_id: str, clean_start: bool
    ) -> None:
        kv_key = _kv_key(account, client_id)
        value = json.dumps({"n": self.node}).encode()
        for _attempt in range(_ATTEMPTS):
            previous: str | None = None
            try:
                entry = await kv.get(kv_key)
            except KeyNotFoundError as missing:
                # Never written (revision 0), or deleted (the delete marker's revision).
                last = missing.entry.revision if missing.entry is not None else 0
            else:
                last = entry.revision or 0
                previous = _owner(entry.value)
            try:
                revision = await kv.update(kv_key, value, last=last)
            except KeyWrongLastSequenceError:
                continue  # another claim came in between: read again
            self.counters.claims += 1
            self.claims[key] = revision
            if previous is not None and previous != self.node:
                self.counters.takeovers_sent += 1
                notice = {"a": account, "c": client_id, "r": revision, "cs": clean_start}
                self.bus.send(self.subjects.node(previous), json.dumps(notice).encode())
            return
        raise TimeoutError(f"{_ATTEMPTS} claims of the key raced with others")

    async def _verify(self, kv: KeyValue, account: str, client_id: str) -> None:
        key = _session_key(account, client_id)
        if key in self.claims or key in self._in_flight:
            return  # its client is back here already
        try:
            entry = await kv.get(_kv_key(account, client_id))
        except KeyNotFoundError:
            return
        owner = _owner(entry.value)
        if owner is not None and owner != self.node:
            self.counters.takeovers_received += 1
            self.taken_over(account, client_id, False)

    async def _release(self, kv: KeyValue, key: str, account: str, client_id: str) -> None:
        if key in self._in_flight and self._in_flight[key] > 0:
            return  # a newer connection here is claiming it again
        revision = self.claims.pop(key, None)
        if revision is None:
            return
        try:
            await kv.delete(_kv_key(account, client_id), last=revision)
        except nats.js.errors.APIError as error:
            if error.err_code not in (10071, 10164):  # wrong last sequence: claimed elsewhere
                raise
            return
        self.counters.releases += 1

    # ------------------------------------------------------------------ from other nodes

    def _takeover(self, _subject: bytes, data: bytes) -> None:
        try:
            notice = json.loads(data)
            account, client_id = str(notice["a"]), str(notice["c"])
            revision, clean_start = int(notice["r"]), bool(notice["cs"])
        except (ValueError, KeyError, TypeError):
            log.debug("unreadable takeover notice skipped")
            return
        self.counters.takeovers_received += 1
        key = _session_key(account, client_id)
        mine = self.claims.get(key)
        if self._in_flight.get(key) or (mine is not None and mine > revision):
            self.counters.takeovers_stale += 1
            return  # this node's connection claimed after, or is claiming now
        self.claims.pop(key, None)
        self.taken_over(account, client_id, clean_start)


def _session_key(account: str, client_id: str) -> str:
    return f"{account}\x00{client_id}"


def _kv_key(account: str, client_id: str) -> str:
    return f"{escape_level(account)}.{escape_level(client_id)}"


def _owner(value: bytes | None) -> str | None:
    try:
        owner = json.loads(value or b"{}").get("n")
    except (ValueError, AttributeError):
        return None
    return owner if isinstance(owner, str) else None
