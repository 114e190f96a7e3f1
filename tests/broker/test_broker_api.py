"""The Broker's in-process API for the HTTP dialects: watches, direct sends, administrative
disconnects and retained-message lookups, observed from the MQTT side where they show."""

from __future__ import annotations

from functools import partial

from harness import V5, InMemoryHub, both_versions

from thinghub.broker.admission import API_CALLER
from thinghub.message import Message
from thinghub.mqtt.packets import Will
from thinghub.mqtt.properties import Properties
from thinghub.mqtt.types import ProtocolVersion, ReasonCode

ACCOUNT = ""  # anonymous MQTT clients live in the default account


def test_watch_sees_matching_messages_until_cancelled() -> None:
    hub = InMemoryHub()
    seen: list[tuple[str, bytes]] = []
    watch = hub.broker.watch(ACCOUNT, "reply/+", lambda m: seen.append((m.topic, m.payload)))
    pub = hub.connect("pub", V5)
    pub.publish("reply/1", b"a", 1)
    pub.publish("other", b"b", 1)
    assert seen == [("reply/1", b"a")]
    watch.cancel()
    watch.cancel()  # idempotent
    pub.publish("reply/2", b"c")
    assert seen == [("reply/1", b"a")]


@both_versions
def test_send_direct_ignores_subscriptions_and_reports_the_ack(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    dev = hub.connect("dev", version)
    acked: list[int] = []
    for qos in (0, 1, 2):
        message = Message(topic=f"cmd/{qos}", payload=b"go", qos=qos)
        sent = hub.broker.send_direct(
            ACCOUNT, "dev", message, API_CALLER, partial(acked.append, qos)
        )
        assert sent
    got = dev.publishes()
    assert [(p.topic, p.qos) for p in got] == [("cmd/0", 0), ("cmd/1", 1), ("cmd/2", 2)]
    assert acked == [0]  # QoS 0 is done once written
    dev.ack(got[1])
    assert acked == [0, 1]
    dev.ack(got[2])
    assert acked == [0, 1, 2]  # after PUBCOMP


def test_send_direct_to_an_absent_client() -> None:
    hub = InMemoryHub()
    assert not hub.broker.send_direct(
        ACCOUNT, "nobody", Message(topic="t", payload=b""), API_CALLER
    )
    hub.connect("gone", V5, clean_start=False, session_expiry=60).drop()
    assert not hub.broker.send_direct(ACCOUNT, "gone", Message(topic="t", payload=b""), API_CALLER)


@both_versions
def test_administrative_disconnect(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    watcher = hub.connect("watcher", version)
    watcher.subscribe("status")
    will = Will(topic="status", payload=b"offline")
    dev = hub.connect("dev", version, will=will, clean_start=False, session_expiry=60)
    assert hub.broker.disconnect_client(ACCOUNT, "dev", clean_session=False, prevent_will=False)
    hub.settle()  # the transport reports the close
    dev.expect_closed(ReasonCode.ADMINISTRATIVE_ACTION)
    watcher.expect_publish("status", b"offline")
    again = hub.client(version)
    assert again.connect("dev", clean_start=False, session_expiry=60).session_present
    assert not hub.broker.disconnect_client(
        ACCOUNT, "nobody", clean_session=False, prevent_will=False
    )


def test_administrative_disconnect_can_end_the_session_without_will() -> None:
    hub = InMemoryHub()
    watcher = hub.connect("watcher", V5)
    watcher.subscribe("status")
    will = Will(topic="status", payload=b"offline")
    dev = hub.connect("dev", V5, will=will, clean_start=False, session_expiry=60)
    assert hub.broker.disconnect_client(ACCOUNT, "dev", clean_session=True, prevent_will=True)
    hub.settle()
    dev.expect_closed(ReasonCode.ADMINISTRATIVE_ACTION)
    watcher.assert_nothing_pending()
    assert not hub.client(V5).connect("dev", clean_start=False).session_present


def test_retained_lookups() -> None:
    hub = InMemoryHub()
    assert hub.broker.retained_message("other-account", "t") is None
    assert hub.broker.retained_messages("other-account") == []
    pub = hub.connect("pub", V5)
    pub.publish("b", b"2", retain=True)
    pub.publish("a", b"1", retain=True, properties=Properties(message_expiry_interval=10))
    pub.publish("c", b"3", retain=True)
    assert [m.topic for m in hub.broker.retained_messages(ACCOUNT)] == ["a", "b", "c"]
    message = hub.broker.retained_message(ACCOUNT, "a")
    assert message is not None and message.payload == b"1"
    assert hub.broker.retained_message(ACCOUNT, "zzz") is None
    hub.advance(10)
    assert hub.broker.retained_message(ACCOUNT, "a") is None
    assert [m.topic for m in hub.broker.retained_messages(ACCOUNT)] == ["b", "c"]


def test_message_ids_increase() -> None:
    hub = InMemoryHub()
    first = hub.broker.new_message_id()
    assert hub.broker.new_message_id() > first
