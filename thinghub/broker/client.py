"""One network connection of one MQTT client: bytes in, packets handled, bytes out.

The transport feeds received bytes to ``Client.data_received``; the sans-IO
``ServerConnection`` turns them into packets (checking framing, size, order and topic aliases),
and each packet goes to one handler below (one per packet type, mosquitto's ``handle__*``).
Replies go out through the transport's ``Link``. A protocol error ends the connection: on MQTT 5
with a DISCONNECT carrying the reason code, on 3.1.1 by closing (§4.13).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from ..message import Message
from ..mqtt import codec
from ..mqtt.connection import ServerConnection
from ..mqtt.errors import MQTTError, PacketTooLarge, ProtocolError
from ..mqtt.packets import (
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
    UnsubAck,
    Unsubscribe,
)
from ..mqtt.properties import NO_PROPERTIES, Properties
from ..mqtt.types import ConnackReturnCode, ProtocolVersion, ReasonCode
from ..topics import validate_topic_filter, validate_topic_name
from ..trace import fates
from .admission import PublishRefused, Refusal
from .auth import ClientInfo, Credential
from .queue import Outgoing, PubRecOutcome
from .session import Session, Will
from .stats import SAMPLE_MASK

if TYPE_CHECKING:
    from ..config import MQTTSettings
    from .broker import AckTicket, Broker

log = logging.getLogger("thinghub.client")

# The 3.1.1 CONNACK return code for a v5 reason code (3.1.1 §3.2.2.3).
_V3_CONNACK = {
    ReasonCode.UNSUPPORTED_PROTOCOL_VERSION: ConnackReturnCode.UNACCEPTABLE_PROTOCOL_VERSION,
    ReasonCode.CLIENT_IDENTIFIER_NOT_VALID: ConnackReturnCode.IDENTIFIER_REJECTED,
    ReasonCode.BAD_USER_NAME_OR_PASSWORD: ConnackReturnCode.BAD_USER_NAME_OR_PASSWORD,
    ReasonCode.NOT_AUTHORIZED: ConnackReturnCode.NOT_AUTHORIZED,
    ReasonCode.BANNED: ConnackReturnCode.NOT_AUTHORIZED,
    ReasonCode.BAD_AUTHENTICATION_METHOD: ConnackReturnCode.BAD_USER_NAME_OR_PASSWORD,
}
_FAILURE_V3 = 0x80  # SUBACK failure return code in 3.1.1 (§3.9.3)
_NO_WILL_DELAY = 0


class Link(Protocol):
    """What the broker needs of a transport connection."""

    peer: str

    def write(self, data: bytes) -> None:
        """Queue bytes for sending; transports coalesce writes made in one loop iteration."""

    def close(self) -> None:
        """Flush what is queued, then close."""

    def buffered(self) -> int:
        """Bytes queued but not yet handed to the kernel."""
        ...


class _AllOf:
    """Several acknowledgement tickets as one: calls back once all are in, with the first
    refusal's reason code (0: all stored)."""

    __slots__ = ("_tickets",)

    def __init__(self, tickets: list[AckTicket]) -> None:
        self._tickets = tickets

    def then(self, callback: Callable[[int], None]) -> None:
        state = [len(self._tickets), 0]

        def one(refused: int) -> None:
            if refused and not state[1]:
                state[1] = refused
            state[0] -= 1
            if not state[0]:
                callback(state[1])

        for ticket in self._tickets:
            ticket.then(one)


class Client:
    __slots__ = (
        "_ack_chain",
        "_acks_waiting",
        "_aliases_out",
        "_held",
        "account",
        "alias_maximum_out",
        "broker",
        "client_id",
        "closed",
        "conn",
        "connected",
        "connected_at_ms",
        "info",
        "is_v5",
        "keep_alive",
        "last_received",
        "link",
        "max_packet_size",
        "max_subscriptions",
        "session",
        "version",
        "will",
        "will_delay",
        "window",
    )

    def __init__(self, broker: Broker, link: Link) -> None:
        settings = broker.settings
        self.broker = broker
        self.link = link
        self.conn = ServerConnection(
            max_packet_size=settings.max_packet_size,
            receive_maximum=settings.receive_maximum,
            topic_alias_maximum=settings.topic_alias_maximum,
        )
        self.client_id = ""
        # The account the client belongs to (its topic space); "" for anonymous clients.
        self.account = ""
        self.version = ProtocolVersion.V311
        self.is_v5 = False
        self.connected = False  # CONNACK (success) sent
        # Wall-clock time of that CONNACK, in milliseconds (reported by the HTTP APIs).
        self.connected_at_ms = 0
        self.max_subscriptions = broker.settings.max_subscriptions_per_client
        self.closed = False
        self.session: Session | None = None
        self.info: ClientInfo | None = None
        self.window = settings.max_inflight
        self.max_packet_size = 268_435_460
        self.alias_maximum_out = 0
        # Topic aliases this client was given (§3.3.2.3.4); None until the first one (an
        # empty dict costs 64 bytes on every idle connection).
        self._aliases_out: dict[str, int] | None = None
        # Acknowledgements waiting for the store's commit (see _acknowledge).
        self._acks_waiting = 0
        # In a cluster, answers that also wait for replicated storage, in request order
        # (see _chain); None while there are none.
        self._ack_chain: deque[list[Any]] | None = None
        # Bytes received before the CONNECT's turn came (Broker.may_connect_now): None once
        # the connection may be served, b"" (or more) while it waits.
        self._held: bytes | None = b""
        self.will: Will | None = None
        self.will_delay = 0
        self.keep_alive = 0
        self.last_received = broker.clock.time()
        # The CONNECT timeout, then the keep alive: a deadline in the broker's wheel
        # (broker/timeouts.py), not a timer per connection.
        broker.deadlines.arm(self, self.last_received + settings.connect_timeout)

    # ------------------------------------------------------------------ transport events

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        held = self._held
        if held is not None:
            # Not served yet: its CONNECT waits for a turn of the loop with room for it.
            if held or not self.broker.may_connect_now(self):
                if len(held) + len(data) > self.broker.settings.max_packet_size + 5:
                    # A client does not send more than a CONNECT before its CONNACK (§3.1.4).
                    self._protocol_error(PacketTooLarge("too much data before the CONNACK"))
                    return
                self._held = held + data
                return
            self._held = None
        self.last_received = self.broker.clock.time()
        failure: MQTTError | None = None
        try:
            try:
                packets = self.conn.receive_data(data)
            except MQTTError as error:
                # What came whole before the bad bytes was sent first: it is served first.
                packets, failure = error.preceding, error
            for packet in packets:
                if type(packet) is Publish:
                    self._handle_publish(packet)
                else:
                    _HANDLERS[type(packet)](self, packet)
                if self.closed:
                    return
            if failure is not None:
                raise failure
        except MQTTError as error:
            self._protocol_error(error)
        except Exception:
            # A bug of ours must cost this connection only, never the hub: log it, tell a v5
            # client "implementation specific error" (0x83), and close.
            log.exception("internal error while serving %s", self.client_id or self.link.peer)
            self.broker.stats.protocol_errors += 1
            self.disconnect(ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR)

    def resume_connect(self) -> None:
        """The CONNECT's turn has come (Broker.may_connect_now): serve what was received."""
        held, self._held = self._held, None
        if held:
            self.data_received(held)

    def connection_lost(self) -> None:
        """The transport closed, for whatever reason: abnormal unless DISCONNECT came first."""
        broker = self.broker
        broker.deadlines.disarm(self)
        broker.clients.discard(self)
        self.closed = True
        if self.connected and not broker.may_end_now(self):
            return  # its session is wound down in a later turn (Broker.may_end_now)
        self.end_connection()

    def end_connection(self) -> None:
        """The session's side of a connection's end: observers told, the will and the
        session's expiry started (Broker.close_session). Once per connection; nothing if the
        session was taken over meanwhile."""
        self._tell_disconnected()
        session = self.session
        if session is None or session.client is not self:
            return
        self.connected = False
        # A will survives only an abnormal end: DISCONNECT (other than 0x04) cleared it.
        self.broker.close_session(session, self.will, self.will_delay)
        self.will = None

    # ------------------------------------------------------------------ sending

    def _send(self, packet: Packet) -> None:
        self.link.write(self.conn.send(packet))

    @property
    def acks_waiting(self) -> int:
        """Acknowledgements held until the store commits what their requests changed."""
        return self._acks_waiting

    def buffered(self) -> int:
        """Bytes written to this client and not yet handed to the kernel."""
        return self.link.buffered()

    def _send_unless_closed(self, packet: Packet) -> None:
        if not self.closed:
            self._send(packet)

    def send_publish(self, out: Outgoing, dup: bool) -> None:
        """Encode one PUBLISH for this client and write it (§3.3). The bytes for a message are
        built once per (protocol family, QoS, retain) and shared by every subscriber; a QoS 1/2
        copy gets its packet identifier patched in. Per-client properties (subscription ids,
        remaining expiry, topic aliases) take the slow path."""
        message = out.message
        info = self.info
        # Only clients whose authenticator gave them a policy pay for the check (auth.py).
        if (
            info is not None
            and info.policy is not None
            and not info.policy.may_receive(message.topic)
        ):
            self._not_received(out)
            return
        is_v5 = self.is_v5
        qos = out.qos
        new_alias: str | None = None
        if is_v5 and (
            out.subscription_ids or message.expires_at is not None or self.alias_maximum_out
        ):
            data, new_alias = self._encode_custom(out, dup)
        else:
            key = (is_v5, qos, out.retain)
            cached = message.encoded.get(key) if not dup else None
            if cached is not None:
                data = cached
            else:
                data = codec.encode_publish(
                    message.topic,
                    message.payload,
                    qos,
                    out.retain,
                    dup,
                    0 if qos else None,
                    codec.encode_properties(message.properties) if is_v5 else None,
                    self.version,
                )
                if not dup:
                    message.encoded[key] = data
            if qos:
                offset = _packet_id_offset(data, message, is_v5)
                data = data[:offset] + out.packet_id.to_bytes(2, "big") + data[offset + 2 :]
        if len(data) > self.max_packet_size:
            # The client's Maximum Packet Size: discard as if delivered [MQTT-3.1.2-25].
            self.broker.stats.dropped_too_large += 1
            session = self.session
            trace = self.broker.trace
            if trace is not None and session is not None:
                trace.event(message.id, session.client_id, fates.TOO_LARGE, qos)
            if qos and session is not None:
                session.delivery.discard(out)
            return
        if new_alias is not None:
            # Only a packet that is really sent establishes an alias (§3.3.2.3.4).
            aliases = self._aliases_out
            if aliases is None:
                aliases = self._aliases_out = {}
            aliases[new_alias] = len(aliases) + 1
        stats = self.broker.stats
        delivered = stats.delivered
        copies = delivered[qos] = delivered[qos] + 1
        self.link.write(data)
        if not copies & SAMPLE_MASK:
            stats.time_copy(out)  # one copy in DELIVERY_SAMPLE is timed (stats.py)

    def _not_received(self, out: Outgoing) -> None:
        """A copy the client's policy does not let it receive (ConnectionPolicy.may_receive):
        dropped as if delivered, counted as not authorised (AWS IoT: iot:Receive)."""
        self.broker.stats.dropped_not_authorized += 1
        session = self.session
        trace = self.broker.trace
        if trace is not None and session is not None:
            trace.event(out.message.id, session.client_id, fates.NOT_AUTHORIZED, out.qos)
        if out.qos and session is not None:
            session.delivery.discard(out)

    def _encode_custom(self, out: Outgoing, dup: bool) -> tuple[bytes, str | None]:
        """Encode with this client's own properties; also returns a topic that this packet
        would give a new alias to (recorded by the caller once the packet is sent)."""
        message = out.message
        props = message.properties
        topic = message.topic
        changes: dict[str, object] = {}
        if out.subscription_ids:
            changes["subscription_identifiers"] = out.subscription_ids
        if message.expires_at is not None:
            changes["message_expiry_interval"] = message.remaining_expiry(self.broker.clock.time())
        new_alias: str | None = None
        if self.alias_maximum_out:
            aliases = self._aliases_out or {}
            alias = aliases.get(topic)
            if alias is not None:
                changes["topic_alias"] = alias
                topic = ""
            elif len(aliases) < self.alias_maximum_out:
                changes["topic_alias"] = len(aliases) + 1
                new_alias = topic
        if changes:
            props = replace(props, **changes)  # type: ignore[arg-type]
        data = codec.encode_publish(
            topic,
            message.payload,
            out.qos,
            out.retain,
            dup,
            out.packet_id if out.qos else None,
            codec.encode_properties(props),
            self.version,
        )
        return data, new_alias

    # ------------------------------------------------------------------ errors and closing

    def _protocol_error(self, error: MQTTError) -> None:
        self.broker.stats.protocol_errors += 1
        log.info(
            "closing %s (%s): %s", self.client_id or self.link.peer, error.reason_code.name, error
        )
        # CONNACK with the reason for a refused CONNECT, DISCONNECT on v5 afterwards, nothing
        # on 3.1.1 (§4.13); the sans-IO connection knows which applies.
        reply = self.conn.error_bytes(error)
        if reply:
            self.link.write(reply)
        self._close()

    def disconnect(self, reason: ReasonCode, reason_string: str | None = None) -> None:
        """Server-initiated disconnect (§3.14): v5 gets a DISCONNECT with the reason."""
        if self.closed:
            return
        if self.is_v5 and self.connected:
            props = (
                NO_PROPERTIES if reason_string is None else Properties(reason_string=reason_string)
            )
            self.link.write(
                codec.encode(Disconnect(reason_code=reason, properties=props), self.version)
            )
        self._close()

    def _close(self) -> None:
        self.closed = True
        self.link.close()

    def _tell_disconnected(self) -> None:
        if self.connected and self.info is not None:
            self._notify_observers(self.info, connected=False)

    def _notify_observers(self, info: ClientInfo, *, connected: bool) -> None:
        """Tell the connection observers; one that fails (say, its database is locked or the
        disk is full) costs its own bookkeeping only: the connection and its cleanup go on."""
        stats = self.broker.stats
        for observer in self.broker.observers:
            try:
                if connected:
                    observer.connected(info)
                else:
                    observer.disconnected(info)
            except Exception:
                stats.observer_errors += 1
                if stats.observer_errors == 1:
                    log.exception("connection observer %r failed (logged once)", observer)

    def taken_over(self, *, publish_will: bool) -> None:
        """Another connection claimed this client id [MQTT-3.1.4-3]."""
        session = self.session
        self.disconnect(ReasonCode.SESSION_TAKEN_OVER)
        self._tell_disconnected()
        self.connected = False
        self.broker.deadlines.disarm(self)
        self.broker.clients.discard(self)
        will, self.will = self.will, None
        if session is not None and session.client is self:
            session.client = None
            if will is not None and (publish_will or self.will_delay == 0):
                self.broker.publish_will(will)
                # Otherwise the new connection resumes the session within the will delay, and
                # the will is not sent [MQTT-3.1.3-9].

    def server_shutdown(self) -> None:
        self.disconnect(ReasonCode.SERVER_SHUTTING_DOWN)

    # ------------------------------------------------------------------ keep alive

    def deadline_passed(self) -> None:
        """The broker's deadline wheel (broker/timeouts.py) hands the client over: before
        CONNECT, the CONNECT timeout has run out; after it, the keep alive may have. Checked
        lazily: the deadline is armed once per keep-alive period, not per packet, and re-armed
        here for the time left when packets came meanwhile."""
        if self.closed:
            return
        broker = self.broker
        if not self.connected:
            log.info(
                "closing %s: no CONNECT within %ss", self.link.peer, broker.settings.connect_timeout
            )
            self._close()
            return
        if not self.keep_alive:
            return
        due = self.last_received + self.keep_alive * 1.5  # [MQTT-3.1.2-22]
        if broker.clock.time() < due:
            broker.deadlines.arm(self, due)
            return
        log.info("closing %s: keep alive of %ss expired", self.client_id, self.keep_alive)
        self.disconnect(ReasonCode.KEEP_ALIVE_TIMEOUT)

    # ------------------------------------------------------------------ handlers

    def _handle_connect(self, packet: Connect) -> None:
        broker = self.broker
        settings = broker.settings
        broker.deadlines.disarm(self)  # the CONNECT came in time
        self.version = packet.protocol_version
        self.is_v5 = is_v5 = packet.protocol_version == ProtocolVersion.V5
        props = packet.properties
        client_id = packet.client_id
        assigned: str | None = None

        def refuse(reason: ReasonCode, text: str) -> None:
            # Counted by reason, and a line in the audit log (rate-limited: observe/audit.py).
            broker.stats.connect_refused(self.link.peer, client_id, packet.username, reason, text)
            log.debug("refused CONNECT from %s (%r): %s", self.link.peer, client_id, text)
            if is_v5:
                rprops = Properties(reason_string=text)
                self._send(ConnAck(reason_code=reason, properties=rprops))
            else:
                code = _V3_CONNACK.get(reason, ConnackReturnCode.SERVER_UNAVAILABLE)
                self._send(ConnAck(reason_code=code))
            self._close()

        if len(broker.clients) > settings.max_connections:
            refuse(
                ReasonCode.SERVER_BUSY if is_v5 else ReasonCode.SERVER_UNAVAILABLE,
                "too many connections",
            )
            return
        if not client_id:
            if not is_v5 and not packet.clean_start:
                # [MQTT-3.1.3-8]: a zero-byte id needs CleanSession=1 in 3.1.1.
                refuse(
                    ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "empty client id needs clean session"
                )
                return
            client_id = "auto-" + uuid.uuid4().hex
            assigned = client_id if is_v5 else None
        elif len(client_id.encode()) > settings.max_client_id_length:
            refuse(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "client id too long")
            return
        if props.authentication_method is not None:
            # Enhanced authentication (§4.12) is not offered.
            refuse(ReasonCode.BAD_AUTHENTICATION_METHOD, "authentication method not supported")
            return
        # What the transport proved before the CONNECT (a TLS client certificate, a signed
        # WebSocket URL: broker/auth.py); a link that proves nothing has no such attribute.
        credential: Credential | None = getattr(self.link, "credential", None)
        if credential is None:
            decision = broker.authenticator.authenticate(packet, self.link.peer)
        else:
            decision = broker.authenticator.authenticate_credential(
                packet, self.link.peer, credential
            )
        if not decision.allowed:
            refuse(decision.reason_code, decision.reason or "not authorized")
            return
        self.account = decision.account
        if decision.max_subscriptions is not None:
            self.max_subscriptions = min(self.max_subscriptions, decision.max_subscriptions)
        if decision.client_id is not None:
            client_id = decision.client_id
            assigned = client_id if is_v5 and not packet.client_id else None
        will = packet.will
        if will is not None:
            if will.qos > settings.max_qos and is_v5:
                # [MQTT-3.2.2-12]; a 3.1.1 will is downgraded instead, below.
                refuse(ReasonCode.QOS_NOT_SUPPORTED, "will QoS above the maximum")
                return
            if will.retain and not settings.retain_available:
                refuse(ReasonCode.RETAIN_NOT_SUPPORTED, "retain not available")  # [MQTT-3.2.2-13]
                return
            error = validate_topic_name(
                will.topic,
                max_length=settings.max_topic_length,
                max_levels=settings.max_topic_levels,
            )
            if error is not None:
                refuse(ReasonCode.TOPIC_NAME_INVALID, f"will topic: {error}")
                return

        info = ClientInfo(
            client_id,
            packet.username,
            self.link.peer,
            int(packet.protocol_version),
            self.account,
            decision.subject,
            decision.policy,
        )
        if will is not None:
            will_message = Message(
                topic=will.topic,
                payload=will.payload,
                qos=min(will.qos, settings.max_qos),
                retain=will.retain,
                properties=_message_properties(will.properties),
                origin=client_id,
                expiry_interval=will.properties.message_expiry_interval,
                account=self.account,
            )
            try:
                # The Will is published as this client when it fires: it needs the client's
                # right to publish there now (as AWS IoT checks iot:Publish on the Will topic).
                broker.admission.authorize(will_message, info)
            except PublishRefused as refusal:
                broker.stats.dropped_not_authorized += 1
                refuse(ReasonCode.NOT_AUTHORIZED, f"will: {refusal.reason}")
                return
            policy = decision.policy
            if will.retain and policy is not None and not policy.may_retain(will.topic):
                broker.stats.dropped_not_authorized += 1
                refuse(ReasonCode.NOT_AUTHORIZED, f"will: not authorized to retain on {will.topic}")
                return
            self.will = Will(will_message, info)
            self.will_delay = will.properties.will_delay_interval or _NO_WILL_DELAY
        self.client_id = client_id
        self.info = info
        # Session Expiry Interval (§3.1.2.11.2): v5 property, 0 when absent; a 3.1.1 persistent
        # session lasts "forever", which the hub caps like any v5 request.
        if is_v5:
            requested = props.session_expiry_interval or 0
        else:
            requested = 0 if packet.clean_start else 0xFFFFFFFF
        expiry = min(requested, settings.max_session_expiry)
        if requested == 0xFFFFFFFF and settings.max_session_expiry >= 0xFFFFFFFF:
            expiry = 0xFFFFFFFF
        # Keep alive, possibly overridden by the server (§3.2.2.3.14).
        keep_alive = packet.keep_alive
        server_keep_alive = settings.server_keep_alive
        if is_v5 and server_keep_alive is not None:
            keep_alive = server_keep_alive
        self.keep_alive = keep_alive
        if is_v5:
            if props.receive_maximum is not None:
                self.window = min(settings.max_inflight, props.receive_maximum)
            if props.maximum_packet_size is not None:
                self.max_packet_size = props.maximum_packet_size
            self.alias_maximum_out = min(props.topic_alias_maximum or 0, 65535)

        session, present = broker.open_session(self, packet.clean_start, expiry)
        self.session = session
        broker.stats.connections_total += 1

        if not is_v5:
            self._send(ConnAck(session_present=present, reason_code=0))
        elif expiry == requested and assigned is None:
            # What the hub tells every client alike (§3.2.2.3): encoded once.
            connack = broker.v5_connacks.get(present)
            if connack is None:
                connack = broker.v5_connacks[present] = self.conn.send(
                    _v5_connack(settings, present, None, None)
                )
            self.link.write(connack)
        else:
            expiry_shown = expiry if expiry != requested else None
            self._send(_v5_connack(settings, present, expiry_shown, assigned))
        self.connected = True
        self.connected_at_ms = int(time.time() * 1000)
        self._notify_observers(info, connected=True)
        if keep_alive:
            broker.deadlines.arm(self, self.last_received + keep_alive * 1.5)
        session.delivery.resume(self)

    def resend(self, out: Outgoing) -> None:
        """Resend one in-flight message: PUBREL if it was released, else PUBLISH with DUP."""
        if out.released:
            self._send(PubRel(packet_id=out.packet_id))
        else:
            self.send_publish(out, True)

    def _handle_publish(self, packet: Publish) -> None:
        broker = self.broker
        settings = broker.settings
        qos = packet.qos
        if not self.connected:
            raise ProtocolError("PUBLISH before CONNACK")
        if qos > settings.max_qos:
            # [MQTT-3.2.2-11]: QoS above the Maximum QoS is a protocol error (0x9B).
            raise ProtocolError(
                f"QoS {qos} is above the maximum {settings.max_qos}", ReasonCode.QOS_NOT_SUPPORTED
            )
        if packet.retain and not settings.retain_available:
            raise ProtocolError("retain is not available", ReasonCode.RETAIN_NOT_SUPPORTED)
        props = packet.properties
        if props is not NO_PROPERTIES and props.subscription_identifiers:
            raise ProtocolError(
                "PUBLISH from a client carries a Subscription Identifier"
            )  # [MQTT-3.3.4-6]
        topic = packet.topic
        if len(topic) > settings.max_topic_length or topic.count("/") >= settings.max_topic_levels:
            error = validate_topic_name(
                topic, max_length=settings.max_topic_length, max_levels=settings.max_topic_levels
            )
            if error is not None:
                raise ProtocolError(error, ReasonCode.TOPIC_NAME_INVALID)
        session = self.session
        assert session is not None
        packet_id = packet.packet_id or 0
        if qos == 2 and session.awaits_release(packet_id):
            # A resent QoS 2 PUBLISH we already have: acknowledge, do not route twice (§4.3.3).
            self._acknowledge(PubRec(packet_id=packet_id), False)
            return

        reason = ReasonCode.SUCCESS
        ticket: AckTicket | None = None
        writes = broker.store.sequence
        if props.payload_format_indicator == 1 and not _is_utf8(packet.payload):
            reason = ReasonCode.PAYLOAD_FORMAT_INVALID  # §3.3.2.3.2 (MAY)
        else:
            message = Message(
                topic=topic,
                payload=packet.payload,
                qos=qos,
                retain=packet.retain,
                properties=_message_properties(props),
                origin=self.client_id,
                expiry_interval=props.message_expiry_interval,
                account=self.account,
            )
            info = self.info
            assert info is not None
            policy = info.policy
            try:
                if packet.retain and policy is not None and not policy.may_retain(topic):
                    broker.stats.dropped_not_authorized += 1
                    raise PublishRefused(
                        Refusal.NOT_AUTHORIZED,
                        ReasonCode.NOT_AUTHORIZED,
                        f"not authorized to retain on {topic}",
                    )
                matched = broker.publish(message, info)
                if broker.cluster is not None:
                    ticket = broker.cluster.take_ticket()
            except PublishRefused as refusal:
                if (
                    refusal.kind is Refusal.NOT_AUTHORIZED
                    and not self.is_v5
                    and policy is not None
                    and policy.closes_on_denial
                ):
                    # AWS IoT ends a 3.1.1 connection that publishes where it may not.
                    log.info("closing %s: %s", self.client_id, refusal.reason)
                    self._close()
                    return
                if refusal.kind is Refusal.UNAVAILABLE and not self.is_v5:
                    # The store cannot take more (full, or its writer behind): refuse rather
                    # than accept and lose. 3.1.1 has no negative acknowledgement, so its
                    # client is disconnected and sends the message again when it reconnects.
                    log.warning("store not accepting: disconnecting %s", self.client_id)
                    self._close()
                    return
                reason = refusal.reason_code
            else:
                if matched == 0 and self.is_v5:
                    reason = ReasonCode.NO_MATCHING_SUBSCRIBERS
        if qos == 0:
            return
        # 3.1.1 has no negative acknowledgement: a refused message is acknowledged and dropped.
        code = reason if self.is_v5 else 0
        ack: PubAck | PubRec
        if qos == 1:
            ack = PubAck(packet_id=packet_id or 0, reason_code=code)
        else:
            if reason < 0x80:
                session.receiving(packet_id or 0, True)
                if session.persistent:
                    broker.store.set_inbound_qos2(session.key, packet_id or 0, True)
            ack = PubRec(packet_id=packet_id or 0, reason_code=code)
        if ticket is None:
            self._acknowledge(ack, broker.store.sequence != writes)
            return

        def answer(refused: int) -> None:
            # In a cluster: once the message stream has it (cluster/stream.py). Refused there,
            # the publisher is not told it was accepted: 3.1.1 (no negative acknowledgement)
            # is disconnected and sends it again, as when the store refuses.
            if not refused:
                self._send_unless_closed(ack)
                return
            if qos == 2:
                self._forget_inbound(packet_id or 0)
            if not self.is_v5:
                log.warning("message stream not accepting: disconnecting %s", self.client_id)
                self._close()
            elif qos == 1:
                self._send_unless_closed(PubAck(packet_id=packet_id or 0, reason_code=refused))
            else:
                self._send_unless_closed(PubRec(packet_id=packet_id or 0, reason_code=refused))

        self._chain(answer, ticket)

    def _forget_inbound(self, packet_id: int) -> None:
        session = self.session
        if session is not None and session.awaits_release(packet_id):
            session.receiving(packet_id, False)
            if session.persistent:
                self.broker.store.set_inbound_qos2(session.key, packet_id, False)

    def _chain(self, answer: Callable[[int], None], ticket: AckTicket | None) -> None:
        """An answer that waits for the store's commit and for ``ticket`` (the cluster's
        replicated storage), in request order [MQTT-4.6.0-2]: answers are queued here while
        one of them waits for a ticket, and sent from the front as they become ready.
        ``answer`` gets the ticket's refusal reason code, 0 when stored."""
        chain = self._ack_chain
        if chain is None:
            chain = self._ack_chain = deque()
        # [answer, conditions outstanding, refusal reason code]
        entry: list[Any] = [answer, 1 if ticket is None else 2, 0]
        chain.append(entry)
        self._acks_waiting += 1

        def one(refused: int = 0) -> None:
            if refused and not entry[2]:
                entry[2] = refused
            entry[1] -= 1
            if not entry[1]:
                self._flush_chain()

        # After everything the store was told so far (earlier answers waiting on it too).
        self.broker.store.after_commit(one)
        if ticket is not None:
            ticket.then(one)

    def _flush_chain(self) -> None:
        chain = self._ack_chain
        while chain and not chain[0][1]:
            answer, _conditions, refused = chain.popleft()
            self._acks_waiting -= 1
            answer(refused)
        if not chain:
            self._ack_chain = None

    def _acknowledge(self, ack: Packet, must_wait: bool) -> None:
        """Acknowledged means stored: an answer whose request changed the store goes out once
        the store has committed (docs/architecture.md, "Acknowledged means stored"). Answers
        keep the order of the requests [MQTT-4.6.0-2], so while one waits, later ones queue
        behind it (the store runs commit callbacks in order)."""
        if not must_wait and not self._acks_waiting:
            self._send(ack)
            return
        if self._ack_chain is not None:
            # Behind an answer that waits for the cluster: keep the order.
            self._chain(lambda _refused: self._send_unless_closed(ack), None)
            return
        self._acks_waiting += 1

        def send() -> None:
            self._acks_waiting -= 1
            self._send_unless_closed(ack)

        self.broker.store.after_commit(send)

    def _handle_puback(self, packet: PubAck) -> None:
        session = self.session
        if session is None:
            raise ProtocolError("PUBACK before CONNECT")
        session.delivery.acknowledged(packet.packet_id, 1)

    def _handle_pubrec(self, packet: PubRec) -> None:
        session = self.session
        if session is None:
            raise ProtocolError("PUBREC before CONNECT")
        outcome = session.delivery.received(packet.packet_id, packet.reason_code)
        if outcome == PubRecOutcome.UNKNOWN:
            code = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if self.is_v5 else 0
            self._acknowledge(PubRel(packet_id=packet.packet_id, reason_code=code), False)
        elif outcome == PubRecOutcome.RELEASED:
            ticket = session.delivery.release_ticket(packet.packet_id)
            if ticket is not None:
                # A copy from the cluster's stream: its release is recorded in the cluster
                # before the PUBREL leaves (a refusal there does not stop the flow).
                release = PubRel(packet_id=packet.packet_id)
                self._chain(lambda _refused: self._send_unless_closed(release), ticket)
                return
            # The release is on disk before the PUBREL leaves (queue.py, ``received``).
            self._acknowledge(PubRel(packet_id=packet.packet_id), session.persistent)

    def _handle_pubrel(self, packet: PubRel) -> None:
        session = self.session
        if session is None:
            raise ProtocolError("PUBREL before CONNECT")
        if session.awaits_release(packet.packet_id):
            session.receiving(packet.packet_id, False)
            if session.persistent:
                self.broker.store.set_inbound_qos2(session.key, packet.packet_id, False)
            # The packet id is free on disk before PUBCOMP lets the publisher reuse it: a crash
            # in between would otherwise take its next message for a duplicate and drop it.
            self._acknowledge(PubComp(packet_id=packet.packet_id), session.persistent)
        else:
            code = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if self.is_v5 else 0
            self._acknowledge(PubComp(packet_id=packet.packet_id, reason_code=code), False)

    def _handle_pubcomp(self, packet: PubComp) -> None:
        session = self.session
        if session is None:
            raise ProtocolError("PUBCOMP before CONNECT")
        session.delivery.acknowledged(packet.packet_id, 2)

    def _handle_subscribe(self, packet: Subscribe) -> None:
        broker = self.broker
        settings = broker.settings
        session = self.session
        if session is None:
            raise ProtocolError("SUBSCRIBE before CONNECT")
        writes = broker.store.sequence
        ids = packet.properties.subscription_identifiers
        subscription_id = ids[0] if ids else None
        codes: list[int] = []
        to_send: list[tuple[str, int, int | None]] = []
        if not self.is_v5 and self._denied_and_closed(packet):
            return
        cluster = broker.cluster
        # In a cluster, a persistent session's subscriptions are kept in JetStream before the
        # SUBACK says so: (index in codes, filter, what it waits for).
        waits: list[tuple[int, str, AckTicket]] = []
        for sub in packet.subscriptions:
            code = self._check_subscription(session, sub.topic_filter, sub.no_local)
            granted = min(sub.qos, settings.max_qos)
            if code is None and cluster is not None and session.persistent:
                code = cluster.check_subscription(session, sub.topic_filter, granted)
            if code is not None:
                codes.append(code if self.is_v5 else _FAILURE_V3)
                continue
            sub = replace(sub, qos=granted) if granted != sub.qos else sub
            is_new = broker.subscribe(session, sub, subscription_id)
            codes.append(granted)
            if cluster is not None:
                ticket = cluster.take_ticket()
                if ticket is not None:
                    waits.append((len(codes) - 1, sub.topic_filter, ticket))
            shared = sub.topic_filter.startswith("$share/")
            # Retain Handling (§3.8.3.1); no retained messages for shared subscriptions (§4.8.2).
            if not shared and (sub.retain_handling == 0 or (sub.retain_handling == 1 and is_new)):
                to_send.append((sub.topic_filter, granted, subscription_id))

        def answer() -> None:
            if self.closed:
                return
            self._send(SubAck(packet_id=packet.packet_id, reason_codes=tuple(codes)))
            refused = {f for i, f, _t in waits if codes[i] >= 0x80}
            for topic_filter, granted, sid in to_send:
                if topic_filter in refused:
                    continue
                for message in broker.retained_for(self.account, topic_filter):
                    sub_ids = () if sid is None else (sid,)
                    broker.deliver_retained(session, message, min(message.qos, granted), sub_ids)

        # A persistent session's new subscriptions are on disk before the SUBACK says so,
        # and the SUBACK keeps its place among the acknowledgements.
        if waits:
            for index, topic_filter, ticket in waits:
                ticket.then(partial(self._subscription_stored, index, topic_filter, codes))
            self._chain(lambda _refused: answer(), _AllOf([t for _i, _f, t in waits]))
        elif self._ack_chain is not None:
            self._chain(lambda _refused: answer(), None)
        elif broker.store.sequence != writes or self._acks_waiting:
            self._acks_waiting += 1

            def later() -> None:
                self._acks_waiting -= 1
                answer()

            broker.store.after_commit(later)
        else:
            answer()

    def _subscription_stored(
        self, index: int, topic_filter: str, codes: list[int], refused: int
    ) -> None:
        """The cluster could not keep a persistent session's subscription (its JetStream
        consumer or its record): refused in the SUBACK (3.1.1: 0x80) and removed."""
        if not refused:
            return
        codes[index] = refused if self.is_v5 else _FAILURE_V3
        session = self.session
        if session is not None:
            self.broker.unsubscribe(session, topic_filter)

    def _denied_and_closed(self, packet: Subscribe) -> bool:
        """A 3.1.1 client whose policy says so (AWS IoT's answer) is disconnected, with
        nothing subscribed, when it asks for a filter it may not subscribe to."""
        info = self.info
        policy = None if info is None else info.policy
        authorizer = self.broker.authorizer
        if info is None or policy is None or not policy.closes_on_denial or authorizer is None:
            return False
        for sub in packet.subscriptions:
            if not authorizer.may_subscribe(info, sub.topic_filter).allowed:
                self.broker.stats.dropped_not_authorized += 1
                log.info(
                    "closing %s: not authorized to subscribe to %s",
                    self.client_id,
                    sub.topic_filter,
                )
                self._close()
                return True
        return False

    def _check_subscription(
        self, session: Session, topic_filter: str, no_local: bool
    ) -> int | None:
        """None if the filter may be subscribed, else the v5 reason code to refuse it with."""
        settings = self.broker.settings
        error = validate_topic_filter(
            topic_filter, max_length=settings.max_topic_length, max_levels=settings.max_topic_levels
        )
        if error is not None:
            return ReasonCode.TOPIC_FILTER_INVALID
        if no_local and topic_filter.startswith("$share/"):
            raise ProtocolError("No Local on a shared subscription")  # [MQTT-3.8.3-4]
        if topic_filter not in session.subscriptions:
            if len(session.subscriptions) >= self.max_subscriptions:
                return ReasonCode.QUOTA_EXCEEDED
            # Filters are held in memory for as long as the session lasts: bounded in bytes
            # per session and hub-wide, so long filters cannot fill the hub.
            size = len(topic_filter)
            if (
                session.subscription_bytes + size > settings.max_subscription_bytes
                or self.broker.subscription_bytes + size > settings.max_subscription_bytes_total
            ):
                return ReasonCode.QUOTA_EXCEEDED
        authorizer = self.broker.authorizer
        if authorizer is not None and self.info is not None:
            decision = authorizer.may_subscribe(self.info, topic_filter)
            if not decision.allowed:
                return decision.reason_code
        return None

    def _handle_unsubscribe(self, packet: Unsubscribe) -> None:
        session = self.session
        if session is None:
            raise ProtocolError("UNSUBSCRIBE before CONNECT")
        writes = self.broker.store.sequence
        codes = tuple(
            ReasonCode.SUCCESS
            if self.broker.unsubscribe(session, f)
            else ReasonCode.NO_SUBSCRIPTION_EXISTED
            for f in packet.topic_filters
        )
        ack = UnsubAck(packet_id=packet.packet_id, reason_codes=codes if self.is_v5 else ())
        cluster = self.broker.cluster
        ticket = cluster.take_ticket() if cluster is not None else None
        if ticket is not None:
            # A persistent session's subscription record in the cluster is updated first.
            self._chain(lambda _refused: self._send_unless_closed(ack), ticket)
            return
        self._acknowledge(ack, self.broker.store.sequence != writes)

    def _handle_pingreq(self, packet: PingReq) -> None:
        self._send(PingResp())

    def _handle_disconnect(self, packet: Disconnect) -> None:
        session = self.session
        expiry = packet.properties.session_expiry_interval
        if session is not None and expiry is not None:
            if session.expiry_interval == 0 and expiry != 0:
                raise ProtocolError(
                    "Session Expiry set on DISCONNECT after 0 on CONNECT"
                )  # [MQTT-3.14.2-2]
            self.broker.set_session_expiry(
                session, min(expiry, self.broker.settings.max_session_expiry)
            )
        if packet.reason_code != ReasonCode.DISCONNECT_WITH_WILL_MESSAGE:
            self.will = None  # a normal DISCONNECT discards the will [MQTT-3.1.2-10]
        self._close()

    def _handle_auth(self, packet: Auth) -> None:
        raise ProtocolError("AUTH without an authentication method")  # §4.12


def _packet_id_offset(data: bytes, message: Message, is_v5: bool) -> int:
    """Where the packet identifier sits in an encoded QoS 1/2 PUBLISH: right after the topic."""
    # Fixed header: 1 byte + 1..4 length bytes; then topic length (2) + topic.
    index = 1
    while data[index] & 0x80:
        index += 1
    topic_length = (data[index + 1] << 8) | data[index + 2]
    return index + 3 + topic_length


def _is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _message_properties(props: Properties) -> Properties:
    """The properties that travel with a message: per-hop ones (topic alias, subscription
    identifiers, will delay) are dropped [MQTT-3.3.2-?]. Message Expiry is recomputed per
    delivery from ``Message.expires_at``."""
    if props is NO_PROPERTIES:
        return props
    if (
        props.topic_alias is None
        and not props.subscription_identifiers
        and props.will_delay_interval is None
        and props.message_expiry_interval is None
    ):
        return props
    return replace(
        props,
        topic_alias=None,
        subscription_identifiers=(),
        will_delay_interval=None,
        message_expiry_interval=None,
    )


_HANDLERS: dict[type, Callable[[Client, Packet], None]] = {
    Connect: Client._handle_connect,  # type: ignore[dict-item]
    Publish: Client._handle_publish,  # type: ignore[dict-item]
    PubAck: Client._handle_puback,  # type: ignore[dict-item]
    PubRec: Client._handle_pubrec,  # type: ignore[dict-item]
    PubRel: Client._handle_pubrel,  # type: ignore[dict-item]
    PubComp: Client._handle_pubcomp,  # type: ignore[dict-item]
    Subscribe: Client._handle_subscribe,  # type: ignore[dict-item]
    Unsubscribe: Client._handle_unsubscribe,  # type: ignore[dict-item]
    PingReq: Client._handle_pingreq,  # type: ignore[dict-item]
    Disconnect: Client._handle_disconnect,  # type: ignore[dict-item]
    Auth: Client._handle_auth,  # type: ignore[dict-item]
}


def _v5_connack(
    settings: MQTTSettings, present: bool, expiry: int | None, assigned: str | None
) -> ConnAck:
    """A successful MQTT 5 CONNACK: the limits the hub holds every client to (§3.2.2.3), the
    Session Expiry Interval when the hub changed the client's, an assigned client id."""
    return ConnAck(
        session_present=present,
        reason_code=0,
        properties=Properties(
            session_expiry_interval=expiry,
            assigned_client_identifier=assigned,
            server_keep_alive=settings.server_keep_alive,
            receive_maximum=settings.receive_maximum if settings.receive_maximum < 65535 else None,
            maximum_qos=settings.max_qos if settings.max_qos < 2 else None,
            retain_available=None if settings.retain_available else 0,
            maximum_packet_size=settings.max_packet_size,
            topic_alias_maximum=settings.topic_alias_maximum or None,
        ),
    )
