"""A message's delivery trace covers the whole cluster: ``GET /thinghub/trace/{MessageId}`` on
any node asks every other live node for its part (cluster/rpc.py, op "trace") and answers one
document (trace/report.py, ``merge``). Three real ``thinghub serve --cluster`` nodes with
tracing on, on the real NATS cluster of conftest.py; paho-mqtt subscribers on each; Alibaba
``Pub`` (which answers the MessageId) on n1; traces read signed over HTTP as ``thinghub
trace`` reads them (thinghub/trace/client.py), and by ``thinghub trace`` itself.

A node that cannot answer (stopped with SIGSTOP: connected to NATS, silent; then with SIGTERM:
gone, after the message was published) is named in ``nodes`` as not answered, and the answer
still comes within ``cluster.request_timeout``. A key of another account gets 404 from every
node."""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import natscluster
import pahoclient
import pytest
from aliyunsdkcore.client import AcsClient
from aliyunsdkiot.request.v20180120.PubRequest import PubRequest
from click.testing import CliRunner
from hubnodes import KEY_ID, SECRET, TIMEOUT, HubNode, settle, wait_for
from pahoclient import unique

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "console"))
from consolehub import Browserless

from thinghub.cli import main as cli_main
from thinghub.trace.client import TraceError, get_json

MakeClient = Callable[..., pahoclient.Client]

#: cluster.request_timeout's default: how long the answering node waits for the others.
REQUEST_TIMEOUT = 5.0
SETTINGS = {
    "TRACE_ENABLED": "true",
    "CLUSTER_HEARTBEAT_INTERVAL": "0.25",
    # A node stopped by the last test stays a member (cluster/interest.py forgets a node not
    # heard of for this long) while the test asks the others.
    "CLUSTER_NODE_TIMEOUT": "30",
}


@pytest.fixture(scope="module")
def trio(
    nats_cluster: natscluster.NatsCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[HubNode]]:
    """n1, n2, n3 with tracing on (conftest.py's nodes have it off, and a node timeout of 3 s)."""
    started: list[HubNode] = []
    try:
        for name in ("n1", "n2", "n3"):
            directory = tmp_path_factory.mktemp(f"trace-{name}")
            started.append(HubNode(name, nats_cluster.cluster_arg, directory, **SETTINGS))
        settle(started)
        yield started
    finally:
        codes = [(node.name, node.stop()) for node in started]
        assert all(code == 0 for _name, code in codes), codes


@pytest.fixture
def fourth(nats_cluster: natscluster.NatsCluster, tmp_path: Path) -> Iterator[HubNode]:
    """n4, which the test stops; whatever it did to it, it is let go on and stopped by PID."""
    node = HubNode("n4", nats_cluster.cluster_arg, tmp_path, **SETTINGS)
    try:
        yield node
    finally:
        if node.proc.poll() is None:
            os.kill(node.proc.pid, signal.SIGCONT)
        node.stop()


def url(node: HubNode) -> str:
    return f"http://{node.host}:{node.http_port}"


def broadcast_topic(node: HubNode, name: str) -> str:
    """A topic ``Pub`` on ``node`` may publish to: ``/broadcast/${ProductKey}/...``."""
    return f"/broadcast/{_product(node)}/{unique(name)}"


def pub(node: HubNode, topic: str, payload: bytes, qos: int = 1) -> int:
    """Alibaba ``Pub`` on ``node`` with the root key to a ``broadcast_topic`` of ``node``;
    the MessageId it answers."""
    request = PubRequest()
    request.set_ProductKey(_product(node))
    request.set_TopicFullName(topic)
    request.set_MessageContent(base64.b64encode(payload).decode())
    request.set_Qos(qos)
    request.set_endpoint(f"{node.host}:{node.http_port}")
    answer = json.loads(AcsClient(KEY_ID, SECRET, "cn-shanghai").do_action_with_exception(request))
    assert answer["Success"] is True, answer
    return int(answer["MessageId"])


_PRODUCTS: dict[str, str] = {}


def _product(node: HubNode) -> str:
    """A product in ``node``'s registry (each node keeps its own in this version)."""
    if node.name not in _PRODUCTS:
        created = node.cli("product", "create", unique("p").replace("-", "_"))
        _PRODUCTS[node.name] = (created[0] if isinstance(created, list) else created)["product_key"]
    return _PRODUCTS[node.name]


def trace(
    node: HubNode, message_id: int, key: tuple[str, str] = (KEY_ID, SECRET)
) -> dict[str, Any]:
    return get_json(url(node), f"/thinghub/trace/{message_id}", [], *key, timeout=30.0)


def trace_error(node: HubNode, message_id: int, key: tuple[str, str]) -> TraceError:
    try:
        answer = trace(node, message_id, key)
    except TraceError as error:
        return error
    raise AssertionError(f"expected an error, got {answer}")


def sessions(found: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The trace's sessions by (node, client id)."""
    return {(entry["node"], entry["clientId"]): entry for entry in found["sessions"]}


def wait_acknowledged(
    node: HubNode, message_id: int, expected: set[tuple[str, str]]
) -> dict[str, Any]:
    """``node``'s trace once every (node, client id) of ``expected`` has acknowledged its
    copy: a PUBACK's effect is seen by nobody but the hub."""
    last: list[dict[str, Any]] = []

    def acknowledged() -> bool:
        last[:] = [trace(node, message_id)]
        fates = {key: entry["fate"] for key, entry in sessions(last[0]).items()}
        return set(fates) == expected and set(fates.values()) == {"acknowledged"}

    try:
        wait_for(acknowledged, TIMEOUT, f"every copy of {message_id} to be acknowledged")
    except AssertionError as error:
        raise AssertionError(f"{error}: {last}") from None
    return last[0]


def subscribers(
    nodes: list[HubNode], client: MakeClient, topic: str
) -> dict[str, pahoclient.Client]:
    """A QoS 1 subscriber of ``topic`` on each node, by node name."""
    made = {}
    for node in nodes:
        subscriber = client(node)
        assert subscriber.subscribe(topic, 1) == 1
        made[node.name] = subscriber
    settle(nodes)
    return made


def test_every_node_answers_with_the_sessions_of_every_node(
    trio: list[HubNode], client: MakeClient
) -> None:
    n1, n2, n3 = trio
    topic = broadcast_topic(n1, "all")
    subs = subscribers(trio, client, topic)
    # A persistent session too: its QoS 1 copy comes from its JetStream consumer
    # (cluster/consumers.py), under the same MessageId.
    persistent = client(n3, session_expiry=300)
    assert persistent.subscribe(topic, 1) == 1
    settle(trio)
    message_id = pub(n1, topic, b"to everyone")
    for subscriber in [*subs.values(), persistent]:
        assert subscriber.expect_message().payload == b"to everyone"
    expected = {(name, subscriber.client_id) for name, subscriber in subs.items()}
    expected.add(("n3", persistent.client_id))

    for asked in (n1, n2, n3):
        found = wait_acknowledged(asked, message_id, expected)
        assert found["messageId"] == str(message_id)
        assert found["topic"] == topic
        assert (found["qos"], found["outcome"]) == (1, "routed")
        assert found["origin"] == f"http:aliyun:{KEY_ID}"
        assert found["publishedOn"] == "n1"
        counts = found["counts"]
        assert (counts["matched"], counts["sent"], counts["acknowledged"]) == (4, 4, 4)
        assert counts["dropped"] == {}
        assert found["sessionsOmitted"] == 0
        assert found["complete"] is True
        assert set(found["nodes"]) == {"n1", "n2", "n3"}
        for name, node in found["nodes"].items():
            assert (node["answered"], node["found"]) == (True, True), name
        # The publishing node's sessions first.
        assert found["sessions"][0]["node"] == "n1"

    # ``thinghub trace`` on n2 shows the sessions of n1 and n3 too, each with its node.
    shown = CliRunner().invoke(
        cli_main,
        ["trace", str(message_id), "--url", url(n2)],
        env={"THINGHUB_ROOT_ACCESS_KEY_ID": KEY_ID, "THINGHUB_ROOT_ACCESS_KEY_SECRET": SECRET},
    )
    assert shown.exit_code == 0, shown.output
    for name, subscriber in subs.items():
        assert f"{subscriber.client_id}  on {name}  QoS 1" in shown.output
    assert "n1 (published here), n2, n3" in shown.output
    assert "PARTIAL" not in shown.output

    # The console on n3 shows the same: every node's sessions, each with its node.
    console = Browserless(url(n3))
    assert console.sign_in(KEY_ID, SECRET).status == 200
    page = console.get(f"/trace/{message_id}")
    assert page.status == 200, page.body
    shown_trace = page.body["trace"]
    assert {(s["node"], s["clientId"]) for s in shown_trace["sessions"]} == expected
    assert shown_trace["complete"] is True and shown_trace["publishedOn"] == "n1"


def test_a_key_of_another_account_gets_404_from_every_node(
    trio: list[HubNode], client: MakeClient
) -> None:
    topic = broadcast_topic(trio[0], "mine")
    subs = subscribers(trio, client, topic)
    message_id = pub(trio[0], topic, b"not theirs")
    for subscriber in subs.values():
        subscriber.expect_message()
    for node in trio:
        # Each node keeps its own registry in this version: the other account is made on the
        # node it is asked of.
        created = node.cli("account", "create", unique("other"))
        made = created[0] if isinstance(created, list) else created
        theirs = trace_error(node, message_id, (made["access_key_id"], made["secret"]))
        unknown = trace_error(node, message_id + 1, (KEY_ID, SECRET))
        assert theirs.status == unknown.status == 404
        assert theirs.message == unknown.message.replace(str(message_id + 1), str(message_id))
        assert "on any node of the cluster" in theirs.message
        assert trace(node, message_id)["messageId"] == str(message_id)  # the owner sees it


def test_a_node_that_cannot_answer_is_named_and_the_answer_comes_within_the_bound(
    trio: list[HubNode], fourth: HubNode, client: MakeClient
) -> None:
    n1, n2, _n3 = trio
    everyone = [*trio, fourth]
    topic = broadcast_topic(n1, "four")
    subs = subscribers(everyone, client, topic)
    message_id = pub(n1, topic, b"to four nodes")
    for subscriber in subs.values():
        subscriber.expect_message()
    expected = {(name, subscriber.client_id) for name, subscriber in subs.items()}
    assert sessions(wait_acknowledged(n2, message_id, expected)).keys() == expected

    # Silent: connected to NATS (its subscriptions stand), answering nothing.
    os.kill(fourth.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        found = trace(n1, message_id)
        took = time.monotonic() - started
    finally:
        os.kill(fourth.proc.pid, signal.SIGCONT)
    assert REQUEST_TIMEOUT - 0.5 < took < REQUEST_TIMEOUT + 5, took  # waited, and no longer
    _partial(found, expected, "did not answer")

    # Gone: a node that stops tells the others (cluster/interest.py), which no longer ask it,
    # but it left after the message was published: its part is named as gone with it.
    assert fourth.stop() == 0
    started = time.monotonic()
    found = trace(n2, message_id)
    assert time.monotonic() - started < REQUEST_TIMEOUT
    _partial(found, expected, "node n4 left the cluster")


def _partial(found: dict[str, Any], expected: set[tuple[str, str]], error: str) -> None:
    """A trace of the four nodes' message without n4's part, saying so."""
    assert found["complete"] is False
    assert found["nodes"]["n4"]["answered"] is False
    assert found["nodes"]["n4"]["found"] is False
    assert error in found["nodes"]["n4"]["error"]
    for name in ("n1", "n2", "n3"):
        assert found["nodes"][name] == {
            "answered": True,
            "found": True,
            "routedAt": found["nodes"][name]["routedAt"],
        }
    assert set(sessions(found)) == {key for key in expected if key[0] != "n4"}
    assert found["counts"]["matched"] == found["counts"]["acknowledged"] == 3
    assert found["publishedOn"] == "n1"
