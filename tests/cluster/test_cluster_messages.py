"""Messages cross nodes with MQTT's semantics intact: three real ThingHub nodes on a real
3-server NATS cluster, real MQTT clients (paho, mosquitto_sub) on different nodes.

Every test subscribes first, then waits until every node knows every other node's filters
(``settle``), then publishes: from then on a message must reach every matching subscription
in the cluster. Sentinels, not sleeps, prove that something did not arrive."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

import nats
import pahoclient
import pytest
from hubnodes import HubNode, settle
from pahoclient import unique

from thinghub.cluster.envelope import pack
from thinghub.cluster.subjects import Subjects
from thinghub.message import Message

ROOT_ACCOUNT = "root"  # anonymous clients join the root account, the same on every node
MakeClient = Callable[..., pahoclient.Client]


def test_qos_is_the_lower_of_the_publication_and_the_subscription(
    nodes: list[HubNode], client: MakeClient
) -> None:
    n1, n2, n3 = nodes
    topic = unique("qos")
    two = client(n2)
    assert two.subscribe(topic, 2) == 2
    one = client(n3, version=4)
    assert one.subscribe(topic, 1) == 1
    settle(nodes)
    publisher = client(n1)
    for qos in (0, 1, 2):
        # Success, not 0x10 No matching subscribers: the subscribers are on other nodes.
        assert publisher.publish(topic, f"q{qos}".encode(), qos) == 0
    assert [(m.payload, m.qos) for m in two.expect_messages(3)] == [
        (b"q0", 0), (b"q1", 1), (b"q2", 2)
    ]  # fmt: skip
    assert [(m.payload, m.qos) for m in one.expect_messages(3)] == [
        (b"q0", 0), (b"q1", 1), (b"q2", 1)
    ]  # fmt: skip


def test_order_per_publisher_and_topic_and_no_duplicates(
    nodes: list[HubNode], client: MakeClient
) -> None:
    """Overlapping filters on the receiving node (NATS sees three subscriptions of that
    node match) still give one copy per message, in the order published."""
    n1, n2, n3 = nodes
    base = unique("order")
    topic = f"{base}/a/x"
    overlapping = client(n2)
    for topic_filter in (f"{base}/+/x", f"{base}/#", topic):
        overlapping.subscribe(topic_filter, 1)
    single = client(n3)
    single.subscribe(topic, 2)
    settle(nodes)
    publisher = client(n1)
    # MQTT orders a publisher's messages per topic and QoS (§4.6); paho sends QoS 0 at once
    # and queues QoS 1/2 behind its inflight window, so each QoS is checked on its own.
    for qos in (1, 0, 2):
        sent = [f"q{qos}-{i:04d}".encode() for i in range(200)]
        for payload in sent:
            publisher.publish(topic, payload, qos=qos, wait=False)
        publisher.publish(topic, f"end{qos}".encode(), qos)
        for subscriber in (overlapping, single):
            got = subscriber.until(f"end{qos}".encode(), timeout=20)
            assert [m.payload for m in got] == sent


def test_no_local_keeps_a_clients_own_messages_from_it_and_not_from_other_nodes(
    nodes: list[HubNode], client: MakeClient
) -> None:
    n1, n2, _n3 = nodes
    topic = unique("nolocal")
    publisher = client(n1)
    publisher.subscribe(topic, 1, no_local=True)
    other = client(n2)
    other.subscribe(topic, 1, no_local=True)
    settle(nodes)
    publisher.publish(topic, b"from n1", 1)
    assert other.expect_message().payload == b"from n1"
    other.publish(topic, b"from n2", 1)
    # The first message the publisher sees is the other node's: not its own.
    assert publisher.expect_message().payload == b"from n2"
    assert publisher.messages.empty() and other.messages.empty()


def test_retain_as_published_and_retained_messages_on_every_node(
    nodes: list[HubNode], client: MakeClient
) -> None:
    n1, n2, n3 = nodes
    base = unique("rap")
    as_published = client(n2)
    as_published.subscribe(f"{base}/#", 1, retain_as_published=True)
    cleared = client(n3)
    cleared.subscribe(f"{base}/#", 1)
    settle(nodes)
    publisher = client(n1)
    publisher.publish(f"{base}/state", b"on", 1, retain=True)
    assert (as_published.expect_message().retain, cleared.expect_message().retain) == (True, False)
    # Every node keeps the retained messages: a new subscriber on any node gets it.
    for node in (n2, n3):
        late = client(node)
        late.subscribe(f"{base}/state", 1)
        got = late.expect_message()
        assert (got.payload, got.retain) == (b"on", True)
    # Deleted on one node, gone on all (a new subscription gets only the sentinel).
    publisher.publish(f"{base}/state", b"", 1, retain=True)
    assert as_published.expect_message().payload == b""
    assert cleared.expect_message().payload == b""
    again = client(n3)
    again.subscribe(f"{base}/#", 1)
    settle(nodes)
    publisher.publish(f"{base}/sentinel", b"sentinel", 1)
    assert again.expect_message().payload == b"sentinel"


def test_subscription_identifiers_are_the_receiving_sessions_own(
    nodes: list[HubNode], client: MakeClient
) -> None:
    n1, n2, n3 = nodes
    base = unique("sid")
    both = client(n2)
    both.subscribe(f"{base}/+", 1, subscription_id=7)
    both.subscribe(f"{base}/#", 1, subscription_id=9)
    one = client(n3)
    one.subscribe(f"{base}/a", 1, subscription_id=3)
    settle(nodes)
    client(n1).publish(f"{base}/a", b"x", 1)
    assert both.expect_message().subscription_ids == [7, 9]
    assert one.expect_message().subscription_ids == [3]


def test_mqtt5_properties_cross_unchanged_and_the_expiry_is_counted(
    nodes: list[HubNode], client: MakeClient
) -> None:
    n1, n2, _n3 = nodes
    topic = unique("props")
    subscriber = client(n2)
    subscriber.subscribe(topic, 1)
    settle(nodes)
    users = [("k", "v1"), ("k", "v2"), ("ü", "é/+#"), ("", "")]
    client(n1).publish(
        topic,
        "héllo".encode(),
        1,
        ContentType="text/plain; charset=utf-8",
        CorrelationData=b"\x00\x01corr",
        ResponseTopic=f"{topic}/reply",
        PayloadFormatIndicator=1,
        UserProperty=users,
        MessageExpiryInterval=100,
    )
    got = subscriber.expect_message()
    props = got.properties
    assert got.payload == "héllo".encode()
    assert props["ContentType"] == "text/plain; charset=utf-8"
    assert bytes.fromhex(props["CorrelationData"]) == b"\x00\x01corr"
    assert props["ResponseTopic"] == f"{topic}/reply"
    assert props["PayloadFormatIndicator"] == 1
    assert got.user_properties == users
    assert 98 <= props["MessageExpiryInterval"] <= 100


def test_a_message_that_expired_on_the_way_is_not_delivered(
    nats_cluster: Any, nodes: list[HubNode], client: MakeClient
) -> None:
    """A node of the test's own (a real NATS client) sends n2 one message whose expiry passed
    on the way, then a fresh one: the subscriber on n2 sees only the fresh one, and n2 counts
    the expired one."""
    _n1, n2, _n3 = nodes
    topic = unique("expiry")
    subscriber = client(n2)
    subscriber.subscribe(topic, 1)
    settle(nodes)
    expired_before = n2.messages()["expired"]
    subject = Subjects("thinghub").message(ROOT_ACCOUNT, topic)

    def envelope(payload: bytes, expires_in: float) -> bytes:
        message = Message(topic=topic, payload=payload, qos=1, account=ROOT_ACCOUNT,
                          expiry_interval=10)  # fmt: skip
        message.expires_at = 1000.0 + expires_in
        return pack(message, "test-node", time.time(), 1000.0)

    async def send() -> None:
        nc = await nats.connect(servers=nats_urls)
        try:
            await nc.publish(subject, envelope(b"stale", -1.0))
            await nc.publish(subject, envelope(b"fresh", 60.0))
            await nc.flush()
        finally:
            await nc.close()

    nats_urls = nats_cluster.urls
    asyncio.run(send())
    got = subscriber.expect_message()
    assert got.payload == b"fresh"
    assert 58 <= got.properties["MessageExpiryInterval"] <= 60
    assert n2.messages()["expired"] == expired_before + 1


def test_a_message_leaves_its_node_only_for_nodes_with_a_matching_subscription(
    nodes: list[HubNode], client: MakeClient
) -> None:
    n1, n2, n3 = nodes
    topic = unique("interest")
    local = client(n1)
    local.subscribe(topic, 1)
    settle(nodes)
    before = {node.name: node.messages() for node in nodes}
    publisher = client(n1)
    publisher.publish(topic, b"stays", 1)
    assert local.expect_message().payload == b"stays"
    after = {node.name: node.messages() for node in nodes}
    assert after["n1"]["kept_local"] == before["n1"]["kept_local"] + 1
    assert after["n1"]["forwarded"] == before["n1"]["forwarded"]
    for name in ("n2", "n3"):
        assert after[name]["received"] == before[name]["received"]

    # A subscriber on n3: forwarded, and NATS carries it to n3 only.
    remote = client(n3)
    remote.subscribe(topic, 1)
    settle(nodes)
    publisher.publish(topic, b"travels", 1)
    assert remote.expect_message().payload == b"travels"
    assert local.expect_message().payload == b"travels"
    final = {node.name: node.messages() for node in nodes}
    assert final["n1"]["forwarded"] == after["n1"]["forwarded"] + 1
    assert final["n1"]["kept_local"] == after["n1"]["kept_local"]
    assert final["n3"]["received"] == after["n3"]["received"] + 1
    assert final["n2"]["received"] == after["n2"]["received"]

    # Unsubscribed: kept local again.
    remote.unsubscribe(topic)
    settle(nodes)
    publisher.publish(topic, b"stays again", 1)
    assert local.expect_message().payload == b"stays again"
    assert n1.messages()["kept_local"] == final["n1"]["kept_local"] + 1
    assert n1.messages()["forwarded"] == final["n1"]["forwarded"]
    assert n2.messages()["received"] == final["n2"]["received"]


def test_a_shared_group_gets_one_copy_per_message_in_the_whole_cluster(
    nodes: list[HubNode], client: MakeClient
) -> None:
    """Members of one group on all three nodes (two on n2): every message published, on
    any node, reaches exactly one member, and every node's members get their turn."""
    n1, n2, n3 = nodes
    topic = unique("shared")
    group = f"$share/{unique('g')}/{topic}"
    members = {
        "n1": client(n1),
        "n2a": client(n2),
        "n2b": client(n2),
        "n3": client(n3),
    }
    for member in members.values():
        member.subscribe(group, 1)
    watcher = client(n3)  # an ordinary subscription beside the group gets everything
    watcher.subscribe(topic, 1)
    settle(nodes)
    sent = []
    for publisher_node in (n1, n2, n3):
        publisher = client(publisher_node)
        for index in range(30):
            payload = f"{publisher_node.name}-{index}".encode()
            sent.append(payload)
            publisher.publish(topic, payload, 1)
    publisher.publish(topic, b"end", 1)
    assert [m.payload for m in watcher.until(b"end")] == sent
    # As many copies as messages (the 91st is "end"): a duplicate would push one out.
    got: dict[str, list[bytes]] = {name: [] for name in members}
    deadline = time.monotonic() + 10
    while sum(map(len, got.values())) < len(sent) + 1 and time.monotonic() < deadline:
        for name, member in members.items():
            while not member.messages.empty():
                got[name].append(member.expect_message().payload)
        time.sleep(0.01)
    assert sorted(p for payloads in got.values() for p in payloads) == sorted([*sent, b"end"])
    per_node = {
        node.name: sum(len(v) for k, v in got.items() if k[:2] == node.name) for node in nodes
    }
    assert all(count >= 15 for count in per_node.values()), per_node


def test_a_will_reaches_subscribers_on_other_nodes(
    nodes: list[HubNode], client: MakeClient
) -> None:
    n1, n2, _n3 = nodes
    topic = unique("will")
    subscriber = client(n2)
    subscriber.subscribe(topic, 1)
    settle(nodes)
    dying = client(n1, will=(topic, b"gone", 1, False))
    dying.drop()
    assert subscriber.expect_message().payload == b"gone"


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="mosquitto-clients missing")
def test_mosquitto_sub_on_one_node_gets_a_message_published_on_another(
    nodes: list[HubNode], client: MakeClient
) -> None:
    n1, _n2, n3 = nodes
    topic = unique("mosq")
    # Line-buffered (stdbuf): its debug lines say when it has subscribed.
    with subprocess.Popen(
        ["stdbuf", "-oL", "mosquitto_sub", "-h", n3.host, "-p", str(n3.port), "-V", "mqttv5",
         "-q", "1", "-t", topic, "-C", "1", "-W", "20", "-v", "-d"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as sub:  # fmt: skip
        try:
            assert sub.stdout is not None
            for line in sub.stdout:  # -d: the client's own log, up to its SUBACK
                if "SUBACK" in line:
                    break
            settle(nodes)
            client(n1).publish(topic, b"to mosquitto", 1)
            lines = sub.stdout.read().splitlines()
            assert sub.wait(20) == 0, lines
            assert f"{topic} to mosquitto" in lines
        finally:
            if sub.poll() is None:
                sub.kill()


def test_a_node_reports_its_view_of_the_cluster(nodes: list[HubNode]) -> None:
    status = nodes[0].status()
    assert status["node"] == "n1" and status["nats"]["connected"]
    assert set(status["interest"]["nodes"]) == {"n2", "n3"}
    assert status["owners"]["ready"]
    health = nodes[0].get_json("/healthz")
    assert health["status"] == "ok", health
