"""GetRetainedMessage, ListRetainedMessages (and boto3's paginator), the retained limit."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pahoclient
import pytest
from awshub import RETAINED_LIMIT, AwsHub
from pahoclient import unique

Sub = Callable[..., pahoclient.Client]


def test_retain_get_and_deliver_to_new_subscribers(aws: AwsHub, sub: Sub) -> None:
    topic = unique("r")
    client = aws.client()
    before = int(time.time() * 1000)
    client.publish(
        topic=topic,
        qos=1,
        retain=True,
        payload=b"\x00state",
        userProperties=[{"a": "1"}, {"b": "2"}],
        contentType="text/plain",
    )
    got = client.get_retained_message(topic=topic)
    assert got["topic"] == topic
    assert got["payload"] == b"\x00state"
    assert got["qos"] == 1
    assert before - 5 <= got["lastModifiedTime"] <= int(time.time() * 1000) + 5
    assert json.loads(got["userProperties"]) == [{"a": "1"}, {"b": "2"}]
    late = sub(topic)
    message = late.expect_message()
    assert (message.payload, message.retain, message.qos) == (b"\x00state", True, 1)
    assert message.properties["ContentType"] == "text/plain"
    assert message.user_properties == [("a", "1"), ("b", "2")]
    old = sub(topic, version=4).expect_message()
    assert (old.payload, old.retain) == (b"\x00state", True)
    # An empty retained payload deletes it (and is still delivered, not stored).
    client.publish(topic=topic, retain=True, payload=b"")
    assert late.expect_message().payload == b""
    with pytest.raises(client.exceptions.ResourceNotFoundException) as info:
        client.get_retained_message(topic=topic)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    listed = client.list_retained_messages()["retainedTopics"]
    assert topic not in [r["topic"] for r in listed]


def test_retained_from_a_device_is_visible(aws: AwsHub, sub: Sub) -> None:
    topic = unique("dev")
    device = sub(None)
    device.publish(topic, b"from mqtt", qos=1, retain=True)
    client = aws.client()
    got = client.get_retained_message(topic=topic)
    assert (got["payload"], got["qos"]) == (b"from mqtt", 1)
    assert "userProperties" not in got
    device.publish(topic, b"", qos=1, retain=True)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_retained_message(topic=topic)


def test_unknown_and_invalid_topics(aws: AwsHub) -> None:
    client = aws.client()
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_retained_message(topic=unique("none"))
    for bad in ("", "a/+", "a/#", "/".join("x" * 9)):
        with pytest.raises(client.exceptions.InvalidRequestException):
            client.get_retained_message(topic=bad)


def test_list_and_paginate(aws: AwsHub) -> None:
    _key, client = aws.tenant()
    topics = sorted(f"p/{i:02d}/{unique()}" for i in range(7))
    for i, topic in enumerate(topics):
        client.publish(topic=topic, retain=True, qos=i % 2, payload=b"x" * (i + 1))
    whole = client.list_retained_messages()
    assert "nextToken" not in whole
    assert [r["topic"] for r in whole["retainedTopics"]] == topics
    first = whole["retainedTopics"][3]
    assert (first["payloadSize"], first["qos"]) == (4, 1)
    assert first["lastModifiedTime"] > 1_700_000_000_000

    paginator = client.get_paginator("list_retained_messages")
    pages = list(paginator.paginate(PaginationConfig={"PageSize": 3}))
    assert [len(p["retainedTopics"]) for p in pages] == [3, 3, 1]
    assert [r["topic"] for p in pages for r in p["retainedTopics"]] == topics
    capped = paginator.paginate(PaginationConfig={"PageSize": 2, "MaxItems": 5}).build_full_result()
    assert [r["topic"] for r in capped["retainedTopics"]] == topics[:5]

    # A token resumes after a key: a topic removed between pages does not shift the rest.
    page = client.list_retained_messages(maxResults=2)
    client.publish(topic=topics[0], retain=True, payload=b"")
    rest = client.list_retained_messages(maxResults=200, nextToken=page["nextToken"])
    assert [r["topic"] for r in rest["retainedTopics"]] == topics[2:]


def test_list_parameters_are_checked(aws: AwsHub) -> None:
    client = aws.client()
    for bad in (201, 10_000):
        with pytest.raises(client.exceptions.InvalidRequestException):
            client.list_retained_messages(maxResults=bad)
    for token in ("garbage", "abc/+=", "MTpzdWJzY3JpcHRpb25zOmE="):  # the last: another kind
        with pytest.raises(client.exceptions.InvalidRequestException):
            client.list_retained_messages(nextToken=token)


def test_retained_limit_is_throttled_and_changes_nothing(aws: AwsHub, sub: Sub) -> None:
    _key, client = aws.tenant()
    topics = [f"lim/{i:02d}" for i in range(RETAINED_LIMIT)]
    for topic in topics:
        client.publish(topic=topic, retain=True, payload=b"v1")
    with pytest.raises(client.exceptions.ThrottlingException) as info:
        client.publish(topic="lim/new", retain=True, payload=b"v1")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert "retained" in info.value.response["Error"]["Message"]
    listed = [r["topic"] for r in client.list_retained_messages()["retainedTopics"]]
    assert listed == topics
    # Replacing, deleting and publishing without retain still work at the limit.
    client.publish(topic=topics[0], retain=True, payload=b"v2")
    assert client.get_retained_message(topic=topics[0])["payload"] == b"v2"
    client.publish(topic="lim/new", payload=b"not retained")
    client.publish(topic=topics[1], retain=True, payload=b"")
    client.publish(topic="lim/new", retain=True, payload=b"now there is room")
    assert client.get_retained_message(topic="lim/new")["payload"] == b"now there is room"


def test_tenancy_of_retained_messages(aws: AwsHub) -> None:
    topic = unique("mine")
    root = aws.client()
    root.publish(topic=topic, retain=True, payload=b"secret")
    other = aws.client(aws.other_key)
    with pytest.raises(other.exceptions.ResourceNotFoundException) as info:
        other.get_retained_message(topic=topic)
    assert "secret" not in str(info.value.response)
    assert topic not in [r["topic"] for r in other.list_retained_messages()["retainedTopics"]]
    # The same topic in the other account is another message.
    other.publish(topic=topic, retain=True, payload=b"theirs")
    assert root.get_retained_message(topic=topic)["payload"] == b"secret"
    assert other.get_retained_message(topic=topic)["payload"] == b"theirs"
    for client in (root, other):
        client.publish(topic=topic, retain=True, payload=b"")
