"""MessageIds stay unique across nodes, and the cluster shows its figures.

Each node takes a number (cluster/numbers.py): claimed in the cluster's nodes bucket, kept
across restarts, or set by ``cluster.node_id`` and refused when another node holds it. The
Alibaba ``Pub`` on two nodes gives ids that never collide and decode to their nodes' numbers.
``/metrics`` (read with the Prometheus parser) and ``/api/stats`` count what crossed."""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pahoclient
import pytest
from aliyunsdkcore.client import AcsClient
from aliyunsdkiot.request.v20180120.PubRequest import PubRequest
from hubnodes import KEY_ID, SECRET, HubNode, settle, wait_for
from pahoclient import unique
from prometheus_client.parser import text_string_to_metric_families

from thinghub.registry.ids import decode_message_id

MakeClient = Callable[..., pahoclient.Client]


def _device(node: HubNode) -> tuple[str, str]:
    created = node.cli("product", "create", unique("p").replace("-", "_"))
    product_key = (created[0] if isinstance(created, list) else created)["product_key"]
    device_name = unique("d").replace("-", "_")
    node.cli("device", "register", product_key, device_name)
    return product_key, device_name


def _pub(node: HubNode, product_key: str, topic: str, payload: bytes, qos: int = 0) -> Any:
    request = PubRequest()
    request.set_endpoint(f"{node.host}:{node.http_port}")
    request.set_protocol_type("http")
    request.set_ProductKey(product_key)
    request.set_TopicFullName(topic)
    request.set_MessageContent(base64.b64encode(payload).decode())
    request.set_Qos(qos)
    return json.loads(AcsClient(KEY_ID, SECRET, "cn-shanghai").do_action_with_exception(request))


def _metrics(node: HubNode) -> dict[str, Any]:
    url = f"http://{node.host}:{node.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def _sample(families: dict[str, Any], name: str, **labels: str) -> float:
    for family in families.values():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name} {labels}")


def test_message_ids_of_two_nodes_never_collide_and_decode_to_their_numbers(
    nodes: list[HubNode],
) -> None:
    n1, n2, _n3 = nodes
    numbers = {node.name: node.status()["number"] for node in nodes}
    assert sorted(numbers.values()) == sorted(set(numbers.values())), numbers
    assert all(1 <= number <= 1023 for number in numbers.values()), numbers
    ids: dict[str, list[int]] = {}
    for node in (n1, n2):
        product_key, device_name = _device(node)
        topic = f"/{product_key}/{device_name}/user/get"
        ids[node.name] = [
            int(_pub(node, product_key, topic, b"%d" % i)["MessageId"]) for i in range(50)
        ]
    every = ids["n1"] + ids["n2"]
    assert len(set(every)) == len(every)
    for name, issued in ids.items():
        assert {decode_message_id(i).node for i in issued} == {numbers[name]}
        assert issued == sorted(issued)  # time-ordered within a node


def test_a_restarted_node_keeps_its_number_and_a_taken_node_id_is_refused(
    nodes: list[HubNode], start_node: Callable[..., HubNode]
) -> None:
    n1 = nodes[0]
    taken = n1.status()["number"]
    with pytest.raises(AssertionError) as refused:
        start_node("intruder", CLUSTER_NODE_ID=taken)
    assert f"cluster.node_id {taken} is node n1's" in str(refused.value)
    extra = start_node("n4")
    number = extra.status()["number"]
    assert number not in {node.status()["number"] for node in nodes}
    data_dir = extra.data_dir
    assert extra.stop() == 0
    again = start_node("n4", data_dir=data_dir)
    assert again.status()["number"] == number
    # Its own number, configured, is accepted.
    assert again.stop() == 0
    configured = start_node("n4", data_dir=data_dir, CLUSTER_NODE_ID=number)
    assert configured.status()["number"] == number
    assert configured.stop() == 0


def test_metrics_and_stats_count_what_crossed_the_cluster(
    nodes: list[HubNode], client: MakeClient
) -> None:
    n1, n2, _n3 = nodes
    topic = unique("metrics")
    subscriber = client(n2)
    subscriber.subscribe(topic, 1)
    settle(nodes)
    before1, before2 = _metrics(n1), _metrics(n2)
    publisher = client(n1)
    for i in range(3):
        publisher.publish(topic, b"%d" % i, 1)
    publisher.publish(unique("nobody-listens"), b"x", 0)
    assert [m.payload for m in subscriber.expect_messages(3)] == [b"0", b"1", b"2"]
    name = "thinghub_cluster_messages_total"
    after1 = _metrics(n1)
    wait_for(
        lambda: (
            _sample(_metrics(n2), name, direction="received")
            >= _sample(before2, name, direction="received") + 3
        ),
        what="n2 to count what it received",
    )
    assert (
        _sample(after1, name, direction="forwarded")
        >= _sample(before1, name, direction="forwarded") + 3
    )
    assert (
        _sample(after1, name, direction="kept_local")
        >= _sample(before1, name, direction="kept_local") + 1
    )
    assert _sample(after1, "thinghub_cluster_nats_connected") == 1
    assert _sample(after1, "thinghub_cluster_remote_nodes") >= 2
    # The publisher's client id was claimed (after its CONNACK: cluster/owners.py).
    claims = "thinghub_cluster_session_claims_total"
    wait_for(lambda: _sample(_metrics(n1), claims) > _sample(before1, claims), what="a claim")
    assert _sample(after1, "thinghub_cluster_outbound_buffer_bytes") >= 0
    assert _sample(after1, "thinghub_cluster_messages_dropped_total", reason="not_sent") == 0
    assert _sample(after1, "thinghub_cluster_node_info", node="n1") == 1
    stats = n1.get_json("/api/stats")["cluster"]
    assert stats["node"] == "n1" and stats["nats_connected"] is True
    assert stats["messages"]["forwarded"] >= 3 and stats["remote_nodes"] >= 2
    assert stats["accepting_sign_ins"] is True
