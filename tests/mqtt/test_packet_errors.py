"""Which error a bad packet is, and in which order its faults are decided (sans-IO).

The decision table lives in thinghub/mqtt/fixed_header.py. Restated here independently, for a
server after the CONNECT; the first rule that applies wins:

    1  type nibble    type 0 (reserved; 3.1.1 also 15)                       Malformed 0x81
                      CONNECT again, CONNACK, SUBACK, UNSUBACK, PINGRESP,      Protocol  0x82
                      AUTH without an Authentication Method in the CONNECT
    2  flags nibble   not as §2.1.3 table 2-2; PUBLISH QoS 3, DUP with QoS 0   Malformed 0x81
    3  length         over 4 bytes / above the Maximum Packet Size        0x81 / 0x95
    4  body           does not parse                                          Malformed 0x81
    5  values         parse, but the protocol forbids them                    0x82 or named
    6  state          connection rules (aliases, Receive Maximum)             ServerConnection

v5 gets a DISCONNECT with the code, 3.1.1 a plain close (``error_bytes`` is empty).
"""

from __future__ import annotations

import pytest

from thinghub.mqtt.codec import Decoder, encode
from thinghub.mqtt.connection import ServerConnection
from thinghub.mqtt.errors import (
    MalformedPacket,
    MQTTError,
    PacketTooLarge,
    ProtocolError,
)
from thinghub.mqtt.packets import (
    Auth,
    ConnAck,
    Connect,
    Packet,
    PingResp,
    SubAck,
    UnsubAck,
)
from thinghub.mqtt.properties import Properties
from thinghub.mqtt.types import ProtocolVersion, ReasonCode

V3 = ProtocolVersion.V311
V5 = ProtocolVersion.V5
MALFORMED, PROTOCOL_ERROR = ReasonCode.MALFORMED_PACKET, ReasonCode.PROTOCOL_ERROR

# Step 1 (after a CONNECT without an Authentication Method).
REFUSED_V5 = {0: MALFORMED, 1: PROTOCOL_ERROR, 2: PROTOCOL_ERROR, 9: PROTOCOL_ERROR}
REFUSED_V5 |= {11: PROTOCOL_ERROR, 13: PROTOCOL_ERROR, 15: PROTOCOL_ERROR}
REFUSED_V3 = {**REFUSED_V5, 15: MALFORMED}  # 3.1.1 §2.2.1: type 15 is reserved
# Step 2: §2.1.3 table 2-2.
REQUIRED_FLAGS = {6: 2, 8: 2, 10: 2}

BODIES = [b"", b"\x00", b"\x00\x01", b"\x00\x00", b"\x00\x01\x00", b"\x00\x01\x00\x00", bytes(200)]


def flags_valid(first: int) -> bool:
    ptype, flags = first >> 4, first & 0x0F
    if ptype == 3:
        qos = (flags >> 1) & 3
        return qos != 3 and not (flags & 8 and not qos)
    return flags == REQUIRED_FLAGS.get(ptype, 0)


def first_byte_verdict(first: int, version: ProtocolVersion) -> ReasonCode | None:
    refused = REFUSED_V5 if version == V5 else REFUSED_V3
    if first >> 4 in refused:
        return refused[first >> 4]
    return None if flags_valid(first) else MALFORMED


def connected(
    version: ProtocolVersion = V5, *, max_packet_size: int = 1 << 16, **connect_props: object
) -> ServerConnection:
    conn = ServerConnection(
        max_packet_size=max_packet_size, receive_maximum=10, topic_alias_maximum=5
    )
    props = Properties(**connect_props)  # type: ignore[arg-type]
    conn.receive_data(
        encode(Connect(protocol_version=version, client_id="c", properties=props), V5)
    )
    return conn


def frame(first: int, body: bytes) -> bytes:
    n = len(body)
    length = bytes((n,)) if n < 128 else bytes((n & 0x7F | 0x80, n >> 7))
    return bytes((first,)) + length + body


def refusal(conn: ServerConnection, wire: bytes) -> MQTTError:
    with pytest.raises(MQTTError) as info:
        conn.receive_data(wire)
    return info.value


@pytest.mark.parametrize("version", [V5, V3], ids=["v5", "v311"])
@pytest.mark.parametrize("first", range(256), ids=lambda b: f"{b:02x}")
def test_first_byte_decides_whatever_the_body(first: int, version: ProtocolVersion) -> None:
    verdict = first_byte_verdict(first, version)
    if verdict is None:
        return  # the body decides: test_body_faults_come_before_value_faults and the scenarios
    for body in BODIES:
        conn = connected(version)
        error = refusal(conn, frame(first, body))
        assert type(error) is (MalformedPacket if verdict == MALFORMED else ProtocolError)
        assert error.reason_code == verdict, (body, error)
        assert conn.error_bytes(error) == (bytes((0xE0, 1, verdict)) if version == V5 else b"")


@pytest.mark.parametrize("first", [b for b in range(256) if first_byte_verdict(b, V5)])
def test_first_byte_alone_is_enough(first: int) -> None:
    """Nothing past the first byte is waited for, so nothing of such a packet is buffered."""
    error = refusal(connected(V5), bytes((first,)))
    assert error.reason_code == first_byte_verdict(first, V5)


def test_type_and_flags_come_before_the_size() -> None:
    oversized = b"\xff\xff\xff\x7f"  # 268,435,455 bytes declared, against a 1 KB maximum
    for first, reason in [(0x20, PROTOCOL_ERROR), (0x36, MALFORMED), (0xC1, MALFORMED)]:
        error = refusal(connected(V5, max_packet_size=1024), bytes((first,)) + oversized)
        assert error.reason_code == reason
    error = refusal(connected(V5, max_packet_size=1024), b"\xc0" + oversized)
    assert isinstance(error, PacketTooLarge)


def test_the_reported_case() -> None:
    """A CONNACK with reserved acknowledge flags from a v5 client: 0x82, not 0x81."""
    conn = connected(V5)
    assert conn.error_bytes(refusal(conn, bytes.fromhex("20020200"))) == b"\xe0\x01\x82"


def test_a_second_connect_is_a_protocol_error_whatever_it_holds() -> None:
    conn = connected(V5)
    # Before, a second CONNECT naming an unknown protocol got 0x84 (its body was read first).
    other = b"\x10\x0d\x00\x04MQTX\x05\x02\x00\x00\x00\x00\x00"
    assert conn.error_bytes(refusal(conn, other)) == b"\xe0\x01\x82"


# Steps 4 and 5: a fault in the syntax wins over a forbidden value in the same packet.
M, PE = (MalformedPacket, MALFORMED), (ProtocolError, PROTOCOL_ERROR)
TNI = (ProtocolError, ReasonCode.TOPIC_NAME_INVALID)
TAI = (ProtocolError, ReasonCode.TOPIC_ALIAS_INVALID)
ORDER = [
    # (name, wire after a v5 CONNECT, expected): each body holds both kinds of fault, except
    # the "only" rows, which show the value fault is still found.
    ("puback id 0 + leftover", b"\x40\x05\x00\x00\x00\x00\xff", M),
    ("puback id 0 only", b"\x40\x02\x00\x00", PE),
    ("puback bad reason + props overrun", b"\x40\x04\x00\x01\x92\x05", M),
    ("puback bad reason only", b"\x40\x03\x00\x01\x92", PE),
    ("publish qos1 id 0 + props overrun", frame(0x32, b"\x00\x01a\x00\x00\x05"), M),
    ("publish qos1 id 0 only", frame(0x32, b"\x00\x01a\x00\x00\x00"), PE),
    ("publish repeated property + unknown", frame(0x30, b"\0\x01a\x05\x01\0\x01\0\x7f"), M),
    ("publish repeated property only", frame(0x30, b"\x00\x01a\x04\x01\x00\x01\x00"), PE),
    ("publish wildcard topic + bad utf-8", frame(0x30, b"\0\x01#\x04\x03\0\x01\xff"), M),
    ("publish wildcard topic only", frame(0x30, b"\x00\x01#\x00"), TNI),
    ("publish topic alias 0 + leftover props", frame(0x30, b"\x00\x01a\x04\x23\x00\x00\x26"), M),
    ("publish topic alias 0 only", frame(0x30, b"\x00\x01a\x03\x23\x00\x00"), TAI),
    ("subscribe id 0 + no property length", b"\x82\x02\x00\x00", M),
    ("subscribe qos 3 + reserved bits", frame(0x82, b"\0\x01\0\0\x01a\x03\0\x01b\xc0"), M),
    ("subscribe qos 3 only", frame(0x82, b"\x00\x01\x00\x00\x01a\x03"), PE),
    ("subscribe no filters + id 0", b"\x82\x03\x00\x00\x00", PE),
    ("unsubscribe id 0 + cut filter", b"\xa2\x04\x00\x00\x00\x00", M),
    ("disconnect bad reason + props overrun", b"\xe0\x02\x03\x05", M),
    ("disconnect bad reason only", b"\xe0\x01\x03", PE),
]  # fmt: skip


@pytest.mark.parametrize(("wire", "expected"), [pytest.param(w, e, id=n) for n, w, e in ORDER])
def test_body_faults_come_before_value_faults(
    wire: bytes, expected: tuple[type[MQTTError], ReasonCode]
) -> None:
    error = refusal(connected(V5), wire)
    assert (type(error), error.reason_code) == expected
    # The same verdict one byte at a time.
    conn = connected(V5)
    with pytest.raises(expected[0]):
        for i in range(len(wire)):
            conn.receive_data(wire[i : i + 1])


def test_connect_body_faults_come_before_value_faults() -> None:
    # v5 CONNECT: Session Expiry twice (a Protocol Error) and a byte left over (malformed).
    props = b"\x0a\x11\x00\x00\x00\x01\x11\x00\x00\x00\x01"
    body = b"\x00\x04MQTT\x05\x02\x00\x00" + props + b"\x00\x01c"
    for tail, reason in [(b"x", MALFORMED), (b"", PROTOCOL_ERROR)]:
        conn = ServerConnection(max_packet_size=1024, receive_maximum=10, topic_alias_maximum=0)
        error = refusal(conn, frame(0x10, body + tail))
        assert error.reason_code == reason
        assert conn.error_bytes(error) == bytes((0x20, 3, 0, reason, 0))  # CONNACK


# -- AUTH (§4.12, §3.15) ------------------------------------------------------------------------


def test_auth_after_an_authentication_method_is_read_like_any_packet() -> None:
    method = Properties(authentication_method="SCRAM-SHA-1")
    auth = Auth(reason_code=0x18, properties=method)
    conn = connected(V5, authentication_method="SCRAM-SHA-1")
    assert conn.receive_data(encode(auth, V5)) == [auth]
    # Then its flags and values count: [MQTT-3.15.1-1] reserved flags, §3.15.2.1 codes.
    wire = encode(auth, V5)
    error = refusal(connected(V5, authentication_method="m"), bytes((0xF1,)) + wire[1:])
    assert error.reason_code == MALFORMED
    error = refusal(connected(V5, authentication_method="m"), b"\xf0\x01\x04")
    assert error.reason_code == PROTOCOL_ERROR


def test_auth_without_an_authentication_method_is_refused_by_type() -> None:
    # Reserved flags and a bad reason code do not matter: [MQTT-4.12.0-7] comes first.
    for wire in (b"\xf0\x00", b"\xf1\x00", b"\xf0\x01\x04", b"\xff\x05\x00"):
        assert refusal(connected(V5), wire).reason_code == PROTOCOL_ERROR


# -- before the CONNECT, and decoders without a role ----------------------------------------


@pytest.mark.parametrize("first", [b for b in range(256) if b != 0x10])
def test_before_connect_only_a_connect_is_read(first: int) -> None:
    conn = ServerConnection(max_packet_size=1024, receive_maximum=10, topic_alias_maximum=0)
    error = refusal(conn, bytes((first,)))
    expected = MALFORMED if first >> 4 == 1 else PROTOCOL_ERROR  # CONNECT with flags != 0
    assert error.reason_code == expected
    assert conn.error_bytes(error) == b""  # [MQTT-3.1.0-1]: nothing is sent back


@pytest.mark.parametrize(
    "packet",
    [
        ConnAck(),
        SubAck(packet_id=1, reason_codes=(0,)),
        UnsubAck(packet_id=1, reason_codes=(0,)),
        PingResp(),
    ],
    ids=lambda p: type(p).__name__,
)
def test_a_client_decoder_still_reads_server_packets(packet: Packet) -> None:
    d = Decoder(1024)
    d.version = V5
    assert d.feed(encode(packet, V5)) == [packet]
    # Its first-byte checks are the flags only.
    with pytest.raises(MalformedPacket):
        d.feed(bytes((encode(packet, V5)[0] | 1,)))
