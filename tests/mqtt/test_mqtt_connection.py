"""ServerConnection: CONNECT ordering, AUTH, topic aliases, Receive Maximum, sticky errors and
the bytes sent back on errors."""

from __future__ import annotations

import pytest

from thinghub.mqtt.codec import encode
from thinghub.mqtt.connection import ServerConnection
from thinghub.mqtt.errors import (
    MalformedPacket,
    PacketTooLarge,
    ProtocolError,
    UnsupportedProtocolVersion,
)
from thinghub.mqtt.packets import (
    Auth,
    ConnAck,
    Connect,
    PingReq,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
)
from thinghub.mqtt.properties import Properties
from thinghub.mqtt.types import ProtocolVersion, ReasonCode

V3 = ProtocolVersion.V311
V5 = ProtocolVersion.V5


def connected(
    version: ProtocolVersion = V5,
    *,
    max_packet_size: int = 1 << 16,
    receive_maximum: int = 10,
    topic_alias_maximum: int = 5,
) -> ServerConnection:
    conn = ServerConnection(
        max_packet_size=max_packet_size,
        receive_maximum=receive_maximum,
        topic_alias_maximum=topic_alias_maximum,
    )
    connect = Connect(protocol_version=version, client_id="dev1")
    assert conn.receive_data(encode(connect, version)) == [connect]
    assert conn.version == version
    assert conn.connect_received
    return conn


def pub(qos: int, packet_id: int | None = None) -> Publish:
    return Publish(topic="t", qos=qos, packet_id=packet_id)


def test_first_packet_must_be_connect() -> None:
    conn = ServerConnection(max_packet_size=1024, receive_maximum=10, topic_alias_maximum=0)
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(encode(PingReq(), V3))
    assert info.value.reason_code == ReasonCode.PROTOCOL_ERROR
    # [MQTT-3.1.0-1]: the server just closes.
    assert conn.error_bytes(info.value) == b""


def test_second_connect_is_a_protocol_error() -> None:
    conn = connected(V3)
    with pytest.raises(ProtocolError):
        conn.receive_data(encode(Connect(protocol_version=V3, client_id="x"), V3))


def test_connect_and_packets_in_one_read() -> None:
    conn = ServerConnection(max_packet_size=1024, receive_maximum=10, topic_alias_maximum=0)
    connect = Connect(protocol_version=V5, client_id="c")
    data = encode(connect, V5) + encode(pub(1, 1), V5) + encode(PingReq(), V5)
    assert conn.receive_data(data) == [connect, pub(1, 1), PingReq()]
    assert conn.inbound_inflight == 1


def test_auth_allowed_on_v5_after_an_authentication_method() -> None:
    conn = ServerConnection(max_packet_size=1024, receive_maximum=10, topic_alias_maximum=0)
    method = Properties(authentication_method="m")
    connect = Connect(protocol_version=V5, client_id="c", properties=method)
    auth = Auth(reason_code=0x18, properties=method)
    assert conn.receive_data(encode(connect, V5) + encode(auth, V5)) == [connect, auth]


def test_auth_without_an_authentication_method_is_a_protocol_error() -> None:
    # [MQTT-4.12.0-7]: without a method in the CONNECT the client must not send AUTH.
    conn = connected(V5)
    auth = Auth(reason_code=0x18, properties=Properties(authentication_method="m"))
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(encode(auth, V5))
    assert conn.error_bytes(info.value) == b"\xe0\x01\x82"


def test_auth_refused_on_v3() -> None:
    conn = connected(V3)
    with pytest.raises(MalformedPacket):  # packet type 15 is reserved in 3.1.1
        conn.receive_data(b"\xf0\x00")


def test_errors_are_sticky() -> None:
    conn = connected(V5)
    with pytest.raises(MalformedPacket):
        conn.receive_data(b"\x00\x00")
    assert isinstance(conn.error, MalformedPacket)
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(encode(PingReq(), V5))
    assert info.value.reason_code == ReasonCode.MALFORMED_PACKET


# -- topic aliases ------------------------------------------------------------------------------


def test_topic_alias_defined_then_used() -> None:
    conn = connected(V5)
    define = Publish(topic="a/b", payload=b"1", properties=Properties(topic_alias=2))
    use = Publish(topic="", payload=b"2", properties=Properties(topic_alias=2, content_type="x"))
    out = conn.receive_data(encode(define, V5) + encode(use, V5))
    assert out == [
        Publish(topic="a/b", payload=b"1"),
        Publish(topic="a/b", payload=b"2", properties=Properties(content_type="x")),
    ]
    # Redefinition replaces the mapping (§3.3.2.3.4).
    redefine = Publish(topic="c", properties=Properties(topic_alias=2))
    out = conn.receive_data(
        encode(redefine, V5) + encode(Publish(topic="", properties=Properties(topic_alias=2)), V5)
    )
    assert [p.topic for p in out if isinstance(p, Publish)] == ["c", "c"]


def test_publish_without_alias_is_returned_unchanged() -> None:
    conn = connected(V5)
    packet = Publish(topic="t", properties=Properties(content_type="x"))
    [out] = conn.receive_data(encode(packet, V5))
    assert out == packet


@pytest.mark.parametrize("alias", [6, 0xFFFF])
def test_topic_alias_above_maximum(alias: int) -> None:
    conn = connected(V5, topic_alias_maximum=5)
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(encode(Publish(topic="t", properties=Properties(topic_alias=alias)), V5))
    assert info.value.reason_code == ReasonCode.TOPIC_ALIAS_INVALID
    assert conn.error_bytes(info.value) == b"\xe0\x01\x94"


def test_topic_alias_zero() -> None:
    conn = connected(V5)
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(bytes.fromhex("30 07 0001 74 03 23 0000"))
    assert info.value.reason_code == ReasonCode.TOPIC_ALIAS_INVALID


def test_topic_alias_when_server_allows_none() -> None:
    conn = connected(V5, topic_alias_maximum=0)
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(encode(Publish(topic="t", properties=Properties(topic_alias=1)), V5))
    assert info.value.reason_code == ReasonCode.TOPIC_ALIAS_INVALID


def test_unknown_topic_alias_with_empty_topic() -> None:
    conn = connected(V5)
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(encode(Publish(topic="", properties=Properties(topic_alias=1)), V5))
    assert info.value.reason_code == ReasonCode.PROTOCOL_ERROR


def test_subscription_identifier_from_client_is_refused() -> None:
    conn = connected(V5)
    packet = Publish(topic="t", properties=Properties(subscription_identifiers=(1,)))
    with pytest.raises(ProtocolError):
        conn.receive_data(encode(packet, V5))


# -- Receive Maximum ----------------------------------------------------------------------------


def test_receive_maximum_exceeded() -> None:
    conn = connected(V5, receive_maximum=2)
    conn.receive_data(encode(pub(1, 1), V5) + encode(pub(2, 2), V5))
    assert conn.inbound_inflight == 2
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(encode(pub(1, 3), V5))
    assert info.value.reason_code == ReasonCode.RECEIVE_MAXIMUM_EXCEEDED
    assert conn.error_bytes(info.value) == b"\xe0\x01\x93"


def test_qos0_does_not_count() -> None:
    conn = connected(V5, receive_maximum=1)
    conn.receive_data(encode(pub(1, 1), V5) + encode(pub(0), V5) * 5)
    assert conn.inbound_inflight == 1


def test_puback_completes_qos1() -> None:
    conn = connected(V5, receive_maximum=1)
    conn.receive_data(encode(pub(1, 1), V5))
    assert conn.send(PubAck(packet_id=1)) == b"\x40\x02\x00\x01"
    conn.receive_data(encode(pub(1, 2), V5))
    assert conn.puback_bytes(2, 0x10) == b"\x40\x03\x00\x02\x10"
    conn.receive_data(encode(pub(1, 3), V5))
    assert conn.inbound_inflight == 1


def test_qos2_completes_on_pubcomp_or_failed_pubrec() -> None:
    conn = connected(V5, receive_maximum=1)
    conn.receive_data(encode(pub(2, 1), V5))
    assert conn.pubrec_bytes(1) == b"\x50\x02\x00\x01"
    assert conn.inbound_inflight == 1  # still uncompleted until PUBCOMP
    with pytest.raises(ProtocolError):
        connected(V5, receive_maximum=1).receive_data(encode(pub(2, 1), V5) + encode(pub(2, 2), V5))
    assert conn.receive_data(encode(PubRel(packet_id=1), V5)) == [PubRel(packet_id=1)]
    conn.send(PubComp(packet_id=1))
    assert conn.inbound_inflight == 0
    conn.receive_data(encode(pub(2, 2), V5))
    conn.send(PubRec(packet_id=2, reason_code=0x80))
    assert conn.inbound_inflight == 0
    conn.receive_data(encode(pub(2, 3), V5))
    assert conn.pubrec_bytes(3, 0x97) == b"\x50\x03\x00\x03\x97"
    assert conn.inbound_inflight == 0
    conn.receive_data(encode(pub(2, 4), V5))
    assert conn.pubcomp_bytes(4) == b"\x70\x02\x00\x04"
    assert conn.inbound_inflight == 0


def test_retransmission_does_not_take_a_second_slot() -> None:
    conn = connected(V5, receive_maximum=1)
    first = pub(2, 7)
    again = Publish(topic="t", qos=2, packet_id=7, dup=True)
    conn.receive_data(encode(first, V5) + encode(again, V5))
    assert conn.inbound_inflight == 1


def test_receive_maximum_not_enforced_on_v3() -> None:
    conn = connected(V3, receive_maximum=1)
    conn.receive_data(b"".join(encode(pub(1, i), V3) for i in range(1, 4)))
    assert conn.inbound_inflight == 3
    assert conn.puback_bytes(1, 0x80) == b"\x40\x02\x00\x01"  # 3.1.1 has no reason code
    assert conn.inbound_inflight == 2


# -- sizes and error replies ----------------------------------------------------------------------


def test_max_packet_size_before_body() -> None:
    conn = connected(V5, max_packet_size=50)
    with pytest.raises(PacketTooLarge) as info:
        conn.receive_data(b"\x30\x40")
    assert conn.error_bytes(info.value) == b"\xe0\x01\x95"


def test_error_bytes_on_v3_is_just_close() -> None:
    conn = connected(V3)
    with pytest.raises(MalformedPacket) as info:
        conn.receive_data(b"\x40\x03\x00\x01\x00")
    assert conn.error_bytes(info.value) == b""


@pytest.mark.parametrize(
    ("connect", "reply"),
    [
        # 3.1.1-style CONNACK rc=1 for an unknown level or name ([MQTT-3.1.2-2]).
        ("10 0d 0004 4d515454 06 02 0000 0001 63", "20 02 00 01"),
        ("10 0d 0004 4d515458 04 02 0000 0001 63", "20 02 00 01"),
        ("10 0f 0006 4d5149736470 04 02 0000 0001 63", "20 02 00 01"),
        # v5 level with a wrong name: v5 CONNACK 0x84.
        ("10 0f 0006 4d5149736470 05 02 0000 0001 63", "20 03 00 84 00"),
    ],
)
def test_unsupported_version_reply(connect: str, reply: str) -> None:
    conn = ServerConnection(max_packet_size=1024, receive_maximum=10, topic_alias_maximum=0)
    with pytest.raises(UnsupportedProtocolVersion) as info:
        conn.receive_data(bytes.fromhex(connect))
    assert conn.error_bytes(info.value) == bytes.fromhex(reply)


def test_malformed_v5_connect_gets_connack() -> None:
    conn = ServerConnection(max_packet_size=1024, receive_maximum=10, topic_alias_maximum=0)
    with pytest.raises(MalformedPacket) as info:
        conn.receive_data(bytes.fromhex("10 0e 0004 4d515454 05 03 0000 00 0001 63"))
    assert conn.error_bytes(info.value) == b"\x20\x03\x00\x81\x00"


def test_malformed_v3_connect_just_closes() -> None:
    conn = ServerConnection(max_packet_size=1024, receive_maximum=10, topic_alias_maximum=0)
    with pytest.raises(MalformedPacket) as info:
        conn.receive_data(bytes.fromhex("10 0d 0004 4d515454 04 03 0000 0001 63"))
    assert conn.error_bytes(info.value) == b""


def test_send_uses_negotiated_version() -> None:
    conn = connected(V3)
    assert conn.send(ConnAck()) == b"\x20\x02\x00\x00"
    assert (
        conn.publish_bytes("t", b"x", 1, False, False, 5, b"\x00") == b"\x32\x06\x00\x01t\x00\x05x"
    )
    conn5 = connected(V5)
    assert conn5.send(ConnAck()) == b"\x20\x03\x00\x00\x00"
    assert conn5.publish_bytes("t", b"x", 0, True, False, None) == b"\x31\x05\x00\x01t\x00x"


def test_outbound_qos2_pubrel_and_limits() -> None:
    conn = connected(V5, max_packet_size=777)
    assert conn.max_packet_size == 777
    assert conn.pubrel_bytes(9) == b"\x62\x02\x00\x09"
    assert conn.pubrel_bytes(9, 0x92) == b"\x62\x03\x00\x09\x92"
    assert conn.inbound_inflight == 0


def test_send_before_connect_is_a_bug() -> None:
    conn = ServerConnection(max_packet_size=1024, receive_maximum=10, topic_alias_maximum=0)
    with pytest.raises(RuntimeError):
        conn.send(ConnAck())
