"""Will messages (MQTT 5.0 §3.1.2.5, §3.1.3.2; 3.1.1 §3.1.2.5): when they are published, the
Will Delay Interval and its interplay with session expiry, takeover, and will checks."""

from __future__ import annotations

from harness import V5, V311, InMemoryHub, TestClient, both_versions

from thinghub.mqtt.packets import Connect, Disconnect, Will
from thinghub.mqtt.properties import Properties
from thinghub.mqtt.types import ProtocolVersion, ReasonCode

WILL_TOPIC = "status/dev"


def watcher(hub: InMemoryHub, version: ProtocolVersion = V5) -> TestClient:
    client = hub.connect("watcher", version)
    client.subscribe(WILL_TOPIC, qos=1)
    return client


def will(delay: int | None = None, *, qos: int = 0, retain: bool = False) -> Will:
    props = Properties(will_delay_interval=delay)
    return Will(topic=WILL_TOPIC, payload=b"offline", qos=qos, retain=retain, properties=props)


def device(
    hub: InMemoryHub,
    version: ProtocolVersion = V5,
    *,
    delay: int | None = None,
    expiry: int | None = None,
    clean_start: bool = True,
    client_id: str = "dev",
) -> TestClient:
    if version == V5:
        return hub.connect(
            client_id,
            version,
            will=will(delay),
            session_expiry=expiry,
            clean_start=clean_start,
        )
    return hub.connect(client_id, version, will=will(), clean_start=clean_start)


# ---------------------------------------------------------------------------- when it is sent


@both_versions
def test_will_sent_when_connection_drops(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    w = watcher(hub, version)
    device(hub, version).drop()
    w.expect_publish(WILL_TOPIC, b"offline", qos=0)
    w.assert_nothing_pending()


@both_versions
def test_no_will_after_normal_disconnect(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    w = watcher(hub, version)
    device(hub, version).disconnect()
    hub.advance(3600)
    w.assert_nothing_pending()  # [MQTT-3.1.2-10]


def test_will_sent_after_disconnect_with_will_message() -> None:
    hub = InMemoryHub()
    w = watcher(hub)
    device(hub).disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE)
    w.expect_publish(WILL_TOPIC, b"offline")


@both_versions
def test_will_sent_on_keep_alive_timeout(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    w = watcher(hub, version)
    dev = hub.connect("dev", version, keep_alive=4, will=will())
    hub.advance(6)
    dev.expect_closed(ReasonCode.KEEP_ALIVE_TIMEOUT)
    w.expect_publish(WILL_TOPIC, b"offline")


@both_versions
def test_will_sent_on_protocol_error(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    w = watcher(hub, version)
    dev = device(hub, version)
    dev.send(Connect(protocol_version=version, client_id="dev"))
    dev.expect_closed(ReasonCode.PROTOCOL_ERROR)
    w.expect_publish(WILL_TOPIC, b"offline")


def test_will_sent_when_disconnect_is_invalid() -> None:
    # A DISCONNECT raising the Session Expiry from 0 is not a valid DISCONNECT (§3.14.2.2.2):
    # it does not discard the will.
    hub = InMemoryHub()
    w = watcher(hub)
    dev = device(hub, expiry=0)
    dev.send(Disconnect(properties=Properties(session_expiry_interval=30)))
    dev.expect_closed(ReasonCode.PROTOCOL_ERROR)
    w.expect_publish(WILL_TOPIC, b"offline")


@both_versions
def test_will_sent_on_server_shutdown(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    hub.connect("dev", version, will=will(retain=True))
    hub.broker.close_all()
    hub.settle()
    late = hub.connect("late", version)
    late.subscribe(WILL_TOPIC)
    got = late.expect_publish(WILL_TOPIC, b"offline")
    assert got.retain


def test_will_properties_pass_through() -> None:
    hub = InMemoryHub()
    w = watcher(hub)
    props = Properties(
        will_delay_interval=0,
        content_type="text/plain",
        payload_format_indicator=1,
        response_topic="reply/here",
        correlation_data=b"42",
        user_properties=(("k", "v"),),
    )
    hub.connect("dev", V5, will=Will(topic=WILL_TOPIC, payload=b"bye", properties=props)).drop()
    got = w.expect_publish(WILL_TOPIC, b"bye")
    assert got.properties == Properties(
        content_type="text/plain",
        payload_format_indicator=1,
        response_topic="reply/here",
        correlation_data=b"42",
        user_properties=(("k", "v"),),
    )  # and no Will Delay Interval, which is not a PUBLISH property


def test_will_message_expiry_counts_from_publication() -> None:
    hub = InMemoryHub()
    sub = hub.connect("watcher", V5, clean_start=False, session_expiry=1000)
    sub.subscribe(WILL_TOPIC, qos=1)
    sub.drop()
    props = Properties(will_delay_interval=10, message_expiry_interval=30)
    dev = hub.connect(
        "dev",
        V5,
        session_expiry=100,
        will=Will(topic=WILL_TOPIC, payload=b"x", qos=1, properties=props),
    )
    dev.drop()
    hub.advance(10)  # the will is published now, and expires 30 s later
    hub.advance(20)
    again = hub.client(V5)
    again.connect("watcher", clean_start=False, session_expiry=1000)
    got = again.expect_publish(WILL_TOPIC, b"x")
    assert got.properties.message_expiry_interval == 10


# ---------------------------------------------------------------------------- will delay


def test_will_delay() -> None:
    hub = InMemoryHub()
    w = watcher(hub)
    device(hub, delay=10, expiry=100).drop()
    hub.advance(9.9)
    w.assert_nothing_pending()  # §3.1.3.2.2
    hub.advance(0.1)
    w.expect_publish(WILL_TOPIC, b"offline")


def test_will_delay_longer_than_session_expiry_sends_at_session_end() -> None:
    hub = InMemoryHub()
    w = watcher(hub)
    device(hub, delay=60, expiry=5).drop()
    hub.advance(4.9)
    w.assert_nothing_pending()
    hub.advance(0.1)
    w.expect_publish(WILL_TOPIC, b"offline")  # [MQTT-3.1.2-8]: the session ended first
    hub.advance(100)
    w.assert_nothing_pending()  # and only once


def test_will_delay_with_session_expiry_zero_sends_at_once() -> None:
    hub = InMemoryHub()
    w = watcher(hub)
    device(hub, delay=60, expiry=0).drop()
    w.expect_publish(WILL_TOPIC, b"offline")


def test_reconnect_within_will_delay_cancels_the_will() -> None:
    hub = InMemoryHub()
    w = watcher(hub)
    device(hub, delay=10, expiry=100).drop()
    hub.advance(5)
    again = hub.client(V5)
    assert again.connect("dev", clean_start=False, session_expiry=100).session_present
    hub.advance(100)
    w.assert_nothing_pending()  # [MQTT-3.1.3-9]
    again.drop()  # the new connection has no will
    hub.advance(200)
    w.assert_nothing_pending()


def test_clean_reconnect_within_will_delay_ends_session_and_sends_will() -> None:
    hub = InMemoryHub()
    w = watcher(hub)
    device(hub, delay=10, expiry=100).drop()
    hub.advance(5)
    ack = hub.client(V5).connect("dev", clean_start=True)
    assert not ack.session_present
    w.expect_publish(WILL_TOPIC, b"offline")  # the old session ended: its will goes now
    hub.advance(100)
    w.assert_nothing_pending()


def test_disconnect_with_will_message_respects_will_delay() -> None:
    hub = InMemoryHub()
    w = watcher(hub)
    device(hub, delay=10, expiry=100).disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE)
    w.assert_nothing_pending()
    hub.advance(10)
    w.expect_publish(WILL_TOPIC, b"offline")


# ---------------------------------------------------------------------------- takeover


@both_versions
def test_takeover_sends_will_without_delay(version: ProtocolVersion) -> None:
    hub = InMemoryHub()
    w = watcher(hub, version)
    old = device(hub, version, expiry=100, clean_start=False)
    new = hub.client(version)
    new.connect("dev", clean_start=False, session_expiry=100)
    old.expect_closed(ReasonCode.SESSION_TAKEN_OVER)
    w.expect_publish(WILL_TOPIC, b"offline")  # 3.1.4: published as described in 3.1.2.5
    w.assert_nothing_pending()


def test_takeover_resuming_within_will_delay_sends_no_will() -> None:
    hub = InMemoryHub()
    w = watcher(hub)
    old = device(hub, delay=10, expiry=100, clean_start=False)
    hub.client(V5).connect("dev", clean_start=False, session_expiry=100)
    old.expect_closed(ReasonCode.SESSION_TAKEN_OVER)
    hub.advance(100)
    w.assert_nothing_pending()  # [MQTT-3.1.3-9]


def test_takeover_with_clean_start_sends_delayed_will_at_once() -> None:
    hub = InMemoryHub()
    w = watcher(hub)
    old = device(hub, delay=10, expiry=100, clean_start=False)
    hub.client(V5).connect("dev", clean_start=True)
    old.expect_closed(ReasonCode.SESSION_TAKEN_OVER)
    w.expect_publish(WILL_TOPIC, b"offline")  # the session ended with the takeover
    hub.advance(100)
    w.assert_nothing_pending()


def test_new_connection_will_replaces_the_old_one() -> None:
    hub = InMemoryHub()
    w = watcher(hub)
    old = device(hub, delay=10, expiry=100, clean_start=False)
    new = hub.connect(
        "dev",
        V5,
        clean_start=False,
        session_expiry=100,
        will=Will(topic=WILL_TOPIC, payload=b"second"),
    )
    old.expect_closed(ReasonCode.SESSION_TAKEN_OVER)
    new.drop()
    w.expect_publish(WILL_TOPIC, b"second")
    hub.advance(100)
    w.assert_nothing_pending()


# ---------------------------------------------------------------------------- checks on the will


def test_v5_will_qos_above_maximum_is_refused() -> None:
    hub = InMemoryHub(max_qos=1)
    client = hub.client(V5)
    ack = client.connect("dev", will=Will(topic=WILL_TOPIC, payload=b"x", qos=2))
    assert ack.reason_code == ReasonCode.QOS_NOT_SUPPORTED  # [MQTT-3.2.2-12]
    client.expect_closed()


def test_v3_will_qos_above_maximum_is_downgraded() -> None:
    hub = InMemoryHub(max_qos=1)
    w = hub.connect("watcher", V311)
    w.subscribe(WILL_TOPIC, qos=2)
    hub.connect("dev", V311, will=Will(topic=WILL_TOPIC, payload=b"x", qos=2)).drop()
    got = w.expect_publish(WILL_TOPIC, b"x")
    assert got.qos == 1


def test_v5_will_retain_refused_when_retain_not_available() -> None:
    hub = InMemoryHub(retain_available=False)
    client = hub.client(V5)
    ack = client.connect("dev", will=Will(topic=WILL_TOPIC, payload=b"x", retain=True))
    assert ack.reason_code == ReasonCode.RETAIN_NOT_SUPPORTED  # [MQTT-3.2.2-13]


@both_versions
def test_will_topic_beyond_limits_is_refused(version: ProtocolVersion) -> None:
    hub = InMemoryHub(max_topic_length=8)
    client = hub.client(version)
    ack = client.connect("dev", will=Will(topic="a/very/long/topic", payload=b"x"))
    assert ack.reason_code == (ReasonCode.TOPIC_NAME_INVALID if version == V5 else 3)
    client.expect_closed()


def test_takeover_of_session_with_expiry_zero_sends_delayed_will_at_once() -> None:
    # The old session ends with its connection (§3.1.2.11.2), so its will cannot wait for
    # the delay ([MQTT-3.1.2-8]: published when the delay elapses *or the session ends*).
    hub = InMemoryHub()
    w = watcher(hub)
    old = device(hub, delay=10, expiry=0)
    hub.client(V5).connect("dev", clean_start=False, session_expiry=100)
    old.expect_closed(ReasonCode.SESSION_TAKEN_OVER)
    w.expect_publish(WILL_TOPIC, b"offline")
    hub.advance(100)
    w.assert_nothing_pending()
