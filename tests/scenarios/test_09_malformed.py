"""Malformed packets and protocol errors, hand-built byte by byte.

v5 4.13: on a Malformed Packet or Protocol Error the server MUST close the connection and
SHOULD first send DISCONNECT with the reason code (CONNACK for errors in CONNECT).  ThingHub
makes that SHOULD a MUST; 3.1.1 has no server DISCONNECT, so there the connection just closes.
After every case the hub must go on serving a new client.
"""

from __future__ import annotations

import socket

import pytest
import rawmqtt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pahoclient import unique
from rawmqtt import CONNACK, DISCONNECT, SUBACK

MALFORMED, PROTOCOL_ERROR, TOPIC_NAME_INVALID = 0x81, 0x82, 0x90


def _publish_with_topic(topic: bytes, version: int, **kw) -> bytes:
    return rawmqtt.publish(topic, b"x", version=version, **kw)


# name -> (bytes after a valid CONNECT, v5 reason code, spec reference)
AFTER_CONNECT = {
    "remaining-length-of-5-bytes": (
        lambda v: b"\x30\xff\xff\xff\xff\x01",
        MALFORMED,
        "1.5.5: at most 4 bytes",
    ),
    "subscribe-with-reserved-flags-0": (
        lambda v: (
            rawmqtt.subscribe(1, unique(), v)[:1].replace(b"\x82", b"\x80")
            + rawmqtt.subscribe(1, unique(), v)[1:]
        ),
        MALFORMED,
        "MQTT-3.8.1-1 / 2.1.3",
    ),
    "pingreq-with-reserved-flags": (lambda v: b"\xc1\x00", MALFORMED, "2.1.3"),
    "publish-qos-3": (
        lambda v: _publish_with_topic(unique().encode(), v, qos=3),
        MALFORMED,
        "MQTT-3.3.1-4",
    ),
    "topic-invalid-utf8": (
        lambda v: _publish_with_topic(b"bad/\xff\xfe", v),
        MALFORMED,
        "MQTT-1.5.4-1 (v5) / MQTT-1.5.3-1",
    ),
    "topic-with-nul": (
        lambda v: _publish_with_topic(b"bad/\x00/nul", v),
        MALFORMED,
        "MQTT-1.5.4-2 (v5) / MQTT-1.5.3-2",
    ),
    "topic-with-plus-wildcard": (
        lambda v: _publish_with_topic(b"a/+/b", v),
        TOPIC_NAME_INVALID,
        "MQTT-3.3.2-2",
    ),
    "topic-with-hash-wildcard": (
        lambda v: _publish_with_topic(b"a/#", v),
        TOPIC_NAME_INVALID,
        "MQTT-3.3.2-2",
    ),
    "second-connect": (lambda v: rawmqtt.connect(unique(), v), PROTOCOL_ERROR, "MQTT-3.1.0-2"),
    "subscribe-without-filters": (
        lambda v: rawmqtt.packet(rawmqtt.SUBSCRIBE, 2, b"\x00\x01" + (b"\x00" if v == 5 else b"")),
        PROTOCOL_ERROR,
        "MQTT-3.8.3-3 (v3) / MQTT-3.8.3-2 (v5)",
    ),
    # 2.1.2 calls type 0 "Forbidden" without saying which error that is.
    "reserved-packet-type-0": (lambda v: b"\x00\x00", (MALFORMED, PROTOCOL_ERROR), "2.1.2"),
}
V5_ONLY = {
    "duplicated-property": (
        lambda v: _publish_with_topic(
            unique().encode(), v, properties=[(0x03, "a/b"), (0x03, "c/d")]
        ),
        PROTOCOL_ERROR,
        "3.3.2.3.9: Content Type more than once",
    ),
    "unknown-property-id": (
        lambda v: _publish_with_topic(unique().encode(), v, properties=b"\x7f\x00"),
        MALFORMED,
        "2.2.2.2: undefined identifier",
    ),
    "empty-topic-without-alias": (
        lambda v: _publish_with_topic(b"", v),
        PROTOCOL_ERROR,
        "3.3.2.1 / 3.3.2.3.4",
    ),
    "property-length-beyond-packet": (
        lambda v: rawmqtt.packet(rawmqtt.PUBLISH, 0, rawmqtt.utf8("a") + b"\x20\x01\x01"),
        MALFORMED,
        "2.2.2.1",
    ),
}


def _refused(hub, c: rawmqtt.RawClient, reason: int | tuple[int, ...]) -> None:
    sent = c.expect_closed()
    if c.version == 4:
        assert sent == [], sent
        return
    reasons = reason if isinstance(reason, tuple) else (reason,)
    if hub.deviates("malformed-reason-codes"):
        reasons = (MALFORMED, PROTOCOL_ERROR, TOPIC_NAME_INVALID)
    assert all(p.type == DISCONNECT for p in sent), sent
    if sent or not hub.deviates("no-disconnect-on-malformed"):
        assert len(sent) == 1 and sent[0].reason in reasons, sent


@pytest.mark.parametrize("case", list(AFTER_CONNECT))
def test_malformed_or_invalid_packet_closes_the_connection(hub, raw, version, case):
    build, reason, _spec = AFTER_CONNECT[case]
    if case == "pingreq-with-reserved-flags":
        hub.skip_if_deviates("pingreq-reserved-flags")
    c = raw(version)
    c.connect(unique())
    c.send(build(version))
    _refused(hub, c, reason)
    hub.assert_serving()


@pytest.mark.parametrize("case", list(V5_ONLY))
def test_v5_property_errors_close_the_connection(hub, raw, case):
    build, reason, _spec = V5_ONLY[case]
    c = raw(5)
    c.connect(unique())
    c.send(build(5))
    _refused(hub, c, reason)
    hub.assert_serving()


@pytest.mark.parametrize("first", [rawmqtt.pingreq(), b"\x30\x05\x00\x01ax"], ids=["ping", "pub"])
def test_first_packet_must_be_connect(hub, raw, version, first):
    """MQTT-3.1.0-1: anything else first -> close, and nothing is sent back."""
    c = raw(version)
    c.send(first)
    assert c.expect_closed() == []
    hub.assert_serving()


def test_connect_with_reserved_flag_is_refused(hub, raw, version):
    """MQTT-3.1.2-3: the reserved flag in CONNECT must be 0 (v5: malformed, CONNACK 0x81)."""
    good = rawmqtt.connect(unique(), version)
    flags_at = 9  # fixed header 2, "MQTT" 6, level 1
    c = raw(version)
    c.send(good[:flags_at] + bytes([good[flags_at] | 0x01]) + good[flags_at + 1 :])
    sent = c.expect_closed()
    assert all(p.type == CONNACK and p.reason == MALFORMED for p in sent), sent
    hub.assert_serving()


def test_invalid_topic_filter_is_refused(hub, raw, version):
    """MQTT-4.7.1-1/2: '#' must be last and '+' must fill a whole level.  The server refuses
    the filter: SUBACK failure (0x80; v5 0x8F Topic Filter invalid) or a closed connection."""
    c = raw(version)
    c.connect(unique())
    c.send(rawmqtt.subscribe(1, [("a/#/b", 1), ("a/b+", 1)], version))
    first = c.recv()
    if first is not None and first.type == SUBACK:
        assert all(r >= 0x80 for r in first.reasons), first
        if version == 5:
            assert all(r in (0x80, 0x8F) for r in first.reasons), first
    else:
        rest = c.expect_closed()
        sent = ([first] if first else []) + rest
        assert all(p.type == DISCONNECT and p.reason in (0x81, 0x82, 0x8F) for p in sent), sent
    hub.assert_serving()


def test_client_sending_a_server_packet_is_refused(hub, raw, version):
    """A CONNACK from a client is a protocol error (v5 4.13; 3.1.1 4.8)."""
    c = raw(version)
    c.connect(unique())
    c.send(b"\x20\x02\x00\x00")
    sent = c.expect_closed()
    assert all(p.type == DISCONNECT and p.reason in (0x81, 0x82) for p in sent), sent
    hub.assert_serving()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(garbage=st.binary(min_size=1, max_size=64), proto=st.sampled_from([4, 5]))
def test_random_bytes_after_connect_never_break_the_hub(hub, garbage, proto):
    with rawmqtt.RawClient(hub.host, hub.port, version=proto) as c:
        c.connect(unique())
        try:
            c.send(garbage)
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already closed by the broker: fine
    hub.assert_serving()
