"""The subscription trie: which subscriptions match a published Topic Name (MQTT 5.0 §4.7).

One node per filter level. A node keeps its literal children in a dict, its '+' child apart
(``plus``), and the subscriptions whose filter ends here (``exact``) or ends in '#' right
below it (``multi``). '#' is always the last level [MQTT-4.7.1-2], so a '#' node would have
no children; its subscriptions live on the parent instead. Topic Names carry no wildcards
[MQTT-4.7.1-1], so a literal child is never named '+' or '#'.

Matching a name walks its levels depth first: at each node it collects the '#'
subscriptions, follows the literal child and keeps the '+' child for later; at the last level
it collects the exact subscriptions too. The filter/name pairs of §4.7:

    filter                     matches                               does not match
    "sport/tennis/player1/#"   "sport/tennis/player1",               "sport/tennis"
                               "sport/tennis/player1/score/wimbledon"
    "sport/#"                  "sport" ('#' matches the parent), "sport/"
    "sport/+"                  "sport/" (an empty level)             "sport", "sport/a/b"
    "+/+", "/+"                "/finance"
    "+"                        "finance"                             "/finance"
    "#", "+/monitor/Clients"   "x/monitor/Clients"                   "$SYS/monitor/Clients"
    "$SYS/#", "$SYS/monitor/+" "$SYS/monitor/Clients"

Names starting with '$' are not matched by filters starting with a wildcard
[MQTT-4.7.2-1], so the root's '+' child and '#' subscriptions are skipped for them. Levels
compare as exact strings, with no normalisation [MQTT-4.7.3-4].

Shared subscriptions are the caller's business: it passes the filter after
"$share/{ShareName}/" and a key that names the group, e.g. (group, client id).

``match`` is the broker's hottest path, so results are cached per Topic Name. Every ``add``
and ``remove`` clears the cache; when the cache is full it is cleared too, which costs O(1)
per insert amortised and never needs bookkeeping on a hit. Results are tuples, so a caller
cannot corrupt a cached entry. Filters are assumed valid (``thinghub.topics``); only a '#'
before the last level is refused, because the structure above depends on it.
"""

from __future__ import annotations

from itertools import chain
from typing import Generic, TypeVar

__all__ = ["DEFAULT_CACHE_SIZE", "SubscriptionTrie"]

K = TypeVar("K")
V = TypeVar("V")

DEFAULT_CACHE_SIZE = 100_000


class _Node(Generic[K, V]):
    __slots__ = ("children", "exact", "exact_items", "multi", "multi_items", "plus")

    def __init__(self) -> None:
        self.children: dict[str, _Node[K, V]] = {}
        self.plus: _Node[K, V] | None = None
        # Subscriptions whose filter ends at this node / ends in '#' just below it, and the
        # same as a tuple for ``match``, built on first use after a change (None = stale).
        self.exact: dict[K, V] | None = None
        self.exact_items: tuple[tuple[K, V], ...] | None = None
        self.multi: dict[K, V] | None = None
        self.multi_items: tuple[tuple[K, V], ...] | None = None

    def is_empty(self) -> bool:
        return not (self.children or self.plus or self.exact or self.multi)

    def freeze_exact(self) -> tuple[tuple[K, V], ...]:
        items = self.exact_items = tuple(self.exact.items()) if self.exact else ()
        return items

    def freeze_multi(self) -> tuple[tuple[K, V], ...]:
        items = self.multi_items = tuple(self.multi.items()) if self.multi else ()
        return items


class SubscriptionTrie(Generic[K, V]):
    """Subscriptions keyed by (filter, key), each carrying an opaque value."""

    __slots__ = ("_cache", "_cache_size", "_count", "_root")

    def __init__(self, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        """``cache_size`` bounds the match cache (entries); 0 disables it."""
        self._root: _Node[K, V] = _Node()
        self._count = 0
        self._cache: dict[str, tuple[tuple[K, V], ...]] = {}
        self._cache_size = cache_size

    def __len__(self) -> int:
        """The number of subscriptions, i.e. distinct (filter, key) pairs."""
        return self._count

    def add(self, topic_filter: str, key: K, value: V) -> bool:
        """Subscribe ``key`` to ``topic_filter``; True if the pair is new. A repeated pair
        replaces its value (a re-SUBSCRIBE replaces the subscription, [MQTT-3.8.4-3])."""
        node = self._root
        levels = topic_filter.split("/")
        last = len(levels) - 1
        multi = False
        for index, level in enumerate(levels):
            if level == "#":
                if index != last:
                    raise ValueError(f"'#' before the last level in {topic_filter!r}")
                multi = True
                break
            if level == "+":
                child = node.plus
                if child is None:
                    child = node.plus = _Node()
            else:
                child = node.children.get(level)
                if child is None:
                    child = node.children[level] = _Node()
            node = child
        if multi:
            subs = node.multi
            if subs is None:
                subs = node.multi = {}
            node.multi_items = None
        else:
            subs = node.exact
            if subs is None:
                subs = node.exact = {}
            node.exact_items = None
        new = key not in subs
        subs[key] = value
        self._count += new
        self._cache.clear()
        return new

    def remove(self, topic_filter: str, key: K) -> bool:
        """Unsubscribe ``key`` from ``topic_filter``; False if it was not subscribed.
        Nodes left empty are pruned."""
        node = self._root
        path: list[tuple[_Node[K, V], str]] = []  # (parent, level) for each node below root
        multi = False
        for level in topic_filter.split("/"):
            if level == "#":
                multi = True
                break
            child = node.plus if level == "+" else node.children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        subs = node.multi if multi else node.exact
        if subs is None or key not in subs:
            return False
        del subs[key]
        if multi:
            node.multi_items = None
            if not subs:
                node.multi = None
        else:
            node.exact_items = None
            if not subs:
                node.exact = None
        self._count -= 1
        self._cache.clear()
        for parent, level in reversed(path):
            if not node.is_empty():
                break
            if level == "+":
                parent.plus = None
            else:
                del parent.children[level]
            node = parent
        return True

    def match(self, topic: str) -> tuple[tuple[K, V], ...]:
        """Every (key, value) whose filter matches the Topic Name ``topic``.

        A key appears once per matching filter: overlapping subscriptions are the caller's
        to merge (§3.3.4). The order is unspecified.
        """
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        result = self._match(topic)
        if self._cache_size > 0:
            cache = self._cache
            if len(cache) >= self._cache_size:
                cache.clear()
            cache[topic] = result
        return result

    def _match(self, topic: str) -> tuple[tuple[K, V], ...]:
        # Depth first: follow the literal child in a tight loop and leave each '+' branch on
        # a stack for later, so a path without wildcards costs one dict lookup per level.
        # Each matching node contributes its subscriptions as one prebuilt tuple; when a
        # single node matches (the common case) its tuple is the result, with no copying.
        parts: list[tuple[tuple[K, V], ...]] = []
        levels = topic.split("/")
        depth = len(levels)
        root = self._root
        pending: list[tuple[_Node[K, V], int]] = []
        # Level 0 by hand: the root's wildcards do not see '$' names [MQTT-4.7.2-1].
        if not topic.startswith("$"):
            if root.multi:
                parts.append(root.multi_items or root.freeze_multi())
            if root.plus is not None:
                pending.append((root.plus, 1))
        node: _Node[K, V] | None = root.children.get(levels[0])
        index = 1
        while True:
            while node is not None:
                # ``node`` matched the first ``index`` levels.
                if node.multi:
                    # Its '#' matches the rest, which may be nothing: "a/#" matches "a".
                    parts.append(node.multi_items or node.freeze_multi())
                if index == depth:
                    if node.exact:
                        parts.append(node.exact_items or node.freeze_exact())
                    break
                if node.plus is not None:
                    pending.append((node.plus, index + 1))
                node = node.children.get(levels[index])
                index += 1
            if not pending:
                break
            node, index = pending.pop()
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return ()
        return tuple(chain.from_iterable(parts))

    def clear_cache(self) -> None:
        """Drop every cached match result (tests, memory pressure)."""
        self._cache.clear()

    def node_count(self) -> int:
        """Nodes in the trie, the root included: 1 when empty. For metrics and tests."""
        count = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            count += 1
            stack.extend(node.children.values())
            if node.plus is not None:
                stack.append(node.plus)
        return count
