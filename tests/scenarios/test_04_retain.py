"""Retained messages: storage, replacement, deletion, QoS, retain handling 0/1/2."""

from __future__ import annotations

import pytest
from pahoclient import unique


def retain(client, version, topic: str, payload: bytes, qos: int = 1) -> None:
    client(version).publish(topic, payload, qos, retain=True)


def test_retained_message_is_sent_on_subscribe_with_the_retain_flag(client, version):
    t = unique()
    retain(client, version, t, b"state")
    sub = client(version)
    sub.subscribe(t, 1)
    msg = sub.expect_message()
    # MQTT-3.3.1-8 (v3) / MQTT-3.3.1-9 (v5): retained copies carry RETAIN 1.
    assert (msg.topic, msg.payload, msg.retain, msg.qos) == (t, b"state", True, 1)


def test_live_message_to_existing_subscriber_has_retain_cleared(client, version):
    """MQTT-3.3.1-9 (v3) / MQTT-3.3.1-12 (v5, Retain As Published 0)."""
    t = unique()
    sub = client(version)
    sub.subscribe(t, 1)
    retain(client, version, t, b"live")
    msg = sub.expect_message()
    assert (msg.payload, msg.retain) == (b"live", False)


def test_newer_retained_message_replaces_the_older(client, version):
    t = unique()
    retain(client, version, t, b"old")
    retain(client, version, t, b"new")
    sub = client(version)
    sub.subscribe(t, 1)
    client(version).publish(t, b"end", 1)
    assert [m.payload for m in sub.until(b"end")] == [b"new"]


def test_empty_payload_deletes_the_retained_message(client, version):
    """MQTT-3.3.1-10/11 (v3) / MQTT-3.3.1-6/7 (v5)."""
    t = unique()
    retain(client, version, t, b"state")
    watcher = client(version)
    watcher.subscribe(t, 1)
    assert watcher.expect_message().payload == b"state"
    retain(client, version, t, b"")
    # The empty message itself is forwarded as a normal message to existing subscribers.
    deleted = watcher.expect_message()
    assert (deleted.payload, deleted.retain) == (b"", False)
    sub = client(version)
    sub.subscribe(t, 1)
    client(version).publish(t, b"end", 1)
    assert sub.until(b"end") == []


def test_wildcard_subscription_gets_every_matching_retained_message(client, version):
    base = unique()
    for name in ("a", "b", "c/d"):
        retain(client, version, f"{base}/{name}", name.encode())
    retain(client, version, f"{unique()}/a", b"elsewhere")
    sub = client(version)
    sub.subscribe(f"{base}/#", 1)
    got = {sub.expect_message().payload for _ in range(3)}
    assert got == {b"a", b"b", b"c/d"}
    client(version).publish(f"{base}/end", b"end", 1)
    assert sub.until(b"end") == []


@pytest.mark.parametrize(("stored_qos", "sub_qos"), [(1, 2), (2, 0), (2, 1), (0, 2)])
def test_retained_message_is_delivered_at_the_lower_qos(client, version, stored_qos, sub_qos):
    t = unique()
    retain(client, version, t, b"r", stored_qos)
    sub = client(version)
    sub.subscribe(t, sub_qos)
    assert sub.expect_message().qos == min(stored_qos, sub_qos)


def test_retained_message_survives_its_publisher(client, version):
    t = unique()
    pub = client(version)
    pub.publish(t, b"kept", 1, retain=True)
    pub.disconnect()
    sub = client(version)
    sub.subscribe(t, 0)
    assert sub.expect_message().payload == b"kept"


def test_resubscribe_sends_retained_again_with_retain_handling_0(client, version):
    """v3: MQTT-3.8.4-3 (retained messages re-sent on a replaced subscription);
    v5: Retain Handling 0 = send at every subscribe."""
    t = unique()
    retain(client, version, t, b"r")
    sub = client(version)
    sub.subscribe(t, 1)
    assert sub.expect_message().payload == b"r"
    sub.subscribe(t, 1)
    assert sub.expect_message().payload == b"r"


def test_v5_retain_handling_1_sends_only_for_a_new_subscription(client):
    t = unique()
    retain(client, 5, t, b"r")
    sub = client(5)
    sub.subscribe(t, 1, retain_handling=1)
    msg = sub.expect_message()
    assert (msg.payload, msg.retain) == (b"r", True)
    sub.subscribe(t, 1, retain_handling=1)  # it exists now: MQTT-3.3.1-10
    client(5).publish(t, b"end", 1)
    assert sub.until(b"end") == []


def test_v5_retain_handling_2_never_sends_retained(client):
    t = unique()
    retain(client, 5, t, b"r")
    sub = client(5)
    sub.subscribe(t, 1, retain_handling=2)  # MQTT-3.3.1-11
    client(5).publish(t, b"end", 1)
    assert sub.until(b"end") == []


def test_v5_retain_as_published_keeps_the_flag_of_retained_delivery(client):
    t = unique()
    retain(client, 5, t, b"r")
    sub = client(5)
    sub.subscribe(t, 1, retain_as_published=True)
    assert sub.expect_message().retain is True
