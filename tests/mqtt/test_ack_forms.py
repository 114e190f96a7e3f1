"""The forms of the v5 acknowledgements, DISCONNECT and AUTH the hub writes (sans-IO).

§3.4.2.1 (and §3.5.2.1, §3.6.2.1, §3.7.2.1): "The Reason Code and Property Length can be
omitted if the Reason Code is 0x00 (Success) and there are no Properties": remaining length 2,
the same bytes as 3.1.1. §3.4.2.2.1: with a reason code and no properties, the Property Length
may be left out (remaining length 3). With properties, everything is written. §3.14.2.1 /
§3.15.2.1: DISCONNECT and AUTH with 0x00 and no properties have remaining length 0.
"""

from __future__ import annotations

import pytest

from thinghub.mqtt.codec import Decoder, encode
from thinghub.mqtt.connection import ServerConnection
from thinghub.mqtt.packets import Auth, Connect, Disconnect, Packet, PubAck, PubComp, PubRec, PubRel
from thinghub.mqtt.properties import Properties
from thinghub.mqtt.types import ProtocolVersion

V3 = ProtocolVersion.V311
V5 = ProtocolVersion.V5
WHY = Properties(reason_string="x")  # 1f 0001 78: property length 4
ACKS = [(PubAck, 0x40, 0x10), (PubRec, 0x50, 0x10), (PubRel, 0x62, 0x92), (PubComp, 0x70, 0x92)]


@pytest.mark.parametrize(("cls", "first", "code"), ACKS, ids=[c.__name__ for c, _, _ in ACKS])
def test_ack_forms(cls: type[PubAck], first: int, code: int) -> None:
    head = bytes((first,))
    forms = [
        # (packet, v5 bytes, 3.1.1 bytes)
        (cls(packet_id=1), head + bytes.fromhex("02 0001"), head + bytes.fromhex("02 0001")),
        (cls(packet_id=1, properties=Properties()), head + bytes.fromhex("02 0001"), None),
        (cls(packet_id=1, reason_code=code), head + bytes((3, 0, 1, code)), None),
        (cls(packet_id=1, properties=WHY), head + bytes.fromhex("08 0001 00 04 1f000178"), None),
        (
            cls(packet_id=1, reason_code=code, properties=WHY),
            head + bytes((8, 0, 1, code)) + bytes.fromhex("04 1f000178"),
            None,
        ),
    ]
    for packet, v5, v3 in forms:
        assert encode(packet, V5) == v5, packet
        decoder = Decoder(1024)
        decoder.version = V5
        assert decoder.feed(v5) == [packet]
        # 3.1.1 has neither reason codes nor properties: always the 2-byte form.
        assert encode(packet, V3) == (v3 or head + bytes.fromhex("02 0001"))


def connected(version: ProtocolVersion) -> ServerConnection:
    conn = ServerConnection(max_packet_size=1024, receive_maximum=10, topic_alias_maximum=0)
    conn.receive_data(encode(Connect(protocol_version=version, client_id="c"), version))
    return conn


@pytest.mark.parametrize("version", [V5, V3], ids=["v5", "v311"])
def test_connection_ack_helpers_write_the_short_form(version: ProtocolVersion) -> None:
    conn = connected(version)
    assert conn.puback_bytes(1) == bytes.fromhex("40 02 0001")
    assert conn.pubrec_bytes(2) == bytes.fromhex("50 02 0002")
    assert conn.pubrel_bytes(3) == bytes.fromhex("62 02 0003")
    assert conn.pubcomp_bytes(4) == bytes.fromhex("70 02 0004")
    assert conn.send(PubAck(packet_id=5)) == bytes.fromhex("40 02 0005")
    failed = conn.puback_bytes(6, 0x97)
    assert failed == (
        bytes.fromhex("40 03 0006 97") if version == V5 else bytes.fromhex("40 02 0006")
    )


@pytest.mark.parametrize(
    ("packet", "hexwire"),
    [
        (Disconnect(), "e0 00"),
        (Disconnect(properties=Properties()), "e0 00"),
        (Disconnect(reason_code=0x04), "e0 01 04"),
        (Disconnect(properties=WHY), "e0 06 00 04 1f000178"),
        (Disconnect(reason_code=0x8B, properties=WHY), "e0 06 8b 04 1f000178"),
        (Auth(), "f0 00"),
        (Auth(reason_code=0x18), "f0 01 18"),
    ],
)
def test_disconnect_and_auth_forms(packet: Packet, hexwire: str) -> None:
    assert encode(packet, V5) == bytes.fromhex(hexwire)


def test_311_disconnect_is_always_empty() -> None:
    assert encode(Disconnect(reason_code=0x8B, properties=WHY), V3) == b"\xe0\x00"
