"""SUBSCRIBE / UNSUBSCRIBE: wildcards, $-topics, options, identifiers, overlaps."""

from __future__ import annotations

import pytest
import rawmqtt
from pahoclient import unique


def received_topics(sub, sentinel: bytes) -> list[str]:
    return [m.topic for m in sub.until(sentinel)]


def test_single_level_wildcard(client, version):
    base = unique("plus")
    sub = client(version)
    assert sub.subscribe(f"{base}/+/temp", 1) == 1
    pub = client(version)
    for topic in (f"{base}/a/temp", f"{base}/a/b/temp", f"{base}/temp", f"{base}//temp"):
        pub.publish(topic, b"x", 1)
    pub.publish(f"{base}/end/temp", b"end", 1)
    # '+' matches exactly one level, an empty one included (4.7.1.2).
    assert received_topics(sub, b"end") == [f"{base}/a/temp", f"{base}//temp"]


def test_multi_level_wildcard_matches_the_parent_and_all_children(client, version):
    base = unique("hash")
    sub = client(version)
    sub.subscribe(f"{base}/a/#", 1)
    pub = client(version)
    for topic in (f"{base}/a", f"{base}/a/b", f"{base}/a/b/c", f"{base}/ab", f"{base}/b/a"):
        pub.publish(topic, b"x", 1)
    pub.publish(f"{base}/a/end", b"end", 1)
    assert received_topics(sub, b"end") == [f"{base}/a", f"{base}/a/b", f"{base}/a/b/c"]


def test_dollar_topics_are_not_matched_by_leading_wildcards(client, version):
    """4.7.2 / MQTT-4.7.2-1: '#' and '+/...' must not match topics starting with '$'."""
    name = unique("dollar")
    hash_sub = client(version)
    hash_sub.subscribe("#", 0)
    plus_sub = client(version)
    plus_sub.subscribe(f"+/{name}", 0)
    explicit = client(version)
    explicit.subscribe(f"${name}/#", 0)
    pub = client(version)
    pub.publish(f"${name}/{name}", b"dollar", 1)
    pub.publish(f"x/{name}", b"end", 1)
    # The explicit subscriber proves the $-message was accepted and routed.
    assert explicit.expect_message().topic == f"${name}/{name}"
    assert [m.topic for m in plus_sub.until(b"end")] == []
    assert [m.topic for m in hash_sub.until(b"end") if name in m.topic] == []


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_suback_grants_the_requested_qos(client, version, qos):
    assert client(version).subscribe(unique(), qos) == qos


def test_one_subscribe_with_several_filters(raw, version):
    c = raw(version)
    c.connect(unique())
    t = unique()
    assert c.subscribe([(f"{t}/0", 0), (f"{t}/1", 1), (f"{t}/2", 2)]) == [0, 1, 2]


def test_resubscribe_replaces_the_subscription(client, version):
    """MQTT-3.8.4-3: same filter again replaces it; the message is not duplicated."""
    t = unique()
    sub = client(version)
    sub.subscribe(t, 0)
    assert sub.subscribe(t, 2) == 2
    pub = client(version)
    pub.publish(t, b"one", 2)
    # paho hands a QoS 2 message over on PUBREL, so a sentinel behind one travels at QoS 2 too.
    pub.publish(t, b"end", 2)
    first = sub.expect_message()
    assert (first.payload, first.qos) == (b"one", 2)
    assert sub.until(b"end") == []


def test_unsubscribe_stops_delivery(client, version):
    t = unique()
    sub = client(version)
    sub.subscribe(f"{t}/a", 1)
    sub.subscribe(f"{t}/b", 1)
    pub = client(version)
    pub.publish(f"{t}/a", b"before", 1)
    assert sub.expect_message().payload == b"before"
    assert sub.unsubscribe(f"{t}/a") == 0
    pub.publish(f"{t}/a", b"after", 1)
    pub.publish(f"{t}/b", b"end", 1)
    assert sub.until(b"end") == []


def test_v5_unsubscribe_of_an_unknown_filter_reports_no_subscription(client):
    assert client(5).unsubscribe(unique()) == 0x11  # v5 3.11.3: No subscription existed


def test_v311_unsuback_for_an_unknown_filter(raw):
    c = raw(4)
    c.connect(unique())
    c.send(rawmqtt.unsubscribe(7, [unique()], 4))
    unsuback = c.expect(rawmqtt.UNSUBACK)  # MQTT-3.10.4-5: UNSUBACK even if nothing matched
    assert unsuback.mid == 7


def test_overlapping_subscriptions_respect_the_highest_qos(hub, client, version):
    """MQTT-3.3.5-1 (v3) / MQTT-3.3.4-2 (v5): the message is delivered respecting the maximum
    QoS of all matching subscriptions.  One copy or one per subscription are both allowed."""
    t = unique()
    sub = client(version)
    sub.subscribe(f"{t}/+", 0)
    sub.subscribe(f"{t}/#", 2)
    sub.subscribe(f"{t}/x", 1)
    pub = client(version)
    pub.publish(f"{t}/x", b"m", 2)
    pub.publish(f"{t}/end/z", b"end", 2)  # only "#" matches: one copy, behind m's
    copies = [m for m in [sub.expect_message(), *sub.until(b"end")] if m.payload == b"m"]
    assert 1 <= len(copies) <= 3
    if version == 5 or not hub.deviates("overlap-v3-qos"):
        assert max(m.qos for m in copies) == 2


@pytest.mark.thinghub_only  # mosquitto sends one copy per matching subscription
def test_overlapping_subscriptions_deliver_one_copy(client, version):
    """ThingHub's contract: one copy at the highest granted QoS."""
    t = unique()
    sub = client(version)
    sub.subscribe(f"{t}/+", 0)
    sub.subscribe(f"{t}/#", 2)
    sub.subscribe(f"{t}/x", 1)
    pub = client(version)
    pub.publish(f"{t}/x", b"m", 2)
    pub.publish(f"{t}/end/z", b"end", 2)  # only "#" matches: one copy, behind m's
    first = sub.expect_message()
    assert (first.payload, first.qos) == (b"m", 2)
    assert sub.until(b"end") == []


def test_v5_subscription_identifier_is_delivered(client):
    t = unique()
    sub = client(5)
    sub.subscribe(f"{t}/#", 1, subscription_id=42)
    pub = client(5)
    pub.publish(f"{t}/a", b"a", 1)
    pub.publish(f"{t}/b", b"b", 1)
    a, b = sub.expect_messages(2)
    assert (a.payload, a.subscription_ids) == (b"a", [42])
    assert (b.payload, b.subscription_ids) == (b"b", [42])


def test_v5_subscription_without_identifier_carries_none(client):
    t = unique()
    sub = client(5)
    sub.subscribe(t, 1)
    client(5).publish(t, b"a", 1)
    assert sub.expect_message().subscription_ids == []


def test_v5_overlapping_subscriptions_carry_every_matching_identifier(client):
    """v5 3.3.4: a single copy carries all matching identifiers; separate copies carry each
    their own.  Either way the client learns every matching subscription."""
    t = unique()
    sub = client(5)
    sub.subscribe(f"{t}/+", 1, subscription_id=1)
    sub.subscribe(f"{t}/#", 1, subscription_id=2)
    sub.subscribe(f"{t}/y", 1, subscription_id=3)  # does not match
    pub = client(5)
    pub.publish(f"{t}/x", b"m", 1)
    pub.publish(f"{t}/y", b"end", 1)
    copies = [sub.expect_message(), *sub.until(b"end")]
    assert sorted(i for m in copies for i in m.subscription_ids) == [1, 2]
    for m in copies:
        assert len(m.subscription_ids) == len(set(m.subscription_ids))


@pytest.mark.thinghub_only  # mosquitto sends one copy per subscription, each with its id
def test_v5_overlapping_subscriptions_one_copy_with_all_identifiers(client):
    t = unique()
    sub = client(5)
    sub.subscribe(f"{t}/+", 1, subscription_id=1)
    sub.subscribe(f"{t}/#", 2, subscription_id=2)
    pub = client(5)
    pub.publish(f"{t}/x", b"m", 2)
    pub.publish(f"{t}/end/z", b"end", 2)  # only "#" matches: one copy, behind m's
    first = sub.expect_message()
    assert (first.payload, first.qos, first.subscription_ids) == (b"m", 2, [1, 2])
    assert sub.until(b"end") == []


def test_v5_no_local(client):
    t = unique()
    me = client(5)
    me.subscribe(t, 1, no_local=True)
    other = client(5)
    other.subscribe(t, 1)
    me.publish(t, b"mine", 1)
    assert other.expect_message().payload == b"mine"  # it was published
    other.publish(t, b"theirs", 1)
    # MQTT-3.8.3-3: not forwarded to the connection that published it.
    assert me.expect_message().payload == b"theirs"


def test_v5_retain_as_published(client):
    t = unique()
    keep = client(5)
    keep.subscribe(t, 1, retain_as_published=True)
    clear = client(5)
    clear.subscribe(t, 1)
    client(5).publish(t, b"r", 1, retain=True)
    assert keep.expect_message().retain is True  # MQTT-3.3.1-13
    assert clear.expect_message().retain is False  # MQTT-3.3.1-12
    client(5).publish(t, b"", 1, retain=True)  # clean up the retained message


def test_v5_subscribe_user_properties_are_accepted(client):
    t = unique()
    sub = client(5)
    assert sub.subscribe(t, 1, user_properties=[("k", "v")]) == 1
    client(5).publish(t, b"x", 1)
    assert sub.expect_message().payload == b"x"
