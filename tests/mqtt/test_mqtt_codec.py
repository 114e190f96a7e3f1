"""Codec tests: round trips (hypothesis), incremental feeding, hand-written spec vectors, and
every malformed / protocol-error case with its exception class and reason code."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinghub.mqtt.codec import (
    MAX_REMAINING_LENGTH,
    Decoder,
    decode_packet,
    encode,
    encode_properties,
    encode_publish,
    protocol_version_of,
)
from thinghub.mqtt.errors import (
    MalformedPacket,
    MQTTError,
    PacketTooLarge,
    ProtocolError,
    UnsupportedProtocolVersion,
)
from thinghub.mqtt.packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from thinghub.mqtt.properties import ALLOWED, NO_PROPERTIES, WILL, Properties
from thinghub.mqtt.types import PacketType, PropertyId, ProtocolVersion, ReasonCode

V3 = ProtocolVersion.V311
V5 = ProtocolVersion.V5
P = PropertyId

# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------

# Any valid MQTT string: no surrogates (unencodable) and no U+0000 ([MQTT-1.5.4-2]).
mqtt_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    max_size=12,
)
topic_names = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00+#"),
    min_size=1,
    max_size=12,
)
small_binary = st.binary(max_size=16)
packet_ids = st.integers(1, 0xFFFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
flag01 = st.integers(0, 1)

_PROPERTY_STRATEGIES: dict[PropertyId, tuple[str, st.SearchStrategy[Any]]] = {
    P.PAYLOAD_FORMAT_INDICATOR: ("payload_format_indicator", flag01),
    P.MESSAGE_EXPIRY_INTERVAL: ("message_expiry_interval", u32),
    P.CONTENT_TYPE: ("content_type", mqtt_text),
    P.RESPONSE_TOPIC: ("response_topic", topic_names),
    P.CORRELATION_DATA: ("correlation_data", small_binary),
    P.SESSION_EXPIRY_INTERVAL: ("session_expiry_interval", u32),
    P.ASSIGNED_CLIENT_IDENTIFIER: ("assigned_client_identifier", mqtt_text),
    P.SERVER_KEEP_ALIVE: ("server_keep_alive", u16),
    P.AUTHENTICATION_METHOD: ("authentication_method", mqtt_text),
    P.AUTHENTICATION_DATA: ("authentication_data", small_binary),
    P.REQUEST_PROBLEM_INFORMATION: ("request_problem_information", flag01),
    P.WILL_DELAY_INTERVAL: ("will_delay_interval", u32),
    P.REQUEST_RESPONSE_INFORMATION: ("request_response_information", flag01),
    P.RESPONSE_INFORMATION: ("response_information", mqtt_text),
    P.SERVER_REFERENCE: ("server_reference", mqtt_text),
    P.REASON_STRING: ("reason_string", mqtt_text),
    P.RECEIVE_MAXIMUM: ("receive_maximum", st.integers(1, 0xFFFF)),
    P.TOPIC_ALIAS_MAXIMUM: ("topic_alias_maximum", u16),
    P.TOPIC_ALIAS: ("topic_alias", st.integers(1, 0xFFFF)),
    P.MAXIMUM_QOS: ("maximum_qos", flag01),
    P.RETAIN_AVAILABLE: ("retain_available", flag01),
    P.USER_PROPERTY: (
        "user_properties",
        st.lists(st.tuples(mqtt_text, mqtt_text), min_size=1, max_size=3).map(tuple),
    ),
    P.MAXIMUM_PACKET_SIZE: ("maximum_packet_size", st.integers(1, 0xFFFFFFFF)),
    P.WILDCARD_SUBSCRIPTION_AVAILABLE: ("wildcard_subscription_available", flag01),
    P.SUBSCRIPTION_IDENTIFIER_AVAILABLE: ("subscription_identifier_available", flag01),
    P.SHARED_SUBSCRIPTION_AVAILABLE: ("shared_subscription_available", flag01),
}


def _fix_properties(values: dict[str, Any]) -> Properties:
    # Authentication Data without a Method is a Protocol Error (§3.1.2.11.10).
    if "authentication_data" in values and "authentication_method" not in values:
        values["authentication_method"] = "SCRAM"
    return Properties(**values)


def properties(where: PacketType | str) -> st.SearchStrategy[Properties]:
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for pid in ALLOWED[where]:
        if pid == P.SUBSCRIPTION_IDENTIFIER:
            # Several on PUBLISH, at most one on SUBSCRIBE (§3.8.2.1.2).
            many = 3 if where == PacketType.PUBLISH else 1
            optional["subscription_identifiers"] = st.lists(
                st.integers(1, 268_435_455), min_size=1, max_size=many
            ).map(tuple)
        else:
            attr, strategy = _PROPERTY_STRATEGIES[pid]
            optional[attr] = strategy
    return st.fixed_dictionaries({}, optional=optional).map(_fix_properties)


def props_for(version: ProtocolVersion, where: PacketType | str) -> st.SearchStrategy[Properties]:
    return properties(where) if version == V5 else st.just(NO_PROPERTIES)


@st.composite
def connects(draw: st.DrawFn, version: ProtocolVersion) -> Connect:
    will = None
    if draw(st.booleans()):
        will = Will(
            topic=draw(topic_names),
            payload=draw(small_binary),
            qos=draw(st.integers(0, 2)),
            retain=draw(st.booleans()),
            properties=draw(props_for(version, WILL)),
        )
    username = draw(st.none() | mqtt_text)
    password = draw(st.none() | small_binary)
    if version != V5 and username is None:
        password = None  # 3.1.1 [MQTT-3.1.2-22]
    return Connect(
        protocol_version=version,
        client_id=draw(mqtt_text),
        clean_start=draw(st.booleans()),
        keep_alive=draw(u16),
        username=username,
        password=password,
        will=will,
        properties=draw(props_for(version, PacketType.CONNECT)),
        protocol_name="MQIsdp" if version == ProtocolVersion.V31 else "MQTT",
    )


@st.composite
def publishes(draw: st.DrawFn, version: ProtocolVersion) -> Publish:
    qos = draw(st.integers(0, 2))
    return Publish(
        topic=draw(topic_names),
        payload=draw(st.binary(max_size=64)),
        qos=qos,
        retain=draw(st.booleans()),
        dup=draw(st.booleans()) if qos else False,
        packet_id=draw(packet_ids) if qos else None,
        properties=draw(props_for(version, PacketType.PUBLISH)),
    )


_ACK_CODES = {
    PubAck: [0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
    PubRec: [0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
    PubRel: [0x00, 0x92],
    PubComp: [0x00, 0x92],
}


def acks(version: ProtocolVersion) -> st.SearchStrategy[Packet]:
    def one(cls: Any) -> st.SearchStrategy[Packet]:
        codes = st.sampled_from(_ACK_CODES[cls]) if version == V5 else st.just(0)
        ptype = cls.type
        return st.builds(
            cls,
            packet_id=packet_ids,
            reason_code=codes,
            properties=props_for(version, ptype),
        )

    return st.one_of([one(cls) for cls in _ACK_CODES])


@st.composite
def subscribes(draw: st.DrawFn, version: ProtocolVersion) -> Subscribe:
    subs = []
    for _ in range(draw(st.integers(1, 4))):
        if version == V5:
            subs.append(
                Subscription(
                    topic_filter=draw(mqtt_text),
                    qos=draw(st.integers(0, 2)),
                    no_local=draw(st.booleans()),
                    retain_as_published=draw(st.booleans()),
                    retain_handling=draw(st.integers(0, 2)),
                )
            )
        else:
            subs.append(Subscription(topic_filter=draw(mqtt_text), qos=draw(st.integers(0, 2))))
    return Subscribe(
        packet_id=draw(packet_ids),
        subscriptions=tuple(subs),
        properties=draw(props_for(version, PacketType.SUBSCRIBE)),
    )


def packets(version: ProtocolVersion) -> st.SearchStrategy[Packet]:
    v5 = version == V5
    connack_codes = [0x00, 0x80, 0x84, 0x86, 0x87, 0x95, 0x9F] if v5 else list(range(6))
    suback_codes = [0x00, 0x01, 0x02, 0x80, 0x8F, 0x9E, 0xA2] if v5 else [0, 1, 2, 0x80]
    choices: list[st.SearchStrategy[Packet]] = [
        connects(version),
        st.builds(
            ConnAck,
            session_present=st.booleans(),
            reason_code=st.sampled_from(connack_codes),
            properties=props_for(version, PacketType.CONNACK),
        ),
        publishes(version),
        acks(version),
        subscribes(version),
        st.builds(
            SubAck,
            packet_id=packet_ids,
            reason_codes=st.lists(st.sampled_from(suback_codes), min_size=1, max_size=5).map(tuple),
            properties=props_for(version, PacketType.SUBACK),
        ),
        st.builds(
            Unsubscribe,
            packet_id=packet_ids,
            topic_filters=st.lists(mqtt_text, min_size=1, max_size=4).map(tuple),
            properties=props_for(version, PacketType.UNSUBSCRIBE),
        ),
        st.builds(
            UnsubAck,
            packet_id=packet_ids,
            reason_codes=(
                st.lists(
                    st.sampled_from([0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91]),
                    min_size=1,
                    max_size=5,
                ).map(tuple)
                if v5
                else st.just(())
            ),
            properties=props_for(version, PacketType.UNSUBACK),
        ),
        st.just(PingReq()),
        st.just(PingResp()),
    ]
    if v5:
        choices.append(
            st.builds(
                Disconnect,
                reason_code=st.sampled_from([0x00, 0x04, 0x81, 0x8E, 0x93, 0x95, 0xA2]),
                properties=properties(PacketType.DISCONNECT),
            )
        )
        choices.append(
            st.builds(
                Auth,
                reason_code=st.sampled_from([0x00, 0x18, 0x19]),
                properties=properties(PacketType.AUTH),
            )
        )
    else:
        choices.append(st.just(Disconnect()))
    return st.one_of(choices)


def decoder(version: ProtocolVersion | None, max_packet_size: int = 1 << 20) -> Decoder:
    d = Decoder(max_packet_size)
    d.version = version
    return d


def frame(first: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes((first, len(body))) + body


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return len(raw).to_bytes(2, "big") + raw


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [V3, V5])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_every_packet(version: ProtocolVersion, data: st.DataObject) -> None:
    packet = data.draw(packets(version))
    wire = encode(packet, version)
    assert decoder(version).feed(wire) == [packet]
    # One byte at a time: nothing until the last byte, then exactly the packet.
    d = decoder(version)
    for i in range(len(wire) - 1):
        assert d.feed(wire[i : i + 1]) == []
    assert d.feed(wire[-1:]) == [packet]
    assert d.buffered == 0


@given(connects(ProtocolVersion.V31))
def test_round_trip_mqtt31_connect(packet: Connect) -> None:
    wire = encode(packet, ProtocolVersion.V31)
    d = Decoder(1 << 20)
    assert d.feed(wire) == [packet]
    assert d.version == ProtocolVersion.V31


@pytest.mark.parametrize("version", [V3, V5])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_many_packets_in_one_feed_and_random_splits(
    version: ProtocolVersion, data: st.DataObject
) -> None:
    batch = data.draw(st.lists(packets(version), min_size=1, max_size=20))
    wire = b"".join(encode(p, version) for p in batch)
    assert decoder(version).feed(wire) == batch
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    d = decoder(version)
    got: list[Packet] = []
    prev = 0
    for cut in [*cuts, len(wire)]:
        got += d.feed(wire[prev:cut])
        prev = cut
    assert got == batch


@pytest.mark.parametrize("version", [V3, V5])
@given(data=st.data())
def test_fast_path_matches_general_decoder(version: ProtocolVersion, data: st.DataObject) -> None:
    packet = data.draw(publishes(version))
    if version == V5:
        packet = Publish(
            topic=packet.topic,
            payload=packet.payload,
            qos=packet.qos,
            retain=packet.retain,
            dup=packet.dup,
            packet_id=packet.packet_id,
        )
    wire = encode(packet, version)
    fast = decoder(version).feed(wire)[0]
    assert fast == packet
    header = 2 if wire[1] < 0x80 else 3
    assert decode_packet(wire[0], memoryview(wire)[header:], version) == fast


@given(
    topic=topic_names,
    payload=st.binary(max_size=300),
    qos=st.integers(0, 2),
    retain=st.booleans(),
)
def test_encode_publish_matches_encode(topic: str, payload: bytes, qos: int, retain: bool) -> None:
    pid = 7 if qos else None
    packet = Publish(topic=topic, payload=payload, qos=qos, retain=retain, packet_id=pid)
    for version in (V3, V5):
        fast = encode_publish(topic, payload, qos, retain, False, pid, None, version)
        assert fast == encode(packet, version)
        assert decoder(version).feed(fast) == [packet]


def test_encode_publish_with_property_block() -> None:
    props = Properties(message_expiry_interval=10, user_properties=(("k", "v"),))
    block = encode_properties(props)
    wire = encode_publish("t", b"x", 1, False, True, 3, block, V5)
    assert decoder(V5).feed(wire) == [
        Publish(topic="t", payload=b"x", qos=1, dup=True, packet_id=3, properties=props)
    ]
    # v3 never writes properties, even if some are passed.
    assert encode_publish("t", b"x", 0, False, False, None, block, V3) == b"\x30\x04\x00\x01tx"


def test_encode_publish_large_remaining_length() -> None:
    payload = bytes(200_000)
    wire = encode_publish("big", payload, 0, False, False, None, None, V3)
    # 200005 = 0x45 + 0x1a * 128 + 0x0c * 128**2 (§1.5.5, least significant digit first).
    assert wire[:4] == b"\x30\xc5\x9a\x0c"
    assert decoder(V3).feed(wire) == [Publish(topic="big", payload=payload)]


def test_encode_publish_requires_packet_id_for_qos() -> None:
    with pytest.raises(ValueError):
        encode_publish("t", b"", 1, False, False, None, None, V3)


def test_auth_cannot_be_encoded_for_v3() -> None:
    with pytest.raises(ValueError):
        encode(Auth(), V3)


# --------------------------------------------------------------------------------------------
# Known-good vectors written by hand from the spec
# --------------------------------------------------------------------------------------------


def test_vector_311_connect_like_paho() -> None:
    # paho-mqtt 3.1.1 CONNECT, client id "paho123", clean session, keep alive 60:
    # 10 13 | 00 04 'MQTT' | 04 | 02 | 00 3c | 00 07 'paho123'
    wire = bytes.fromhex("10 13 0004 4d515454 04 02 003c 0007 7061686f313233")
    expected = Connect(protocol_version=V3, client_id="paho123", clean_start=True, keep_alive=60)
    d = Decoder(1024)
    assert d.feed(wire) == [expected]
    assert d.version == V3
    assert encode(expected, V3) == wire


def test_vector_31_connect() -> None:
    wire = bytes.fromhex("10 11 0006 4d5149736470 03 02 000a 0003 616263")
    expected = Connect(
        protocol_version=ProtocolVersion.V31,
        client_id="abc",
        keep_alive=10,
        protocol_name="MQIsdp",
    )
    assert Decoder(1024).feed(wire) == [expected]
    assert encode(expected, ProtocolVersion.V31) == wire


def test_vector_v5_connect_with_properties() -> None:
    # flags c2 = user name + password + clean start; properties: Session Expiry 120.
    wire = bytes.fromhex("10 1a 0004 4d515454 05 c2 003c 05 11 00000078 0002 6331 0001 75 0001 70")
    expected = Connect(
        protocol_version=V5,
        client_id="c1",
        keep_alive=60,
        username="u",
        password=b"p",
        properties=Properties(session_expiry_interval=120),
    )
    assert Decoder(1024).feed(wire) == [expected]
    assert encode(expected, V5) == wire


def test_vector_v5_connect_with_will() -> None:
    # flags 2e = will retain + will QoS 1 + will flag + clean start; will props: delay 5.
    wire = bytes.fromhex(
        "10 1b 0004 4d515454 05 2e 0000 00 0001 63 05 18 00000005 0001 77 0002 6869"
    )
    will = Will(
        topic="w", payload=b"hi", qos=1, retain=True, properties=Properties(will_delay_interval=5)
    )
    expected = Connect(protocol_version=V5, client_id="c", will=will)
    assert Decoder(1024).feed(wire) == [expected]
    assert encode(expected, V5) == wire


def test_vector_v5_publish_with_properties() -> None:
    # QoS 1, topic "a/b", id 10, Payload Format 1, Message Expiry 3600, User Property k=v.
    wire = bytes.fromhex("32 18 0003 612f62 000a 0e 01 01 02 00000e10 26 0001 6b 0001 76 6869")
    expected = Publish(
        topic="a/b",
        payload=b"hi",
        qos=1,
        packet_id=10,
        properties=Properties(
            payload_format_indicator=1,
            message_expiry_interval=3600,
            user_properties=(("k", "v"),),
        ),
    )
    assert decoder(V5).feed(wire) == [expected]
    assert encode(expected, V5) == wire


@pytest.mark.parametrize(
    ("version", "hexwire", "packet"),
    [
        (V3, "20 02 01 00", ConnAck(session_present=True)),
        (V3, "20 02 00 05", ConnAck(reason_code=5)),
        (V5, "20 03 00 00 00", ConnAck()),
        (V5, "20 08 00 00 05 22 000a 24 01", ConnAck(
            properties=Properties(topic_alias_maximum=10, maximum_qos=1)
        )),
        (V3, "30 05 0003 612f62", Publish(topic="a/b")),
        (V5, "31 06 0003 612f62 00", Publish(topic="a/b", retain=True)),
        (V3, "3d 08 0003 612f62 0001 78", Publish(
            topic="a/b", payload=b"x", qos=2, dup=True, retain=True, packet_id=1
        )),
        (V3, "40 02 0001", PubAck(packet_id=1)),
        (V5, "40 02 0001", PubAck(packet_id=1)),
        (V5, "40 03 0001 10", PubAck(packet_id=1, reason_code=0x10)),
        (V5, "50 02 ffff", PubRec(packet_id=0xFFFF)),
        (V3, "62 02 0002", PubRel(packet_id=2)),
        (V5, "62 03 0002 92", PubRel(packet_id=2, reason_code=0x92)),
        (V5, "70 02 0002", PubComp(packet_id=2)),
        (V3, "82 08 0001 0003 612f23 01", Subscribe(
            packet_id=1, subscriptions=(Subscription(topic_filter="a/#", qos=1),)
        )),
        (V5, "82 0b 0001 02 0b 05 0003 612f2b 2e", Subscribe(
            packet_id=1,
            subscriptions=(Subscription(
                topic_filter="a/+", qos=2, no_local=True, retain_as_published=True,
                retain_handling=2,
            ),),
            properties=Properties(subscription_identifiers=(5,)),
        )),
        (V3, "90 04 0001 01 80", SubAck(packet_id=1, reason_codes=(1, 0x80))),
        (V5, "90 04 0001 00 8f", SubAck(packet_id=1, reason_codes=(0x8F,))),
        (V3, "a2 05 0001 0001 61", Unsubscribe(packet_id=1, topic_filters=("a",))),
        (V3, "b0 02 0001", UnsubAck(packet_id=1)),
        (V5, "b0 04 0001 00 11", UnsubAck(packet_id=1, reason_codes=(0x11,))),
        (V3, "c0 00", PingReq()),
        (V5, "d0 00", PingResp()),
        (V3, "e0 00", Disconnect()),
        (V5, "e0 00", Disconnect()),
        (V5, "e0 01 04", Disconnect(reason_code=ReasonCode.DISCONNECT_WITH_WILL_MESSAGE)),
        (V5, "e0 07 8e 05 1f 0002 6279", Disconnect(
            reason_code=0x8E, properties=Properties(reason_string="by")
        )),
        (V5, "f0 00", Auth()),
        (V5, "f0 08 18 06 15 0003 616263", Auth(
            reason_code=0x18, properties=Properties(authentication_method="abc")
        )),
    ],
)  # fmt: skip
def test_vectors(version: ProtocolVersion, hexwire: str, packet: Packet) -> None:
    wire = bytes.fromhex(hexwire)
    assert decoder(version).feed(wire) == [packet]
    assert encode(packet, version) == wire


@pytest.mark.parametrize(
    ("hexwire", "packet"),
    [
        # §3.4.2.1 / §3.14.2.1: the long forms decode to the same values as the short ones.
        ("40 04 0001 00 00", PubAck(packet_id=1)),
        ("40 03 0001 00", PubAck(packet_id=1)),
        ("e0 02 00 00", Disconnect()),
        ("e0 01 00", Disconnect()),
        ("f0 01 00", Auth()),
    ],
)
def test_v5_long_forms_decode(hexwire: str, packet: Packet) -> None:
    assert decoder(V5).feed(bytes.fromhex(hexwire)) == [packet]


def test_v5_empty_topic_with_alias_is_left_to_the_connection() -> None:
    wire = bytes.fromhex("30 06 0000 03 23 0001")
    assert decoder(V5).feed(wire) == [Publish(topic="", properties=Properties(topic_alias=1))]


def test_v5_password_without_user_name_is_allowed() -> None:
    wire = bytes.fromhex("10 12 0004 4d515454 05 42 0000 00 0001 63 0002 7077")
    assert Decoder(1024).feed(wire) == [Connect(protocol_version=V5, client_id="c", password=b"pw")]


def test_connect_sets_version_mid_feed() -> None:
    connect = encode(Connect(protocol_version=V5, client_id="x"), V5)
    pub = encode(Publish(topic="t", properties=Properties(content_type="a")), V5)
    d = Decoder(1024)
    assert d.version is None
    out = d.feed(connect + pub + pub)
    assert d.version == V5
    assert out[1] == out[2] == Publish(topic="t", properties=Properties(content_type="a"))


def test_feed_accepts_bytearray_and_keeps_a_copy() -> None:
    wire = bytearray(encode(Publish(topic="t", payload=b"abc"), V3))
    d = decoder(V3)
    assert d.feed(wire[:4]) == []
    # Mutating the caller's buffer after the call must not change what was buffered.
    chunk = bytearray(wire[4:])
    out = d.feed(chunk)
    chunk[:] = b"zzz"
    assert out == [Publish(topic="t", payload=b"abc")]


def test_large_packet_in_many_chunks() -> None:
    packet = Publish(topic="t", payload=bytes(range(256)) * 400)
    wire = encode(packet, V3)
    d = decoder(V3)
    out: list[Packet] = []
    for i in range(0, len(wire), 1000):
        out += d.feed(wire[i : i + 1000])
    assert out == [packet]


# --------------------------------------------------------------------------------------------
# Maximum packet size and the fixed header
# --------------------------------------------------------------------------------------------


def test_max_packet_size_enforced_before_the_body_arrives() -> None:
    d = decoder(V3, max_packet_size=100)
    # Header only: PUBLISH declaring 200 body bytes. Nothing of the body has been sent.
    with pytest.raises(PacketTooLarge) as info:
        d.feed(b"\x30\xc8\x01")
    assert info.value.reason_code == ReasonCode.PACKET_TOO_LARGE


def test_max_packet_size_counts_the_fixed_header() -> None:
    # Body of 98 bytes + 2 header bytes = 100: allowed at 100, refused at 99.
    packet = Publish(topic="t", payload=bytes(95))
    wire = encode(packet, V3)
    assert len(wire) == 100
    assert decoder(V3, 100).feed(wire) == [packet]
    with pytest.raises(PacketTooLarge):
        decoder(V3, 99).feed(wire[:2])


def test_max_packet_size_checked_one_byte_at_a_time() -> None:
    d = decoder(V3, 1000)
    assert d.feed(b"\x30") == []
    assert d.feed(b"\x80") == []
    with pytest.raises(PacketTooLarge):
        d.feed(b"\x10")  # 0x10 * 128 = 2048 > 1000


def test_fifth_remaining_length_byte_is_malformed() -> None:
    d = decoder(V3)
    with pytest.raises(MalformedPacket) as info:
        d.feed(b"\x30\xff\xff\xff\xff")
    assert info.value.reason_code == ReasonCode.MALFORMED_PACKET


def test_remaining_length_not_minimal_is_malformed() -> None:
    with pytest.raises(MalformedPacket):
        decoder(V3).feed(b"\xc0\x80\x00")


def test_incomplete_header_waits() -> None:
    d = decoder(V3)
    assert d.feed(b"\x30\xff\xff") == []
    assert d.buffered == 3


# --------------------------------------------------------------------------------------------
# Malformed packets and protocol errors
# --------------------------------------------------------------------------------------------

MQTT = s("MQTT")
MQISDP = s("MQIsdp")
MALFORMED = ReasonCode.MALFORMED_PACKET
PROTOCOL = ReasonCode.PROTOCOL_ERROR


Expected = tuple[type[MQTTError], ReasonCode]
M: Expected = (MalformedPacket, MALFORMED)
PE: Expected = (ProtocolError, PROTOCOL)
TNI: Expected = (ProtocolError, ReasonCode.TOPIC_NAME_INVALID)
TAI: Expected = (ProtocolError, ReasonCode.TOPIC_ALIAS_INVALID)


def c311(rest: bytes) -> bytes:
    """A 3.1.1 CONNECT: protocol name, level 4, then ``rest`` (flags, keep alive, payload)."""
    return frame(0x10, MQTT + b"\x04" + rest)


def c5(rest: bytes) -> bytes:
    return frame(0x10, MQTT + b"\x05" + rest)


def _v5_publish(props: bytes, topic: bytes = s("t")) -> bytes:
    return frame(0x30, topic + bytes((len(props),)) + props)


def _v5_connect(props: bytes) -> bytes:
    return frame(0x10, MQTT + b"\x05\x02\x00\x00" + bytes((len(props),)) + props + s("c"))


def _v5_connack(props: bytes) -> bytes:
    return frame(0x20, b"\x00\x00" + bytes((len(props),)) + props)


BAD: list[tuple[str, ProtocolVersion | None, bytes, Expected]] = [
    # §2.1.3 reserved flags.
    ("pubrel flags 0", V5, b"\x60\x02\x00\x01", M),
    ("subscribe flags 0", V3, frame(0x80, b"\x00\x01" + s("a") + b"\x00"), M),
    ("unsubscribe flags 0", V3, frame(0xA0, b"\x00\x01" + s("a")), M),
    ("puback flags 1", V3, b"\x41\x02\x00\x01", M),
    ("connect flags", None, b"\x11\x00", M),
    ("pingreq flags", V3, b"\xc8\x00", M),
    ("type 0", V3, b"\x00\x00", M),
    ("auth on v3", V3, b"\xf0\x00", M),
    # PUBLISH fixed header.
    ("publish qos 3", V3, frame(0x36, s("t") + b"\x00\x01"), M),
    ("publish qos 0 dup", V3, frame(0x38, s("t")), M),
    ("publish qos 0 dup v5", V5, frame(0x38, s("t") + b"\x00"), M),
    # UTF-8 strings (§1.5.4).
    ("topic bad utf8", V3, frame(0x30, s(b"a\xffb")), M),
    ("topic bad utf8 v5", V5, frame(0x30, s(b"a\xffb") + b"\x00"), M),
    ("topic overlong", V3, frame(0x30, s(b"\xc0\xaf")), M),
    ("topic overlong nul", V5, frame(0x30, s(b"\xc0\x80") + b"\x00"), M),
    ("topic surrogate", V3, frame(0x30, s(b"\xed\xa0\x80")), M),
    ("topic U+0000", V3, frame(0x30, s(b"a\x00b")), M),
    ("topic U+0000 v5", V5, frame(0x30, s(b"a\x00b") + b"\x00"), M),
    ("client id U+0000", None, c311(b"\x02\x00\x00" + s(b"a\x00")), M),
    ("user property bad utf8", V5, _v5_publish(b"\x26" + s(b"\xff") + s("v")), M),
    # Truncated fields and leftovers.
    ("publish truncated topic len", V3, b"\x30\x01\x00", M),
    ("publish truncated topic", V3, frame(0x30, b"\x00\x05ab"), M),
    ("publish truncated packet id", V3, frame(0x32, s("t") + b"\x01"), M),
    ("publish v5 missing props", V5, frame(0x30, s("t")), M),
    ("publish v5 props overrun", V5, frame(0x30, s("t") + b"\x05\x01\x01"), M),
    ("publish v5 truncated prop", V5, _v5_publish(b"\x02\x00\x00"), M),
    ("puback v3 3 bytes", V3, b"\x40\x03\x00\x01\x00", M),
    ("puback 1 byte", V5, b"\x40\x01\x00", M),
    ("puback v5 leftover", V5, b"\x40\x05\x00\x01\x00\x00\x00", M),
    ("connack v3 long", V3, b"\x20\x03\x00\x00\x00", M),
    ("connack reserved flags", V3, b"\x20\x02\x02\x00", M),
    ("disconnect v3 body", V3, b"\xe0\x01\x00", M),
    ("disconnect v5 leftover", V5, b"\xe0\x03\x00\x00\x00", M),
    ("pingreq body", V3, b"\xc0\x01\x00", M),
    ("pingresp body", V5, b"\xd0\x01\x00", M),
    ("unsuback v5 no codes", V5, b"\xb0\x03\x00\x01\x00", PE),
    ("connack v5 leftover", V5, b"\x20\x04\x00\x00\x00\x00", M),
    ("property byte truncated", V5, _v5_publish(b"\x01"), M),
    ("unsuback v3 payload", V3, b"\xb0\x03\x00\x01\x00", M),
    ("subscribe no options", V3, frame(0x82, b"\x00\x01" + s("a")), M),
    ("connect leftover", None, c311(b"\x02\x00\x00" + s("c") + b"x"), M),
    ("connect truncated", None, c311(b""), M),
    ("connect truncated name", None, b"\x10\x03\x00\x04M", M),
    ("varint prop 5 bytes", V5, _v5_publish(b"\x0b\xff\xff\xff\xff\x01"), M),
    # Properties (§2.2.2).
    ("unknown property", V5, _v5_publish(b"\x7f\x00"), M),
    ("unknown property high", V5, _v5_publish(b"\x80\x01"), M),
    ("property not allowed", V5, _v5_publish(b"\x21\x00\x0a"), M),
    ("will-only property in connect", V5, _v5_connect(b"\x18\x00\x00\x00\x01"), M),
    ("duplicate property", V5, _v5_publish(b"\x02\x00\x00\x00\x01\x02\x00\x00\x00\x02"), PE),
    ("duplicate connect property", V5, _v5_connect(b"\x11\0\0\0\x01\x11\0\0\0\x01"), PE),
    ("receive maximum 0", V5, _v5_connect(b"\x21\x00\x00"), PE),
    ("maximum packet size 0", V5, _v5_connect(b"\x27\x00\x00\x00\x00"), PE),
    ("request problem info 2", V5, _v5_connect(b"\x17\x02"), PE),
    ("request response info 2", V5, _v5_connect(b"\x19\x02"), PE),
    ("auth data without method", V5, _v5_connect(b"\x16\x00\x01x"), PE),
    ("payload format 2", V5, _v5_publish(b"\x01\x02"), PE),
    ("maximum qos 2", V5, _v5_connack(b"\x24\x02"), PE),
    ("retain available 2", V5, _v5_connack(b"\x25\x02"), PE),
    ("topic alias 0", V5, _v5_publish(b"\x23\x00\x00"), TAI),
    ("subscription id 0", V5, frame(0x82, b"\x00\x01\x02\x0b\x00" + s("a") + b"\x00"), PE),
    ("two subscription ids", V5, frame(0x82, b"\0\x01\x04\x0b\x01\x0b\x02" + s("a") + b"\0"), PE),
    # Topic names (§4.7, [MQTT-3.3.2-2]).
    ("publish + v5", V5, frame(0x30, s("a/+") + b"\x00"), TNI),
    ("publish # v5", V5, frame(0x30, s("#") + b"\x00"), TNI),
    ("publish # v3", V3, frame(0x30, s("a/#")), TNI),
    ("publish empty topic v3", V3, frame(0x30, s("")), PE),
    ("publish empty topic v5 no alias", V5, frame(0x30, s("") + b"\x00"), PE),
    ("will topic +", None, c311(b"\x06\x00\x00" + s("c") + s("a/+") + s("")), TNI),
    ("will topic # v5", None, c5(b"\x06\x00\x00\x00" + s("c") + b"\x00" + s("#") + s("")), TNI),
    # Packet identifiers ([MQTT-2.2.1-3]).
    ("publish qos1 id 0", V3, frame(0x32, s("t") + b"\x00\x00"), PE),
    ("publish qos2 id 0 v5", V5, frame(0x34, s("t") + b"\x00\x00\x00"), PE),
    ("subscribe id 0", V3, frame(0x82, b"\x00\x00" + s("a") + b"\x00"), PE),
    ("unsubscribe id 0", V3, frame(0xA2, b"\x00\x00" + s("a")), PE),
    ("puback id 0", V3, b"\x40\x02\x00\x00", PE),
    # SUBSCRIBE / UNSUBSCRIBE payloads.
    ("subscribe empty v3", V3, frame(0x82, b"\x00\x01"), PE),
    ("subscribe empty v5", V5, frame(0x82, b"\x00\x01\x00"), PE),
    ("subscribe reserved bits v5", V5, frame(0x82, b"\x00\x01\x00" + s("a") + b"\x40"), M),
    ("subscribe reserved bits v3", V3, frame(0x82, b"\x00\x01" + s("a") + b"\x04"), M),
    ("subscribe qos 3 v3", V3, frame(0x82, b"\x00\x01" + s("a") + b"\x03"), M),
    ("subscribe qos 3 v5", V5, frame(0x82, b"\x00\x01\x00" + s("a") + b"\x03"), PE),
    ("subscribe retain handling 3", V5, frame(0x82, b"\x00\x01\x00" + s("a") + b"\x30"), PE),
    ("unsubscribe empty", V3, frame(0xA2, b"\x00\x01"), PE),
    ("unsubscribe empty v5", V5, frame(0xA2, b"\x00\x01\x00"), PE),
    # Reason codes that do not belong to the packet.
    ("puback bad reason", V5, b"\x40\x03\x00\x01\x92", PE),
    ("pubrel bad reason", V5, b"\x62\x03\x00\x01\x10", PE),
    ("disconnect bad reason", V5, b"\xe0\x01\x01", PE),
    ("connack v3 rc 6", V3, b"\x20\x02\x00\x06", PE),
    ("suback v3 bad code", V3, b"\x90\x03\x00\x01\x03", PE),
    ("suback no codes", V3, b"\x90\x02\x00\x01", PE),
    # CONNECT flags (§3.1.2.3).
    ("connect reserved flag", None, c311(b"\x03\x00\x00" + s("c")), M),
    ("will qos without will", None, c311(b"\x08\x00\x00" + s("c")), M),
    ("will retain without will", None, c311(b"\x20\x00\x00" + s("c")), M),
    ("will qos 3", None, c311(b"\x1c\x00\x00" + s("c") + s("w") + s("")), M),
    ("password without user 3.1.1", None, c311(b"\x40\x00\x00" + s("c") + s("p")), M),
    ("password without user 3.1", None, frame(0x10, MQISDP + b"\x03\x40\0\0" + s("c") + s("p")), M),
    # Before CONNECT ([MQTT-3.1.0-1]).
    ("publish before connect", None, frame(0x30, s("t")), PE),
    ("pingreq before connect", None, b"\xc0\x00", PE),
]  # fmt: skip


@pytest.mark.parametrize(
    ("version", "wire", "expected"),
    [pytest.param(v, w, e, id=name) for name, v, w, e in BAD],
)
def test_bad_packets(version: ProtocolVersion | None, wire: bytes, expected: Expected) -> None:
    exc_type, reason = expected
    with pytest.raises(exc_type) as info:
        decoder(version).feed(wire)
    assert type(info.value) is exc_type
    assert info.value.reason_code == reason
    # Same verdict one byte at a time.
    d = decoder(version)
    with pytest.raises(exc_type):
        for i in range(len(wire)):
            d.feed(wire[i : i + 1])


@pytest.mark.parametrize(
    ("wire", "level"),
    [
        (frame(0x10, s("MQTX") + b"\x04\x02\x00\x00" + s("c")), 4),
        (frame(0x10, MQTT + b"\x06\x02\x00\x00" + s("c")), 6),
        (frame(0x10, MQTT + b"\x03\x02\x00\x00" + s("c")), 3),
        (frame(0x10, s("MQIsdp") + b"\x04\x02\x00\x00" + s("c")), 4),
        (frame(0x10, s("MQIsdp") + b"\x05\x02\x00\x00" + s("c")), 5),
        (frame(0x10, MQTT + b"\x00"), 0),
    ],
)
def test_unsupported_protocol_version(wire: bytes, level: int) -> None:
    with pytest.raises(UnsupportedProtocolVersion) as info:
        Decoder(1024).feed(wire)
    assert info.value.reason_code == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION
    assert protocol_version_of(info.value) == level


def test_connect_errors_carry_the_protocol_level() -> None:
    wire = frame(0x10, MQTT + b"\x05\x03\x00\x00\x00" + s("c"))  # reserved flag, v5
    with pytest.raises(MalformedPacket) as info:
        Decoder(1024).feed(wire)
    assert protocol_version_of(info.value) == 5
    with pytest.raises(ProtocolError) as info2:
        decoder(V5).feed(frame(0x30, s("#") + b"\x00"))
    assert protocol_version_of(info2.value) is None


def test_decode_packet_accepts_memoryview() -> None:
    body = memoryview(b"xx" + s("a/b") + b"\x00\x07payload")[2:]
    assert decode_packet(0x32, body, V3) == Publish(
        topic="a/b", payload=b"payload", qos=1, packet_id=7
    )


def test_encode_properties_empty_and_full() -> None:
    assert encode_properties(NO_PROPERTIES) == b"\x00"
    assert encode_properties(Properties()) == b"\x00"
    props = Properties(subscription_identifiers=(1, 200), content_type="x")
    assert encode_properties(props) == bytes.fromhex("09 03 0001 78 0b 01 0b c801")


def test_encoding_limits_raise_value_error() -> None:
    with pytest.raises(ValueError):
        encode(Publish(topic="t", payload=bytes(MAX_REMAINING_LENGTH)), V3)
    with pytest.raises(ValueError):
        encode(Unsubscribe(packet_id=1, topic_filters=("x" * 70_000,)), V3)
    with pytest.raises(ValueError):
        encode(
            Connect(protocol_version=V3, client_id="c", username="u", password=bytes(70_000)), V3
        )


def test_encode_publish_qos1_long_packet() -> None:
    packet = Publish(topic="t", payload=bytes(300), qos=1, packet_id=2)
    wire = encode_publish("t", bytes(300), 1, False, False, 2, None, V5)
    assert wire[:3] == b"\x32\xb2\x02"  # 3 + 2 + 1 + 300 = 306 = 0x32 + 2 * 128
    assert decoder(V5).feed(wire) == [packet]


def test_fast_constructor_matches_dataclass_and_respects_post_init() -> None:
    from dataclasses import dataclass

    from thinghub.mqtt.codec import _fast_constructor

    make = _fast_constructor(Properties)
    assert make(content_type="x", user_properties=(("a", "b"),)) == Properties(
        content_type="x", user_properties=(("a", "b"),)
    )
    assert make() == NO_PROPERTIES
    assert _fast_constructor(Publish)(topic="t") == Publish(topic="t")

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Checked:
        x: int

        def __post_init__(self) -> None:
            if self.x < 0:
                raise ValueError("negative")

    assert _fast_constructor(Checked) is Checked
