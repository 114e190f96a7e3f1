"""Shadow names and request topics (thinghub/shadow/names.py), and the broker's ``intercept``
hook the shadow service takes its MQTT requests through."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from thinghub.broker.admission import API_CALLER
from thinghub.broker.broker import Broker
from thinghub.config import MQTTSettings
from thinghub.message import Message
from thinghub.shadow.document import ShadowError
from thinghub.shadow.names import (
    CLASSIC,
    RequestTopic,
    check_shadow_name,
    check_thing_name,
    parse_request_topic,
    topic_prefix,
)


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("$aws/things/t1/shadow/update", RequestTopic("t1", CLASSIC, "update")),
        ("$aws/things/t1/shadow/get", RequestTopic("t1", CLASSIC, "get")),
        ("$aws/things/t1/shadow/delete", RequestTopic("t1", CLASSIC, "delete")),
        ("$aws/things/t1/shadow/name/cfg/update", RequestTopic("t1", "cfg", "update")),
        # A shadow may be called like an operation.
        ("$aws/things/t1/shadow/name/update/get", RequestTopic("t1", "update", "get")),
        # Answers are never requests.
        ("$aws/things/t1/shadow/update/accepted", None),
        ("$aws/things/t1/shadow/update/delta", None),
        ("$aws/things/t1/shadow/name/cfg/get/rejected", None),
        ("$aws/things/t1/shadow/name//update", None),
        ("$aws/things/t1/shadow/list", None),
        ("$aws/things/t1/jobs/get", None),
        ("things/t1/shadow/update", None),
    ],
)
def test_request_topics(topic: str, expected: RequestTopic | None) -> None:
    assert parse_request_topic(topic) == expected


def test_prefixes_and_names() -> None:
    assert topic_prefix("t", CLASSIC) == "$aws/things/t/shadow"
    assert topic_prefix("t", "s") == "$aws/things/t/shadow/name/s"
    assert check_thing_name("a:B_9-" + "x" * 122) == "a:B_9-" + "x" * 122
    assert check_shadow_name("$s") == "$s"
    for bad in ("", "a b", "a/b", "ü", "x" * 129, "$x"):
        with pytest.raises(ShadowError):
            check_thing_name(bad)
    for bad in ("", "x" * 65, "a.b"):
        with pytest.raises(ShadowError):
            check_shadow_name(bad)


class _Clock:
    def time(self) -> float:
        return 0.0

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any:
        raise AssertionError("no timers here")


def test_intercepted_publishes_are_consumed_and_others_routed() -> None:
    broker = Broker(MQTTSettings(), _Clock())
    offered: list[str] = []
    routed: list[str] = []

    def handler(message: Message) -> bool:
        offered.append(message.topic)
        return message.topic.endswith("/request")

    broker.intercept("$svc/", handler)
    broker.watch("acct", "#", lambda m: routed.append(m.topic))
    broker.watch("acct", "$svc/#", lambda m: routed.append(m.topic))

    def publish(topic: str, retain: bool = False) -> int:
        message = Message(topic=topic, payload=b"p", account="acct", retain=retain)
        return broker.publish(message, API_CALLER)

    assert publish("$svc/x/request", retain=True) == 1  # consumed: one receiver, the service
    assert publish("$svc/x/answer") == 0  # offered, left: routed (no subscriber here)
    assert publish("plain/topic") == 0  # never offered
    assert offered == ["$svc/x/request", "$svc/x/answer"]
    assert routed == ["$svc/x/answer", "plain/topic"]
    assert broker.retained_message("acct", "$svc/x/request") is None
    broker.intercept("$svc/", None)
    assert publish("$svc/x/request") == 0
    assert offered == ["$svc/x/request", "$svc/x/answer"]
