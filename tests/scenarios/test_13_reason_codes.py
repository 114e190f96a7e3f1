"""Which reason code a bad packet gets, swept over every packet type, flags value and body
length; and the short form of the acknowledgements on the wire.

The decision table (thinghub/mqtt/fixed_header.py has the same table with its reasons), server
side, v5, after a successful CONNECT without an Authentication Method. The first rule that
applies wins:

    step  decided from     rule                                                       DISCONNECT
    1     type nibble      type 0 (reserved, 2.1.2)                                     0x81
    1     type nibble      CONNECT again (MQTT-3.1.0-2); CONNACK, SUBACK, UNSUBACK,     0x82
                           PINGRESP (2.1.2: Server to Client only); AUTH without an
                           Authentication Method in the CONNECT (MQTT-4.12.0-7)
    2     flags nibble     not as 2.1.3 table 2-2 lists (MQTT-2.1.3-1); PUBLISH QoS 3   0x81
                           (MQTT-3.3.1-4) or DUP with QoS 0 (MQTT-3.3.1-2)
    3     length           more than 4 bytes (1.5.5) / over Maximum Packet Size     0x81 / 0x95
    4     body             does not parse (cut short, bytes left over, U+0000, ...)     0x81
    5     parsed values    allowed syntax, forbidden value (packet id 0, no topic       0x82
                           filters, empty topic name without alias, ...)
    6     state            connection and session rules (topic alias, receive maximum)  ...

Steps 1 and 2 hold whatever the body is, which is what the sweep shows: each first byte is
sent with bodies of 0 to 4 bytes and one of 200 bytes (a two-byte remaining length). The
outcomes of the first bytes that pass steps 1 and 2 are the table ``BODY_OUTCOMES`` below,
worked out from sections 3.3 to 3.14 by hand.

3.1.1 has no DISCONNECT from the server: the same packets close the connection (3.1.1 4.8).

The sweep is ThingHub's reading of the spec (mosquitto 2.0 answers many of these rows with
another code, or closes without a DISCONNECT), so it is marked thinghub_only.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import pytest
import rawmqtt
from pahoclient import unique
from rawmqtt import (
    AUTH,
    CONNACK,
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
)

MALFORMED, PROTOCOL_ERROR, NOT_FOUND, NO_SUBSCRIBERS = 0x81, 0x82, 0x92, 0x10

# Step 1: packet types a server never takes after the CONNECT, whatever the flags and body.
REFUSED_TYPE = {
    0: MALFORMED,  # reserved (2.1.2), like every reserved value the spec names
    CONNECT: PROTOCOL_ERROR,  # MQTT-3.1.0-2
    CONNACK: PROTOCOL_ERROR,  # 2.1.2: Server to Client
    SUBACK: PROTOCOL_ERROR,
    UNSUBACK: PROTOCOL_ERROR,
    PINGRESP: PROTOCOL_ERROR,
    AUTH: PROTOCOL_ERROR,  # MQTT-4.12.0-7: no Authentication Method in the CONNECT
}
# Step 2: 2.1.3 table 2-2.
REQUIRED_FLAGS = {PUBREL: 0b0010, SUBSCRIBE: 0b0010, UNSUBSCRIBE: 0b0010}


def flags_valid(ptype: int, flags: int) -> bool:
    if ptype == PUBLISH:
        qos = (flags >> 1) & 3
        return qos != 3 and not (flags & 0x08 and qos == 0)
    return flags == REQUIRED_FLAGS.get(ptype, 0)


BODIES = {
    "len0": b"",
    "len1": b"\x00",
    "len2-id1": b"\x00\x01",
    "len2-id0": b"\x00\x00",
    "len3": b"\x00\x01\x00",
    "len4": b"\x00\x01\x00\x00",
    "len200": bytes(200),
}


@dataclass(frozen=True)
class Outcome:
    """What the client sees: the packets the hub sent (type, reason), and whether it then
    closed the connection (``closed``) or answered a PINGREQ (still serving)."""

    packets: tuple[tuple[int, int], ...]
    closed: bool

    def __str__(self) -> str:
        sent = ", ".join(f"{rawmqtt.NAMES[t]} 0x{r:02x}" for t, r in self.packets)
        return f"[{sent}] then {'close' if self.closed else 'still serving'}"


def closed(reason: int | None) -> Outcome:
    """Closed after a DISCONNECT with ``reason``, or (None) after nothing."""
    return Outcome(() if reason is None else ((DISCONNECT, reason),), True)


def serving(*packets: tuple[int, int]) -> Outcome:
    return Outcome(tuple(packets), False)


M, P = closed(MALFORMED), closed(PROTOCOL_ERROR)
ACKS = {
    # An acknowledgement nobody waits for: PUBACK / PUBCOMP are ignored; PUBREC and PUBREL
    # get PUBREL / PUBCOMP 0x92 Packet Identifier not found (3.6.2.1, 3.7.2.1).
    PUBACK: serving(),
    PUBREC: serving((PUBREL, NOT_FOUND)),
    PUBREL: serving((PUBCOMP, NOT_FOUND)),
    PUBCOMP: serving(),
}

# Steps 3-5 for each first byte that passes steps 1-2, by packet type (PUBLISH by QoS) and
# body. "id" is the Two Byte Integer the body starts with.
BODY_OUTCOMES: dict[int | str, dict[str, Outcome]] = {
    # 3.3.2: topic (UTF-8 string), packet id if QoS > 0, properties, payload.
    "publish-qos0": {
        "len0": M,  # topic length cut short
        "len1": M,
        "len2-id1": M,  # topic of 1 byte missing
        "len2-id0": M,  # empty topic, then no property length
        "len3": M,  # topic "\0": MQTT-1.5.4-2
        "len4": M,
        "len200": P,  # empty topic without a Topic Alias (3.3.2.1)
    },
    "publish-qos12": {
        "len0": M,
        "len1": M,
        "len2-id1": M,
        "len2-id0": M,  # empty topic, then the packet identifier cut short
        "len3": M,
        "len4": M,
        "len200": P,  # packet identifier 0 (MQTT-2.2.1-3), empty topic without alias
    },
    # 3.4-3.7: packet id, then optionally reason code and properties.
    **{
        ack: {
            "len0": M,
            "len1": M,
            "len2-id1": ACKS[ack],  # 3.4.2.1: short form, Success
            "len2-id0": P,  # packet identifier 0
            "len3": ACKS[ack],  # reason code 0x00, no property length (3.4.2.2.1)
            "len4": ACKS[ack],
            "len200": M,  # bytes left over: malformed wins over packet identifier 0
        }
        for ack in (PUBACK, PUBREC, PUBREL, PUBCOMP)
    },
    # 3.8.2 / 3.10.2: packet id, properties, then at least one topic filter.
    **{
        request: {
            "len0": M,
            "len1": M,
            "len2-id1": M,  # property length missing
            "len2-id0": M,  # property length missing: malformed wins over packet id 0
            "len3": P,  # no topic filter (MQTT-3.8.3-2, MQTT-3.10.3-2)
            "len4": M,  # topic filter length cut short
            "len200": M,  # last filter cut short (options byte / string length)
        }
        for request in (SUBSCRIBE, UNSUBSCRIBE)
    },
    # 3.12: no variable header, no payload.
    PINGREQ: {name: serving() if not body else M for name, body in BODIES.items()},
    # 3.14.2: reason code and properties, both optional.
    DISCONNECT: {
        "len0": closed(None),  # Normal disconnection (3.14.2.1)
        "len1": closed(None),  # 0x00 without properties
        "len2-id1": M,  # property length 1, no property
        "len2-id0": closed(None),  # 0x00, empty properties
        "len3": M,  # property identifier 0: unknown (2.2.2.2)
        "len4": M,
        "len200": M,  # bytes left over
    },
}


def well_formed_body(ptype: int, flags: int) -> bytes:
    """A body that parses as ``ptype`` on a v5 connection: steps 1-2 must still refuse it."""
    mid = b"\x00\x05"
    if ptype == CONNECT:
        return rawmqtt.connect(unique(), 5)[2:]
    if ptype == CONNACK:
        return b"\x00\x00\x00"
    if ptype == PUBLISH:
        # Empty payload: with RETAIN this deletes (nothing is left on the shared hub).
        return rawmqtt.utf8(unique()) + (mid if (flags >> 1) & 3 else b"") + b"\x00"
    if ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        return mid
    if ptype == SUBSCRIBE:
        return mid + b"\x00" + rawmqtt.utf8(unique()) + b"\x01"
    if ptype == UNSUBSCRIBE:
        return mid + b"\x00" + rawmqtt.utf8(unique())
    if ptype in (SUBACK, UNSUBACK):
        return mid + b"\x00\x00"
    if ptype == AUTH:
        return b"\x18" + rawmqtt.encode_properties({"authentication_method": "SCRAM-SHA-1"})
    return b""  # type 0, PINGREQ, PINGRESP, DISCONNECT


def well_formed_outcome(ptype: int, flags: int) -> Outcome:
    if ptype == PUBLISH:
        # Nobody subscribes to a unique topic: 0x10 No matching subscribers (3.4.2.1).
        qos = (flags >> 1) & 3
        ack = {0: (), 1: ((PUBACK, NO_SUBSCRIBERS),), 2: ((PUBREC, NO_SUBSCRIBERS),)}[qos]
        return serving(*ack)
    if ptype in ACKS:
        return ACKS[ptype]
    if ptype == SUBSCRIBE:
        return serving((SUBACK, 0))  # the granted QoS is in reasons[]; reason stays 0
    if ptype == UNSUBSCRIBE:
        return serving((UNSUBACK, 0))
    if ptype == PINGREQ:
        return serving()
    return closed(None)  # DISCONNECT: Normal disconnection


def expected(ptype: int, flags: int, body: str) -> Outcome:
    """The table above, applied in its order."""
    if ptype in REFUSED_TYPE:
        return closed(REFUSED_TYPE[ptype])
    if not flags_valid(ptype, flags):
        return M
    if body == "well-formed":
        return well_formed_outcome(ptype, flags)
    if ptype == PUBLISH:
        return BODY_OUTCOMES["publish-qos12" if (flags >> 1) & 3 else "publish-qos0"][body]
    return BODY_OUTCOMES[ptype][body]


def observe(c: rawmqtt.RawClient, probe: bytes) -> Outcome:
    """Send ``probe`` and a PINGREQ: the PINGRESP proves the hub read the probe and goes on."""
    try:
        c.send(probe + rawmqtt.pingreq())
    except OSError:
        pass  # closed already, mid-send: what it sent before is still to be read
    seen: list[tuple[int, int]] = []
    while True:
        pkt = c.recv()
        if pkt is None:
            return Outcome(tuple(seen), True)
        if pkt.type == PINGRESP:
            return Outcome(tuple(seen), False)
        seen.append((pkt.type, pkt.reason))


def sweep(hub, ptype: int, version: int) -> list[str]:
    """Every flags value and body for one packet type; returns the rows that differ. On
    3.1.1 only the rows decided by the first byte (steps 1-2): a plain close."""
    wrong = []
    for flags in range(16):
        bodies = {**BODIES, "well-formed": well_formed_body(ptype, flags)}
        for name, body in bodies.items():
            if version == 5:
                want = expected(ptype, flags, name)
            elif ptype in REFUSED_TYPE or not flags_valid(ptype, flags):
                want = closed(None)
            else:
                continue
            with rawmqtt.RawClient(hub.host, hub.port, version=version) as c:
                c.connect(unique())
                got = observe(c, rawmqtt.packet(ptype, flags, body))
            if got != want:
                first = f"0x{ptype << 4 | flags:02x}"
                wrong.append(f"{first} {name}: expected {want}, got {got}")
    return wrong


def _name(ptype: int) -> str:
    return rawmqtt.NAMES.get(ptype, f"type{ptype}")


@pytest.mark.thinghub_only
@pytest.mark.parametrize("ptype", range(16), ids=_name)
def test_every_first_byte_and_length_after_a_v5_connect(hub, ptype):
    wrong = sweep(hub, ptype, 5)
    assert not wrong, "\n".join(wrong)
    hub.assert_serving()


@pytest.mark.thinghub_only
@pytest.mark.parametrize("ptype", range(16), ids=_name)
def test_first_byte_verdicts_close_a_311_connection(hub, ptype):
    """3.1.1 decides in the same order; type 15 is reserved there too (3.1.1 2.2.1), and
    every refusal is a plain close (3.1.1 4.8)."""
    wrong = sweep(hub, ptype, 4)
    assert not wrong, "\n".join(wrong)


@pytest.mark.thinghub_only
def test_first_byte_verdict_needs_no_length_or_body(hub):
    """A type the server never takes is answered from its first byte: the hub does not wait
    for a remaining length or a body that cannot change the answer (2.1.2)."""
    with rawmqtt.RawClient(hub.host, hub.port, version=5) as c:
        c.connect(unique())
        c.send(b"\x20")  # CONNACK, and nothing more
        sent = c.expect_disconnect()
        assert sent is not None and sent.reason == PROTOCOL_ERROR
    with rawmqtt.RawClient(hub.host, hub.port, version=5) as c:
        c.connect(unique())
        c.send(b"\x36\xff\xff\xff\x7f")  # PUBLISH QoS 3, declaring 256 MB that never come
        sent = c.expect_disconnect()
        assert sent is not None and sent.reason == MALFORMED


@pytest.mark.thinghub_only
def test_the_reported_case(hub):
    """``20 02 02 00`` (a CONNACK with reserved acknowledge flags) after a v5 CONNECT: a
    client never sends CONNACK, so 0x82, although the body is also malformed."""
    with rawmqtt.RawClient(hub.host, hub.port, version=5) as c:
        c.connect(unique())
        c.send(bytes.fromhex("20020200"))
        sent = c.expect_closed()
    assert [(p.type, p.raw) for p in sent] == [(DISCONNECT, b"\x82")]


# --- short-form acknowledgements ---------------------------------------------------------


def _read_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    out = b""
    while len(out) < n:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = sock.recv(n - len(out))
        assert chunk, f"connection closed after {out!r}"
        out += chunk
    return out


def read_packet(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """One whole packet exactly as it came off the wire: first byte, length bytes, body."""
    deadline = time.monotonic() + timeout
    head = _read_exact(sock, 1, deadline)
    length, mult = 0, 1
    while True:
        byte = _read_exact(sock, 1, deadline)
        head += byte
        length += (byte[0] & 0x7F) * mult
        mult *= 128
        if not byte[0] & 0x80:
            break
    return head + _read_exact(sock, length, deadline)


class Wire:
    """A socket that sees the hub's bytes unparsed (rawmqtt.RawClient parses them)."""

    def __init__(self, hub, version: int) -> None:
        self.version = version
        self.sock = socket.create_connection((hub.host, hub.port), timeout=5)
        self.sock.sendall(rawmqtt.connect(unique(), version))
        connack = read_packet(self.sock)
        assert connack[0] == 0x20 and connack[3] == 0, connack.hex(" ")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next(self) -> bytes:
        return read_packet(self.sock)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def wire(hub):
    made: list[Wire] = []

    def make(version: int) -> Wire:
        made.append(Wire(hub, version))
        return made[-1]

    yield make
    for w in made:
        w.close()


def test_acks_with_success_and_no_properties_use_the_short_form(wire, version):
    """3.4.2.1 / 3.5.2.1 / 3.6.2.1 / 3.7.2.1: reason code Success and no properties: the
    reason code and property length are left out, remaining length 2, as in 3.1.1."""
    t = unique()
    sub = wire(version)
    sub.send(rawmqtt.subscribe(1, t, version, qos=2))
    assert sub.next()[0] == 0x90
    pub = wire(version)
    pub.send(rawmqtt.publish(t, b"one", qos=1, mid=1, version=version))
    assert pub.next() == bytes.fromhex("40 02 00 01")
    pub.send(rawmqtt.publish(t, b"two", qos=2, mid=2, version=version))
    assert pub.next() == bytes.fromhex("50 02 00 02")
    pub.send(rawmqtt.ack(PUBREL, 2, version))
    assert pub.next() == bytes.fromhex("70 02 00 02")
    # The hub's own QoS 2 delivery: its PUBREL is short too.
    got = [sub.next() for _ in range(2)]
    qos2 = next(p for p in got if (p[0] >> 1) & 3 == 2)
    mid = qos2[4 + len(t) : 6 + len(t)]
    sub.send(rawmqtt.ack(PUBREC, int.from_bytes(mid, "big"), version))
    assert sub.next() == b"\x62\x02" + mid


@pytest.mark.thinghub_only
def test_acks_with_a_reason_code_keep_it(wire):
    """A reason code other than Success is sent (3.4.2.2.1: without properties the property
    length may be left out, remaining length 3). (mosquitto answers an unknown packet
    identifier with Success, where 3.6.2.1 / 3.7.2.1 define 0x92.)"""
    w = wire(5)
    w.send(rawmqtt.ack(PUBREL, 7, 5))  # nothing waits for packet identifier 7
    assert w.next() == bytes.fromhex("70 03 00 07 92")
    w.send(rawmqtt.ack(PUBREC, 8, 5))
    assert w.next() == bytes.fromhex("62 03 00 08 92")


def test_311_acks_are_unchanged(wire):
    w = wire(4)
    w.send(rawmqtt.ack(PUBREL, 7, 4))
    assert w.next() == bytes.fromhex("70 02 00 07")


@pytest.mark.parametrize("qos", [1, 2])
def test_paho_v5_completes_flows_with_short_acks(client, qos):
    """paho (v5) takes the short forms: its publish completes on PUBACK / PUBREC + PUBCOMP,
    and a QoS 2 message reaches it only after the hub's PUBREL."""
    t = unique()
    sub = client(5)
    assert sub.subscribe(t, qos) == qos
    pub = client(5)
    for i in range(3):
        assert pub.publish(t, b"m%d" % i, qos) == 0
    assert [m.payload for m in sub.expect_messages(3)] == [b"m0", b"m1", b"m2"]


# --- what came before the bad packet -------------------------------------------------------


@pytest.mark.thinghub_only
@pytest.mark.parametrize("version", [5, 4])
@pytest.mark.parametrize(
    "bad", [bytes.fromhex("20020200"), b"\x36\x01\x00", b"\x00\x00"], ids=["connack", "qos3", "t0"]
)
def test_packets_before_a_bad_one_in_the_same_read_are_served_first(hub, version, bad):
    """Whole packets that precede a bad one in the same TCP segment were sent first: the hub
    serves them (delivers the QoS 0 message, acknowledges the QoS 1 one), then ends the
    connection for the bad packet. It used to drop them with the connection."""
    topic = unique()
    with (
        rawmqtt.RawClient(hub.host, hub.port, version=5) as watcher,
        rawmqtt.RawClient(hub.host, hub.port, version=version) as c,
    ):
        watcher.connect(unique())
        watcher.subscribe(topic, 1)
        c.connect(unique())
        c.send(
            rawmqtt.publish(topic, b"qos0", version=version)
            + rawmqtt.publish(topic, b"qos1", qos=1, mid=7, version=version)
            + bad
        )
        got = c.expect_closed()
        assert [p.type for p in got][:1] == [PUBACK]
        if version == 5:
            assert got[-1].type == DISCONNECT
        payloads = [watcher.expect(PUBLISH).payload for _ in range(2)]
        assert payloads == [b"qos0", b"qos1"]
