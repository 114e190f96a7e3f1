"""QoS 0 messages cross between nodes in batches (cluster/bus.py ``send_batched``,
cluster/envelope.py ``pack_batch``): the messages for one subject sent in one event-loop turn
go as one NATS message, in order (MQTT orders per topic, §4.6: one topic's batch may overtake
another's), and nothing queued after them overtakes them; the receiving
node routes every message of a batch in order, and refuses a corrupt batch whole (counted,
nothing delivered) without losing the next one.

Real nats-server processes, real ThingHub nodes, real MQTT clients; the pure batch layout is
checked property-based."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import nats
import pytest
import rawmqtt
from hubnodes import HubNode, settle, wait_for
from hypothesis import given
from hypothesis import strategies as st
from natscluster import NatsCluster
from pahoclient import Client, unique

from thinghub.cluster.bus import Bus
from thinghub.cluster.envelope import (
    EnvelopeError,
    is_batch,
    pack,
    pack_batch,
    split_batch,
    unpack,
)
from thinghub.cluster.settings import ClusterSettings
from thinghub.cluster.subjects import Subjects
from thinghub.health import Health
from thinghub.message import Message

ROOT_ACCOUNT = "root"  # anonymous clients join the root account, the same on every node
PREFIX = ClusterSettings().subject_prefix  # the nodes' (tests/cluster/conftest.py)
MakeClient = Callable[..., Client]


# ---------------------------------------------------------------------- the layout (pure)


@given(st.lists(st.binary(max_size=200), min_size=1, max_size=50))
def test_a_batch_gives_back_its_envelopes_in_order(envelopes: list[bytes]) -> None:
    data = pack_batch(envelopes)
    assert is_batch(data)
    assert split_batch(data) == envelopes


def test_an_envelope_is_never_read_as_a_batch() -> None:
    message = Message(topic="a/b", payload=b"x", account="acc", origin="c1")
    data = pack(message, "n1", time.time(), time.monotonic())
    assert not is_batch(data)
    assert unpack(data, time.time(), time.monotonic()).message.topic == "a/b"


@pytest.mark.parametrize(
    "data",
    [
        pack_batch([b"abc", b"de"])[:-1],  # cut short
        pack_batch([b"abc"]) + b"!",  # bytes after the last envelope
        bytes([0xB1]) + (5).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"a",  # count lies
        bytes([0xB1, 0, 0]),  # no count
        b"\x01" + pack_batch([b"abc"])[1:],  # not a batch at all
    ],
)
def test_a_corrupt_batch_is_refused_whole(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        split_batch(data)


# ---------------------------------------------------------------------- the bus


def test_one_turns_messages_for_a_subject_go_as_one_nats_message_in_order(
    nats_cluster: NatsCluster,
) -> None:
    async def run() -> list[tuple[str, bytes]]:
        url = nats_cluster.urls[0]
        watcher = await nats.connect(servers=[url])
        got: list[tuple[str, bytes]] = []
        done = asyncio.Event()

        async def seen(msg: nats.aio.msg.Msg) -> None:
            got.append((msg.subject, msg.data))
            if msg.data == b"last":
                done.set()

        await watcher.subscribe("bt.>", cb=seen)
        await watcher.flush()  # the server holds the subscription before anything is sent
        bus = Bus(ClusterSettings(nats_urls=(url,)), "batch-test", Health())
        assert await bus.start()
        # One loop turn: 100 for bt.a and 50 for bt.b interleaved, then a plain send.
        for i in range(150):
            if i % 3 == 2:
                assert bus.send_batched("bt.b", f"b{i:03d}".encode())
            else:
                assert bus.send_batched("bt.a", f"a{i:03d}".encode())
        assert bus.send("bt.c", b"after")
        await asyncio.sleep(0)  # a later turn: a batch of its own
        assert bus.send_batched("bt.a", b"last")
        await asyncio.wait_for(done.wait(), 10)
        await bus.close()
        await watcher.close()
        return got

    got = asyncio.run(run())
    assert [subject for subject, _data in got] == ["bt.a", "bt.b", "bt.c", "bt.a"]
    first_a, first_b = split_batch(got[0][1]), split_batch(got[1][1])
    assert first_a == [f"a{i:03d}".encode() for i in range(150) if i % 3 != 2]
    assert first_b == [f"b{i:03d}".encode() for i in range(150) if i % 3 == 2]
    # A batch of one goes as the message itself.
    assert got[2][1] == b"after" and got[3][1] == b"last"


# ---------------------------------------------------------------------- across nodes


def test_a_burst_crosses_in_batches_in_order_per_topic(
    nodes: list[HubNode], client: MakeClient
) -> None:
    n1, n2, _n3 = nodes
    base = unique("batch")
    topics = [f"{base}/a", f"{base}/b"]
    subscriber = client(n2)
    subscriber.subscribe(f"{base}/+", 0)
    settle(nodes)
    before = n1.status()["nats"]["sent"]
    forwarded_before = n1.messages()["forwarded"]
    count = 1000
    with n1.raw() as publisher:
        publisher.connect(unique("burst"))  # MQTT 5, anonymous
        # One write: the publishing node reads them in a few loop turns.
        publisher.send(
            b"".join(rawmqtt.publish(topics[i % 2], f"{i:05d}".encode()) for i in range(count))
        )
        for topic in topics:
            publisher.send(rawmqtt.publish(topic, b"end"))
        # MQTT orders per topic (§4.6): each topic's messages come before its own "end"; one
        # topic's batch may overtake another's.
        got = []
        while sum(m.payload == b"end" for m in got) < len(topics):
            got.append(subscriber.expect_message(20))
    per_topic = {
        topic: [m.payload for m in got if m.topic == topic and m.payload != b"end"]
        for topic in topics
    }
    for index, topic in enumerate(topics):
        assert per_topic[topic] == [f"{i:05d}".encode() for i in range(index, count, 2)]
    forwarded = n1.messages()["forwarded"] - forwarded_before
    sent = n1.status()["nats"]["sent"] - before
    assert forwarded == count + len(topics)
    # Far fewer NATS messages than MQTT messages: they went in batches.
    assert sent < forwarded / 4, (sent, forwarded)


def test_a_corrupt_batch_is_counted_and_the_next_message_crosses(
    nodes: list[HubNode], client: MakeClient, nats_cluster: NatsCluster
) -> None:
    n1, n2, _n3 = nodes
    topic = unique("corrupt")
    subscriber = client(n2)
    subscriber.subscribe(topic, 0)
    settle(nodes)
    unreadable = n2.messages()["unreadable"]
    subject = Subjects(PREFIX).message(ROOT_ACCOUNT, topic)
    good = pack(Message(topic=topic, payload=b"inside", account=ROOT_ACCOUNT), "other", 0, 0)

    async def inject() -> None:
        conn = await nats.connect(servers=list(nats_cluster.urls))
        await conn.publish(subject, pack_batch([good, good])[:-3])
        await conn.flush()
        await conn.close()

    asyncio.run(inject())
    wait_for(lambda: n2.messages()["unreadable"] == unreadable + 1, what="counted unreadable")
    publisher = client(n1)
    publisher.publish(topic, b"next", 0)
    assert [m.payload for m in subscriber.until(b"next")] == []
