"""thinghub.auth.topic_acl: device publish/subscribe permissions from topic categories."""

from __future__ import annotations

import pytest

from thinghub.auth.topic_acl import (
    ALL_FEATURES,
    expand_template,
    filter_covers,
    may_publish,
    may_subscribe,
    topic_matches,
)
from thinghub.mqtt.types import ReasonCode
from thinghub.registry import Operation, TopicCategory

PK = "a1BwAGVxxxx"
DN = "device1"
OTHER_PK = "a1Otherxxxx"

CATEGORIES = (
    TopicCategory(1, PK, "update", Operation.PUB, ""),
    TopicCategory(2, PK, "update/error", Operation.PUB, ""),
    TopicCategory(3, PK, "get", Operation.SUB, ""),
    TopicCategory(4, PK, "data/+/temp", Operation.SUB, ""),
    TopicCategory(5, PK, "logs/#", Operation.SUB, ""),
    TopicCategory(6, PK, "chat", Operation.ALL, ""),
)


def pub(topic: str, **kw: object) -> bool:
    return may_publish(PK, DN, topic, CATEGORIES, **kw).allowed  # type: ignore[arg-type]


def sub(topic_filter: str, **kw: object) -> bool:
    return may_subscribe(PK, DN, topic_filter, CATEGORIES, **kw).allowed  # type: ignore[arg-type]


U = f"/{PK}/{DN}/user"


@pytest.mark.parametrize(
    "topic",
    [
        f"{U}/update",
        f"{U}/update/error",
        f"{U}/chat",
        f"/sys/{PK}/{DN}/rrpc/response/1234567890",
        f"/ext/rrpc/1234/{PK}/{DN}/user/get",  # custom RRPC reply on a subscribable topic
    ],
)
def test_publish_allowed(topic: str) -> None:
    assert pub(topic)


@pytest.mark.parametrize(
    "topic",
    [
        f"{U}/get",  # SUB only
        f"{U}/data/x/temp",  # SUB only
        f"{U}/update/more",
        f"{U}/nothing",
        f"/{PK}/device2/user/update",  # another device
        f"/{OTHER_PK}/{DN}/user/update",  # another product
        f"/broadcast/{PK}/news",  # devices never publish broadcasts
        f"/sys/{PK}/{DN}/rrpc/request/1",  # the request direction
        f"/sys/{PK}/device2/rrpc/response/1",
        f"/sys/{PK}/{DN}/thing/event/property/post",  # feature not enabled
        f"/ota/device/inform/{PK}/{DN}",
        f"/shadow/update/{PK}/{DN}",
        f"/ext/rrpc/1/{PK}/{DN}/user/update",  # PUB-only topic is not an RRPC topic
        f"/ext/rrpc/1/{PK}/device2/user/get",
        "/ext/rrpc/1",
        f"/{PK}/{DN}/user",
        "$SYS/broker/load",
        "plain/topic",
    ],
)
def test_publish_refused(topic: str) -> None:
    decision = may_publish(PK, DN, topic, CATEGORIES)
    assert not decision.allowed
    assert decision.reason_code is ReasonCode.NOT_AUTHORIZED
    assert decision.reason


@pytest.mark.parametrize("topic", [f"{U}/+", f"{U}/#", "", "a\x00b"])
def test_publish_malformed_topic(topic: str) -> None:
    decision = may_publish(PK, DN, topic, CATEGORIES)
    assert not decision.allowed
    assert decision.reason_code is ReasonCode.TOPIC_NAME_INVALID


@pytest.mark.parametrize(
    "topic_filter",
    [
        f"{U}/get",
        f"{U}/chat",
        f"{U}/data/+/temp",
        f"{U}/data/room1/temp",
        f"{U}/logs/#",
        f"{U}/logs/a/b/c",
        f"{U}/logs/+",
        f"{U}/logs",  # '#' also matches its parent level
        f"/broadcast/{PK}/news",
        f"/broadcast/{PK}/+",
        f"/broadcast/{PK}/#",
        f"/sys/{PK}/{DN}/rrpc/request/+",
        f"/sys/{PK}/{DN}/rrpc/request/123",
        f"/sys/{PK}/{DN}/broadcast/request/+",
        f"/ext/rrpc/+/{PK}/{DN}/user/get",
        f"/ext/rrpc/+/{PK}/{DN}/user/data/+/temp",
        f"$share/group1/{U}/get",
    ],
)
def test_subscribe_allowed(topic_filter: str) -> None:
    assert sub(topic_filter)


@pytest.mark.parametrize(
    "topic_filter",
    [
        f"{U}/update",  # PUB only
        f"{U}/#",  # wider than any category
        f"{U}/+",
        f"{U}/data/#",
        f"{U}/data/+/+",
        f"{U}/data/+/temp/x",
        f"/{PK}/+/user/get",  # every device's topic
        f"/{PK}/device2/user/get",
        f"/{OTHER_PK}/{DN}/user/get",
        f"/+/{DN}/user/get",
        "#",
        "/#",
        "+/+/+",
        f"/broadcast/{OTHER_PK}/news",
        f"/broadcast/{PK}",
        f"/broadcast/{PK}/",
        "/broadcast/#",
        "/broadcast/+/news",
        f"/sys/{PK}/{DN}/rrpc/#",
        f"/sys/{PK}/{DN}/#",
        f"/sys/{PK}/{DN}/rrpc/response/+",  # the reply direction
        f"/sys/{PK}/+/rrpc/request/+",
        f"/sys/{PK}/{DN}/thing/service/property/set",  # feature not enabled
        f"/ota/device/upgrade/{PK}/{DN}",
        f"/shadow/get/{PK}/{DN}",
        "/ext/rrpc/#",
        f"/ext/rrpc/+/{PK}/{DN}/user/update",
        f"/ext/rrpc/+/{PK}/{DN}/user/#",
        f"$share/group1/{U}/update",
        "$SYS/#",
    ],
)
def test_subscribe_refused(topic_filter: str) -> None:
    decision = may_subscribe(PK, DN, topic_filter, CATEGORIES)
    assert not decision.allowed
    assert decision.reason_code is ReasonCode.NOT_AUTHORIZED


@pytest.mark.parametrize("topic_filter", [f"{U}/get#", f"{U}/#/x", "", "$share/g", "a+/b"])
def test_subscribe_malformed_filter(topic_filter: str) -> None:
    decision = may_subscribe(PK, DN, topic_filter, CATEGORIES)
    assert not decision.allowed
    assert decision.reason_code is ReasonCode.TOPIC_FILTER_INVALID


def test_optional_features() -> None:
    assert pub(f"/sys/{PK}/{DN}/thing/event/property/post", features=ALL_FEATURES)
    assert sub(f"/sys/{PK}/{DN}/thing/service/property/set", features=ALL_FEATURES)
    assert pub(f"/ota/device/inform/{PK}/{DN}", features=ALL_FEATURES)
    assert sub(f"/ota/device/upgrade/{PK}/{DN}", features=ALL_FEATURES)
    assert pub(f"/shadow/update/{PK}/{DN}", features=ALL_FEATURES)
    assert sub(f"/shadow/get/{PK}/{DN}", features=ALL_FEATURES)
    assert not pub(f"/shadow/update/{PK}/device2", features=ALL_FEATURES)
    nothing: frozenset[str] = frozenset()
    assert not sub(f"/sys/{PK}/{DN}/rrpc/request/+", features=nothing)
    assert not pub(f"/sys/{PK}/{DN}/rrpc/response/1", features=nothing)
    assert not sub(f"/broadcast/{PK}/news", features=nothing)
    assert not sub(f"/ext/rrpc/+/{PK}/{DN}/user/get", features=nothing)
    assert sub(f"{U}/get", features=nothing)  # custom topics do not depend on features


def test_no_categories_means_no_custom_topics() -> None:
    assert not may_publish(PK, DN, f"{U}/update", ()).allowed
    assert not may_subscribe(PK, DN, f"{U}/get", ()).allowed
    assert may_subscribe(PK, DN, f"/sys/{PK}/{DN}/rrpc/request/+", ()).allowed


def test_device_names_with_special_characters() -> None:
    dn = "dev:1@home.a-b_c"
    topic = f"/{PK}/{dn}/user/update"
    assert may_publish(PK, dn, topic, CATEGORIES).allowed
    assert not may_publish(PK, DN, topic, CATEGORIES).allowed


def test_expand_template() -> None:
    assert (
        expand_template("/sys/${productKey}/${deviceName}/rrpc/request/+", "pk", "dn")
        == "/sys/pk/dn/rrpc/request/+"
    )


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "/x", True),
        ("/+", "/x", True),
        ("+/x", "/x", True),
        ("a/b", "a/c", False),
        ("a/b/c", "a/b", False),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    ("granted", "requested", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/+", True),
        ("a/+", "a/x", True),
        ("a/+", "a/#", False),
        ("a/+", "a/x/y", False),
        ("a/#", "a", True),
        ("a/#", "a/#", True),
        ("a/#", "a/+/c", True),
        ("a/b", "a/+", False),
        ("a/b", "a/#", False),
        ("a/b/c", "a/b", False),
        ("#", "#", True),
        ("+/b", "+/b", True),
    ],
)
def test_filter_covers(granted: str, requested: str, expected: bool) -> None:
    assert filter_covers(granted, requested) is expected
