"""Retained messages, one per Topic Name, on a topic trie (MQTT 5.0 §3.3.1.3, §4.7).

A SUBSCRIBE asks for every retained message its filter matches [MQTT-3.3.1-9], so the index
answers ``match(filter)`` by walking the trie along the filter, never by scanning every
topic. One node per name level; a node holds the retained value of the name that ends there.
A dict beside the trie answers ``get`` and ``len`` directly.

The wildcard rules are the subscription trie's, seen from the other side:

    filter          visits
    "sport/+"       each child of "sport" (the empty level included: "sport/")
    "sport/#"       "sport" itself ('#' matches the parent level) and all below it
    "#", "+/..."    every first level except those starting with '$' [MQTT-4.7.2-1]
    "$SYS/#"        "$SYS" and all below it

Names are stored as given, with no normalisation [MQTT-4.7.3-4]. Storing an empty payload
deletes the retained message [MQTT-3.3.1-6]; that decision is the caller's, which then calls
``delete``. Walks use explicit stacks: a 65535-byte name can have 32768 levels.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["RetainedIndex"]

V = TypeVar("V")


class _Node(Generic[V]):
    __slots__ = ("children", "entry")

    def __init__(self) -> None:
        self.children: dict[str, _Node[V]] = {}
        # (full name, value) when a message is retained at this node; None otherwise.
        self.entry: tuple[str, V] | None = None


class RetainedIndex(Generic[V]):
    """The retained value of each Topic Name, searchable by Topic Filter."""

    __slots__ = ("_root", "_values")

    def __init__(self) -> None:
        self._root: _Node[V] = _Node()
        self._values: dict[str, V] = {}

    def __len__(self) -> int:
        return len(self._values)

    def items(self) -> Iterator[tuple[str, V]]:
        """A snapshot of every (topic, value): the index may change while it is consumed."""
        return iter(list(self._values.items()))

    def get(self, topic: str) -> V | None:
        return self._values.get(topic)

    def set(self, topic: str, value: V) -> None:
        """Retain ``value`` for the Topic Name ``topic``, replacing any earlier one
        [MQTT-3.3.1-5]."""
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        node.entry = (topic, value)
        self._values[topic] = value

    def delete(self, topic: str) -> bool:
        """Forget the retained message of ``topic``; False if there was none. Nodes left
        empty are pruned."""
        if topic not in self._values:
            return False
        del self._values[topic]
        node = self._root
        path: list[tuple[_Node[V], str]] = []
        for level in topic.split("/"):
            path.append((node, level))
            node = node.children[level]
        node.entry = None
        for parent, level in reversed(path):
            if node.children or node.entry is not None:
                break
            del parent.children[level]
            node = parent
        return True

    def match(self, topic_filter: str) -> list[tuple[str, V]]:
        """Every retained (topic, value) whose name ``topic_filter`` matches. The order is
        unspecified."""
        out: list[tuple[str, V]] = []
        levels = topic_filter.split("/")
        depth = len(levels)
        stack: list[tuple[_Node[V], int]] = [(self._root, 0)]
        while stack:
            node, index = stack.pop()
            if index == depth:
                if node.entry is not None:
                    out.append(node.entry)
                continue
            level = levels[index]
            if level == "#":
                # The parent level itself, then the whole subtree below it.
                if node.entry is not None:
                    out.append(node.entry)
                self._collect(node, out, skip_system=index == 0)
            elif level == "+":
                for name, child in node.children.items():
                    if not (index == 0 and name.startswith("$")):
                        stack.append((child, index + 1))
            else:
                exact = node.children.get(level)
                if exact is not None:
                    stack.append((exact, index + 1))
        return out

    @staticmethod
    def _collect(top: _Node[V], out: list[tuple[str, V]], *, skip_system: bool) -> None:
        """Append every retained message strictly below ``top``; at the root, skip the
        '$' names [MQTT-4.7.2-1]."""
        stack = [
            child
            for name, child in top.children.items()
            if not (skip_system and name.startswith("$"))
        ]
        while stack:
            node = stack.pop()
            if node.entry is not None:
                out.append(node.entry)
            stack.extend(node.children.values())

    def node_count(self) -> int:
        """Nodes in the trie, the root included: 1 when empty. For metrics and tests."""
        count = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            count += 1
            stack.extend(node.children.values())
        return count
