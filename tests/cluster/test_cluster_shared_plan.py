"""One copy per shared group across the cluster (thinghub/cluster/shared.py): the publishing
node gives each group's copy to its nodes in turn, and each node's fan-out keeps only the
groups given to it, or given to nobody (groups the publishing node did not know of)."""

from __future__ import annotations

import time

from thinghub.broker.queue import DeliveryContext
from thinghub.broker.session import Session, SharedGroup, SubscriptionEntry
from thinghub.broker.stats import Stats
from thinghub.cluster.shared import SharePlan, SharePlanner
from thinghub.config import MQTTSettings
from thinghub.store.memory import MemoryStore


def test_each_groups_copies_go_to_its_nodes_in_turn() -> None:
    planner = SharePlanner("n1")
    remote = {("g", "a/+"): ["n3", "n2"]}
    chosen = [planner.plan("acc", [("g", "a/+")], remote)[("g", "a/+")] for _ in range(6)]
    assert chosen == ["n2", "n3", "n1", "n2", "n3", "n1"]
    # Only remote members, only local members; groups are per account.
    assert planner.plan("acc", [], {("h", "x"): ["n2"]}) == {("h", "x"): "n2"}
    assert planner.plan("other", [("g", "a/+")], {}) == {("g", "a/+"): "n1"}


def test_a_node_keeps_the_groups_given_to_it_or_to_nobody() -> None:
    context = DeliveryContext(MQTTSettings(), MemoryStore(), Stats(), time, lambda: 1)
    session = Session("c", 0, "acc", context)
    entry = SubscriptionEntry(session=session, full_filter="a/+", topic_filter="a/+", qos=1)

    def group(name: str) -> SharedGroup:
        return SharedGroup(name=name, topic_filter="a/+", members=[entry])

    mine, theirs, unknown = group("mine"), group("theirs"), group("unknown")
    matches = (
        ("c", entry),
        (("$share", "mine"), mine),
        (("$share", "theirs"), theirs),
        (("$share", "unknown"), unknown),
    )
    plan = SharePlan("n1", {("mine", "a/+"): "n1", ("theirs", "a/+"): "n2"})
    assert [value for _key, value in plan.keep(matches)] == [entry, mine, unknown]
