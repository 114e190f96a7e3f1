"""Both HTTP APIs on one node reach subscribers on the others: they publish through
``Broker.publish`` like an MQTT client, and the message crosses as any other (boto3's
``iot-data`` Publish, the Alibaba SDK's ``Pub``)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pahoclient
from aliyunsdkcore.client import AcsClient
from aliyunsdkiot.request.v20180120.PubRequest import PubRequest
from hubnodes import KEY_ID, SECRET, HubNode, settle
from pahoclient import unique

MakeClient = Callable[..., pahoclient.Client]


def test_aws_publish_on_one_node_reaches_a_subscriber_on_another(
    nodes: list[HubNode], client: MakeClient
) -> None:
    n1, n2, n3 = nodes
    topic = unique("aws")
    subscriber = client(n2)
    subscriber.subscribe(topic, 1)
    v311 = client(n3, version=4)
    v311.subscribe(topic, 0)
    settle(nodes)
    n1.iot_data().publish(
        topic=topic, qos=1, payload=b'{"temp":21}', contentType="application/json"
    )
    got = subscriber.expect_message()
    assert (got.payload, got.qos) == (b'{"temp":21}', 1)
    assert got.properties["ContentType"] == "application/json"
    assert v311.expect_message().payload == b'{"temp":21}'


def test_alibaba_pub_on_one_node_reaches_a_subscriber_on_another(
    nodes: list[HubNode], client: MakeClient
) -> None:
    n1, n2, _n3 = nodes
    # The registry is each node's own in this version: the device is registered where the
    # API call is made. The subscriber is an anonymous client of the same (root) account.
    created = n1.cli("product", "create", unique("p").replace("-", "_"))
    product_key = (created[0] if isinstance(created, list) else created)["product_key"]
    device_name = unique("d").replace("-", "_")
    n1.cli("device", "register", product_key, device_name)
    topic = f"/{product_key}/{device_name}/user/get"
    subscriber = client(n2)
    subscriber.subscribe(topic, 1)
    settle(nodes)
    request = PubRequest()
    request.set_endpoint(f"{n1.host}:{n1.http_port}")
    request.set_protocol_type("http")
    request.set_ProductKey(product_key)
    request.set_TopicFullName(topic)
    request.set_MessageContent(base64.b64encode(b"from the API").decode())
    request.set_Qos(1)
    answer = json.loads(AcsClient(KEY_ID, SECRET, "cn-shanghai").do_action_with_exception(request))
    assert answer["Success"] is True and answer["MessageId"] > 0
    got = subscriber.expect_message()
    assert (got.topic, got.payload, got.qos) == (topic, b"from the API", 1)
