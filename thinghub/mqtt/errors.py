"""Errors raised by the sans-IO layer. Each carries the MQTT 5 reason code the edge should send
(DISCONNECT on 5.0, or just closing the connection on 3.1.1, §4.13)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .types import ReasonCode

if TYPE_CHECKING:
    from .packets import Packet


class MQTTError(Exception):
    """Root of every protocol error. ``reason_code`` is what a v5 DISCONNECT/CONNACK carries."""

    reason_code: ReasonCode = ReasonCode.UNSPECIFIED_ERROR

    def __init__(self, message: str, reason_code: ReasonCode | None = None) -> None:
        super().__init__(message)
        if reason_code is not None:
            self.reason_code = reason_code
        # Whole packets that arrived before the offending bytes, in the same read: the
        # receiver handles them before it answers the error (they were sent first).
        self.preceding: list[Packet] = []


class MalformedPacket(MQTTError):
    """Bytes that cannot be parsed as the packet they claim to be (§4.13.1, 0x81)."""

    reason_code = ReasonCode.MALFORMED_PACKET


class ProtocolError(MQTTError):
    """A well-formed packet that breaks a protocol rule (§4.13.1, 0x82), or a more specific
    reason code given at construction (e.g. 0x93 Receive Maximum exceeded, 0x94 Topic Alias
    invalid)."""

    reason_code = ReasonCode.PROTOCOL_ERROR


class PacketTooLarge(MQTTError):
    """A packet whose declared size exceeds the Maximum Packet Size (§3.1.2.11.4, 0x95)."""

    reason_code = ReasonCode.PACKET_TOO_LARGE


class UnsupportedProtocolVersion(MQTTError):
    """CONNECT with a protocol name/level we do not speak (§3.1.2.2, 0x84; 3.1.1 return code 1)."""

    reason_code = ReasonCode.UNSUPPORTED_PROTOCOL_VERSION
