"""GetConnection, ListSubscriptions, DeleteConnection and SendDirectMessage against paho
clients of the same account; other accounts see nothing."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as paho
import pahoclient
import pytest
from awshub import AwsHub
from paho.mqtt.enums import CallbackAPIVersion
from pahoclient import unique

Sub = Callable[..., pahoclient.Client]


def test_get_connection_of_a_persistent_v5_client(aws: AwsHub, sub: Sub) -> None:
    device = sub(None, keepalive=30, session_expiry=300)
    client = aws.client()
    got = client.get_connection(clientId=device.client_id)
    assert got["clientId"] == device.client_id
    assert got["connected"] is True
    assert got["cleanSession"] is False
    assert got["sessionExpiry"] == 300
    assert got["keepAliveDuration"] == 30
    assert "sourceIp" not in got
    sock: Any = device.paho.socket()
    local_ip, local_port = sock.getsockname()[:2]
    detailed = client.get_connection(clientId=device.client_id, includeSocketInformation=True)
    assert (detailed["sourceIp"], detailed["sourcePort"]) == (local_ip, local_port)
    # Offline, the persistent session is still there.
    device.disconnect()
    offline = client.get_connection(clientId=device.client_id)
    assert offline["connected"] is False and offline["sessionExpiry"] == 300
    assert "keepAliveDuration" not in offline


def test_get_connection_of_a_clean_v311_client(aws: AwsHub, sub: Sub) -> None:
    device = sub(None, version=4, clean=True)
    got = aws.client().get_connection(clientId=device.client_id)
    assert got["connected"] is True and got["cleanSession"] is True
    assert got["sessionExpiry"] == 0


def test_client_ids_are_checked(aws: AwsHub) -> None:
    client = aws.client()
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_connection(clientId=unique("nobody"))
    for bad in ("$reserved", "x" * 129):
        with pytest.raises(client.exceptions.InvalidRequestException):
            client.get_connection(clientId=bad)
        with pytest.raises(client.exceptions.InvalidRequestException):
            client.list_subscriptions(clientId=bad)
        with pytest.raises(client.exceptions.InvalidRequestException):
            client.delete_connection(clientId=bad)


def test_client_id_with_slash_and_space(aws: AwsHub, sub: Sub) -> None:
    device = sub(None, client_id=f"{unique('c')}/a b/ü")
    assert aws.client().get_connection(clientId=device.client_id)["connected"] is True


def test_list_subscriptions_paginated(aws: AwsHub, sub: Sub) -> None:
    base = unique("s")
    filters = sorted(
        [f"{base}/a", f"{base}/b/+", f"{base}/#", f"$share/g1/{base}/c", f"{base}/d/e/f"]
    )
    device = sub(None)
    for i, topic_filter in enumerate(filters):
        device.subscribe(topic_filter, i % 2)
    client = aws.client()
    whole = client.list_subscriptions(clientId=device.client_id)
    assert "nextToken" not in whole
    expected = [{"topicFilter": f, "qos": i % 2} for i, f in enumerate(filters)]
    by_filter = {s["topicFilter"]: s["qos"] for s in whole["subscriptions"]}
    assert by_filter == {e["topicFilter"]: e["qos"] for e in expected}
    assert [s["topicFilter"] for s in whole["subscriptions"]] == filters
    paginator = client.get_paginator("list_subscriptions")
    pages = list(paginator.paginate(clientId=device.client_id, PaginationConfig={"PageSize": 2}))
    assert [len(p["subscriptions"]) for p in pages] == [2, 2, 1]
    assert [s["topicFilter"] for p in pages for s in p["subscriptions"]] == filters
    with pytest.raises(client.exceptions.InvalidRequestException):
        client.list_subscriptions(clientId=device.client_id, maxResults=201)
    with pytest.raises(client.exceptions.InvalidRequestException):
        client.list_subscriptions(clientId=device.client_id, nextToken="bogus")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.list_subscriptions(clientId=unique("nobody"))


def _will_device(aws: AwsHub, sub: Sub, will_topic: str, **options: Any) -> pahoclient.Client:
    return sub(None, will=(will_topic, b"gone", 1, False), **options)


def test_delete_connection_sends_the_will(aws: AwsHub, sub: Sub) -> None:
    will_topic = unique("will")
    watcher = sub(will_topic)
    device = _will_device(aws, sub, will_topic, session_expiry=600)
    client = aws.client()
    answer = client.delete_connection(clientId=device.client_id)
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert device.expect_disconnect() == 0x98  # administrative action
    assert watcher.expect_message().payload == b"gone"
    # cleanSession=false (the default) keeps the persistent session.
    assert client.get_connection(clientId=device.client_id)["connected"] is False
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.delete_connection(clientId=device.client_id)  # not connected any more


def test_delete_connection_clean_and_without_will(aws: AwsHub, sub: Sub) -> None:
    will_topic = unique("will")
    watcher = sub(will_topic)
    device = _will_device(aws, sub, will_topic, session_expiry=600)
    client = aws.client()
    client.delete_connection(clientId=device.client_id, cleanSession=True, preventWillMessage=True)
    device.expect_disconnect()
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_connection(clientId=device.client_id)
    client.publish(topic=will_topic, payload=b"sentinel")
    assert watcher.expect_message().payload == b"sentinel"  # no will came first


@pytest.mark.parametrize("version", [5, 4])
def test_send_direct_message_without_subscription(aws: AwsHub, sub: Sub, version: int) -> None:
    device = sub(None, version=version)
    topic = unique("direct")
    answer = aws.client().send_direct_message(
        clientId=device.client_id,
        topic=topic,
        payload=b"to you",
        contentType="text/plain",
        responseTopic="replies/x",
        userProperties=[{"k": "v"}],
        correlationData="AAE=",
        payloadFormatIndicator="UTF8_DATA",
    )
    assert answer["message"] == "OK" and answer["traceId"]
    got = device.expect_message()
    assert (got.topic, got.payload, got.qos) == (topic, b"to you", 0)
    if version == 5:
        assert got.properties["ContentType"] == "text/plain"
        assert got.properties["ResponseTopic"] == "replies/x"
        assert bytes.fromhex(got.properties["CorrelationData"]) == b"\x00\x01"
        assert got.properties["PayloadFormatIndicator"] == 1
        assert got.user_properties == [("k", "v")]
    else:
        assert got.properties == {}


def test_send_direct_message_confirmed_by_puback(aws: AwsHub, sub: Sub) -> None:
    device = sub(None)
    answer = aws.client().send_direct_message(
        clientId=device.client_id, topic="cmd/x", payload=b"ack me", confirmation=True, timeout=5
    )
    assert answer["message"] == "OK"
    got = device.expect_message()
    assert (got.payload, got.qos) == (b"ack me", 1)


@pytest.fixture
def silent_device(aws: AwsHub) -> Iterator[tuple[paho.Client, queue.Queue[bytes]]]:
    """A v5 client that never acknowledges QoS 1 messages (paho's manual_ack)."""
    received: queue.Queue[bytes] = queue.Queue()
    connected: queue.Queue[int] = queue.Queue()
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=unique("silent"),
        protocol=paho.MQTTv5,
        manual_ack=True,
    )
    client.on_connect = lambda c, u, f, rc, p: connected.put(rc.value)
    client.on_message = lambda c, u, m: received.put(bytes(m.payload))
    client.connect(aws.host, aws.port)
    client.loop_start()
    assert connected.get(timeout=5) == 0
    yield client, received
    client.disconnect()
    client.loop_stop()


def test_send_direct_message_times_out_without_puback(
    aws: AwsHub, silent_device: tuple[paho.Client, queue.Queue[bytes]]
) -> None:
    device, received = silent_device
    client = aws.client()
    started = time.monotonic()
    with pytest.raises(client.exceptions.GatewayTimeoutException) as info:
        client.send_direct_message(
            clientId=device._client_id.decode(),
            topic="cmd/y",
            payload=b"p",
            confirmation=True,
            timeout=1,
        )
    assert 0.9 <= time.monotonic() - started < 4
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 504
    assert received.get(timeout=5) == b"p"  # it was delivered, never acknowledged


def test_send_direct_message_errors(aws: AwsHub, sub: Sub) -> None:
    device = sub(None)
    client = aws.client()
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.send_direct_message(clientId=unique("nobody"), topic="t", payload=b"x")
    bad: list[dict[str, Any]] = [
        {"topic": "a/+"},
        {"topic": ""},
        {"topic": "t", "timeout": 16, "confirmation": True},
        {"topic": "t", "timeout": 0, "confirmation": True},
        {"topic": "t", "payloadFormatIndicator": "BYTES"},
        {"topic": "t", "userProperties": {"not": "a list"}},
    ]
    for kwargs in bad:
        with pytest.raises(client.exceptions.InvalidRequestException):
            client.send_direct_message(clientId=device.client_id, payload=b"x", **kwargs)
    with pytest.raises(client.exceptions.RequestEntityTooLargeException):
        client.send_direct_message(
            clientId=device.client_id, topic="t", payload=b"x" * (128 * 1024 + 1)
        )
    client.send_direct_message(clientId=device.client_id, topic="t/ok", payload=b"after")
    assert device.expect_message().topic == "t/ok"  # none of the refused ones arrived


def test_connections_of_another_account_do_not_exist(aws: AwsHub, sub: Sub) -> None:
    device = sub(unique("f"))
    other = aws.client(aws.other_key)
    cid = device.client_id
    calls: list[Callable[[], Any]] = [
        lambda: other.get_connection(clientId=cid),
        lambda: other.list_subscriptions(clientId=cid),
        lambda: other.delete_connection(clientId=cid, cleanSession=True),
        lambda: other.send_direct_message(clientId=cid, topic="t", payload=b"x"),
        lambda: other.send_direct_message(clientId=cid, topic="t", confirmation=True),
    ]
    for call in calls:
        with pytest.raises(other.exceptions.ResourceNotFoundException):
            call()
    root = aws.client()
    assert root.get_connection(clientId=cid)["connected"] is True
    root.send_direct_message(clientId=cid, topic="t/root", payload=b"only root")
    assert device.expect_message().payload == b"only root"
