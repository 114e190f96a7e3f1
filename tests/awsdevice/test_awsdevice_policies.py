"""AWS IoT policies hold devices to what they allow, with the SDK's own clients: a refused
PUBLISH or SUBSCRIBE ends an MQTT 3.1.1 connection and gets 0x87 on MQTT 5, a refused
Receive silently drops the copy, ``${iot:ClientId}`` and thing-name policies, retained
messages need ``iot:RetainPublish``, and a new policy version applies to a device that is
already connected."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.request
import uuid
from typing import Any

import pytest
from awscrt import mqtt, mqtt5
from devhub import TIMEOUT, DevHub, allow, deny, policy
from sdk import Sdk5, Sdk311

pytestmark = pytest.mark.thinghub_only

ANY = "arn:aws:iot:*:*"


def stats(hub: DevHub) -> dict[str, Any]:
    with urllib.request.urlopen(f"{hub.endpoint}/api/stats", timeout=TIMEOUT) as answer:
        return dict(json.loads(answer.read()))


def test_refused_publish_ends_a_311_connection(dev_hub: DevHub) -> None:
    document = policy(
        allow(["iot:Connect", "iot:Subscribe", "iot:Receive"]),
        allow("iot:Publish", f"{ANY}:topic/open/*"),
    )
    device = dev_hub.device(dev_hub.iot(), document)
    sdk = Sdk311(dev_hub, device, device.thing)
    try:
        sdk.connect()
        sdk.subscribe("closed/#")
        sdk.publish("open/x", b"fine").result(TIMEOUT)
        sdk.publish("closed/x", b"refused", mqtt.QoS.AT_MOST_ONCE)
        error = sdk.interrupted.get(timeout=TIMEOUT)
        assert "UNEXPECTED_HANGUP" in str(error) or "CLOSED" in str(error), error
        assert sdk.messages.empty()  # the refused message was not routed
    finally:
        sdk.close()


def test_refused_publish_is_puback_0x87_on_mqtt5(dev_hub: DevHub) -> None:
    document = policy(allow(["iot:Connect"]), allow("iot:Publish", f"{ANY}:topic/open/*"))
    device = dev_hub.device(dev_hub.iot(), document)
    sdk = Sdk5(dev_hub, device, device.thing)
    try:
        sdk.wait_connected()
        refused = sdk.publish("closed/x", b"no")
        assert refused.puback.reason_code == mqtt5.PubackReasonCode.NOT_AUTHORIZED
        fine = sdk.publish("open/x", b"yes")  # the connection goes on
        assert fine.puback.reason_code in (
            mqtt5.PubackReasonCode.SUCCESS,
            mqtt5.PubackReasonCode.NO_MATCHING_SUBSCRIBERS,
        )
        assert sdk.disconnections.empty()
    finally:
        sdk.close()


def test_refused_subscribe(dev_hub: DevHub) -> None:
    """MQTT 5: SUBACK 0x87 for the refused filter, the others granted; 3.1.1: the
    connection ends, nothing subscribed."""
    document = policy(allow("iot:Connect"), allow("iot:Subscribe", f"{ANY}:topicfilter/ok/*"))
    iot = dev_hub.iot()
    device = dev_hub.device(iot, document)
    v5 = Sdk5(dev_hub, device, device.thing)
    try:
        v5.wait_connected()
        assert v5.subscribe("ok/a", "secret/#") == [
            mqtt5.SubackReasonCode.GRANTED_QOS_1,
            mqtt5.SubackReasonCode.NOT_AUTHORIZED,
        ]
    finally:
        v5.close()
    v311 = Sdk311(dev_hub, device, device.thing)
    try:
        v311.connect()
        v311.connection.subscribe("secret/#", mqtt.QoS.AT_LEAST_ONCE, lambda **kw: None)
        error = v311.interrupted.get(timeout=TIMEOUT)
        assert "HANGUP" in str(error) or "CLOSED" in str(error), error
    finally:
        v311.close()


def test_refused_receive_is_dropped_silently(dev_hub: DevHub) -> None:
    document = policy(
        allow(["iot:Connect", "iot:Subscribe"]),
        allow("iot:Receive", f"{ANY}:topic/feed/*"),
        deny("iot:Receive", f"{ANY}:topic/feed/private/*"),
    )
    device = dev_hub.device(dev_hub.iot(), document)
    sdk = Sdk5(dev_hub, device, device.thing)
    try:
        sdk.wait_connected()
        assert sdk.subscribe("feed/#") == [mqtt5.SubackReasonCode.GRANTED_QOS_1]
        before = stats(dev_hub)
        data = dev_hub.iot_data()
        data.publish(topic="feed/private/a", qos=1, payload=b"private")
        data.publish(topic="feed/private/b", qos=0, payload=b"private")
        data.publish(topic="feed/public/a", qos=1, payload=b"public")
        # Copies leave in order: had the private ones been sent, they would have come first.
        got = sdk.next_message()
        assert (got.topic, got.payload) == ("feed/public/a", b"public")
        assert sdk.messages.empty() and sdk.disconnections.empty()
        after = stats(dev_hub)
        assert _not_authorized(after) - _not_authorized(before) == 2
    finally:
        sdk.close()


def _not_authorized(figures: dict[str, Any]) -> int:
    """The count of messages dropped as not authorised, wherever /api/stats shows it."""
    found: list[int] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, f"{path}.{key}")
        elif isinstance(value, int) and "not_authorized" in path and "dropped" in path:
            found.append(value)

    walk(figures, "")
    assert found, f"no dropped not_authorized count in {figures}"
    return max(found)


def test_client_id_policy(dev_hub: DevHub) -> None:
    """``${iot:ClientId}``: the device connects under any client id and publishes under its
    own topics only."""
    document = policy(
        allow("iot:Connect", f"{ANY}:client/${{iot:ClientId}}"),
        allow("iot:Publish", f"{ANY}:topic/clients/${{iot:ClientId}}/*"),
    )
    device = dev_hub.device(dev_hub.iot(), document, attach_thing=False)
    client_id = f"meter-{uuid.uuid4().hex[:6]}"
    sdk = Sdk5(dev_hub, device, client_id)
    try:
        sdk.wait_connected()
        mine = sdk.publish(f"clients/{client_id}/reading", b"1")
        assert mine.puback.reason_code == mqtt5.PubackReasonCode.NO_MATCHING_SUBSCRIBERS
        theirs = sdk.publish("clients/someone-else/reading", b"1")
        assert theirs.puback.reason_code == mqtt5.PubackReasonCode.NOT_AUTHORIZED
    finally:
        sdk.close()


def test_thing_name_policy(dev_hub: DevHub) -> None:
    """``${iot:Connection.Thing.ThingName}`` and a thing attribute: the client id must be the
    thing's name; CONNACK 0x87 (3.1.1: return code 5) otherwise."""
    document = policy(
        allow("iot:Connect", f"{ANY}:client/${{iot:Connection.Thing.ThingName}}"),
        allow(
            "iot:Publish",
            f"{ANY}:topic/site/${{iot:Connection.Thing.Attributes[site]}}/${{iot:Connection.Thing.ThingName}}",
        ),
    )
    device = dev_hub.device(dev_hub.iot(), document, attributes={"site": "berlin"})
    good = Sdk5(dev_hub, device, device.thing)
    try:
        good.wait_connected()
        fine = good.publish(f"site/berlin/{device.thing}", b"x")
        assert fine.puback.reason_code == mqtt5.PubackReasonCode.NO_MATCHING_SUBSCRIBERS
        wrong = good.publish(f"site/paris/{device.thing}", b"x")
        assert wrong.puback.reason_code == mqtt5.PubackReasonCode.NOT_AUTHORIZED
    finally:
        good.close()
    impostor = Sdk5(dev_hub, device, "not-the-thing")
    try:
        failure = impostor.failures.get(timeout=TIMEOUT)
        assert failure.connack_packet is not None
        assert failure.connack_packet.reason_code == mqtt5.ConnectReasonCode.NOT_AUTHORIZED
    finally:
        impostor.close()
    assert raw_connack(dev_hub, device.cert_file, device.key_file, "not-the-thing") == 5
    assert raw_connack(dev_hub, device.cert_file, device.key_file, device.thing) == 0


def raw_connack(hub: DevHub, cert: Any, key: Any, client_id: str) -> int:
    """The CONNACK return code an MQTT 3.1.1 CONNECT gets on a TLS connection with this
    client certificate (read off the wire: paho reports 3.1.1 codes as MQTT 5 ones)."""
    context = ssl.create_default_context(cafile=str(hub.ca_file))
    context.load_cert_chain(str(cert), str(key))
    raw = socket.create_connection((hub.host, hub.tls_port), timeout=TIMEOUT)
    with context.wrap_socket(raw, server_hostname="localhost") as sock:
        name = client_id.encode()
        body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(name).to_bytes(2, "big") + name
        sock.sendall(bytes([0x10, len(body)]) + body)
        connack = b""
        while len(connack) < 4:
            chunk = sock.recv(4 - len(connack))
            assert chunk, f"closed after {connack!r}"
            connack += chunk
    assert connack[:2] == b"\x20\x02", connack
    return connack[3]


def test_retained_messages_need_retain_publish(dev_hub: DevHub) -> None:
    document = policy(
        allow(["iot:Connect", "iot:Publish"]),
        allow("iot:RetainPublish", f"{ANY}:topic/state/*"),
    )
    device = dev_hub.device(dev_hub.iot(), document)
    sdk = Sdk5(dev_hub, device, device.thing)
    try:
        sdk.wait_connected()
        kept = sdk.publish(f"state/{device.thing}", b"on", retain=True)
        assert kept.puback.reason_code == mqtt5.PubackReasonCode.NO_MATCHING_SUBSCRIBERS
        refused = sdk.publish(f"other/{device.thing}", b"on", retain=True)
        assert refused.puback.reason_code == mqtt5.PubackReasonCode.NOT_AUTHORIZED
        plain = sdk.publish(f"other/{device.thing}", b"on")  # not retained: iot:Publish will do
        assert plain.puback.reason_code == mqtt5.PubackReasonCode.NO_MATCHING_SUBSCRIBERS
    finally:
        sdk.close()
    found = dev_hub.iot_data().get_retained_message(topic=f"state/{device.thing}")
    assert found["payload"] == b"on"


def test_new_policy_version_applies_to_a_connected_device(dev_hub: DevHub) -> None:
    iot = dev_hub.iot()
    device = dev_hub.device(iot, policy(allow(["iot:Connect", "iot:Publish"])))
    sdk = Sdk5(dev_hub, device, device.thing)
    try:
        sdk.wait_connected()
        topic = f"ops/{device.thing}"
        assert sdk.publish(topic, b"1").puback.reason_code != mqtt5.PubackReasonCode.NOT_AUTHORIZED
        iot.create_policy_version(
            policyName=device.policy_name,
            policyDocument=policy(allow("iot:Connect"), deny("iot:Publish")),
            setAsDefault=True,
        )
        assert sdk.publish(topic, b"2").puback.reason_code == mqtt5.PubackReasonCode.NOT_AUTHORIZED
        iot.detach_policy(policyName=device.policy_name, target=device.certificate_arn)
        assert sdk.publish(topic, b"3").puback.reason_code == mqtt5.PubackReasonCode.NOT_AUTHORIZED
    finally:
        sdk.close()


def test_receive_is_checked_when_queued_messages_are_delivered(dev_hub: DevHub) -> None:
    """A persistent session's queued QoS 1 messages meet iot:Receive as they are sent, after
    the device comes back: the refused one is dropped (not left in flight to block the
    queue), the allowed ones arrive in order."""
    document = policy(
        allow(["iot:Connect", "iot:Subscribe"]),
        allow("iot:Receive", f"{ANY}:topic/feed/public/*"),
    )
    device = dev_hub.device(dev_hub.iot(), document)
    first = Sdk311(dev_hub, device, device.thing, clean_session=False)
    try:
        first.connect()
        first.subscribe("feed/#")
    finally:
        first.close()
    data = dev_hub.iot_data()
    data.publish(topic="feed/public/1", qos=1, payload=b"one")
    data.publish(topic="feed/private/x", qos=1, payload=b"secret")
    data.publish(topic="feed/public/2", qos=1, payload=b"two")
    again = Sdk311(dev_hub, device, device.thing, clean_session=False)
    try:
        assert again.connect() == {"session_present": True}
        assert again.resumed.get(timeout=TIMEOUT) == ("feed/public/1", b"one")
        assert again.resumed.get(timeout=TIMEOUT) == ("feed/public/2", b"two")
        data.publish(topic="feed/public/3", qos=1, payload=b"three")
        assert again.resumed.get(timeout=TIMEOUT) == ("feed/public/3", b"three")
        assert again.resumed.empty()
    finally:
        again.close()
