"""A topic space: the subscriptions and retained messages of one account.

Tenancy (docs/architecture.md): messages never cross accounts. Each account has its own trie of
subscriptions and its own retained messages, so a topic of account A can never match a
subscription of account B, whatever the wildcards. Clients connected without an account
(anonymous MQTT) live in the default account ``""``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..message import Message
from .admission import retained_cost
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
class RetainedBudget:
    """The bytes of retained messages of every account together (mqtt.max_retained_bytes_total);
    one per broker, shared by its topic spaces."""

    total_bytes: int = 0


@dataclass(eq=False)
class TopicSpace:
    account: str
    budget: RetainedBudget = field(default_factory=RetainedBudget)
    subscriptions: SubscriptionTrie[TrieKey, TrieValue] = field(default_factory=SubscriptionTrie)
    # Read it directly; change it only through retain() and forget_retained(), which keep the
    # byte counts the admission gate checks (broker/admission.py).
    retained: RetainedIndex[Message] = field(default_factory=RetainedIndex)
    retained_bytes: int = 0
    # Shared groups by (group, filter), the same objects the trie holds.
    groups: dict[tuple[str, str], SharedGroup] = field(default_factory=dict)
    # A refusal for the retained limits is logged once per account, then only counted.
    retained_full_logged: bool = False
    watches: SubscriptionTrie[int, Watch] = field(default_factory=SubscriptionTrie)

    def retain(self, message: Message) -> None:
        """Keep ``message`` as the retained message of its topic, replacing any earlier one."""
        old = self.retained.get(message.topic)
        growth = retained_cost(message) - (retained_cost(old) if old is not None else 0)
        self.retained.set(message.topic, message)
        self.retained_bytes += growth
        self.budget.total_bytes += growth

    def forget_retained(self, topic: str) -> bool:
        """Drop the retained message of ``topic``; False if there was none."""
        old = self.retained.get(topic)
        if old is None:
            return False
        self.retained.delete(topic)
        cost = retained_cost(old)
        self.retained_bytes -= cost
        self.budget.total_bytes -= cost
        return True
