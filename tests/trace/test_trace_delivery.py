"""What a delivery trace shows, on a real ``thinghub serve`` with tracing on: Alibaba ``Pub``
through the official SDK and MQTT publishes, devices and clients over raw MQTT sockets, the
trace read over HTTP with a SigV4-signed GET. One hub for the module; each test has its own
product, device and topics."""

from __future__ import annotations

import time
import urllib.error
import uuid
from collections.abc import Iterator

import pytest
from tracehub import (
    KEY_ID,
    SECRET,
    Device,
    SecHub,
    other_account_key,
    pub,
    rawmqtt,
    session_of,
    start,
    trace,
    trace_error,
    wait_trace,
)

from thinghub.trace.client import get_json

# The queue bound the queue-full test fills (the others queue at most one message).
MAX_QUEUED = 2


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecHub]:
    started = start(
        tmp_path_factory.mktemp("trace"),
        trace_enabled=True,
        mqtt_max_queued_messages=MAX_QUEUED,
        mqtt_deny_subscribe="hidden/#",
    )
    yield started
    started.stop()


@pytest.fixture
def device(hub: SecHub) -> Device:
    product_key = hub.product(f"trace{uuid.uuid4().hex[:8]}")
    return hub.device(product_key, f"d{uuid.uuid4().hex[:10]}")


def events(entry: dict[str, object] | None) -> list[object]:
    assert entry is not None
    found = entry["events"]
    assert isinstance(found, list)
    return [event["event"] for event in found]


def persistent(device: Device, **kwargs: object) -> rawmqtt.RawClient:
    """Signed in with a session that outlives the connection (v5, expiry one hour)."""
    client, _ = device.sign_in(
        5, clean=False, properties={"session_expiry_interval": 3600}, **kwargs
    )
    return client


def test_pub_to_an_online_device_is_sent_then_acknowledged(hub: SecHub, device: Device) -> None:
    client, _ = device.sign_in(5)
    topic = device.topic("user/get")
    assert client.subscribe(topic, qos=1) == [1]
    message_id = pub(hub, device.product_key, topic, b"hello", qos=1)
    publish = client.expect(rawmqtt.PUBLISH)
    assert (publish.payload, publish.qos) == (b"hello", 1)

    waiting = trace(hub, message_id)
    assert waiting["messageId"] == str(message_id)
    assert (waiting["topic"], waiting["qos"], waiting["outcome"]) == (topic, 1, "routed")
    assert waiting["origin"].startswith("http:aliyun:")
    entry = session_of(waiting, device.client_id)
    assert entry is not None
    assert (entry["fate"], entry["qos"], entry["session"]) == ("in_flight", 1, "connected")
    assert events(entry) == ["sent"]

    client.send(rawmqtt.ack(rawmqtt.PUBACK, publish.mid))
    client.ping()  # the PUBACK is handled before the PINGRESP leaves
    done = trace(hub, message_id)
    entry = session_of(done, device.client_id)
    assert entry is not None and entry["fate"] == "acknowledged"
    assert events(entry) == ["sent", "acknowledged"]
    assert done["counts"]["matched"] == 1
    assert done["counts"]["sent"] == 1 and done["counts"]["acknowledged"] == 1
    assert done["counts"]["dropped"] == {}
    times = [event["afterMs"] for event in entry["events"]]
    assert 0 <= times[0] <= times[1]
    client.disconnect()


def test_an_offline_persistent_session_queues_then_gets_it_on_reconnect(
    hub: SecHub, device: Device
) -> None:
    topic = device.topic("user/get")
    client = persistent(device)
    assert client.subscribe(topic, qos=1) == [1]
    client.disconnect()

    message_id = pub(hub, device.product_key, topic, b"while away", qos=1)
    queued = session_of(trace(hub, message_id), device.client_id)
    assert queued is not None
    assert (queued["fate"], queued["session"]) == ("queued", "offline")
    assert events(queued) == ["queued"]

    client = persistent(device)
    publish = client.expect(rawmqtt.PUBLISH)
    assert publish.payload == b"while away"
    client.send(rawmqtt.ack(rawmqtt.PUBACK, publish.mid))
    client.ping()
    entry = session_of(trace(hub, message_id), device.client_id)
    assert entry is not None
    assert events(entry) == ["queued", "sent", "acknowledged"]
    assert (entry["fate"], entry["session"]) == ("acknowledged", "connected")
    client.disconnect()


def test_qos0_to_an_offline_session_is_dropped(hub: SecHub, device: Device) -> None:
    topic = device.topic("user/get")
    client = persistent(device)
    assert client.subscribe(topic, qos=1) == [1]
    client.disconnect()

    message_id = pub(hub, device.product_key, topic, b"lost", qos=0)
    found = trace(hub, message_id)
    entry = session_of(found, device.client_id)
    assert entry is not None
    assert (entry["fate"], entry["reason"]) == ("dropped", "offline_qos0")
    assert found["counts"]["dropped"] == {"offline_qos0": 1}
    assert found["counts"]["sent"] == 0


def test_qos0_to_an_online_device_is_sent(hub: SecHub, device: Device) -> None:
    client, _ = device.sign_in(5)
    topic = device.topic("user/get")
    assert client.subscribe(topic, qos=0) == [0]
    message_id = pub(hub, device.product_key, topic, b"fire and forget", qos=1)
    assert client.expect(rawmqtt.PUBLISH).qos == 0  # the subscription's QoS (§3.8.4)
    found = trace(hub, message_id)
    entry = session_of(found, device.client_id)
    assert entry is not None
    assert (entry["fate"], entry["qos"], events(entry)) == ("sent", 0, ["sent"])
    assert found["counts"]["sent"] == 1
    client.disconnect()


def test_no_subscriber(hub: SecHub, device: Device) -> None:
    message_id = pub(hub, device.product_key, device.topic("user/get"), b"anyone?", qos=1)
    found = trace(hub, message_id)
    assert found["outcome"] == "no_subscriber"
    assert found["sessions"] == [] and found["counts"]["matched"] == 0


def test_a_full_queue_drops_the_message(hub: SecHub, device: Device) -> None:
    topic = device.topic("user/get")
    client = persistent(device)
    assert client.subscribe(topic, qos=1) == [1]
    client.disconnect()
    ids = [pub(hub, device.product_key, topic, b"m%d" % n, qos=1) for n in range(MAX_QUEUED + 1)]

    for message_id in ids[:MAX_QUEUED]:
        entry = session_of(trace(hub, message_id), device.client_id)
        assert entry is not None and entry["fate"] == "queued"
    found = trace(hub, ids[-1])
    entry = session_of(found, device.client_id)
    assert entry is not None
    assert (entry["fate"], entry["reason"]) == ("dropped", "queue_full")
    assert found["counts"]["dropped"] == {"queue_full": 1}


def test_an_expired_message_is_dropped(hub: SecHub, device: Device) -> None:
    topic = device.topic("user/get")
    client = persistent(device)
    assert client.subscribe(topic, qos=1) == [1]
    client.disconnect()
    message_id = pub(hub, device.product_key, topic, b"short-lived", qos=1, MessageExpiryInterval=1)
    # The Message Expiry Interval is a deadline on the hub's clock: it has passed after 1.2 s.
    time.sleep(1.2)
    client = persistent(device)
    # The queue of an offline session is on disk only: read back by the store's thread.
    found = wait_trace(hub, message_id, device.client_id, "dropped")
    entry = session_of(found, device.client_id)
    assert entry is not None
    assert entry["reason"] == "expired"
    assert events(entry) == ["queued", "expired"]
    client.disconnect()


def test_too_large_for_the_device(hub: SecHub, device: Device) -> None:
    client, _ = device.sign_in(5, properties={"maximum_packet_size": 128})
    topic = device.topic("user/get")
    assert client.subscribe(topic, qos=1) == [1]
    message_id = pub(hub, device.product_key, topic, b"x" * 200, qos=1)
    client.ping()  # nothing was sent: the PINGRESP comes first
    entry = session_of(trace(hub, message_id), device.client_id)
    assert entry is not None
    assert (entry["fate"], entry["reason"]) == ("dropped", "too_large")
    client.disconnect()


def test_a_session_that_ends_drops_what_it_had_in_flight(hub: SecHub, device: Device) -> None:
    client, _ = device.sign_in(5)  # clean start, expiry 0: the session ends with the connection
    topic = device.topic("user/get")
    assert client.subscribe(topic, qos=1) == [1]
    message_id = pub(hub, device.product_key, topic, b"never acknowledged", qos=1)
    client.expect(rawmqtt.PUBLISH)
    client.disconnect()  # no PUBACK
    found = wait_trace(hub, message_id, device.client_id, "dropped")
    entry = session_of(found, device.client_id)
    assert entry is not None
    assert (entry["reason"], entry["session"]) == ("session_ended", "ended")
    assert events(entry) == ["sent", "session_ended"]


def test_a_hidden_topic_is_not_authorised_for_subscribers(hub: SecHub) -> None:
    """``mqtt.deny_subscribe`` keeps its topics from broader subscriptions such as ``#``; an
    MQTT publish is traced too, found by topic in the account's latest traces."""
    with hub.raw(5) as watcher, hub.raw(5) as publisher:
        watcher.connect(f"watch{uuid.uuid4().hex[:8]}")
        assert watcher.subscribe("#", qos=1) == [1]
        publisher_id = f"pub{uuid.uuid4().hex[:8]}"
        publisher.connect(publisher_id)
        topic = f"hidden/{uuid.uuid4().hex[:8]}"
        # Nobody may receive it: the v5 PUBACK says No matching subscribers (0x10).
        assert publisher.publish_acked(topic, b"secret", qos=1) == 0x10
        watcher.ping()

        listed = trace_list(hub, topic)
        assert len(listed) == 1 and listed[0]["outcome"] == "not_authorized"
        found = trace(hub, int(listed[0]["messageId"]))
        assert found["origin"] == publisher_id
        entry = found["sessions"][0]
        assert (entry["fate"], entry["reason"]) == ("dropped", "not_authorized")
        assert found["counts"]["dropped"] == {"not_authorized": 1}


def test_an_mqtt_publish_is_traced_under_the_id_the_list_shows(hub: SecHub) -> None:
    with hub.raw(5) as subscriber, hub.raw(4) as publisher:
        sub_id = f"sub{uuid.uuid4().hex[:8]}"
        subscriber.connect(sub_id)
        topic = f"plain/{uuid.uuid4().hex[:8]}"
        assert subscriber.subscribe(topic, qos=1) == [1]
        publisher.connect(f"pub{uuid.uuid4().hex[:8]}")
        assert publisher.publish_acked(topic, b"over mqtt", qos=1) == 0
        publish = subscriber.expect(rawmqtt.PUBLISH)
        subscriber.send(rawmqtt.ack(rawmqtt.PUBACK, publish.mid))
        subscriber.ping()

        listed = trace_list(hub, topic)
        assert [item["topic"] for item in listed] == [topic]
        found = trace(hub, int(listed[0]["messageId"]))
        entry = session_of(found, sub_id)
        assert entry is not None and events(entry) == ["sent", "acknowledged"]


def test_qos2_completes_or_is_refused_by_the_receiver(hub: SecHub) -> None:
    with hub.raw(5) as taker, hub.raw(5) as refuser, hub.raw(5) as publisher:
        topic = f"exactly/{uuid.uuid4().hex[:8]}"
        taker_id, refuser_id = f"take{uuid.uuid4().hex[:8]}", f"refuse{uuid.uuid4().hex[:8]}"
        for client, client_id in ((taker, taker_id), (refuser, refuser_id)):
            client.connect(client_id)
            assert client.subscribe(topic, qos=2) == [2]
        publisher.connect(f"pub{uuid.uuid4().hex[:8]}")
        assert publisher.publish_acked(topic, b"once", qos=2) == 0

        got = taker.expect(rawmqtt.PUBLISH)
        taker.send(rawmqtt.ack(rawmqtt.PUBREC, got.mid))
        taker.expect(rawmqtt.PUBREL)
        taker.send(rawmqtt.ack(rawmqtt.PUBCOMP, got.mid))
        taker.ping()
        refused = refuser.expect(rawmqtt.PUBLISH)
        refuser.send(rawmqtt.ack(rawmqtt.PUBREC, refused.mid, reason=0x80))
        refuser.ping()

        found = trace(hub, int(trace_list(hub, topic)[0]["messageId"]))
        done = session_of(found, taker_id)
        assert done is not None and done["fate"] == "acknowledged" and done["qos"] == 2
        assert events(done) == ["sent", "received", "acknowledged"]
        no = session_of(found, refuser_id)
        assert no is not None
        assert (no["fate"], no["reason"], no["reasonCode"]) == (
            "dropped",
            "refused_by_receiver",
            0x80,
        )
        assert found["counts"]["received"] == 1
        assert found["counts"]["dropped"] == {"refused_by_receiver": 1}


def test_an_aws_publish_is_traced(hub: SecHub) -> None:
    """AWS ``Publish`` answers no MessageId (only its traceId, the request id): the account's
    latest traces of the topic name it."""
    with hub.raw(5) as subscriber:
        sub_id = f"sub{uuid.uuid4().hex[:8]}"
        subscriber.connect(sub_id)
        topic = f"aws/{uuid.uuid4().hex[:8]}"
        assert subscriber.subscribe(topic, qos=1) == [1]
        hub.iot_data().publish(topic=topic, qos=1, payload=b"from boto3")
        publish = subscriber.expect(rawmqtt.PUBLISH)
        assert publish.payload == b"from boto3"
        [listed] = trace_list(hub, topic)
        assert listed["origin"] == f"http:aws:{KEY_ID}"
        entry = session_of(trace(hub, int(listed["messageId"])), sub_id)
        assert entry is not None and entry["fate"] == "in_flight"


def test_another_accounts_key_gets_404_as_for_an_unknown_id(hub: SecHub, device: Device) -> None:
    message_id = pub(hub, device.product_key, device.topic("user/get"), b"mine", qos=1)
    other = other_account_key(hub, f"other{uuid.uuid4().hex[:6]}")
    theirs = trace_error(hub, f"/thinghub/trace/{message_id}", other)
    unknown = trace_error(hub, f"/thinghub/trace/{message_id + 1}")
    assert theirs.status == unknown.status == 404
    assert theirs.message == unknown.message.replace(str(message_id + 1), str(message_id))
    assert trace(hub, message_id)["messageId"] == str(message_id)  # the owner still sees it
    assert trace_list(hub, device.topic("user/get"), other) == []


def test_requests_that_are_not_right(hub: SecHub) -> None:
    assert trace_error(hub, "/thinghub/trace/12", (KEY_ID, "wrong")).status == 403
    assert trace_error(hub, "/thinghub/trace/0x12").status == 400
    assert trace_error(hub, "/thinghub/trace/99999999999999999999").status == 400
    status, _body = unsigned_get(hub, "/thinghub/trace/12")
    assert status == 403


# ---------------------------------------------------------------------------------- helpers


def trace_list(
    hub: SecHub, topic: str, key: tuple[str, str] = (KEY_ID, SECRET)
) -> list[dict[str, object]]:
    """``GET /thinghub/trace?topic=``: the account's latest traces of ``topic``."""
    answer = get_json(
        f"http://{hub.host}:{hub.http_port}", "/thinghub/trace", [("topic", topic)], *key
    )
    messages = answer["messages"]
    assert isinstance(messages, list)
    return messages


def unsigned_get(hub: SecHub, path: str) -> tuple[int, bytes]:
    try:
        return hub.get(path)
    except urllib.error.HTTPError as error:
        return error.code, error.read()
