"""``IotDevice``: a device's MQTT connection for tests (paho-mqtt), with what a test asks of a
device: "did it get this message?" (``expect``), everything it got (``messages``), and
``subscribe`` / ``publish`` / ``disconnect`` / ``connect`` that wait for the hub's answer and
raise when it refuses.

A device does not reconnect by itself: when the hub closes its connection (a reset, a
takeover, a deleted device) it stays disconnected, which a test can see (``connected``,
``disconnect_reason``), until the test calls ``connect()`` again. Each ``connect()`` is a new
network connection (and a new paho client) with the same identity, so a persistent session
(``clean_start=False`` with a ``session_expiry``) resumes and gets what was queued meanwhile.
``messages`` and ``expect`` span every connection of the device.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

__all__ = ["DeviceError", "ExpectTimeout", "IotDevice", "SignIn"]

Message = mqtt.MQTTMessage


class DeviceError(AssertionError):
    """The hub refused what the device asked (CONNECT, SUBSCRIBE, PUBLISH), or did not answer
    in time. An AssertionError: in a test it reads as a failed expectation."""


class ExpectTimeout(DeviceError):
    """No message matched within the timeout."""


@dataclass(frozen=True, slots=True)
class SignIn:
    """How a device connects: its client id, user name and password (Alibaba), and the TLS
    context with its client certificate (AWS IoT)."""

    client_id: str
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None


@dataclass(repr=False)
class IotDevice:
    """One device. Build it with ``RunningHub.device()`` or the ``iot_device`` fixture."""

    host: str
    port: int
    sign_in: SignIn
    #: 5 (MQTT 5.0) or 4 (3.1.1)
    protocol: int = 5
    #: the session: start clean (3.1.1: Clean Session), and how long the hub keeps it after a
    #: disconnect (MQTT 5's Session Expiry Interval, seconds; 3.1.1 has none: the hub keeps
    #: a Clean Session 0 session up to ``mqtt.max_session_expiry``)
    clean_start: bool = True
    session_expiry: int = 0
    keepalive: int = 60
    timeout: float = 5.0
    #: Alibaba devices
    product_key: str | None = None
    device_name: str | None = None
    device_secret: str | None = None
    #: AWS IoT devices
    thing_name: str | None = None
    certificate_id: str | None = None
    certificate_pem: str | None = None
    private_key_pem: str | None = None
    #: the messages received, in order, over every connection: the last ``max_messages``
    #: (older ones are dropped, and counted in ``dropped``)
    messages: list[Message] = field(default_factory=list)
    max_messages: int = 10_000
    dropped: int = 0
    #: the reason code of the last end of a connection (None: connected, or never was)
    disconnect_reason: ReasonCode | None = None
    _client: mqtt.Client | None = None
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _connected: bool = False
    # The messages ``expect`` has returned, by id() (each is held in ``messages`` meanwhile).
    _taken: set[int] = field(default_factory=set)
    # Answers by packet id: SUBACK reason codes, PUBACK (PUBCOMP) reason codes.
    _subacks: dict[int, list[ReasonCode]] = field(default_factory=dict)
    _pubacks: dict[int, ReasonCode] = field(default_factory=dict)
    _connack: ReasonCode | None = None
    _session_present: bool = False
    _closed: bool = False

    def __repr__(self) -> str:
        state = "connected" if self._connected else "not connected"
        return f"<IotDevice {self.client_id!r} {state}, {len(self.messages)} messages>"

    @property
    def client_id(self) -> str:
        return self.sign_in.client_id

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def session_present(self) -> bool:
        """The last CONNACK's Session Present: the hub resumed a session (MQTT 5 §3.2.2.1.1)."""
        return self._session_present

    @property
    def client(self) -> mqtt.Client | None:
        """The paho client of the current connection (None before the first one)."""
        return self._client

    def topic(self, suffix: str) -> str:
        """An Alibaba device's own topic: ``/${productKey}/${deviceName}/user/<suffix>``."""
        if self.product_key is None or self.device_name is None:
            raise DeviceError("topic() is for Alibaba devices, which have a ProductKey")
        return f"/{self.product_key}/{self.device_name}/user/{suffix}"

    # ------------------------------------------------------------------ connection

    def connect(self, *, clean_start: bool | None = None, timeout: float | None = None) -> None:
        """Open a new connection; returns once the hub accepted it (CONNACK 0), else raises
        DeviceError with the hub's reason. ``clean_start`` overrides the device's for this
        connection only."""
        if self._closed:
            raise DeviceError("the device was closed")
        if self._connected:
            raise DeviceError(f"{self.client_id} is connected already")
        clean = self.clean_start if clean_start is None else clean_start
        v5 = self.protocol == 5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            # 3.1.1: a session outlives the connection only with Clean Session 0 (§3.1.2.4).
            clean_session=None if v5 else clean,
            reconnect_on_failure=False,
        )
        if self.sign_in.username is not None:
            client.username_pw_set(self.sign_in.username, self.sign_in.password)
        if self.sign_in.tls is not None:
            client.tls_set_context(self.sign_in.tls)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_publish = self._on_publish
        with self._lock:
            self._connack = None
            self.disconnect_reason = None
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self.session_expiry
        self._client = client
        try:
            if v5:
                client.connect(
                    self.host, self.port, self.keepalive, clean_start=clean, properties=properties
                )
            else:
                client.connect(self.host, self.port, self.keepalive)
        except OSError as error:  # refused, unreachable, a failed TLS handshake
            self._stop_client(client)
            raise DeviceError(
                f"{self.client_id} cannot reach {self.host}:{self.port}: {error}"
            ) from error
        client.loop_start()
        try:
            answer = self._wait(lambda: self._connack, timeout, "CONNACK")
        except BaseException:
            self._stop_client(client)
            raise
        if answer.is_failure:
            self._stop_client(client)
            raise DeviceError(f"the hub refused {self.client_id}: {answer} ({answer.value:#04x})")

    def disconnect(self, timeout: float | None = None) -> None:
        """Send DISCONNECT (its Will is not published) and close; a persistent session stays
        on the hub. Nothing happens if the device is not connected."""
        client = self._client
        if client is None:
            return
        if self._connected:
            client.disconnect()
            self._wait(lambda: True if not self._connected else None, timeout, "the disconnect")
        self._stop_client(client)

    def close(self) -> None:
        """Disconnect and let go of everything the device holds. Idempotent."""
        if self._closed:
            return
        try:
            self.disconnect()
        finally:
            self._closed = True
            client, self._client = self._client, None
            if client is not None:
                self._stop_client(client)

    def _stop_client(self, client: mqtt.Client) -> None:
        client.loop_stop()
        with self._lock:
            self._connected = False
        sock = client.socket()
        if sock is not None:
            sock.close()

    # ------------------------------------------------------------------ requests

    def subscribe(self, topic_filter: str, qos: int = 1, timeout: float | None = None) -> int:
        """Subscribe and wait for the SUBACK; returns the QoS granted. A refusal (SUBACK 0x80
        and above) raises DeviceError."""
        client = self._require_client()
        if self.protocol == 5:
            result, mid = client.subscribe(topic_filter, options=SubscribeOptions(qos=qos))
        else:
            result, mid = client.subscribe(topic_filter, qos)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise DeviceError(f"SUBSCRIBE {topic_filter} not sent: {mqtt.error_string(result)}")
        codes = self._wait(lambda: self._subacks.pop(mid, None), timeout, "SUBACK")
        code = codes[0]
        if code.is_failure:
            raise DeviceError(f"the hub refused SUBSCRIBE {topic_filter}: {code}")
        return int(code.value)

    def unsubscribe(self, topic_filter: str, timeout: float | None = None) -> None:
        client = self._require_client()
        result, mid = client.unsubscribe(topic_filter)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise DeviceError(f"UNSUBSCRIBE {topic_filter} not sent: {mqtt.error_string(result)}")
        self._wait(lambda: self._subacks.pop(mid, None), timeout, "UNSUBACK")

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 1,
        retain: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Publish; with QoS 1/2, wait for the hub's acknowledgement and raise DeviceError when
        it refuses (MQTT 5 PUBACK 0x80 and above; 3.1.1 has no refusal: it drops)."""
        client = self._require_client()
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise DeviceError(f"PUBLISH {topic} not sent: {mqtt.error_string(info.rc)}")
        code = self._wait(lambda: self._pubacks.pop(info.mid, None), timeout, "the PUBLISH")
        if code.is_failure:
            raise DeviceError(f"the hub refused PUBLISH {topic}: {code}")

    def expect(self, topic_filter: str, timeout: float | None = None) -> Message:
        """The first message received on a topic matching ``topic_filter`` that no earlier
        ``expect`` returned; waits up to ``timeout`` seconds (the device's, 5 by default) for
        it, then raises ExpectTimeout listing what did arrive."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self._lock:
            while True:
                for message in self.messages:
                    if id(message) not in self._taken and mqtt.topic_matches_sub(
                        topic_filter, message.topic
                    ):
                        self._taken.add(id(message))
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [m.topic for m in self.messages] or "nothing"
                    raise ExpectTimeout(
                        f"{self.client_id} got no message on {topic_filter!r} within {limit} s "
                        f"(received: {seen})"
                    )
                self._lock.wait(left)

    def _require_client(self) -> mqtt.Client:
        client = self._client
        if client is None or not self._connected:
            ended = self.disconnect_reason
            reason = f" (the hub closed it: {ended})" if ended is not None else ""
            raise DeviceError(f"{self.client_id} is not connected{reason}")
        return client

    def _wait(self, ready: Callable[[], Any], timeout: float | None, what: str) -> Any:
        """Wait (holding the lock between checks) until ``ready()`` gives something other than
        None; that. ``ready`` may take what it returns (pop an answer): it is called once
        per check."""
        limit = self.timeout if timeout is None else timeout
        found: list[Any] = []

        def check() -> bool:
            value = ready()
            if value is None:
                return False
            found.append(value)
            return True

        with self._lock:
            if not self._lock.wait_for(check, limit):
                reason = self.disconnect_reason
                gone = f"; the connection ended ({reason})" if reason is not None else ""
                raise DeviceError(f"{self.client_id}: no answer to {what} within {limit} s{gone}")
        return found[0]

    # ------------------------------------------------------------------ paho's thread

    def _on_connect(
        self, _c: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Any = None
    ) -> None:
        with self._lock:
            self._session_present = bool(flags.session_present)
            self._connack = reason
            self._connected = not reason.is_failure
            self._lock.notify_all()

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any = None
    ) -> None:
        with self._lock:
            self._connected = False
            self.disconnect_reason = reason
            if self._connack is None:
                self._connack = reason  # closed before any CONNACK: a refusal too
            self._lock.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: Message) -> None:
        with self._lock:
            self.messages.append(message)
            if len(self.messages) > self.max_messages:
                self._taken.discard(id(self.messages.pop(0)))
                self.dropped += 1
            self._lock.notify_all()

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, mid: int, codes: list[ReasonCode], _p: Any = None
    ) -> None:
        with self._lock:
            self._subacks[mid] = codes
            self._lock.notify_all()

    def _on_unsubscribe(
        self, _c: mqtt.Client, _u: Any, mid: int, codes: list[ReasonCode], _p: Any = None
    ) -> None:
        with self._lock:
            self._subacks[mid] = codes
            self._lock.notify_all()

    def _on_publish(
        self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any = None
    ) -> None:
        with self._lock:
            self._pubacks[mid] = reason
            self._lock.notify_all()
