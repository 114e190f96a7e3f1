"""The AWS IoT Device SDK (awsiotsdk, unchanged) as the tests drive it: an MQTT 3.1.1
connection from ``mqtt_connection_builder`` and an MQTT 5 client from
``mqtt5_client_builder``, each with its events in queues so that a test waits on what
happened rather than sleeping."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from awscrt import auth, mqtt, mqtt5
from awsiot import mqtt5_client_builder, mqtt_connection_builder
from devhub import TIMEOUT, DevHub, Device

#: a device made with boto3, or a certificate and key file made by hand
Identity = Device | tuple[Path, Path]


def _files(identity: Identity) -> tuple[str, str]:
    if isinstance(identity, Device):
        return str(identity.cert_file), str(identity.key_file)
    return str(identity[0]), str(identity[1])


class Sdk311:
    """``mqtt_connection_builder.mtls_from_path`` (or ``websockets_with_default_aws_signing``
    with ``credentials``) to the hub's TLS port, trusting the hub's CA."""

    def __init__(
        self,
        hub: DevHub,
        device: Identity | None,
        client_id: str,
        *,
        credentials: tuple[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.interrupted: queue.Queue[Exception] = queue.Queue()
        self.lost = threading.Event()
        common: dict[str, Any] = {
            "endpoint": hub.host,
            "port": hub.tls_port,
            "ca_filepath": str(hub.ca_file),
            "client_id": client_id,
            "clean_session": True,
            "keep_alive_secs": 30,
            # A refused connection is not retried behind the test's back for a while.
            "reconnect_min_timeout_secs": 30,
            "reconnect_max_timeout_secs": 30,
            "on_connection_interrupted": self._interrupted,
            **kwargs,
        }
        if credentials is not None:
            provider = auth.AwsCredentialsProvider.new_static(*credentials)
            self.connection = mqtt_connection_builder.websockets_with_default_aws_signing(
                region="us-east-1", credentials_provider=provider, **common
            )
        else:
            assert device is not None
            cert_file, key_file = _files(device)
            self.connection = mqtt_connection_builder.mtls_from_path(
                cert_filepath=cert_file, pri_key_filepath=key_file, **common
            )
        # What arrives on a resumed session's subscriptions, which this connection object
        # did not make itself.
        self.resumed: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connection.on_message(lambda topic, payload, **kw: self.resumed.put((topic, payload)))

    def _interrupted(self, connection: Any, error: Exception, **kwargs: Any) -> None:
        self.lost.set()
        self.interrupted.put(error)

    def connect(self) -> dict[str, Any]:
        result: dict[str, Any] = self.connection.connect().result(TIMEOUT)
        return result

    def subscribe(self, topic: str, qos: mqtt.QoS = mqtt.QoS.AT_LEAST_ONCE) -> dict[str, Any]:
        future, _packet_id = self.connection.subscribe(topic, qos, self._received)
        result: dict[str, Any] = future.result(TIMEOUT)
        return result

    def publish(
        self, topic: str, payload: bytes, qos: mqtt.QoS = mqtt.QoS.AT_LEAST_ONCE, **kw: Any
    ) -> Future[Any]:
        future, _packet_id = self.connection.publish(topic, payload, qos, **kw)
        return future

    def _received(self, topic: str, payload: bytes, **kwargs: Any) -> None:
        self.messages.put((topic, payload))

    def next_message(self, timeout: float = TIMEOUT) -> tuple[str, bytes]:
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        done = self.connection.disconnect()
        if not self.lost.is_set():
            done.result(TIMEOUT)
        # Else the hub closed it and the SDK waits to reconnect: the disconnect stops that,
        # and its future only completes with the next (never made) attempt.


class Sdk5:
    """``mqtt5_client_builder.mtls_from_path`` to the hub's TLS port, started."""

    def __init__(self, hub: DevHub, device: Identity, client_id: str, **kwargs: Any) -> None:
        self.messages: queue.Queue[mqtt5.PublishPacket] = queue.Queue()
        self.connected: queue.Queue[mqtt5.LifecycleConnectSuccessData] = queue.Queue()
        self.failures: queue.Queue[mqtt5.LifecycleConnectFailureData] = queue.Queue()
        self.disconnections: queue.Queue[mqtt5.LifecycleDisconnectData] = queue.Queue()
        self.stopped = threading.Event()
        cert_file, key_file = _files(device)
        self.client = mqtt5_client_builder.mtls_from_path(
            endpoint=hub.host,
            port=hub.tls_port,
            cert_filepath=cert_file,
            pri_key_filepath=key_file,
            ca_filepath=str(hub.ca_file),
            client_id=client_id,
            min_reconnect_delay_ms=30_000,
            max_reconnect_delay_ms=30_000,
            on_publish_received=lambda data: self.messages.put(data.publish_packet),
            on_lifecycle_connection_success=self.connected.put,
            on_lifecycle_connection_failure=self.failures.put,
            on_lifecycle_disconnection=self.disconnections.put,
            on_lifecycle_stopped=lambda data: self.stopped.set(),
            **kwargs,
        )
        self.client.start()

    def wait_connected(self) -> mqtt5.LifecycleConnectSuccessData:
        return self.connected.get(timeout=TIMEOUT)

    def subscribe(self, *filters: str, qos: mqtt5.QoS = mqtt5.QoS.AT_LEAST_ONCE) -> list[Any]:
        packet = mqtt5.SubscribePacket(
            subscriptions=[mqtt5.Subscription(topic_filter=f, qos=qos) for f in filters]
        )
        suback = self.client.subscribe(packet).result(TIMEOUT)
        return list(suback.reason_codes)

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: mqtt5.QoS = mqtt5.QoS.AT_LEAST_ONCE,
        retain: bool = False,
    ) -> Any:
        packet = mqtt5.PublishPacket(topic=topic, payload=payload, qos=qos, retain=retain)
        return self.client.publish(packet).result(TIMEOUT)

    def next_message(self, timeout: float = TIMEOUT) -> mqtt5.PublishPacket:
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        self.client.stop()
        self.stopped.wait(TIMEOUT)
