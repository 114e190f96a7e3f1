"""This node's interest: the filters its sessions hold, on NATS and announced to the others.

The broker tells ``Interest`` of every subscription that enters or leaves its tries
(``added``/``removed``, through the cluster seam of broker/broker.py); the same filter held by
many sessions is counted, not repeated. Changes are gathered for the rest of the loop's turn
and then applied at once (a reconnect storm's thousands of subscriptions make one delta):

* NATS: one subscription per distinct subject (cluster/subjects.py), in this node's queue
  group, so that a message matched by several of its filters ("a/+" and "a/#") reaches the
  node once; every subscription hands its messages to the same handler, in wire order
  (cluster/bus.py);
* the other nodes: a delta from the previous version of the filter set to the new one on the
  control subject, after the subscriptions (NATS keeps the order: a node that learns of a
  filter can already reach it).

It also answers the other nodes: a snapshot of the whole set when asked (or after this node
(re)connects), a heartbeat with the version every ``heartbeat_interval``, and feeds what they
announce into the remote table (cluster/remote.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

from ..topics import SHARE_PREFIX, parse_shared
from .bus import Bus, BusSubscription, Handler
from .remote import Filter, RemoteInterest
from .subjects import Subjects

log = logging.getLogger("thinghub.cluster")

#: Filters per snapshot part: a part stays well under NATS' 1 MiB max_payload.
SNAPSHOT_PART = 2000


class Interest:
    def __init__(
        self,
        bus: Bus,
        subjects: Subjects,
        node: str,
        deliver: Handler,
        *,
        heartbeat_interval: float,
        node_timeout: float,
        clock: Callable[[], float],
        nodes_gone: Callable[[list[str]], None] | None = None,
    ) -> None:
        """``nodes_gone``: told the names of the nodes not heard of for ``node_timeout``."""
        self.bus = bus
        self.nodes_gone = nodes_gone
        self.subjects = subjects
        self.node = node
        self.boot = secrets.token_hex(8)
        self.queue = node  # this node's queue group (one delivery per node)
        self.deliver = deliver
        self.heartbeat_interval = heartbeat_interval
        self.clock = clock
        self.remote = RemoteInterest(
            node, node_timeout=node_timeout, ask_every=2 * heartbeat_interval
        )
        # Sessions' subscriptions per (account, filter), and the filters announced.
        self._counts: dict[Filter, int] = {}
        self.filters: set[Filter] = set()
        # How many of them are shared subscriptions (cluster/shared.py).
        self.local_shared = 0
        self.version = 0
        # NATS subscriptions per subject, with the number of filters needing each.
        self._subscriptions: dict[str, tuple[int, BusSubscription]] = {}
        self._changed: set[Filter] = set()
        self._flush_scheduled = False
        self._snapshot_due = False
        self._heartbeat: asyncio.Task[None] | None = None
        self._fixed: list[BusSubscription] = []
        self.snapshots_sent = 0
        self._twin_logged = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        bus = self.bus
        subjects = self.subjects
        # What every node takes, whatever its filters (subjects.py): in the same queue group
        # as the filters' subscriptions, so a message is still handed over once.
        self._fixed = [
            bus.subscribe(subjects.retained_all, self.deliver, self.queue),
            bus.subscribe(subjects.long_all, self.deliver, self.queue),
            bus.subscribe(subjects.control, self._control),
        ]
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    def connected(self) -> None:
        """(Re)connected to NATS: announcements may have been lost while away. Everything
        counts as interesting until the others have been heard; they are asked for their
        filters, and told ours."""
        now = self.clock()
        self.remote.blind_for(2 * self.heartbeat_interval, now)
        self._announce({"k": "q", "n": self.node, "t": "*"})
        self._snapshot_due = True
        self._schedule_flush()

    def stop(self) -> None:
        """Tell the others this node's filters are gone (they would notice in node_timeout)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self._announce({"k": "x", "n": self.node, "b": self.boot})

    # ------------------------------------------------------------------ from the broker

    def added(self, account: str, full_filter: str) -> None:
        key = (account, full_filter)
        count = self._counts.get(key, 0)
        self._counts[key] = count + 1
        if not count:
            self._changed.add(key)
            self._schedule_flush()

    def removed(self, account: str, full_filter: str) -> None:
        key = (account, full_filter)
        count = self._counts.get(key, 0)
        if count <= 1:
            self._counts.pop(key, None)
            if count:
                self._changed.add(key)
                self._schedule_flush()
        else:
            self._counts[key] = count - 1

    # ------------------------------------------------------------------ queries

    def interested(self, account: str, topic: str) -> bool:
        return self.remote.interested(account, topic, self.clock())

    @property
    def any_shared(self) -> bool:
        """Whether some node of the cluster holds a shared subscription."""
        return bool(self.local_shared or self.remote.shared)

    def status(self) -> dict[str, Any]:
        return {
            "boot": self.boot,
            "interest_version": self.version,
            "filters": len(self.filters),
            "nats_subscriptions": len(self._subscriptions),
            "unsynced_nodes": self.remote.unsynced,
            # Everything still counts as interesting (just (re)connected).
            "blind": self.remote.blind(self.clock()),
            "nodes": self.remote.status(self.clock()),
        }

    # ------------------------------------------------------------------ applying changes

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        added: list[Filter] = []
        removed: list[Filter] = []
        for key in self._changed:
            held = key in self._counts
            if held and key not in self.filters:
                self.filters.add(key)
                self.local_shared += key[1].startswith(SHARE_PREFIX)
                self._subscribe(key)
                added.append(key)
            elif not held and key in self.filters:
                self.filters.discard(key)
                self.local_shared -= key[1].startswith(SHARE_PREFIX)
                self._unsubscribe(key)
                removed.append(key)
        self._changed.clear()
        if added or removed:
            before, self.version = self.version, self.version + 1
            self._announce(
                {
                    "k": "d",
                    "n": self.node,
                    "b": self.boot,
                    "f": before,
                    "v": self.version,
                    "a": added,
                    "r": removed,
                }
            )
        if self._snapshot_due:
            self._snapshot_due = False
            self._send_snapshot()

    def _subjects(self, key: Filter) -> tuple[str, ...]:
        account, full_filter = key
        group, topic_filter = parse_shared(full_filter)
        # A shared group's QoS 1/2 messages come from its consumer (cluster/groups.py), not
        # from their publication.
        return self.subjects.subscriptions(account, topic_filter, queued=group is None)

    def _subscribe(self, key: Filter) -> None:
        for subject in self._subjects(key):
            held = self._subscriptions.get(subject)
            if held is None:
                sub = self.bus.subscribe(subject, self.deliver, self.queue)
                self._subscriptions[subject] = (1, sub)
            else:
                self._subscriptions[subject] = (held[0] + 1, held[1])

    def _unsubscribe(self, key: Filter) -> None:
        for subject in self._subjects(key):
            held = self._subscriptions.get(subject)
            if held is None:
                continue
            if held[0] <= 1:
                del self._subscriptions[subject]
                self.bus.unsubscribe(held[1])
            else:
                self._subscriptions[subject] = (held[0] - 1, held[1])

    # ------------------------------------------------------------------ announcements

    def _announce(self, announcement: dict[str, Any]) -> None:
        data = json.dumps(announcement, separators=(",", ":")).encode()
        # Not sent (NATS out of reach): the others notice the version in the next heartbeat
        # that reaches them and ask for a snapshot.
        self.bus.send(self.subjects.control, data)

    def _send_snapshot(self) -> None:
        filters = sorted(self.filters)
        parts = max(1, -(-len(filters) // SNAPSHOT_PART))
        for index in range(parts):
            chunk = filters[index * SNAPSHOT_PART : (index + 1) * SNAPSHOT_PART]
            self._announce(
                {
                    "k": "s",
                    "n": self.node,
                    "b": self.boot,
                    "v": self.version,
                    "i": index,
                    "c": parts,
                    "a": [list(key) for key in chunk],
                }
            )
        self.snapshots_sent += 1

    def _control(self, _subject: bytes, data: bytes) -> None:
        try:
            announcement = json.loads(data)
        except ValueError:
            log.debug("unreadable cluster announcement skipped")
            return
        if not isinstance(announcement, dict):
            return
        if announcement.get("n") == self.node and announcement.get("b") not in (None, self.boot):
            if not self._twin_logged:
                self._twin_logged = True
                log.error(
                    "another node of the cluster is also named %r: messages between the two "
                    "are lost; give each node its own cluster.node_name",
                    self.node,
                )
            return
        if announcement.get("k") == "q" and announcement.get("t") in ("*", self.node):
            if announcement.get("n") != self.node:
                # Sent once the current turn's changes are applied: one snapshot per turn,
                # however many nodes asked.
                self._snapshot_due = True
                self._schedule_flush()
            return
        for target in self.remote.receive(announcement, self.clock()):
            self._announce({"k": "q", "n": self.node, "t": target})

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            self._announce({"k": "h", "n": self.node, "b": self.boot, "v": self.version})
            gone = self.remote.expire(self.clock())
            if gone:
                log.warning("cluster nodes %s not heard of: their interest is dropped", gone)
                if self.nodes_gone is not None:
                    self.nodes_gone(gone)
