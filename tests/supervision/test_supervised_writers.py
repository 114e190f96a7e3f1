"""A fault injected into each writer thread of a real hub (``thinghub/health.py``): one internal
method of the writer is replaced by one that raises, and the tests assert what users see.
``/healthz`` answers 503 with the reason, the traceback is logged once, the work that needed
the failed writer is refused in each protocol's shape at once (MQTT 5 PUBACK 0x97, 3.1.1
disconnect, AWS 503 ``ServiceUnavailableException``, Alibaba 503 ``ServiceUnavailable``,
shadow ``/rejected`` 500), nothing that was not stored is acknowledged, what does not need
the writer (QoS 0) still flows, and the hub stops cleanly. A passing trouble (an I/O error)
shows as ``degraded`` with 200 and heals by itself.

The hub runs in-process (suphub.py) with real sockets and real SQLite files."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rawmqtt
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkiot.request.v20180120.PubRequest import PubRequest
from botocore.exceptions import ClientError
from suphub import TIMEOUT, Fault, InProcessHub, InThread, not_acknowledged, wait_until

from thinghub.http.aliyun import nonce_store
from thinghub.registry.store import RegistryStore

QUOTA_EXCEEDED = 0x97
# Well under the 10 s an HTTP publisher waits for a commit (http/publishing.py).
PROMPTLY = 3.0


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[InProcessHub]:
    running = InProcessHub(tmp_path / "data")
    try:
        yield running
    finally:
        running.stop()  # must stop cleanly, whatever failed


def persistent(hub: InProcessHub, client_id: str, topic_filter: str) -> rawmqtt.RawClient:
    """A v5 client with a persistent session subscribed at QoS 1: its copies are stored."""
    client = hub.raw(5)
    client.connect(client_id, clean=False, properties={"session_expiry_interval": 3600})
    assert client.subscribe(topic_filter, qos=1) == [1]
    return client


def clean(hub: InProcessHub, client_id: str, version: int = 5) -> rawmqtt.RawClient:
    client = hub.raw(version)
    client.connect(client_id)
    return client


def tracebacks(caplog: pytest.LogCaptureFixture, component: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.exc_info is not None and r.getMessage().startswith(f"{component} failed")
    ]


def aws_error(call: InThread) -> dict[str, Any]:
    assert isinstance(call.error, ClientError), (call.result, call.error)
    response: dict[str, Any] = call.error.response
    return response


def assert_aws_503(call: InThread) -> None:
    response = aws_error(call)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 503, response
    assert response["Error"]["Code"] == "ServiceUnavailableException", response


def qos0_flows(hub: InProcessHub, topic: str, *, http: bool = True) -> None:
    """QoS 0 over MQTT (and over AWS Publish, which needs a MessageId) still reaches a
    subscriber."""
    watcher = clean(hub, f"watch-{topic}")
    assert watcher.subscribe(topic, qos=0) == [0]
    publisher = clean(hub, f"pub0-{topic}")
    publisher.publish(topic, b"mqtt qos 0")
    assert watcher.expect(rawmqtt.PUBLISH).payload == b"mqtt qos 0"
    if http:
        hub.iot_data().publish(topic=topic, qos=0, payload=b"http qos 0")
        assert watcher.expect(rawmqtt.PUBLISH).payload == b"http qos 0"
    publisher.close()
    watcher.close()


# ------------------------------------------------------------------------------ the store


def test_store_writer_fault_refuses_qos1_and_never_acknowledges_what_was_not_stored(
    hub: InProcessHub, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = hub.hub.broker_store
    assert store is not None
    subscriber = persistent(hub, "keeper", "orders/#")
    iot = hub.iot_data()
    assert hub.get("/healthz") == (200, {"status": "ok"})

    # The next group commit blocks in the writer, then raises.
    fault = Fault()
    monkeypatch.setattr(store, "_commit", fault)
    publisher = clean(hub, "orderer")
    publisher.publish("orders/mqtt", b"in flight", qos=1, mid=7)
    assert fault.entered.wait(TIMEOUT)
    # An HTTP publisher waits for its commit too (its message went into the journal).
    before = store.sequence
    http = InThread(lambda: iot.publish(topic="orders/http", qos=1, payload=b"in flight"))
    wait_until(lambda: store.sequence > before, "the HTTP publish to reach the store")
    fault.release.set()
    released = time.monotonic()

    body = hub.wait_health("failed")
    assert body["components"] == {"store": "RuntimeError: injected"}
    assert hub.get("/healthz")[0] == 503
    # The waiting HTTP publisher is refused at once, not after the 10 s commit timeout.
    assert_aws_503(http.join())
    assert http.done_at - released < PROMPTLY
    # The MQTT publish that was waiting is never acknowledged as stored: its connection is
    # ended (MQTT 5 §4.13, 0x80) so that the client sends it again.
    seen = not_acknowledged(publisher, 7)
    if not any(p.type == rawmqtt.DISCONNECT for p in seen):
        ended = publisher.expect_disconnect()
        assert ended is not None
        seen.append(ended)
    assert [p.reason for p in seen if p.type == rawmqtt.DISCONNECT] == [0x80]
    publisher.close()

    # New QoS 1/2 work is refused in each protocol's shape.
    v5 = clean(hub, "late-v5")
    assert v5.publish_acked("orders/late", b"x", 1) == QUOTA_EXCEEDED
    v5.close()
    v311 = clean(hub, "late-v311", version=4)
    v311.publish("orders/late", b"x", qos=1, mid=1)
    assert v311.expect_closed() == []
    started = time.monotonic()
    late = InThread(lambda: iot.publish(topic="orders/late", qos=1, payload=b"x")).join()
    assert_aws_503(late)
    assert late.done_at - started < PROMPTLY
    qos0_flows(hub, "orders/qos0")

    assert len(tracebacks(caplog, "store")) == 1
    assert hub.get("/api/stats")[1]["component_failures"]["store"] == 1
    subscriber.close()
    hub.stop()  # cleanly, with the writer gone
    assert not store._thread.is_alive()


def test_a_queued_page_that_does_not_decode_fails_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub = InProcessHub(tmp_path / "data", **{"mqtt.queue_page_messages": 2})
    try:
        reader = persistent(hub, "reader", "pages/#")
        reader.disconnect()
        publisher = clean(hub, "pager")
        for i in range(6):
            assert publisher.publish_acked("pages/t", b"%d" % i, 1, mid=i + 1) == 0
        # The bodies on disk are damaged behind the hub's back (as a bad disk or a bug would).
        with sqlite3.connect(hub.data_dir / "broker.db", timeout=TIMEOUT) as db:
            db.execute("UPDATE messages SET properties = '{damaged'")
        db.close()
        # Reading the queue back fails to decode: no retry can help.
        back = hub.raw(5)
        back.connect("reader", clean=False, properties={"session_expiry_interval": 3600})
        body = hub.wait_health("failed")
        assert body["components"]["store"].startswith("JSONDecodeError")
        assert publisher.publish_acked("pages/t", b"after", 1, mid=99) == QUOTA_EXCEEDED
        assert len(tracebacks(caplog, "store")) == 1
        back.close()
        publisher.close()
    finally:
        hub.stop()


def test_a_passing_write_error_is_degraded_then_heals_and_acknowledges_late(
    hub: InProcessHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = hub.hub.broker_store
    assert store is not None
    persistent(hub, "keeper", "io/#")
    publisher = clean(hub, "io-pub")
    # An I/O error may heal: the store retries the group and holds its acknowledgements.
    fault = Fault(sqlite3.OperationalError("disk I/O error"), hold=False)
    original = store._commit
    monkeypatch.setattr(store, "_commit", fault)
    publisher.publish("io/t", b"held", qos=1, mid=3)
    body = hub.wait_health("degraded")
    assert hub.get("/healthz")[0] == 200
    assert "disk I/O error" in body["degraded"]["store"]
    assert "components" not in body
    qos0_flows(hub, "io/qos0")  # degraded: QoS 0 keeps working
    monkeypatch.setattr(store, "_commit", original)  # the disk works again
    ack = publisher.expect(rawmqtt.PUBACK)
    assert (ack.mid, ack.reason) == (3, 0)  # stored at last, then acknowledged
    hub.wait_health("ok")
    assert hub.get("/api/stats")[1]["component_failures"]["store"] == 0


# ------------------------------------------------------------------------------ shadows


def test_shadow_writer_fault_answers_pending_and_later_requests_at_once(
    hub: InProcessHub, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    shadows = hub.hub.shadows
    assert shadows is not None
    iot = hub.iot_data()
    device = clean(hub, "lamp-device")
    assert device.subscribe("$aws/things/+/shadow/update/rejected", qos=0) == [0]

    fault = Fault()
    monkeypatch.setattr(shadows, "_apply", fault)
    update = b'{"state": {"desired": {"on": true}}}'
    held = InThread(lambda: iot.update_thing_shadow(thingName="lamp", payload=update))
    assert fault.entered.wait(TIMEOUT)
    # An MQTT request queued behind it: its PUBACK means "received" (shadow/service.py).
    request = b'{"state": {"reported": {"on": true}}, "clientToken": "tok-1"}'
    assert device.publish_acked("$aws/things/lamp2/shadow/update", request, 1) < 0x80
    fault.release.set()
    released = time.monotonic()

    assert_aws_503(held.join())
    assert held.done_at - released < PROMPTLY
    rejected = device.expect(rawmqtt.PUBLISH)
    assert rejected.topic == "$aws/things/lamp2/shadow/update/rejected"
    document = json.loads(rejected.payload)
    assert (document["code"], document["clientToken"]) == (500, "tok-1")
    body = hub.wait_health("failed")
    assert body["components"] == {"shadows": "RuntimeError: injected"}

    # Later requests: answered at once, without a writer to wait for.
    later = InThread(lambda: iot.get_thing_shadow(thingName="lamp")).join()
    assert_aws_503(later)
    device.publish("$aws/things/lamp3/shadow/update", b'{"state": {}, "clientToken": "t2"}')
    document = json.loads(device.expect(rawmqtt.PUBLISH).payload)
    assert (document["code"], document["clientToken"]) == (500, "t2")
    assert fault.calls == 1
    # The message store is not concerned: QoS 1 is still stored and acknowledged.
    assert clean(hub, "other").publish_acked("plain/t", b"x", 1) in (0x00, 0x10)
    assert len(tracebacks(caplog, "shadows")) == 1
    assert hub.get("/api/stats")[1]["component_failures"]["shadows"] == 1
    device.close()


# ------------------------------------------------------------------------------ MessageIds


def test_id_lease_fault_refuses_ids_once_the_lease_on_disk_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A short lease, so that it is half used (and extended in the background) at once.
    hub = InProcessHub(tmp_path / "data", id_lease_ms=200)
    try:
        iot = hub.iot_data()
        iot.publish(topic="ids/t", qos=1, payload=b"first")  # the lease is written
        persistent(hub, "keeper", "ids/#")  # its copies need a MessageId each
        monkeypatch.setattr(RegistryStore, "save_id_lease", Fault(hold=False))
        deadline = time.monotonic() + TIMEOUT
        refused: InThread | None = None
        while refused is None:
            assert time.monotonic() < deadline, "MessageIds were still issued"
            call = InThread(lambda: iot.publish(topic="ids/t", qos=1, payload=b"x")).join()
            if call.error is not None:
                refused = call
        assert_aws_503(refused)
        assert "MessageId" in aws_error(refused)["Error"]["Message"]
        body = hub.wait_health("failed")
        assert body["components"] == {"id-lease": "RuntimeError: injected"}
        # No more lease writes are tried, and every later id is refused at once.
        assert_aws_503(InThread(lambda: iot.publish(topic="ids/t", qos=1, payload=b"y")).join())
        assert clean(hub, "ids-v5").publish_acked("ids/t", b"z", 1) == QUOTA_EXCEEDED
        # An HTTP publish needs a MessageId whatever its QoS; MQTT QoS 0 does not.
        qos0_flows(hub, "ids/qos0", http=False)
        assert len(tracebacks(caplog, "id-lease")) == 1
        assert hub.get("/api/stats")[1]["component_failures"]["id-lease"] == 1
    finally:
        hub.stop()


# ------------------------------------------------------------------------------ nonces


def test_nonce_writer_fault_answers_alibaba_calls_503(
    hub: InProcessHub, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def failing(text: str) -> bytes:
        raise RuntimeError("injected")

    monkeypatch.setattr(nonce_store, "_encode", failing)
    client = hub.acs()
    for attempt in range(2):  # the first one failed the writer; the next is refused at once
        request = PubRequest()
        request.set_endpoint(f"127.0.0.1:{hub.http_port}")
        request.set_protocol_type("http")
        request.set_ProductKey("a1NoSuchPrd")
        request.set_TopicFullName("/a1NoSuchPrd/dev/user/get")
        request.set_MessageContent("eA==")
        started = time.monotonic()
        with pytest.raises(ServerException) as raised:
            client.do_action_with_exception(request)
        assert raised.value.get_http_status() == 503, attempt
        assert raised.value.get_error_code() == "ServiceUnavailable"
        assert time.monotonic() - started < PROMPTLY
    body = hub.wait_health("failed")
    assert body["components"] == {"nonces": "RuntimeError: injected"}
    qos0_flows(hub, "nonces/qos0")
    assert len(tracebacks(caplog, "nonces")) == 1
    assert hub.get("/api/stats")[1]["component_failures"]["nonces"] == 1
