"""The wire form of a ``Message`` between the nodes of a cluster. Pure.

One NATS message carries one MQTT message, whole: what the receiving node needs to route it
as if it had been published there (docs/architecture.md, *Cluster*).

Layout, version 1 (integers big-endian)::

    u8   version (1)
    u8   flags: bits 0-1 QoS, bit 2 RETAIN, bit 3 an expiry follows, bit 4 shared groups
    u8   length of the publishing node's name, then the name (UTF-8)
    u16  length of the account, then the account (UTF-8)
    u16  length of the origin, then the origin (UTF-8): the publishing client's id, which
         No Local compares on the receiving node [MQTT-3.8.3-3], or "http:<dialect>:..."
    u64  the MessageId the publishing node gave the message (0: none yet)
    [u64 expiry as a wall-clock time in milliseconds since the epoch,
     u32 the Message Expiry Interval the publisher gave]      only with flag bit 3
    [u16 count, then per shared group: u16 + the ShareName, u16 + its filter, u8 + the
     node that delivers the group's one copy]                  only with flag bit 4
    ...  the rest is the body of an MQTT 5 PUBLISH at QoS 0 (§3.3.2): the Topic Name, the
         property block, the payload

The publish body is read back with the MQTT codec itself, so the MQTT 5 properties (payload
format, content type, response topic, correlation data, user properties in their order) cross
unchanged and are checked as a PUBLISH's are. Message Expiry is not among them: it travels
as an absolute time and the receiving node turns it back into its own clock reading, so the
time spent on the hop counts against the expiry (§3.3.2.3.3: the interval sent on is the
one received minus the time waited); nodes are expected to keep their clocks in sync (NTP).
The per-hop properties (Topic Alias, Subscription Identifiers) never travel: the receiving
node computes its own subscription identifiers in its fan-out (§3.3.4).
"""

from __future__ import annotations

import struct
from dataclasses import replace
from typing import NamedTuple

from ..message import Message
from ..mqtt import codec
from ..mqtt.errors import MQTTError
from ..mqtt.packets import Publish
from ..mqtt.properties import NO_PROPERTIES, Properties
from ..mqtt.types import ProtocolVersion

__all__ = ["VERSION", "Arrival", "EnvelopeError", "pack", "unpack"]

VERSION = 1
_QOS = 0x03
_RETAIN = 0x04
_EXPIRY = 0x08
_SHARED = 0x10
_HEAD = struct.Struct(">BBB")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_EXPIRES = struct.Struct(">QI")
_V5 = ProtocolVersion.V5


class EnvelopeError(ValueError):
    """Bytes that are not an envelope this node can read (another version, or corrupt)."""


class Arrival(NamedTuple):
    """A message from another node, ready for ``Broker``: ``expired`` when its expiry passed
    on the way (it is then not routed). A tuple: made once per message received, it costs a
    third of a frozen dataclass."""

    node: str
    message: Message
    origin_message_id: int
    expired: bool
    # (ShareName, filter) -> the node that delivers the group's copy (cluster/shared.py).
    shares: dict[tuple[str, str], str]


def pack(
    message: Message,
    node: str,
    wall_now: float,
    loop_now: float,
    shares: dict[tuple[str, str], str] | None = None,
) -> bytes:
    """The envelope of ``message`` published by ``node``; ``wall_now`` is ``time.time()`` and
    ``loop_now`` the reading of the clock ``message.expires_at`` is on, taken together;
    ``shares`` says which node delivers each shared group's copy."""
    flags = message.qos & _QOS
    if message.retain:
        flags |= _RETAIN
    tail = b""
    if message.expires_at is not None:
        flags |= _EXPIRY
        expires_ms = int((wall_now + (message.expires_at - loop_now)) * 1000)
        tail = _EXPIRES.pack(max(0, expires_ms), message.expiry_interval or 0)
    if shares:
        flags |= _SHARED
        tail += _pack_shares(shares)
    properties = _travelling(message.properties)
    body = codec.encode_publish(
        message.topic,
        message.payload,
        0,
        False,
        False,
        None,
        codec.encode_properties(properties),
        _V5,
    )
    name = node.encode()
    account = message.account.encode()
    origin = message.origin.encode()
    return b"".join(
        (
            _HEAD.pack(VERSION, flags, len(name)),
            name,
            _U16.pack(len(account)),
            account,
            _U16.pack(len(origin)),
            origin,
            _U64.pack(message.id),
            tail,
            body[_body_offset(body) :],
        )
    )


def unpack(data: bytes, wall_now: float, loop_now: float) -> Arrival:
    """Read an envelope; ``expires_at`` is put on the receiving clock (``loop_now``)."""
    try:
        version, flags, name_length = _HEAD.unpack_from(data, 0)
        if version != VERSION:
            raise EnvelopeError(f"envelope version {version}, this node reads {VERSION}")
        pos = _HEAD.size
        node, pos = _text(data, pos, name_length)
        (length,) = _U16.unpack_from(data, pos)
        account, pos = _text(data, pos + 2, length)
        (length,) = _U16.unpack_from(data, pos)
        origin, pos = _text(data, pos + 2, length)
        (message_id,) = _U64.unpack_from(data, pos)
        pos += 8
        expires_at: float | None = None
        interval: int | None = None
        if flags & _EXPIRY:
            expires_ms, interval = _EXPIRES.unpack_from(data, pos)
            pos += _EXPIRES.size
            expires_at = loop_now + (expires_ms / 1000 - wall_now)
        shares: dict[tuple[str, str], str] = {}
        if flags & _SHARED:
            shares, pos = _unpack_shares(data, pos)
        (length,) = _U16.unpack_from(data, pos)
        if data[pos + 2 + length] == 0:
            # No properties, the common case: read the topic and the payload directly.
            topic, _end = _text(data, pos + 2, length)
            if not topic or "+" in topic or "#" in topic or "\x00" in topic:
                raise EnvelopeError(f"not a Topic Name: {topic!r} [MQTT-4.7.1-1]")
            properties: Properties = NO_PROPERTIES
            payload = data[pos + 3 + length :]
        else:
            publish = codec.decode_packet(0x30, data[pos:], _V5)
            assert type(publish) is Publish
            if publish.properties.topic_alias is not None or not publish.topic:
                raise EnvelopeError("an envelope's PUBLISH carries its topic, never an alias")
            topic, properties, payload = publish.topic, publish.properties, publish.payload
    except (struct.error, IndexError, UnicodeDecodeError, MQTTError) as error:
        raise EnvelopeError(f"not a readable envelope: {error}") from error
    message = Message(
        topic=topic,
        payload=payload,
        qos=flags & _QOS,
        retain=bool(flags & _RETAIN),
        properties=properties,
        account=account,
        origin=origin,
        expiry_interval=interval,
        expires_at=expires_at,
    )
    if message.qos == _QOS:
        raise EnvelopeError("QoS 3 in an envelope")
    return Arrival(node, message, message_id, message.expired(loop_now), shares)


def _text(data: bytes, pos: int, length: int) -> tuple[str, int]:
    end = pos + length
    if end > len(data):
        raise EnvelopeError("an envelope's field runs past its end")
    return data[pos:end].decode("utf-8"), end


def _pack_shares(shares: dict[tuple[str, str], str]) -> bytes:
    parts = [_U16.pack(len(shares))]
    for (group, topic_filter), node in shares.items():
        for text, size in ((group, _U16), (topic_filter, _U16)):
            raw = text.encode()
            parts += (size.pack(len(raw)), raw)
        raw = node.encode()
        parts += (bytes((len(raw),)), raw)
    return b"".join(parts)


def _unpack_shares(data: bytes, pos: int) -> tuple[dict[tuple[str, str], str], int]:
    (count,) = _U16.unpack_from(data, pos)
    pos += 2
    shares: dict[tuple[str, str], str] = {}
    for _ in range(count):
        (length,) = _U16.unpack_from(data, pos)
        group, pos = _text(data, pos + 2, length)
        (length,) = _U16.unpack_from(data, pos)
        topic_filter, pos = _text(data, pos + 2, length)
        node, pos = _text(data, pos + 1, data[pos])
        shares[(group, topic_filter)] = node
    return shares, pos


def _body_offset(packet: bytes) -> int:
    """Where the body of an encoded packet starts: after the first byte and the Remaining
    Length, 1 to 4 bytes with the high bit set on all but the last (§1.5.5)."""
    index = 1
    while packet[index] & 0x80:
        index += 1
    return index + 1


def _travelling(props: Properties) -> Properties:
    """The properties that cross to another node: not the expiry (sent as an absolute time)
    and none of the per-hop ones."""
    if props is NO_PROPERTIES or (
        props.message_expiry_interval is None
        and props.topic_alias is None
        and not props.subscription_identifiers
    ):
        return props
    return replace(
        props, message_expiry_interval=None, topic_alias=None, subscription_identifiers=()
    )
