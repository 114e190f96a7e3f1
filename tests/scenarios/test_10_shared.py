"""Shared subscriptions $share/{group}/{filter} (MQTT 5 section 4.8.2; 3.1.1 has none)."""

from __future__ import annotations

import queue
import time

from pahoclient import unique


def test_v5_connack_does_not_deny_shared_subscriptions(raw):
    assert raw(5).connect(unique()).properties.get("shared_subscription_available", 1) == 1


def test_each_message_goes_to_exactly_one_member_of_a_group(client):
    t, group = unique(), unique("g")
    members = [client(5) for _ in range(2)]
    for m in members:
        assert m.subscribe(f"$share/{group}/{t}/#", 1) == 1
    pub = client(5)
    n = 40
    for i in range(n):
        pub.publish(f"{t}/{i % 3}", str(i).encode(), 1)
    got: list[list[bytes]] = [[], []]
    deadline = time.monotonic() + 10
    while len(got[0]) + len(got[1]) < n and time.monotonic() < deadline:
        for idx, member in enumerate(members):
            try:
                got[idx].append(member.messages.get(timeout=0.05).payload)
            except queue.Empty:
                pass
    delivered = got[0] + got[1]
    assert sorted(delivered, key=int) == [str(i).encode() for i in range(n)]  # once each
    assert all(got), f"messages not split among the members: {[len(g) for g in got]}"


def test_groups_and_plain_subscribers_each_get_every_message(client):
    t = unique()
    g1 = client(5)
    g1.subscribe(f"$share/{unique('a')}/{t}", 1)
    g2 = client(5)
    g2.subscribe(f"$share/{unique('b')}/{t}", 1)
    pub = client(5)
    for i in range(5):
        pub.publish(t, str(i).encode(), 1)
    for sub in (g1, g2):  # a group of one gets everything
        assert [m.payload for m in sub.expect_messages(5)] == [str(i).encode() for i in range(5)]


def test_remaining_member_gets_everything_after_the_other_leaves(client):
    t, group = unique(), unique("g")
    stay, leave = client(5), client(5)
    stay.subscribe(f"$share/{group}/{t}", 1)
    leave.subscribe(f"$share/{group}/{t}", 1)
    assert leave.unsubscribe(f"$share/{group}/{t}") == 0
    pub = client(5)
    for i in range(6):
        pub.publish(t, str(i).encode(), 1)
    assert len(stay.expect_messages(6)) == 6
