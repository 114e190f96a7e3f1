"""MQTT 5 PUBLISH properties: expiry, topic aliases, maximum packet size, request/response,
user properties, payload format indicator and content type.

Message expiry counts real seconds, so two scenarios let ~2 s pass.
"""

from __future__ import annotations

import time

import rawmqtt
from pahoclient import unique
from rawmqtt import DISCONNECT, PUBLISH


def offline_session(raw, topic: str, qos: int = 1) -> str:
    """A v5 session subscribed to `topic`, currently disconnected; returns its client id."""
    cid = unique()
    c = raw(5)
    c.connect(cid, properties={"session_expiry_interval": 300})
    c.subscribe(topic, qos)
    c.disconnect()
    return cid


def resume(raw, cid: str) -> rawmqtt.RawClient:
    c = raw(5)
    connack = c.connect(cid, clean=False, properties={"session_expiry_interval": 300})
    assert connack.session_present
    return c


def test_message_expiry_is_forwarded_no_larger_than_published(client):
    t = unique()
    sub = client(5)
    sub.subscribe(t, 1)
    client(5).publish(t, b"x", 1, MessageExpiryInterval=60)
    remaining = sub.expect_message().properties.get("MessageExpiryInterval")
    assert remaining is not None and 0 < remaining <= 60  # MQTT-3.3.2-6


def test_queued_message_expiry_counts_down_while_offline(client, raw):
    t = unique()
    cid = offline_session(raw, t)
    client(5).publish(t, b"x", 1, MessageExpiryInterval=60)
    time.sleep(1.2)  # time spent queued must be subtracted
    back = resume(raw, cid)
    msg = back.expect(PUBLISH)
    assert msg.payload == b"x"
    assert msg.properties["message_expiry_interval"] <= 59, msg


def test_expired_messages_are_not_delivered(client, raw):
    """MQTT-3.3.2-5: an expired message is not sent to a subscriber, queued or retained."""
    t = unique()
    cid = offline_session(raw, t)
    pub = client(5)
    pub.publish(t, b"short", 1, MessageExpiryInterval=1)
    pub.publish(t, b"long", 1, MessageExpiryInterval=300)
    pub.publish(f"{t}/r", b"retained", 1, retain=True, MessageExpiryInterval=1)
    time.sleep(2.2)
    back = resume(raw, cid)
    pub.publish(t, b"end", 1)
    assert [p.payload for p in back.collect(b"end")] == [b"long"]
    late = client(5)
    late.subscribe(f"{t}/r", 1)
    pub.publish(f"{t}/r", b"end", 1)
    assert late.until(b"end") == []


def test_inbound_topic_alias(client, raw):
    """v5 3.3.2.3.4: the client sets an alias with a topic, then publishes with the alias
    and an empty topic; subscribers see the full topic name."""
    t = unique()
    sub = client(5)
    sub.subscribe(f"{t}/#", 1)
    c = raw(5)
    max_alias = c.connect(unique()).properties.get("topic_alias_maximum", 0)
    assert max_alias >= 2
    c.publish_acked(f"{t}/a", b"1", 1, properties={"topic_alias": 1})
    c.publish_acked("", b"2", 1, mid=2, properties={"topic_alias": 1})
    c.publish_acked(f"{t}/b", b"3", 1, mid=3, properties={"topic_alias": 1})  # remapped
    c.publish_acked("", b"4", 1, mid=4, properties={"topic_alias": 1})
    c.publish_acked(f"{t}/c", b"5", 1, mid=5, properties={"topic_alias": max_alias})
    c.publish_acked("", b"6", 1, mid=6, properties={"topic_alias": max_alias})
    got = [(m.topic, m.payload) for m in sub.expect_messages(6)]
    assert got == [
        (f"{t}/a", b"1"),
        (f"{t}/a", b"2"),
        (f"{t}/b", b"3"),
        (f"{t}/b", b"4"),
        (f"{t}/c", b"5"),
        (f"{t}/c", b"6"),
    ]


def _expect_disconnect(c: rawmqtt.RawClient, *reasons: int) -> None:
    sent = c.expect_closed()
    assert all(p.type == DISCONNECT and p.reason in reasons for p in sent), sent


def test_inbound_topic_alias_above_the_maximum_is_refused(raw, hub):
    """MQTT-3.3.2-9 / v5 3.3.2.3.4: above the server's Topic Alias Maximum -> 0x94."""
    c = raw(5)
    c.connect(unique())
    c.publish(unique(), b"x", properties={"topic_alias": hub.setting("TOPIC_ALIAS_MAXIMUM") + 1})
    _expect_disconnect(c, 0x94)
    hub.assert_serving()


def test_inbound_topic_alias_zero_is_refused(raw, hub):
    """MQTT-3.3.2-8 forbids alias 0 without naming a reason code: 0x94 Topic Alias invalid
    fits best; 0x82 protocol error and (mosquitto's choice) 0x81 malformed are accepted."""
    c = raw(5)
    c.connect(unique())
    c.publish(unique(), b"x", properties={"topic_alias": 0})
    _expect_disconnect(c, 0x94, 0x82, 0x81)
    hub.assert_serving()


def test_inbound_unknown_topic_alias_is_a_protocol_error(raw, hub):
    c = raw(5)
    c.connect(unique())
    c.publish("", b"x", properties={"topic_alias": 3})  # never set on this connection
    _expect_disconnect(c, 0x82)
    hub.assert_serving()


def test_outbound_topic_aliases_respect_the_client_maximum(client, raw):
    """The server may use aliases up to the client's Topic Alias Maximum (MQTT-3.3.2-10/11);
    the client must always be able to resolve the full topic."""
    t = unique()
    sub = raw(5)
    sub.connect(unique(), properties={"topic_alias_maximum": 2})
    sub.subscribe(f"{t}/#", 0)
    topics = [f"{t}/{name}" for name in "abcabcaab"]
    pub = client(5)
    for i, topic in enumerate(topics):
        pub.publish(topic, str(i).encode(), 1)
    aliases: dict[int, str] = {}
    seen = []
    for _ in topics:
        p = sub.expect(PUBLISH)
        alias = p.properties.get("topic_alias")
        if alias is None:
            assert p.topic
            seen.append(p.topic)
            continue
        assert 1 <= alias <= 2, p
        if p.topic:
            aliases[alias] = p.topic
        assert alias in aliases, f"alias {alias} used before it was defined: {p}"
        seen.append(aliases[alias])
    assert seen == topics


def test_no_outbound_topic_alias_without_client_consent(client, raw):
    t = unique()
    sub = raw(5)
    sub.connect(unique())  # Topic Alias Maximum absent: 0
    sub.subscribe(t, 0)
    pub = client(5)
    for _ in range(3):
        pub.publish(t, b"x", 1)
    for _ in range(3):
        p = sub.expect(PUBLISH)
        assert p.topic == t and "topic_alias" not in p.properties


def test_client_maximum_packet_size_drops_oversized_messages_for_that_client(client, raw):
    """MQTT-3.1.2-24/25: the server must not send a packet larger than the client's Maximum
    Packet Size; it discards the message for that client only."""
    t = unique()
    small = raw(5)
    small.connect(unique(), properties={"maximum_packet_size": 256})
    small.subscribe(t, 1)
    big_sub = client(5)
    big_sub.subscribe(t, 1)
    pub = client(5)
    pub.publish(t, b"a" * 10, 1)
    pub.publish(t, b"b" * 1000, 1)
    pub.publish(t, b"end", 1)
    assert [p.payload for p in small.collect(b"end")] == [b"a" * 10]
    assert [m.payload for m in big_sub.until(b"end")] == [b"a" * 10, b"b" * 1000]


def test_request_response_properties_pass_through(client):
    t = unique()
    responder = client(5)
    responder.subscribe(f"{t}/req", 1)
    requester = client(5)
    requester.subscribe(f"{t}/resp", 1)
    requester.publish(
        f"{t}/req", b"ping", 1, ResponseTopic=f"{t}/resp", CorrelationData=b"\x00id-1\xff"
    )
    req = responder.expect_message()
    assert req.properties["ResponseTopic"] == f"{t}/resp"
    correlation = bytes.fromhex(req.properties["CorrelationData"])
    assert correlation == b"\x00id-1\xff"
    responder.publish(req.properties["ResponseTopic"], b"pong", 1, CorrelationData=correlation)
    resp = requester.expect_message()
    assert resp.payload == b"pong"
    assert bytes.fromhex(resp.properties["CorrelationData"]) == b"\x00id-1\xff"


def test_user_properties_pass_through_in_order(client):
    """MQTT-3.3.2-18: user properties are forwarded unaltered, in order, duplicates kept."""
    t = unique()
    sub = client(5)
    sub.subscribe(t, 1)
    pairs = [("b", "2"), ("a", "1"), ("b", "3"), ("ünï", "cödé")]
    client(5).publish(t, b"x", 1, UserProperty=pairs)
    assert sub.expect_message().user_properties == pairs


def test_payload_format_and_content_type_pass_through(client):
    """MQTT-3.3.2-4 / 3.3.2.3.9: forwarded unaltered."""
    t = unique()
    sub = client(5)
    sub.subscribe(t, 1)
    pub = client(5)
    pub.publish(t, '{"t": 21.5}', 1, PayloadFormatIndicator=1, ContentType="application/json")
    pub.publish(t, b"\x00\xff\x10", 1, PayloadFormatIndicator=0, ContentType="x-bin")
    text, binary = sub.expect_messages(2)
    assert text.payload == b'{"t": 21.5}'
    assert text.properties["PayloadFormatIndicator"] == 1
    assert text.properties["ContentType"] == "application/json"
    assert binary.payload == b"\x00\xff\x10"
    assert binary.properties.get("PayloadFormatIndicator", 0) == 0
    assert binary.properties["ContentType"] == "x-bin"


def test_v5_message_reaches_a_v311_subscriber_without_properties(client):
    t = unique()
    old = client(4)
    old.subscribe(t, 1)
    client(5).publish(t, b"payload", 1, ContentType="text/plain", UserProperty=[("k", "v")])
    msg = old.expect_message()
    assert (msg.payload, msg.qos, msg.properties) == (b"payload", 1, {})
