"""RecordFilters (thinghub/cluster/recordfilters.py): which topics the cluster's persistent
session records wait for at QoS 1/2, by account, as records come, change and go."""

from __future__ import annotations

from typing import Any

from thinghub.cluster.recordfilters import RecordFilters
from thinghub.cluster.subjects import escape_level


def record(*subscriptions: tuple[str, int]) -> dict[str, Any]:
    return {"v": 1, "n": "c1", "s": [{"f": f, "q": q, "c": ["s1"]} for f, q in subscriptions]}


def key(account: str, client_id: str) -> str:
    return f"{escape_level(account)}.{escape_level(client_id)}"


def test_a_records_qos1_and_qos2_filters_take_matching_topics_of_its_account_only() -> None:
    filters = RecordFilters()
    filters.put(key("acct", "dev"), record(("a/+/c", 1), ("b/#", 2), ("zero/#", 0)))
    assert filters.takes("acct", "a/x/c")
    assert filters.takes("acct", "b") and filters.takes("acct", "b/deep/er")
    assert not filters.takes("acct", "a/x/d")
    # A QoS 0 subscription has no consumer: nothing waits for the message.
    assert not filters.takes("acct", "zero/x")
    # Another account's topics are another matter.
    assert not filters.takes("other", "a/x/c")


def test_shared_filters_count_by_their_topic_filter_and_dollar_topics_follow_4_7_2() -> None:
    filters = RecordFilters()
    filters.put(key("acct", "m1"), record(("$share/g/s/+", 1), ("#", 1)))
    assert filters.takes("acct", "s/1")
    assert filters.takes("acct", "anything/at/all")
    # A filter starting with a wildcard matches no topic starting with "$" [MQTT-4.7.2-1].
    assert not filters.takes("acct", "$SYS/x")


def test_a_changed_record_replaces_its_filters_and_a_dropped_one_takes_nothing() -> None:
    filters = RecordFilters()
    k = key("acct", "dev")
    filters.put(k, record(("old/#", 1)))
    filters.put(key("acct", "other"), record(("old/kept", 1)))
    filters.put(k, record(("new/#", 1)))
    assert filters.takes("acct", "new/1")
    assert not filters.takes("acct", "old/1")
    assert filters.takes("acct", "old/kept")
    filters.drop(k)
    assert not filters.takes("acct", "new/1")
    assert len(filters) == 1
    filters.drop(k)  # twice: harmless
    filters.reset({key("b", "x"): record(("t", 1))})
    assert filters.takes("b", "t") and not filters.takes("acct", "old/kept")
    assert len(filters) == 1


def test_records_it_cannot_read_count_for_nothing() -> None:
    filters = RecordFilters()
    filters.put("not=zzescaped.key", record(("a", 1)))
    filters.put(
        key("acct", "odd"), {"s": [{"q": 1}, {"f": "ok", "q": "x"}, "junk", {"f": "a/#/b", "q": 1}]}
    )
    filters.put(key("acct", "dup"), record(("d/#", 1), ("$share/g/d/#", 2)))
    assert not filters.takes("acct", "a")
    assert not filters.takes("acct", "ok")
    assert filters.takes("acct", "d/1")
    filters.drop(key("acct", "dup"))
    assert not filters.takes("acct", "d/1")
