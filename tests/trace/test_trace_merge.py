"""A cluster's trace of one message, as pure code: each node's part is a real ``report`` of a
real ``TraceRecorder`` (what that node routed), and ``merge`` makes them one document of the
shape a single hub answers (docs/architecture.md, *Delivery trace*), with each session's node,
counts that add up and which nodes answered; ``fit`` bounds a part for the wire. The same on
three real nodes over NATS is tests/cluster/test_cluster_trace.py."""

from __future__ import annotations

import json

from thinghub.message import Message
from thinghub.registry.ids import NODE_BITS, SEQUENCE_BITS
from thinghub.trace import fates
from thinghub.trace.recorder import NO_SUBSCRIBER, NOT_AUTHORIZED, ROUTED, TraceRecorder
from thinghub.trace.render import render
from thinghub.trace.report import CONNECTED, Part, fit, merge, report

ACCOUNT = "acct"
#: a MessageId issued by node number 1 (registry/ids.py: milliseconds, node, sequence)
MESSAGE_ID = (123_456 << (NODE_BITS + SEQUENCE_BITS)) | (1 << SEQUENCE_BITS) | 7


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def node_part(
    name: str,
    number: int,
    *,
    started: float,
    handed: tuple[str, ...] = (),
    acked: tuple[str, ...] = (),
    dropped: tuple[tuple[str, int], ...] = (),
    hidden: tuple[str, ...] = (),
    max_sessions: int = 16,
) -> Part:
    """What node ``name`` answers after routing the message to its sessions: ``handed`` got
    a QoS 1 copy (``acked`` acknowledged it), ``dropped`` lost theirs, ``hidden`` were hidden
    from it (mqtt.deny_subscribe)."""
    clock = Clock(started)
    recorder = TraceRecorder(max_messages=4, max_age_s=60.0, max_sessions=max_sessions, clock=clock)
    message = Message(
        topic="a/b", payload=b"12345", qos=1, id=MESSAGE_ID, account=ACCOUNT, origin="pub-1"
    )
    slot = recorder.begin(message, lambda: 0)
    if hidden:
        recorder.hidden(slot, iter(hidden))
    copies = [*handed, *(client for client, _ in dropped)]
    recorder.handed[slot].extend(copies[:max_sessions])
    recorder.routed(slot, len(copies))
    clock.now += 0.001
    for client in handed:
        recorder.offered(MESSAGE_ID, client, fates.SENT, 1)
    for client, what in dropped:
        recorder.offered(MESSAGE_ID, client, what, 1)  # a full queue refuses a QoS 1 copy
    clock.now += 0.002
    for client in acked:
        recorder.event(MESSAGE_ID, client, fates.ACKNOWLEDGED, 1)
    record = recorder.get(MESSAGE_ID)
    assert record is not None
    return Part(name, answered=True, document=report(record, lambda _c: CONNECTED), number=number)


def three_nodes() -> list[Part]:
    return [
        # n2 answers the request, n1 published (no subscriber of its own), n3 dropped one.
        node_part("n2", 2, started=1000.010, handed=("c2a", "c2b"), acked=("c2a",)),
        node_part("n1", 1, started=1000.000),
        node_part("n3", 3, started=1000.020, handed=("c3a",), dropped=(("c3b", fates.QUEUE_FULL),)),
    ]


def test_parts_of_three_nodes_merge_into_one_trace_with_each_sessions_node() -> None:
    parts = three_nodes()
    merged = merge(MESSAGE_ID, parts)
    assert merged is not None
    published = next(p for p in parts if p.node == "n1").document
    assert published is not None
    # The message's own fields are the publishing node's (its number is in the MessageId)...
    for name in ("messageId", "topic", "qos", "retain", "payloadBytes", "origin", "publishedAt"):
        assert merged[name] == published[name]
    assert merged["publishedOn"] == "n1"
    # ...but it was routed: n1 had no subscriber, n2 and n3 had.
    assert published["outcome"] == NO_SUBSCRIBER
    assert merged["outcome"] == ROUTED
    assert [(s["node"], s["clientId"], s["fate"]) for s in merged["sessions"]] == [
        ("n2", "c2a", "acknowledged"),
        ("n2", "c2b", "in_flight"),
        ("n3", "c3a", "in_flight"),
        ("n3", "c3b", "dropped"),
    ]
    counts = merged["counts"]
    assert (counts["matched"], counts["sent"], counts["acknowledged"]) == (4, 3, 1)
    assert counts["dropped"] == {"queue_full": 1}
    for name in ("matched", "sent", "queued", "acknowledged"):
        assert counts[name] == sum(p.document["counts"][name] for p in parts if p.document)
    assert merged["sessionsOmitted"] == 0
    assert merged["complete"] is True
    assert merged["nodes"] == {
        part.node: {"answered": True, "found": True, "routedAt": part.document["publishedAt"]}
        for part in sorted(parts, key=lambda part: part.node)
        if part.document is not None
    }
    assert list(merged["nodes"]) == ["n1", "n2", "n3"]


def test_the_merged_trace_keeps_every_field_of_a_single_hubs_trace() -> None:
    """The shape only grows (docs/architecture.md, *Delivery trace*): every field a part has,
    the merged trace has, with the same type, and each session every field it had."""
    parts = three_nodes()
    merged = merge(MESSAGE_ID, parts)
    assert merged is not None
    for part in parts:
        assert part.document is not None
        for name, value in part.document.items():
            assert type(merged[name]) is type(value), name
        for name in part.document["counts"]:
            assert name in merged["counts"]
    entries = {(s["node"], s["clientId"]): s for s in merged["sessions"]}
    for part in parts:
        assert part.document is not None
        for entry in part.document["sessions"]:
            assert entries[part.node, entry["clientId"]] == {**entry, "node": part.node}
    json.dumps(merged)  # JSON as it is


def test_a_node_that_did_not_answer_makes_the_trace_partial() -> None:
    n2, n1, _n3 = three_nodes()
    silent = Part("n3", answered=False, error="node n3 did not answer: TimeoutError()")
    merged = merge(MESSAGE_ID, [n2, n1, silent])
    assert merged is not None
    assert merged["complete"] is False
    assert merged["nodes"]["n3"] == {
        "answered": False,
        "found": False,
        "error": "node n3 did not answer: TimeoutError()",
    }
    assert {s["node"] for s in merged["sessions"]} == {"n2"}
    assert merged["counts"]["matched"] == 2
    text = render(merged)
    assert "n3 DID NOT ANSWER (node n3 did not answer: TimeoutError())" in text
    assert "PARTIAL" in text
    assert "c2a  on n2  QoS 1" in text
    assert "n1 (published here)" in text


def test_a_node_with_tracing_off_or_nothing_of_it_answers_no_part() -> None:
    n2, n1, _n3 = three_nodes()
    off = Part("n3", answered=True, tracing=False)
    merged = merge(MESSAGE_ID, [n1, n2, off, Part("n4", answered=True, number=4)])
    assert merged is not None
    assert merged["nodes"]["n3"] == {"answered": True, "found": False, "tracing": False}
    assert merged["nodes"]["n4"] == {"answered": True, "found": False}
    assert merged["complete"] is False  # n3 may have routed it: nobody knows
    assert "n3 (tracing off), n4 (no trace of it)" in render(merged)


def test_no_part_anywhere_is_none() -> None:
    assert merge(MESSAGE_ID, [Part("n1", answered=True, number=1)]) is None
    assert merge(MESSAGE_ID, [Part("n1", answered=False, error="gone")]) is None


def test_without_the_publishing_nodes_part_the_first_node_to_route_it_speaks() -> None:
    n2, _n1, n3 = three_nodes()
    merged = merge(MESSAGE_ID, [n3, n2, Part("n1", answered=False, error="gone")])
    assert merged is not None
    assert merged["publishedOn"] is None
    assert n2.document is not None
    assert merged["publishedAt"] == n2.document["publishedAt"]  # n2 routed it before n3
    assert [s["node"] for s in merged["sessions"]] == ["n2", "n2", "n3", "n3"]
    assert merged["outcome"] == ROUTED


def test_hidden_everywhere_it_matched_is_not_authorised() -> None:
    publisher = node_part("n1", 1, started=1000.0)
    hidden = node_part("n2", 2, started=1000.01, hidden=("c2",))
    merged = merge(MESSAGE_ID, [publisher, hidden])
    assert merged is not None
    assert merged["outcome"] == NOT_AUTHORIZED
    assert "deny_subscribe" in merged["reason"]
    assert merged["counts"]["dropped"] == {"not_authorized": 1}


def test_fit_leaves_out_the_sessions_past_its_bytes_and_counts_them() -> None:
    many = tuple(f"client-{i:03}" for i in range(40))
    part = node_part("n2", 2, started=1000.0, handed=many, acked=many, max_sessions=40)
    document = part.document
    assert document is not None
    same, cut = fit(document)
    assert (same, cut) == (document, 0)
    limit = 4000
    smaller, cut = fit(document, limit)
    assert len(json.dumps(smaller, separators=(",", ":"))) <= limit
    assert 0 < cut < 40
    assert len(smaller["sessions"]) == 40 - cut
    assert smaller["sessions"] == document["sessions"][: 40 - cut]
    assert smaller["sessionsOmitted"] == document["sessionsOmitted"] + cut
    assert document["sessionsOmitted"] == 0 and len(document["sessions"]) == 40  # untouched
    merged = merge(MESSAGE_ID, [Part("n2", True, smaller, 2, cut=cut)])
    assert merged is not None
    assert merged["nodes"]["n2"]["sessionsCut"] == cut
    assert merged["sessionsOmitted"] == cut
    assert merged["counts"]["matched"] == 40  # the counts are whole
