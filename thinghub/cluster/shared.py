"""Shared subscriptions across the cluster, for QoS 0 messages: one copy per group,
whichever nodes its members are on (MQTT 5 §4.8.2). A QoS 1/2 message's group copy comes
from the group's consumer in the message stream instead (cluster/groups.py), which keeps it
while no member is connected.

The members of a group ``$share/{ShareName}/{filter}`` of one account may be on several
nodes. On each node the broker's ``SharedGroup`` picks one local member per message; across
nodes, the node where a message is published picks which node's group delivers it: among
itself (when it has members) and the other nodes whose announced filters hold the group
(cluster/remote.py), in turn per group. The choice travels in the envelope
(cluster/envelope.py); every node's fan-out then leaves out the groups given to another node
(``SharePlan.keep``). A group the publishing node did not know of (its table of another
node was not complete yet) is in no plan: the nodes holding it deliver it each, so a change
of membership may give a group an extra copy, never none.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..broker.session import SharedGroup
from ..broker.space import TrieKey, TrieValue

__all__ = ["SharePlan", "SharePlanner"]

#: (ShareName, the filter after "$share/{ShareName}/")
Group = tuple[str, str]
_MAX_TURNS = 100_000


class SharePlan:
    """Which node delivers each shared group's copy of one message."""

    __slots__ = ("node", "shares")

    def __init__(self, node: str, shares: dict[Group, str]) -> None:
        self.node = node
        self.shares = shares

    def keep(
        self, matches: tuple[tuple[TrieKey, TrieValue], ...]
    ) -> tuple[tuple[TrieKey, TrieValue], ...]:
        """The matches this node delivers: the ordinary subscriptions, and the shared groups
        given to it or to nobody."""
        node = self.node
        shares = self.shares
        return tuple(
            match
            for match in matches
            if type(match[1]) is not SharedGroup
            or shares.get((match[1].name, match[1].topic_filter), node) == node
        )


class SharePlanner:
    """Gives each group's copies to its nodes in turn."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._turns: dict[tuple[str, str, str], int] = {}

    def plan(
        self, account: str, local: Iterable[Group], remote: dict[Group, list[str]]
    ) -> dict[Group, str]:
        candidates = {group: sorted(nodes) for group, nodes in remote.items()}
        for group in local:
            nodes = candidates.setdefault(group, [])
            if self.node not in nodes:
                nodes.append(self.node)
        turns = self._turns
        if len(turns) > _MAX_TURNS:
            turns.clear()  # groups come and go; the turn only spreads the load
        shares: dict[Group, str] = {}
        for group, nodes in candidates.items():
            key = (account, *group)
            turn = turns.get(key, 0)
            shares[group] = nodes[turn % len(nodes)]
            turns[key] = turn + 1
        return shares
