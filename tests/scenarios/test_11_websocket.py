"""MQTT over WebSocket (subprotocol "mqtt", path /mqtt on the HTTP port)."""

from __future__ import annotations

import pytest
from pahoclient import unique


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_websocket_round_trip(client, version, qos):
    t = unique()
    sub = client(version, transport="websockets")
    sub.subscribe(t, qos)
    client(version, transport="websockets").publish(t, b"over ws", qos)
    msg = sub.expect_message()
    assert (msg.topic, msg.payload, msg.qos) == (t, b"over ws", qos)


def test_websocket_and_tcp_clients_share_one_broker(client, version):
    t = unique()
    ws = client(version, transport="websockets")
    ws.subscribe(t, 1)
    tcp = client(version)
    tcp.subscribe(t, 1)
    tcp.publish(t, b"from tcp", 1)
    ws.publish(t, b"from ws", 1)
    for sub in (ws, tcp):
        assert sorted(m.payload for m in sub.expect_messages(2)) == [b"from tcp", b"from ws"]


def test_websocket_retained_and_large_message(client, version):
    t = unique()
    big = bytes(range(256)) * 160  # 40 KiB: spans many WebSocket frames
    client(version, transport="websockets").publish(t, big, 1, retain=True)
    sub = client(version, transport="websockets")
    sub.subscribe(t, 1)
    msg = sub.expect_message()
    assert (msg.payload, msg.retain) == (big, True)
    client(version).publish(t, b"", 1, retain=True)


def test_websocket_will_on_dropped_connection(client, version):
    t = unique()
    watcher = client(version)
    watcher.subscribe(t, 1)
    ws = client(version, transport="websockets", will=(t, b"ws gone", 1, False))
    ws.drop()
    assert watcher.expect_message().payload == b"ws gone"
