"""The trace's bounds on a real ``thinghub serve``: ``trace.max_messages`` and
``trace.max_age_s`` evict the oldest traces, ``trace.max_sessions`` keeps the events of a few
sessions per message and counts the rest; an MQTT publish's MessageId is in the debug log."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from tracehub import KEY_ID, SECRET, SecHub, pub, rawmqtt, start, trace, trace_error, wait_for

from thinghub.trace.client import get_json


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecHub]:
    started = start(
        tmp_path_factory.mktemp("small"),
        trace_enabled=True,
        trace_max_messages=3,
        trace_max_sessions=2,
        log_level="DEBUG",
    )
    yield started
    started.stop()


def test_past_max_messages_the_oldest_traces_go(small: SecHub) -> None:
    device = small.device(small.product(f"bound{uuid.uuid4().hex[:8]}"), "dev1")
    topic = device.topic("user/get")
    ids = [pub(small, device.product_key, topic, b"m%d" % n, qos=1) for n in range(5)]
    for message_id in ids[:2]:
        error = trace_error(small, f"/thinghub/trace/{message_id}")
        assert error.status == 404
        assert "keeps the last 3 messages" in error.message
    assert [trace(small, message_id)["messageId"] for message_id in ids[2:]] == [
        str(message_id) for message_id in ids[2:]
    ]


def test_a_fan_out_past_max_sessions_keeps_counts(small: SecHub) -> None:
    topic = f"fan/{uuid.uuid4().hex[:8]}"
    subscribers = [small.raw(4) for _ in range(4)]
    try:
        for number, client in enumerate(subscribers):
            client.connect(f"fan{number}{uuid.uuid4().hex[:6]}")
            assert client.subscribe(topic, qos=0) == [0]
        with small.raw(4) as publisher:
            publisher.connect(f"pub{uuid.uuid4().hex[:8]}")
            publisher.publish(topic, b"to all", qos=0)
            for client in subscribers:
                assert client.expect(rawmqtt.PUBLISH).payload == b"to all"
        base = f"http://{small.host}:{small.http_port}"
        query = [("topic", topic)]
        listed = get_json(base, "/thinghub/trace", query, KEY_ID, SECRET)["messages"]
        assert len(listed) == 1
        message_id = int(listed[0]["messageId"])
        found = trace(small, message_id)
        assert found["counts"]["matched"] == 4 and found["counts"]["sent"] == 4
        assert len(found["sessions"]) == 2 and found["sessionsOmitted"] == 2
        assert all(entry["fate"] == "sent" for entry in found["sessions"])
        # How an MQTT publisher learns the id: the hub's debug log names it (written by the
        # hub's log thread, a moment later).
        wait_for(
            lambda: any(f"message {message_id} from" in line for line in small.output),
            what="the debug line naming the MessageId",
        )
    finally:
        for client in subscribers:
            client.close()


@pytest.fixture(scope="module")
def brief(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecHub]:
    started = start(tmp_path_factory.mktemp("brief"), trace_enabled=True, trace_max_age_s=1)
    yield started
    started.stop()


def test_past_max_age_a_trace_is_gone(brief: SecHub) -> None:
    device = brief.device(brief.product(f"age{uuid.uuid4().hex[:8]}"), "dev1")
    message_id = pub(brief, device.product_key, device.topic("user/get"), b"soon gone", qos=1)
    assert trace(brief, message_id)["messageId"] == str(message_id)
    time.sleep(1.2)  # max_age_s is a deadline on the hub's clock
    assert trace_error(brief, f"/thinghub/trace/{message_id}").status == 404


@pytest.fixture(scope="module")
def budget(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecHub]:
    # No $SYS messages: the count of MQTT publishes left out is the test's own.
    started = start(
        tmp_path_factory.mktemp("budget"),
        trace_enabled=True,
        trace_max_mqtt_per_second=5,
        mqtt_sys_interval=0,
    )
    yield started
    started.stop()


def test_past_the_budget_mqtt_publishes_are_counted_not_traced(budget: SecHub) -> None:
    device = budget.device(budget.product(f"budget{uuid.uuid4().hex[:8]}"), "dev1")
    topic = device.topic("user/get")
    began = time.monotonic()
    with budget.raw(4) as publisher:
        publisher.connect(f"pub{uuid.uuid4().hex[:8]}")
        for number in range(60):
            publisher.publish(topic, b"m%d" % number, qos=0)
        assert publisher.publish_acked(topic, b"last", qos=1) == 0  # all 61 were routed
    # An API call's message is traced whatever the budget: its caller holds the MessageId.
    api_ids = [pub(budget, device.product_key, topic, b"api%d" % n) for n in range(3)]
    seconds = time.monotonic() - began
    scrape = budget.scrape()
    traced = scrape.value("thinghub_trace_messages_total", result="traced")
    over = scrape.value("thinghub_trace_messages_total", result="over_budget")
    assert traced + over == 61 + 3
    # At most 5 MQTT publishes in each second that began (a new second starts at the first
    # publish after the last one ended), however slow this machine is.
    assert traced - 3 <= 5 * (int(seconds) + 1)
    assert over >= 61 - 5 * (int(seconds) + 1)
    for message_id in api_ids:
        assert trace(budget, message_id)["messageId"] == str(message_id)
    base = f"http://{budget.host}:{budget.http_port}"
    listed = get_json(base, "/thinghub/trace", [("topic", topic)], KEY_ID, SECRET)["messages"]
    assert len(listed) == traced
