"""The pure parts of the cluster's message stream and persistent sessions: the ticket an
acknowledgement waits on (cluster/stream.py), a JetStream delivery's reply subject and a
session record's expiry (cluster/consumers.py)."""

from __future__ import annotations

from thinghub.cluster.consumers import _expired, ack_metadata
from thinghub.cluster.stream import QUOTA_EXCEEDED, UNSPECIFIED, Ticket


def test_a_ticket_calls_back_once_all_its_parts_are_in_with_the_first_refusal() -> None:
    outcomes: list[int] = []
    empty = Ticket()
    empty.then(outcomes.append)
    assert outcomes == [0]  # nothing to wait for

    ticket = Ticket()
    first, second, third = ticket.part(), ticket.part(), ticket.part()
    ticket.then(outcomes.append)
    first(0)
    second(QUOTA_EXCEEDED)
    assert outcomes == [0]
    third(UNSPECIFIED)
    assert outcomes == [0, QUOTA_EXCEEDED]
    ticket.then(outcomes.append)  # late: answered at once
    assert outcomes == [0, QUOTA_EXCEEDED, QUOTA_EXCEEDED]


def test_the_delivery_count_and_stream_sequence_come_from_the_reply_subject() -> None:
    assert ack_metadata(b"$JS.ACK.thinghub_msgs.s1234.3.42.7.1700000000000000000.0") == (3, 42)
    # nats-server 2.10+: domain and account hash first, a random token last.
    assert ack_metadata(b"$JS.ACK.hub.ACC.thinghub_msgs.s1.1.9.9.170.0.tok") == (1, 9)
    assert ack_metadata(b"not.a.reply") == (1, 0)


def test_a_session_record_expires_its_interval_after_it_went_offline() -> None:
    record = {"e": 60, "d": 1_000_000}
    assert not _expired(record, 1_000 + 59.9)
    assert _expired(record, 1_000 + 60)
    assert not _expired({"e": 60, "d": None}, 10**12)  # connected
    assert not _expired({"e": 0xFFFFFFFF, "d": 1}, 10**12)  # never expires
