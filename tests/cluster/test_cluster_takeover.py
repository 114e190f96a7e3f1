"""A client id is unique in the cluster: a connection on one node takes the session over from
another node, which tells its connection DISCONNECT 0x8E (MQTT 5; a 3.1.1 connection is
closed), as a second connection does on one node [MQTT-3.1.4-3]. Real nodes, real clients.

A node claims a client id in the cluster's owners bucket a round trip after the CONNACK
(cluster/owners.py); each test waits for that claim (the node's counter) before the next
connection, as a device reconnecting seconds later would."""

from __future__ import annotations

from collections.abc import Callable

import pahoclient
import rawmqtt
from hubnodes import HubNode, settle, wait_for
from pahoclient import unique

MakeClient = Callable[..., pahoclient.Client]
MakeRaw = Callable[..., rawmqtt.RawClient]
SESSION_TAKEN_OVER = 0x8E


def claims(node: HubNode) -> int:
    return int(node.status()["owners"]["claims"])


def connect_raw(
    raw: MakeRaw, node: HubNode, client_id: str, version: int = 5, **kwargs: object
) -> rawmqtt.RawClient:
    """Connected, and its node's claim of the client id made."""
    before = claims(node)
    connection = raw(node, version)
    connection.connect(client_id, **kwargs)
    wait_for(lambda: claims(node) > before, what=f"{node.name} to claim {client_id}")
    return connection


def test_a_connection_on_another_node_takes_the_client_id_over(
    nodes: list[HubNode], raw: MakeRaw
) -> None:
    n1, n2, _n3 = nodes
    client_id = unique("dev")
    first = connect_raw(raw, n1, client_id)
    second = connect_raw(raw, n2, client_id)
    disconnect = first.expect_disconnect()
    assert disconnect is not None and disconnect.reason == SESSION_TAKEN_OVER
    second.ping()  # the new connection is not touched
    # And back: the newest connection wins again.
    third = connect_raw(raw, n1, client_id)
    disconnect = second.expect_disconnect()
    assert disconnect is not None and disconnect.reason == SESSION_TAKEN_OVER
    third.ping()
    third.disconnect()


def test_a_311_connection_taken_over_elsewhere_is_closed(
    nodes: list[HubNode], raw: MakeRaw
) -> None:
    n1, _n2, n3 = nodes
    client_id = unique("old")
    first = connect_raw(raw, n1, client_id, version=4)
    second = connect_raw(raw, n3, client_id, version=4)
    assert first.expect_closed() == []  # 3.1.1 has no DISCONNECT from the server
    second.ping()
    second.disconnect()


def test_the_will_goes_out_when_the_new_connection_starts_clean(
    nodes: list[HubNode], client: MakeClient, raw: MakeRaw
) -> None:
    n1, n2, n3 = nodes
    topic = unique("will")
    watcher = client(n3)
    watcher.subscribe(topic, 1)
    settle(nodes)
    client_id = unique("willer")
    first = connect_raw(raw, n1, client_id, will=rawmqtt.Will(topic, b"taken over", qos=1))
    connect_raw(raw, n2, client_id)
    disconnect = first.expect_disconnect()
    assert disconnect is not None and disconnect.reason == SESSION_TAKEN_OVER
    assert watcher.expect_message().payload == b"taken over"


def test_a_session_taken_over_ends_on_the_node_that_held_it(
    nodes: list[HubNode], client: MakeClient
) -> None:
    """The new node resumes the session from the cluster's record (Session Present 1, its
    subscription in place: cluster/consumers.py) and the old node drops its copy, so nothing
    more is queued there."""
    n1, n2, n3 = nodes
    client_id = unique("persist")
    topic = unique("persist-topic")
    sessions = n1.get_json("/api/stats")["sessions"]
    device = client(n1, client_id=client_id, session_expiry=3600)
    device.subscribe(topic, 1)
    wait_for(lambda: claims(n1) > 0)
    device.disconnect()
    assert n1.get_json("/api/stats")["sessions"] == sessions + 1  # kept while offline
    before = claims(n2)
    again = client(n2, client_id=client_id, session_expiry=3600, connect=False)
    assert again.connect(clean=False).session_present is True
    wait_for(lambda: claims(n2) > before, what="n2's claim")
    wait_for(
        lambda: n1.get_json("/api/stats")["sessions"] == sessions,
        what="n1 to end the session taken over",
    )
    settle(nodes)
    client(n3).publish(topic, b"to the new node", 1)
    assert again.expect_message().payload == b"to the new node"


def test_a_node_back_from_down_drops_the_sessions_taken_over_meanwhile(
    nodes: list[HubNode], start_node: Callable[..., HubNode], client: MakeClient
) -> None:
    """The takeover notice found nobody (the node was down): at start the node checks the
    owners of the sessions it restored and ends those held elsewhere now."""
    n1, _n2, _n3 = nodes
    client_id = unique("sleeper")
    away = start_node("n6")
    settle([*nodes, away])
    device = client(away, client_id=client_id, session_expiry=3600)
    device.subscribe(unique("t"), 1)
    wait_for(lambda: claims(away) > 0, what="n6's claim")
    device.disconnect()
    data_dir = away.data_dir
    sessions_before = away.get_json("/api/stats")["sessions"]
    assert away.stop() == 0
    before = claims(n1)
    client(n1, client_id=client_id, session_expiry=3600)
    wait_for(lambda: claims(n1) > before, what="n1's claim")
    back = start_node("n6", data_dir=data_dir)
    wait_for(
        lambda: back.get_json("/api/stats")["sessions"] == sessions_before - 1,
        what="n6 to drop the session n1 holds now",
    )
