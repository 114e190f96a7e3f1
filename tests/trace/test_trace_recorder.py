"""The trace recorder and its report, as pure code: bounds (the ring of max_messages, age,
sessions per message, events per session), the counts a report derives, and a copy left
queued by a session that ended. The hub-level behaviour is in test_trace_delivery.py and
test_trace_bounds.py."""

from __future__ import annotations

import itertools
import time

from thinghub.message import Message
from thinghub.registry.errors import StorageFull
from thinghub.trace import fates
from thinghub.trace.recorder import (
    EVENTS_PER_SESSION,
    NO_SUBSCRIBER,
    REFUSED,
    ROUTED,
    UNTRACED,
    TraceRecorder,
)
from thinghub.trace.render import render
from thinghub.trace.report import CONNECTED, ENDED, report, summary


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


IDS = itertools.count(1000)


def new_id() -> int:
    return next(IDS)


def recorder(clock: Clock, **bounds: float) -> TraceRecorder:
    settings = {"max_messages": 3, "max_age_s": 60.0, "max_sessions": 2, **bounds}
    return TraceRecorder(
        max_messages=int(settings["max_messages"]),
        max_age_s=settings["max_age_s"],
        max_sessions=int(settings["max_sessions"]),
        max_mqtt_per_second=int(settings.get("max_mqtt_per_second", 0)),
        clock=clock,
    )


def message(message_id: int = 0, qos: int = 1, topic: str = "t/1", account: str = "") -> Message:
    return Message(topic=topic, payload=b"abc", qos=qos, id=message_id, account=account)


def test_past_max_messages_a_new_message_takes_the_oldest_slot() -> None:
    traces = recorder(Clock(), max_messages=3)
    for message_id in range(1, 6):
        traces.begin(message(message_id), new_id)
    assert len(traces) == 3
    assert [traces.get(i) is not None for i in range(1, 6)] == [False, False, True, True, True]
    assert [t.id for t in traces.recent("")] == [5, 4, 3]


def test_traces_older_than_max_age_are_not_shown() -> None:
    clock = Clock()
    traces = recorder(clock, max_age_s=10)
    traces.begin(message(1), new_id)
    clock.now += 5
    traces.begin(message(2), new_id)
    clock.now += 6  # message 1 is 11 s old, message 2 only 6
    assert traces.get(1) is None and traces.get(2) is not None
    assert [t.id for t in traces.recent("")] == [2]
    clock.now += 11
    assert traces.get(2) is None and traces.recent("") == []


def test_a_message_without_an_id_gets_one_and_the_hubs_statistics_none() -> None:
    traces = recorder(Clock())
    plain = message()
    slot = traces.begin(plain, new_id)
    assert slot != UNTRACED and plain.id >= 1000 and traces.get(plain.id) is not None
    stats = message(topic="$SYS/broker/uptime")
    assert traces.begin(stats, new_id) == UNTRACED and stats.id == 0


def test_no_id_no_trace_and_the_message_goes_on() -> None:
    def full() -> int:
        raise StorageFull("the disk is full")

    traces = recorder(Clock())
    plain = message()
    assert traces.begin(plain, full) == UNTRACED and plain.id == 0 and len(traces) == 0


def test_the_same_id_is_one_trace() -> None:
    traces = recorder(Clock())
    first = traces.begin(message(7, topic="a"), new_id)
    assert traces.begin(message(7, topic="b"), new_id) == first
    traces.direct(message(7), "c1", new_id)
    traces.direct(message(7), "c2", new_id)
    found = traces.get(7)
    assert found is not None
    assert (found.copies, found.handed, found.outcome) == (2, ["c1", "c2"], ROUTED)


def test_sessions_past_the_cap_are_counted_not_kept() -> None:
    traces = recorder(Clock(), max_sessions=2)
    traces.begin(message(1), new_id)
    for client in ("a", "b", "c", "d"):
        traces.offered(1, client, fates.SENT, 1)
        traces.event(1, client, fates.ACKNOWLEDGED, 1)
    found = traces.get(1)
    assert found is not None and found.sessions is not None and found.counts is not None
    assert list(found.sessions) == ["a", "b"]
    assert found.counts[fates.SENT] == 4 and found.counts[fates.ACKNOWLEDGED] == 4


def test_a_session_keeps_its_first_events_and_always_the_latest() -> None:
    clock = Clock()
    traces = recorder(clock)
    traces.begin(message(1), new_id)
    traces.offered(1, "a", fates.SENT, 1)
    for _ in range(EVENTS_PER_SESSION + 3):
        clock.now += 1
        traces.event(1, "a", fates.RESENT, 1)
    traces.event(1, "a", fates.ACKNOWLEDGED, 1)
    found = traces.get(1)
    assert found is not None and found.sessions is not None
    kept = found.sessions["a"]
    assert len(kept) == EVENTS_PER_SESSION
    assert kept[0][0] == fates.SENT and kept[-1][0] == fates.ACKNOWLEDGED


def test_unknown_messages_are_ignored() -> None:
    traces = recorder(Clock())
    traces.event(42, "a", fates.SENT, 1)
    traces.offered(42, "a", fates.QUEUED, 1)
    assert traces.get(42) is None and len(traces) == 0


def test_report_of_a_qos0_fan_out_counts_copies_without_events() -> None:
    traces = recorder(Clock(), max_sessions=2)
    slot = traces.begin(message(1, qos=0), new_id)
    # What fan_out and the broker report for five QoS 0 copies, one of them to a slow client.
    traces.handed[slot].extend(["a", "b"])
    traces.routed(slot, 5)
    traces.event(1, "e", fates.SLOW_CONSUMER)
    found = traces.get(1)
    assert found is not None
    body = report(found, lambda _client: CONNECTED)
    assert body["outcome"] == ROUTED
    assert body["counts"]["matched"] == 5
    assert body["counts"]["sent"] == 4
    assert body["counts"]["dropped"] == {"slow_consumer": 1}
    shown = {entry["clientId"]: entry for entry in body["sessions"]}
    assert set(shown) == {"a", "b", "e"}
    assert shown["a"]["fate"] == "sent" and shown["a"]["events"][0]["afterMs"] == 0
    assert (shown["e"]["fate"], shown["e"]["reason"]) == ("dropped", "slow_consumer")
    assert body["sessionsOmitted"] == 3
    text = render(body)
    assert "slow consumer" in text and "3 more session(s)" in text


def test_a_copy_queued_for_a_session_that_is_gone_is_reported_dropped() -> None:
    traces = recorder(Clock())
    slot = traces.begin(message(1), new_id)
    traces.handed[slot].append("a")
    traces.routed(slot, 1)
    traces.offered(1, "a", fates.QUEUED, 1)
    found = traces.get(1)
    assert found is not None
    entry = report(found, lambda _client: ENDED)["sessions"][0]
    assert (entry["fate"], entry["reason"], entry["session"]) == (
        "dropped",
        "session_ended",
        "ended",
    )


def test_a_refusal_says_why() -> None:
    traces = recorder(Clock())
    slot = traces.begin(message(1), new_id)
    traces.outcome(slot, REFUSED, "denied by the hub's configuration")
    found = traces.get(1)
    assert found is not None
    body = summary(found)
    assert (body["outcome"], body["reason"]) == (REFUSED, "denied by the hub's configuration")
    assert "refused when it was published: denied" in render(report(found, lambda _c: ENDED))


def test_summary_shape() -> None:
    clock = Clock()
    traces = recorder(clock)
    traces.begin(message(2**62 + 5, qos=1, topic="x/y", account="acct"), new_id)
    found = traces.get(2**62 + 5)
    assert found is not None
    body = summary(found)
    published = body.pop("publishedAt")
    assert published.endswith("Z") and len(published) == len("2026-12-05T10:00:00.123Z")
    assert body == {
        "messageId": str(2**62 + 5),
        "topic": "x/y",
        "qos": 1,
        "retain": False,
        "payloadBytes": 3,
        "origin": "",
        "outcome": NO_SUBSCRIBER,
        "counts": {
            "matched": 0,
            "sent": 0,
            "queued": 0,
            "resent": 0,
            "received": 0,
            "acknowledged": 0,
            "dropped": {},
        },
    }
    assert [t.id for t in traces.recent("acct", "x/y")] == [2**62 + 5]
    assert traces.recent("acct", "other") == [] and traces.recent("someone else") == []


def test_a_reused_slot_starts_clean_and_an_earlier_read_keeps_what_it_read() -> None:
    # The slot's handed list is reused by its next message (recorder.py, "What it costs"):
    # a trace read before must not change under its reader.
    traces = recorder(Clock(), max_messages=1)
    slot = traces.begin(message(1), new_id)
    traces.handed[slot].extend(["a", "b"])
    traces.routed(slot, 2)
    traces.offered(1, "a", fates.SENT, 1)
    traces.outcome(slot, REFUSED, "why")
    read = traces.get(1)
    assert read is not None
    assert traces.begin(message(2), new_id) == slot and traces.get(1) is None
    assert read.handed == ["a", "b"] and read.copies == 2
    fresh = traces.get(2)
    assert fresh is not None
    assert (fresh.handed, fresh.copies, fresh.outcome, fresh.reason) == ([], 0, NO_SUBSCRIBER, "")
    assert (fresh.sessions, fresh.offered, sum(fresh.counts)) == (None, 0, 0)


def test_with_the_monotonic_clock_a_message_starts_at_the_brokers_stamp() -> None:
    traces = TraceRecorder(max_messages=4, max_age_s=60.0, max_sessions=2)
    stamped = message()
    stamped.received_at = time.monotonic() - 1.5  # Broker._route stamps each message
    traces.begin(stamped, new_id)
    found = traces.get(stamped.id)
    assert found is not None and found.started == stamped.received_at
    unstamped = message()  # refused before routing: no stamp, the clock is read
    before = time.monotonic()
    traces.begin(unstamped, new_id)
    found = traces.get(unstamped.id)
    assert found is not None and before <= found.started <= time.monotonic()
    # Another clock is not the broker's: the stamp is not used.
    clock = Clock()
    other = recorder(clock)
    stamped_again = message()
    stamped_again.received_at = 5.0
    other.begin(stamped_again, new_id)
    found = other.get(stamped_again.id)
    assert found is not None and found.started == clock.now


def test_mqtt_publishes_past_the_budget_get_no_id_and_are_counted() -> None:
    clock = Clock()
    traces = recorder(clock, max_messages=100, max_mqtt_per_second=3)
    first = [message(0) for _ in range(5)]
    slots = [traces.begin(m, new_id) for m in first]
    assert slots[3:] == [UNTRACED, UNTRACED]
    assert [m.id != 0 for m in first] == [True, True, True, False, False]
    assert (traces.traced, traces.over_budget) == (3, 2)
    # A message with a MessageId (an API call's) is traced whatever the budget.
    assert traces.begin(message(7), new_id) != UNTRACED
    clock.now += 0.999
    assert traces.begin(message(0), new_id) == UNTRACED
    clock.now += 0.001  # a new second: a new budget
    again = [message(0) for _ in range(4)]
    assert [traces.begin(m, new_id) == UNTRACED for m in again] == [False, False, False, True]
    assert (traces.traced, traces.over_budget) == (7, 4)


def test_without_a_budget_every_mqtt_publish_is_traced() -> None:
    traces = recorder(Clock(), max_messages=10_000)
    assert all(traces.begin(message(0), new_id) != UNTRACED for _ in range(5_000))
    assert (traces.traced, traces.over_budget) == (5_000, 0)
