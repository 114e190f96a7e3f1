"""thinghub.broker.subtrie: the spec's matching examples (MQTT 5.0 §4.7), then properties
checked against a brute-force matcher."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thinghub.broker.subtrie import SubscriptionTrie


def reference_matches(topic_filter: str, topic: str) -> bool:
    """Brute force, straight from §4.7: compare level by level."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False  # [MQTT-4.7.2-1]
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True  # the parent level and any number of children
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)


# (filter, topic, matches) from §4.7.1-4.7.3 and a few corner cases.
SPEC_CASES = [
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/tennis/player1/#", "sport/tennis", False),
    ("sport/tennis/player1/#", "sport/tennis/player2", False),
    ("sport/#", "sport", True),
    ("sport/#", "sport/", True),
    ("sport/#", "sports", False),
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player2", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/tennis/#", "sport/tennis/player1", True),
    ("+/tennis/#", "sport/tennis", True),
    ("+/tennis/#", "sport/golf", False),
    ("sport/+/player1", "sport/tennis/player1", True),
    ("sport/+/player1", "sport//player1", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+", "finance", True),
    ("+/#", "finance", True),
    ("#", "finance", True),
    ("#", "/finance", True),
    ("#", "/", True),
    ("+/+", "/", True),
    ("/", "/", True),
    ("a//b", "a//b", True),
    ("a//b", "a/b", False),
    ("a/+/b", "a//b", True),
    # [MQTT-4.7.2-1]
    ("#", "$SYS/monitor/Clients", False),
    ("#", "$SYS", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("+/monitor/Clients", "x/monitor/Clients", True),
    ("+", "$SYS", False),
    ("+/#", "$SYS/x", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("a/+", "a/$x", True),
    ("a/#", "a/$x/y", True),
    # Case-sensitive, no normalisation [MQTT-4.7.3-4]
    ("ACCOUNTS", "ACCOUNTS", True),
    ("ACCOUNTS", "Accounts", False),
    ("Accounts payable", "Accounts payable", True),
    ("é", "e\u0301", False),
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), SPEC_CASES)
def test_spec_examples(topic_filter: str, topic: str, expected: bool) -> None:
    assert reference_matches(topic_filter, topic) is expected
    trie: SubscriptionTrie[str, int] = SubscriptionTrie()
    trie.add(topic_filter, "c", 1)
    assert trie.match(topic) == ((("c", 1),) if expected else ())


def test_all_spec_filters_at_once() -> None:
    trie: SubscriptionTrie[str, str] = SubscriptionTrie()
    filters = sorted({case[0] for case in SPEC_CASES})
    for topic_filter in filters:
        assert trie.add(topic_filter, topic_filter, topic_filter)
    for topic in sorted({case[1] for case in SPEC_CASES}):
        got = sorted(key for key, _ in trie.match(topic))
        assert got == [f for f in filters if reference_matches(f, topic)], topic


def test_add_replaces_and_remove_reports() -> None:
    trie: SubscriptionTrie[str, int] = SubscriptionTrie()
    assert trie.add("a/+", "c1", 0)
    assert trie.match("a/b") == (("c1", 0),)
    assert not trie.add("a/+", "c1", 1)  # same (filter, key): value replaced
    assert len(trie) == 1
    assert trie.match("a/b") == (("c1", 1),)
    assert trie.add("a/#", "c1", 2)  # overlapping filter: the key appears twice
    assert sorted(trie.match("a/b")) == [("c1", 1), ("c1", 2)]
    assert len(trie) == 2
    assert not trie.remove("a/+", "c2")
    assert not trie.remove("a/b", "c1")
    assert not trie.remove("x/#", "c1")
    assert trie.remove("a/+", "c1")
    assert not trie.remove("a/+", "c1")
    assert trie.match("a/b") == (("c1", 2),)
    assert trie.remove("a/#", "c1")
    assert trie.match("a/b") == ()
    assert len(trie) == 0
    assert trie.node_count() == 1


def test_hash_before_last_level_is_refused() -> None:
    trie: SubscriptionTrie[str, int] = SubscriptionTrie()
    with pytest.raises(ValueError):
        trie.add("a/#/b", "c", 1)
    assert len(trie) == 0


def test_cache_is_invalidated_by_add_and_remove() -> None:
    trie: SubscriptionTrie[str, int] = SubscriptionTrie()
    assert trie.match("a/b") == ()
    trie.add("a/#", "c", 1)
    assert trie.match("a/b") == (("c", 1),)
    trie.add("a/#", "c", 2)
    assert trie.match("a/b") == (("c", 2),)
    trie.remove("a/#", "c")
    assert trie.match("a/b") == ()


def test_cache_is_bounded() -> None:
    trie: SubscriptionTrie[str, int] = SubscriptionTrie(cache_size=3)
    trie.add("#", "c", 1)
    for index in range(10):
        assert trie.match(f"t/{index}") == (("c", 1),)
        assert len(trie._cache) <= 3
    uncached: SubscriptionTrie[str, int] = SubscriptionTrie(cache_size=0)
    uncached.add("+", "c", 1)
    assert uncached.match("x") == (("c", 1),)
    assert len(uncached._cache) == 0


def test_cached_result_is_immutable_and_reused() -> None:
    trie: SubscriptionTrie[str, int] = SubscriptionTrie()
    trie.add("a", "c", 1)
    first = trie.match("a")
    assert isinstance(first, tuple)
    assert trie.match("a") is first


def test_pruning_keeps_shared_prefixes() -> None:
    trie: SubscriptionTrie[str, int] = SubscriptionTrie()
    trie.add("a/b/c", "k", 1)
    trie.add("a/+/c", "k", 1)
    trie.add("a/#", "k", 1)
    assert trie.node_count() == 1 + 5  # a, a/b, a/b/c, a/+, a/+/c
    trie.remove("a/b/c", "k")
    assert trie.node_count() == 1 + 3
    trie.remove("a/+/c", "k")
    assert trie.node_count() == 1 + 1  # "a" still holds the '#' subscription
    trie.remove("a/#", "k")
    assert trie.node_count() == 1


def test_deep_topics_do_not_recurse() -> None:
    trie: SubscriptionTrie[str, int] = SubscriptionTrie()
    deep = "/".join(["x"] * 20_000)
    trie.add(deep, "c", 1)
    trie.add("x/#", "d", 2)
    assert sorted(trie.match(deep)) == [("c", 1), ("d", 2)]
    assert trie.remove(deep, "c")
    assert trie.node_count() == 2


# --- properties -------------------------------------------------------------------------

FIRST_LEVELS = ["a", "b", "", "$SYS", "$x"]
LEVELS = ["a", "b", "", "$x"]

topics = st.builds(
    lambda first, rest: "/".join([first, *rest]),
    st.sampled_from(FIRST_LEVELS),
    st.lists(st.sampled_from(LEVELS), max_size=3),
).filter(bool)  # "" is not a Topic Name [MQTT-4.7.3-1]


@st.composite
def filters(draw: st.DrawFn) -> str:
    first = draw(st.sampled_from([*FIRST_LEVELS, "+"]))
    rest = draw(st.lists(st.sampled_from([*LEVELS, "+"]), max_size=3))
    levels = [first, *rest]
    if draw(st.booleans()):
        levels.append("#")
    if levels == [""]:
        levels = ["#"]
    return "/".join(levels)


keys = st.sampled_from(["c1", "c2", "c3"])


def expected_nodes(subscriptions: set[tuple[str, str]]) -> int:
    """Root + one node per distinct level prefix; a '#' lives on its parent."""
    prefixes: set[tuple[str, ...]] = set()
    for topic_filter, _ in subscriptions:
        levels = topic_filter.split("/")
        if levels[-1] == "#":
            levels.pop()
        prefixes.update(tuple(levels[: n + 1]) for n in range(len(levels)))
    return 1 + len(prefixes)


@settings(max_examples=300)
@given(st.lists(st.tuples(filters(), keys), max_size=25), st.lists(topics, max_size=10))
def test_match_agrees_with_brute_force(
    subscriptions: list[tuple[str, str]], probe: list[str]
) -> None:
    trie: SubscriptionTrie[str, str] = SubscriptionTrie()
    for topic_filter, key in subscriptions:
        trie.add(topic_filter, key, topic_filter)
    unique = set(subscriptions)
    assert len(trie) == len(unique)
    assert trie.node_count() == expected_nodes(unique)
    for topic in probe:
        expected = Counter((key, f) for f, key in unique if reference_matches(f, topic))
        assert Counter(trie.match(topic)) == expected
        assert Counter(trie.match(topic)) == expected  # from the cache


operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), filters(), keys, st.integers(0, 3)),
        st.tuples(st.just("remove"), filters(), keys, st.just(0)),
        st.tuples(st.just("match"), topics, keys, st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(operations, st.sampled_from([0, 2, 100_000]))
def test_add_remove_sequences_keep_the_cache_coherent(
    ops: list[tuple[str, str, str, int]], cache_size: int
) -> None:
    trie: SubscriptionTrie[str, int] = SubscriptionTrie(cache_size=cache_size)
    model: dict[tuple[str, str], int] = {}
    seen_topics: set[str] = {"a", "$SYS/a", "/", "a/b"}
    for op, text, key, value in ops:
        if op == "add":
            assert trie.add(text, key, value) == ((text, key) not in model)
            model[(text, key)] = value
        elif op == "remove":
            assert trie.remove(text, key) == ((text, key) in model)
            model.pop((text, key), None)
        else:
            seen_topics.add(text)
        assert len(trie) == len(model)
        for topic in seen_topics:
            expected = Counter((k, v) for (f, k), v in model.items() if reference_matches(f, topic))
            assert Counter(trie.match(topic)) == expected
    assert trie.node_count() == expected_nodes(set(model))
    for topic_filter, key in list(model):
        assert trie.remove(topic_filter, key)
    assert len(trie) == 0
    assert trie.node_count() == 1  # everything pruned
    for topic in seen_topics:
        assert trie.match(topic) == ()
