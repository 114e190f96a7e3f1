"""The wire form of a message between nodes (thinghub/cluster/envelope.py): everything MQTT
needs crosses unchanged (QoS, RETAIN, the account, the publishing client for No Local, the
MQTT 5 properties in their order), the expiry travels as an absolute time and is counted on
the receiving clock, the per-hop properties never travel, and bytes that are not an envelope
are refused with EnvelopeError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thinghub.cluster.envelope import EnvelopeError, pack, unpack
from thinghub.message import Message
from thinghub.mqtt.properties import NO_PROPERTIES, Properties

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
PROPERTIES = st.builds(
    Properties,
    payload_format_indicator=st.sampled_from([None, 0, 1]),
    content_type=st.none() | TEXT,
    response_topic=st.none() | TEXT.filter(lambda t: t and "+" not in t and "#" not in t),
    correlation_data=st.none() | st.binary(max_size=64),
    user_properties=st.lists(st.tuples(TEXT, TEXT), max_size=4).map(tuple),
)
TOPIC = TEXT.filter(lambda t: t and "+" not in t and "#" not in t)


@given(
    topic=TOPIC,
    payload=st.binary(max_size=300),
    qos=st.sampled_from([0, 1, 2]),
    retain=st.booleans(),
    properties=st.one_of(st.just(NO_PROPERTIES), PROPERTIES),
    account=TEXT,
    origin=TEXT,
    node=st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    message_id=st.integers(0, (1 << 63) - 1),
)
def test_a_message_crosses_whole(
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    properties: Properties,
    account: str,
    origin: str,
    node: str,
    message_id: int,
) -> None:
    message = Message(
        topic=topic,
        payload=payload,
        qos=qos,
        retain=retain,
        properties=properties,
        account=account,
        origin=origin,
        id=message_id,
    )
    arrival = unpack(pack(message, node, 1000.0, 50.0), 1000.0, 70.0)
    got = arrival.message
    assert (arrival.node, arrival.origin_message_id, arrival.expired) == (node, message_id, False)
    assert (got.topic, got.payload, got.qos, got.retain) == (topic, payload, qos, retain)
    assert (got.account, got.origin) == (account, origin)
    assert got.properties == properties
    assert got.expires_at is None and got.expiry_interval is None
    # The receiving node gives its own MessageId when it needs one.
    assert got.id == 0 and not got.stored


def test_the_expiry_is_counted_across_the_hop() -> None:
    message = Message(topic="t", payload=b"x", qos=1, expiry_interval=60)
    message.expires_at = 500.0 + 60  # published at loop time 500
    data = pack(message, "a", 10_000.0, 500.0)
    # Received 2.5 s later (wall clock) on a node whose loop clock reads 7.0.
    arrival = unpack(data, 10_002.5, 7.0)
    assert arrival.message.expires_at == pytest.approx(7.0 + 57.5, abs=0.001)
    assert arrival.message.expiry_interval == 60
    assert arrival.message.remaining_expiry(7.0) == 58  # rounded up, as on delivery
    assert not arrival.expired
    # Received after its expiry: the receiving node does not route it.
    late = unpack(data, 10_061.0, 7.0)
    assert late.expired


def test_per_hop_properties_and_the_relative_expiry_do_not_travel() -> None:
    message = Message(
        topic="t",
        payload=b"",
        properties=Properties(
            message_expiry_interval=30,
            topic_alias=3,
            subscription_identifiers=(5, 6),
            content_type="text/plain",
        ),
    )
    got = unpack(pack(message, "a", 0.0, 0.0), 0.0, 0.0).message
    assert got.properties == Properties(content_type="text/plain")


def test_bytes_that_are_not_an_envelope_are_refused() -> None:
    good = pack(Message(topic="a/b", payload=b"p", qos=1), "n1", 0.0, 0.0)
    bad = [
        b"",
        b"\x02" + good[1:],  # another version
        good[:5],  # cut short
        good[:2] + b"\xfa" + good[3:],  # a node name running past the end
        good[:3] + b"\xff" + good[4:],  # a node name that is not UTF-8
        bytes([good[0], 0x03]) + good[2:],  # QoS 3
    ]
    for data in bad:
        with pytest.raises(EnvelopeError):
            unpack(data, 0.0, 0.0)
    # A topic with a wildcard is not a Topic Name [MQTT-4.7.1-1].
    wildcard = good.replace(b"\x00\x03a/b", b"\x00\x03a/#")
    with pytest.raises(EnvelopeError):
        unpack(wildcard, 0.0, 0.0)


def test_the_layout_is_the_documented_one() -> None:
    message = Message(topic="a", payload=b"P", qos=2, retain=True, account="acc", origin="c1")
    message.id = 7
    data = pack(message, "n", 0.0, 0.0)
    version, flags, name_length = struct.unpack_from(">BBB", data)
    assert (version, flags & 3, bool(flags & 4), bool(flags & 8)) == (1, 2, True, False)
    assert data[3 : 3 + name_length] == b"n"
    assert data[4:9] == b"\x00\x03acc"
    assert data[9:13] == b"\x00\x02c1"
    assert struct.unpack_from(">Q", data, 13) == (7,)
    # Then the body of a QoS 0 MQTT 5 PUBLISH: topic, empty property block, payload.
    assert data[21:] == b"\x00\x01a\x00P"


def test_the_choice_of_node_for_each_shared_group_travels() -> None:
    shares = {("g1", "a/+"): "n2", ("grüppe", "#"): "n3"}
    message = Message(topic="a/b", payload=b"x", qos=1)
    arrival = unpack(pack(message, "n1", 0.0, 0.0, shares), 0.0, 0.0)
    assert arrival.shares == shares and arrival.message.payload == b"x"
    assert unpack(pack(message, "n1", 0.0, 0.0), 0.0, 0.0).shares == {}
