"""MQTT 5 properties (§2.2.2) as one typed value, and the set each packet may carry.

A packet holds a ``Properties``; absent properties are ``None`` (or an empty tuple for the two
that may repeat). ``NO_PROPERTIES`` is shared by every packet that carries none, so the hot path
allocates nothing for them. MQTT 3.1.1 packets always carry ``NO_PROPERTIES``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .types import PacketType, PropertyId


@dataclass(frozen=True, slots=True, kw_only=True)
class Properties:
    payload_format_indicator: int | None = None
    message_expiry_interval: int | None = None
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    # May repeat on PUBLISH (server to client) (§3.3.2.3.8); one at most on SUBSCRIBE.
    subscription_identifiers: tuple[int, ...] = ()
    session_expiry_interval: int | None = None
    assigned_client_identifier: str | None = None
    server_keep_alive: int | None = None
    authentication_method: str | None = None
    authentication_data: bytes | None = None
    request_problem_information: int | None = None
    will_delay_interval: int | None = None
    request_response_information: int | None = None
    response_information: str | None = None
    server_reference: str | None = None
    reason_string: str | None = None
    receive_maximum: int | None = None
    topic_alias_maximum: int | None = None
    topic_alias: int | None = None
    maximum_qos: int | None = None
    retain_available: int | None = None
    # May repeat everywhere, order preserved (§3.3.2.3.7).
    user_properties: tuple[tuple[str, str], ...] = ()
    maximum_packet_size: int | None = None
    wildcard_subscription_available: int | None = None
    subscription_identifier_available: int | None = None
    shared_subscription_available: int | None = None


NO_PROPERTIES = Properties()

# "WILL" is not a packet type: it is the will properties block inside CONNECT (§3.1.3.2).
WILL = "WILL"

_P = PropertyId
_PUBLISH_PROPS = frozenset(
    {
        _P.PAYLOAD_FORMAT_INDICATOR,
        _P.MESSAGE_EXPIRY_INTERVAL,
        _P.CONTENT_TYPE,
        _P.RESPONSE_TOPIC,
        _P.CORRELATION_DATA,
        _P.SUBSCRIPTION_IDENTIFIER,
        _P.TOPIC_ALIAS,
        _P.USER_PROPERTY,
    }
)
_ACK_PROPS = frozenset({_P.REASON_STRING, _P.USER_PROPERTY})

# Which properties each packet may carry (§2.2.2.2 table 2-4).
ALLOWED: dict[PacketType | str, frozenset[PropertyId]] = {
    PacketType.CONNECT: frozenset(
        {
            _P.SESSION_EXPIRY_INTERVAL,
            _P.AUTHENTICATION_METHOD,
            _P.AUTHENTICATION_DATA,
            _P.REQUEST_PROBLEM_INFORMATION,
            _P.REQUEST_RESPONSE_INFORMATION,
            _P.RECEIVE_MAXIMUM,
            _P.TOPIC_ALIAS_MAXIMUM,
            _P.USER_PROPERTY,
            _P.MAXIMUM_PACKET_SIZE,
        }
    ),
    PacketType.CONNACK: frozenset(
        {
            _P.SESSION_EXPIRY_INTERVAL,
            _P.ASSIGNED_CLIENT_IDENTIFIER,
            _P.SERVER_KEEP_ALIVE,
            _P.AUTHENTICATION_METHOD,
            _P.AUTHENTICATION_DATA,
            _P.RESPONSE_INFORMATION,
            _P.SERVER_REFERENCE,
            _P.REASON_STRING,
            _P.RECEIVE_MAXIMUM,
            _P.TOPIC_ALIAS_MAXIMUM,
            _P.MAXIMUM_QOS,
            _P.RETAIN_AVAILABLE,
            _P.USER_PROPERTY,
            _P.MAXIMUM_PACKET_SIZE,
            _P.WILDCARD_SUBSCRIPTION_AVAILABLE,
            _P.SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            _P.SHARED_SUBSCRIPTION_AVAILABLE,
        }
    ),
    PacketType.PUBLISH: _PUBLISH_PROPS,
    PacketType.PUBACK: _ACK_PROPS,
    PacketType.PUBREC: _ACK_PROPS,
    PacketType.PUBREL: _ACK_PROPS,
    PacketType.PUBCOMP: _ACK_PROPS,
    PacketType.SUBSCRIBE: frozenset({_P.SUBSCRIPTION_IDENTIFIER, _P.USER_PROPERTY}),
    PacketType.SUBACK: _ACK_PROPS,
    PacketType.UNSUBSCRIBE: frozenset({_P.USER_PROPERTY}),
    PacketType.UNSUBACK: _ACK_PROPS,
    PacketType.DISCONNECT: frozenset(
        {_P.SESSION_EXPIRY_INTERVAL, _P.SERVER_REFERENCE, _P.REASON_STRING, _P.USER_PROPERTY}
    ),
    PacketType.AUTH: frozenset(
        {_P.AUTHENTICATION_METHOD, _P.AUTHENTICATION_DATA, _P.REASON_STRING, _P.USER_PROPERTY}
    ),
    WILL: frozenset(
        {
            _P.WILL_DELAY_INTERVAL,
            _P.PAYLOAD_FORMAT_INDICATOR,
            _P.MESSAGE_EXPIRY_INTERVAL,
            _P.CONTENT_TYPE,
            _P.RESPONSE_TOPIC,
            _P.CORRELATION_DATA,
            _P.USER_PROPERTY,
        }
    ),
}
