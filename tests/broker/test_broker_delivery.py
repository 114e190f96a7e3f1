"""Delivery (MQTT 5.0 §4.3, §4.4, §4.6, §4.9, §3.3; 3.1.1 §4.3-4.6): QoS 0/1/2 flows, the
inflight window and Receive Maximum, redelivery after reconnect, queue bounds and drops,
message expiry, the client's Maximum Packet Size, topic aliases and pass-through properties."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from harness import V5, V311, InMemoryHub, TestClient, both_versions
from hypothesis import given, settings
from hypothesis import strategies as st

from thinghub.broker.queue import Outgoing
from thinghub.message import Message
from thinghub.mqtt.packets import PubAck, PubComp, Publish, PubRec, PubRel
from thinghub.mqtt.properties import Properties
from thinghub.mqtt.types import ProtocolVersion, ReasonCode


def session_client(
    hub: InMemoryHub, client_id: str, version: ProtocolVersion, **kwargs: Any
) -> TestClient:
    """Connect with a session that survives the connection (100 s on v5)."""
    return hub.connect(client_id, version, clean_start=False, session_expiry=100, **kwargs)


def resume(hub: InMemoryHub, client_id: str, version: ProtocolVersion, **kwargs: Any) -> TestClient:
    client = hub.client(version)
    ack = client.connect(client_id, clean_start=False, session_expiry=100, **kwargs)
    assert ack.reason_code == 0 and ack.session_present
    return client


# ---------------------------------------------------------------------------- QoS 0, 1, 2


@both_versions
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_end_to_end_at_each_qos(version: ProtocolVersion, qos: int) -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", version)
    assert sub.subscribe("t", qos=2).reason_codes == (2,)
    pub = hub.connect("pub", version)
    if qos == 2:
        pub.publish_qos2("t", b"hello")
    else:
        ack = pub.publish("t", b"hello", qos)
        assert ack == (None if qos == 0 else PubAck(packet_id=1))
    got = sub.expect_publish("t", b"hello", qos=qos)
    assert not got.dup and not got.retain
    sub.ack(got)
    sub.assert_nothing_pending()
    pub.assert_nothing_pending()
    assert hub.stats.messages_received == 1
    assert hub.stats.messages_delivered == 1


@both_versions
@pytest.mark.parametrize(("published", "granted", "delivered"), [(2, 1, 1), (2, 0, 0), (0, 2, 0)])
def test_delivered_at_the_lower_of_publish_and_subscription_qos(
    version: ProtocolVersion, published: int, granted: int, delivered: int
) -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", version)
    sub.subscribe("t", qos=granted)
    pub = hub.connect("pub", version)
    if published == 2:
        pub.publish_qos2("t", b"x")
    else:
        pub.publish("t", b"x", published)
    sub.expect_publish("t", b"x", qos=delivered)


@both_versions
def test_puback_code_without_subscribers(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    pub = hub.connect("pub", version)
    ack = pub.publish("nobody/listens", b"x", 1)
    expected = ReasonCode.NO_MATCHING_SUBSCRIBERS if version == V5 else 0
    assert ack == PubAck(packet_id=1, reason_code=expected)
    rec = pub.publish("nobody/listens", b"x", 2)
    assert isinstance(rec, PubRec) and rec.reason_code == expected
    pub.release(rec.packet_id)


@both_versions
def test_duplicate_qos2_publish_is_not_routed_twice(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", version)
    sub.subscribe("t", qos=2)
    pub = hub.connect("pub", version)
    pub.publish("t", b"once", 2, packet_id=7)
    pub.publish("t", b"once", 2, packet_id=7, dup=True)  # PUBREC lost, say: resent
    assert pub.release(7).reason_code == 0
    got = sub.expect_publish("t", b"once")
    sub.ack(got)
    sub.assert_nothing_pending()  # §4.3.3: delivered once
    # The identifier is free again: the same id is a new message.
    pub.publish("t", b"twice", 2, packet_id=7)
    pub.release(7)
    sub.expect_publish("t", b"twice")


@both_versions
def test_duplicate_qos2_publish_across_reconnect(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", version)
    sub.subscribe("t", qos=2)
    pub = session_client(hub, "pub", version)
    pub.publish("t", b"once", 2, packet_id=9)
    pub.drop()
    again = resume(hub, "pub", version)
    again.publish("t", b"once", 2, packet_id=9, dup=True)
    again.release(9)
    sub.ack(sub.expect_publish("t", b"once"))
    sub.assert_nothing_pending()


@both_versions
def test_pubrel_for_unknown_id(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    pub = hub.connect("pub", version)
    comp = pub.release(42)
    expected = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if version == V5 else 0
    assert comp == PubComp(packet_id=42, reason_code=expected)
    assert not pub.closed


@both_versions
def test_pubrec_for_unknown_id(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", version)
    sub.send(PubRec(packet_id=5))
    rel = sub.expect(PubRel)
    expected = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if version == V5 else 0
    assert rel == PubRel(packet_id=5, reason_code=expected)


@both_versions
def test_unknown_and_mismatched_acks_are_ignored(version: ProtocolVersion) -> None:
    hub = InMemoryHub(max_inflight=1)
    sub = hub.connect("sub", version)
    sub.subscribe("t", qos=2)
    pub = hub.connect("pub", version)
    pub.publish_qos2("t", b"a")
    pub.publish_qos2("t", b"b")
    first = sub.expect_publish("t", b"a", qos=2)
    assert first.packet_id is not None
    sub.send(PubAck(packet_id=first.packet_id))  # a PUBACK does not complete QoS 2
    sub.send(PubAck(packet_id=999), PubComp(packet_id=999))
    sub.assert_nothing_pending()  # "b" still waits for the window
    sub.send(PubRec(packet_id=first.packet_id))
    sub.expect(PubRel)
    sub.assert_nothing_pending()  # PUBREC alone does not free the slot (§4.9)
    sub.send(PubComp(packet_id=first.packet_id))
    sub.expect_publish("t", b"b")


def test_pubrec_with_error_ends_the_qos2_flow() -> None:
    hub = InMemoryHub(max_inflight=1)
    sub = hub.connect("sub", V5)
    sub.subscribe("t", qos=2)
    pub = hub.connect("pub", V5)
    pub.publish_qos2("t", b"a")
    pub.publish_qos2("t", b"b")
    first = sub.expect_publish("t", b"a")
    assert first.packet_id is not None
    sub.send(PubRec(packet_id=first.packet_id, reason_code=ReasonCode.QUOTA_EXCEEDED))
    sub.expect_publish("t", b"b")  # no PUBREL; the slot is free (§4.3.3, §4.9)


def test_inbound_receive_maximum_exceeded() -> None:
    hub = InMemoryHub(receive_maximum=2)
    pub = hub.connect("pub", V5)
    pub.publish("t", b"1", 2)
    pub.publish("t", b"2", 2)
    pub.send(Publish(topic="t", payload=b"3", qos=2, packet_id=50))
    pub.expect_closed(ReasonCode.RECEIVE_MAXIMUM_EXCEEDED)  # §3.3.4


# ---------------------------------------------------------------------------- inflight window


@both_versions
def test_max_inflight_window(version: ProtocolVersion) -> None:
    hub = InMemoryHub(max_inflight=2)
    sub = hub.connect("sub", version)
    sub.subscribe("t", qos=1)
    pub = hub.connect("pub", version)
    for i in range(5):
        pub.publish("t", b"%d" % i, 1)
    first = sub.publishes()
    assert [p.payload for p in first] == [b"0", b"1"]
    sub.ack(first[1])  # out of order: the slot frees, the order of sending does not change
    assert [p.payload for p in sub.publishes()] == [b"2"]
    sub.ack(first[0])
    third = sub.publishes()
    assert [p.payload for p in third] == [b"3"]
    sub.assert_nothing_pending()


def test_client_receive_maximum_bounds_the_window() -> None:
    hub = InMemoryHub(max_inflight=100)
    sub = hub.connect("sub", V5, receive_maximum=3)
    sub.subscribe("t", qos=1)
    pub = hub.connect("pub", V5)
    for i in range(10):
        pub.publish("t", b"%d" % i, 1)
    received: list[bytes] = []
    while True:
        batch = sub.publishes()
        if not batch:
            break
        assert len(sub.unacked) <= 3  # [MQTT-3.3.4-9]
        received += [p.payload for p in batch]
        for p in batch:
            sub.ack(p)
    assert received == [b"%d" % i for i in range(10)]


def test_window_is_the_smaller_of_max_inflight_and_receive_maximum() -> None:
    hub = InMemoryHub(max_inflight=2)
    sub = hub.connect("sub", V5, receive_maximum=50)
    sub.subscribe("t", qos=1)
    pub = hub.connect("pub", V5)
    for i in range(4):
        pub.publish("t", b"%d" % i, 1)
    assert len(sub.publishes()) == 2


@settings(max_examples=60, deadline=None)
@given(
    window=st.integers(1, 4),
    qos=st.sampled_from([1, 2]),
    version=st.sampled_from([V311, V5]),
    steps=st.lists(st.one_of(st.just(-1), st.integers(0, 7)), max_size=40),
)
def test_random_interleavings_keep_order_and_window(
    window: int, qos: int, version: ProtocolVersion, steps: list[int]
) -> None:
    """-1 publishes the next message; k >= 0 acknowledges the k-th outstanding one (mod)."""
    hub = InMemoryHub(max_inflight=window)
    sub = hub.connect("sub", version)
    sub.subscribe("t", qos=qos)
    pub = hub.connect("pub", version)
    published: list[bytes] = []
    received: list[bytes] = []
    outstanding: list[Publish] = []

    def pull() -> None:
        for p in sub.publishes():
            assert not p.dup
            received.append(p.payload)
            outstanding.append(p)
        assert len(outstanding) <= window
        assert received == published[: len(received)]  # in order, no loss, no duplicates

    for step in steps:
        if step < 0:
            published.append(b"m%d" % len(published))
            if qos == 1:
                pub.publish("t", published[-1], 1)
            else:
                pub.publish_qos2("t", published[-1])
        elif outstanding:
            sub.ack(outstanding.pop(step % len(outstanding)))
        pull()
    while outstanding:
        sub.ack(outstanding.pop(0))
        pull()
    assert received == published


# ---------------------------------------------------------------------------- redelivery


@both_versions
def test_unacknowledged_qos1_redelivered_with_dup_then_queue(version: ProtocolVersion) -> None:
    hub = InMemoryHub(max_inflight=2)
    sub = session_client(hub, "sub", version)
    sub.subscribe("t", qos=1)
    pub = hub.connect("pub", version)
    for i in range(4):
        pub.publish("t", b"%d" % i, 1)
    before = sub.publishes()
    assert [p.payload for p in before] == [b"0", b"1"]
    sub.ack(before[0])
    sub.expect_publish("t", b"2")
    sub.drop()
    again = resume(hub, "sub", version)
    after = again.publishes()
    # [MQTT-4.4.0-1]: resent with the original identifiers, in order, DUP set; then the queue.
    assert [(p.payload, p.dup) for p in after] == [(b"1", True), (b"2", True)]
    assert after[0].packet_id == before[1].packet_id
    again.ack(after[0])
    last = again.expect_publish("t", b"3")
    assert not last.dup


@both_versions
def test_qos2_redelivery_resends_publish_or_pubrel(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    sub = session_client(hub, "sub", version)
    sub.subscribe("t", qos=2)
    pub = hub.connect("pub", version)
    pub.publish_qos2("t", b"released")
    pub.publish_qos2("t", b"unreceived")
    first, second = sub.publishes()
    assert first.packet_id is not None and second.packet_id is not None
    sub.send(PubRec(packet_id=first.packet_id))
    assert sub.expect(PubRel).packet_id == first.packet_id
    sub.drop()
    again = resume(hub, "sub", version)
    # [MQTT-4.4.0-1]: PUBREL for the released one, the PUBLISH (DUP) for the other, in order.
    rel = again.expect(PubRel)
    assert rel.packet_id == first.packet_id
    dup = again.expect_publish("t", b"unreceived", qos=2)
    assert dup.dup and dup.packet_id == second.packet_id
    again.send(PubComp(packet_id=first.packet_id))
    again.ack(dup)
    again.assert_nothing_pending()


def drain(client: TestClient) -> list[Publish]:
    """Receive and acknowledge until nothing more comes."""
    got: list[Publish] = []
    while batch := client.publishes():
        got += batch
        for p in batch:
            client.ack(p)
    return got


@pytest.mark.parametrize("qos", [1, 2])
def test_redelivery_respects_the_new_receive_maximum(qos: int) -> None:
    hub = InMemoryHub()
    sub = session_client(hub, "sub", V5, receive_maximum=5)
    sub.subscribe("t", qos=qos)
    pub = hub.connect("pub", V5)
    for i in range(5):
        if qos == 1:
            pub.publish("t", b"%d" % i, 1)
        else:
            pub.publish_qos2("t", b"%d" % i)
    assert len(sub.publishes()) == 5
    sub.drop()
    again = resume(hub, "sub", V5, receive_maximum=2)
    assert [p.payload for p in again.publishes()] == [b"0", b"1"]  # [MQTT-3.3.4-9]


@pytest.mark.parametrize("qos", [1, 2])
def test_redelivery_beyond_receive_maximum_keeps_packet_ids(qos: int) -> None:
    hub = InMemoryHub()
    sub = session_client(hub, "sub", V5, receive_maximum=5)
    sub.subscribe("t", qos=qos)
    pub = hub.connect("pub", V5)
    for i in range(5):
        if qos == 1:
            pub.publish("t", b"%d" % i, 1)
        else:
            pub.publish_qos2("t", b"%d" % i)
    first = {p.payload: p.packet_id for p in sub.publishes()}
    sub.drop()
    again = resume(hub, "sub", V5, receive_maximum=2)
    resent = drain(again)
    assert [p.payload for p in resent] == [b"0", b"1", b"2", b"3", b"4"]
    assert all(p.dup for p in resent)
    assert {p.payload: p.packet_id for p in resent} == first  # [MQTT-4.4.0-1]


@both_versions
def test_acks_from_a_stale_connection_do_not_count(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    sub = session_client(hub, "sub", version)
    sub.subscribe("t", qos=1)
    hub.connect("pub", version).publish("t", b"x", 1)
    got = sub.expect_publish("t", b"x")
    again = resume(hub, "sub", version)  # takes over
    sub.expect_closed(ReasonCode.SESSION_TAKEN_OVER)
    redelivered = again.expect_publish("t", b"x")
    assert redelivered.dup and redelivered.packet_id == got.packet_id
    assert sub.lost


# ---------------------------------------------------------------------------- queue bounds


@both_versions
def test_offline_queue_bounded_by_message_count(version: ProtocolVersion) -> None:
    hub = InMemoryHub(max_queued_messages=3)
    sub = session_client(hub, "sub", version)
    sub.subscribe("t", qos=1)
    sub.drop()
    pub = hub.connect("pub", version)
    for i in range(5):
        ack = pub.publish("t", b"%d" % i, 1)
        assert isinstance(ack, PubAck) and ack.reason_code == 0
    assert hub.stats.dropped_queue_full == 2
    again = resume(hub, "sub", version)
    assert [p.payload for p in again.publishes()] == [b"0", b"1", b"2"]


def test_offline_queue_bounded_by_bytes() -> None:
    hub = InMemoryHub(max_queued_bytes=25)
    sub = session_client(hub, "sub", V5)
    sub.subscribe("t", qos=1)
    sub.drop()
    pub = hub.connect("pub", V5)
    for payload in (b"a" * 10, b"b" * 10, b"c" * 10, b"d"):  # 11 bytes each with the topic
        pub.publish("t", payload, 1)
    assert hub.stats.dropped_queue_full == 1
    again = resume(hub, "sub", V5)
    assert [p.payload for p in again.publishes()] == [b"a" * 10, b"b" * 10, b"d"]


def test_online_queue_behind_a_full_window_is_bounded() -> None:
    hub = InMemoryHub(max_inflight=1, max_queued_messages=2)
    sub = hub.connect("sub", V5)
    sub.subscribe("t", qos=1)
    pub = hub.connect("pub", V5)
    for i in range(5):
        pub.publish("t", b"%d" % i, 1)
    assert hub.stats.dropped_queue_full == 2
    got: list[bytes] = []
    while batch := sub.publishes():
        got += [p.payload for p in batch]
        for p in batch:
            sub.ack(p)
    assert got == [b"0", b"1", b"2"]


def test_queue_overflow_logged_once_per_episode(caplog: pytest.LogCaptureFixture) -> None:
    hub = InMemoryHub(max_inflight=1, max_queued_messages=4)
    sub = hub.connect("sub", V5)
    sub.subscribe("t", qos=1)
    pub = hub.connect("pub", V5)
    with caplog.at_level(logging.WARNING, logger="thinghub.broker"):
        for i in range(8):  # 1 in flight, 4 queued, 3 dropped
            pub.publish("t", b"%d" % i, 1)
        assert len(caplog.records) == 1
        while batch := sub.publishes():  # drain: the episode ends
            for p in batch:
                sub.ack(p)
        for i in range(8):
            pub.publish("t", b"%d" % i, 1)
    assert hub.stats.dropped_queue_full == 6
    assert len(caplog.records) == 2


@both_versions
def test_qos0_not_queued_for_offline_session(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    sub = session_client(hub, "sub", version)
    sub.subscribe("t", qos=1)
    sub.drop()
    hub.connect("pub", version).publish("t", b"x", 0)
    assert hub.stats.dropped_offline_qos0 == 1
    resume(hub, "sub", version).assert_nothing_pending()


@both_versions
def test_slow_consumer_drops_qos0(version: ProtocolVersion) -> None:
    hub = InMemoryHub(max_write_buffer=1000)
    slow = hub.connect("slow", version)
    slow.subscribe("t", qos=1)
    fast = hub.connect("fast", version)
    fast.subscribe("t", qos=1)
    slow.link.backlog = 1001
    pub = hub.connect("pub", version)
    pub.publish("t", b"q0", 0)
    pub.publish("t", b"q1", 1)
    assert hub.stats.dropped_slow_consumer == 1
    fast.expect_publish("t", b"q0")
    fast.expect_publish("t", b"q1")
    slow.expect_publish("t", b"q1")  # QoS 1 is bounded by the window and the queue instead
    slow.assert_nothing_pending()
    slow.link.backlog = 1000
    pub.publish("t", b"again", 0)
    slow.expect_publish("t", b"again")


# ---------------------------------------------------------------------------- message expiry


def test_queued_message_expires() -> None:
    hub = InMemoryHub()
    sub = session_client(hub, "sub", V5)
    sub.subscribe("t", qos=1)
    sub.drop()
    pub = hub.connect("pub", V5)
    pub.publish("t", b"short", 1, properties=Properties(message_expiry_interval=10))
    pub.publish("t", b"long", 1, properties=Properties(message_expiry_interval=60))
    hub.advance(10)
    again = resume(hub, "sub", V5)
    got = again.expect_publish("t", b"long")  # [MQTT-3.3.2-5]
    assert got.properties.message_expiry_interval == 50  # [MQTT-3.3.2-6]
    again.assert_nothing_pending()
    assert hub.stats.dropped_expired == 1


def test_expiry_sent_unchanged_on_immediate_delivery() -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", V5)
    sub.subscribe("t", qos=1)
    hub.connect("pub", V5).publish("t", b"x", 0, properties=Properties(message_expiry_interval=60))
    assert sub.expect_publish("t", b"x").properties.message_expiry_interval == 60


def test_v3_subscriber_gets_no_expiry_property_but_expiry_applies() -> None:
    hub = InMemoryHub()
    sub = session_client(hub, "sub", V311)
    sub.subscribe("t", qos=1)
    sub.drop()
    pub = hub.connect("pub", V5)
    pub.publish("t", b"gone", 1, properties=Properties(message_expiry_interval=5))
    pub.publish("t", b"kept", 1, properties=Properties(message_expiry_interval=500))
    hub.advance(6)
    again = resume(hub, "sub", V311)
    again.expect_publish("t", b"kept")
    again.assert_nothing_pending()


def test_message_expires_while_queued_behind_the_window() -> None:
    hub = InMemoryHub(max_inflight=1)
    sub = hub.connect("sub", V5)
    sub.subscribe("t", qos=1)
    pub = hub.connect("pub", V5)
    pub.publish("t", b"first", 1)
    pub.publish("t", b"brief", 1, properties=Properties(message_expiry_interval=5))
    pub.publish("t", b"last", 1)
    first = sub.expect_publish("t", b"first")
    hub.advance(5)
    sub.ack(first)
    sub.expect_publish("t", b"last")
    assert hub.stats.dropped_expired == 1


def test_expired_inflight_message_is_not_redelivered() -> None:
    hub = InMemoryHub()
    sub = session_client(hub, "sub", V5)
    sub.subscribe("t", qos=1)
    pub = hub.connect("pub", V5)
    pub.publish("t", b"brief", 1, properties=Properties(message_expiry_interval=5))
    pub.publish("t", b"kept", 1)
    assert len(sub.publishes()) == 2
    sub.drop()
    hub.advance(5)
    again = resume(hub, "sub", V5)
    got = again.expect_publish("t", b"kept")
    assert got.dup
    again.assert_nothing_pending()


# ---------------------------------------------------------------------------- packet size


def test_client_maximum_packet_size_drops_for_that_client_only() -> None:
    hub = InMemoryHub()
    small = hub.connect("small", V5, maximum_packet_size=64)
    small.subscribe("t", qos=1)
    big = hub.connect("big", V5)
    big.subscribe("t", qos=1)
    pub = hub.connect("pub", V5)
    pub.publish("t", b"x" * 100, 1)
    pub.publish("t", b"fits", 1)
    big.expect_publish("t", b"x" * 100)
    big.expect_publish("t", b"fits")
    small.expect_publish("t", b"fits")  # [MQTT-3.1.2-25]: discarded as if delivered
    small.assert_nothing_pending()
    assert hub.stats.dropped_too_large == 1


def test_oversized_messages_do_not_block_the_window() -> None:
    hub = InMemoryHub(max_inflight=1)
    small = session_client(hub, "small", V5, maximum_packet_size=64)
    small.subscribe("t", qos=1)
    small.drop()
    pub = hub.connect("pub", V5)
    pub.publish("t", b"x" * 100, 1)
    pub.publish("t", b"y" * 100, 1)
    pub.publish("t", b"fits", 1)
    again = resume(hub, "small", V5, maximum_packet_size=64)
    again.expect_publish("t", b"fits")
    assert hub.stats.dropped_too_large == 2


@both_versions
def test_inbound_packet_too_large(version: ProtocolVersion) -> None:
    hub = InMemoryHub(max_packet_size=128)
    pub = hub.connect("pub", version)
    pub.publish("t", b"x" * 200, 0)
    pub.expect_closed(ReasonCode.PACKET_TOO_LARGE)


# ---------------------------------------------------------------------------- topic aliases


def test_outbound_topic_aliases() -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", V5, topic_alias_maximum=2)
    sub.subscribe("#", qos=0)
    pub = hub.connect("pub", V5)
    for topic in ("a/long/topic", "a/long/topic", "b", "c", "b", "c"):
        pub.publish(topic, b"x", 0)
    got = sub.publishes()
    wire = [(p.topic, p.properties.topic_alias) for p in got]
    assert wire == [
        ("a/long/topic", 1),
        ("", 1),  # §3.3.2.3.4: the alias replaces the topic
        ("b", 2),
        ("c", None),  # no alias left
        ("", 2),
        ("c", None),
    ]
    assert [sub.topic_of(p) for p in got] == ["a/long/topic", "a/long/topic", "b", "c", "b", "c"]


@both_versions
def test_no_outbound_aliases_unless_the_client_allows_them(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", version)
    sub.subscribe("t")
    pub = hub.connect("pub", version)
    pub.publish("t", b"1")
    pub.publish("t", b"2")
    assert [(p.topic, p.properties.topic_alias) for p in sub.publishes()] == [
        ("t", None),
        ("t", None),
    ]


def test_aliases_are_per_connection() -> None:
    hub = InMemoryHub()
    sub = session_client(hub, "sub", V5, topic_alias_maximum=5)
    sub.subscribe("t", qos=1)
    pub = hub.connect("pub", V5)
    pub.publish("t", b"1")
    sub.drop()
    pub.publish("t", b"2", 1)
    again = resume(hub, "sub", V5, topic_alias_maximum=5)
    got = again.expect_publish()
    assert got.topic == "t" and got.properties.topic_alias == 1  # [MQTT-3.3.2-7]


def test_alias_not_assigned_by_a_dropped_packet() -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", V5, topic_alias_maximum=5, maximum_packet_size=64)
    sub.subscribe("t")
    pub = hub.connect("pub", V5)
    pub.publish("t", b"x" * 100)
    pub.publish("t", b"small")
    got = sub.expect_publish()
    assert sub.topic_of(got) == "t"


def test_inbound_topic_alias_resolved_for_subscribers() -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", V311)
    sub.subscribe("sensors/1")
    pub = hub.connect("pub", V5)
    pub.publish("sensors/1", b"a", properties=Properties(topic_alias=3))
    pub.publish("", b"b", properties=Properties(topic_alias=3))
    assert [(p.topic, p.payload) for p in sub.publishes()] == [
        ("sensors/1", b"a"),
        ("sensors/1", b"b"),
    ]


# ---------------------------------------------------------------------------- properties, checks


def test_publish_properties_pass_through() -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", V5)
    sub.subscribe("req", qos=1)
    props = Properties(
        payload_format_indicator=1,
        content_type="application/json",
        response_topic="resp/1",
        correlation_data=b"\x00\x01",
        user_properties=(("a", "1"), ("a", "2"), ("b", "3")),
    )
    hub.connect("pub", V5).publish("req", b"{}", 1, properties=props)
    assert sub.expect_publish("req", b"{}").properties == props


def test_v5_properties_not_sent_to_v3_subscriber() -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", V311)
    sub.subscribe("t")
    props = Properties(content_type="text/plain", user_properties=(("k", "v"),))
    hub.connect("pub", V5).publish("t", b"x", properties=props)
    assert sub.expect_publish("t", b"x").properties == Properties()


def test_invalid_utf8_payload_with_format_indicator() -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", V5)
    sub.subscribe("t")
    pub = hub.connect("pub", V5)
    ack = pub.publish("t", b"\xff\xfe", 1, properties=Properties(payload_format_indicator=1))
    assert isinstance(ack, PubAck) and ack.reason_code == ReasonCode.PAYLOAD_FORMAT_INVALID
    sub.assert_nothing_pending()
    ack = pub.publish("t", "ü".encode(), 1, properties=Properties(payload_format_indicator=1))
    assert isinstance(ack, PubAck) and ack.reason_code == 0
    sub.expect_publish("t", "ü".encode())


@both_versions
def test_publish_topic_beyond_limits_is_refused(version: ProtocolVersion) -> None:
    hub = InMemoryHub(max_topic_levels=3)
    pub = hub.connect("pub", version)
    pub.publish("a/b/c", b"ok")
    assert not pub.closed
    pub.publish("a/b/c/d", b"too deep")
    pub.expect_closed(ReasonCode.TOPIC_NAME_INVALID)


def test_publish_topic_too_long_is_refused() -> None:
    hub = InMemoryHub(max_topic_length=10)
    pub = hub.connect("pub", V5)
    pub.publish("x" * 11, b"x")
    pub.expect_closed(ReasonCode.TOPIC_NAME_INVALID)


def test_long_topic_within_limits_is_accepted() -> None:
    hub = InMemoryHub(max_topic_length=10, max_topic_levels=2)
    sub = hub.connect("sub", V5)
    sub.subscribe("#")
    pub = hub.connect("pub", V5)
    pub.publish("a/b", b"x")  # the fast path: no validation needed
    sub.expect_publish("a/b")
    assert not pub.closed


def test_publish_retain_when_not_available() -> None:
    hub = InMemoryHub(retain_available=False)
    pub = hub.connect("pub", V5)
    pub.publish("t", b"x", retain=True)
    pub.expect_closed(ReasonCode.RETAIN_NOT_SUPPORTED)  # [MQTT-3.3.1-?], §3.2.2.3.5


@pytest.mark.parametrize("qos", [0, 1])
def test_publish_to_dollar_topics_is_routed_only_to_explicit_filters(qos: int) -> None:
    hub = InMemoryHub()
    wild = hub.connect("wild", V5)
    wild.subscribe("#", "+/x", qos=1)
    explicit = hub.connect("explicit", V5)
    explicit.subscribe("$SYS/#", qos=1)
    hub.connect("pub", V5).publish("$SYS/x", b"1", qos)
    explicit.expect_publish("$SYS/x", b"1")
    wild.assert_nothing_pending()  # [MQTT-4.7.2-1]


# ---------------------------------------------------------------------------- encoding, ids


@both_versions
@pytest.mark.parametrize("size", [0, 100, 200, 20_000, 2_100_000])
def test_shared_encoding_gets_each_subscribers_packet_id(
    version: ProtocolVersion, size: int
) -> None:
    # The PUBLISH bytes are built once per message and the packet identifier patched in per
    # subscriber: it must land in the right place whatever the length of the length field.
    hub = InMemoryHub(max_packet_size=4_000_000, max_queued_bytes=64 * 1024 * 1024)
    a = hub.connect("a", version)
    a.subscribe("t", qos=2)
    b = hub.connect("b", version)
    b.subscribe("t", qos=2)
    pub = hub.connect("pub", version)
    pub.publish("t", b"warm-up", 1)  # a's next id differs from b's once b has acked
    b.ack(b.expect_publish("t", b"warm-up"))
    b.publish("other", b"", 0)
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    pub.publish("t", payload, 1)
    pub.publish_qos2("t", payload)
    got_a = a.publishes()
    got_b = b.publishes()
    assert [p.payload for p in got_a] == [b"warm-up", payload, payload]
    assert [p.payload for p in got_b] == [payload, payload]
    ids_a = [p.packet_id for p in got_a]
    ids_b = [p.packet_id for p in got_b]
    assert len(set(ids_a)) == 3 and len(set(ids_b)) == 2
    for client, got in ((a, got_a), (b, got_b)):
        for p in got:
            client.ack(p)
        client.assert_nothing_pending()


def test_packet_ids_wrap_and_skip_those_in_flight() -> None:
    hub = InMemoryHub()
    hub.connect("c")
    session = hub.broker.session_of("", "c")
    assert session is not None
    out = Outgoing(Message(topic="t", payload=b""), 1, False)
    queue = session.delivery
    queue.inflight[1] = queue.inflight[65535] = out
    queue.next_packet_id = 65534
    assert [queue.allocate_packet_id() for _ in range(3)] == [65534, 2, 3]  # §2.2.1


def test_stats_report_every_counter() -> None:
    hub = InMemoryHub()
    hub.connect("c", V5)
    stats = hub.stats.as_dict()
    assert stats["connections_total"] == 1
    assert {k for k in stats if k.startswith("dropped_")} >= {
        "dropped_queue_full",
        "dropped_slow_consumer",
        "dropped_expired",
        "dropped_too_large",
        "dropped_offline_qos0",
    }
