"""``GET /metrics`` in the Prometheus text format, on a real ``thinghub serve``: the counters
move as a scenario says (clients connect, QoS 1 messages are delivered, a sign-in is refused,
API calls are answered and throttled on both HTTP paths, a message is dropped), parsed with
``prometheus_client``'s own parser. ``GET /api/stats`` keeps the JSON counters."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.request import RpcRequest
from botocore.exceptions import ClientError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "security"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scenarios"))

import rawmqtt
from sec_paho_device import api, pub
from sechub import KEY_ID, Scrape, SecHub, wait_for

pytestmark = pytest.mark.thinghub_only

BAD_USER_NAME_OR_PASSWORD = 0x86


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecHub]:
    running = SecHub(
        tmp_path_factory.mktemp("metrics"),
        # One GetRetainedMessage a second per account: the third of three quick ones is refused.
        api_aws_rate_limits="GetRetainedMessage=1",
        # No $SYS rounds: the QoS 0 delivery counts below are this test's alone.
        mqtt_sys_interval=0,
    )
    yield running
    running.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Delta:
    """What moved between two scrapes."""

    def __init__(self, before: Scrape, after: Scrape) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: str) -> float:
        return self.after.total(name, **labels) - self.before.total(name, **labels)


def test_every_family_is_thinghubs_and_documented(hub: SecHub) -> None:
    scrape = hub.scrape()
    assert scrape.families, scrape.text
    for name, family in scrape.families.items():
        assert name.startswith("thinghub_"), name
        assert family.documentation, f"{name} has no HELP"
    for gauge in ("thinghub_connections", "thinghub_sessions", "thinghub_queued_bytes"):
        assert scrape.families[gauge].type == "gauge"
    for counter in ("thinghub_messages_received", "thinghub_signins", "thinghub_http_requests"):
        assert scrape.families[counter].type == "counter"
    for histogram in ("thinghub_delivery_latency_seconds", "thinghub_store_commit_seconds"):
        assert scrape.families[histogram].type == "histogram"
    assert scrape.value("thinghub_info", version=hub.stats()["version"]) == 1


def test_three_clients_and_five_qos1_messages(hub: SecHub) -> None:
    topic = unique("obs/qos1")
    before = hub.scrape()
    with hub.raw() as subscriber, hub.raw() as publisher, hub.raw() as idle:
        subscriber.connect(unique("sub"), clean=False, properties={"session_expiry_interval": 600})
        assert subscriber.subscribe(f"{topic}/#", qos=1) == [1]
        publisher.connect(unique("pub"))
        idle.connect(unique("idle"))
        for n in range(5):
            assert publisher.publish_acked(f"{topic}/{n}", b"m%d" % n, 1, mid=n + 1) == 0
        got = subscriber.collect(until=b"m4")
        assert [p.payload for p in got] == [b"m0", b"m1", b"m2", b"m3"]
        subscriber.ping()  # the last PUBACK is in
        during = hub.scrape()
        delta = Delta(before, during)
        assert delta("thinghub_clients_connected") == 3
        assert delta("thinghub_connections") == 3
        assert delta("thinghub_sessions") == 3
        assert delta("thinghub_subscriptions") == 1
        assert delta("thinghub_signins_total", result="accepted") == 3
        assert delta("thinghub_messages_received_total", qos="1") == 5
        assert delta("thinghub_messages_delivered_total", qos="1") == 5
        # The persistent session's copies went to broker.db in committed groups.
        assert delta("thinghub_store_commit_seconds_count") >= 1
        assert during.value("thinghub_inflight_messages") == 0
        subscriber.disconnect()
        publisher.disconnect()
        idle.disconnect()
    after = hub.scrape()
    assert Delta(before, after)("thinghub_clients_connected") == 0
    assert Delta(before, after)("thinghub_sessions") == 1  # the persistent one stays


def test_a_refused_sign_in_is_counted_by_reason_and_audited(hub: SecHub) -> None:
    product_key = hub.product(unique("Obs").replace("-", "_"))
    device = hub.device(product_key, "refused-device")
    device.secret = "not-the-secret"
    before = hub.scrape()
    client, _connack = device.sign_in(expect=BAD_USER_NAME_OR_PASSWORD)
    client.close()
    delta = Delta(before, hub.scrape())
    assert delta("thinghub_signins_total", result="refused") == 1
    assert (
        delta("thinghub_signins_total", result="refused", reason="bad_user_name_or_password") == 1
    )
    assert delta("thinghub_signins_total", result="accepted") == 0
    wait_for(
        lambda: any(
            "thinghub.audit: sign-in refused from 127.0.0.1" in line
            and f"client id '{device.client_id}|" in line
            for line in hub.output
        ),
        what="the audit line of the refused sign-in",
    )


def test_api_requests_on_both_paths_throttling_and_latency(hub: SecHub) -> None:
    iot = hub.iot_data()
    product_key = hub.product(unique("Api").replace("-", "_"))
    device = hub.device(product_key, "api-device")
    before = hub.scrape()
    # AWS Publish: the fast path (http/fastpath.py).
    for n in range(3):
        iot.publish(topic=unique("obs/api"), qos=0, payload=b"x%d" % n)
    # AWS GetRetainedMessage: the aiohttp route; 1 a second: the third is throttled.
    statuses = []
    for _ in range(3):
        try:
            iot.get_retained_message(topic=unique("obs/none"))
        except ClientError as error:
            statuses.append(error.response["ResponseMetadata"]["HTTPStatusCode"])
    assert 429 in statuses and set(statuses) <= {404, 429}, statuses
    # Alibaba Pub (fast path) and an action the dialect does not know.
    pub(hub, device, b"from the api")
    unknown = RpcRequest("Iot", "2018-01-20", "NoSuchAction")
    with pytest.raises(ServerException) as refused:
        api(hub, unknown)
    assert refused.value.get_http_status() == 404
    delta = Delta(before, hub.scrape())
    requests = "thinghub_http_requests_total"
    assert delta(requests, dialect="aws", operation="Publish", status="200") == 3
    # (botocore may retry a throttled call: the hub counts what it was sent.)
    retained = {"dialect": "aws", "operation": "GetRetainedMessage"}
    throttled = delta(requests, status="429", **retained)
    assert throttled >= 1
    assert delta(requests, **retained) == delta(requests, status="404", **retained) + throttled
    assert delta(requests, **retained) >= 3
    assert delta("thinghub_http_throttled_total", **retained) == throttled
    assert delta(requests, dialect="aliyun", operation="Pub", status="200") == 1
    # A made-up action is not a label of its own.
    assert delta(requests, dialect="aliyun", operation="unknown", status="404") == 1
    assert "NoSuchAction" not in hub.scrape().text
    latency = "thinghub_http_request_duration_seconds_count"
    assert delta(latency, dialect="aws", operation="Publish") == 3
    assert delta(latency, dialect="aliyun", operation="Pub") == 1
    # The audit log has a line per call, with the key that made it.
    wait_for(
        lambda: any(
            f"thinghub.audit: api aws Publish key={KEY_ID} account=" in line
            and "status=200" in line
            for line in hub.output
        ),
        what="the audit line of an AWS Publish",
    )
    wait_for(
        lambda: any(
            "api aws GetRetainedMessage" in line and "result=ThrottlingException" in line
            for line in hub.output
        ),
        what="the audit line of a throttled call",
    )
    stats = hub.stats()
    assert stats["api_requests"]["aws"]["Publish"]["200"] >= 3
    assert stats["api_throttled"]["aws"]["GetRetainedMessage"] >= throttled


def test_a_qos0_message_for_an_offline_session_is_dropped(hub: SecHub) -> None:
    topic = unique("obs/offline")
    client_id = unique("away")
    with hub.raw() as away:
        away.connect(client_id, clean=False, properties={"session_expiry_interval": 600})
        assert away.subscribe(topic, qos=0) == [0]
        away.disconnect()
    before = hub.scrape()
    with hub.raw() as publisher:
        publisher.connect(unique("pub"))
        publisher.publish(topic, b"nobody home")
        publisher.ping()  # the PUBLISH has been handled
        publisher.disconnect()
    delta = Delta(before, hub.scrape())
    assert delta("thinghub_messages_dropped_total", reason="offline_qos0") == 1
    assert delta("thinghub_messages_received_total", qos="0") == 1
    assert delta("thinghub_messages_delivered_total") == 0


def test_delivery_latency_is_timed_on_one_copy_in_sixteen(hub: SecHub) -> None:
    topic = unique("obs/latency")
    before = hub.scrape()
    with hub.raw() as subscriber, hub.raw() as publisher:
        subscriber.connect(unique("sub"))
        assert subscriber.subscribe(topic, qos=0) == [0]
        publisher.connect(unique("pub"))
        for n in range(32):
            publisher.publish(topic, b"%d" % n)
        for n in range(32):
            assert subscriber.expect(rawmqtt.PUBLISH).payload == b"%d" % n
        after = hub.scrape()
        subscriber.disconnect()
        publisher.disconnect()
    delta = Delta(before, after)
    assert delta("thinghub_messages_delivered_total", qos="0") == 32
    assert delta("thinghub_delivery_latency_seconds_count") == 2
    # Copies written in the turn their message came in: well under a second.
    assert delta("thinghub_delivery_latency_seconds_bucket", le="1.0") == 2
    assert 0 < delta("thinghub_delivery_latency_seconds_sum") < 2.0


def test_api_stats_keeps_the_json_counters(hub: SecHub) -> None:
    stats = hub.stats()
    for key in (
        "connections",
        "sessions",
        "subscriptions",
        "retained",
        "messages_received",
        "messages_delivered",
        "dropped_offline_qos0",
        "connections_pending_connect",
        "http_header_timeouts",
        "component_failures",
        "presence",
        "registry_writes",
    ):
        assert key in stats, key
    assert stats["messages_received"] == sum(stats["messages_received_by_qos"])
    assert stats["connections_refused_by_reason"]["bad_user_name_or_password"] >= 1
    assert stats["uptime_s"] > 0 and stats["time"] > 0
    assert stats["component_failures"]["store"] == 0
