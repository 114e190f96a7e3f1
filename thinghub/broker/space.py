"""A topic space: the subscriptions and retained messages of one account.

Tenancy (ARCHITECTURE.md): messages never cross accounts. Each account has its own trie of
subscriptions and its own retained messages, so a topic of account A can never match a
subscription of account B, whatever the wildcards. Clients connected without an account
(anonymous MQTT) live in the default account ``""``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..message import Message
from .retained import RetainedIndex
from .session import SharedGroup, SubscriptionEntry
from .subtrie import SubscriptionTrie

# Trie keys: a session's client id, or ("$share", group) for a shared group.
TrieKey = str | tuple[str, str]
TrieValue = SubscriptionEntry | SharedGroup


@dataclass(eq=False)
class Watch:
    """An in-process observer of published messages (used by the HTTP APIs, e.g. to wait for a
    device's RRpc reply). Not an MQTT subscription: it has no session, QoS or queue."""

    space: TopicSpace
    topic_filter: str
    callback: Callable[[Message], None]
    active: bool = True

    def cancel(self) -> None:
        if self.active:
            self.active = False
            self.space.watches.remove(self.topic_filter, id(self))


@dataclass(eq=False)
class TopicSpace:
    account: str
    subscriptions: SubscriptionTrie[TrieKey, TrieValue] = field(default_factory=SubscriptionTrie)
    retained: RetainedIndex[Message] = field(default_factory=RetainedIndex)
    # Shared groups by (group, filter), the same objects the trie holds.
    groups: dict[tuple[str, str], SharedGroup] = field(default_factory=dict)
    retained_full_logged: bool = False
    watches: SubscriptionTrie[int, Watch] = field(default_factory=SubscriptionTrie)
