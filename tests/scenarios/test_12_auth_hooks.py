"""Authorisation hooks: anonymous access and the test-only deny lists.

THINGHUB_MQTT_DENY_SUBSCRIBE / DENY_PUBLISH hold topic filters the hub refuses; for mosquitto
the fixture writes the same filters into an ACL file ("topic deny ...").
"""

from __future__ import annotations

import pytest
import rawmqtt
from pahoclient import unique

DENIED = "secret/#"


@pytest.fixture(scope="module")
def deny_hub(start_hub):
    return start_hub(DENY_SUBSCRIBE=f"{DENIED},forbidden", DENY_PUBLISH=f"{DENIED},readonly/+")


# mosquitto's acl_file checks "read" when delivering, not at SUBSCRIBE: it grants the filter.
@pytest.mark.thinghub_only
def test_denied_subscription_gets_a_failure_code(deny_hub, raw, version):
    """SUBACK 0x80 (3.1.1 failure) / 0x87 (v5 Not authorized), per filter."""
    c = raw(version, on=deny_hub)
    c.connect(unique())
    allowed = unique()
    codes = c.subscribe([(allowed, 1), ("secret/x", 1), ("forbidden", 0), (f"{allowed}/2", 2)])
    refused = 0x80 if version == 4 else 0x87
    assert codes == [1, refused, refused, 2]
    c.ping()


def test_denied_subscription_receives_nothing(deny_hub, client, version):
    sub = client(version, on=deny_hub)
    sub.subscribe("forbidden", 1)
    ok = unique()
    sub.subscribe(ok, 1)
    pub = client(version, on=deny_hub)
    pub.publish("forbidden", b"hidden", 1)
    pub.publish(ok, b"end", 1)
    assert sub.until(b"end") == []


def test_v5_denied_publish_is_refused_with_not_authorized(deny_hub, client, raw):
    """v5 3.4.2.1 / 3.5.2.1: PUBACK or PUBREC 0x87 Not authorized; nothing is delivered."""
    watcher = client(5, on=deny_hub)
    watcher.subscribe("readonly/#", 2)
    c = raw(5, on=deny_hub)
    c.connect(unique())
    assert c.publish_acked("readonly/a", b"no", 1, mid=1) == 0x87
    assert c.publish_acked("readonly/b", b"no", 2, mid=2) == 0x87
    c.publish("readonly/c", b"no", qos=0)
    c.ping()  # still connected
    client(5, on=deny_hub).publish("readonly/a/deeper", b"end", 1)  # not denied: '+' is one level
    assert watcher.until(b"end") == []


def test_v311_denied_publish_is_acknowledged_but_not_delivered(deny_hub, client, raw):
    """3.1.1 has no way to refuse a PUBLISH: it is acknowledged and dropped (MQTT-3.3.5-2)."""
    watcher = client(4, on=deny_hub)
    watcher.subscribe("readonly/#", 2)
    c = raw(4, on=deny_hub)
    c.connect(unique())
    assert c.publish_acked("readonly/a", b"no", 1, mid=1) == 0
    assert c.publish_acked("readonly/b", b"no", 2, mid=2) == 0
    c.ping()
    client(4, on=deny_hub).publish("readonly/a/deeper", b"end", 1)
    assert watcher.until(b"end") == []


def test_allowed_traffic_is_unaffected(deny_hub, client, version):
    t = unique()
    sub = client(version, on=deny_hub)
    sub.subscribe(t, 1)
    client(version, on=deny_hub).publish(t, b"fine", 1)
    assert sub.expect_message().payload == b"fine"


@pytest.mark.parametrize("retain", [False, True])
def test_denied_publish_is_not_retained(deny_hub, client, raw, version, retain):
    c = raw(version, on=deny_hub)
    c.connect(unique())
    c.publish_acked("readonly/r", b"no", 1, retain=retain)
    sub = client(version, on=deny_hub)
    sub.subscribe("readonly/r", 1)  # a stored retained message would arrive now
    sub.subscribe("readonly/r/x", 1)
    client(version, on=deny_hub).publish("readonly/r/x", b"end", 1)
    assert sub.until(b"end") == []


def test_anonymous_client_is_refused_when_anonymous_access_is_off(start_hub, raw, version):
    hub = start_hub(ALLOW_ANONYMOUS=False)
    c = raw(version, on=hub)
    c.send(rawmqtt.connect(unique(), version))
    connack = c.expect(rawmqtt.CONNACK)
    assert connack.reason in ({0x04, 0x05} if version == 4 else {0x86, 0x87}), connack
    assert c.expect_closed() == []
