"""The remote interest table (thinghub/cluster/remote.py), fed announcements as the control
subject carries them. What matters: it never says "not interested" while it may be wrong (a
node heard of but not known, a gap in a node's deltas, the moments after connecting), it asks
for a snapshot when it needs one (and not on every heartbeat), and it forgets nodes."""

from __future__ import annotations

from typing import Any

from thinghub.cluster.remote import RemoteInterest


def table() -> RemoteInterest:
    return RemoteInterest("me", node_timeout=5.0, ask_every=2.0)


def snap(node: str, version: int, filters: list[list[str]], part: int = 0, count: int = 1,
         boot: str = "b1") -> dict[str, Any]:  # fmt: skip
    return {"k": "s", "n": node, "b": boot, "v": version, "i": part, "c": count, "a": filters}


def delta(
    node: str,
    before: int,
    after: int,
    added: list[list[str]] | None = None,
    removed: list[list[str]] | None = None,
) -> dict[str, Any]:
    return {"k": "d", "n": node, "b": "b1", "f": before, "v": after,
            "a": added or [], "r": removed or []}  # fmt: skip


def test_a_node_heard_of_but_not_known_counts_as_interested_until_its_snapshot() -> None:
    t = table()
    assert not t.interested("acc", "a/b", 0.0)  # nobody there
    assert t.receive({"k": "h", "n": "n2", "b": "b1", "v": 3}, 0.0) == ["n2"]
    assert t.interested("acc", "anything", 0.1)
    # Asked once per ask_every, not on every heartbeat.
    assert t.receive({"k": "h", "n": "n2", "b": "b1", "v": 3}, 1.0) == []
    assert t.receive({"k": "h", "n": "n2", "b": "b1", "v": 3}, 2.5) == ["n2"]
    assert t.receive(snap("n2", 3, [["acc", "a/+"], ["acc", "$share/g/s/#"]]), 2.6) == []
    assert t.interested("acc", "a/b", 2.7)
    assert t.interested("acc", "s", 2.7)  # '#' matches the parent; shared filters count
    assert not t.interested("acc", "b/a", 2.7)
    assert not t.interested("other", "a/b", 2.7)  # accounts never mix
    assert t.nodes_matching("acc", "a/b") == {"n2"}
    assert t.receive({"k": "h", "n": "n2", "b": "b1", "v": 3}, 3.0) == []


def test_deltas_apply_in_order_and_a_gap_makes_the_node_unknown_again() -> None:
    t = table()
    t.receive(snap("n2", 1, [["acc", "a/#"]]), 0.0)
    assert t.receive(delta("n2", 1, 2, added=[["acc", "b"]], removed=[["acc", "a/#"]]), 0.1) == []
    assert t.interested("acc", "b", 0.2) and not t.interested("acc", "a/x", 0.2)
    # Version 3 went missing: from 3 to 4 is not applicable.
    assert t.receive(delta("n2", 3, 4, added=[["acc", "c"]]), 0.3) == ["n2"]
    assert t.interested("acc", "zzz", 0.3)  # unsure: interested
    t.receive(snap("n2", 4, [["acc", "c"]]), 0.4)
    assert t.interested("acc", "c", 0.5) and not t.interested("acc", "b", 0.5)


def test_a_heartbeat_with_another_version_reveals_a_lost_delta() -> None:
    t = table()
    t.receive(snap("n2", 1, [["acc", "a"]]), 0.0)
    assert not t.interested("acc", "z", 0.1)
    assert t.receive({"k": "h", "n": "n2", "b": "b1", "v": 2}, 0.2) == ["n2"]
    assert t.interested("acc", "z", 0.3)


def test_a_snapshot_in_parts_and_a_missing_part() -> None:
    t = table()
    t.receive({"k": "h", "n": "n2", "b": "b1", "v": 5}, 0.0)
    assert t.receive(snap("n2", 5, [["acc", "a"]], 0, 3), 0.1) == []
    assert t.receive(snap("n2", 5, [["acc", "b"]], 1, 3), 0.1) == []
    assert t.interested("acc", "zzz", 0.1)  # not complete yet
    assert t.receive(snap("n2", 5, [["acc", "c"]], 2, 3), 0.1) == []
    assert not t.interested("acc", "zzz", 0.2)
    assert all(t.interested("acc", topic, 0.2) for topic in "abc")
    # A part out of order: the snapshot is dropped and asked again.
    t2 = table()
    t2.receive(snap("n2", 5, [["acc", "a"]], 0, 3), 0.0)
    assert t2.receive(snap("n2", 5, [["acc", "c"]], 2, 3), 0.1) == ["n2"]
    assert t2.interested("acc", "zzz", 0.1)


def test_a_restarted_node_starts_from_nothing() -> None:
    t = table()
    t.receive(snap("n2", 9, [["acc", "a"]]), 0.0)
    assert t.receive({"k": "h", "n": "n2", "b": "b2", "v": 0}, 1.0) == ["n2"]
    t.receive(snap("n2", 0, [], boot="b2"), 1.1)
    assert not t.interested("acc", "a", 1.2)


def test_nodes_that_stop_or_go_silent_are_forgotten() -> None:
    t = table()
    t.receive(snap("n2", 1, [["acc", "a"]]), 0.0)
    t.receive(snap("n3", 1, [["acc", "b"]], boot="c1"), 0.0)
    t.receive({"k": "x", "n": "n2", "b": "b1"}, 1.0)
    assert not t.interested("acc", "a", 1.1)
    assert t.expire(4.0) == []
    assert t.expire(5.5) == ["n3"]
    assert not t.interested("acc", "b", 5.6) and t.nodes == {}


def test_just_connected_everything_is_interesting_for_a_while() -> None:
    t = table()
    t.blind_for(1.0, 10.0)
    assert t.interested("acc", "a", 10.5) and t.blind(10.5)
    assert not t.interested("acc", "a", 11.0)


def test_own_and_unreadable_announcements_are_ignored() -> None:
    t = table()
    assert t.receive({"k": "h", "n": "me", "b": "x", "v": 1}, 0.0) == []
    assert t.receive({"k": "h", "n": 3}, 0.0) == []
    t.receive(snap("n2", 1, [["acc"], "junk", ["acc", "a"], [1, 2]]), 0.0)
    assert t.interested("acc", "a", 0.1) and t.nodes["n2"].filters == {("acc", "a")}
