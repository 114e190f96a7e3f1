"""CONNECT / CONNACK: identifiers, takeover, keep alive, server keep alive, anonymous access."""

from __future__ import annotations

import time

import pytest
import rawmqtt
from pahoclient import unique
from rawmqtt import CONNACK, DISCONNECT


def test_connack_for_a_clean_connection(raw, version):
    c = raw(version)
    connack = c.connect(unique())
    assert connack.reason == 0
    assert not connack.session_present  # MQTT-3.2.2-2 / v5 MQTT-3.2.2-2
    c.ping()


def test_v5_connack_announces_the_hub_limits(raw, hub):
    """Absent properties mean "no limit" (v5 3.2.2.3), so a limited hub must announce them."""
    connack = raw(5).connect(unique())
    p = connack.properties
    assert p.get("receive_maximum", 65535) == hub.setting("RECEIVE_MAXIMUM")
    assert p.get("maximum_packet_size") == hub.setting("MAX_PACKET_SIZE")
    assert p.get("topic_alias_maximum", 0) == hub.setting("TOPIC_ALIAS_MAXIMUM")
    assert p.get("maximum_qos", 2) == 2
    assert p.get("retain_available", 1) == 1


def test_v5_empty_client_id_gets_an_assigned_identifier(raw):
    """v5 3.2.2.3.7: the server assigns an id and returns it in CONNACK."""
    first = raw(5).connect("").properties.get("assigned_client_identifier")
    second = raw(5).connect("").properties.get("assigned_client_identifier")
    assert first and second and first != second


def test_v311_empty_client_id_is_accepted_with_clean_session(raw):
    c = raw(4)
    assert c.connect("").reason == 0  # MQTT-3.1.3-6
    c.ping()


def test_v311_empty_client_id_without_clean_session_is_rejected(raw):
    c = raw(4)
    connack = c.connect("", clean=False, expect_reason=None)
    assert connack.reason == 0x02  # identifier rejected, MQTT-3.1.3-8
    assert c.expect_closed() == []  # MQTT-3.2.2-5


def test_second_connection_with_same_client_id_takes_over(hub, raw, version):
    cid = unique()
    old = raw(version)
    old.connect(cid)
    new = raw(version)
    assert new.connect(cid).reason == 0
    # MQTT-3.1.4-2 (v3) / MQTT-3.1.4-3 (v5): the existing connection is closed; v5 first
    # sends DISCONNECT "Session taken over".
    sent = old.expect_disconnect()
    if version == 5:
        if sent is not None or not hub.deviates("takeover-no-disconnect"):
            assert sent is not None and sent.reason == 0x8E, sent
    else:
        assert sent is None
    new.ping()


def test_keep_alive_closes_a_silent_connection_after_one_and_a_half_times(hub, raw, version):
    """MQTT-3.1.2-24 (v3) / MQTT-3.1.2-22 (v5): silence for 1.5x keep alive ends it."""
    c = raw(version)
    c.connect(unique(), keepalive=1)
    # Traffic resets the timer: pinging every 0.6 s keeps the connection for 2.4 s.
    for _ in range(4):
        time.sleep(0.6)
        c.ping()
    start = time.monotonic()
    sent = c.expect_closed(timeout=10)
    elapsed = time.monotonic() - start
    latest = 8.0 if hub.deviates("keepalive-late") else 3.0
    assert 1.4 <= elapsed <= latest, f"closed after {elapsed:.2f}s, keep alive 1s"
    if version == 5 and sent:
        # 4.13: the server SHOULD say why: 0x8D Keep Alive timeout.
        assert [p.type for p in sent] == [DISCONNECT] and sent[0].reason == 0x8D, sent


@pytest.mark.parametrize("keepalive", [60, 0])
def test_v5_server_keep_alive_is_announced(start_hub, raw, keepalive):
    """v5 3.2.2.3.14: the client must use the Server Keep Alive instead of its own."""
    # mosquitto refuses max_keepalive below 10, so 10 is the value both targets accept.
    hub = start_hub(SERVER_KEEP_ALIVE=10)
    connack = raw(5, on=hub).connect(unique(), keepalive=keepalive)
    assert connack.properties.get("server_keep_alive") == 10


@pytest.mark.thinghub_only  # mosquitto's max_keepalive must be >= 10 (too slow to wait out)
def test_v5_server_keep_alive_is_enforced(start_hub, raw):
    hub = start_hub(SERVER_KEEP_ALIVE=1)
    c = raw(5, on=hub)
    connack = c.connect(unique(), keepalive=60)
    assert connack.properties.get("server_keep_alive") == 1
    start = time.monotonic()
    sent = c.expect_closed(timeout=5)
    elapsed = time.monotonic() - start
    assert 1.4 <= elapsed <= 3.0, f"closed after {elapsed:.2f}s, server keep alive 1s"
    if sent:
        assert sent[-1].type == DISCONNECT and sent[-1].reason == 0x8D, sent


def test_connection_refused_for_unsupported_protocol_level(raw):
    c = raw(5)
    good = rawmqtt.connect(unique(), 4)
    assert good[8] == 4  # the protocol level byte
    c.send(good[:8] + b"\x06" + good[9:])
    sent = c.expect_closed()
    # v5 3.1.2.2: MAY answer CONNACK 0x84 (v3: 0x01 unacceptable protocol version), MUST close.
    assert all(p.type == CONNACK and p.reason in (0x01, 0x84) for p in sent), sent


@pytest.mark.thinghub_only
def test_healthz_answers_on_the_http_port(hub):
    import urllib.request

    with urllib.request.urlopen(f"http://{hub.host}:{hub.http_port}/healthz", timeout=5) as r:
        assert r.status == 200
