"""Will messages: when they are (and are not) published, will delay, session expiry, takeover.

Waiting out a will delay is the behaviour under test, so a few scenarios let real time pass
(1-3 s); everything else waits for events with timeouts.
"""

from __future__ import annotations

import time

import rawmqtt
from pahoclient import unique
from rawmqtt import Will


def watcher(client, version, topic: str):
    w = client(version)
    w.subscribe(topic, 2)
    return w


def no_will_yet(client, version, w, topic: str) -> None:
    """The will has not been published: a marker published now arrives alone."""
    client(version).publish(topic, b"marker", 1)
    assert w.until(b"marker") == []


def will_connect(raw, version, will: Will, *, cid: str | None = None, **kw) -> rawmqtt.RawClient:
    c = raw(version)
    c.connect(cid or unique(), will=will, **kw)
    return c


def test_will_is_published_when_the_connection_drops(client, raw, version):
    t = unique()
    w = watcher(client, version, t)
    c = will_connect(raw, version, Will(t, b"gone", qos=1))
    c.close()  # no DISCONNECT: MQTT-3.1.2-8
    msg = w.expect_message()
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == (t, b"gone", 1, False)


def test_will_is_not_published_after_a_normal_disconnect(client, raw, version):
    t = unique()
    w = watcher(client, version, t)
    c = will_connect(raw, version, Will(t, b"gone", qos=1))
    c.send(rawmqtt.disconnect(version))  # MQTT-3.1.2-10 (v3) / MQTT-3.1.2-8 (v5)
    # The server closes the connection once it has handled DISCONNECT (MQTT-3.14.4-1 v3 /
    # 3.14.4 v5); only then does a marker prove that no will followed.
    assert c.expect_closed() == []
    no_will_yet(client, version, w, t)


def test_retained_will(client, raw, version):
    t = unique()
    c = will_connect(raw, version, Will(t, b"last words", qos=1, retain=True))
    w = watcher(client, version, t)
    c.close()
    assert w.expect_message().payload == b"last words"
    late = client(version)
    late.subscribe(t, 1)
    msg = late.expect_message()
    assert (msg.payload, msg.retain) == (b"last words", True)
    client(version).publish(t, b"", 1, retain=True)


def test_v5_disconnect_with_will_message_reason_publishes_the_will(client, raw):
    t = unique()
    w = watcher(client, 5, t)
    c = will_connect(raw, 5, Will(t, b"on purpose", qos=1))
    c.disconnect(reason=0x04)  # v5 3.14.2.1: Disconnect with Will Message
    assert w.expect_message().payload == b"on purpose"


def test_v5_will_properties_pass_through(client, raw):
    t = unique()
    w = watcher(client, 5, t)
    props = {
        "content_type": "text/plain",
        "payload_format_indicator": 1,
        "response_topic": f"{t}/reply",
        "correlation_data": b"\x00\x01",
        "user_property": [("k", "v"), ("k", "w")],
    }
    c = will_connect(raw, 5, Will(t, b"bye", qos=1, properties=props))
    c.close()
    msg = w.expect_message()
    assert msg.properties["ContentType"] == "text/plain"
    assert msg.properties["PayloadFormatIndicator"] == 1
    assert msg.properties["ResponseTopic"] == f"{t}/reply"
    assert bytes.fromhex(msg.properties["CorrelationData"]) == b"\x00\x01"
    assert msg.user_properties == [("k", "v"), ("k", "w")]


def test_v5_will_delay_interval_postpones_the_will(client, raw):
    t = unique()
    w = watcher(client, 5, t)
    will = Will(t, b"late", qos=1, properties={"will_delay_interval": 2})
    c = will_connect(raw, 5, will, properties={"session_expiry_interval": 30})
    c.close()
    dropped = time.monotonic()
    no_will_yet(client, 5, w, t)
    assert w.expect_message(timeout=6).payload == b"late"
    assert time.monotonic() - dropped >= 1.5  # MQTT-3.1.3-9


def test_v5_reconnect_within_the_will_delay_cancels_the_will(client, raw):
    t, cid = unique(), unique()
    w = watcher(client, 5, t)
    will = Will(t, b"late", qos=1, properties={"will_delay_interval": 1})
    session = {"session_expiry_interval": 30}
    will_connect(raw, 5, will, cid=cid, properties=session).close()
    back = raw(5)
    assert back.connect(cid, clean=False, properties=session).session_present
    time.sleep(2)  # past the will delay: the will would have been published by now
    no_will_yet(client, 5, w, t)


def test_v5_will_is_published_when_the_session_expires_before_the_delay(client, raw):
    """v5 3.1.3.2.2: the will is published at the earlier of will delay and session end."""
    t = unique()
    w = watcher(client, 5, t)
    will = Will(t, b"expired", qos=1, properties={"will_delay_interval": 60})
    c = will_connect(raw, 5, will, properties={"session_expiry_interval": 1})
    c.close()
    dropped = time.monotonic()
    assert w.expect_message(timeout=8).payload == b"expired"
    assert time.monotonic() - dropped < 30


def test_v5_will_with_delay_is_published_at_once_when_the_session_ends(hub, client, raw):
    """Session expiry 0: the session ends with the connection, so the delay is moot."""
    hub.skip_if_deviates("will-delay-without-session")
    t = unique()
    w = watcher(client, 5, t)
    will = Will(t, b"now", qos=1, properties={"will_delay_interval": 60})
    will_connect(raw, 5, will).close()
    assert w.expect_message(timeout=5).payload == b"now"


def test_takeover_publishes_the_will_of_the_old_connection(client, raw, version):
    """v5 3.1.4 step 2: "If the existing Client has a Will Message, that Will Message is
    published"; in 3.1.1 the server closes the old connection without a DISCONNECT from
    the client, which is a case for publishing the will (3.1.2.5)."""
    t, cid = unique(), unique()
    w = watcher(client, version, t)
    old = will_connect(raw, version, Will(t, b"taken over", qos=1), cid=cid)
    raw(version).connect(cid)
    old.expect_closed()
    assert w.expect_message().payload == b"taken over"


def test_v5_takeover_within_the_will_delay_suppresses_the_will(client, raw):
    """MQTT-3.1.3-9: a new connection to the session before the will delay has passed means
    no will.  (A takeover with clean start 1 is left out: whether that new connection is "to
    this session" is ambiguous in v5 3.1.2.5 / 3.1.3.2.2, and brokers differ.)"""
    t, cid = unique(), unique()
    w = watcher(client, 5, t)
    will = Will(t, b"old", qos=1, properties={"will_delay_interval": 1})
    session = {"session_expiry_interval": 30}
    old = will_connect(raw, 5, will, cid=cid, properties=session)
    assert raw(5).connect(cid, clean=False, properties=session).session_present
    old.expect_closed()
    time.sleep(1.5)  # past the will delay
    no_will_yet(client, 5, w, t)
