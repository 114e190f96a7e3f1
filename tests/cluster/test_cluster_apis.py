"""Both HTTP APIs on one node act on clients connected to another (cluster/rpc.py): boto3's
``iot-data`` GetConnection, ListSubscriptions, SendDirectMessage and DeleteConnection, the
Alibaba SDK's RRpc, QueryDeviceSubTopic and PubBroadcast, retained messages read through
the API of a node other than the one they were published on; a node that holds the session
and cannot be asked is a 503, never "offline"."""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import natscluster
import pahoclient
import pytest
import rawmqtt
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkcore.request import RpcRequest
from aliyunsdkiot.request.v20180120.PubBroadcastRequest import PubBroadcastRequest
from aliyunsdkiot.request.v20180120.QueryDeviceSubTopicRequest import QueryDeviceSubTopicRequest
from aliyunsdkiot.request.v20180120.RRpcRequest import RRpcRequest
from hubnodes import KEY_ID, SECRET, HubNode, settle, wait_for
from pahoclient import unique

from thinghub.auth.aliyun_device import build_credentials

MakeClient = Callable[..., pahoclient.Client]

# Each node enforces rate / live nodes (http/ratelimit.py): with 3 nodes, 1 request per second
# of these on each; PubBroadcast's own 1 per second would leave a node a third of one.
RATES = {
    "API_AWS_RATE_LIMITS": "ListRetainedMessages=3",
    "API_ALIYUN_RATE_LIMITS": "QueryDeviceSubTopic=3,PubBroadcast=30",
}


@pytest.fixture(scope="module")
def nodes(start_node: Callable[..., HubNode]) -> list[HubNode]:
    started = [start_node(name, **RATES) for name in ("n1", "n2", "n3")]
    settle(started)
    return started


def call(node: HubNode, request: RpcRequest) -> dict[str, Any]:
    """An Alibaba SDK call on ``node``; the JSON answer (HTTP 200, Success true or false)."""
    request.set_endpoint(f"{node.host}:{node.http_port}")
    request.set_protocol_type("http")
    answer = AcsClient(KEY_ID, SECRET, "cn-shanghai").do_action_with_exception(request)
    return dict(json.loads(answer))


def register(node: HubNode, devices: int = 1) -> tuple[str, list[str]]:
    """A product and devices in ``node``'s registry (each node keeps its own in this version:
    the API call is made where they are registered)."""
    created = node.cli("product", "create", unique("p").replace("-", "_"))
    product_key = (created[0] if isinstance(created, list) else created)["product_key"]
    names = [unique("d").replace("-", "_") for _ in range(devices)]
    for name in names:
        created = node.cli("device", "register", product_key, name)
        record = created[0] if isinstance(created, list) else created
        SECRETS[product_key, name] = record["device_secret"]
    return product_key, names


#: the secrets of the devices ``register`` made, by (product key, device name)
SECRETS: dict[tuple[str, str], str] = {}


def signed_in(node: HubNode, product_key: str, name: str, make: MakeClient) -> pahoclient.Client:
    """The device signed in with its secret (on the node whose registry has it: there an
    anonymous client may not take a device's client id)."""
    client_id, username, password = build_credentials(product_key, name, SECRETS[product_key, name])
    device = make(node, client_id=client_id, connect=False)
    device.paho.username_pw_set(username, password)
    device.connect()
    return device


def responder(c: pahoclient.Client) -> None:
    """Make the device answer every RRpc request with "pong:" + the request."""
    recorded = c.paho.on_message

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        recorded(client, userdata, msg)
        if "/rrpc/request/" in msg.topic:
            reply = msg.topic.replace("/rrpc/request/", "/rrpc/response/")
            client.publish(reply, b"pong:" + msg.payload, 0)

    c.paho.on_message = on_message


def test_aws_connection_operations_reach_a_client_on_another_node(
    nodes: list[HubNode], client: MakeClient
) -> None:
    n1, n2, _n3 = nodes
    will_topic = unique("will")
    watcher = client(n1)
    watcher.subscribe(will_topic, 1)
    device = client(n2, keepalive=30, session_expiry=300, will=(will_topic, b"gone", 1, False))
    filters = sorted([f"{unique('a')}/+", f"$share/g/{unique('b')}/#"])
    for qos, topic_filter in enumerate(filters):
        device.subscribe(topic_filter, qos)
    settle(nodes)
    api = n1.iot_data()

    got = api.get_connection(clientId=device.client_id, includeSocketInformation=True)
    sock: Any = device.paho.socket()
    assert (got["connected"], got["cleanSession"], got["sessionExpiry"]) == (True, False, 300)
    assert got["keepAliveDuration"] == 30
    assert (got["sourceIp"], got["sourcePort"]) == sock.getsockname()[:2]
    assert got["targetPort"] == n2.port

    listed = api.list_subscriptions(clientId=device.client_id)["subscriptions"]
    assert listed == [{"topicFilter": f, "qos": qos} for qos, f in enumerate(filters)]

    topic = unique("direct")
    answer = api.send_direct_message(clientId=device.client_id, topic=topic, payload=b"plain")
    assert answer["message"] == "OK"
    assert device.expect_message().payload == b"plain"
    confirmed = api.send_direct_message(
        clientId=device.client_id,
        topic=topic,
        payload=b"confirmed",
        confirmation=True,
        contentType="text/plain",
    )
    assert confirmed["message"] == "OK"
    got_confirmed = device.expect_message()
    assert (got_confirmed.payload, got_confirmed.qos) == (b"confirmed", 1)
    assert got_confirmed.properties["ContentType"] == "text/plain"

    api.delete_connection(clientId=device.client_id)
    assert device.expect_disconnect() == 0x98
    assert watcher.expect_message().payload == b"gone"
    # The persistent session stays on its node, offline.
    offline = api.get_connection(clientId=device.client_id)
    assert offline["connected"] is False and offline["sessionExpiry"] == 300
    with pytest.raises(api.exceptions.ResourceNotFoundException):
        api.delete_connection(clientId=device.client_id)
    with pytest.raises(api.exceptions.ResourceNotFoundException):
        api.send_direct_message(clientId=device.client_id, topic=topic, payload=b"x")
    with pytest.raises(api.exceptions.ResourceNotFoundException):
        api.get_connection(clientId=unique("nobody"))
    # Counted on both sides (/metrics: thinghub_cluster_api_requests_total).
    assert n1.status()["rpc"]["sent"] > 0 and n2.status()["rpc"]["served"] > 0
    url = f"http://{n1.host}:{n1.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert 'thinghub_cluster_api_requests_total{kind="sent"}' in answer.read().decode()


def test_an_unconfirmed_direct_message_on_another_node_is_504(
    nodes: list[HubNode], raw: Callable[..., rawmqtt.RawClient]
) -> None:
    n1, n2, _n3 = nodes
    device = raw(n2)
    client_id = unique("silent")
    device.connect(client_id)
    api = n1.iot_data()
    with pytest.raises(api.exceptions.GatewayTimeoutException):
        api.send_direct_message(
            clientId=client_id, topic="t", payload=b"x", confirmation=True, timeout=1
        )
    got = device.expect(rawmqtt.PUBLISH)  # sent; never acknowledged
    assert (got.qos, got.payload) == (1, b"x")


def test_delete_connection_clean_without_will_on_another_node(
    nodes: list[HubNode], client: MakeClient
) -> None:
    n1, _n2, n3 = nodes
    will_topic = unique("will")
    watcher = client(n1)
    watcher.subscribe(will_topic, 1)
    device = client(n3, session_expiry=300, will=(will_topic, b"gone", 1, False))
    settle(nodes)
    api = n1.iot_data()
    api.delete_connection(clientId=device.client_id, cleanSession=True, preventWillMessage=True)
    assert device.expect_disconnect() == 0x98

    def session_gone() -> bool:
        try:
            api.get_connection(clientId=device.client_id)
        except api.exceptions.ResourceNotFoundException:
            return True
        return False

    wait_for(session_gone, what="the session to end")
    client(n1).publish(will_topic, b"sentinel", 1)
    assert watcher.expect_message().payload == b"sentinel"  # no will came first


def test_rrpc_and_query_device_sub_topic_across_nodes(
    nodes: list[HubNode], client: MakeClient
) -> None:
    n1, n2, _n3 = nodes
    product_key, (name,) = register(n1)

    def rrpc(timeout_ms: int = 3000) -> dict[str, Any]:
        request = RRpcRequest()
        request.set_ProductKey(product_key)
        request.set_DeviceName(name)
        request.set_RequestBase64Byte(base64.b64encode(b"ping").decode())
        request.set_Timeout(timeout_ms)
        return call(n1, request)

    offline = rrpc()
    assert (offline["Success"], offline["RrpcCode"]) == (False, "OFFLINE")
    assert offline["Code"] == "iot.messagebroker.OFFLINE"

    device = client(n2, client_id=f"{product_key}.{name}")
    request_filter = f"/sys/{product_key}/{name}/rrpc/request/+"
    device.subscribe(request_filter, 0)
    timeout = rrpc(1000)
    assert (timeout["Success"], timeout["RrpcCode"]) == (False, "TIMEOUT")
    assert device.expect_message().payload == b"ping"

    responder(device)
    success = rrpc()
    assert (success["Success"], success["RrpcCode"]) == (True, "SUCCESS")
    assert base64.b64decode(success["PayloadBase64Byte"]) == b"pong:ping"

    query = QueryDeviceSubTopicRequest()
    query.set_ProductKey(product_key)
    query.set_DeviceName(name)
    topics = call(n1, query)["TopicList"]
    assert [t["TopicName"] for t in topics] == [request_filter]
    assert topics[0]["Timestamp"] > 0


def test_pub_broadcast_reaches_devices_on_every_node(
    nodes: list[HubNode], client: MakeClient
) -> None:
    product_key, names = register(nodes[0], devices=3)
    # Signed in where they are registered (node 1), anonymous elsewhere (each node has its
    # own registry here).
    devices = [signed_in(nodes[0], product_key, names[0], client)] + [
        client(node, client_id=f"{product_key}.{name}")
        for node, name in zip(nodes[1:], names[1:], strict=True)
    ]
    broadcast_topic = f"/broadcast/{product_key}/news"
    for device in devices:
        device.subscribe(broadcast_topic, 0)
    settle(nodes)
    # Every online device, whatever it subscribed to.
    request = PubBroadcastRequest()
    request.set_ProductKey(product_key)
    request.set_MessageContent(base64.b64encode(b"to all").decode())
    answer = call(nodes[0], request)
    assert answer["Success"] is True
    for device, name in zip(devices, names, strict=True):
        got = device.expect_message()
        expected = f"/sys/{product_key}/{name}/broadcast/request/{answer['MessageId']}"
        assert (got.topic, got.payload) == (expected, b"to all")
    # A broadcast topic: its subscribers on every node.
    request = PubBroadcastRequest()
    request.set_ProductKey(product_key)
    request.set_TopicFullName(broadcast_topic)
    request.set_MessageContent(base64.b64encode(b"topic").decode())
    assert call(nodes[0], request)["Success"] is True
    for device in devices:
        got = device.expect_message()
        assert (got.topic, got.payload) == (broadcast_topic, b"topic")


def test_retained_messages_set_on_one_node_are_read_through_another(
    nodes: list[HubNode], client: MakeClient
) -> None:
    n1, n2, _n3 = nodes
    base = unique("kept")
    watcher = client(n2)
    watcher.subscribe(f"{base}/#", 1)
    settle(nodes)
    n1.iot_data().publish(topic=f"{base}/api", qos=1, retain=True, payload=b"by API")
    client(n1).publish(f"{base}/mqtt", b"by MQTT", 1, retain=True)
    assert len(watcher.expect_messages(2)) == 2  # n2 has routed (and kept) both
    api = n2.iot_data()
    got = api.get_retained_message(topic=f"{base}/api")
    assert (got["payload"], got["qos"]) == (b"by API", 1)
    listed = api.list_retained_messages()["retainedTopics"]
    mine = sorted((t["topic"], t["payloadSize"]) for t in listed if t["topic"].startswith(base))
    assert mine == [(f"{base}/api", 6), (f"{base}/mqtt", 7)]


def test_rate_limits_are_divided_between_the_live_nodes(nodes: list[HubNode]) -> None:
    n1, _n2, n3 = nodes
    wait_for(
        lambda: all(node.status()["rpc"]["nodes"] == 3 for node in nodes),
        what="every node to count the 3 nodes (and no other)",
    )
    # ListRetainedMessages=3 for the cluster: one request at once on each node.
    api = n1.iot_data()
    answers = []
    for _ in range(3):
        try:
            api.list_retained_messages(maxResults=1)
            answers.append("ok")
        except api.exceptions.ThrottlingException:
            answers.append("throttled")
    assert answers[0] == "ok" and "throttled" in answers
    # Another node's share is its own (n3: no other test here lists retained messages there).
    n3.iot_data().list_retained_messages(maxResults=1)
    # On n3, where no other test here calls QueryDeviceSubTopic (each node its own share).
    product_key, (name,) = register(n3)
    query = QueryDeviceSubTopicRequest()
    query.set_ProductKey(product_key)
    query.set_DeviceName(name)
    codes = []
    for _ in range(3):
        try:
            codes.append(str(call(n3, query)["Success"]))
        except ServerException as error:
            codes.append(error.error_code)
    assert codes[0] == "True" and "Throttling.User" in codes


@pytest.fixture
def doomed(nats_cluster: natscluster.NatsCluster, tmp_path: Path) -> Iterator[HubNode]:
    """A node of its own, which the test kills (its exit code is not checked)."""
    # The heartbeats of conftest.py's nodes (not imported: another directory's conftest module
    # can take that name when several test directories run together).
    settings = {"CLUSTER_HEARTBEAT_INTERVAL": "0.25", "CLUSTER_NODE_TIMEOUT": "3"}
    node = HubNode("doomed", nats_cluster.cluster_arg, tmp_path, **settings)
    try:
        yield node
    finally:
        node.stop()


def test_a_session_on_a_node_that_cannot_be_asked_is_503_not_offline(
    nodes: list[HubNode], doomed: HubNode, client: MakeClient
) -> None:
    n1 = nodes[0]
    product_key, (name,) = register(n1)
    device = client(doomed, client_id=f"{product_key}.{name}", session_expiry=300)
    settle([*nodes, doomed])
    api = n1.iot_data()
    assert api.get_connection(clientId=device.client_id)["connected"] is True
    doomed.proc.kill()  # SIGKILL: its claim stays in the owners bucket
    doomed.proc.wait()
    with pytest.raises(api.exceptions.ServiceUnavailableException):
        api.get_connection(clientId=device.client_id)
    request = RRpcRequest()
    request.set_ProductKey(product_key)
    request.set_DeviceName(name)
    request.set_RequestBase64Byte(base64.b64encode(b"ping").decode())
    request.set_Timeout(1000)
    with pytest.raises(ServerException) as refused:
        call(n1, request)
    assert (refused.value.http_status, refused.value.error_code) == (503, "ServiceUnavailable")
