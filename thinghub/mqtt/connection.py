"""Server-side protocol state of one MQTT client connection (sans-IO).

``ServerConnection`` sits between the transport and the broker: the transport hands it the
bytes it read (``receive_data``) and gets back packets that are already checked against the
connection-level rules of the protocol; the broker hands it packets to send (``send``) and
gets back bytes for the transport. It does no I/O and knows nothing about sessions,
subscriptions or authentication. The rules it owns:

* the first packet is CONNECT, and there is only one ([MQTT-3.1.0-1], [MQTT-3.1.0-2]);
* a packet a client may not send (CONNACK, SUBACK, UNSUBACK, PINGRESP; AUTH unless the CONNECT
  carried an Authentication Method) is a Protocol Error whatever its body holds. These rules
  and the order in which a bad packet's errors are decided (type, flags, size, body, values,
  state) are the table in ``fixed_header``; the server's ``Decoder`` applies them;
* inbound Topic Aliases (§3.3.2.3.4) are resolved, so the broker always sees a topic name;
* inbound Receive Maximum (§3.3.4, [MQTT-3.3.4-9]): the client may have at most
  ``receive_maximum`` QoS 1/2 PUBLISHes that the server has not completed yet. A QoS 1
  PUBLISH completes when the server sends its PUBACK, a QoS 2 PUBLISH when the server sends
  PUBCOMP, or a PUBREC with a reason code >= 0x80 (§4.9). The broker must therefore send its
  acknowledgements through ``send`` or the ``pub*_bytes`` helpers.

After any ``MQTTError`` the connection is failed for good (h11's sticky ERROR state, STYLE
§3.7): a protocol error ends the connection, and ``error_bytes`` tells the edge what to send
before closing.
"""

from __future__ import annotations

import dataclasses

from .codec import Decoder, encode, encode_publish, protocol_version_of
from .errors import MQTTError, ProtocolError, UnsupportedProtocolVersion
from .packets import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PubAck,
    PubComp,
    Publish,
    PubRec,
)
from .types import ConnackReturnCode, ProtocolVersion, ReasonCode

__all__ = ["ServerConnection"]

_V5 = ProtocolVersion.V5


class ServerConnection:
    """Per-client server-side protocol state; see the module docstring."""

    __slots__ = (
        "_aliases",
        "_decoder",
        "_error",
        "_inflight",
        "connect_received",
        "receive_maximum",
        "topic_alias_maximum",
    )

    def __init__(
        self, *, max_packet_size: int, receive_maximum: int, topic_alias_maximum: int
    ) -> None:
        # The three limits are what the server announces in its CONNACK (§3.2.2.3.3,
        # §3.2.2.3.6, §3.2.2.3.8); the client is bound by them once it has seen them.
        self._decoder = Decoder(max_packet_size, server=True)
        self.receive_maximum = receive_maximum
        self.topic_alias_maximum = topic_alias_maximum
        # Whether the CONNECT came (only that: the packet itself, with its password, is not
        # kept for the life of the connection).
        self.connect_received = False
        # Inbound Topic Aliases, and the packet ids of QoS 1/2 PUBLISHes received and not
        # completed by the server yet: both None until first used, since an idle connection
        # has neither (an empty dict costs 64 bytes, an empty set 216).
        self._aliases: dict[int, str] | None = None
        self._inflight: set[int] | None = None
        self._error: MQTTError | None = None

    # -- state ------------------------------------------------------------------------------

    @property
    def version(self) -> ProtocolVersion | None:
        """The protocol version of the CONNECT, or None before it arrived."""
        return self._decoder.version

    @property
    def max_packet_size(self) -> int:
        return self._decoder.max_packet_size

    @property
    def error(self) -> MQTTError | None:
        """The error that failed this connection, if any."""
        return self._error

    @property
    def inbound_inflight(self) -> int:
        """QoS 1/2 PUBLISHes received and not yet completed by the server. On 3.1.1, which has
        no Receive Maximum, this is only reported, so the broker can stop reading instead."""
        return len(self._inflight) if self._inflight else 0

    # -- receiving --------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        """Decode ``data`` and apply the connection rules; raises ``MQTTError`` subclasses,
        carrying in ``preceding`` the packets of ``data`` that came whole before the fault."""
        if self._error is not None:
            raise ProtocolError(
                f"connection already failed: {self._error}", self._error.reason_code
            ) from self._error
        failure: MQTTError | None = None
        try:
            packets = self._decoder.feed(data)
        except MQTTError as exc:
            packets, failure = exc.preceding, exc
        for i, packet in enumerate(packets):
            try:
                if isinstance(packet, Publish):
                    if packet.qos or self.version == _V5:
                        packets[i] = self._receive_publish(packet)
                else:
                    self._receive_other(packet)
            except MQTTError as exc:
                packets, failure = packets[:i], exc
                break
        if failure is not None:
            # The packets before the failure are served first (``MQTTError.preceding``).
            failure.preceding = packets
            self._error = failure
            raise failure
        return packets

    def _receive_other(self, packet: Packet) -> None:
        # The server's decoder already refused anything before a CONNECT ([MQTT-3.1.0-1]), a
        # second CONNECT ([MQTT-3.1.0-2]) and every packet type a client may not send, from
        # the first byte (fixed_header); what is left to note here is the CONNECT itself.
        if isinstance(packet, Connect):
            self.connect_received = True

    def _receive_publish(self, packet: Publish) -> Publish:
        props = packet.properties
        if props.subscription_identifiers:
            # [MQTT-3.3.4-6]: a PUBLISH from a client must not carry a Subscription Identifier.
            raise ProtocolError("Subscription Identifier in a PUBLISH from a client")
        alias = props.topic_alias
        if alias is not None:
            if alias == 0 or alias > self.topic_alias_maximum:
                # [MQTT-3.3.2-8] / [MQTT-3.3.2-9]: 0, or above the maximum the server
                # announced (0 if it announced none), is invalid: DISCONNECT 0x94.
                raise ProtocolError(
                    f"Topic Alias {alias} outside 1..{self.topic_alias_maximum}",
                    ReasonCode.TOPIC_ALIAS_INVALID,
                )
            topic = packet.topic
            aliases = self._aliases
            if topic:
                # §3.3.2.3.4: a non-empty name with an alias (re)defines the mapping.
                if aliases is None:
                    aliases = self._aliases = {}
                aliases[alias] = topic
            else:
                known = aliases.get(alias) if aliases else None
                if known is None:
                    # §3.3.4: an empty name with an alias that has no mapping: Protocol Error.
                    raise ProtocolError(f"unknown Topic Alias {alias}")
                topic = known
            packet = dataclasses.replace(
                packet, topic=topic, properties=dataclasses.replace(props, topic_alias=None)
            )
        if packet.qos:
            packet_id = packet.packet_id
            assert packet_id is not None  # the codec guarantees an id for QoS > 0
            inflight = self._inflight
            if inflight is None:
                inflight = self._inflight = set()
            # A retransmission (DUP) of a PUBLISH that is still uncompleted does not take a
            # second slot (§4.3.3: the receiver must not process it as a new message).
            if packet_id not in inflight:
                if len(inflight) >= self.receive_maximum and self.version == _V5:
                    # [MQTT-3.3.4-9]: more than Receive Maximum uncompleted QoS>0 PUBLISHes.
                    raise ProtocolError(
                        "Receive Maximum exceeded", ReasonCode.RECEIVE_MAXIMUM_EXCEEDED
                    )
                inflight.add(packet_id)
        return packet

    # -- sending ----------------------------------------------------------------------------

    def _completed(self, packet_id: int) -> None:
        inflight = self._inflight
        if inflight:
            inflight.discard(packet_id)

    def _version_for_send(self) -> ProtocolVersion:
        version = self.version
        if version is None:
            raise RuntimeError("nothing can be sent before the CONNECT was received")
        return version

    def send(self, packet: Packet) -> bytes:
        """Encode ``packet`` in the negotiated version and account for acknowledgements."""
        version = self._version_for_send()
        if isinstance(packet, PubAck | PubComp):
            self._completed(packet.packet_id)
        elif isinstance(packet, PubRec) and packet.reason_code >= 0x80:
            # §4.9: a PUBREC with an error reason code ends the QoS 2 exchange.
            self._completed(packet.packet_id)
        return encode(packet, version)

    def puback_bytes(self, packet_id: int, reason_code: int = 0) -> bytes:
        """PUBACK for a received QoS 1 PUBLISH; completes it for Receive Maximum."""
        self._completed(packet_id)
        return self._short_ack(0x40, packet_id, reason_code)

    def pubrec_bytes(self, packet_id: int, reason_code: int = 0) -> bytes:
        """PUBREC for a received QoS 2 PUBLISH; completes it only if ``reason_code`` >= 0x80."""
        if reason_code >= 0x80:
            self._completed(packet_id)
        return self._short_ack(0x50, packet_id, reason_code)

    def pubcomp_bytes(self, packet_id: int, reason_code: int = 0) -> bytes:
        """PUBCOMP answering a PUBREL; completes the QoS 2 PUBLISH."""
        self._completed(packet_id)
        return self._short_ack(0x70, packet_id, reason_code)

    def pubrel_bytes(self, packet_id: int, reason_code: int = 0) -> bytes:
        """PUBREL answering a PUBREC for a message the server sent (outbound QoS 2)."""
        return self._short_ack(0x62, packet_id, reason_code)

    def _short_ack(self, first: int, packet_id: int, reason_code: int) -> bytes:
        # §3.4.2.1: on v5 the reason code may be omitted when it is 0x00; 3.1.1 acks have no
        # reason code at all.
        if reason_code and self._version_for_send() == _V5:
            return bytes((first, 3, packet_id >> 8, packet_id & 0xFF, reason_code))
        return bytes((first, 2, packet_id >> 8, packet_id & 0xFF))

    def publish_bytes(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        dup: bool,
        packet_id: int | None,
        properties_bytes: bytes | None = None,
    ) -> bytes:
        """An outbound PUBLISH in the negotiated version (see ``codec.encode_publish``)."""
        return encode_publish(
            topic, payload, qos, retain, dup, packet_id, properties_bytes, self._version_for_send()
        )

    def error_bytes(self, exc: MQTTError) -> bytes:
        """What to send before closing after ``exc`` (§4.13): b"" means just close.

        * A failed CONNECT is answered with a CONNACK in the client's dialect: v5 gets the
          reason code ([MQTT-4.13.1-1] allows it), 3.1.1 gets return code 0x01 for an
          unsupported protocol version ([MQTT-3.1.2-2]) and nothing otherwise.
        * A packet other than CONNECT first is answered with nothing ([MQTT-3.1.0-1]).
        * After the CONNECT, v5 gets a DISCONNECT with the reason code (§3.14.2.1), 3.1.1
          nothing (3.1.1 §4.8 says the server closes the connection).
        """
        if not self.connect_received:
            level = protocol_version_of(exc)
            if level is None:
                return b""
            if level == _V5:
                return encode(ConnAck(reason_code=exc.reason_code), _V5)
            if isinstance(exc, UnsupportedProtocolVersion):
                return encode(
                    ConnAck(reason_code=ConnackReturnCode.UNACCEPTABLE_PROTOCOL_VERSION),
                    ProtocolVersion.V311,
                )
            return b""
        if self.version == _V5:
            return encode(Disconnect(reason_code=exc.reason_code), _V5)
        return b""
