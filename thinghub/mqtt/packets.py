"""One frozen, slotted value per MQTT control packet (§3).

Packets are plain values: the codec builds them from bytes and renders them back, the broker
reads them. Fields use MQTT 5 names; for MQTT 3.1.1 the properties are always ``NO_PROPERTIES``
and ``reason_code`` carries the 3.1.1 return code where the packet has one (CONNACK, SUBACK).
"""

from __future__ import annotations

from dataclasses import dataclass

from .properties import NO_PROPERTIES, Properties
from .types import PacketType, ProtocolVersion


@dataclass(frozen=True, slots=True, kw_only=True)
class Will:
    """The will message inside CONNECT (§3.1.2.5, §3.1.3.2-4)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True, kw_only=True)
class Connect:
    protocol_version: ProtocolVersion
    client_id: str
    clean_start: bool = True
    keep_alive: int = 0
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: Properties = NO_PROPERTIES
    # "MQTT" for 3.1.1/5.0, "MQIsdp" for 3.1.
    protocol_name: str = "MQTT"
    type = PacketType.CONNECT


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnAck:
    session_present: bool = False
    # v5 reason code, or the 3.1.1 return code (ConnackReturnCode) on a 3.1.1 connection.
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    type = PacketType.CONNACK


@dataclass(frozen=True, slots=True, kw_only=True)
class Publish:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    # Present iff qos > 0 (§2.2.1).
    packet_id: int | None = None
    properties: Properties = NO_PROPERTIES
    type = PacketType.PUBLISH


@dataclass(frozen=True, slots=True, kw_only=True)
class PubAck:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    type = PacketType.PUBACK


@dataclass(frozen=True, slots=True, kw_only=True)
class PubRec:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    type = PacketType.PUBREC


@dataclass(frozen=True, slots=True, kw_only=True)
class PubRel:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    type = PacketType.PUBREL


@dataclass(frozen=True, slots=True, kw_only=True)
class PubComp:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    type = PacketType.PUBCOMP


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscription:
    """One topic filter with its subscription options (§3.8.3.1)."""

    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscribe:
    packet_id: int
    subscriptions: tuple[Subscription, ...]
    properties: Properties = NO_PROPERTIES
    type = PacketType.SUBSCRIBE


@dataclass(frozen=True, slots=True, kw_only=True)
class SubAck:
    packet_id: int
    # One per subscription: granted QoS or failure (0x80 in 3.1.1, any v5 reason code).
    reason_codes: tuple[int, ...]
    properties: Properties = NO_PROPERTIES
    type = PacketType.SUBACK


@dataclass(frozen=True, slots=True, kw_only=True)
class Unsubscribe:
    packet_id: int
    topic_filters: tuple[str, ...]
    properties: Properties = NO_PROPERTIES
    type = PacketType.UNSUBSCRIBE


@dataclass(frozen=True, slots=True, kw_only=True)
class UnsubAck:
    packet_id: int
    # v5 only; empty on 3.1.1, which has no payload (3.1.1 §3.11.3).
    reason_codes: tuple[int, ...] = ()
    properties: Properties = NO_PROPERTIES
    type = PacketType.UNSUBACK


@dataclass(frozen=True, slots=True, kw_only=True)
class PingReq:
    type = PacketType.PINGREQ


@dataclass(frozen=True, slots=True, kw_only=True)
class PingResp:
    type = PacketType.PINGRESP


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnect:
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    type = PacketType.DISCONNECT


@dataclass(frozen=True, slots=True, kw_only=True)
class Auth:
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    type = PacketType.AUTH


Packet = (
    Connect
    | ConnAck
    | Publish
    | PubAck
    | PubRec
    | PubRel
    | PubComp
    | Subscribe
    | SubAck
    | Unsubscribe
    | UnsubAck
    | PingReq
    | PingResp
    | Disconnect
    | Auth
)
