"""Publish: boto3 in, MQTT 5 and 3.1.1 subscribers out, property by property."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from awshub import AwsHub
from pahoclient import unique

Factory = Any  # the ``sub`` fixture: make(topic_filter, qos=1, version=5)


def test_every_mqtt5_property_reaches_a_v5_subscriber(aws: AwsHub, sub: Factory) -> None:
    topic = f"dev/{unique()}/a b/ü/$x?y&z=1%2F"
    v5 = sub(topic)
    v3 = sub(topic, version=4)
    aws.client().publish(
        topic=topic,
        qos=1,
        payload=b'\x00\x01hello{"k":1}',
        userProperties=[{"deviceName": "alpha"}, {"deviceCnt": "45"}],
        payloadFormatIndicator="UNSPECIFIED_BYTES",
        contentType="application/json; charset=utf-8",
        responseTopic="resp/topic one",
        correlationData=base64.b64encode(b"corr-\x00\xff").decode(),
        messageExpiry=3600,
    )
    got = v5.expect_message()
    assert got.topic == topic
    assert got.payload == b'\x00\x01hello{"k":1}'
    assert got.qos == 1 and got.retain is False
    p = got.properties
    assert p["ContentType"] == "application/json; charset=utf-8"
    assert p["ResponseTopic"] == "resp/topic one"
    assert bytes.fromhex(p["CorrelationData"]) == b"corr-\x00\xff"
    assert p["PayloadFormatIndicator"] == 0
    assert 3590 <= p["MessageExpiryInterval"] <= 3600
    assert got.user_properties == [("deviceName", "alpha"), ("deviceCnt", "45")]
    old = v3.expect_message()
    assert (old.topic, old.payload, old.qos, old.properties) == (got.topic, got.payload, 1, {})


def test_utf8_payload_format_and_double_encoded_user_properties(aws: AwsHub, sub: Factory) -> None:
    topic = unique("t")
    v5 = sub(topic, qos=0)
    # A JSON *string*, as the API documentation says: boto3 encodes it twice (reference §2).
    doc = json.dumps([{"deviceName": "alpha"}, {"deviceCnt": "45"}])
    aws.client().publish(
        topic=topic,
        payload="grüße".encode(),
        payloadFormatIndicator="UTF8_DATA",
        userProperties=doc,
    )
    got = v5.expect_message()
    assert got.payload == "grüße".encode() and got.qos == 0
    assert got.properties["PayloadFormatIndicator"] == 1
    assert got.user_properties == [("deviceName", "alpha"), ("deviceCnt", "45")]
    assert "MessageExpiryInterval" not in got.properties
    assert "ContentType" not in got.properties


def test_minimal_publish_and_empty_payload(aws: AwsHub, sub: Factory) -> None:
    topic = unique("t")
    v5 = sub(topic)
    answer = aws.client().publish(topic=topic)
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    got = v5.expect_message()
    assert (got.payload, got.qos, got.retain) == (b"", 0, False)
    assert got.properties == {}


@pytest.mark.parametrize(("given", "sent"), [(0, 1), (1, 1), (604_800, 604_800), (10**7, 604_800)])
def test_message_expiry_raised_and_clamped(
    aws: AwsHub, sub: Factory, given: int, sent: int
) -> None:
    topic = unique("t")
    v5 = sub(topic)
    aws.client().publish(topic=topic, payload=b"x", messageExpiry=given)
    assert sent - 5 <= v5.expect_message().properties["MessageExpiryInterval"] <= sent


def test_raw_slashes_in_the_path(aws: AwsHub, sub: Factory) -> None:
    base = unique("raw")
    v5 = sub(f"{base}/#")
    answer = aws.raw("POST", f"/topics/{base}/b/c?qos=1", b"payload")
    assert answer.status == 200, answer.body
    got = v5.expect_message()
    assert (got.topic, got.payload, got.qos) == (f"{base}/b/c", b"payload", 1)


def test_percent_encoded_slash_is_one_decode(aws: AwsHub, sub: Factory) -> None:
    base = unique("enc")
    v5 = sub(f"{base}/#")
    # %252F is a literal "%2F" in the topic; %2F is a level separator.
    answer = aws.raw("POST", f"/topics/{base}%2Fa%252Fb", b"p")
    assert answer.status == 200, answer.body
    assert v5.expect_message().topic == f"{base}/a%2Fb"


def test_publishable_reserved_and_basic_ingest_topics(aws: AwsHub, sub: Factory) -> None:
    thing = unique("thing")
    shadow = sub(f"$aws/things/{thing}/#")
    ingest = sub("$aws/rules/#")
    client = aws.client()
    client.publish(topic=f"$aws/things/{thing}/shadow/update", payload=b"{}")
    client.publish(topic=f"$aws/things/{thing}/shadow/name/s1/get", payload=b"")
    # Basic Ingest: the $aws/rules/<rule>/ prefix does not count against 7 slashes (§5).
    deep = f"$aws/rules/{thing}/1/2/3/4/5/6/7/8"
    client.publish(topic=deep, payload=b"i")
    topics = {shadow.expect_message().topic, shadow.expect_message().topic}
    # Shadow requests go to the shadow service (test_aws_shadow.py), which answers them: an
    # update without "state" and a get of a shadow that does not exist are rejected.
    assert topics == {
        f"$aws/things/{thing}/shadow/update/rejected",
        f"$aws/things/{thing}/shadow/name/s1/get/rejected",
    }
    assert ingest.expect_message().topic == deep


def test_topic_at_the_limits_is_accepted(aws: AwsHub, sub: Factory) -> None:
    prefix = unique("lim")
    seven = f"{prefix}/1/2/3/4/5/6/7"
    long = prefix + "/" + "x" * (256 - len(prefix) - 1)
    assert len(long.encode()) == 256
    v5 = sub(f"{prefix}/#")
    client = aws.client()
    client.publish(topic=seven, payload=b"7")
    client.publish(topic=long, payload=b"256")
    assert [m.topic for m in v5.expect_messages(2)] == [seven, long]


def test_qos1_publish_answers_after_delivery_is_arranged(aws: AwsHub, sub: Factory) -> None:
    topic = unique("t")
    v5 = sub(topic, qos=1)
    client = aws.client()
    started = time.monotonic()
    for i in range(20):
        client.publish(topic=topic, qos=1, payload=str(i).encode())
    received = [m.payload for m in v5.expect_messages(20)]
    assert received == [str(i).encode() for i in range(20)]
    assert time.monotonic() - started < 10
