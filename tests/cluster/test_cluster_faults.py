"""What a node does while NATS is out of reach, and after: a QoS 1/2 message other nodes
must get is refused (MQTT 5 PUBACK 0x97) before anything is delivered, a QoS 0 one is
dropped and counted, ``/healthz`` says degraded; once NATS is back the node reconnects,
resynchronises its interest and messages cross again, by themselves. Its own NATS server
(one, stopped and started again by PID) so that the other modules' cluster is not touched."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pahoclient
import pytest
from hubnodes import HubNode, settle, wait_for
from natscluster import NatsCluster, available
from pahoclient import unique

MakeClient = Callable[..., pahoclient.Client]
QUOTA_EXCEEDED = 0x97


@pytest.fixture(scope="module")
def lone_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    if not available():
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    cluster = NatsCluster(tmp_path_factory.mktemp("lone-nats"), size=1)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def pair(
    lone_nats: NatsCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[HubNode]]:
    settings = {
        "CLUSTER_HEARTBEAT_INTERVAL": "0.25",
        "CLUSTER_NODE_TIMEOUT": "30",  # the other node stays known through the outage
        "CLUSTER_RECONNECT_WAIT": "0.2",
    }
    nodes: list[HubNode] = []
    try:
        for name in ("f1", "f2"):
            directory: Path = tmp_path_factory.mktemp(f"hub-{name}")
            nodes.append(HubNode(name, lone_nats.cluster_arg, directory, **settings))
        settle(nodes)
        yield nodes
    finally:
        codes = [(node.name, node.stop()) for node in nodes]
        assert all(code == 0 for _name, code in codes), codes


def test_while_nats_is_away_qos1_is_refused_and_afterwards_messages_cross_again(
    lone_nats: NatsCluster, pair: list[HubNode], client: MakeClient
) -> None:
    f1, f2 = pair
    topic = unique("fault")
    remote = client(f2)
    remote.subscribe(topic, 1)
    local = client(f1)
    local.subscribe(topic, 1)
    settle(pair)
    publisher = client(f1)
    server = lone_nats.servers[0]
    server.stop()
    wait_for(lambda: not f1.status()["nats"]["connected"], what="f1 to see NATS gone")
    health = f1.get_json("/healthz")
    assert health["status"] == "degraded" and "cluster" in health["degraded"], health
    before = f1.messages()["not_forwarded"]
    assert publisher.publish(topic, b"refused", 1) == QUOTA_EXCEEDED
    publisher.publish(topic, b"qos0 while away", 0)
    wait_for(lambda: f1.messages()["not_forwarded"] == before + 2, what="both counted")

    server.start([])
    lone_nats.wait_ready()
    wait_for(lambda: f1.status()["nats"]["connected"], what="f1 to reconnect")
    wait_for(lambda: f2.status()["nats"]["connected"], what="f2 to reconnect")
    settle(pair)
    assert f1.get_json("/healthz")["status"] == "ok"
    assert publisher.publish(topic, b"back", 1) == 0
    # The refused message was delivered nowhere, not even on its own node; the QoS 0 one
    # reached the local subscriber only.
    assert [m.payload for m in local.expect_messages(2)] == [b"qos0 while away", b"back"]
    assert remote.expect_message().payload == b"back"
