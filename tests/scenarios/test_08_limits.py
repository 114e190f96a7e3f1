"""Configured limits: maximum QoS, packet size, connections, subscriptions, queued messages."""

from __future__ import annotations

import pytest
import rawmqtt
from pahoclient import unique
from rawmqtt import CONNACK, DISCONNECT, PUBLISH, Will

# --- maximum QoS (AWS IoT / Alibaba IoT behaviour) ----------------------------------------


@pytest.fixture(scope="module")
def qos1_hub(start_hub):
    return start_hub(MAX_QOS=1)


def test_max_qos_is_announced_in_v5_connack(qos1_hub, raw):
    assert raw(5, on=qos1_hub).connect(unique()).properties.get("maximum_qos") == 1


def test_max_qos_downgrades_the_granted_qos(qos1_hub, client, version):
    t = unique()
    sub = client(version, on=qos1_hub)
    assert sub.subscribe(t, 2) == 1  # MQTT-3.9.3 / v5 3.2.2.3.4: granted can be lower
    client(version, on=qos1_hub).publish(t, b"x", 1)
    assert sub.expect_message().qos == 1


def test_v5_qos2_publish_above_max_qos_is_refused(qos1_hub, raw):
    """MQTT-3.2.2-11 / v5 3.3.1.2: QoS above Maximum QoS -> DISCONNECT 0x9B."""
    c = raw(5, on=qos1_hub)
    c.connect(unique())
    c.publish(unique(), b"x", qos=2, mid=1)
    sent = c.expect_closed()
    assert all(p.type == DISCONNECT and p.reason == 0x9B for p in sent), sent
    qos1_hub.assert_serving()


def test_v5_will_qos_above_max_qos_is_refused(qos1_hub, raw):
    """v5 3.2.2.3.4: a Will QoS the server cannot support -> CONNACK 0x9B, then close."""
    c = raw(5, on=qos1_hub)
    c.send(rawmqtt.connect(unique(), 5, will=Will(unique(), b"w", qos=2)))
    connack = c.expect(CONNACK)
    assert connack.reason == 0x9B
    assert c.expect_closed() == []


# --- packet size ----------------------------------------------------------------------------


def test_publish_below_the_maximum_packet_size_is_delivered(client, version, hub):
    t = unique()
    sub = client(version)
    sub.subscribe(t, 1)
    payload = bytes(range(256)) * ((hub.setting("MAX_PACKET_SIZE") - 1024) // 256)
    client(version).publish(t, payload, 1)
    assert sub.expect_message().payload == payload


def test_publish_above_the_maximum_packet_size_is_refused(raw, version, hub):
    """v5 3.2.2.3.6 / 4.13: a packet larger than the server's Maximum Packet Size -> DISCONNECT
    0x95 Packet too large; 3.1.1 has no such code, the connection is closed.  Only the
    header and the start of the body are sent: the declared length alone must be enough
    (the hub checks before buffering)."""
    c = raw(version)
    c.connect(unique())
    body = rawmqtt.utf8(unique()) + b"\x00\x01" + (b"\x00" if version == 5 else b"")
    length = hub.setting("MAX_PACKET_SIZE") + 1024
    c.send(b"\x32" + rawmqtt.varint(length) + body + b"x" * 1000)
    sent = c.expect_closed()
    if version == 5:
        assert [(p.type, p.reason) for p in sent] in ([], [(DISCONNECT, 0x95)]), sent
    else:
        assert sent == []
    hub.assert_serving()


# --- connections and subscriptions ----------------------------------------------------------


def test_max_connections_refuses_one_more(fresh_hub, raw, version):
    hub = fresh_hub(MAX_CONNECTIONS=3)
    held = []
    for _ in range(3):
        c = raw(version, on=hub)
        c.connect(unique())
        held.append(c)
    extra = raw(version, on=hub)
    try:
        extra.send(rawmqtt.connect(unique(), version))
    except OSError:
        pass  # closed before we could even send
    sent = extra.expect_closed()
    # Refused: closed without CONNACK, or with a failure CONNACK (v3 0x03 server
    # unavailable; v5 0x97 quota exceeded / 0x9F connection rate exceeded / 0x89 busy).
    assert all(p.type == CONNACK and p.reason != 0 for p in sent), sent
    for c in held:
        c.ping()  # the others are unaffected
    held[0].disconnect()
    # The slot is free once the broker has seen the close (DISCONNECT waited for that).
    again = raw(version, on=hub)
    assert again.connect(unique()).reason == 0


@pytest.mark.thinghub_only  # mosquitto 2.0 has no per-client subscription limit
def test_max_subscriptions_per_client(start_hub, raw, version):
    hub = start_hub(MAX_SUBSCRIPTIONS_PER_CLIENT=3)
    c = raw(version, on=hub)
    c.connect(unique())
    t = unique()
    assert c.subscribe([(f"{t}/{i}", 1) for i in range(3)]) == [1, 1, 1]
    refused = c.subscribe(f"{t}/3", 1, mid=2)
    # v3: 0x80 failure; v5: 0x97 quota exceeded (any failure code is a refusal).
    assert refused == [0x80] if version == 4 else refused[0] >= 0x80
    assert c.subscribe(f"{t}/0", 2, mid=3) == [2]  # replacing one is not a new one
    c.ping()


# --- bounded queues -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "payload_size", "bound"),
    [({"MAX_QUEUED_MESSAGES": 5}, 10, 5), ({"MAX_QUEUED_BYTES": 5000}, 1000, 5)],
    ids=["messages", "bytes"],
)
def test_offline_queue_is_bounded(start_hub, raw, client, version, settings, payload_size, bound):
    hub = start_hub(**settings)
    t, cid = unique(), unique()
    c = raw(version, on=hub)
    props = {"session_expiry_interval": 300} if version == 5 else None
    c.connect(cid, clean=version == 5, properties=props)
    c.subscribe(t, 1)
    c.disconnect()
    pub = client(version, on=hub)
    for i in range(30):
        assert pub.publish(t, str(i).encode().ljust(payload_size, b"."), 1) == 0
    back = raw(version, on=hub)
    assert back.connect(cid, clean=False, properties=props).session_present
    pub.publish(t, b"end", 1)
    got = back.collect(b"end")
    assert 1 <= len(got) <= bound, [p.payload[:4] for p in got]
    numbers = [int(p.payload.rstrip(b".")) for p in got]
    assert numbers == sorted(numbers)
    hub.assert_serving()


def test_slow_consumer_does_not_stall_others(start_hub, raw, client, version):
    """A subscriber that never acknowledges fills its window and its queue; the hub keeps
    delivering to everyone else, message by message."""
    hub = start_hub(MAX_INFLIGHT=10, MAX_QUEUED_MESSAGES=5)
    t = unique()
    stuck = raw(version, on=hub)
    stuck.connect(unique())
    stuck.subscribe(t, 1)
    fine = client(version, on=hub)
    fine.subscribe(t, 1)
    pub = client(version, on=hub)
    for i in range(60):  # far beyond the 10 + 5 the stuck subscriber can hold
        pub.publish(t, str(i).encode(), 1)
        assert fine.expect_message().payload == str(i).encode()
    assert stuck.expect(PUBLISH).payload == b"0"
    hub.assert_serving()
