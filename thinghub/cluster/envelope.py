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

A batch carries several envelopes for the same NATS subject in one NATS message, in the order
they were published (cluster/bus.py gathers the QoS 0 messages of one event-loop turn), so that
NATS' per-message work (a PUB on one node, a MSG parsed on the other) is paid once per batch::

    u8   BATCH (0xB1, which no envelope version is)
    u32  count, then per envelope: u32 its length, the envelope
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from typing import NamedTuple

from ..message import Message
from ..mqtt import codec
from ..mqtt.errors import MQTTError
from ..mqtt.packets import Publish
from ..mqtt.properties import NO_PROPERTIES, Properties
from ..mqtt.types import ProtocolVersion

__all__ = [
    "BATCH",
    "VERSION",
    "Arrival",
    "EnvelopeError",
    "is_batch",
    "pack",
    "pack_batch",
    "split_batch",
    "unpack",
]

VERSION = 1
BATCH = 0xB1
_QOS = 0x03
_RETAIN = 0x04
_EXPIRY = 0x08
_SHARED = 0x10
_HEAD = struct.Struct(">BBB")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ID_TOPIC = struct.Struct(">QH")
_EXPIRES = struct.Struct(">QI")
_V5 = ProtocolVersion.V5
_new_tuple = tuple.__new__


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


def pack_now(
    message: Message,
    node: str,
    loop_time: Callable[[], float],
    shares: dict[tuple[str, str], str] | None = None,
) -> bytes:
    """``pack`` with the clocks read now (``loop_time``: the clock ``message.expires_at`` is
    on), and only when the message expires: a message without expiry needs neither."""
    if message.expires_at is None:
        return pack(message, node, 0.0, 0.0, shares)
    return pack(message, node, time.time(), loop_time(), shares)


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
    properties = message.properties
    if properties is not NO_PROPERTIES:
        properties = _travelling(properties)
    if properties is NO_PROPERTIES:
        # The common case, without the codec: Topic Name, an empty property block (§3.3.2.3).
        return b"".join(
            (
                _prefix(flags, node, message.account, message.origin),
                _U64.pack(message.id),
                tail,
                _topic_field(message.topic),
                b"\x00",
                message.payload,
            )
        )
    packet = codec.encode_publish(
        message.topic,
        message.payload,
        0,
        False,
        False,
        None,
        codec.encode_properties(properties),
        _V5,
    )
    return b"".join(
        (
            _prefix(flags, node, message.account, message.origin),
            _U64.pack(message.id),
            tail,
            packet[_body_offset(packet) :],
        )
    )


@lru_cache(maxsize=4096)
def _prefix(flags: int, node: str, account: str, origin: str) -> bytes:
    """The version, the flags, the node, account and origin fields: the same for every
    message of one publisher (and QoS, RETAIN, expiry, shared groups)."""
    name, account_raw, origin_raw = node.encode(), account.encode(), origin.encode()
    return b"".join(
        (
            _HEAD.pack(VERSION, flags, len(name)),
            name,
            _U16.pack(len(account_raw)),
            account_raw,
            _U16.pack(len(origin_raw)),
            origin_raw,
        )
    )


@lru_cache(maxsize=65536)
def _topic_field(topic: str) -> bytes:
    """A Topic Name as a UTF-8 string field of a PUBLISH (§1.5.4)."""
    raw = topic.encode()
    return _U16.pack(len(raw)) + raw


def pack_batch(envelopes: list[bytes]) -> bytes:
    """Several envelopes as one NATS message, in order (see the module's docstring)."""
    parts = [bytes((BATCH,)), _U32.pack(len(envelopes))]
    for data in envelopes:
        parts += (_U32.pack(len(data)), data)
    return b"".join(parts)


def is_batch(data: bytes) -> bool:
    return bool(data) and data[0] == BATCH


def split_batch(data: bytes) -> list[bytes]:
    """The envelopes of a batch, in order; EnvelopeError when it is not one, whole."""
    try:
        if data[0] != BATCH:
            raise EnvelopeError("not a batch of envelopes")
        (count,) = _U32.unpack_from(data, 1)
        pos = 5
        envelopes: list[bytes] = []
        for _ in range(count):
            (length,) = _U32.unpack_from(data, pos)
            end = pos + 4 + length
            if end > len(data):
                raise EnvelopeError("an envelope runs past the end of its batch")
            envelopes.append(data[pos + 4 : end])
            pos = end
    except (struct.error, IndexError) as error:
        raise EnvelopeError(f"not a readable batch: {error}") from error
    if pos != len(data):
        raise EnvelopeError("bytes after the last envelope of a batch")
    return envelopes


def unpack(data: bytes, wall_now: float, loop_now: float) -> Arrival:
    """Read an envelope; ``expires_at`` is put on the receiving clock (``loop_now``)."""
    try:
        name_length = data[2]
        pos = 5 + name_length + _U16.unpack_from(data, 3 + name_length)[0]
        pos += 2 + _U16.unpack_from(data, pos)[0]
        flags, node, account, origin = _prefix_of(data[:pos])
        expires_at: float | None = None
        interval: int | None = None
        shares: dict[tuple[str, str], str] = {}
        if flags & (_EXPIRY | _SHARED):
            (message_id,) = _U64.unpack_from(data, pos)
            pos += 8
            if flags & _EXPIRY:
                expires_ms, interval = _EXPIRES.unpack_from(data, pos)
                pos += _EXPIRES.size
                expires_at = loop_now + (expires_ms / 1000 - wall_now)
            if flags & _SHARED:
                shares, pos = _unpack_shares(data, pos)
            (length,) = _U16.unpack_from(data, pos)
        else:
            message_id, length = _ID_TOPIC.unpack_from(data, pos)
            pos += 8
        start = pos + 2
        pos = start + length
        if data[pos] == 0:
            # No properties, the common case: read the topic and the payload directly
            # (data[pos] raised IndexError if the topic ran past the end).
            topic = _topic(data[start:pos])
            properties: Properties = NO_PROPERTIES
            payload = data[pos + 1 :]
        else:
            publish = codec.decode_packet(0x30, data[start - 2 :], _V5)
            assert type(publish) is Publish
            if publish.properties.topic_alias is not None or not publish.topic:
                raise EnvelopeError("an envelope's PUBLISH carries its topic, never an alias")
            topic, properties, payload = publish.topic, publish.properties, publish.payload
    except (struct.error, IndexError, UnicodeDecodeError, MQTTError) as error:
        raise EnvelopeError(f"not a readable envelope: {error}") from error
    qos = flags & _QOS
    if qos == _QOS:
        raise EnvelopeError("QoS 3 in an envelope")
    message = Message(
        topic=topic,
        payload=payload,
        qos=qos,
        retain=bool(flags & _RETAIN),
        properties=properties,
        account=account,
        origin=origin,
        expiry_interval=interval,
        expires_at=expires_at,
    )
    expired = expires_at is not None and loop_now >= expires_at
    # tuple.__new__ skips the NamedTuple's own __new__, a Python function: a measurable
    # share of a message's cost on the receiving node.
    return _new_tuple(Arrival, (node, message, message_id, expired, shares))


@lru_cache(maxsize=65536)
def _topic(raw: bytes) -> str:
    """A Topic Name of an envelope, checked (UnicodeDecodeError if not UTF-8); the same topics
    come again and again."""
    topic = raw.decode()
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise EnvelopeError(f"not a Topic Name: {topic!r} [MQTT-4.7.1-1]")
    return topic


@lru_cache(maxsize=4096)
def _prefix_of(raw: bytes) -> tuple[int, str, str, str]:
    """The flags, node, account and origin of ``_prefix``'s bytes (EnvelopeError, or
    UnicodeDecodeError if not UTF-8): the same for every message of one publisher."""
    version, flags, name_length = _HEAD.unpack_from(raw, 0)
    if version != VERSION:
        raise EnvelopeError(f"envelope version {version}, this node reads {VERSION}")
    pos = _HEAD.size
    node, pos = _text(raw, pos, name_length)
    (length,) = _U16.unpack_from(raw, pos)
    account, pos = _text(raw, pos + 2, length)
    (length,) = _U16.unpack_from(raw, pos)
    origin, pos = _text(raw, pos + 2, length)
    if pos != len(raw):
        raise EnvelopeError("an envelope's field runs past its end")
    return flags, node, account, origin


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
