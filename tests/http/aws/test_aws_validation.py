"""Bad input: each rule raises its boto3 exception class and changes nothing.

"Nothing" is checked with a watcher subscribed to every topic (``#`` and ``$aws/#``, without
retained messages): after the refused call, a sentinel is published, and the watcher must see
the sentinel first. Retained state is compared before and after.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pahoclient
import pytest
from awshub import AwsHub
from botocore.exceptions import ParamValidationError
from pahoclient import unique

Sub = Callable[..., pahoclient.Client]


def _watcher(sub: Sub) -> pahoclient.Client:
    watcher = sub(None)
    watcher.subscribe("#", 1, retain_handling=2)
    watcher.subscribe("$aws/#", 1, retain_handling=2)
    return watcher


def _assert_nothing_delivered(aws: AwsHub, watcher: pahoclient.Client) -> None:
    sentinel = unique("sentinel")
    aws.client().publish(topic=sentinel, payload=sentinel.encode())
    before = watcher.until(sentinel.encode())
    assert before == [], [m.topic for m in before]


def _retained(aws: AwsHub, account: str = "root") -> list[tuple[str, bytes]]:
    return aws.on_loop(
        lambda: [(m.topic, m.payload) for m in aws.broker.retained_messages(account)]
    )


T = unique("v")
IR = "InvalidRequestException"
TL = "RequestEntityTooLargeException"
BAD_PUBLISH: list[tuple[str, dict[str, Any], str]] = [
    ("qos 2", {"topic": T, "qos": 2}, IR),
    ("qos 7", {"topic": T, "qos": 7}, IR),
    ("empty topic", {"topic": ""}, IR),
    ("257 bytes", {"topic": T + "/" + "x" * (256 - len(T))}, IR),
    ("257 bytes utf8", {"topic": "ü" * 128 + "x"}, IR),
    ("8 slashes", {"topic": T + "/1/2/3/4/5/6/7/8"}, IR),
    ("plus", {"topic": T + "/+"}, IR),
    ("hash", {"topic": T + "/#"}, IR),
    ("embedded plus", {"topic": T + "/a+b"}, IR),
    ("nul", {"topic": T + "/\x00"}, IR),
    ("payload 128 KB + 1", {"topic": T, "payload": b"x" * (128 * 1024 + 1)}, TL),
    ("format enum", {"topic": T, "payloadFormatIndicator": "X"}, IR),
    ("utf8 not utf8", {"topic": T, "payload": b"\xff", "payloadFormatIndicator": "UTF8_DATA"}, IR),
    ("expiry negative", {"topic": T, "messageExpiry": -5}, IR),
    ("expiry 2**32", {"topic": T, "messageExpiry": 2**32}, IR),
    ("subscribe-only", {"topic": "$aws/things/x/shadow/update/accepted"}, IR),
    ("reserved events", {"topic": "$aws/events/presence/connected/x"}, IR),
    ("reserved other", {"topic": "$SYS/broker/x"}, IR),
    ("retain on reserved", {"topic": "$aws/things/x/shadow/update", "retain": True}, IR),
    ("user props object", {"topic": T, "userProperties": {"a": "b"}}, IR),
    ("user props number value", {"topic": T, "userProperties": [{"a": 1}]}, IR),
    ("user props two keys", {"topic": T, "userProperties": [{"a": "b", "c": "d"}]}, IR),
    ("user props not json", {"topic": T, "userProperties": "not json ["}, IR),
    ("user props number", {"topic": T, "userProperties": 12}, IR),
    ("correlation", {"topic": T, "correlationData": "not base64!"}, IR),
    ("response topic wildcard", {"topic": T, "responseTopic": "a/#"}, IR),
    ("response topic empty", {"topic": T, "responseTopic": ""}, IR),
    ("content type nul", {"topic": T, "contentType": "a\x00b"}, IR),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "error"), [(k, e) for _, k, e in BAD_PUBLISH], ids=[n for n, _, _ in BAD_PUBLISH]
)
def test_bad_publish_is_refused_and_changes_nothing(
    aws: AwsHub, sub: Sub, kwargs: dict[str, Any], error: str
) -> None:
    watcher = _watcher(sub)
    retained = _retained(aws)
    client = aws.client()
    with pytest.raises(client.exceptions.ClientError) as info:
        client.publish(**kwargs)
    err = info.value
    assert err.response["Error"]["Code"] == error
    assert type(err) is getattr(client.exceptions, error)
    assert err.response["Error"]["Message"]
    status = err.response["ResponseMetadata"]["HTTPStatusCode"]
    assert status == (413 if "TooLarge" in error else 400)
    _assert_nothing_delivered(aws, watcher)
    assert _retained(aws) == retained


def test_bad_retained_publish_keeps_the_retained_message(aws: AwsHub, sub: Sub) -> None:
    topic = unique("keep")
    client = aws.client()
    client.publish(topic=topic, retain=True, qos=1, payload=b"kept")
    watcher = _watcher(sub)
    for bad in ({"qos": 2}, {"payloadFormatIndicator": "nope"}, {"messageExpiry": -1}):
        with pytest.raises(client.exceptions.InvalidRequestException):
            client.publish(topic=topic, retain=True, payload=b"", **bad)
    _assert_nothing_delivered(aws, watcher)
    assert client.get_retained_message(topic=topic)["payload"] == b"kept"
    client.publish(topic=topic, retain=True, payload=b"")  # clean up (limit is per account)


def test_botocore_itself_refuses_below_the_minimums(aws: AwsHub) -> None:
    client = aws.client()
    with pytest.raises(ParamValidationError):
        client.publish(topic="t", qos=-1)
    with pytest.raises(ParamValidationError):
        client.list_retained_messages(maxResults=0)


@pytest.mark.parametrize("value", ["x", "1.5", " 1", "1_0", "\u0661", "+1"])
def test_non_integer_query_values(aws: AwsHub, value: str) -> None:
    answer = aws.raw("POST", f"/topics/{unique()}?qos={quote(value, safe='')}")
    assert answer.status == 400
    assert answer.headers["x-amzn-errortype"] == "InvalidRequestException"


@pytest.mark.parametrize("value", ["yes", "1", ""])
def test_non_boolean_query_values(aws: AwsHub, value: str) -> None:
    answer = aws.raw("POST", f"/topics/{unique()}?retain={value}")
    assert answer.status == 400
    assert answer.headers["x-amzn-errortype"] == "InvalidRequestException"


def test_user_properties_header_not_base64(aws: AwsHub) -> None:
    headers = {"x-amz-mqtt5-user-properties": "[{not base64"}
    answer = aws.raw("POST", f"/topics/{unique()}", headers=headers)
    assert answer.status == 400
    assert b"base64" in answer.body


def test_user_properties_wire_form_without_sdk(aws: AwsHub, sub: Sub) -> None:
    topic = unique("w")
    v5 = sub(topic)
    header = base64.b64encode(json.dumps([{"k": "v w"}, {"k": "2"}]).encode()).decode()
    answer = aws.raw("POST", f"/topics/{topic}", b"p", {"x-amz-mqtt5-user-properties": header})
    assert answer.status == 200, answer.body
    assert v5.expect_message().user_properties == [("k", "v w"), ("k", "2")]


def test_invalid_utf8_in_the_path(aws: AwsHub) -> None:
    answer = aws.raw("POST", "/topics/a%FFb")
    assert answer.status == 400
    assert answer.headers["x-amzn-errortype"] == "InvalidRequestException"


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/topics/a"),
        ("PUT", "/topics/a"),
        ("POST", "/retainedMessage/a"),
        ("DELETE", "/retainedMessage"),
        ("POST", "/connections/c1"),
        ("GET", "/connections/c1/messages"),
        ("DELETE", "/connections/c1/subscriptions"),
    ],
)
def test_wrong_verb_is_method_not_allowed(aws: AwsHub, method: str, target: str) -> None:
    answer = aws.raw(method, target)
    assert answer.status == 405
    assert answer.headers["x-amzn-errortype"] == "MethodNotAllowedException"
    assert json.loads(answer.body)["message"]
