"""Sessions: clean start / clean session, session present, expiry and its DISCONNECT override.

Session expiry is measured in seconds of real time, so the expiry scenarios let 2 s pass.
"""

from __future__ import annotations

import time

import pytest
import rawmqtt
from pahoclient import unique
from rawmqtt import DISCONNECT


def connect_persistent(c: rawmqtt.RawClient, cid: str, *, resume: bool, expiry: int = 300):
    """A session that outlives the connection (v3 clean session 0, v5 session expiry)."""
    if c.version == 5:
        return c.connect(cid, clean=not resume, properties={"session_expiry_interval": expiry})
    return c.connect(cid, clean=False)


def receive_all(c: rawmqtt.RawClient, until: bytes) -> list[bytes]:
    return [p.payload for p in c.collect(until)]


def receive_flows(c: rawmqtt.RawClient, wanted: set[bytes]) -> list[bytes]:
    """Every payload received until all of ``wanted`` have come and every QoS 2 flow is
    complete (PUBREC sent, PUBREL answered), acknowledging as it goes."""
    got: list[bytes] = []
    releasing: set[int] = set()
    while not wanted <= set(got) or releasing:
        pkt = c.recv()
        assert pkt is not None, f"connection closed; received {got}"
        if pkt.type == rawmqtt.PUBREL:
            c.send(rawmqtt.ack(rawmqtt.PUBCOMP, pkt.mid or 0, c.version))
            releasing.discard(pkt.mid or 0)
            continue
        assert pkt.type == rawmqtt.PUBLISH, f"unexpected {pkt!r}"
        if pkt.qos == 1:
            c.send(rawmqtt.ack(rawmqtt.PUBACK, pkt.mid or 0, c.version))
        elif pkt.qos == 2:
            c.send(rawmqtt.ack(rawmqtt.PUBREC, pkt.mid or 0, c.version))
            releasing.add(pkt.mid or 0)
        got.append(pkt.payload)
    return got


def test_persistent_session_keeps_subscriptions_and_queues_messages(client, raw, version):
    t, cid = unique(), unique()
    c = raw(version)
    assert not connect_persistent(c, cid, resume=False).session_present
    c.subscribe([(f"{t}/1", 1), (f"{t}/2", 2)])
    c.disconnect()
    pub = client(version)
    pub.publish(f"{t}/1", b"q1", 1)
    pub.publish(f"{t}/2", b"q2", 2)
    back = raw(version)
    assert connect_persistent(back, cid, resume=True).session_present  # MQTT-3.2.2-2
    pub.publish(f"{t}/2", b"end", 2)
    assert sorted(receive_all(back, b"end")) == [b"q1", b"q2"]


def test_clean_connection_discards_the_session(client, raw, version):
    t, cid = unique(), unique()
    c = raw(version)
    connect_persistent(c, cid, resume=False)
    c.subscribe(t, 1)
    c.disconnect()
    client(version).publish(t, b"queued", 1)
    back = raw(version)
    # MQTT-3.1.2-6 (v3 clean session 1) / MQTT-3.1.2-4 (v5 clean start 1).
    assert not back.connect(cid, clean=True).session_present
    back.subscribe(f"{t}/end", 1)
    client(version).publish(f"{t}/end", b"end", 1)
    assert receive_all(back, b"end") == []  # neither the queued message nor the subscription


def test_v311_clean_session_ends_the_session_at_disconnect(raw):
    cid = unique()
    c = raw(4)
    c.connect(cid, clean=True)
    c.subscribe(unique(), 1)
    c.disconnect()
    assert not raw(4).connect(cid, clean=False).session_present  # MQTT-3.1.2-6


def test_v5_session_expiry_zero_ends_the_session_at_disconnect(raw):
    cid = unique()
    c = raw(5)
    c.connect(cid)  # no Session Expiry Interval: 0
    c.subscribe(unique(), 1)
    c.disconnect()
    assert not raw(5).connect(cid, clean=False).session_present


def test_v5_session_expires_after_the_interval(raw):
    keep, lose = unique(), unique()
    for cid, expiry in ((keep, 30), (lose, 1)):
        c = raw(5)
        connect_persistent(c, cid, resume=False, expiry=expiry)
        c.subscribe(unique(), 1)
        c.disconnect()
    time.sleep(2.2)  # the interval under test
    assert not connect_persistent(raw(5), lose, resume=True).session_present
    assert connect_persistent(raw(5), keep, resume=True).session_present


def test_v5_disconnect_can_shorten_the_session_expiry(raw):
    cid = unique()
    c = raw(5)
    connect_persistent(c, cid, resume=False, expiry=300)
    c.subscribe(unique(), 1)
    c.disconnect(properties={"session_expiry_interval": 0})  # v5 3.14.2.2.2
    assert not connect_persistent(raw(5), cid, resume=True).session_present


def test_v5_disconnect_can_extend_the_session_expiry(raw):
    cid = unique()
    c = raw(5)
    connect_persistent(c, cid, resume=False, expiry=1)
    c.subscribe(unique(), 1)
    c.disconnect(properties={"session_expiry_interval": 60})
    time.sleep(2.2)  # longer than the interval given at CONNECT
    assert connect_persistent(raw(5), cid, resume=True).session_present


def test_v5_disconnect_setting_expiry_after_zero_is_a_protocol_error(raw):
    """v5 3.14.2.2.2: non-zero on DISCONNECT after zero on CONNECT is a Protocol Error."""
    cid = unique()
    c = raw(5)
    c.connect(cid)
    c.subscribe(unique(), 1)
    c.send(rawmqtt.disconnect(5, 0, {"session_expiry_interval": 60}))
    sent = c.expect_closed()
    assert all(p.type == DISCONNECT and p.reason == 0x82 for p in sent), sent
    assert not raw(5).connect(cid, clean=False).session_present


def test_takeover_continues_the_session(raw, version):
    cid = unique()
    first = raw(version)
    connect_persistent(first, cid, resume=False)
    first.subscribe(unique(), 1)
    second = raw(version)
    assert connect_persistent(second, cid, resume=True).session_present
    first.expect_closed()


@pytest.mark.thinghub_only  # MAX_SESSION_EXPIRY has no mosquitto equivalent
def test_v5_server_caps_the_session_expiry(start_hub, raw):
    """v5 3.2.2.3.2: a server using another interval than requested says so in CONNACK."""
    hub = start_hub(MAX_SESSION_EXPIRY=1)
    cid = unique()
    c = raw(5, on=hub)
    connack = connect_persistent(c, cid, resume=False, expiry=3600)
    assert connack.properties.get("session_expiry_interval") == 1
    c.subscribe(unique(), 1)
    c.disconnect()
    time.sleep(2.2)
    assert not connect_persistent(raw(5, on=hub), cid, resume=True).session_present


@pytest.mark.parametrize("disconnect_expiry", [None, 0, 60])
@pytest.mark.parametrize("resume_expiry", [None, 0, 60])
@pytest.mark.parametrize("clean_start", [False, True], ids=["resume", "clean"])
def test_v5_resumed_session_delivers_its_queue_whatever_expiry_the_reconnect_asks(
    client, raw, clean_start, resume_expiry, disconnect_expiry
):
    """A session with expiry 99999 queues QoS 1 and 2 messages while offline; the client comes
    back with any Session Expiry Interval (absent means 0). With Clean Start 0 the CONNACK says
    Session Present and the queue is delivered: the reconnect's expiry only decides what
    happens at the *next* disconnect (§3.1.2.11.2), which the DISCONNECT may change again unless
    the CONNECT said 0 ([MQTT-3.14.2-2]). With Clean Start 1 the old session and its queue are
    gone (§3.1.2.4): Session Present 0 and nothing of it arrives."""
    t, cid = unique(), unique()
    first = raw(5)
    first.connect(cid, clean=True, properties={"session_expiry_interval": 99999})
    first.subscribe(f"{t}/#", 2)
    first.disconnect()
    pub = client(5)
    pub.publish(f"{t}/C", b"qos1", 1)
    pub.publish(f"{t}/B/C", b"qos2", 2)
    back = raw(5)
    props = {} if resume_expiry is None else {"session_expiry_interval": resume_expiry}
    connack = back.connect(cid, clean=clean_start, properties=props)
    assert connack.session_present == (not clean_start)
    if clean_start:
        # A fresh session: subscribed again, it gets only what is published from now on.
        back.subscribe(f"{t}/#", 2)
        pub.publish(f"{t}/end", b"end", 1)
        assert receive_flows(back, {b"end"}) == [b"end"]
    else:
        pub.publish(f"{t}/end", b"end", 1)
        # Not a sentinel: MQTT orders messages per topic and QoS only (§4.6), and a QoS 2 copy
        # to a persistent session leaves once its packet id is stored, so "end" may overtake
        # "qos2".
        got = sorted(receive_flows(back, {b"qos1", b"qos2", b"end"}))
        assert got == [b"end", b"qos1", b"qos2"]
    connect_said = resume_expiry or 0
    if disconnect_expiry is not None and connect_said == 0 and disconnect_expiry != 0:
        return  # a protocol error, tested above
    back.disconnect(
        properties=None
        if disconnect_expiry is None
        else {"session_expiry_interval": disconnect_expiry}
    )
    final = connect_said if disconnect_expiry is None else disconnect_expiry
    again = raw(5)
    present = again.connect(cid, clean=False, properties={"session_expiry_interval": 60})
    assert present.session_present == (final > 0)
