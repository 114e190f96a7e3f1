"""thinghub.topics: the validity tables of MQTT 5.0 §4.7 and §4.8.2."""

from __future__ import annotations

import pytest

from thinghub.topics import (
    is_system_topic,
    parse_shared,
    validate_topic_filter,
    validate_topic_name,
)

VALID_NAMES = [
    "sport/tennis/player1",
    "sport/tennis/player1/ranking",
    "sport/tennis/player1/score/wimbledon",
    "sport",
    "sport/",
    "/finance",
    "finance",
    "/",
    "a//b",
    "$SYS/monitor/Clients",
    "ACCOUNTS",
    "sport/tennis/player 1",
    "温度/センサー",
    "$share/g/x",  # as a name, "$share" is just text
]

INVALID_NAMES = [
    ("", "MQTT-4.7.3-1"),
    ("sport/+", "MQTT-4.7.1-1"),
    ("sport/#", "MQTT-4.7.1-1"),
    ("#", "MQTT-4.7.1-1"),
    ("sport/tennis#", "MQTT-4.7.1-1"),
    ("a\x00b", "MQTT-4.7.3-2"),
    ("a/\ud800", "MQTT-1.5.4-1"),
]

VALID_FILTERS = [
    "sport/tennis/player1/#",
    "sport/#",
    "#",
    "+",
    "+/tennis/#",
    "sport/+/player1",
    "sport/tennis/+",
    "+/+",
    "/+",
    "+/",
    "/",
    "a//b",
    "$SYS/#",
    "$SYS/monitor/+",
    "+/monitor/Clients",
    "$share",
    "$shared/x",
    "$share/consumer1/sport/tennis/+",
    "$share/consumer2/sport/tennis/+",
    "$share/g/#",
    "$share/g/+",
    "$share/g//",
    "$share/g/$share/h/x",
]

INVALID_FILTERS = [
    ("", "MQTT-4.7.3-1"),
    ("sport/tennis#", "MQTT-4.7.1-2"),
    ("sport/tennis/#/ranking", "MQTT-4.7.1-2"),
    ("sport/#/", "MQTT-4.7.1-2"),
    ("##", "MQTT-4.7.1-2"),
    ("#/", "MQTT-4.7.1-2"),
    ("sport+", "MQTT-4.7.1-3"),
    ("+a", "MQTT-4.7.1-3"),
    ("a/b+/c", "MQTT-4.7.1-3"),
    ("++", "MQTT-4.7.1-3"),
    ("a\x00", "MQTT-4.7.3-2"),
    ("$share/", "MQTT-4.8.2-1"),
    ("$share//a", "MQTT-4.8.2-1"),
    ("$share/a+b/x", "MQTT-4.8.2-2"),
    ("$share/#", "MQTT-4.8.2-2"),
    ("$share/+/x", "MQTT-4.8.2-2"),
    ("$share/g", "MQTT-4.8.2-2"),
    ("$share/g/", "MQTT-4.8.2-2"),
    ("$share/g/a#", "MQTT-4.7.1-2"),
    ("$share/g/a/#/b", "MQTT-4.7.1-2"),
    ("$share/g/x+", "MQTT-4.7.1-3"),
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_names(name: str) -> None:
    assert validate_topic_name(name) is None


@pytest.mark.parametrize(("name", "rule"), INVALID_NAMES)
def test_invalid_names_cite_the_rule(name: str, rule: str) -> None:
    error = validate_topic_name(name)
    assert error is not None
    assert f"[{rule}]" in error


@pytest.mark.parametrize("topic_filter", VALID_FILTERS)
def test_valid_filters(topic_filter: str) -> None:
    assert validate_topic_filter(topic_filter) is None


@pytest.mark.parametrize(("topic_filter", "rule"), INVALID_FILTERS)
def test_invalid_filters_cite_the_rule(topic_filter: str, rule: str) -> None:
    error = validate_topic_filter(topic_filter)
    assert error is not None
    assert f"[{rule}]" in error


def test_every_valid_name_is_a_valid_filter() -> None:
    for name in VALID_NAMES:
        assert validate_topic_filter(name) is None, name


def test_length_is_counted_in_utf8_bytes() -> None:
    # [MQTT-4.7.3-3]: the limit is on the encoded length, not on characters.
    assert validate_topic_name("a" * 65535) is None
    assert "[MQTT-4.7.3-3]" in (validate_topic_name("a" * 65536) or "")
    assert validate_topic_name("é" * 5, max_length=10) is None
    assert "[MQTT-4.7.3-3]" in (validate_topic_name("é" * 6, max_length=10) or "")
    assert validate_topic_filter("€/#", max_length=5) is None
    assert "[MQTT-4.7.3-3]" in (validate_topic_filter("€€/#", max_length=5) or "")


def test_length_applies_to_the_whole_shared_filter() -> None:
    assert validate_topic_filter("$share/g/abc", max_length=12) is None
    assert validate_topic_filter("$share/g/abcd", max_length=12) is not None


def test_max_levels() -> None:
    assert validate_topic_name("a/b/c", max_levels=3) is None
    assert validate_topic_name("a/b/c/", max_levels=3) is not None
    assert validate_topic_name("/", max_levels=2) is None
    assert validate_topic_name("//", max_levels=2) is not None
    assert validate_topic_filter("a/+/#", max_levels=3) is None
    assert validate_topic_filter("a/+/#/", max_levels=9) is not None
    assert validate_topic_filter("a/+/b/#", max_levels=3) is not None
    # Levels of a shared subscription are those of the filter after the ShareName.
    assert validate_topic_filter("$share/g/a/b", max_levels=2) is None
    assert validate_topic_filter("$share/g/a/b/c", max_levels=2) is not None


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("sport/+", (None, "sport/+")),
        ("#", (None, "#")),
        ("$share", (None, "$share")),
        ("$SYS/#", (None, "$SYS/#")),
        ("$share/consumer1/sport/tennis/+", ("consumer1", "sport/tennis/+")),
        ("$share/g/#", ("g", "#")),
        ("$share/g//", ("g", "/")),
        ("$share/g/$share/h/x", ("g", "$share/h/x")),
    ],
)
def test_parse_shared(topic_filter: str, expected: tuple[str | None, str]) -> None:
    assert parse_shared(topic_filter) == expected


@pytest.mark.parametrize("topic_filter", ["$share/", "$share//x", "$share/g", "$share/g/"])
def test_parse_shared_refuses_malformed(topic_filter: str) -> None:
    with pytest.raises(ValueError, match=r"MQTT-4\.8\.2-2"):
        parse_shared(topic_filter)


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("$SYS/monitor/Clients", True),
        ("$SYS", True),
        ("$", True),
        ("SYS/$x", False),
        ("/$SYS", False),
        ("sport", False),
    ],
)
def test_is_system_topic(topic: str, expected: bool) -> None:
    assert is_system_topic(topic) is expected
