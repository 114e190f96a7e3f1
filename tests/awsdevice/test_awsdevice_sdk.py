"""AWS IoT devices sign in with their X.509 certificates through the AWS IoT Device SDK,
unchanged: a thing, a key pair and certificate and a policy made with boto3's ``iot`` client,
then ``mqtt_connection_builder.mtls_from_path`` (MQTT 3.1.1) and
``mqtt5_client_builder.mtls_from_path`` (MQTT 5) against the hub's TLS port, trusting the
CA certificate ``thinghub ca show`` prints. They publish and subscribe, receive what boto3's
``iot-data`` ``Publish`` sends in their account, and use the SDK's shadow client on the
shadows the hub serves."""

from __future__ import annotations

import json
import queue
import uuid
from typing import Any

import pytest
from awscrt import mqtt, mqtt5
from awsiot import iotshadow
from devhub import TIMEOUT, DevHub
from sdk import Sdk5, Sdk311

pytestmark = pytest.mark.thinghub_only


def test_mqtt311_device_publishes_subscribes_and_hears_the_cloud(dev_hub: DevHub) -> None:
    device = dev_hub.device(dev_hub.iot())
    sdk = Sdk311(dev_hub, device, device.thing)
    try:
        assert sdk.connect() == {"session_present": False}
        topic = f"devices/{device.thing}/cmd"
        granted = sdk.subscribe(topic)
        assert granted["qos"] == mqtt.QoS.AT_LEAST_ONCE
        sdk.publish(topic, b"to myself").result(TIMEOUT)
        assert sdk.next_message() == (topic, b"to myself")
        # boto3 iot-data Publish, in the device's account, reaches it.
        dev_hub.iot_data().publish(topic=topic, qos=1, payload=b'{"reboot": true}')
        assert sdk.next_message() == (topic, b'{"reboot": true}')
    finally:
        sdk.close()


def test_mqtt5_client_builder_device(dev_hub: DevHub) -> None:
    device = dev_hub.device(dev_hub.iot())
    sdk = Sdk5(dev_hub, device, device.thing)
    try:
        connack = sdk.wait_connected().connack_packet
        assert connack.reason_code == mqtt5.ConnectReasonCode.SUCCESS
        topic = f"devices/{device.thing}/telemetry"
        assert sdk.subscribe(topic) == [mqtt5.SubackReasonCode.GRANTED_QOS_1]
        done = sdk.publish(topic, b'{"t": 21.5}')
        assert done.puback.reason_code == mqtt5.PubackReasonCode.SUCCESS
        received = sdk.next_message()
        assert (received.topic, received.payload) == (topic, b'{"t": 21.5}')
        dev_hub.iot_data().publish(topic=topic, qos=1, payload=b"from the cloud")
        assert sdk.next_message().payload == b"from the cloud"
    finally:
        sdk.close()


def test_sdk_shadow_client(dev_hub: DevHub) -> None:
    """``awsiot.iotshadow`` over an mTLS connection: an update is accepted by the hub's shadow
    service, and boto3 reads the same shadow."""
    device = dev_hub.device(dev_hub.iot())
    sdk = Sdk311(dev_hub, device, device.thing)
    accepted: queue.Queue[iotshadow.UpdateShadowResponse] = queue.Queue()
    deltas: queue.Queue[iotshadow.ShadowDeltaUpdatedEvent] = queue.Queue()
    try:
        sdk.connect()
        shadow = iotshadow.IotShadowClient(sdk.connection)
        future, _ = shadow.subscribe_to_update_shadow_accepted(
            iotshadow.UpdateShadowSubscriptionRequest(thing_name=device.thing),
            mqtt.QoS.AT_LEAST_ONCE,
            accepted.put,
        )
        future.result(TIMEOUT)
        future, _ = shadow.subscribe_to_shadow_delta_updated_events(
            iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name=device.thing),
            mqtt.QoS.AT_LEAST_ONCE,
            deltas.put,
        )
        future.result(TIMEOUT)
        shadow.publish_update_shadow(
            iotshadow.UpdateShadowRequest(
                thing_name=device.thing,
                state=iotshadow.ShadowState(reported={"color": "red"}),
                client_token="t1",
            ),
            mqtt.QoS.AT_LEAST_ONCE,
        ).result(TIMEOUT)
        answer = accepted.get(timeout=TIMEOUT)
        assert answer.state is not None and answer.state.reported == {"color": "red"}
        assert answer.client_token == "t1"
        stored = dev_hub.iot_data().get_thing_shadow(thingName=device.thing)
        assert json.loads(stored["payload"].read())["state"]["reported"] == {"color": "red"}
        # The cloud asks for another colour: the device hears the delta.
        dev_hub.iot_data().update_thing_shadow(
            thingName=device.thing,
            payload=json.dumps({"state": {"desired": {"color": "green"}}}).encode(),
        )
        assert deltas.get(timeout=TIMEOUT).state == {"color": "green"}
    finally:
        sdk.close()


def test_devices_live_in_their_certificates_account(dev_hub: DevHub, tenant_iot: Any) -> None:
    """A device of another account hears its own account's publishes only."""
    key_id, secret, iot = tenant_iot
    device = dev_hub.device(iot)
    sdk = Sdk5(dev_hub, device, device.thing)
    try:
        sdk.wait_connected()
        topic = f"shared/{uuid.uuid4().hex}"
        sdk.subscribe(topic)
        dev_hub.iot_data().publish(topic=topic, qos=1, payload=b"root account")
        dev_hub.iot_data(key_id, secret).publish(topic=topic, qos=1, payload=b"own account")
        # Copies leave in order: the root account's, sent first, would have come first.
        assert sdk.next_message().payload == b"own account"
        assert sdk.messages.empty()
    finally:
        sdk.close()
