"""Retained messages are cluster-wide: a node that starts later, or comes back after missing
changes, catches up from the cluster's retained stream (cluster/retained.py) and gives a new
subscription exactly the cluster's retained messages."""

from __future__ import annotations

from collections.abc import Callable

import pahoclient
from hubnodes import HubNode, settle
from pahoclient import unique

MakeClient = Callable[..., pahoclient.Client]


def test_a_node_started_later_has_the_clusters_retained_messages(
    nodes: list[HubNode], start_node: Callable[..., HubNode], client: MakeClient
) -> None:
    n1, _n2, _n3 = nodes
    base = unique("late")
    long_topic = f"{base}/" + "é" * 400  # too long for a subject: a hashed one
    publisher = client(n1)
    publisher.publish(f"{base}/a", b"A", 1, retain=True)
    # At QoS 0: at QoS 1/2 a topic this long is refused in a cluster (the message stream's
    # subjects cannot carry it: test_cluster_long_topics.py).
    publisher.publish(long_topic, b"long", 0, retain=True)
    n4 = start_node("n4")
    settle([*nodes, n4])
    assert n4.status()["retained"]["kept"] >= 2
    late = client(n4)
    late.subscribe(f"{base}/#", 1)
    got = sorted((m.topic, m.payload, m.retain) for m in late.expect_messages(2))
    assert got == sorted([(f"{base}/a", b"A", True), (long_topic, b"long", True)])


def test_a_node_back_after_changes_has_the_clusters_retained_messages(
    nodes: list[HubNode], start_node: Callable[..., HubNode], client: MakeClient
) -> None:
    n1, _n2, _n3 = nodes
    base = unique("back")
    publisher = client(n1)
    publisher.publish(f"{base}/gone", b"old", 1, retain=True)
    publisher.publish(f"{base}/changed", b"v1", 1, retain=True)
    away = start_node("n5")
    settle([*nodes, away])
    data_dir = away.data_dir
    assert away.stop() == 0
    # While it is away (its own store still holds both): one deleted, one changed.
    publisher.publish(f"{base}/gone", b"", 1, retain=True)
    publisher.publish(f"{base}/changed", b"v2", 1, retain=True)
    back = start_node("n5", data_dir=data_dir)
    settle([*nodes, back])
    subscriber = client(back)
    subscriber.subscribe(f"{base}/#", 1)
    settle([*nodes, back])
    # What the new subscription got before a sentinel published after it: the retained ones.
    publisher.publish(f"{base}/sentinel", b"sentinel", 1)
    got = subscriber.until(b"sentinel")
    assert [(m.topic, m.payload, m.retain) for m in got] == [(f"{base}/changed", b"v2", True)]
