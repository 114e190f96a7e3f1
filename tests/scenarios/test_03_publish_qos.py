"""PUBLISH at QoS 0, 1 and 2: flows, downgrade, ordering, inflight windows, redelivery."""

from __future__ import annotations

import pytest
import rawmqtt
from pahoclient import unique
from rawmqtt import PINGRESP, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL


def persistent(c: rawmqtt.RawClient, cid: str, *, fresh: bool, **kw):
    """CONNECT whose session outlives the connection: clean session 0 (v3), or a session
    expiry interval (v5).  `fresh` starts a new session (v5 clean start; for 3.1.1 the
    unique client id already guarantees that, as clean session 1 would end it on close)."""
    if c.version == 5:
        return c.connect(cid, clean=fresh, properties={"session_expiry_interval": 300}, **kw)
    return c.connect(cid, clean=False, **kw)


def ack_incoming(c: rawmqtt.RawClient, pkt: rawmqtt.Packet) -> None:
    """Complete the receiver side of a QoS 1 or 2 delivery."""
    if pkt.qos == 1:
        c.send(rawmqtt.ack(PUBACK, pkt.mid, c.version))
    elif pkt.qos == 2:
        c.send(rawmqtt.ack(PUBREC, pkt.mid, c.version))
        assert c.expect(PUBREL).mid == pkt.mid
        c.send(rawmqtt.ack(PUBCOMP, pkt.mid, c.version))


@pytest.mark.parametrize("pub_qos", [0, 1, 2])
@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_delivered_at_the_lower_of_published_and_granted_qos(client, version, pub_qos, sub_qos):
    t = unique()
    sub = client(version)
    sub.subscribe(t, sub_qos)
    assert client(version).publish(t, b"payload", pub_qos) == 0
    msg = sub.expect_message()
    assert (msg.topic, msg.payload, msg.qos) == (t, b"payload", min(pub_qos, sub_qos))


def test_qos1_flow_on_the_wire(raw, version):
    t = unique()
    sub = raw(version)
    sub.connect(unique())
    sub.subscribe(t, 1)
    pub = raw(version)
    pub.connect(unique())
    pub.publish(t, b"q1", qos=1, mid=0x1234)
    puback = pub.expect(PUBACK)
    assert (puback.mid, puback.reason) == (0x1234, 0)
    got = sub.expect(PUBLISH)
    assert (got.topic, got.payload, got.qos, got.dup, got.retain) == (t, b"q1", 1, False, False)
    assert got.mid != 0  # MQTT-2.3.1-1: a non-zero packet identifier
    sub.send(rawmqtt.ack(PUBACK, got.mid, version))
    sub.ping()


def test_qos2_flow_on_the_wire(raw, version):
    t = unique()
    sub = raw(version)
    sub.connect(unique())
    sub.subscribe(t, 2)
    pub = raw(version)
    pub.connect(unique())
    pub.publish(t, b"q2", qos=2, mid=77)
    assert pub.expect(PUBREC).mid == 77
    pub.send(rawmqtt.ack(PUBREL, 77, version))
    assert pub.expect(PUBCOMP).mid == 77
    got = sub.expect(PUBLISH)
    assert (got.payload, got.qos) == (b"q2", 2)
    sub.send(rawmqtt.ack(PUBREC, got.mid, version))
    rel = sub.expect(PUBREL)
    assert rel.mid == got.mid and rel.flags == 0x02  # MQTT-3.6.1-1: reserved bits 0010
    sub.send(rawmqtt.ack(PUBCOMP, got.mid, version))
    sub.ping()


def test_qos2_resent_before_pubrel_is_delivered_once(raw, client, version):
    """4.3.3: exactly once, even when the sender repeats PUBLISH (DUP) before PUBREL."""
    t = unique()
    sub = client(version)
    sub.subscribe(t, 2)
    pub = raw(version)
    pub.connect(unique())
    pub.publish(t, b"once", qos=2, mid=9)
    assert pub.expect(PUBREC).mid == 9
    pub.publish(t, b"once", qos=2, mid=9, dup=True)
    assert pub.expect(PUBREC).mid == 9
    pub.send(rawmqtt.ack(PUBREL, 9, version))
    assert pub.expect(PUBCOMP).mid == 9
    pub.publish_acked(t, b"end", 2, mid=10)
    assert [m.payload for m in sub.until(b"end")] == [b"once"]


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_order_is_kept_per_topic(client, version, qos):
    """4.6: messages of one publisher on one topic arrive in the order published."""
    t = unique()
    sub = client(version)
    sub.subscribe(t, qos)
    pub = client(version)
    n = 200
    for i in range(n):
        pub.publish(t, str(i).encode(), qos, wait=False)
    pub.publish(t, b"end", qos)
    got = [int(m.payload) for m in sub.until(b"end", timeout=10)]
    if qos == 0:
        # QoS 0 may be dropped under pressure, but never reordered.
        assert got == sorted(got) and len(got) > 0
    else:
        assert got == list(range(n))


def _window_of_one(sub: rawmqtt.RawClient, pub: rawmqtt.RawClient, t: str, qos: int) -> None:
    """With room for one unacknowledged message, the next waits for the acknowledgement."""
    for i in range(1, 4):
        pub.publish_acked(t, f"m{i}".encode(), qos, mid=i)  # the broker holds all three
    for i in range(1, 4):
        got = sub.expect(PUBLISH)
        assert (got.payload, got.qos) == (f"m{i}".encode(), qos)
        # Nothing else may be on its way: the PINGRESP comes before any second PUBLISH.
        sub.ping()
        if qos == 2:
            sub.send(rawmqtt.ack(PUBREC, got.mid, sub.version))
            assert sub.expect(PUBREL).mid == got.mid
            sub.ping()  # still in flight until PUBCOMP (4.9)
            sub.send(rawmqtt.ack(PUBCOMP, got.mid, sub.version))
        else:
            sub.send(rawmqtt.ack(PUBACK, got.mid, sub.version))
    sub.ping()


@pytest.mark.parametrize("qos", [1, 2])
def test_max_inflight_one_holds_back_the_next_message(start_hub, raw, version, qos):
    hub = start_hub(MAX_INFLIGHT=1)
    t = unique()
    sub = raw(version, on=hub)
    sub.connect(unique())
    sub.subscribe(t, qos)
    pub = raw(version, on=hub)
    pub.connect(unique())
    _window_of_one(sub, pub, t, qos)


@pytest.mark.parametrize("qos", [1, 2])
def test_v5_server_respects_the_client_receive_maximum(raw, qos):
    """MQTT-3.3.4-9: no more unacknowledged QoS 1/2 PUBLISH than the client's Receive Maximum."""
    t = unique()
    sub = raw(5)
    sub.connect(unique(), properties={"receive_maximum": 1})
    sub.subscribe(t, qos)
    pub = raw(5)
    pub.connect(unique())
    _window_of_one(sub, pub, t, qos)


def test_v5_client_exceeding_the_receive_maximum_is_disconnected(start_hub, raw):
    """v5 3.3.4: more unacknowledged QoS 1/2 PUBLISH than Receive Maximum -> DISCONNECT 0x93.

    QoS 2 makes the count deterministic: each stays unacknowledged until our PUBREL.
    """
    limited = start_hub(RECEIVE_MAXIMUM=2)
    c = raw(5, on=limited)
    assert c.connect(unique()).properties.get("receive_maximum") == 2
    t = unique()
    for mid in (1, 2):
        c.publish(t, b"x", qos=2, mid=mid)
        assert c.expect(PUBREC).mid == mid
    c.publish(t, b"x", qos=2, mid=3)
    if limited.deviates("receive-maximum-quota"):
        refused = c.expect(PUBREC)
        assert (refused.mid, refused.reason) == (3, 0x97)
        return
    sent = c.expect_closed()
    assert [(p.type, p.reason) for p in sent] == [(rawmqtt.DISCONNECT, 0x93)], sent
    limited.assert_serving()


@pytest.mark.parametrize("qos", [1, 2])
def test_unacknowledged_publish_is_resent_with_dup_after_reconnect(raw, version, qos):
    """MQTT-4.4.0-1: on reconnect with a session, unacknowledged PUBLISH packets are resent
    with their original packet identifiers and DUP set (MQTT-3.3.1-1)."""
    t, cid = unique(), unique()
    sub = raw(version)
    persistent(sub, cid, fresh=True)
    sub.subscribe(t, qos)
    pub = raw(version)
    pub.connect(unique())
    pub.publish_acked(t, b"again", qos)
    first = sub.expect(PUBLISH)
    assert (first.payload, first.dup) == (b"again", False)
    sub.close()  # no acknowledgement

    back = raw(version)
    assert persistent(back, cid, fresh=False).session_present
    again = back.expect(PUBLISH)
    assert (again.payload, again.qos, again.dup, again.mid) == (b"again", qos, True, first.mid)
    ack_incoming(back, again)
    back.ping()


def test_pubrel_is_resent_after_reconnect(raw, version):
    """MQTT-4.4.0-1: an unacknowledged PUBREL is resent; the PUBLISH is not delivered again."""
    t, cid = unique(), unique()
    sub = raw(version)
    persistent(sub, cid, fresh=True)
    sub.subscribe(t, 2)
    pub = raw(version)
    pub.connect(unique())
    pub.publish_acked(t, b"q2", 2)
    got = sub.expect(PUBLISH)
    sub.send(rawmqtt.ack(PUBREC, got.mid, version))
    assert sub.expect(PUBREL).mid == got.mid
    sub.close()  # no PUBCOMP

    back = raw(version)
    assert persistent(back, cid, fresh=False).session_present
    rel = back.expect(PUBREL)
    assert rel.mid == got.mid
    back.send(rawmqtt.ack(PUBCOMP, rel.mid, version))
    back.ping()
    pub.publish_acked(t, b"next", 2, mid=2)
    nxt = back.expect(PUBLISH)
    assert nxt.payload == b"next"  # not "q2" again
    ack_incoming(back, nxt)


def test_pingreq_is_answered(raw, version):
    c = raw(version)
    c.connect(unique())
    c.send(rawmqtt.pingreq())
    assert c.expect(PINGRESP).raw == b""
