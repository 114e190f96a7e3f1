"""Wire codec for MQTT 3.1 / 3.1.1 / 5.0 control packets: bytes <-> ``packets`` values.

Theory of operation
-------------------
Every MQTT packet is ``first byte | remaining length (1-4 byte variable byte integer) | body``
(§2.1.1). The first byte's upper nibble is the packet type and the lower nibble its flags.

* ``Decoder.feed(data)`` appends ``data`` to what is left over from earlier calls and cuts out
  every complete packet, returning them in order. Bytes of an incomplete packet stay buffered
  (as a list of chunks, joined only once enough has arrived, so a large packet delivered in
  many small reads costs O(n), not O(n^2)). As soon as a fixed header is complete its declared
  size is checked against ``max_packet_size``, so an oversized packet is refused before its
  body is buffered (mosquitto ``packet_mosq.c`` does the same; §3.1.2.11.4 counts the whole
  packet, fixed header included).
* The body of each packet is decoded by ``decode_packet``; PUBLISH and PUBACK, which make up
  nearly all the traffic of a busy broker, take an inlined fast path inside ``feed`` that works
  on offsets into the receive buffer. The fast path only accepts the common well-formed shapes
  (no v5 properties); anything else falls through to the general decoder, so every validation
  rule lives in one place.
* A packet's protocol family matters for nearly every packet type but is only stated in
  CONNECT (§3.1.2.2). ``Decoder.version`` is therefore ``None`` until a CONNECT is decoded (or
  the owner sets it, e.g. on the client side); any other packet before that is a Protocol
  Error (§3.1.0, [MQTT-3.1.0-1]).
* Errors are raised as ``MalformedPacket`` (0x81: bytes that do not parse), ``ProtocolError``
  (0x82 or a more specific reason code: parses, but breaks a rule), ``PacketTooLarge`` (0x95)
  or ``UnsupportedProtocolVersion`` (0x84). Nothing else escapes the decoder: a fuzz test
  feeds random bytes to make sure of that. When a packet is wrong in several ways, the order
  of ``fixed_header``'s table decides which error it is: its first byte (packet type, then
  flags; judged as soon as that byte arrives), its size, then its syntax, then its values.
  A server's decoder (``Decoder(..., server=True)``) also refuses, by type, the packets a
  client may not send.
* ``encode(packet, version)`` renders any packet; ``encode_publish`` is the broker's fan-out
  fast path and takes an already-encoded v5 property block so one message delivered to many
  subscribers encodes its properties once.

Section numbers are those of MQTT 5.0 (OASIS Standard, 7 March 2019) unless "3.1.1" is said.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from typing import Any, Final, TypeVar

from .errors import (
    MalformedPacket,
    MQTTError,
    PacketTooLarge,
    ProtocolError,
    UnsupportedProtocolVersion,
)
from .fixed_header import BEFORE_CONNECT, PERMISSIVE, Verdicts, server_verdicts
from .packets import (
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
from .properties import ALLOWED, NO_PROPERTIES, WILL, Properties
from .types import PacketType, PropertyId, ProtocolVersion, ReasonCode

__all__ = [
    "MAX_REMAINING_LENGTH",
    "Decoder",
    "decode_packet",
    "encode",
    "encode_properties",
    "encode_publish",
    "protocol_version_of",
]

# §1.5.5: a Variable Byte Integer has at most 4 bytes, so 268,435,455 is the largest value.
MAX_REMAINING_LENGTH: Final = 268_435_455

_V5: Final = ProtocolVersion.V5
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_PACK_U16 = _U16.pack
_PACK_U32 = _U32.pack
_UNPACK_U32 = _U32.unpack_from
# first byte, 1-byte remaining length, topic length: the header of every small PUBLISH.
_PACK_PUB_HEAD = struct.Struct(">BBH").pack
_ONE_BYTE: Final = tuple(bytes((i,)) for i in range(256))
# Protocol Errors noted while a body is parsed, raised once it has parsed (decode_packet).
_Problems = list[ProtocolError]


# --------------------------------------------------------------------------------------------
# Primitive data types (§1.5)
# --------------------------------------------------------------------------------------------


def _encode_varint(value: int) -> bytes:
    """Variable Byte Integer (§1.5.5), least significant 7 bits first."""
    if value < 0x80:
        return _ONE_BYTE[value]
    if value > MAX_REMAINING_LENGTH:
        raise ValueError(f"{value} does not fit a Variable Byte Integer")
    out = bytearray()
    while True:
        digit = value & 0x7F
        value >>= 7
        if value:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = 0
    shift = 0
    for _ in range(4):
        if pos >= end:
            raise MalformedPacket("truncated Variable Byte Integer")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            # [MQTT-1.5.5-1] the encoding must use the minimum number of bytes: a trailing
            # zero digit after the first byte means it did not.
            if shift and not byte:
                raise MalformedPacket("Variable Byte Integer is not minimally encoded")
            return value, pos
        shift += 7
    # §1.5.5: a fifth byte would be needed; that is a Malformed Packet.
    raise MalformedPacket("Variable Byte Integer longer than 4 bytes")


def _read_u16(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    if pos + 2 > end:
        raise MalformedPacket("truncated Two Byte Integer")
    return (buf[pos] << 8) | buf[pos + 1], pos + 2


def _read_packet_id(buf: bytes, pos: int, end: int, bad: _Problems) -> tuple[int, int]:
    packet_id, pos = _read_u16(buf, pos, end)
    if not packet_id:
        # [MQTT-2.2.1-3] PUBLISH (QoS > 0), SUBSCRIBE and UNSUBSCRIBE carry a non-zero id; the
        # acknowledgements echo it, so 0 can never be right there either.
        bad.append(ProtocolError("packet identifier 0"))
    return packet_id, pos


def _read_binary(buf: bytes, pos: int, end: int) -> tuple[bytes, int]:
    """Binary Data (§1.5.6): two byte length, then that many bytes."""
    if pos + 2 > end:
        raise MalformedPacket("truncated Binary Data length")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("truncated Binary Data")
    return buf[pos + 2 : stop], stop


def _read_str(buf: bytes, pos: int, end: int) -> tuple[str, int]:
    """UTF-8 Encoded String (§1.5.4)."""
    if pos + 2 > end:
        raise MalformedPacket("truncated UTF-8 string length")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("truncated UTF-8 string")
    try:
        # Python's strict decoder rejects over-long forms and encoded surrogates
        # (U+D800..U+DFFF, [MQTT-1.5.4-1]), i.e. exactly the ill-formed UTF-8 of §1.5.4.
        text = buf[pos + 2 : stop].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("ill-formed UTF-8 string") from None
    if "\x00" in text:
        # [MQTT-1.5.4-2] a string must not include U+0000.
        raise MalformedPacket("UTF-8 string contains U+0000")
    return text, stop


def _str(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError("UTF-8 string longer than 65,535 bytes (§1.5.4)")
    return _PACK_U16(len(data)) + data


def _bin(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError("Binary Data longer than 65,535 bytes (§1.5.6)")
    return _PACK_U16(len(data)) + data


def _check_topic_name(topic: str, *, allow_empty: bool, bad: _Problems) -> None:
    if not topic:
        if not allow_empty:
            # [MQTT-4.7.3-1] Topic Names must be at least one character long.
            bad.append(ProtocolError("empty topic name", ReasonCode.TOPIC_NAME_INVALID))
    elif "+" in topic or "#" in topic:
        # [MQTT-3.3.2-2] a Topic Name must not contain wildcards; v5 names the reason 0x90.
        bad.append(ProtocolError("wildcard in topic name", ReasonCode.TOPIC_NAME_INVALID))


_T = TypeVar("_T")


def _fast_constructor(cls: type[_T]) -> Callable[..., _T]:
    """A keyword-only constructor for the frozen, slotted dataclass ``cls`` that writes the
    slots through their descriptors instead of the generated ``__init__``'s per-field
    ``object.__setattr__`` (a frozen dataclass cannot do better): about twice as fast, which
    matters for the 28-field ``Properties``. It is generated the way dataclasses generates
    ``__init__``. Classes with a ``__post_init__`` or a ``default_factory`` get their real
    constructor, so no validation is ever skipped."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if hasattr(cls, "__post_init__") or any(
        f.default_factory is not dataclasses.MISSING for f in fields
    ):
        return cls
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    params = []
    lines = ["    self = _new(_cls)"]
    for i, field in enumerate(fields):
        namespace[f"_set{i}"] = cls.__dict__[field.name].__set__
        if field.default is dataclasses.MISSING:
            params.append(field.name)
        else:
            namespace[f"_default{i}"] = field.default
            params.append(f"{field.name}=_default{i}")
        lines.append(f"    _set{i}(self, {field.name})")
    source = f"def make(*, {', '.join(params)}):\n" + "\n".join(lines) + "\n    return self\n"
    exec(source, namespace)
    make: Callable[..., _T] = namespace["make"]
    return make


_make_properties = _fast_constructor(Properties)
_make_publish = _fast_constructor(Publish)


# --------------------------------------------------------------------------------------------
# Properties (§2.2.2)
# --------------------------------------------------------------------------------------------

_BYTE, _TWO, _FOUR, _VARINT, _UTF8, _BINARY, _PAIR = range(7)

_P = PropertyId
# (identifier, Properties attribute, data type), in identifier order (§2.2.2.2 table 2-4).
_PROPERTY_TABLE: Final[tuple[tuple[PropertyId, str, int], ...]] = (
    (_P.PAYLOAD_FORMAT_INDICATOR, "payload_format_indicator", _BYTE),
    (_P.MESSAGE_EXPIRY_INTERVAL, "message_expiry_interval", _FOUR),
    (_P.CONTENT_TYPE, "content_type", _UTF8),
    (_P.RESPONSE_TOPIC, "response_topic", _UTF8),
    (_P.CORRELATION_DATA, "correlation_data", _BINARY),
    (_P.SUBSCRIPTION_IDENTIFIER, "subscription_identifiers", _VARINT),
    (_P.SESSION_EXPIRY_INTERVAL, "session_expiry_interval", _FOUR),
    (_P.ASSIGNED_CLIENT_IDENTIFIER, "assigned_client_identifier", _UTF8),
    (_P.SERVER_KEEP_ALIVE, "server_keep_alive", _TWO),
    (_P.AUTHENTICATION_METHOD, "authentication_method", _UTF8),
    (_P.AUTHENTICATION_DATA, "authentication_data", _BINARY),
    (_P.REQUEST_PROBLEM_INFORMATION, "request_problem_information", _BYTE),
    (_P.WILL_DELAY_INTERVAL, "will_delay_interval", _FOUR),
    (_P.REQUEST_RESPONSE_INFORMATION, "request_response_information", _BYTE),
    (_P.RESPONSE_INFORMATION, "response_information", _UTF8),
    (_P.SERVER_REFERENCE, "server_reference", _UTF8),
    (_P.REASON_STRING, "reason_string", _UTF8),
    (_P.RECEIVE_MAXIMUM, "receive_maximum", _TWO),
    (_P.TOPIC_ALIAS_MAXIMUM, "topic_alias_maximum", _TWO),
    (_P.TOPIC_ALIAS, "topic_alias", _TWO),
    (_P.MAXIMUM_QOS, "maximum_qos", _BYTE),
    (_P.RETAIN_AVAILABLE, "retain_available", _BYTE),
    (_P.USER_PROPERTY, "user_properties", _PAIR),
    (_P.MAXIMUM_PACKET_SIZE, "maximum_packet_size", _FOUR),
    (_P.WILDCARD_SUBSCRIPTION_AVAILABLE, "wildcard_subscription_available", _BYTE),
    (_P.SUBSCRIPTION_IDENTIFIER_AVAILABLE, "subscription_identifier_available", _BYTE),
    (_P.SHARED_SUBSCRIPTION_AVAILABLE, "shared_subscription_available", _BYTE),
)
_PROPERTY_SPEC: Final = {int(pid): (attr, kind) for pid, attr, kind in _PROPERTY_TABLE}

# Values the spec calls a Protocol Error: (lowest allowed, highest allowed, reason code).
_BOOLEAN = (0, 1, ReasonCode.PROTOCOL_ERROR)
_PROPERTY_RANGE: Final[dict[int, tuple[int, int, ReasonCode]]] = {
    # §3.3.2.3.2 the indicator is 0 (bytes) or 1 (UTF-8).
    _P.PAYLOAD_FORMAT_INDICATOR: _BOOLEAN,
    # §3.1.2.11.7 / §3.1.2.11.6: "a value other than 0 or 1" is a Protocol Error.
    _P.REQUEST_PROBLEM_INFORMATION: _BOOLEAN,
    _P.REQUEST_RESPONSE_INFORMATION: _BOOLEAN,
    # §3.2.2.3.4-5, §3.2.2.3.11-13: CONNACK capability bytes are 0 or 1.
    _P.MAXIMUM_QOS: _BOOLEAN,
    _P.RETAIN_AVAILABLE: _BOOLEAN,
    _P.WILDCARD_SUBSCRIPTION_AVAILABLE: _BOOLEAN,
    _P.SUBSCRIPTION_IDENTIFIER_AVAILABLE: _BOOLEAN,
    _P.SHARED_SUBSCRIPTION_AVAILABLE: _BOOLEAN,
    # §3.1.2.11.3 / §3.2.2.3.3: Receive Maximum 0 is a Protocol Error.
    _P.RECEIVE_MAXIMUM: (1, 0xFFFF, ReasonCode.PROTOCOL_ERROR),
    # §3.1.2.11.4 / §3.2.2.3.6: Maximum Packet Size 0 is a Protocol Error.
    _P.MAXIMUM_PACKET_SIZE: (1, 0xFFFFFFFF, ReasonCode.PROTOCOL_ERROR),
    # §3.3.2.3.8: Subscription Identifier 0 is a Protocol Error.
    _P.SUBSCRIPTION_IDENTIFIER: (1, MAX_REMAINING_LENGTH, ReasonCode.PROTOCOL_ERROR),
    # [MQTT-3.3.2-8] Topic Alias 0 is not permitted; 0x94 is the reason that names it.
    _P.TOPIC_ALIAS: (1, 0xFFFF, ReasonCode.TOPIC_ALIAS_INVALID),
}
_REPEATABLE: Final = frozenset({int(_P.USER_PROPERTY), int(_P.SUBSCRIPTION_IDENTIFIER)})
_SUBSCRIPTION_ID: Final = int(_P.SUBSCRIPTION_IDENTIFIER)
_USER_PROPERTY: Final = int(_P.USER_PROPERTY)


def _read_properties(
    buf: bytes, pos: int, end: int, where: PacketType | str, bad: _Problems
) -> tuple[Properties, int]:
    """Read a property block (length prefix included) that must fit in ``buf[pos:end]``.
    Values the spec forbids are noted in ``bad``; bytes that do not parse raise."""
    length, pos = _read_varint(buf, pos, end)
    if not length:
        return NO_PROPERTIES, pos
    stop = pos + length
    if stop > end:
        raise MalformedPacket("property length exceeds the packet")
    allowed = ALLOWED[where]
    values: dict[str, Any] = {}
    sub_ids: list[int] = []
    users: list[tuple[str, str]] = []
    while pos < stop:
        # The identifier is formally a Variable Byte Integer, but every identifier defined in
        # 5.0 fits in one byte (§2.2.2.2), so a byte >= 0x80 is simply unknown.
        pid = buf[pos]
        pos += 1
        spec = _PROPERTY_SPEC.get(pid)
        if spec is None:
            raise MalformedPacket(f"unknown property 0x{pid:02x}")
        if pid not in allowed:
            # §2.2.2.2: "A Control Packet which contains an Identifier which is not valid for
            # its packet type ... is a Malformed Packet."
            raise MalformedPacket(f"property 0x{pid:02x} not allowed in {where}")
        attr, kind = spec
        value: Any
        if kind == _BYTE:
            if pos >= stop:
                raise MalformedPacket("truncated property")
            value = buf[pos]
            pos += 1
        elif kind == _TWO:
            value, pos = _read_u16(buf, pos, stop)
        elif kind == _FOUR:
            if pos + 4 > stop:
                raise MalformedPacket("truncated property")
            value = _UNPACK_U32(buf, pos)[0]
            pos += 4
        elif kind == _VARINT:
            value, pos = _read_varint(buf, pos, stop)
        elif kind == _UTF8:
            value, pos = _read_str(buf, pos, stop)
        elif kind == _BINARY:
            value, pos = _read_binary(buf, pos, stop)
        else:  # _PAIR (§1.5.7)
            key, pos = _read_str(buf, pos, stop)
            val, pos = _read_str(buf, pos, stop)
            value = (key, val)
        limits = _PROPERTY_RANGE.get(pid)
        if limits is not None and not limits[0] <= value <= limits[1]:
            bad.append(ProtocolError(f"property 0x{pid:02x} has invalid value {value}", limits[2]))
        if pid == _USER_PROPERTY:
            users.append(value)
        elif pid == _SUBSCRIPTION_ID:
            # §3.3.2.3.8: PUBLISH may carry several; §3.8.2.1.2: at most one on SUBSCRIBE.
            if sub_ids and where != PacketType.PUBLISH:
                bad.append(ProtocolError("Subscription Identifier included more than once"))
            sub_ids.append(value)
        elif attr in values:
            # Every property other than the two above may appear once: "It is a Protocol
            # Error to include <property> more than once" (§3.1.2.11 ff.).
            bad.append(ProtocolError(f"property 0x{pid:02x} included more than once"))
        else:
            values[attr] = value
    if sub_ids:
        values["subscription_identifiers"] = tuple(sub_ids)
    if users:
        values["user_properties"] = tuple(users)
    if "authentication_data" in values and "authentication_method" not in values:
        # §3.1.2.11.10 / §3.15.2.2.3: Authentication Data without a Method is a Protocol Error.
        bad.append(ProtocolError("Authentication Data without Authentication Method"))
    return _make_properties(**values), pos


def encode_properties(props: Properties) -> bytes:
    """A v5 property block, length prefix included (§2.2.2.1)."""
    if props is NO_PROPERTIES:
        return b"\x00"
    out = bytearray()
    for pid, attr, kind in _PROPERTY_TABLE:
        value = getattr(props, attr)
        if kind == _PAIR:
            for key, val in value:
                out.append(pid)
                out += _str(key)
                out += _str(val)
        elif pid == _SUBSCRIPTION_ID:
            for sub_id in value:
                out.append(pid)
                out += _encode_varint(sub_id)
        elif value is None:
            continue
        else:
            out.append(pid)
            if kind == _BYTE:
                out.append(value)
            elif kind == _TWO:
                out += _PACK_U16(value)
            elif kind == _FOUR:
                out += _PACK_U32(value)
            elif kind == _UTF8:
                out += _str(value)
            else:  # _BINARY
                out += _bin(value)
    return _encode_varint(len(out)) + out


# --------------------------------------------------------------------------------------------
# Reason codes each v5 packet may carry (§2.4 table 2-6 and the per-packet tables of §3)
# --------------------------------------------------------------------------------------------

_CONNACK_CODES: Final = frozenset(
    {0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C}
    | {0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F}
)
_PUBACK_CODES: Final = frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99})
_PUBREL_CODES: Final = frozenset({0x00, 0x92})
_SUBACK_CODES: Final = frozenset(
    {0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2}
)
_UNSUBACK_CODES: Final = frozenset({0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91})
_DISCONNECT_CODES: Final = frozenset(
    {0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93}
    | {0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1}
    | {0xA2}
)
_AUTH_CODES: Final = frozenset({0x00, 0x18, 0x19})
# 3.1.1 §3.9.3: granted QoS 0-2 or 0x80 Failure; §3.2.2.3: return codes 0-5.
_V3_SUBACK_CODES: Final = frozenset({0x00, 0x01, 0x02, 0x80})
_V3_CONNACK_CODES: Final = frozenset(range(6))


def _check_reason(code: int, valid: frozenset[int], packet: str, bad: _Problems) -> None:
    if code not in valid:
        # The byte parses; its value is not one the packet defines (§1.2: Protocol Error).
        bad.append(ProtocolError(f"reason code 0x{code:02x} is not valid in {packet}"))


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def protocol_version_of(exc: MQTTError) -> int | None:
    """The Protocol Level byte of the CONNECT that raised ``exc``, if it got that far.

    The broker needs it to answer a bad CONNECT in the right dialect: a v5 CONNACK with the
    reason code, or the 3.1.1 CONNACK return code 0x01 ([MQTT-3.1.2-2])."""
    level = getattr(exc, "protocol_version", None)
    return level if isinstance(level, int) else None


# Protocol name expected for each protocol level (§3.1.2.1; 3.1 used "MQIsdp").
_PROTOCOL_NAMES: Final = {3: "MQIsdp", 4: "MQTT", 5: "MQTT"}


def _decode_connect(body: bytes) -> Connect:
    end = len(body)
    name, pos = _read_str(body, 0, end)
    if pos >= end:
        raise MalformedPacket("CONNECT truncated before the protocol level")
    level = body[pos]
    pos += 1
    if _PROTOCOL_NAMES.get(level) != name:
        # [MQTT-3.1.2-1] wrong name, [MQTT-3.1.2-2] unsupported level: CONNACK 0x84 (v5) or
        # return code 0x01 (3.1.1), then close. Decided before the rest, which is laid out
        # differently in each version.
        exc = UnsupportedProtocolVersion(f"protocol {name!r} level {level} is not supported")
        exc.protocol_version = level  # type: ignore[attr-defined]
        raise exc
    version = ProtocolVersion(level)
    bad: _Problems = []
    try:
        connect = _decode_connect_rest(body, pos, end, version, name, bad)
        if bad:
            raise bad[0]
    except MQTTError as exc:
        exc.protocol_version = level  # type: ignore[attr-defined]
        raise
    return connect


def _decode_connect_rest(
    body: bytes, pos: int, end: int, version: ProtocolVersion, name: str, bad: _Problems
) -> Connect:
    if pos >= end:
        raise MalformedPacket("CONNECT truncated before the connect flags")
    flags = body[pos]
    pos += 1
    if flags & 0x01:
        # [MQTT-3.1.2-3] the reserved flag must be 0.
        raise MalformedPacket("CONNECT reserved flag is set")
    will_flag = flags & 0x04
    will_qos = (flags >> 3) & 0x03
    will_retain = bool(flags & 0x20)
    if not will_flag and (will_qos or will_retain):
        # [MQTT-3.1.2-11] / [MQTT-3.1.2-13]: without a will, Will QoS and Will Retain are 0.
        raise MalformedPacket("Will QoS/Retain set without the Will Flag")
    if will_qos == 3:
        # [MQTT-3.1.2-12]: Will QoS 3 is a Malformed Packet.
        raise MalformedPacket("Will QoS 3")
    has_password = flags & 0x40
    has_username = flags & 0x80
    if has_password and not has_username and version != _V5:
        # 3.1.1 [MQTT-3.1.2-22]: no password without a user name (v5 lifts this, §3.1.2.9).
        raise MalformedPacket("Password Flag set without User Name Flag")
    keep_alive, pos = _read_u16(body, pos, end)
    props = NO_PROPERTIES
    if version == _V5:
        props, pos = _read_properties(body, pos, end, PacketType.CONNECT, bad)
    client_id, pos = _read_str(body, pos, end)
    will = None
    if will_flag:
        will_props = NO_PROPERTIES
        if version == _V5:
            will_props, pos = _read_properties(body, pos, end, WILL, bad)
        will_topic, pos = _read_str(body, pos, end)
        # §3.1.3.3: the Will Topic is a Topic Name, so [MQTT-3.3.2-2] applies to it.
        _check_topic_name(will_topic, allow_empty=False, bad=bad)
        will_payload, pos = _read_binary(body, pos, end)
        will = Will(
            topic=will_topic,
            payload=will_payload,
            qos=will_qos,
            retain=will_retain,
            properties=will_props,
        )
    username = None
    if has_username:
        username, pos = _read_str(body, pos, end)
    password = None
    if has_password:
        password, pos = _read_binary(body, pos, end)
    if pos != end:
        raise MalformedPacket("bytes left over after CONNECT payload")
    return Connect(
        protocol_version=version,
        client_id=client_id,
        clean_start=bool(flags & 0x02),
        keep_alive=keep_alive,
        username=username,
        password=password,
        will=will,
        properties=props,
        protocol_name=name,
    )


def _decode_connack(flags: int, body: bytes, version: ProtocolVersion, bad: _Problems) -> ConnAck:
    end = len(body)
    if end < 2:
        raise MalformedPacket("CONNACK too short")
    ack_flags = body[0]
    if ack_flags & 0xFE:
        # §3.2.2.1 (3.1.1 §3.2.2.1): bits 7-1 of the acknowledge flags are reserved.
        raise MalformedPacket("CONNACK reserved acknowledge flags set")
    code = body[1]
    props = NO_PROPERTIES
    if version == _V5:
        _check_reason(code, _CONNACK_CODES, "CONNACK", bad)
        props, pos = _read_properties(body, 2, end, PacketType.CONNACK, bad)
        if pos != end:
            raise MalformedPacket("bytes left over after CONNACK")
    else:
        if end != 2:
            raise MalformedPacket("3.1.1 CONNACK must have remaining length 2")
        _check_reason(code, _V3_CONNACK_CODES, "CONNACK", bad)
    return ConnAck(session_present=bool(ack_flags), reason_code=code, properties=props)


def _decode_publish(flags: int, body: bytes, version: ProtocolVersion, bad: _Problems) -> Publish:
    # QoS 3 and DUP with QoS 0 never get here: decode_packet refuses them from the first byte.
    qos = (flags >> 1) & 0x03
    end = len(body)
    topic, pos = _read_str(body, 0, end)
    packet_id = None
    if qos:
        packet_id, pos = _read_packet_id(body, pos, end, bad)
    props = NO_PROPERTIES
    if version == _V5:
        props, pos = _read_properties(body, pos, end, PacketType.PUBLISH, bad)
        # §3.3.2.1: a zero-length Topic Name is allowed only together with a Topic Alias
        # (resolved by the connection, which knows the alias table).
        if not topic and props.topic_alias is None:
            bad.append(ProtocolError("empty topic name without a Topic Alias"))
        _check_topic_name(topic, allow_empty=True, bad=bad)
    elif not topic:
        # 3.1.1 [MQTT-4.7.3-1]: a Topic Name is at least one character long.
        bad.append(ProtocolError("empty topic name"))
    else:
        _check_topic_name(topic, allow_empty=False, bad=bad)
    return _make_publish(
        topic=topic,
        payload=body[pos:],
        qos=qos,
        retain=bool(flags & 0x01),
        dup=bool(flags & 0x08),
        packet_id=packet_id,
        properties=props,
    )


_AckClass = type[PubAck] | type[PubRec] | type[PubRel] | type[PubComp]


def _decode_ack(
    cls: _AckClass,
    ptype: PacketType,
    valid: frozenset[int],
    body: bytes,
    version: ProtocolVersion,
    bad: _Problems,
) -> PubAck | PubRec | PubRel | PubComp:
    end = len(body)
    packet_id, pos = _read_packet_id(body, 0, end, bad)
    if version != _V5:
        if end != 2:
            raise MalformedPacket(f"3.1.1 {ptype.name} must have remaining length 2")
        return cls(packet_id=packet_id)
    if end == 2:
        # §3.4.2.1: reason code and properties may be omitted when the reason is 0x00.
        return cls(packet_id=packet_id)
    code = body[pos]
    props = NO_PROPERTIES
    if end > 3:
        # §3.4.2.2.1: with a remaining length below 4 there is no property length.
        props, pos = _read_properties(body, pos + 1, end, ptype, bad)
        if pos != end:
            raise MalformedPacket(f"bytes left over after {ptype.name}")
    _check_reason(code, valid, ptype.name, bad)
    return cls(packet_id=packet_id, reason_code=code, properties=props)


def _decode_puback(flags: int, body: bytes, version: ProtocolVersion, bad: _Problems) -> Packet:
    return _decode_ack(PubAck, PacketType.PUBACK, _PUBACK_CODES, body, version, bad)


def _decode_pubrec(flags: int, body: bytes, version: ProtocolVersion, bad: _Problems) -> Packet:
    return _decode_ack(PubRec, PacketType.PUBREC, _PUBACK_CODES, body, version, bad)


def _decode_pubrel(flags: int, body: bytes, version: ProtocolVersion, bad: _Problems) -> Packet:
    return _decode_ack(PubRel, PacketType.PUBREL, _PUBREL_CODES, body, version, bad)


def _decode_pubcomp(flags: int, body: bytes, version: ProtocolVersion, bad: _Problems) -> Packet:
    return _decode_ack(PubComp, PacketType.PUBCOMP, _PUBREL_CODES, body, version, bad)


def _decode_subscribe(
    flags: int, body: bytes, version: ProtocolVersion, bad: _Problems
) -> Subscribe:
    end = len(body)
    packet_id, pos = _read_packet_id(body, 0, end, bad)
    props = NO_PROPERTIES
    v5 = version == _V5
    if v5:
        props, pos = _read_properties(body, pos, end, PacketType.SUBSCRIBE, bad)
    subs: list[Subscription] = []
    while pos < end:
        topic_filter, pos = _read_str(body, pos, end)
        if pos >= end:
            raise MalformedPacket("SUBSCRIBE topic filter without options")
        options = body[pos]
        pos += 1
        qos = options & 0x03
        if v5:
            if options & 0xC0:
                # [MQTT-3.8.3-5] reserved option bits set: Malformed Packet.
                raise MalformedPacket("SUBSCRIBE reserved option bits set")
            if qos == 3:
                # §3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3".
                bad.append(ProtocolError("SUBSCRIBE with QoS 3"))
            retain_handling = (options >> 4) & 0x03
            if retain_handling == 3:
                # §3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3".
                bad.append(ProtocolError("SUBSCRIBE with Retain Handling 3"))
            subs.append(
                Subscription(
                    topic_filter=topic_filter,
                    qos=qos,
                    no_local=bool(options & 0x04),
                    retain_as_published=bool(options & 0x08),
                    retain_handling=retain_handling,
                )
            )
        else:
            if options & 0xFC or qos == 3:
                # 3.1.1 [MQTT-3.8.3-4]: reserved bits set or QoS 3 is malformed.
                raise MalformedPacket("SUBSCRIBE reserved bits set or QoS 3")
            subs.append(Subscription(topic_filter=topic_filter, qos=qos))
    if not subs:
        # [MQTT-3.8.3-2] (3.1.1 [MQTT-3.8.3-3]): at least one filter; none is a Protocol Error.
        bad.append(ProtocolError("SUBSCRIBE without topic filters"))
    return Subscribe(packet_id=packet_id, subscriptions=tuple(subs), properties=props)


def _decode_codes_tail(
    body: bytes,
    version: ProtocolVersion,
    ptype: PacketType,
    v5_valid: frozenset[int],
    bad: _Problems,
) -> tuple[int, tuple[int, ...], Properties]:
    """Packet id, then (v5) properties, then one reason code per byte: SUBACK and UNSUBACK."""
    end = len(body)
    packet_id, pos = _read_packet_id(body, 0, end, bad)
    props = NO_PROPERTIES
    if version == _V5:
        props, pos = _read_properties(body, pos, end, ptype, bad)
    else:
        v5_valid = _V3_SUBACK_CODES
    codes = tuple(body[pos:])
    for code in codes:
        _check_reason(code, v5_valid, ptype.name, bad)
    if not codes:
        # §3.9.3 / §3.11.3: one reason code per Topic Filter of the request, which had at
        # least one.
        bad.append(ProtocolError(f"{ptype.name} without reason codes"))
    return packet_id, codes, props


def _decode_suback(flags: int, body: bytes, version: ProtocolVersion, bad: _Problems) -> SubAck:
    packet_id, codes, props = _decode_codes_tail(
        body, version, PacketType.SUBACK, _SUBACK_CODES, bad
    )
    return SubAck(packet_id=packet_id, reason_codes=codes, properties=props)


def _decode_unsubscribe(
    flags: int, body: bytes, version: ProtocolVersion, bad: _Problems
) -> Unsubscribe:
    end = len(body)
    packet_id, pos = _read_packet_id(body, 0, end, bad)
    props = NO_PROPERTIES
    if version == _V5:
        props, pos = _read_properties(body, pos, end, PacketType.UNSUBSCRIBE, bad)
    filters: list[str] = []
    while pos < end:
        topic_filter, pos = _read_str(body, pos, end)
        filters.append(topic_filter)
    if not filters:
        # [MQTT-3.10.3-2]: at least one Topic Filter; none is a Protocol Error.
        bad.append(ProtocolError("UNSUBSCRIBE without topic filters"))
    return Unsubscribe(packet_id=packet_id, topic_filters=tuple(filters), properties=props)


def _decode_unsuback(flags: int, body: bytes, version: ProtocolVersion, bad: _Problems) -> UnsubAck:
    if version != _V5:
        # 3.1.1 §3.11: just the packet identifier, no payload.
        packet_id, pos = _read_packet_id(body, 0, len(body), bad)
        if pos != len(body):
            raise MalformedPacket("3.1.1 UNSUBACK must have remaining length 2")
        return UnsubAck(packet_id=packet_id)
    packet_id, codes, props = _decode_codes_tail(
        body, version, PacketType.UNSUBACK, _UNSUBACK_CODES, bad
    )
    return UnsubAck(packet_id=packet_id, reason_codes=codes, properties=props)


_PINGREQ: Final = PingReq()
_PINGRESP: Final = PingResp()


def _decode_pingreq(flags: int, body: bytes, version: ProtocolVersion, bad: _Problems) -> PingReq:
    if body:
        raise MalformedPacket("PINGREQ has no body (§3.12)")
    return _PINGREQ


def _decode_pingresp(flags: int, body: bytes, version: ProtocolVersion, bad: _Problems) -> PingResp:
    if body:
        raise MalformedPacket("PINGRESP has no body (§3.13)")
    return _PINGRESP


def _decode_reason_and_props(
    body: bytes, ptype: PacketType, valid: frozenset[int], bad: _Problems
) -> tuple[int, Properties]:
    """v5 DISCONNECT and AUTH: empty body means reason 0x00 (§3.14.2.1, §3.15.2.1)."""
    end = len(body)
    if not end:
        return 0, NO_PROPERTIES
    code = body[0]
    props = NO_PROPERTIES
    if end > 1:
        props, pos = _read_properties(body, 1, end, ptype, bad)
        if pos != end:
            raise MalformedPacket(f"bytes left over after {ptype.name}")
    _check_reason(code, valid, ptype.name, bad)
    return code, props


_NORMAL_DISCONNECT: Final = Disconnect()


def _decode_disconnect(
    flags: int, body: bytes, version: ProtocolVersion, bad: _Problems
) -> Disconnect:
    if version != _V5:
        if body:
            raise MalformedPacket("3.1.1 DISCONNECT has no body (3.1.1 §3.14)")
        return _NORMAL_DISCONNECT
    code, props = _decode_reason_and_props(body, PacketType.DISCONNECT, _DISCONNECT_CODES, bad)
    return Disconnect(reason_code=code, properties=props)


def _decode_auth(flags: int, body: bytes, version: ProtocolVersion, bad: _Problems) -> Auth:
    if version != _V5:
        # 3.1.1 §2.2.1: packet type 15 is reserved.
        raise MalformedPacket("packet type 15 is reserved in MQTT 3.1.1")
    code, props = _decode_reason_and_props(body, PacketType.AUTH, _AUTH_CODES, bad)
    return Auth(reason_code=code, properties=props)


_BodyDecoder = Callable[[int, bytes, ProtocolVersion, _Problems], Packet]
# Indexed by packet type; CONNECT (1) is handled apart because it carries the version.
_DECODERS: Final[dict[int, _BodyDecoder]] = {
    2: _decode_connack,
    3: _decode_publish,
    4: _decode_puback,
    5: _decode_pubrec,
    6: _decode_pubrel,
    7: _decode_pubcomp,
    8: _decode_subscribe,
    9: _decode_suback,
    10: _decode_unsubscribe,
    11: _decode_unsuback,
    12: _decode_pingreq,
    13: _decode_pingresp,
    14: _decode_disconnect,
    15: _decode_auth,
}


def decode_packet(
    first_byte: int, body: bytes | memoryview, version: ProtocolVersion | None
) -> Packet:
    """Decode one packet from its first byte and its body (everything after the remaining
    length). ``version`` is ignored for CONNECT, which states its own.

    The errors come in the order of the table in ``fixed_header``: the first byte (type 0,
    invalid flags), then anything in the body that does not parse (``MalformedPacket``), and
    only then a value the body holds but the protocol forbids (``ProtocolError``). The body
    decoders note the latter in a list while they parse and the first one is raised at the
    end, so a packet that breaks both kinds of rule is always called malformed."""
    verdict = PERMISSIVE[first_byte]
    if verdict is not None:
        raise verdict[0](verdict[1])
    ptype = first_byte >> 4
    data = body if isinstance(body, bytes) else bytes(body)
    if ptype == 1:
        return _decode_connect(data)
    if version is None:
        # [MQTT-3.1.0-1]: the first packet from the client must be CONNECT.
        raise ProtocolError(f"packet type {ptype} before CONNECT")
    bad: _Problems = []
    packet = _DECODERS[ptype](first_byte & 0x0F, data, version, bad)
    if bad:
        raise bad[0]
    return packet


# Fast-path table for PUBLISH first bytes: (qos, retain, dup) for each well-formed flag
# combination, None for the malformed ones (QoS 3, or DUP with QoS 0) and non-PUBLISH bytes.
_FAST_PUBLISH: Final[tuple[tuple[int, bool, bool] | None, ...]] = tuple(
    (
        ((b >> 1) & 3, bool(b & 1), bool(b & 8))
        if b >> 4 == 3 and (b >> 1) & 3 != 3 and not (b & 8 and not (b >> 1) & 3)
        else None
    )
    for b in range(256)
)

# Building a frozen dataclass through its __init__ costs ~7 object.__setattr__ calls from
# Python; writing the slots through their descriptors is about three times faster. Used only
# on the fast paths, for values that have already been checked. If packets.py ever gains a
# __post_init__, these fast paths must call it too.
_new = object.__new__
_PUB_SLOTS = Publish.__dict__
_set_topic = _PUB_SLOTS["topic"].__set__
_set_payload = _PUB_SLOTS["payload"].__set__
_set_qos = _PUB_SLOTS["qos"].__set__
_set_retain = _PUB_SLOTS["retain"].__set__
_set_dup = _PUB_SLOTS["dup"].__set__
_set_pub_id = _PUB_SLOTS["packet_id"].__set__
_set_pub_props = _PUB_SLOTS["properties"].__set__
_ACK_SLOTS = PubAck.__dict__
_set_ack_id = _ACK_SLOTS["packet_id"].__set__
_set_ack_code = _ACK_SLOTS["reason_code"].__set__
_set_ack_props = _ACK_SLOTS["properties"].__set__


class Decoder:
    """Incremental decoder: ``feed`` bytes as they arrive, get whole packets back.

    ``server=True`` makes it the decoder of a server's connection: once the CONNECT is in, a
    packet the client may not send (a second CONNECT, CONNACK, SUBACK, UNSUBACK, PINGRESP, AUTH
    without an Authentication Method) is refused from its first byte, before its flags, size
    or body are looked at (the decision table in ``fixed_header``). Without it every packet
    type is decoded, as a client or a test needs."""

    __slots__ = (
        "_need",
        "_pending",
        "_pending_len",
        "_server",
        "_verdicts",
        "_version",
        "max_packet_size",
    )

    def __init__(self, max_packet_size: int, *, server: bool = False) -> None:
        self.max_packet_size = max_packet_size
        self._server = server
        self._version: ProtocolVersion | None = None
        # What each possible first byte means in the current state (fixed_header).
        self._verdicts: Verdicts = BEFORE_CONNECT
        # Unconsumed bytes as chunks (None when there are none: most connections sit idle
        # between whole packets, and an empty list costs 56 bytes each), their total length,
        # and how many bytes must be buffered before another packet can possibly complete.
        self._pending: list[bytes] | None = None
        self._pending_len = 0
        self._need = 0

    @property
    def version(self) -> ProtocolVersion | None:
        """The protocol version packets are read in: the CONNECT's, or what the owner set."""
        return self._version

    @version.setter
    def version(self, version: ProtocolVersion | None) -> None:
        # A client's decoder is told the version it connected with; a server's learns it
        # from the CONNECT (feed), where it also learns whether AUTH may follow.
        self._version = version
        self._verdicts = self._verdicts_after(version, auth_method=False)

    def _verdicts_after(self, version: ProtocolVersion | None, *, auth_method: bool) -> Verdicts:
        if version is None:
            return BEFORE_CONNECT
        if self._server:
            return server_verdicts(version, auth_method=auth_method)
        return PERMISSIVE

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a decoded packet."""
        return self._pending_len

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        """Return every packet completed by ``data`` (possibly none), in order."""
        if self._pending:
            # bytes() copies only a mutable buffer the caller may reuse; bytes pass as is.
            self._pending.append(bytes(data))
            self._pending_len += len(data)
            if self._pending_len < self._need:
                return []
            buf = b"".join(self._pending)
            self._pending = None
            self._pending_len = 0
        else:
            buf = bytes(data)  # no copy for bytes; snapshots a caller's bytearray
        n = len(buf)
        pos = 0
        need = 0
        out: list[Packet] = []
        append = out.append
        version = self._version
        v5 = version == _V5
        max_size = self.max_packet_size
        verdicts = self._verdicts
        try:
            while pos < n:
                first = buf[pos]
                verdict = verdicts[first]
                if verdict is not None:
                    # Decided by the first byte alone (fixed_header, steps 1-2): say so now
                    # rather than wait for a length and a body that change nothing.
                    raise verdict[0](verdict[1])
                if n - pos < 2:
                    break
                length = buf[pos + 1]
                if length < 0x80:
                    start = pos + 2
                else:
                    length, start = _fixed_header_length(buf, pos, n)
                    if not start:
                        need = n - pos + 1
                        break
                end = start + length
                if end - pos > max_size:
                    # §3.1.2.11.4 / §3.2.2.3.6: the limit counts the whole packet. Refuse it now,
                    # before its body is buffered.
                    raise PacketTooLarge(
                        f"packet of {end - pos} bytes exceeds maximum packet size {max_size}"
                    )
                if end > n:
                    need = end - pos
                    break

                fast = _FAST_PUBLISH[first]
                if fast is not None and version is not None:
                    # PUBLISH fast path: topic, optional packet id, empty v5 property block.
                    p = start + 2
                    if p <= end:
                        topic_end = p + ((buf[start] << 8) | buf[start + 1])
                        qos = fast[0]
                        payload_at = topic_end + 2 if qos else topic_end
                        if v5:
                            payload_at += 1
                        if (
                            payload_at <= end
                            and topic_end > p
                            and (not qos or buf[topic_end] or buf[topic_end + 1])
                            and (not v5 or buf[payload_at - 1] == 0)
                        ):
                            try:
                                topic = buf[p:topic_end].decode("utf-8")
                            except UnicodeDecodeError:
                                topic = "#"  # let the general decoder report it
                            if "+" not in topic and "#" not in topic and "\x00" not in topic:
                                pub = _new(Publish)
                                _set_topic(pub, topic)
                                _set_payload(pub, buf[payload_at:end])
                                _set_qos(pub, qos)
                                _set_retain(pub, fast[1])
                                _set_dup(pub, fast[2])
                                _set_pub_id(
                                    pub,
                                    (buf[topic_end] << 8) | buf[topic_end + 1] if qos else None,
                                )
                                _set_pub_props(pub, NO_PROPERTIES)
                                append(pub)
                                pos = end
                                continue
                elif first == 0x40 and length == 2 and version is not None:
                    # PUBACK fast path (success, no properties): the reply to every QoS 1 delivery.
                    packet_id = (buf[start] << 8) | buf[start + 1]
                    if packet_id:
                        ack = _new(PubAck)
                        _set_ack_id(ack, packet_id)
                        _set_ack_code(ack, 0)
                        _set_ack_props(ack, NO_PROPERTIES)
                        append(ack)
                        pos = end
                        continue

                pkt = decode_packet(first, buf[start:end], version)
                if version is None and isinstance(pkt, Connect):
                    # The CONNECT decides how everything after it is read (§3.1.2.2), and which
                    # packets may follow it at all (§4.12: AUTH only after an Authentication
                    # Method).
                    self._version = version = pkt.protocol_version
                    v5 = version == _V5
                    verdicts = self._verdicts = self._verdicts_after(
                        version, auth_method=pkt.properties.authentication_method is not None
                    )
                append(pkt)
                pos = end
        except MQTTError as error:
            # The packets before the bad one are whole and were sent first: they are served,
            # then the error ends the connection (the caller reads them from the error).
            error.preceding = out
            raise
        if pos < n:
            self._pending = [buf[pos:] if pos else buf]
            self._pending_len = n - pos
            self._need = need or 2
        return out


def _fixed_header_length(buf: bytes, pos: int, n: int) -> tuple[int, int]:
    """Remaining length of the packet at ``pos`` when it needs more than one byte.

    Returns (length, body start), or (0, 0) if the length bytes have not all arrived yet."""
    value = 0
    shift = 0
    i = pos + 1
    while i < n and i <= pos + 4:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            if not byte:
                # [MQTT-1.5.5-1] minimum number of bytes: a final zero digit is not that.
                raise MalformedPacket("remaining length is not minimally encoded")
            return value, i
        shift += 7
    if i > pos + 4:
        # The fourth length byte still has its continuation bit set: a fifth byte would
        # follow, which §1.5.5 / §2.1.4 forbid (mosquitto packet_mosq.c rejects it too).
        raise MalformedPacket("remaining length longer than 4 bytes")
    return 0, 0


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def _frame(first: int, body: bytes) -> bytes:
    return _ONE_BYTE[first] + _encode_varint(len(body)) + body


def encode_publish(
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    dup: bool,
    packet_id: int | None,
    properties_bytes: bytes | None,
    version: ProtocolVersion,
) -> bytes:
    """A PUBLISH packet (§3.3). ``properties_bytes`` is a v5 property block as made by
    ``encode_properties`` (None means no properties); it is ignored before v5."""
    encoded = topic.encode("utf-8")
    topic_len = len(encoded)
    first = 0x30 | (qos << 1)
    if retain:
        first |= 0x01
    if dup:
        first |= 0x08
    props = b""
    if version == _V5:
        props = b"\x00" if properties_bytes is None else properties_bytes
    if qos:
        if packet_id is None:
            raise ValueError("PUBLISH with QoS > 0 needs a packet identifier (§2.2.1)")
        remaining = 4 + topic_len + len(props) + len(payload)
        if remaining < 0x80 and topic_len < 0x10000:
            return (
                _PACK_PUB_HEAD(first, remaining, topic_len)
                + encoded
                + _PACK_U16(packet_id)
                + props
                + payload
            )
        return _frame(first, _str(topic) + _PACK_U16(packet_id) + props + payload)
    remaining = 2 + topic_len + len(props) + len(payload)
    if remaining < 0x80 and topic_len < 0x10000:
        return _PACK_PUB_HEAD(first, remaining, topic_len) + encoded + props + payload
    return _frame(first, _str(topic) + props + payload)


def _encode_connect(p: Connect, version: ProtocolVersion) -> bytes:
    # CONNECT states its own version; the argument is what the caller thinks it negotiates.
    level = p.protocol_version
    v5 = level == _V5
    name = "MQIsdp" if level == ProtocolVersion.V31 else "MQTT"
    flags = 0
    if p.clean_start:
        flags |= 0x02
    will = p.will
    if will is not None:
        flags |= 0x04 | (will.qos << 3)
        if will.retain:
            flags |= 0x20
    if p.password is not None:
        flags |= 0x40
    if p.username is not None:
        flags |= 0x80
    parts = [_str(name), bytes((level, flags)), _PACK_U16(p.keep_alive)]
    if v5:
        parts.append(encode_properties(p.properties))
    parts.append(_str(p.client_id))
    if will is not None:
        if v5:
            parts.append(encode_properties(will.properties))
        parts.append(_str(will.topic))
        parts.append(_bin(will.payload))
    if p.username is not None:
        parts.append(_str(p.username))
    if p.password is not None:
        parts.append(_bin(p.password))
    return _frame(0x10, b"".join(parts))


def _encode_connack(p: ConnAck, version: ProtocolVersion) -> bytes:
    body = bytes((1 if p.session_present else 0, p.reason_code))
    if version == _V5:
        body += encode_properties(p.properties)
    return _frame(0x20, body)


def _encode_publish_packet(p: Publish, version: ProtocolVersion) -> bytes:
    props = encode_properties(p.properties) if version == _V5 else None
    return encode_publish(p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id, props, version)


def _ack_encoder(
    first: int,
) -> Callable[[PubAck | PubRec | PubRel | PubComp, ProtocolVersion], bytes]:
    def encode_ack(p: PubAck | PubRec | PubRel | PubComp, version: ProtocolVersion) -> bytes:
        body = _PACK_U16(p.packet_id)
        if version == _V5:
            # §3.4.2.1: reason code and property length may be omitted when they are the
            # defaults; §3.4.2.2.1: the property length alone may be omitted.
            if p.properties is not NO_PROPERTIES and p.properties != NO_PROPERTIES:
                body += _ONE_BYTE[p.reason_code] + encode_properties(p.properties)
            elif p.reason_code:
                body += _ONE_BYTE[p.reason_code]
        return _frame(first, body)

    return encode_ack


def _encode_subscribe(p: Subscribe, version: ProtocolVersion) -> bytes:
    parts = [_PACK_U16(p.packet_id)]
    v5 = version == _V5
    if v5:
        parts.append(encode_properties(p.properties))
    for sub in p.subscriptions:
        parts.append(_str(sub.topic_filter))
        options = sub.qos
        if v5:
            options |= sub.retain_handling << 4
            if sub.no_local:
                options |= 0x04
            if sub.retain_as_published:
                options |= 0x08
        parts.append(_ONE_BYTE[options])
    return _frame(0x82, b"".join(parts))


def _encode_suback(p: SubAck, version: ProtocolVersion) -> bytes:
    body = _PACK_U16(p.packet_id)
    if version == _V5:
        body += encode_properties(p.properties)
    return _frame(0x90, body + bytes(p.reason_codes))


def _encode_unsubscribe(p: Unsubscribe, version: ProtocolVersion) -> bytes:
    parts = [_PACK_U16(p.packet_id)]
    if version == _V5:
        parts.append(encode_properties(p.properties))
    parts.extend(_str(f) for f in p.topic_filters)
    return _frame(0xA2, b"".join(parts))


def _encode_unsuback(p: UnsubAck, version: ProtocolVersion) -> bytes:
    body = _PACK_U16(p.packet_id)
    if version == _V5:
        body += encode_properties(p.properties) + bytes(p.reason_codes)
    # 3.1.1 §3.11.3: UNSUBACK has no payload, so reason codes are not written.
    return _frame(0xB0, body)


def _encode_pingreq(p: PingReq, version: ProtocolVersion) -> bytes:
    return b"\xc0\x00"


def _encode_pingresp(p: PingResp, version: ProtocolVersion) -> bytes:
    return b"\xd0\x00"


def _reason_and_props(code: int, props: Properties) -> bytes:
    # §3.14.2.1 / §3.15.2.1: a remaining length of 0 means reason 0x00 and no properties; a
    # remaining length of 1 means no properties.
    if props is NO_PROPERTIES or props == NO_PROPERTIES:
        return _ONE_BYTE[code] if code else b""
    return _ONE_BYTE[code] + encode_properties(props)


def _encode_disconnect(p: Disconnect, version: ProtocolVersion) -> bytes:
    if version != _V5:
        return b"\xe0\x00"  # 3.1.1 §3.14: no variable header, no payload
    return _frame(0xE0, _reason_and_props(p.reason_code, p.properties))


def _encode_auth(p: Auth, version: ProtocolVersion) -> bytes:
    if version != _V5:
        raise ValueError("AUTH exists only in MQTT 5 (§3.15)")
    return _frame(0xF0, _reason_and_props(p.reason_code, p.properties))


_ENCODERS: Final[dict[type, Callable[[Any, ProtocolVersion], bytes]]] = {
    Connect: _encode_connect,
    ConnAck: _encode_connack,
    Publish: _encode_publish_packet,
    PubAck: _ack_encoder(0x40),
    PubRec: _ack_encoder(0x50),
    PubRel: _ack_encoder(0x62),  # §2.1.3: PUBREL flags are 0b0010
    PubComp: _ack_encoder(0x70),
    Subscribe: _encode_subscribe,
    SubAck: _encode_suback,
    Unsubscribe: _encode_unsubscribe,
    UnsubAck: _encode_unsuback,
    PingReq: _encode_pingreq,
    PingResp: _encode_pingresp,
    Disconnect: _encode_disconnect,
    Auth: _encode_auth,
}


def encode(packet: Packet, version: ProtocolVersion) -> bytes:
    """Render ``packet`` for a connection speaking ``version``. 3.1/3.1.1 drop properties."""
    return _ENCODERS[type(packet)](packet, version)
