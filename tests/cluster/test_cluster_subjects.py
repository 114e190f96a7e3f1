"""MQTT topics and filters as NATS subjects (thinghub/cluster/subjects.py), property-based:
every valid topic maps and maps back; the mapping is one to one; every subject is a valid
NATS subject and key-value key; and a filter matches a topic in MQTT (the broker's own trie
is the oracle) exactly when one of its subjects matches the topic's subject in NATS (a matcher
written from NATS' rules: '*' one token, '>' one or more trailing tokens)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thinghub.broker.subtrie import SubscriptionTrie
from thinghub.cluster.subjects import (
    MAX_SUBJECT,
    Subjects,
    escape_level,
    filter_subjects,
    subject_topic,
    topic_subject,
    unescape_level,
)
from thinghub.topics import validate_topic_filter, validate_topic_name

# Levels with everything that needs escaping: empty, '.', whitespace, '$' (first or not),
# NATS wildcards, the escape character, non-ASCII, and plain ones.
LEVEL = st.one_of(
    st.sampled_from(["", "a", "b", "$SYS", "$", "a.b", " ", "a b", "*", ">", "=", "=41", "é"]),
    st.sampled_from(["中文", "sport", "x-y_z", "\t", "%", "a$b", "😀", "a\x7f"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/+#")),
)
TOPIC = st.lists(LEVEL, min_size=1, max_size=6).map("/".join).filter(lambda t: t != "")
FILTER_LEVEL = st.one_of(LEVEL, st.just("+"))
# KV keys: nats.js.kv.VALID_KEY_RE.
KV_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(FILTER_LEVEL, min_size=1, max_size=5))
    if draw(st.booleans()):
        levels.append("#")
    return "/".join(levels) or "+"  # a filter is at least one character [MQTT-4.7.3-1]


def nats_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: '*' is one token, a trailing '>' one or more tokens."""
    want = pattern.split(".")
    have = subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have) or (token != "*" and token != have[index]):
            return False
    return len(have) == len(want)


def mqtt_matches(topic_filter: str, topic: str) -> bool:
    trie: SubscriptionTrie[str, int] = SubscriptionTrie()
    trie.add(topic_filter, "k", 1)
    return bool(trie.match(topic))


@given(TOPIC)
def test_every_topic_maps_and_maps_back(topic: str) -> None:
    assert validate_topic_name(topic) is None
    subject = topic_subject(topic)
    assert subject_topic(subject) == topic
    assert KV_KEY.fullmatch(subject), subject
    tokens = subject.split(".")
    assert all(tokens) and "*" not in tokens and ">" not in tokens
    assert len(tokens) == topic.count("/") + 2  # the kind, then one token per level


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_levels_escape_one_to_one(text: str) -> None:
    token = escape_level(text)
    assert token and KV_KEY.fullmatch(token) and "." not in token
    assert unescape_level(token) == text


@given(TOPIC, TOPIC)
def test_different_topics_have_different_subjects(a: str, b: str) -> None:
    assert (topic_subject(a) == topic_subject(b)) == (a == b)


@given(filters(), TOPIC)
def test_a_filter_matches_in_mqtt_iff_one_of_its_subjects_matches_in_nats(
    topic_filter: str, topic: str
) -> None:
    assert validate_topic_filter(topic_filter) is None
    subject = topic_subject(topic)
    in_nats = any(nats_matches(pattern, subject) for pattern in filter_subjects(topic_filter))
    assert in_nats == mqtt_matches(topic_filter, topic), (topic_filter, topic)


@given(filters())
def test_a_filter_matches_the_topics_made_from_it(topic_filter: str) -> None:
    """Topics built from the filter (each '+' an arbitrary level, '#' none or some levels)
    match, so the equivalence above is not only exercised on misses."""
    for tail in ([], ["x"], ["", "y"]):
        levels = []
        for level in topic_filter.split("/"):
            if level == "#":
                levels.extend(tail)
            else:
                levels.append("q" if level == "+" else level)
        topic = "/".join(levels)
        if not topic or validate_topic_name(topic) is not None:
            continue
        expected = mqtt_matches(topic_filter, topic)
        subject = topic_subject(topic)
        assert any(nats_matches(p, subject) for p in filter_subjects(topic_filter)) == expected


@pytest.mark.parametrize(
    ("topic_filter", "matches", "misses"),
    [
        # MQTT 5.0 §4.7 examples.
        ("sport/tennis/player1/#", ["sport/tennis/player1", "sport/tennis/player1/a/w"],
         ["sport/tennis"]),
        ("sport/#", ["sport", "sport/", "sport/a/b"], ["sports"]),
        ("sport/+", ["sport/", "sport/x"], ["sport", "sport/a/b"]),
        ("+/+", ["/finance", "a/b"], ["a", "a/b/c"]),
        ("/+", ["/finance"], ["finance", "//x"]),
        ("+", ["finance"], ["/finance"]),
        ("#", ["x/monitor/Clients", "/", "a"], ["$SYS/monitor/Clients", "$SYS"]),
        ("+/monitor/Clients", ["x/monitor/Clients"], ["$SYS/monitor/Clients"]),
        ("$SYS/#", ["$SYS/monitor/Clients", "$SYS"], ["SYS/x", "x/$SYS"]),
        ("$SYS/monitor/+", ["$SYS/monitor/Clients"], ["$SYS/monitor"]),
        ("a.b/#", ["a.b", "a.b/c"], ["a/b", "a.b.c"]),
        ("a b/+", ["a b/x"], ["a/b/x"]),
    ],
)  # fmt: skip
def test_the_specs_examples(topic_filter: str, matches: list[str], misses: list[str]) -> None:
    patterns = filter_subjects(topic_filter)
    for topic in matches:
        assert any(nats_matches(p, topic_subject(topic)) for p in patterns), topic
    for topic in misses:
        assert not any(nats_matches(p, topic_subject(topic)) for p in patterns), topic


def test_readable_subjects() -> None:
    assert topic_subject("sport/tennis") == "t.sport.tennis"
    assert topic_subject("/a//b/") == "t.=.a.=.b.="
    assert topic_subject("$SYS/broker") == "s.=24SYS.broker"
    assert topic_subject("a.b/é") == "t.a=2Eb.=C3=A9"
    assert filter_subjects("sport/#") == ("t.sport.>", "t.sport")
    assert filter_subjects("#") == ("t.>",)
    assert filter_subjects("+/x") == ("t.*.x",)
    assert filter_subjects("$SYS/+") == ("s.=24SYS.*",)


def test_cluster_subjects_per_account() -> None:
    subjects = Subjects("thinghub")
    assert subjects.message("acc-1", "a/b") == "thinghub.m.acc-1.t.a.b"
    assert subjects.message("", "a") == "thinghub.m.=.t.a"
    assert subjects.retained("root", "$SYS/x") == "thinghub.r.root.s.=24SYS.x"
    assert subjects.subscriptions("root", "a/#") == (
        "thinghub.m.root.t.a.>",
        "thinghub.m.root.t.a",
        "thinghub.q.root.t.a.>",
        "thinghub.q.root.t.a",
    )
    # QoS 1/2 messages: the stream's space, matched by the filter's "q" subscriptions.
    assert subjects.queued("acc-1", "a/b") == "thinghub.q.acc-1.t.a.b"
    assert nats_matches(subjects.queued_all, "thinghub.q.acc-1.t.a.b")
    assert subjects.topic_of("thinghub.q.acc-1.t.a.b") == ("acc-1", "a/b")
    assert subjects.topic_of("thinghub.m.=.t.=.x") == ("", "/x")
    assert subjects.topic_of(subjects.retained("a.b", "é/ /")) == ("a.b", "é/ /")
    with pytest.raises(ValueError):
        subjects.topic_of("thinghub.ctl")


def test_topics_and_filters_too_long_for_a_subject_still_reach_every_node() -> None:
    subjects = Subjects("thinghub")
    long_topic = "é" * 400  # 2,400 bytes escaped
    assert len(topic_subject(long_topic)) > MAX_SUBJECT
    assert subjects.message("root", long_topic) == subjects.long_subject("root")
    hashed = subjects.retained("root", long_topic)
    assert hashed.startswith("thinghub.r.root.h.") and len(hashed) < 100
    assert hashed != subjects.retained("root", long_topic + "x")  # one subject per topic
    assert nats_matches(subjects.retained_all, hashed)
    # A long filter takes the whole account: the receiving node's trie decides.
    assert subjects.subscriptions("root", long_topic + "/#") == (
        "thinghub.m.root.>",
        "thinghub.q.root.>",
    )
    # A QoS 1/2 message on such a topic takes the core path (no stream subject).
    assert subjects.queued("root", long_topic) is None
    assert nats_matches(subjects.long_all, subjects.long_subject("root"))


@pytest.mark.parametrize("token", ["", "a.b", "=4", "=zz", "*", ">", "=FF", "a b"])
def test_tokens_no_level_maps_to_are_refused(token: str) -> None:
    with pytest.raises(ValueError):
        unescape_level(token)
