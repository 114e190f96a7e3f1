"""thinghub.broker.retained: retained messages found by filter (MQTT 5.0 §3.3.1.3, §4.7)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thinghub.broker.retained import RetainedIndex


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


RETAINED = [
    "sport",
    "sport/",
    "sport/tennis",
    "sport/tennis/player1",
    "sport/tennis/player1/ranking",
    "sport/tennis/player1/score/wimbledon",
    "sport/tennis/player2",
    "sport//player1",
    "/finance",
    "finance",
    "/",
    "$SYS",
    "$SYS/monitor/Clients",
    "$x/a",
    "ACCOUNTS",
]

SPEC_CASES = [
    (
        "sport/tennis/player1/#",
        [
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
        ],
    ),
    (
        "sport/#",
        [
            "sport",
            "sport/",
            "sport/tennis",
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
            "sport/tennis/player2",
            "sport//player1",
        ],
    ),
    ("sport/tennis/+", ["sport/tennis/player1", "sport/tennis/player2"]),
    ("sport/+", ["sport/", "sport/tennis"]),
    ("sport/+/player1", ["sport/tennis/player1", "sport//player1"]),
    ("+/+", ["/finance", "/", "sport/", "sport/tennis"]),
    ("/+", ["/finance", "/"]),
    ("+", ["sport", "finance", "ACCOUNTS"]),
    ("+/monitor/Clients", []),
    ("$SYS/#", ["$SYS", "$SYS/monitor/Clients"]),
    ("$SYS/monitor/+", ["$SYS/monitor/Clients"]),
    ("$SYS", ["$SYS"]),
    ("+/a", []),
    ("$x/+", ["$x/a"]),
    ("Accounts", []),
    ("ACCOUNTS", ["ACCOUNTS"]),
    ("sport/tennis/player3", []),
    ("nothing/#", []),
]


@pytest.fixture
def index() -> RetainedIndex[str]:
    retained: RetainedIndex[str] = RetainedIndex()
    for topic in RETAINED:
        retained.set(topic, topic.upper())
    return retained


@pytest.mark.parametrize(("topic_filter", "expected"), SPEC_CASES)
def test_spec_examples(index: RetainedIndex[str], topic_filter: str, expected: list[str]) -> None:
    assert sorted(expected) == sorted(t for t in RETAINED if reference_matches(topic_filter, t))
    assert sorted(index.match(topic_filter)) == sorted((t, t.upper()) for t in expected)


def test_hash_skips_system_topics(index: RetainedIndex[str]) -> None:
    # [MQTT-4.7.2-1]: "#" returns everything except the '$' names.
    got = sorted(topic for topic, _ in index.match("#"))
    assert got == sorted(t for t in RETAINED if not t.startswith("$"))
    assert sorted(t for t, _ in index.match("+/#")) == got


def test_set_get_delete_len_items() -> None:
    retained: RetainedIndex[bytes] = RetainedIndex()
    assert retained.get("a") is None
    assert len(retained) == 0
    retained.set("a/b", b"1")
    retained.set("a/b", b"2")  # replaces [MQTT-3.3.1-5]
    retained.set("a", b"3")
    assert len(retained) == 2
    assert retained.get("a/b") == b"2"
    assert retained.match("a/b") == [("a/b", b"2")]
    assert sorted(retained.items()) == [("a", b"3"), ("a/b", b"2")]
    assert not retained.delete("a/c")
    assert not retained.delete("x")
    assert retained.delete("a/b")
    assert not retained.delete("a/b")
    assert retained.get("a/b") is None
    assert retained.match("a/#") == [("a", b"3")]
    assert retained.node_count() == 2
    assert retained.delete("a")
    assert retained.node_count() == 1
    assert len(retained) == 0


def test_delete_keeps_ancestors_that_hold_messages() -> None:
    retained: RetainedIndex[int] = RetainedIndex()
    retained.set("a", 1)
    retained.set("a/b/c", 2)
    assert retained.node_count() == 4
    retained.delete("a/b/c")
    assert retained.node_count() == 2
    assert retained.match("#") == [("a", 1)]


def test_items_is_a_snapshot() -> None:
    retained: RetainedIndex[int] = RetainedIndex()
    for n in range(5):
        retained.set(f"t/{n}", n)
    for topic, value in retained.items():
        assert topic == f"t/{value}"
        retained.delete(topic)  # sweeping while iterating is allowed
    assert len(retained) == 0
    assert retained.node_count() == 1


def test_deep_topics_do_not_recurse() -> None:
    retained: RetainedIndex[int] = RetainedIndex()
    deep = "/".join(["x"] * 20_000)
    retained.set(deep, 1)
    assert retained.match("#") == [(deep, 1)]
    assert retained.match(deep) == [(deep, 1)]
    assert retained.match("/".join(["+"] * 20_000)) == [(deep, 1)]
    assert retained.delete(deep)
    assert retained.node_count() == 1


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


def expected_nodes(names: set[str]) -> int:
    prefixes = {tuple(t.split("/")[: n + 1]) for t in names for n in range(t.count("/") + 1)}
    return 1 + len(prefixes)


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.booleans(), topics, st.integers(0, 9)), max_size=40),
    st.lists(filters(), max_size=10),
)
def test_match_agrees_with_brute_force(ops: list[tuple[bool, str, int]], probe: list[str]) -> None:
    retained: RetainedIndex[int] = RetainedIndex()
    model: dict[str, int] = {}
    for is_set, topic, value in ops:
        if is_set:
            retained.set(topic, value)
            model[topic] = value
        else:
            assert retained.delete(topic) == (topic in model)
            model.pop(topic, None)
    assert len(retained) == len(model)
    assert dict(retained.items()) == model
    assert retained.node_count() == expected_nodes(set(model))
    for topic_filter in probe:
        got = retained.match(topic_filter)
        assert len(got) == len(set(got))
        assert sorted(got) == sorted(
            (t, v) for t, v in model.items() if reference_matches(topic_filter, t)
        )
    for topic in model:
        assert retained.get(topic) == model[topic]
        assert retained.delete(topic)
    assert retained.node_count() == 1
