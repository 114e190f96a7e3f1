"""Queued copies that move with their session in a cluster (docs/architecture.md, *Cluster*):
a shared group's QoS 1/2 messages wait in JetStream while no member is connected and go to a
member connected on any node, once per group, also when the node of the last member died; a
member whose connection closes gives back the QoS 1 copies it had not acknowledged, while a
persistent member's QoS 2 deliveries stay its own (MQTT 5 §4.8.2); retained messages sent at
SUBSCRIBE to a persistent session come again on another node until acknowledged.
Three real ``thinghub serve`` nodes on a real 3-server NATS JetStream cluster (replicas 3),
paho-mqtt and raw MQTT clients."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pahoclient
import pytest
import rawmqtt
from hubnodes import QUICK, HubNode, sessions_ready, settle, wait_for
from natscluster import NatsCluster
from pahoclient import unique
from rawmqtt import PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL

MakeClient = Callable[..., pahoclient.Client]
MakeRaw = Callable[..., rawmqtt.RawClient]
SETTINGS = {
    "CLUSTER_STREAM_REPLICAS": "3",
    # Long: a copy a member had not acknowledged when its connection closed comes back at
    # once (the node gives it back), so any wait below shorter than this proves it.
    "CLUSTER_CONSUMER_ACK_WAIT": "60",
    # JetStream reserves a stream's bytes on each server (natscluster.py gives them 1 GB).
    "CLUSTER_STREAM_MAX_BYTES": str(64 * 1024 * 1024),
}
EXPIRY = {"session_expiry_interval": 300}
# A QoS 1 message while no subscriber is connected: accepted, with 0x10 (No matching
# subscribers, MQTT 5 §3.4.2.1) or 0 (it is queued for an offline one).
NO_ONE_ONLINE = (0, 0x10)


@pytest.fixture(scope="module")
def trio(start_node: Callable[..., HubNode]) -> list[HubNode]:
    started = [start_node(name, **SETTINGS) for name in ("g1", "g2", "g3")]
    settle(started)
    for node in started:
        wait_for(lambda n=node: sessions_ready(n), what=f"{node.name}'s session records")
    return started


@pytest.fixture
def victim(nats_cluster: NatsCluster, tmp_path: Path) -> Iterator[HubNode]:
    """A fourth node, which the test kills (so not one of ``start_node``'s, which must exit
    0); stopped by its PID if it is still running."""
    node = HubNode("g4", nats_cluster.cluster_arg, tmp_path / "g4", **QUICK, **SETTINGS)
    try:
        yield node
    finally:
        node.stop()


def _persistent(
    node: HubNode, client_id: str, make: MakeClient, version: int = 5
) -> pahoclient.Client:
    if version == 5:
        return make(node, client_id=client_id, clean=False, session_expiry=300, connect=False)
    return make(node, version=4, client_id=client_id, clean=False, connect=False)


def _group(topic: str) -> str:
    return f"$share/{unique('g')}/{topic}"


def _nothing_more(member: pahoclient.Client, timeout: float = 0.5) -> None:
    with pytest.raises(AssertionError):
        member.expect_message(timeout=timeout)


def _offline_member_gets_its_backlog_on_another_node(
    trio: list[HubNode], client: MakeClient, version: int
) -> None:
    g1, g2, g3 = trio
    topic = unique("backlog")
    client_id = unique("member")
    member = _persistent(g1, client_id, client, version)
    assert member.connect().session_present is False
    assert member.subscribe(_group(topic + "/#"), 1) == 1
    member.disconnect()

    # No member of the group is connected anywhere: the messages wait for one.
    publisher = client(g2)
    sent = [f"m{index}".encode() for index in range(30)]
    for index, payload in enumerate(sent):
        assert publisher.publish(f"{topic}/{index}", payload, 1) in NO_ONE_ONLINE

    resumed = _persistent(g3, client_id, client, version)
    assert resumed.connect().session_present is True
    got = resumed.expect_messages(30, timeout=10)
    assert [m.payload for m in got] == sent
    assert all(m.qos == 1 for m in got)
    _nothing_more(resumed)
    # The member is in place on its new node: a new message comes too, once.
    assert publisher.publish(f"{topic}/after", b"after", 1) == 0
    assert resumed.expect_message().payload == b"after"
    _nothing_more(resumed)


def test_a_shared_groups_messages_wait_for_its_persistent_member_on_another_node(
    trio: list[HubNode], client: MakeClient
) -> None:
    _offline_member_gets_its_backlog_on_another_node(trio, client, version=5)


def test_a_persistent_311_member_of_a_shared_group_gets_its_backlog_on_another_node(
    trio: list[HubNode], client: MakeClient
) -> None:
    _offline_member_gets_its_backlog_on_another_node(trio, client, version=4)


def test_a_shared_groups_messages_survive_the_death_of_its_members_node(
    victim: HubNode, trio: list[HubNode], client: MakeClient
) -> None:
    _g1, g2, g3 = trio
    settle([*trio, victim])
    wait_for(lambda: sessions_ready(victim), what="g4's session records")
    topic = unique("orphan")
    client_id = unique("member")
    member = _persistent(victim, client_id, client)
    assert member.connect().session_present is False
    assert member.subscribe(_group(topic), 1) == 1
    member.disconnect()

    publisher = client(g3)
    sent = [f"k{index}".encode() for index in range(30)]
    for payload in sent[:15]:
        assert publisher.publish(topic, payload, 1) in NO_ONE_ONLINE
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    # Published while the group has no member connected and its member's node is dead.
    for payload in sent[15:]:
        assert publisher.publish(topic, payload, 1) in NO_ONE_ONLINE

    resumed = _persistent(g2, client_id, client)
    assert resumed.connect().session_present is True
    got = resumed.expect_messages(30, timeout=10)
    assert [m.payload for m in got] == sent
    _nothing_more(resumed)


def test_a_new_member_on_another_node_gets_the_backlog_of_an_offline_one(
    trio: list[HubNode], client: MakeClient
) -> None:
    g1, g2, g3 = trio
    topic = unique("newcomer")
    group = _group(topic)
    client_id = unique("member")
    member = _persistent(g1, client_id, client)
    member.connect()
    assert member.subscribe(group, 1) == 1
    member.disconnect()
    publisher = client(g2)
    sent = [f"n{index}".encode() for index in range(10)]
    for payload in sent:
        assert publisher.publish(topic, payload, 1) in NO_ONE_ONLINE

    # A member that joins the group, on a third node, with a clean session: the group's
    # backlog is delivered to it, once; the offline member, back, has none of it.
    newcomer = client(g3)
    assert newcomer.subscribe(group, 1) == 1
    got = newcomer.expect_messages(len(sent), timeout=10)
    assert [m.payload for m in got] == sent
    _nothing_more(newcomer)
    resumed = _persistent(g2, client_id, client)
    assert resumed.connect().session_present is True
    _nothing_more(resumed)


def _drain(
    members: dict[str, pahoclient.Client], count: int, timeout: float
) -> dict[str, list[bytes]]:
    """What each member received, until `count` copies in all (or the time is up)."""
    got: dict[str, list[bytes]] = {name: [] for name in members}
    deadline = time.monotonic() + timeout
    while sum(map(len, got.values())) < count and time.monotonic() < deadline:
        for name, member in members.items():
            while not member.messages.empty():
                got[name].append(member.expect_message().payload)
        time.sleep(0.01)
    return got


def test_two_members_on_two_nodes_get_each_message_once_between_them(
    trio: list[HubNode], client: MakeClient
) -> None:
    g1, g2, g3 = trio
    topic = unique("pair")
    group = _group(topic)
    members = {"g1": client(g1), "g2": client(g2)}
    for member in members.values():
        assert member.subscribe(group, 1) == 1
    settle(trio)
    publisher = client(g3)
    sent = [f"p{index}".encode() for index in range(200)]
    for payload in sent:
        assert publisher.publish(topic, payload, 1) == 0
    got = _drain(members, len(sent), timeout=15)
    assert sorted(p for payloads in got.values() for p in payloads) == sorted(sent)
    for member in members.values():
        _nothing_more(member)


@pytest.mark.parametrize("persistent", [False, True], ids=["clean", "persistent"])
def test_qos1_copies_a_member_did_not_acknowledge_go_to_another_member_when_it_leaves(
    trio: list[HubNode], client: MakeClient, raw: MakeRaw, persistent: bool
) -> None:
    g1, g2, g3 = trio
    topic = unique("handback")
    group = _group(topic)
    # The first member takes the copies and never acknowledges them.
    taker = raw(g1)
    if persistent:
        taker.connect(unique("taker"), clean=False, properties=EXPIRY)
    else:
        taker.connect(unique("taker"))
    assert taker.subscribe(group, 1) == [1]
    settle(trio)
    publisher = client(g3)
    sent = [f"h{index}".encode() for index in range(5)]
    for payload in sent:
        assert publisher.publish(topic, payload, 1) == 0
    taken = [taker.expect(PUBLISH, timeout=10) for _ in sent]
    assert sorted(p.payload for p in taken) == sorted(sent)
    assert all(p.qos == 1 for p in taken)

    # A second member on another node: it gets nothing while the copies are in flight to
    # the first one.
    other = client(g2)
    assert other.subscribe(group, 1) == 1
    settle(trio)
    _nothing_more(other)
    taker.close()
    # Given back when the connection closed, long before the 60 s acknowledgement wait.
    got = other.expect_messages(len(sent), timeout=10)
    assert sorted(m.payload for m in got) == sorted(sent)
    _nothing_more(other)


def _receive_qos2(
    members: dict[str, rawmqtt.RawClient], count: int, timeout: float
) -> dict[str, list[rawmqtt.Packet]]:
    """Complete each member's QoS 2 flows (PUBREC for each PUBLISH, PUBCOMP for each PUBREL)
    until `count` flows are complete in all; returns each member's PUBLISH packets."""
    got: dict[str, list[rawmqtt.Packet]] = {name: [] for name in members}
    completed = 0
    deadline = time.monotonic() + timeout
    while completed < count:
        assert time.monotonic() < deadline, f"{completed} of {count} flows completed: {got}"
        for name, member in members.items():
            try:
                packet = member.recv(timeout=0.05)
            except TimeoutError:
                continue
            assert packet is not None, f"{name}'s connection closed"
            assert packet.mid is not None, packet
            if packet.type == PUBLISH:
                got[name].append(packet)
                member.send(rawmqtt.ack(PUBREC, packet.mid))
            else:
                assert packet.type == PUBREL, packet
                member.send(rawmqtt.ack(PUBCOMP, packet.mid))
                completed += 1
    return got


def test_a_qos2_group_on_two_nodes_delivers_each_message_exactly_once(
    trio: list[HubNode], client: MakeClient, raw: MakeRaw
) -> None:
    g1, g2, g3 = trio
    topic = unique("exactly")
    group = _group(topic)
    members = {"g1": raw(g1), "g2": raw(g2)}
    for member in members.values():
        member.connect(unique("q2"))
        assert member.subscribe(group, 2) == [2]
    settle(trio)
    publisher = client(g3)
    sent = [f"e{index}".encode() for index in range(50)]
    for payload in sent:
        assert publisher.publish(topic, payload, 2) == 0
    got = _receive_qos2(members, len(sent), timeout=15)
    publishes = [p for packets in got.values() for p in packets]
    # Each message reached one member, once: no copy sent again, none to both members.
    assert sorted(p.payload for p in publishes) == sorted(sent)
    assert all(p.qos == 2 and not p.dup for p in publishes), publishes
    for name, member in members.items():
        member.expect_nothing(0.5, f"nothing more for {name}")


def test_a_persistent_qos2_member_that_leaves_completes_its_deliveries_on_another_node(
    trio: list[HubNode], client: MakeClient, raw: MakeRaw
) -> None:
    """MQTT 5 §4.8.2: a QoS 2 delivery to the chosen member is completed when it reconnects
    [MQTT-4.8.2-4] and goes to no other member [MQTT-4.8.2-5], unlike QoS 1 (above)."""
    g1, g2, g3 = trio
    topic = unique("qos2-member")
    group = _group(topic)
    client_id = unique("holder")
    holder = raw(g1)
    holder.connect(client_id, clean=False, properties=EXPIRY)
    assert holder.subscribe(group, 2) == [2]
    settle(trio)
    publisher = client(g3)
    sent = [f"x{index}".encode() for index in range(4)]
    for payload in sent:
        assert publisher.publish(topic, payload, 2) == 0
    first = {p.payload: p.mid or 0 for p in (holder.expect(PUBLISH, timeout=10) for _ in sent)}
    assert sorted(first) == sorted(sent)
    # Two flows released (PUBREC sent, PUBREL received, no PUBCOMP), two only received.
    released = {payload: first[payload] for payload in sent[:2]}
    received = {payload: first[payload] for payload in sent[2:]}
    for mid in released.values():
        holder.send(rawmqtt.ack(PUBREC, mid))
    assert sorted(holder.expect(PUBREL).mid or 0 for _ in released) == sorted(released.values())

    other = raw(g2)
    other.connect(unique("other"))
    assert other.subscribe(group, 2) == [2]
    settle(trio)
    holder.close()
    # The other member gets none of them: bounded wait, as a negative check.
    other.expect_nothing(1, "the holder's QoS 2 messages to go to no other member")

    # The holder, back on another node, completes every flow under its packet id (§4.4):
    # PUBREL for the released ones, the PUBLISH again with DUP for the others.
    back = raw(g3)
    assert back.connect(client_id, clean=False, properties=EXPIRY).session_present
    rels: list[int] = []
    again: dict[bytes, int] = {}
    while len(rels) < len(sent):
        packet = back.recv(timeout=10)
        assert packet is not None and packet.mid is not None, packet
        if packet.type == PUBLISH:
            assert packet.dup and packet.payload in received, packet
            assert packet.payload not in again, f"twice: {packet}"
            again[packet.payload] = packet.mid
            back.send(rawmqtt.ack(PUBREC, packet.mid))
        else:
            assert packet.type == PUBREL, packet
            rels.append(packet.mid)
            back.send(rawmqtt.ack(PUBCOMP, packet.mid))
    assert again == received
    assert sorted(rels) == sorted(first.values())
    for name, member in (("holder", back), ("other", other)):
        member.expect_nothing(0.5, f"nothing more for {name}")


def test_retained_messages_sent_at_subscribe_move_with_the_session_until_acknowledged(
    trio: list[HubNode], client: MakeClient, raw: MakeRaw
) -> None:
    g1, g2, g3 = trio
    base = unique("kept")
    # Published on the subscriber's node: its retained store has them once acknowledged.
    publisher = client(g1)
    for index in range(5):
        reason = publisher.publish(f"{base}/r/{index}", f"r{index}".encode(), 1, retain=True)
        assert reason in NO_ONE_ONLINE
    client_id = unique("ret")

    first = raw(g1)
    assert not first.connect(client_id, clean=False, properties=EXPIRY).session_present
    assert first.subscribe(f"{base}/r/#", 1) == [1]
    sent = [first.expect(PUBLISH, timeout=10) for _ in range(5)]
    assert sorted(p.payload for p in sent) == [f"r{index}".encode() for index in range(5)]
    assert all(p.retain and p.qos == 1 and not p.dup for p in sent), sent
    first.close()  # none acknowledged

    # On another node: the same copies again, with their packet ids (§4.4), RETAIN and DUP.
    second = raw(g2)
    assert second.connect(client_id, clean=False, properties=EXPIRY).session_present
    again = [second.expect(PUBLISH, timeout=10) for _ in range(5)]
    assert all(p.retain and p.qos == 1 and p.dup for p in again), again
    assert {p.payload: p.mid for p in again} == {p.payload: p.mid for p in sent}
    for packet in again:
        second.send(rawmqtt.ack(PUBACK, packet.mid or 0))
    second.disconnect()  # waits until the node has closed: the PUBACKs were read before it

    # Acknowledged: never again, on any node.
    third = raw(g3)
    assert third.connect(client_id, clean=False, properties=EXPIRY).session_present
    third.expect_nothing(2, "nothing again once acknowledged")
    # Its subscription is in place there: a new message comes, not retained.
    assert publisher.publish(f"{base}/r/new", b"new", 1) == 0
    fresh = third.expect(PUBLISH, timeout=10)
    assert (fresh.payload, fresh.retain, fresh.dup) == (b"new", False, False)
    third.send(rawmqtt.ack(PUBACK, fresh.mid or 0))


def _group_consumers(nats: NatsCluster) -> set[str]:
    """The names of the shared groups' consumers on the message stream (cluster/groups.py),
    through the JetStream API."""

    async def names() -> set[str]:
        import nats as natspy

        nc = await natspy.connect(nats.cluster_arg.split(","))
        try:
            infos = await nc.jetstream().consumers_info("thinghub_msgs")
            return {info.name for info in infos if info.name.startswith("g")}
        finally:
            await nc.close()

    return asyncio.run(names())


def test_a_groups_consumer_goes_when_nobody_holds_the_group_and_stays_while_a_session_does(
    trio: list[HubNode],
    start_node: Callable[..., HubNode],
    client: MakeClient,
    nats_cluster: NatsCluster,
) -> None:
    # "c1" sorts before the trio's names: it is the node that trims the stream and removes
    # unused consumers, every half second here.
    c1 = start_node("c1", **SETTINGS, CLUSTER_SESSION_SWEEP_INTERVAL="0.5")
    settle([*trio, c1])
    wait_for(lambda: sessions_ready(c1), what="c1's session records")
    topic = unique("sweep")
    before = _group_consumers(nats_cluster)
    kept_id = unique("kept")
    kept = _persistent(c1, kept_id, client)
    kept.connect()
    assert kept.subscribe(_group(topic), 1) == 1
    kept.disconnect()
    held = _group_consumers(nats_cluster) - before
    assert len(held) == 1, held
    passing = client(c1)
    assert passing.subscribe(_group(topic), 1) == 1
    passing_consumer = _group_consumers(nats_cluster) - before - held
    assert len(passing_consumer) == 1, passing_consumer
    passing.disconnect()
    # Nobody holds the clean member's group any more: its consumer goes (two sweeps on).
    wait_for(
        lambda: not (_group_consumers(nats_cluster) & passing_consumer),
        timeout=15,
        what="the unused group's consumer removed",
    )
    # The offline persistent member's record holds its group: its consumer outlived those
    # sweeps, and the member still gets what was published meanwhile.
    assert held <= _group_consumers(nats_cluster)
    publisher = client(trio[1])
    assert publisher.publish(topic, b"kept", 1) in NO_ONE_ONLINE
    resumed = _persistent(trio[2], kept_id, client)
    assert resumed.connect().session_present is True
    assert resumed.expect_message(timeout=10).payload == b"kept"


def test_a_node_holding_only_a_shared_group_takes_its_qos1_messages_from_the_group_alone(
    trio: list[HubNode], client: MakeClient
) -> None:
    """The group's consumer brings the node its QoS 1 messages; their publication does not
    reach the node as well (only to be routed to nobody): its count of messages received
    from other nodes does not move, while a QoS 0 message, routed by the publishing node's
    plan, does reach it."""
    g1, g2, _g3 = trio
    topic = unique("only-shared")
    member = client(g2)
    assert member.subscribe(_group(topic), 1) == 1
    settle(trio)
    before = g2.messages()["received"]
    publisher = client(g1)
    sent = [f"s{index}".encode() for index in range(20)]
    for payload in sent:
        assert publisher.publish(topic, payload, 1) == 0
    assert [m.payload for m in member.expect_messages(len(sent))] == sent
    assert g2.messages()["received"] == before
    publisher.publish(topic, b"qos0", 0)
    assert member.expect_message().payload == b"qos0"
    assert g2.messages()["received"] == before + 1
