"""What the other nodes of the cluster subscribe to: the remote interest table. Pure.

Each node announces the distinct filters its sessions hold (cluster/interest.py) on the
cluster's control subject, and every node keeps the announcements of the others here, one
subscription trie per account, so that a message published on this node leaves it only when
some other node has a matching filter (docs/architecture.md, *Cluster*). The table only
saves work: NATS itself delivers a message to the nodes whose subscriptions match, so a
wrong "interested" costs one message that NATS drops, while a wrong "not interested" would
lose a message. Whenever it is unsure it therefore answers "interested":

* a node heard of (a heartbeat) but whose filters are not known yet, or whose announcements
  showed a gap, counts as interested in everything until its snapshot is in;
* for ``grace`` seconds after this node (re)connects to NATS, before it has heard every
  other node, everything counts as interested.

The announcements (JSON objects; ``k`` is the kind, ``n`` the sending node, ``b`` its boot
id, a new one at each start, ``v`` the version of its filter set, raised by each change):

    {"k": "h", "n", "b", "v"}                     heartbeat, every heartbeat_interval
    {"k": "d", "n", "b", "f", "v", "a", "r"}      a change from version f to v: filters
                                                  added and removed, [account, filter] each
    {"k": "s", "n", "b", "v", "i", "c", "a"}      part i of c of the whole set at version v
    {"k": "q", "n", "t"}                          node n asks node t ("*": all) for a snapshot
    {"k": "x", "n", "b"}                          node n stops

A node's announcements reach every other node in the order it sent them (one NATS
connection, one subject): a snapshot's parts come together, and a delta sent after it
follows it. A node that has not been heard of for ``node_timeout`` seconds is forgotten.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..broker.subtrie import SubscriptionTrie
from ..topics import SHARE_PREFIX, parse_shared

__all__ = ["Filter", "RemoteInterest", "RemoteNode"]

#: (account, the filter as a client sent it, with any ``$share/{group}/``).
Filter = tuple[str, str]
#: How many (account, topic) answers ``RemoteInterest.interested`` keeps.
_ANSWERS = 65536


@dataclass(eq=False)
class RemoteNode:
    name: str
    boot: str
    last_heard: float
    version: int = -1
    # True once the filters are known at ``version``; until then the node counts as
    # interested in everything.
    synced: bool = False
    filters: set[Filter] = field(default_factory=set)
    # A snapshot being received: its version, the next part expected, the filters so far.
    building: tuple[int, int, set[Filter]] | None = None
    # When a snapshot was last asked of it (None: not asked since it was last in sync).
    asked_at: float | None = None


class RemoteInterest:
    """The other nodes' filters, fed with their announcements."""

    def __init__(self, node: str, *, node_timeout: float, ask_every: float) -> None:
        self.node = node
        self.node_timeout = node_timeout
        # How long to wait for an asked snapshot before asking again.
        self.ask_every = ask_every
        self.nodes: dict[str, RemoteNode] = {}
        self._tries: dict[str, SubscriptionTrie[tuple[str, str], str]] = {}
        self._unsynced = 0
        self._blind_until = 0.0
        # Shared-subscription filters the other nodes hold (cluster/shared.py).
        self.shared = 0
        # ``interested``'s answers from the tries, asked once per message published here;
        # emptied by every change of the tries, and when full.
        self._answers: dict[tuple[str, str], bool] = {}

    # ------------------------------------------------------------------ queries

    def interested(self, account: str, topic: str, now: float) -> bool:
        """Whether some other node may have a filter matching ``topic`` in ``account``."""
        if self._unsynced or now < self._blind_until:
            return True
        key = (account, topic)
        answer = self._answers.get(key)
        if answer is None:
            trie = self._tries.get(account)
            answer = trie is not None and bool(trie.match(topic))
            if len(self._answers) >= _ANSWERS:
                self._answers.clear()
            self._answers[key] = answer
        return answer

    def nodes_matching(self, account: str, topic: str) -> set[str]:
        """The nodes known to have a filter matching ``topic`` (synced nodes only)."""
        trie = self._tries.get(account)
        if trie is None:
            return set()
        return {node for _key, node in trie.match(topic)}

    def shared_nodes(self, account: str, topic: str) -> dict[tuple[str, str], list[str]]:
        """The other nodes holding each shared group whose filter matches ``topic``:
        (ShareName, filter) -> nodes."""
        trie = self._tries.get(account)
        groups: dict[tuple[str, str], list[str]] = {}
        if trie is None or not self.shared:
            return groups
        for (node, full_filter), _node in trie.match(topic):
            group, topic_filter = parse_shared(full_filter)
            if group is not None:
                groups.setdefault((group, topic_filter), []).append(node)
        return groups

    @property
    def unsynced(self) -> int:
        return self._unsynced

    def blind(self, now: float) -> bool:
        return now < self._blind_until

    def blind_for(self, seconds: float, now: float) -> None:
        """Count everything as interesting for ``seconds`` (this node just (re)connected and
        has not heard every other node yet)."""
        self._blind_until = max(self._blind_until, now + seconds)

    def status(self, now: float) -> dict[str, Any]:
        return {
            name: {
                "boot": node.boot,
                "version": node.version,
                "synced": node.synced,
                "filters": len(node.filters),
                "last_heard_s": round(now - node.last_heard, 3),
            }
            for name, node in sorted(self.nodes.items())
        }

    # ------------------------------------------------------------------ announcements

    def receive(self, announcement: dict[str, Any], now: float) -> list[str]:
        """Apply one announcement of another node; returns the nodes to ask for a snapshot."""
        kind = announcement.get("k")
        name = announcement.get("n")
        if not isinstance(name, str) or name == self.node:
            return []
        if kind == "q":
            return []  # answered by this node's own side (interest.py)
        boot = str(announcement.get("b", ""))
        if kind == "x":
            node = self.nodes.get(name)
            if node is not None and node.boot == boot:
                self._forget(node)
            return []
        node = self.nodes.get(name)
        if node is None or node.boot != boot:
            if node is not None:
                self._forget(node)
            node = self.nodes[name] = RemoteNode(name, boot, now)
            self._unsynced += 1
        node.last_heard = now
        version = int(announcement.get("v", -1))
        if kind == "h":
            if node.synced and version != node.version:
                self._lost_track(node)  # a delta went missing
            return self._ask(node, now)
        if kind == "d":
            if node.synced and int(announcement.get("f", -2)) == node.version:
                self._change(node, _filters(announcement.get("a")), _filters(announcement.get("r")))
                node.version = version
                return []
            if node.synced:
                self._lost_track(node)
            return self._ask(node, now)
        if kind == "s":
            return self._snapshot_part(node, announcement, version, now)
        return []

    def expire(self, now: float) -> list[str]:
        """Forget the nodes not heard of for ``node_timeout``; returns their names."""
        gone = [n for n in self.nodes.values() if now - n.last_heard > self.node_timeout]
        for node in gone:
            self._forget(node)
        return [node.name for node in gone]

    def _snapshot_part(
        self, node: RemoteNode, announcement: dict[str, Any], version: int, now: float
    ) -> list[str]:
        part = int(announcement.get("i", -1))
        count = int(announcement.get("c", 0))
        if node.synced and version == node.version:
            node.building = None
            return []  # asked by another node; this one is in step already
        filters = _filters(announcement.get("a"))
        if part == 0:
            node.building = (version, 1, set(filters))
        elif node.building is not None and node.building[:2] == (version, part):
            node.building[2].update(filters)
            node.building = (version, part + 1, node.building[2])
        else:
            node.building = None  # a part is missing: ask again
            if node.synced:
                self._lost_track(node)
            node.asked_at = None
            return self._ask(node, now)
        if part + 1 < count:
            return []
        complete = node.building[2]
        node.building = None
        self._change(node, complete - node.filters, node.filters - complete)
        node.version = version
        if not node.synced:
            node.synced = True
            self._unsynced -= 1
        node.asked_at = None
        return []

    def _ask(self, node: RemoteNode, now: float) -> list[str]:
        if node.synced or node.building is not None:
            return []
        if node.asked_at is not None and now - node.asked_at < self.ask_every:
            return []
        node.asked_at = now
        return [node.name]

    def _lost_track(self, node: RemoteNode) -> None:
        node.synced = False
        node.asked_at = None
        self._unsynced += 1

    def _change(self, node: RemoteNode, added: Iterable[Filter], removed: Iterable[Filter]) -> None:
        self._answers.clear()
        for account, full_filter in removed:
            if (account, full_filter) in node.filters:
                node.filters.discard((account, full_filter))
                self.shared -= full_filter.startswith(SHARE_PREFIX)
                trie = self._tries.get(account)
                if trie is not None:
                    trie.remove(_matched(full_filter), (node.name, full_filter))
                    if not len(trie):
                        del self._tries[account]
        for account, full_filter in added:
            if (account, full_filter) not in node.filters:
                node.filters.add((account, full_filter))
                self.shared += full_filter.startswith(SHARE_PREFIX)
                trie = self._tries.get(account)
                if trie is None:
                    trie = self._tries[account] = SubscriptionTrie()
                trie.add(_matched(full_filter), (node.name, full_filter), node.name)

    def _forget(self, node: RemoteNode) -> None:
        self._change(node, (), list(node.filters))
        if not node.synced:
            self._unsynced -= 1
        del self.nodes[node.name]


def _matched(full_filter: str) -> str:
    """The part of a filter that is matched against topics (§4.8.2)."""
    return parse_shared(full_filter)[1]


def _filters(raw: Any) -> Iterator[Filter]:
    """[account, filter] pairs of an announcement; anything else in it is skipped."""
    if not isinstance(raw, list):
        return
    for item in raw:
        if (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], str)
        ):
            yield item[0], item[1]
