"""paho-mqtt wrapped so that tests wait for events instead of sleeping.

Every callback pushes into a thread-safe queue; the test pulls with a timeout.  One
:class:`Client` is one paho client running its network loop in a background thread.
"""

from __future__ import annotations

import queue
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

TIMEOUT = 5.0


def unique(prefix: str = "t") -> str:
    """A name no other test uses: tests share one hub and must not see each other's traffic."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def props(packet_type: int, **values: Any) -> Properties:
    """paho Properties from keyword arguments, e.g. props(PacketTypes.PUBLISH, ContentType="x")."""
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


@dataclass
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def user_properties(self) -> list[tuple[str, str]]:
        return [tuple(p) for p in self.properties.get("UserProperty", [])]  # type: ignore[misc]

    @property
    def subscription_ids(self) -> list[int]:
        ids = self.properties.get("SubscriptionIdentifier", [])
        return sorted(ids if isinstance(ids, list) else [ids])


@dataclass
class ConnectResult:
    reason_code: int
    session_present: bool
    properties: dict[str, Any]


def _props_dict(properties: Properties | None) -> dict[str, Any]:
    return properties.json() if properties is not None else {}


class Client:
    def __init__(
        self,
        hub: Any,
        client_id: str | None = None,
        *,
        version: int = 5,
        transport: str = "tcp",
        clean: bool = True,
        keepalive: int = 60,
        session_expiry: int | None = None,
        connect_properties: dict[str, Any] | None = None,
        will: tuple[str, bytes, int, bool] | None = None,
        will_properties: dict[str, Any] | None = None,
    ) -> None:
        self.hub = hub
        self.version = version
        self.client_id = unique("c") if client_id is None else client_id
        self.messages: queue.Queue[Message] = queue.Queue()
        self._connacks: queue.Queue[ConnectResult] = queue.Queue()
        self._subacks: dict[int, queue.Queue[list[int]]] = {}
        self._unsubacks: dict[int, queue.Queue[list[int]]] = {}
        self._pubacks: dict[int, queue.Queue[int]] = {}
        self.disconnects: queue.Queue[int] = queue.Queue()
        self._clean = clean
        self._keepalive = keepalive
        self._connect_props: dict[str, Any] = dict(connect_properties or {})
        if session_expiry is not None:
            self._connect_props["SessionExpiryInterval"] = session_expiry
        self._transport = transport
        self._will = will
        self._will_properties = will_properties
        self.paho = self._new_paho()
        self._started = False
        self._used = False

    def _new_paho(self, clean: bool | None = None) -> paho.Client:
        """One paho client per network connection (paho leaks sockets when reused)."""
        protocol = paho.MQTTv5 if self.version == 5 else paho.MQTTv311
        c = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            transport=self._transport,
            clean_session=None if self.version == 5 else (self._clean if clean is None else clean),
        )
        if self._transport == "websockets":
            c.ws_set_options(path=self.hub.ws_path)
        # Reconnection is a test's decision, never paho's.
        c.reconnect_delay_set(60, 60)
        if self._will is not None:
            topic, payload, qos, retain = self._will
            wp = props(PacketTypes.WILLMESSAGE, **(self._will_properties or {}))
            c.will_set(
                topic, payload, qos, retain, properties=wp if self._will_properties else None
            )
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        c.on_publish = self._on_publish
        c.on_disconnect = self._on_disconnect
        return c

    # -- callbacks (paho's thread) --
    def _on_connect(self, c: Any, u: Any, flags: Any, rc: ReasonCode, properties: Any) -> None:
        self._connacks.put(
            ConnectResult(rc.value, bool(flags.session_present), _props_dict(properties))
        )

    def _on_message(self, c: Any, u: Any, msg: paho.MQTTMessage) -> None:
        p = _props_dict(getattr(msg, "properties", None))
        self.messages.put(Message(msg.topic, msg.payload, msg.qos, bool(msg.retain), p))

    def _waiter(self, table: dict[int, queue.Queue[Any]], mid: int) -> queue.Queue[Any]:
        return table.setdefault(mid, queue.Queue())

    def _on_subscribe(self, c: Any, u: Any, mid: int, rcs: list[ReasonCode], p: Any) -> None:
        self._waiter(self._subacks, mid).put([rc.value for rc in rcs])

    def _on_unsubscribe(self, c: Any, u: Any, mid: int, rcs: list[ReasonCode], p: Any) -> None:
        self._waiter(self._unsubacks, mid).put([rc.value for rc in rcs])

    def _on_publish(self, c: Any, u: Any, mid: int, rc: ReasonCode, p: Any) -> None:
        self._waiter(self._pubacks, mid).put(rc.value)

    def _on_disconnect(self, c: Any, u: Any, flags: Any, rc: ReasonCode, p: Any) -> None:
        self.disconnects.put(rc.value)

    # -- actions (test thread) --
    def connect(self, *, clean: bool | None = None, expect_success: bool = True) -> ConnectResult:
        clean = self._clean if clean is None else clean
        kwargs: dict[str, Any] = {"keepalive": self._keepalive}
        if self.version == 5:
            kwargs["clean_start"] = clean
            if self._connect_props:
                kwargs["properties"] = props(PacketTypes.CONNECT, **self._connect_props)
        if self._used or (self.version == 4 and clean != self._clean):
            self._stop_loop()  # a loop left over from a dropped connection
            self.paho = self._new_paho(clean)
            # Packet identifiers restart at 1: forget the old connection's acknowledgements.
            self._subacks.clear()
            self._unsubacks.clear()
            self._pubacks.clear()
        self._used = True
        self.paho.connect(self.hub.host, self.hub.port_for(self._transport), **kwargs)
        self.paho.loop_start()
        self._started = True
        result = self._connacks.get(timeout=TIMEOUT)
        if expect_success:
            assert result.reason_code == 0, f"CONNACK refused: {result}"
        return result

    def subscribe(
        self,
        topic_filter: str,
        qos: int = 0,
        *,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        subscription_id: int | None = None,
        user_properties: list[tuple[str, str]] | None = None,
    ) -> int:
        """Subscribe and wait for SUBACK; returns the granted QoS / reason code."""
        if self.version == 5:
            options = SubscribeOptions(qos, no_local, retain_as_published, retain_handling)
            p = None
            if subscription_id is not None or user_properties:
                p = props(PacketTypes.SUBSCRIBE)
                if subscription_id is not None:
                    p.SubscriptionIdentifier = subscription_id
                if user_properties:
                    p.UserProperty = user_properties
            rc, mid = self.paho.subscribe(topic_filter, options=options, properties=p)
        else:
            rc, mid = self.paho.subscribe(topic_filter, qos)
        assert rc == paho.MQTT_ERR_SUCCESS, rc
        return int(self._waiter(self._subacks, mid).get(timeout=TIMEOUT)[0])

    def unsubscribe(self, topic_filter: str) -> int:
        rc, mid = self.paho.unsubscribe(topic_filter)
        assert rc == paho.MQTT_ERR_SUCCESS, rc
        codes = self._waiter(self._unsubacks, mid).get(timeout=TIMEOUT)
        return int(codes[0]) if codes else 0

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        retain: bool = False,
        *,
        wait: bool = True,
        **properties: Any,
    ) -> int:
        """Publish; for QoS > 0 wait for the flow to complete and return the reason code.

        Keyword arguments are MQTT 5 PUBLISH properties by paho name (ContentType=...).
        """
        p = props(PacketTypes.PUBLISH, **properties) if properties else None
        info = self.paho.publish(topic, payload, qos, retain, properties=p)
        assert info.rc == paho.MQTT_ERR_SUCCESS, info.rc
        if not wait:
            return 0
        if qos == 0:
            info.wait_for_publish(TIMEOUT)
            assert info.is_published()
            return 0
        return int(self._waiter(self._pubacks, info.mid).get(timeout=TIMEOUT))

    def expect_message(self, timeout: float = TIMEOUT) -> Message:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no message within {timeout}s") from None

    def expect_messages(self, n: int, timeout: float = TIMEOUT) -> list[Message]:
        return [self.expect_message(timeout) for _ in range(n)]

    def until(self, payload: bytes, timeout: float = TIMEOUT) -> list[Message]:
        """Messages received up to and excluding the sentinel with `payload`."""
        before: list[Message] = []
        while True:
            msg = self.expect_message(timeout)
            if msg.payload == payload:
                return before
            before.append(msg)

    def expect_disconnect(self, timeout: float = TIMEOUT) -> int:
        """Wait for the connection to drop; returns the reason code paho reports."""
        try:
            return self.disconnects.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: still connected after {timeout}s") from None

    def disconnect(self, reason: int | None = None, **properties: Any) -> None:
        """Clean DISCONNECT (v5: with an optional reason code and properties)."""
        kwargs: dict[str, Any] = {}
        if reason is not None:
            kwargs["reasoncode"] = ReasonCode(PacketTypes.DISCONNECT, identifier=reason)
        if properties:
            kwargs["properties"] = props(PacketTypes.DISCONNECT, **properties)
        self.paho.disconnect(**kwargs)
        self.disconnects.get(timeout=TIMEOUT)
        self._stop_loop()

    def drop(self) -> None:
        """Close the TCP connection without DISCONNECT: an abnormal close (will is sent)."""
        sock = self.paho.socket()
        assert sock is not None
        sock = getattr(sock, "_socket", sock)  # paho's WebSocket wrapper holds the TCP socket
        # Shutting down makes paho's loop see the close and report it.
        sock.shutdown(socket.SHUT_RDWR)
        self.disconnects.get(timeout=TIMEOUT)
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._started:
            self.paho.loop_stop()
            self._started = False
            self._close_sockets()

    def stop(self) -> None:
        if self._started:
            try:
                if self.paho.is_connected():
                    self.paho.disconnect()
            finally:
                self.paho.loop_stop()
                self._started = False
                self._close_sockets()

    def _close_sockets(self) -> None:
        """paho makes a loopback TCP socket pair at each ``loop_start`` and closes it only
        when the client is collected (a second ``loop_start`` drops the first pair unclosed):
        closed now, with the loop's thread gone, so none is found unclosed later, when a
        ResourceWarning would fail whichever test is running (pyproject's filterwarnings)."""
        self.paho._reset_sockets()
