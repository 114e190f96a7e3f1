"""Pure parts of the cluster-wide APIs: a session's description as it crosses between nodes
(cluster/sessionops.py), and rate limits divided between the live nodes (http/ratelimit.py)."""

from __future__ import annotations

import pytest

from thinghub.cluster.sessionops import SessionInfo, SubscriptionInfo
from thinghub.http.ratelimit import RateLimiter


def test_a_session_description_crosses_unchanged() -> None:
    info = SessionInfo(
        client_id="c/ü 1",
        node="n2",
        connected=True,
        expiry_interval=300,
        protocol=5,
        keep_alive=30,
        connected_at_ms=1_700_000_000_000,
        disconnected_at_ms=None,
        disconnect_reason=None,
        peer="127.0.0.1:5000",
        local="127.0.0.1:1883",
        queued=7,
        subscriptions=(
            SubscriptionInfo("a/+", 1, 12, True, False, 2, 9),
            SubscriptionInfo("$share/g/b/#", 0, 13, False, True, 0, None),
        ),
    )
    assert SessionInfo.from_wire(info.to_wire()) == info
    for junk in ({}, {**info.to_wire(), "s": [[1]]}, {**info.to_wire(), "x": "soon"}):
        with pytest.raises(ValueError):
            SessionInfo.from_wire(junk)


def test_each_node_enforces_its_share_of_a_rate() -> None:
    now = [0.0]
    nodes = [3]
    limiter = RateLimiter({"Pub": 6}, clock=lambda: now[0])
    limiter.nodes = lambda: nodes[0]
    # 6 per second for the cluster, 3 nodes: 2 here, at once and then per second.
    assert [limiter.allow("acct", "Pub") for _ in range(3)] == [True, True, False]
    now[0] += 0.5
    assert [limiter.allow("acct", "Pub") for _ in range(2)] == [True, False]
    # Two nodes gone: this one's share grows to the whole rate (what it held until now was
    # its old share: the bucket fills up to the new one from there).
    nodes[0] = 1
    now[0] += 1.0
    assert sum(limiter.allow("acct", "Pub") for _ in range(10)) == 2
    now[0] += 1.0
    assert sum(limiter.allow("acct", "Pub") for _ in range(10)) == 6
    # Below one per second per node, a node still lets one request through when it is due.
    nodes[0] = 4
    slow = RateLimiter({"Rare": 1}, clock=lambda: now[0])
    slow.nodes = lambda: nodes[0]
    assert [slow.allow("acct", "Rare") for _ in range(2)] == [True, False]
    now[0] += 3.9
    assert not slow.allow("acct", "Rare")
    now[0] += 0.2
    assert slow.allow("acct", "Rare")
