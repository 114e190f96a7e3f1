"""Subscriptions and routing (MQTT 5.0 §3.8-3.11, §4.7, §4.8; 3.1.1 §3.8-3.11): retained
messages, retain handling and retain-as-published, overlapping subscriptions, subscription
identifiers, no local, shared subscriptions, maximum QoS, per-client limits and deny lists."""

from __future__ import annotations

import logging

import pytest
from harness import V5, V311, InMemoryHub, TestClient, both_versions

from thinghub.mqtt.packets import PubAck, Publish, PubRec, Subscribe, Subscription
from thinghub.mqtt.properties import Properties
from thinghub.mqtt.types import ProtocolVersion, ReasonCode

FAILURE_V3 = 0x80


def refused(version: ProtocolVersion, reason: ReasonCode) -> int:
    """The SUBACK code for a refused subscription: the v5 reason, or 0x80 on 3.1.1."""
    return int(reason) if version == V5 else FAILURE_V3


# ---------------------------------------------------------------------------- retained


@both_versions
def test_retained_sent_on_subscribe_with_retain_flag(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    pub = hub.connect("pub", version)
    pub.publish("r/a", b"A", 1, retain=True)
    pub.publish("r/b", b"B", 0, retain=True)
    sub = hub.connect("sub", version)
    sub.subscribe("r/+", qos=1)
    got = sorted(sub.publishes(), key=lambda p: p.topic)
    assert [(p.topic, p.payload, p.qos, p.retain) for p in got] == [
        ("r/a", b"A", 1, True),  # [MQTT-3.3.1-9]
        ("r/b", b"B", 0, True),
    ]


@both_versions
def test_retained_replaced_and_deleted(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    pub = hub.connect("pub", version)
    pub.publish("r", b"old", retain=True)
    pub.publish("r", b"new", retain=True)  # [MQTT-3.3.1-5]: replaces
    first = hub.connect("first", version)
    first.subscribe("r")
    first.expect_publish("r", b"new")
    first.assert_nothing_pending()
    pub.publish("r", b"", retain=True)  # [MQTT-3.3.1-6]: deletes (and is forwarded)
    first.expect_publish("r", b"")
    second = hub.connect("second", version)
    second.subscribe("r")
    second.assert_nothing_pending()  # [MQTT-3.3.1-7]: and is not stored


@both_versions
def test_forwarded_message_has_retain_cleared(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", version)
    sub.subscribe("r")
    hub.connect("pub", version).publish("r", b"x", retain=True)
    assert sub.expect_publish("r", b"x").retain is False  # [MQTT-3.3.1-12] / 3.1.1 -9


def test_retain_as_published() -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", V5)
    sub.subscribe(Subscription(topic_filter="r", retain_as_published=True))
    pub = hub.connect("pub", V5)
    pub.publish("r", b"kept", retain=True)
    pub.publish("r", b"plain", retain=False)
    assert [(p.payload, p.retain) for p in sub.publishes()] == [
        (b"kept", True),  # [MQTT-3.3.1-13]
        (b"plain", False),
    ]


@pytest.mark.parametrize(
    ("handling", "first", "again"), [(0, True, True), (1, True, False), (2, False, False)]
)
def test_retain_handling(handling: int, first: bool, again: bool) -> None:
    hub = InMemoryHub()
    hub.connect("pub", V5).publish("r", b"x", retain=True)
    sub = hub.connect("sub", V5)
    option = Subscription(topic_filter="r", retain_handling=handling)
    sub.subscribe(option)
    assert bool(sub.publishes()) is first  # §3.8.3.1 Retain Handling
    sub.subscribe(option)  # the subscription exists now
    assert bool(sub.publishes()) is again


def test_retained_delivered_at_lower_qos_and_with_subscription_id() -> None:
    hub = InMemoryHub()
    hub.connect("pub", V5).publish("r", b"x", 1, retain=True)
    sub = hub.connect("sub", V5)
    sub.subscribe("r", qos=0, subscription_id=77)
    got = sub.expect_publish("r", b"x", qos=0)
    assert got.properties.subscription_identifiers == (77,)


def test_expired_retained_message_not_sent() -> None:
    hub = InMemoryHub()
    pub = hub.connect("pub", V5)
    pub.publish("r/short", b"s", retain=True, properties=Properties(message_expiry_interval=10))
    pub.publish("r/long", b"l", retain=True, properties=Properties(message_expiry_interval=100))
    hub.advance(10)
    sub = hub.connect("sub", V5)
    sub.subscribe("r/#")
    got = sub.expect_publish("r/long", b"l")
    assert got.properties.message_expiry_interval == 90  # [MQTT-3.3.2-6]
    sub.assert_nothing_pending()
    late = hub.connect("late", V5)
    late.subscribe("r/short")
    late.assert_nothing_pending()  # and it stays gone


def test_max_retained_messages(caplog: pytest.LogCaptureFixture) -> None:
    hub = InMemoryHub(max_retained_messages=2)
    pub = hub.connect("pub", V5)
    with caplog.at_level(logging.WARNING, logger="thinghub.broker"):
        pub.publish("r/1", b"1", retain=True)
        pub.publish("r/2", b"2", retain=True)
        # The store is full: refused (and not delivered either) with Quota exceeded.
        assert pub.publish("r/3", b"3", 1, retain=True).reason_code == 0x97
        pub.publish("r/4", b"4", retain=True)
        pub.publish("r/1", b"1b", retain=True)  # replacing one is fine
    assert hub.stats.dropped_retained_full == 2
    assert len(caplog.records) == 1  # logged once
    sub = hub.connect("sub", V5)
    sub.subscribe("r/#")
    assert sorted(p.payload for p in sub.publishes()) == [b"1b", b"2"]
    pub.publish("r/2", b"", retain=True)  # deleting one makes room
    pub.publish("r/3", b"3", retain=True)
    late = hub.connect("late", V5)
    late.subscribe("r/#")
    assert sorted(p.payload for p in late.publishes()) == [b"1b", b"3"]


def test_no_retained_messages_for_shared_subscriptions() -> None:
    hub = InMemoryHub()
    hub.connect("pub", V5).publish("r", b"x", retain=True)
    sub = hub.connect("sub", V5)
    sub.subscribe("$share/g/r")
    sub.assert_nothing_pending()  # §4.8.2


# ---------------------------------------------------------------------------- overlapping


@both_versions
def test_overlapping_subscriptions_one_copy_at_highest_qos(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", version)
    sub.subscribe("a/+", qos=0)
    sub.subscribe("a/#", qos=2)
    sub.subscribe("a/b", qos=1)
    hub.connect("pub", version).publish_qos2("a/b", b"x")
    got = sub.expect_publish("a/b", b"x", qos=2)  # [MQTT-3.3.4-2]
    sub.ack(got)
    sub.assert_nothing_pending()


def test_overlapping_subscriptions_carry_every_subscription_id() -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", V5)
    sub.subscribe("a/+", subscription_id=1)
    sub.subscribe("a/#", subscription_id=2)
    sub.subscribe("#")  # no identifier
    hub.connect("pub", V5).publish("a/b", b"x")
    got = sub.expect_publish("a/b", b"x")
    assert sorted(got.properties.subscription_identifiers) == [1, 2]  # [MQTT-3.3.4-3]
    sub.assert_nothing_pending()


def test_overlapping_retain_as_published_from_any() -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", V5)
    sub.subscribe(Subscription(topic_filter="a/#", retain_as_published=True))
    sub.subscribe("a/b")
    hub.connect("pub", V5).publish("a/b", b"x", retain=True)
    assert sub.expect_publish("a/b").retain is True


def test_subscription_id_replaced_with_subscription() -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", V5)
    sub.subscribe("t", subscription_id=5)
    sub.subscribe("t")  # replaces it, without an identifier
    pub = hub.connect("pub", V5)
    pub.publish("t", b"x")
    assert sub.expect_publish("t").properties.subscription_identifiers == ()


def test_resubscribe_replaces_qos() -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", V5)
    sub.subscribe("t", qos=2)
    sub.subscribe("t", qos=0)  # [MQTT-3.8.4-3]
    hub.connect("pub", V5).publish("t", b"x", 1)
    sub.expect_publish("t", b"x", qos=0)
    sub.assert_nothing_pending()


# ---------------------------------------------------------------------------- no local


def test_no_local() -> None:
    hub = InMemoryHub()
    me = hub.connect("me", V5)
    me.subscribe(Subscription(topic_filter="chat", no_local=True))
    other = hub.connect("other", V5)
    other.subscribe("chat")
    ack = me.publish("chat", b"mine", 1)
    assert isinstance(ack, PubAck) and ack.reason_code == 0
    other.expect_publish("chat", b"mine")
    me.assert_nothing_pending()  # [MQTT-3.8.3-3]
    other.publish("chat", b"theirs")
    me.expect_publish("chat", b"theirs")


def test_no_local_single_subscriber_is_no_match() -> None:
    hub = InMemoryHub()
    me = hub.connect("me", V5)
    me.subscribe(Subscription(topic_filter="chat", no_local=True))
    ack = me.publish("chat", b"mine", 1)
    assert isinstance(ack, PubAck) and ack.reason_code == ReasonCode.NO_MATCHING_SUBSCRIBERS
    me.assert_nothing_pending()


def test_no_local_with_overlapping_local_subscription() -> None:
    hub = InMemoryHub()
    me = hub.connect("me", V5)
    me.subscribe(Subscription(topic_filter="chat/#", no_local=True))
    me.subscribe("chat/+")
    me.publish("chat/x", b"x")
    me.expect_publish("chat/x", b"x")  # the other subscription still matches


def test_no_local_on_shared_subscription_is_protocol_error() -> None:
    hub = InMemoryHub()
    me = hub.connect("me", V5)
    me.send(
        Subscribe(
            packet_id=1, subscriptions=(Subscription(topic_filter="$share/g/t", no_local=True),)
        )
    )
    me.expect_closed(ReasonCode.PROTOCOL_ERROR)  # [MQTT-3.8.3-4]


# ---------------------------------------------------------------------------- shared


def shared_group(hub: InMemoryHub, version: ProtocolVersion, n: int) -> list[TestClient]:
    members = []
    for i in range(n):
        member = hub.connect(f"m{i}", version, clean_start=False, session_expiry=100)
        assert member.subscribe("$share/g/jobs/+", qos=1).reason_codes == (1,)
        members.append(member)
    return members


@both_versions
def test_shared_round_robin(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    members = shared_group(hub, version, 3)
    pub = hub.connect("pub", version)
    for i in range(6):
        pub.publish(f"jobs/{i}", b"%d" % i, 1)
    got = [[p.payload for p in m.publishes()] for m in members]
    assert sorted(x for g in got for x in g) == [b"%d" % i for i in range(6)]  # each to exactly one
    assert [len(g) for g in got] == [2, 2, 2]


@both_versions
def test_shared_prefers_connected_members(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    a, b = shared_group(hub, version, 2)
    b.drop()
    pub = hub.connect("pub", version)
    for i in range(4):
        pub.publish("jobs/x", b"%d" % i, 1)
    assert [p.payload for p in a.publishes()] == [b"0", b"1", b"2", b"3"]
    again = hub.client(version)
    again.connect("m1", clean_start=False, session_expiry=100)
    again.assert_nothing_pending()


def test_shared_all_offline_queues_for_one_member() -> None:
    hub = InMemoryHub()
    a, b = shared_group(hub, V5, 2)
    a.drop()
    b.drop()
    pub = hub.connect("pub", V5)
    pub.publish("jobs/x", b"1", 1)
    pub.publish("jobs/x", b"2", 1)
    ra = hub.client(V5)
    ra.connect("m0", clean_start=False, session_expiry=100)
    rb = hub.client(V5)
    rb.connect("m1", clean_start=False, session_expiry=100)
    got = sorted(p.payload for p in ra.publishes() + rb.publishes())
    assert got == [b"1", b"2"]


def test_shared_and_plain_subscription_of_one_session_both_deliver() -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", V5)
    sub.subscribe("$share/g/t", "t", subscription_id=3)
    hub.connect("pub", V5).publish("t", b"x")
    got = sub.publishes()
    assert len(got) == 2  # §4.8.2: a shared subscription is a separate subscription
    assert all(p.properties.subscription_identifiers == (3,) for p in got)


def test_two_groups_each_get_a_copy() -> None:
    hub = InMemoryHub()
    a = hub.connect("a", V5)
    a.subscribe("$share/one/t")
    b = hub.connect("b", V5)
    b.subscribe("$share/two/t")
    hub.connect("pub", V5).publish("t", b"x")
    a.expect_publish("t", b"x")
    b.expect_publish("t", b"x")


@both_versions
def test_unsubscribe_last_member_removes_group(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    a, b = shared_group(hub, version, 2)
    a.unsubscribe("$share/g/jobs/+")
    pub = hub.connect("pub", V5)
    pub.publish("jobs/1", b"1", 1)
    pub.publish("jobs/2", b"2", 1)
    assert [p.payload for p in b.publishes()] == [b"1", b"2"]
    a.assert_nothing_pending()
    b.unsubscribe("$share/g/jobs/+")
    ack = pub.publish("jobs/3", b"3", 1)
    assert isinstance(ack, PubAck) and ack.reason_code == ReasonCode.NO_MATCHING_SUBSCRIBERS
    a.subscribe("$share/g/jobs/+", qos=1)  # a new group starts from scratch
    pub.publish("jobs/4", b"4", 1)
    a.expect_publish("jobs/4", b"4")
    b.assert_nothing_pending()


def test_session_end_leaves_the_group() -> None:
    hub = InMemoryHub()
    a = hub.connect("a", V5)
    a.subscribe("$share/g/t", qos=1)
    b = hub.connect("b", V5)
    b.subscribe("$share/g/t", qos=1)
    a.disconnect()  # session expiry 0: the subscription goes with it
    pub = hub.connect("pub", V5)
    for i in range(3):
        pub.publish("t", b"%d" % i, 1)
    assert len(b.publishes()) == 3


def test_resubscribe_to_shared_keeps_one_membership() -> None:
    hub = InMemoryHub()
    a = hub.connect("a", V5)
    a.subscribe("$share/g/t", qos=0)
    a.subscribe("$share/g/t", qos=1)
    b = hub.connect("b", V5)
    b.subscribe("$share/g/t", qos=1)
    pub = hub.connect("pub", V5)
    for i in range(4):
        pub.publish("t", b"%d" % i, 1)
    assert len(a.publishes()) == 2
    assert len(b.publishes()) == 2


# ---------------------------------------------------------------------------- unsubscribe


@both_versions
def test_unsubscribe(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    sub = hub.connect("sub", version)
    sub.subscribe("a", "b")
    ack = sub.unsubscribe("a", "never")
    if version == V5:
        assert ack.reason_codes == (0, ReasonCode.NO_SUBSCRIPTION_EXISTED)
    else:
        assert ack.reason_codes == ()  # 3.1.1 UNSUBACK has no payload
    pub = hub.connect("pub", version)
    pub.publish("a", b"1")
    pub.publish("b", b"2")
    assert [p.topic for p in sub.publishes()] == ["b"]


# ---------------------------------------------------------------------------- maximum QoS


@both_versions
def test_max_qos_1_downgrades_granted_qos(version: ProtocolVersion) -> None:
    hub = InMemoryHub(max_qos=1)
    sub = hub.connect("sub", version)
    assert sub.subscribe("t", qos=2).reason_codes == (1,)
    pub = hub.connect("pub", version)
    pub.publish("t", b"x", 1)
    sub.expect_publish("t", b"x", qos=1)


def test_max_qos_1_in_v5_connack() -> None:
    ack = InMemoryHub(max_qos=1).client(V5).connect("c")
    assert ack.properties.maximum_qos == 1  # §3.2.2.3.4


@both_versions
def test_qos2_publish_above_max_qos(version: ProtocolVersion) -> None:
    hub = InMemoryHub(max_qos=1)
    sub = hub.connect("sub", version)
    sub.subscribe("t", qos=1)
    pub = hub.connect("pub", version)
    pub.send(Publish(topic="t", payload=b"x", qos=2, packet_id=1))
    pub.expect_closed(ReasonCode.QOS_NOT_SUPPORTED)  # [MQTT-3.2.2-11], §4.13
    sub.assert_nothing_pending()


# ---------------------------------------------------------------------------- limits, filters


@both_versions
def test_max_subscriptions_per_client(version: ProtocolVersion) -> None:
    hub = InMemoryHub(max_subscriptions_per_client=2)
    sub = hub.connect("sub", version)
    ack = sub.subscribe("a", "b", "c")
    assert ack.reason_codes == (0, 0, refused(version, ReasonCode.QUOTA_EXCEEDED))
    assert sub.subscribe("a", qos=1).reason_codes == (1,)  # replacing is not a new one
    sub.unsubscribe("a")
    assert sub.subscribe("c").reason_codes == (0,)


@both_versions
def test_invalid_filter_refused(version: ProtocolVersion) -> None:
    hub = InMemoryHub(max_topic_levels=3)
    sub = hub.connect("sub", version)
    ack = sub.subscribe("a/#/b", "ok/+", "a/b/c/d")
    bad = refused(version, ReasonCode.TOPIC_FILTER_INVALID)
    assert ack.reason_codes == (bad, 0, bad)
    assert not sub.closed


# ---------------------------------------------------------------------------- deny lists


@both_versions
def test_deny_publish(version: ProtocolVersion) -> None:
    hub = InMemoryHub(deny_publish=("secret/#",))
    sub = hub.connect("sub", version)
    sub.subscribe("#", qos=2)
    pub = hub.connect("pub", version)
    ack = pub.publish("secret/x", b"x", 1)
    expected = ReasonCode.NOT_AUTHORIZED if version == V5 else 0  # 3.1.1: acked and dropped
    assert isinstance(ack, PubAck) and ack.reason_code == expected
    rec = pub.publish("secret/y", b"y", 2)
    assert isinstance(rec, PubRec) and rec.reason_code == expected
    if version == V311:
        assert pub.release(rec.packet_id).reason_code == 0  # the 3.1.1 exchange goes on
    pub.publish("secret/z", b"z", 0)
    pub.publish("public", b"ok", 0)
    sub.expect_publish("public", b"ok")
    sub.assert_nothing_pending()
    assert hub.stats.dropped_not_authorized == 3
    assert not pub.closed


def test_denied_qos2_id_is_not_kept() -> None:
    hub = InMemoryHub(deny_publish=("secret/#",))
    pub = hub.connect("pub", V5)
    rec = pub.publish("secret/y", b"y", 2, packet_id=3)
    assert isinstance(rec, PubRec) and rec.reason_code == ReasonCode.NOT_AUTHORIZED
    # The exchange ended with the error PUBREC (§4.3.3): a PUBREL for it is unknown.
    assert pub.release(3).reason_code == ReasonCode.PACKET_IDENTIFIER_NOT_FOUND


@both_versions
def test_deny_subscribe(version: ProtocolVersion) -> None:
    hub = InMemoryHub(deny_subscribe=("secret/#",))
    sub = hub.connect("sub", version)
    ack = sub.subscribe("secret/x", "secret/+", "public/#")
    no = refused(version, ReasonCode.NOT_AUTHORIZED)
    assert ack.reason_codes == (no, no, 0)
    hub.connect("pub", version).publish("secret/x", b"x")
    sub.assert_nothing_pending()


@both_versions
def test_deny_subscribe_also_hides_its_topics_from_broader_filters(
    version: ProtocolVersion,
) -> None:
    hub = InMemoryHub(deny_subscribe=("secret/#",))
    pub = hub.connect("pub", version)
    pub.publish("secret/kept", b"r", retain=True)
    sub = hub.connect("sub", version)
    assert sub.subscribe("#", "+/kept").reason_codes == (0, 0)  # broader: allowed...
    pub.publish("secret/x", b"hidden")
    pub.publish("public/x", b"shown")
    # ...but neither the retained nor the new message under secret/# reaches it.
    assert [(p.topic, p.payload) for p in sub.publishes()] == [("public/x", b"shown")]
    assert hub.stats.dropped_not_authorized == 1
