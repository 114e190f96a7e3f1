"""A deliberately small raw MQTT client for byte-level scenarios.

It hand-encodes the packets a test needs (MQTT 3.1.1 = protocol level 4, and 5.0) and decodes
whatever the broker sends back into a plain :class:`Packet`.  It never validates what it is asked
to send: malformed-packet scenarios build bytes with the same helpers, then break them on purpose.

It must not import thinghub: the scenarios are black-box tests, and they also run against
mosquitto.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

# Packet types (MQTT 5.0 section 2.1.2; identical in 3.1.1 except AUTH).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)

NAMES = {
    1: "CONNECT",
    2: "CONNACK",
    3: "PUBLISH",
    4: "PUBACK",
    5: "PUBREC",
    6: "PUBREL",
    7: "PUBCOMP",
    8: "SUBSCRIBE",
    9: "SUBACK",
    10: "UNSUBSCRIBE",
    11: "UNSUBACK",
    12: "PINGREQ",
    13: "PINGRESP",
    14: "DISCONNECT",
    15: "AUTH",
}

# MQTT 5.0 properties (section 2.2.2.2): id -> (name, type).
BYTE, U16, U32, VARINT, UTF8, BINARY, PAIR = "byte", "u16", "u32", "varint", "utf8", "bin", "pair"
PROPERTIES: dict[int, tuple[str, str]] = {
    0x01: ("payload_format_indicator", BYTE),
    0x02: ("message_expiry_interval", U32),
    0x03: ("content_type", UTF8),
    0x08: ("response_topic", UTF8),
    0x09: ("correlation_data", BINARY),
    0x0B: ("subscription_identifier", VARINT),
    0x11: ("session_expiry_interval", U32),
    0x12: ("assigned_client_identifier", UTF8),
    0x13: ("server_keep_alive", U16),
    0x15: ("authentication_method", UTF8),
    0x16: ("authentication_data", BINARY),
    0x17: ("request_problem_information", BYTE),
    0x18: ("will_delay_interval", U32),
    0x19: ("request_response_information", BYTE),
    0x1A: ("response_information", UTF8),
    0x1C: ("server_reference", UTF8),
    0x1F: ("reason_string", UTF8),
    0x21: ("receive_maximum", U16),
    0x22: ("topic_alias_maximum", U16),
    0x23: ("topic_alias", U16),
    0x24: ("maximum_qos", BYTE),
    0x25: ("retain_available", BYTE),
    0x26: ("user_property", PAIR),
    0x27: ("maximum_packet_size", U32),
    0x28: ("wildcard_subscription_available", BYTE),
    0x29: ("subscription_identifier_available", BYTE),
    0x2A: ("shared_subscription_available", BYTE),
}
PROPERTY_IDS = {name: pid for pid, (name, _) in PROPERTIES.items()}
# Properties that may legitimately occur more than once (decoded into lists).
REPEATABLE = {"user_property", "subscription_identifier"}


class ProtocolViolation(AssertionError):
    """The broker sent bytes this client cannot decode."""


# --- primitives -----------------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(raw)) + raw


def encode_property(pid: int, value: Any) -> bytes:
    kind = PROPERTIES[pid][1]
    body = {
        BYTE: lambda v: bytes([v]),
        U16: lambda v: struct.pack("!H", v),
        U32: lambda v: struct.pack("!I", v),
        VARINT: varint,
        UTF8: utf8,
        BINARY: utf8,
        PAIR: lambda v: utf8(v[0]) + utf8(v[1]),
    }[kind](value)
    return varint(pid) + body


def encode_properties(props: dict[str, Any] | list[tuple[int, Any]] | bytes | None) -> bytes:
    """Properties block with its length prefix.

    Accepts a dict by name (lists for repeatable ones), a list of (id, value) pairs (to build
    duplicates on purpose) or raw bytes for the block's content.
    """
    if props is None:
        content = b""
    elif isinstance(props, bytes):
        content = props
    elif isinstance(props, dict):
        parts = []
        for name, value in props.items():
            values = value if name in REPEATABLE and isinstance(value, list) else [value]
            parts += [encode_property(PROPERTY_IDS[name], v) for v in values]
        content = b"".join(parts)
    else:
        content = b"".join(encode_property(pid, v) for pid, v in props)
    return varint(len(content)) + content


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([ptype << 4 | flags]) + varint(len(body)) + body


# --- encoders -------------------------------------------------------------------------------


@dataclass
class Will:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: dict[str, Any] | None = None


def connect(
    client_id: str = "",
    version: int = 5,
    *,
    clean: bool = True,
    keepalive: int = 60,
    properties: dict[str, Any] | bytes | list[tuple[int, Any]] | None = None,
    will: Will | None = None,
    username: str | None = None,
    password: bytes | None = None,
) -> bytes:
    flags = (0x02 if clean else 0) | (0x80 if username is not None else 0)
    flags |= 0x40 if password is not None else 0
    payload = utf8(client_id)
    if will is not None:
        flags |= 0x04 | will.qos << 3 | (0x20 if will.retain else 0)
        if version == 5:
            payload += encode_properties(will.properties)
        payload += utf8(will.topic) + utf8(will.payload)
    if username is not None:
        payload += utf8(username)
    if password is not None:
        payload += utf8(password)
    header = utf8("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == 5:
        header += encode_properties(properties)
    return packet(CONNECT, 0, header + payload)


def publish(
    topic: str | bytes,
    payload: bytes = b"",
    *,
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    mid: int = 1,
    version: int = 5,
    properties: dict[str, Any] | bytes | list[tuple[int, Any]] | None = None,
) -> bytes:
    flags = (0x08 if dup else 0) | qos << 1 | (0x01 if retain else 0)
    body = utf8(topic)
    if qos:
        body += struct.pack("!H", mid)
    if version == 5:
        body += encode_properties(properties)
    return packet(PUBLISH, flags, body + payload)


def ack(ptype: int, mid: int, version: int = 5, reason: int = 0) -> bytes:
    """PUBACK, PUBREC, PUBREL (flags 0b0010) or PUBCOMP."""
    body = struct.pack("!H", mid)
    if version == 5 and reason:
        body += bytes([reason])
    return packet(ptype, 0x02 if ptype == PUBREL else 0, body)


def subscribe(
    mid: int,
    filters: list[tuple[str, int]] | str,
    version: int = 5,
    *,
    qos: int = 0,
    properties: dict[str, Any] | None = None,
) -> bytes:
    """`filters` holds (filter, options byte) pairs; a plain string subscribes at `qos`."""
    if isinstance(filters, str):
        filters = [(filters, qos)]
    body = struct.pack("!H", mid)
    if version == 5:
        body += encode_properties(properties)
    for topic_filter, options in filters:
        body += utf8(topic_filter) + bytes([options])
    return packet(SUBSCRIBE, 0x02, body)


def sub_options(
    qos: int = 0, *, no_local: bool = False, retain_as_published: bool = False, rh: int = 0
) -> int:
    """The v5 subscription options byte (section 3.8.3.1)."""
    return qos | (0x04 if no_local else 0) | (0x08 if retain_as_published else 0) | rh << 4


def unsubscribe(mid: int, filters: list[str], version: int = 5) -> bytes:
    body = struct.pack("!H", mid) + (b"\x00" if version == 5 else b"")
    return packet(UNSUBSCRIBE, 0x02, body + b"".join(utf8(f) for f in filters))


def pingreq() -> bytes:
    return b"\xc0\x00"


def disconnect(
    version: int = 5, reason: int = 0, properties: dict[str, Any] | None = None
) -> bytes:
    if version != 5 or (reason == 0 and not properties):
        return b"\xe0\x00"
    return packet(DISCONNECT, 0, bytes([reason]) + encode_properties(properties))


# --- decoder --------------------------------------------------------------------------------


@dataclass
class Packet:
    type: int
    flags: int
    raw: bytes
    mid: int | None = None
    reason: int = 0
    reasons: list[int] = field(default_factory=list)
    properties: dict[str, Any] = field(default_factory=dict)
    session_present: bool = False
    topic: str = ""
    payload: bytes = b""

    @property
    def name(self) -> str:
        return NAMES.get(self.type, f"type {self.type}")

    @property
    def qos(self) -> int:
        return (self.flags >> 1) & 3

    @property
    def retain(self) -> bool:
        return bool(self.flags & 1)

    @property
    def dup(self) -> bool:
        return bool(self.flags & 8)

    def __repr__(self) -> str:
        extra = f" topic={self.topic!r} payload={self.payload[:40]!r}" if self.topic else ""
        return (
            f"<{self.name} mid={self.mid} reason=0x{self.reason:02x} reasons={self.reasons}"
            f" flags={self.flags:#x}{extra} props={self.properties}>"
        )


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolViolation(f"truncated packet {self.data!r}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("!H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("!I", self.take(4))[0])

    def varint(self) -> int:
        value, mult = 0, 1
        for _ in range(4):
            byte = self.u8()
            value += (byte & 0x7F) * mult
            if not byte & 0x80:
                return value
            mult *= 128
        raise ProtocolViolation("variable byte integer longer than 4 bytes")

    def string(self) -> str:
        return self.take(self.u16()).decode()

    def binary(self) -> bytes:
        return self.take(self.u16())

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def properties(self) -> dict[str, Any]:
        end = self.varint() + self.pos
        props: dict[str, Any] = {}
        while self.pos < end:
            pid = self.varint()
            if pid not in PROPERTIES:
                raise ProtocolViolation(f"unknown property id {pid:#x}")
            name, kind = PROPERTIES[pid]
            reader = {
                BYTE: self.u8,
                U16: self.u16,
                U32: self.u32,
                VARINT: self.varint,
                UTF8: self.string,
                BINARY: self.binary,
                PAIR: lambda: (self.string(), self.string()),
            }[kind]
            value = reader()
            if name in REPEATABLE:
                props.setdefault(name, []).append(value)
            elif name in props:
                raise ProtocolViolation(f"duplicated property {name}")
            else:
                props[name] = value
        return props


def decode(ptype: int, flags: int, body: bytes, version: int) -> Packet:
    pkt = Packet(ptype, flags, body)
    r = _Reader(body)
    v5 = version == 5
    if ptype == CONNACK:
        pkt.session_present = bool(r.u8() & 1)
        pkt.reason = r.u8()
        if v5 and r.remaining():
            pkt.properties = r.properties()
    elif ptype == PUBLISH:
        pkt.topic = r.string()
        if (flags >> 1) & 3:
            pkt.mid = r.u16()
        if v5:
            pkt.properties = r.properties()
        pkt.payload = r.take(r.remaining())
    elif ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        pkt.mid = r.u16()
        if v5 and r.remaining():
            pkt.reason = r.u8()
            if r.remaining():
                pkt.properties = r.properties()
    elif ptype in (SUBACK, UNSUBACK):
        pkt.mid = r.u16()
        if v5:
            pkt.properties = r.properties()
        pkt.reasons = list(r.take(r.remaining()))
    elif ptype in (DISCONNECT, AUTH) and r.remaining():
        pkt.reason = r.u8()
        if r.remaining():
            pkt.properties = r.properties()
    return pkt


# --- the client -----------------------------------------------------------------------------


class RawClient:
    """One TCP connection; send bytes, read decoded packets with timeouts."""

    def __init__(self, host: str, port: int, version: int = 5, timeout: float = 5.0) -> None:
        self.version = version
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""
        self.closed = False

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read more bytes; False on EOF or connection reset."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no packet from the broker in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("no packet from the broker in time") from None
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self._buf += chunk
        return True

    def recv(self, timeout: float | None = None) -> Packet | None:
        """Next packet, or None when the broker closed the connection."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if len(self._buf) >= 2:
                length, mult, pos = 0, 1, 1
                while pos < len(self._buf) and pos <= 4:
                    byte = self._buf[pos]
                    length += (byte & 0x7F) * mult
                    mult *= 128
                    pos += 1
                    if not byte & 0x80:
                        break
                else:
                    pos = -1
                if pos > 0 and len(self._buf) >= pos + length:
                    head, body = self._buf[0], self._buf[pos : pos + length]
                    self._buf = self._buf[pos + length :]
                    return decode(head >> 4, head & 0x0F, body, self.version)
            if self.closed or not self._fill(deadline):
                if self._buf:
                    raise ProtocolViolation(f"connection closed mid-packet: {self._buf!r}")
                return None

    def expect(self, ptype: int, timeout: float | None = None) -> Packet:
        pkt = self.recv(timeout)
        assert pkt is not None, f"connection closed while waiting for {NAMES[ptype]}"
        assert pkt.type == ptype, f"expected {NAMES[ptype]}, got {pkt!r}"
        return pkt

    def expect_nothing(self, timeout: float, what: str = "nothing more") -> None:
        """Fail if a packet arrives within ``timeout`` seconds (a bounded check of absence)."""
        try:
            packet = self.recv(timeout)
        except TimeoutError:
            return
        raise AssertionError(f"expected {what}, got {packet!r}")

    def expect_closed(self, timeout: float | None = None) -> list[Packet]:
        """Wait until the broker closes the connection; return what it sent before that."""
        seen: list[Packet] = []
        while True:
            try:
                pkt = self.recv(timeout)
            except TimeoutError:
                raise AssertionError(f"connection still open; received {seen}") from None
            if pkt is None:
                return seen
            seen.append(pkt)

    def expect_disconnect(self, timeout: float | None = None) -> Packet | None:
        """Wait for the close; return the DISCONNECT sent before it, if any."""
        seen = self.expect_closed(timeout)
        others = [p for p in seen if p.type != DISCONNECT]
        assert not others, f"unexpected packets before close: {others}"
        return seen[-1] if seen else None

    def connect(
        self, client_id: str = "", *, expect_reason: int | None = 0, **kwargs: Any
    ) -> Packet:
        self.send(connect(client_id, self.version, **kwargs))
        connack = self.expect(CONNACK)
        if expect_reason is not None:
            assert connack.reason == expect_reason, connack
        return connack

    def subscribe(
        self,
        filters: list[tuple[str, int]] | str,
        qos: int = 0,
        *,
        mid: int = 1,
        properties: dict[str, Any] | None = None,
    ) -> list[int]:
        self.send(subscribe(mid, filters, self.version, qos=qos, properties=properties))
        suback = self.expect(SUBACK)
        assert suback.mid == mid
        return suback.reasons

    def publish(self, topic: str, payload: bytes = b"", **kwargs: Any) -> None:
        self.send(publish(topic, payload, version=self.version, **kwargs))

    def publish_acked(self, topic: str, payload: bytes, qos: int, mid: int = 1, **kw: Any) -> int:
        """Publish at QoS 1 or 2 and complete the flow; returns the broker's reason code."""
        self.publish(topic, payload, qos=qos, mid=mid, **kw)
        if qos == 1:
            return self.expect(PUBACK).reason
        rec = self.expect(PUBREC)
        assert rec.mid == mid
        if rec.reason >= 0x80:
            return rec.reason
        self.send(ack(PUBREL, mid, self.version))
        comp = self.expect(PUBCOMP)
        assert comp.mid == mid
        return rec.reason

    def collect(self, until: bytes, timeout: float | None = None) -> list[Packet]:
        """Receive and acknowledge PUBLISH packets (answering PUBREL too) up to the one whose
        payload is `until`; returns those before it, in arrival order."""
        got: list[Packet] = []
        while True:
            pkt = self.recv(timeout)
            assert pkt is not None, f"connection closed; received {got}"
            if pkt.type == PUBREL:
                self.send(ack(PUBCOMP, pkt.mid or 0, self.version))
                continue
            assert pkt.type == PUBLISH, f"unexpected {pkt!r}"
            if pkt.qos:
                self.send(ack(PUBACK if pkt.qos == 1 else PUBREC, pkt.mid or 0, self.version))
            if pkt.payload == until:
                return got
            got.append(pkt)

    def ping(self, timeout: float | None = None) -> None:
        """Round trip through the broker: proves the connection is alive and caught up."""
        self.send(pingreq())
        self.expect(PINGRESP, timeout)

    def disconnect(self, reason: int = 0, properties: dict[str, Any] | None = None) -> None:
        """DISCONNECT, then wait until the broker has closed: by then it has handled it, so a
        following connection with the same client id cannot overtake it."""
        self.send(disconnect(self.version, reason, properties))
        self.sock.shutdown(socket.SHUT_WR)
        leftovers = self.expect_closed()
        assert all(p.type == PUBLISH for p in leftovers), leftovers
        self.close()
