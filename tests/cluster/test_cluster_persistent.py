"""Persistent sessions kept in JetStream resume on any node (thinghub/cluster/consumers.py):
their subscriptions, their queued QoS 1/2 messages and what was in flight, also after their
node was killed; every persistent session gets each QoS 1 message once; a clean session has
no consumer. Three real ``thinghub serve`` nodes on a real 3-server NATS JetStream cluster
(replicas 3), paho-mqtt clients."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pahoclient
import pytest
import rawmqtt
from hubnodes import QUICK, HubNode, sessions_ready, settle, wait_for
from natscluster import NatsCluster
from pahoclient import unique
from rawmqtt import PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL

MakeClient = Callable[..., pahoclient.Client]
SETTINGS = {
    "CLUSTER_STREAM_REPLICAS": "3",
    # Long: a message in flight on a node that hands its session over comes back at once,
    # not after this (the killed node of the test below has a short one).
    "CLUSTER_CONSUMER_ACK_WAIT": "60",
    # JetStream reserves a stream's bytes on each server (natscluster.py gives them 1 GB).
    "CLUSTER_STREAM_MAX_BYTES": str(64 * 1024 * 1024),
}


@pytest.fixture(scope="module")
def trio(start_node: Callable[..., HubNode]) -> list[HubNode]:
    started = [start_node(name, **SETTINGS) for name in ("p1", "p2", "p3")]
    settle(started)
    for node in started:
        wait_for(lambda n=node: sessions_ready(n), what=f"{node.name}'s session records")
    return started


def _persistent(node: HubNode, client_id: str, make: MakeClient) -> pahoclient.Client:
    return make(node, client_id=client_id, clean=False, session_expiry=300, connect=False)


def _consumers(nats: NatsCluster) -> int:
    """How many consumers the message stream has, through the JetStream API."""

    async def count() -> int:
        import nats as natspy

        nc = await natspy.connect(nats.cluster_arg.split(","))
        try:
            info = await nc.jetstream().stream_info("thinghub_msgs")
            return int(info.state.consumer_count)
        finally:
            await nc.close()

    return asyncio.run(count())


def test_a_persistent_session_resumes_on_another_node_with_its_queued_messages(
    trio: list[HubNode], client: MakeClient
) -> None:
    p1, p2, p3 = trio
    topic = unique("persist")
    client_id = unique("sub")
    subscriber = _persistent(p2, client_id, client)
    assert subscriber.connect().session_present is False
    assert subscriber.subscribe(topic + "/#", 1, subscription_id=7) == 1
    subscriber.disconnect()

    publisher = client(p1)
    for index in range(5):
        assert publisher.publish(f"{topic}/{index}", f"m{index}".encode(), 1) in (0, 0x10)

    resumed = _persistent(p3, client_id, client)
    assert resumed.connect().session_present is True
    got = resumed.expect_messages(5)
    assert sorted(m.payload for m in got) == [f"m{i}".encode() for i in range(5)]
    assert all(m.qos == 1 and m.subscription_ids == [7] for m in got)
    # Its subscription is in place on the new node: a new message arrives too, once.
    assert publisher.publish(f"{topic}/after", b"after", 1) == 0
    assert resumed.expect_message().payload == b"after"
    with pytest.raises(AssertionError):
        resumed.expect_message(timeout=0.5)


@pytest.fixture
def victim(nats_cluster: NatsCluster, tmp_path: Path) -> Iterator[HubNode]:
    """A fourth node, which the test kills (so not one of ``start_node``'s, which must exit
    0); stopped by its PID if it is still running."""
    # A message in flight on it when it is killed comes back after its ack wait.
    settings = {**QUICK, **SETTINGS, "CLUSTER_CONSUMER_ACK_WAIT": "2"}
    node = HubNode("p4", nats_cluster.cluster_arg, tmp_path / "p4", **settings)
    try:
        yield node
    finally:
        node.stop()


def test_messages_in_flight_on_a_killed_node_come_back_with_dup_and_the_same_packet_id(
    victim: HubNode, trio: list[HubNode], client: MakeClient, raw: Any, nats_cluster: NatsCluster
) -> None:
    p1, _p2, p3 = trio
    settle([*trio, victim])
    wait_for(lambda: sessions_ready(victim), what="p4's session records")
    topic = unique("inflight")
    client_id = unique("q2")
    expiry = {"session_expiry_interval": 300}
    # A QoS 2 receiver that records packet ids: two flows released (PUBREC sent, PUBREL
    # received, PUBCOMP not sent) and one only received (no PUBREC) when the node dies.
    receiver = raw(victim)
    receiver.connect(client_id, clean=False, properties=expiry)
    assert receiver.subscribe(topic, 2) == [2]
    settle([*trio, victim])
    publisher = client(p1)
    for index in range(3):
        assert publisher.publish(topic, f"x{index}".encode(), 2) == 0
    first: dict[bytes, int] = {}
    for _ in range(3):
        publish = receiver.expect(PUBLISH)
        assert not publish.dup and publish.mid is not None
        first[publish.payload] = publish.mid
    released = {payload: mid for payload, mid in first.items() if payload != b"x2"}
    for mid in released.values():
        receiver.send(rawmqtt.ack(PUBREC, mid))
    assert sorted(receiver.expect(PUBREL).mid for _ in released) == sorted(released.values())
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    # Published while the session is offline, its node dead: acknowledged all the same.
    for index in range(2):
        assert publisher.publish(topic, f"y{index}".encode(), 2) == 0

    # On another node: the released flows go on with PUBREL under their packet ids (§4.4:
    # the server resends PUBREL, never the PUBLISH of a message the receiver may have handed
    # on and forgotten); the one only received comes again with DUP under its packet id, after
    # the killed node's acknowledgement wait; then what was published meanwhile.
    again = raw(p3)
    assert again.connect(client_id, clean=False, properties=expiry).session_present
    released_again: list[int] = []
    redelivered: dict[bytes, int] = {}
    queued: list[bytes] = []
    completed = 0
    while completed < 5:
        packet = again.recv(timeout=30)
        assert packet is not None and packet.mid is not None
        if packet.type == PUBLISH:
            assert packet.payload not in released, f"released, then sent again: {packet}"
            if packet.payload in first:
                assert packet.dup and packet.payload not in redelivered, packet
                redelivered[packet.payload] = packet.mid
            else:
                assert not packet.dup, packet
                queued.append(packet.payload)
            again.send(rawmqtt.ack(PUBREC, packet.mid))
        else:
            assert packet.type == PUBREL, packet
            if packet.mid in released.values() and packet.mid not in released_again:
                released_again.append(packet.mid)
            completed += 1
            again.send(rawmqtt.ack(PUBCOMP, packet.mid))
    assert sorted(released_again) == sorted(released.values())
    assert redelivered == {b"x2": first[b"x2"]}
    assert sorted(queued) == [b"y0", b"y1"]
    # The stream's redeliveries of the released ones come to p3 too: acknowledged there, not
    # sent. Once JetStream holds nothing unacknowledged, nothing more has come.
    wait_for(lambda: _unacknowledged(nats_cluster) == 0, timeout=30, what="every copy acked")
    with pytest.raises(TimeoutError):
        again.recv(timeout=0.5)


def test_a_qos1_publish_for_a_session_whose_node_died_is_accepted_as_matched(
    victim: HubNode, trio: list[HubNode], client: MakeClient
) -> None:
    """Once no live node announces its filter, a persistent session whose node died still
    waits for its QoS 1 messages in the stream: an MQTT 5 publisher is told Success, not 0x10
    No matching subscribers (§3.4.2.1; cluster/recordfilters.py), and the session gets the
    message when it resumes. A topic no session takes is still 0x10."""
    p1, _p2, p3 = trio
    settle([*trio, victim])
    wait_for(lambda: sessions_ready(victim), what="p4's session records")
    topic = unique("orphan")
    client_id = unique("orphan-sub")
    subscriber = _persistent(victim, client_id, client)
    subscriber.connect()
    assert subscriber.subscribe(topic, 1) == 1
    settle([*trio, victim])
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    wait_for(
        lambda: "p4" not in p1.status()["interest"]["nodes"],
        timeout=30,
        what="p1 to drop the dead node's interest",
    )
    publisher = client(p1)
    assert publisher.publish(topic, b"kept for it", 1) == 0
    assert publisher.publish(unique("nobody"), b"for no one", 1) == 0x10

    resumed = _persistent(p3, client_id, client)
    assert resumed.connect().session_present is True
    assert resumed.expect_message(timeout=30).payload == b"kept for it"


def _unacknowledged(nats: NatsCluster) -> int:
    """Messages the stream's consumers have pending or delivered and not acknowledged."""

    async def count() -> int:
        import nats as natspy

        nc = await natspy.connect(nats.cluster_arg.split(","))
        try:
            total = 0
            for consumer in await nc.jetstream().consumers_info("thinghub_msgs"):
                total += consumer.num_pending + consumer.num_ack_pending
            return total
        finally:
            await nc.close()

    return asyncio.run(count())


def test_a_live_takeover_gives_back_what_was_in_flight_at_once(
    trio: list[HubNode], client: MakeClient, raw: Any
) -> None:
    p1, p2, p3 = trio
    topic = unique("handover")
    client_id = unique("mover")
    expiry = {"session_expiry_interval": 300}
    before = raw(p2)
    before.connect(client_id, clean=False, properties=expiry)
    assert before.subscribe(topic, 1) == [1]
    settle(trio)
    publisher = client(p1)
    for index in range(2):
        assert publisher.publish(topic, f"h{index}".encode(), 1) == 0
    first = {}
    for _ in range(2):
        publish = before.expect(PUBLISH)  # never acknowledged on p2
        first[publish.payload] = publish.mid
    # The client comes to p3 while p2 still holds it: p2, told of the takeover, gives back
    # what it had in flight, which p3 delivers well before the 60 s ack wait.
    after = raw(p3)
    assert after.connect(client_id, clean=False, properties=expiry).session_present
    again = {}
    for _ in range(2):
        publish = after.expect(PUBLISH, timeout=15)
        assert publish.dup, publish
        again[publish.payload] = publish.mid
        after.send(rawmqtt.ack(PUBACK, publish.mid or 0))
    assert again == first


def test_each_persistent_session_gets_each_qos1_message_once_and_qos0_once(
    trio: list[HubNode], client: MakeClient
) -> None:
    p1, p2, _p3 = trio
    topic = unique("once")
    here = _persistent(p1, unique("here"), client)
    here.connect()
    here.subscribe(topic, 1)
    there = _persistent(p2, unique("there"), client)
    there.connect()
    there.subscribe(topic, 1)
    settle(trio)
    publisher = client(p1)
    for index in range(3):
        assert publisher.publish(topic, f"q{index}".encode(), 1) == 0
    publisher.publish(topic, b"zero", 0)
    for receiver in (here, there):
        got = receiver.expect_messages(4)
        assert sorted(m.payload for m in got) == [b"q0", b"q1", b"q2", b"zero"]
        with pytest.raises(AssertionError):
            receiver.expect_message(timeout=0.5)


def test_a_clean_session_has_no_consumer(
    nats_cluster: NatsCluster, trio: list[HubNode], client: MakeClient
) -> None:
    p1, p2, _p3 = trio
    before = _consumers(nats_cluster)
    topic = unique("clean")
    subscriber = client(p2)
    subscriber.subscribe(topic, 1)
    settle(trio)
    assert client(p1).publish(topic, b"hello", 1) == 0
    assert subscriber.expect_message().payload == b"hello"
    assert _consumers(nats_cluster) == before
    # A persistent one has one, removed when the session ends.
    persistent = _persistent(p2, unique("p"), client)
    persistent.connect()
    persistent.subscribe(topic, 1)
    assert _consumers(nats_cluster) == before + 1
    persistent.disconnect(SessionExpiryInterval=0)
    wait_for(lambda: _consumers(nats_cluster) == before, what="its consumer to go")
