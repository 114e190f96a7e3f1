"""The wills of a node's clients when the node dies (SIGKILL): another node publishes them,
once, after their Will Delay Interval; not the will of a client that disconnected cleanly
before, nor that of a client that connected again elsewhere within its will delay
[MQTT-3.1.3-9]. A node killed and restarted at once publishes what its earlier run left, and
still only once. Real ``thinghub serve --cluster`` nodes on a real NATS cluster, paho-mqtt
clients."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from pathlib import Path

import natscluster
import pahoclient
import pytest
from hubnodes import QUICK, HubNode, settle, wait_for
from pahoclient import unique

MakeClient = Callable[..., pahoclient.Client]


@pytest.fixture
def victim(nats_cluster: natscluster.NatsCluster, tmp_path: Path) -> Iterator[HubNode]:
    """A node of its own, which the test kills (its exit code is not checked)."""
    node = HubNode("victim", nats_cluster.cluster_arg, tmp_path / "victim", **QUICK)
    try:
        yield node
    finally:
        node.stop()


def _wills(node: HubNode) -> dict[str, int]:
    return dict(node.status()["wills"])


def test_the_wills_of_a_dead_nodes_clients_are_published_by_another(
    nodes: list[HubNode], victim: HubNode, client: MakeClient
) -> None:
    n1 = nodes[0]
    base = unique("wills")
    watcher = client(n1)
    watcher.subscribe(f"{base}/#", 1)
    gone = client(victim, will=(f"{base}/gone", b"gone", 1, False))
    # A client of a live node: its will is not the dead node's to publish.
    alive = client(nodes[1], will=(f"{base}/alive", b"still here", 1, False))
    polite = client(victim, will=(f"{base}/polite", b"never", 1, False))
    back = client(
        victim,
        session_expiry=300,
        will=(f"{base}/back", b"never either", 1, False),
        will_properties={"WillDelayInterval": 5},
    )
    settle([*nodes, victim])
    wait_for(lambda: _wills(victim)["kept"] >= 3, what="the victim to keep its clients' wills")
    wait_for(lambda: _wills(nodes[1])["kept"] >= 1, what="n2 to keep its client's will")
    polite.disconnect()  # a clean DISCONNECT: no will, whatever happens next
    wait_for(lambda: _wills(victim)["removed"] >= 1, what="the clean client's will removed")
    cancelled_before = sum(_wills(node)["cancelled"] for node in nodes)

    victim.proc.kill()  # SIGKILL: it publishes nothing
    victim.proc.wait()
    back.stop()  # its connection died with the node
    back_again = client(
        n1, client_id=back.client_id, clean=False, session_expiry=300, connect=False
    )
    assert back_again.connect().session_present  # resumed on n1 within the will delay

    will = watcher.expect_message(timeout=20)
    assert (will.topic, will.payload, will.qos) == (f"{base}/gone", b"gone", 1)
    wait_for(
        lambda: sum(_wills(node)["cancelled"] for node in nodes) > cancelled_before,
        timeout=30,
        what="the resumed client's delayed will to be cancelled",
    )
    with pytest.raises(queue.Empty):
        watcher.messages.get(timeout=0.5)  # not the polite, the resumed or the live one
    assert sum(_wills(node)["published_for_dead_nodes"] for node in nodes) >= 1
    del gone, alive


def test_a_node_restarted_at_once_publishes_what_its_last_run_left(
    nodes: list[HubNode], nats_cluster: natscluster.NatsCluster, tmp_path: Path, client: MakeClient
) -> None:
    n1 = nodes[0]
    base = unique("restart")
    watcher = client(n1)
    watcher.subscribe(f"{base}/#", 1)
    first = HubNode("phoenix", nats_cluster.cluster_arg, tmp_path / "phoenix", **QUICK)
    again: HubNode | None = None
    try:
        client(first, will=(f"{base}/lost", b"lost", 1, False))
        settle([*nodes, first])
        wait_for(lambda: _wills(first)["kept"] >= 1, what="the node to keep the will")
        first.proc.kill()
        first.proc.wait()
        first.stop()
        # The same node, the same data directory, before the others notice it was gone.
        again = HubNode("phoenix", nats_cluster.cluster_arg, tmp_path / "phoenix", **QUICK)
        will = watcher.expect_message(timeout=20)
        assert (will.topic, will.payload) == (f"{base}/lost", b"lost")
        # Published by one of them only (whoever deleted its key first).
        with pytest.raises(queue.Empty):
            watcher.messages.get(timeout=4)  # past node_timeout: the others had their turn
    finally:
        if again is not None:
            again.stop()
