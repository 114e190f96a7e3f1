"""Interop: paho-mqtt, as an application would use it, for MQTT 3.1.1 and 5.0."""

from __future__ import annotations

import paho.mqtt.publish as paho_publish
import pytest
from pahoclient import unique

TRANSPORTS = ["tcp", "websockets"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_paho_round_trip(client, version, transport, qos):
    t = unique("paho")
    sub = client(version, transport=transport)
    assert sub.subscribe(f"{t}/#", qos) == qos
    pub = client(version, transport=transport)
    for i in range(10):
        pub.publish(f"{t}/{i}", f"message {i}", qos)
    got = sub.expect_messages(10)
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        (f"{t}/{i}", f"message {i}".encode(), qos) for i in range(10)
    ]


def test_paho_publish_helper_and_retained(client, hub, version):
    """paho.mqtt.publish.single: connect, publish retained, disconnect, as scripts do."""
    t = unique("paho")
    protocol = 5 if version == 5 else 4
    paho_publish.single(
        t,
        b"retained via helper",
        qos=1,
        retain=True,
        hostname=hub.host,
        port=hub.port,
        client_id=unique(),
        protocol=protocol,
    )
    sub = client(version)
    sub.subscribe(t, 1)
    msg = sub.expect_message()
    assert (msg.payload, msg.retain, msg.qos) == (b"retained via helper", True, 1)
    paho_publish.single(
        t, b"", qos=1, retain=True, hostname=hub.host, port=hub.port, protocol=protocol
    )


def test_paho_will(client, version):
    t = unique("paho")
    watcher = client(version)
    watcher.subscribe(t, 1)
    dying = client(version, will=(t, b"paho will", 1, False))
    dying.drop()
    msg = watcher.expect_message()
    assert (msg.topic, msg.payload, msg.qos) == (t, b"paho will", 1)


def test_paho_persistent_session(client, version):
    t, cid = unique("paho"), unique()
    kwargs = {"session_expiry": 300} if version == 5 else {}
    sub = client(version, client_id=cid, clean=False, **kwargs)
    sub.subscribe(t, 1)
    sub.disconnect()
    pub = client(version)
    for i in range(3):
        pub.publish(t, str(i), 1)
    assert sub.connect(clean=False).session_present
    assert [m.payload for m in sub.expect_messages(3)] == [b"0", b"1", b"2"]


def test_paho_v5_properties_round_trip(client):
    t = unique("paho")
    sub = client(5)
    sub.subscribe(t, 1, subscription_id=7)
    client(5).publish(
        t,
        b"{}",
        1,
        ContentType="application/json",
        ResponseTopic=f"{t}/r",
        UserProperty=[("a", "b")],
        MessageExpiryInterval=120,
    )
    msg = sub.expect_message()
    assert msg.properties["ContentType"] == "application/json"
    assert msg.properties["ResponseTopic"] == f"{t}/r"
    assert msg.user_properties == [("a", "b")]
    assert msg.subscription_ids == [7]
    assert 0 < msg.properties["MessageExpiryInterval"] <= 120
