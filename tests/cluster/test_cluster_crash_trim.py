"""The message stream keeps a QoS 1/2 message while a persistent session's consumer may still
need it, and no longer (thinghub/cluster/stream.py ``_trim``, which replaces JetStream's
interest retention: test_cluster_crash.py caught nats-server 2.9 dropping, under it, messages
one session had not had yet). A real ``thinghub serve`` node on a real 3-server NATS JetStream
cluster (replicas 3), paho-mqtt clients."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pahoclient
from hubnodes import HubNode, settle, wait_for
from natscluster import NatsCluster
from pahoclient import unique

MakeClient = Callable[..., pahoclient.Client]
SETTINGS = {
    "CLUSTER_STREAM_REPLICAS": "3",
    "CLUSTER_STREAM_MAX_BYTES": str(64 * 1024 * 1024),
    # Purged a second after the consumers are done with it, not ten (its default).
    "CLUSTER_STREAM_TRIM_DELAY": "1",
}


def _stored(nats: NatsCluster) -> int:
    """How many messages the message stream holds, through the JetStream API."""

    async def count() -> int:
        import nats as natspy

        nc = await natspy.connect(nats.cluster_arg.split(","))
        try:
            info = await nc.jetstream().stream_info("thinghub_msgs")
            return int(info.state.messages)
        finally:
            await nc.close()

    return asyncio.run(count())


def _trims(node: HubNode) -> int:
    return int(node.status()["stream"]["trims"])


def test_the_stream_keeps_what_an_offline_session_needs_and_trims_the_rest(
    nats_cluster: NatsCluster, start_node: Callable[..., HubNode], client: MakeClient
) -> None:
    node = start_node("t1", **SETTINGS)
    settle([node])
    wait_for(
        lambda: node.status()["stream"]["ready"] and node.status()["persistent_sessions"]["ready"],
        what="t1's stream and session records",
    )
    publisher = client(node)
    # Nobody keeps these (0x10 No matching subscribers: stored all the same): gone at the next
    # trims.
    for index in range(3):
        assert publisher.publish(unique("nobody"), f"n{index}".encode(), 1) in (0, 0x10)
    wait_for(lambda: _stored(nats_cluster) == 0, what="the stream to be trimmed")

    # An offline persistent session's messages stay, however many trims pass.
    topic = unique("kept")
    client_id = unique("offline")
    offline = client(node, client_id=client_id, clean=False, session_expiry=300)
    assert offline.subscribe(topic, 1) == 1
    offline.disconnect()
    for index in range(5):
        assert publisher.publish(topic, f"k{index}".encode(), 1) == 0
    before = _trims(node)
    wait_for(lambda: _trims(node) >= before + 2, what="two trims")
    assert _stored(nats_cluster) >= 5
    back = client(node, client_id=client_id, clean=False, session_expiry=300, connect=False)
    assert back.connect().session_present
    assert sorted(m.payload for m in back.expect_messages(5)) == [
        f"k{i}".encode() for i in range(5)
    ]
    # Acknowledged by its receiver: trimmed too.
    wait_for(lambda: _stored(nats_cluster) == 0, what="the stream to be trimmed again")
    assert node.status()["stream"]["trimmed"] >= 8
