"""Which topics the cluster's persistent sessions wait for, whichever node they were on.

A QoS 1/2 message goes into the message stream, where the consumer of every persistent
session subscribed to it keeps it, also for a session that is offline or whose node died
(cluster/consumers.py). No node announces such a session's filters any more (its node is gone,
or its client is), so the remote interest table (cluster/remote.py) does not know of it. This
index, over every node's copy of the session records, answers "does any persistent session
take this topic at QoS 1 or 2?", so that an MQTT 5 publisher is told Success rather than 0x10
No matching subscribers (§3.4.2.1) for a message such a session will get.

One subscription trie per account (broker/subtrie.py), keyed by record; only QoS 1/2
subscriptions count (a QoS 0 one has no consumer: nothing waits for it). A shared
subscription counts by its filter: its group's consumer keeps the message (cluster/groups.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..broker.subtrie import SubscriptionTrie
from ..topics import parse_shared
from .subjects import unescape_level

#: Topics looked up are few (a publish no other node takes); a small cache is enough.
_CACHE = 1_000


class RecordFilters:
    """The QoS 1/2 filters of the session records, by account, for ``takes``."""

    def __init__(self) -> None:
        self._tries: dict[str, SubscriptionTrie[str, None]] = {}
        # Each record key's (account, matched filters), to remove them when it changes.
        self._filters: dict[str, tuple[str, tuple[str, ...]]] = {}

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        """Record ``key`` (``account.clientid``, escaped) is now ``record``."""
        self.drop(key)
        try:
            account = unescape_level(key.split(".", 1)[0])
        except ValueError:
            return  # not a session record's key
        filters: list[str] = []
        for stored in record.get("s", ()):
            try:
                if int(stored.get("q", 0)) < 1:
                    continue
                filters.append(parse_shared(str(stored["f"]))[1])
            except (KeyError, TypeError, ValueError, AttributeError):
                continue  # a record this version cannot read: it counts for nothing
        filters = list(dict.fromkeys(filters))  # "a/#" and "$share/g/a/#": one entry
        if not filters:
            return
        trie = self._tries.get(account)
        if trie is None:
            trie = self._tries[account] = SubscriptionTrie(cache_size=_CACHE)
        kept: list[str] = []
        for topic_filter in filters:
            try:
                trie.add(topic_filter, key, None)
            except ValueError:
                continue
            kept.append(topic_filter)
        self._filters[key] = (account, tuple(kept))

    def drop(self, key: str) -> None:
        """Record ``key`` is gone."""
        known = self._filters.pop(key, None)
        if known is None:
            return
        account, filters = known
        trie = self._tries[account]
        for topic_filter in filters:
            trie.remove(topic_filter, key)
        if not len(trie):
            del self._tries[account]

    def reset(self, records: Mapping[str, Mapping[str, Any]]) -> None:
        """The records are ``records`` and no others."""
        self._tries.clear()
        self._filters.clear()
        for key, record in records.items():
            self.put(key, record)

    def takes(self, account: str, topic: str) -> bool:
        """True when some session record of ``account`` has a QoS 1/2 subscription matching
        ``topic``."""
        trie = self._tries.get(account)
        return trie is not None and bool(trie.match(topic))

    def __len__(self) -> int:
        return len(self._filters)
