"""Acknowledged means replicated (thinghub/cluster/stream.py): a QoS 1/2 PUBACK and an HTTP
200 with a MessageId leave only once the cluster's message stream (3 replicas) has stored the
message; without a JetStream quorum the publisher is refused (PUBACK 0x80, or 0x97 when the
node cannot even hand it to NATS), the HTTP APIs answer 503, and once NATS is back both work
again without restarting the hub, and a persistent session's QoS 1/2 SUBSCRIBE is refused
meanwhile (SUBACK 0x80). Its own 3-server NATS cluster (the module's), stopped and
started again by PID."""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pahoclient
import pytest
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkiot.request.v20180120.PubRequest import PubRequest
from botocore.exceptions import ClientError
from hubnodes import KEY_ID, SECRET, HubNode, settle, wait_for
from natscluster import NatsCluster
from pahoclient import unique

MakeClient = Callable[..., pahoclient.Client]
SETTINGS = {
    "CLUSTER_STREAM_REPLICAS": "3",
    "CLUSTER_STREAM_MAX_BYTES": str(64 * 1024 * 1024),
    # A PubAck that does not come refuses its publisher after this.
    "CLUSTER_REQUEST_TIMEOUT": "2",
    "CLUSTER_RECONNECT_WAIT": "0.2",
}


@pytest.fixture(scope="module")
def pair(start_node: Callable[..., HubNode]) -> list[HubNode]:
    started = [start_node(name, **SETTINGS) for name in ("s1", "s2")]
    settle(started)
    for node in started:
        wait_for(lambda n=node: n.status()["stream"]["ready"], what=f"{node.name}'s stream")
    return started


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


def test_puback_and_http_200_wait_for_the_stream_and_are_refused_without_it(
    nats_cluster: NatsCluster, pair: list[HubNode], client: MakeClient
) -> None:
    s1, s2 = pair
    created = s1.cli("product", "create", unique("p").replace("-", "_"))
    product_key = (created[0] if isinstance(created, list) else created)["product_key"]
    device_name = unique("d").replace("-", "_")
    s1.cli("device", "register", product_key, device_name)
    topic = f"/{product_key}/{device_name}/user/get"
    remote = client(s2)
    remote.subscribe(topic, 1)
    settle(pair)
    publisher = client(s1)
    keeper = client(s1, client_id=unique("keeper"), clean=False, session_expiry=300)

    # The PUBACK left after JetStream's acknowledgement: the node counted it before.
    before = s1.status()["stream"]["acknowledged"]
    assert publisher.publish(topic, b"stored", 1) == 0
    assert s1.status()["stream"]["acknowledged"] == before + 1
    url = f"http://{s1.host}:{s1.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        metrics = answer.read().decode()
    assert 'thinghub_cluster_stream_publishes_total{outcome="acknowledged"}' in metrics
    assert _aliyun_pub(s1, product_key, topic, 1)["Success"] is True
    s1.iot_data().publish(topic=topic, qos=1, payload=b"aws")
    assert [m.payload for m in remote.expect_messages(3)] == [b"stored", b"api", b"aws"]

    # Two of three NATS servers gone: no quorum for the stream; the node may still be
    # connected to the third, so the refusal is the stream's silence (0x80 Unspecified
    # error after request_timeout), or, while it moves to the third, 0x97.
    servers = nats_cluster.servers
    for server in servers[:2]:
        server.stop()
    assert publisher.publish(topic, b"no quorum", 1) in (0x80, 0x97)
    # All gone: refused at once, MQTT and both HTTP dialects.
    servers[2].stop()
    wait_for(lambda: not s1.status()["nats"]["connected"], what="s1 to see NATS gone")
    assert publisher.publish(topic, b"refused", 1) == 0x97
    with pytest.raises(ClientError) as refused:
        s1.iot_data().publish(topic=topic, qos=1, payload=b"aws")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    with pytest.raises(ServerException) as unavailable:
        _aliyun_pub(s1, product_key, topic, 1)
    assert unavailable.value.get_http_status() == 503
    health = s1.get_json("/healthz")
    assert health["status"] == "degraded" and "cluster" in health["degraded"], health
    # A persistent session cannot keep a subscription in the cluster now (its record, a
    # consumer): refused, 0x80 Unspecified error.
    later = unique("later")
    assert keeper.subscribe(later, 1) == 0x80
    assert keeper.subscribe(later + "/zero", 0) == 0x80

    # Back, by itself.
    for server in servers:
        server.start([s.route_port for s in servers if s is not server])
    nats_cluster.wait_ready()
    wait_for(lambda: s1.status()["nats"]["connected"], timeout=30, what="s1 to reconnect")
    settle(pair, timeout=30)
    wait_for(lambda: publisher.publish(topic, b"back", 1) == 0, timeout=30, what="a PUBACK")
    assert _aliyun_pub(s1, product_key, topic, 1)["Success"] is True
    s1.iot_data().publish(topic=topic, qos=1, payload=b"aws back")
    wait_for(lambda: s1.status()["persistent_sessions"]["ready"], what="session records")
    # The stream's leader may still be moving after a restart of every NATS server: a
    # consumer's creation is refused (0x80) until JetStream has one, then it works.
    wait_for(lambda: keeper.subscribe(later, 1) == 1, timeout=30, what="a SUBSCRIBE granted")
    got = [m.payload for m in remote.until(b"aws back")]
    # Refused messages were not acknowledged; what was acknowledged arrived.
    assert b"refused" not in got and b"back" in got and b"api" in got
