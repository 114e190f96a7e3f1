"""A QoS 1/2 message whose topic is too long for the cluster's message stream (a NATS subject
of at most ``MAX_SUBJECT`` bytes, its levels escaped: cluster/subjects.py) is refused, never
acknowledged unstored: MQTT 5 PUBACK 0x90 (Topic Name invalid), AWS ``Publish`` 400, and
nobody gets it; at QoS 0 the same topic crosses nodes as usual. Real nodes on a real NATS
cluster, a raw MQTT client and boto3."""

from __future__ import annotations

from collections.abc import Callable

import pahoclient
import pytest
import rawmqtt
from botocore.exceptions import ClientError
from hubnodes import HubNode, settle
from pahoclient import unique

from thinghub.cluster.subjects import MAX_SUBJECT

MakeClient = Callable[..., pahoclient.Client]
TOPIC_NAME_INVALID = 0x90


def test_a_qos1_topic_too_long_for_the_stream_is_refused_not_acknowledged(
    nodes: list[HubNode], client: MakeClient, raw: Callable[..., rawmqtt.RawClient]
) -> None:
    n1, n2, _n3 = nodes
    base = unique("long")
    topic = f"{base}/" + "x" * MAX_SUBJECT
    watcher = client(n2)
    watcher.subscribe(f"{base}/#", 1)
    settle(nodes)
    publisher = raw(n1)
    publisher.connect(unique("pub"))
    assert publisher.publish_acked(topic, b"refused", qos=1) == TOPIC_NAME_INVALID
    assert publisher.publish_acked(topic, b"refused too", qos=2) == TOPIC_NAME_INVALID
    with pytest.raises(ClientError) as refused:
        n1.iot_data().publish(topic=topic, qos=1, payload=b"refused by HTTP")
    assert refused.value.response["Error"]["Code"] == "InvalidRequestException"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    # At QoS 0 it crosses as any message does; nothing refused came before it.
    publisher.publish(topic, b"at qos 0", qos=0)
    got = watcher.expect_message()
    assert (got.topic, got.payload) == (topic, b"at qos 0")
