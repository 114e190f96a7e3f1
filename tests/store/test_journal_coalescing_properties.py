"""The store's journal coalescing (store/sqlite.py ``_coalesce``) changes how many rows a group
writes, never what ends up stored: any sequence of journal calls committed as ONE group
leaves ``broker.db`` exactly as the same calls committed one at a time (each its own group,
nothing to coalesce). Real SQLite files on both sides; hypothesis draws the calls from a
model of what the broker can report (a delivery is added before its packet id is set, a
release only for a QoS 2 delivery in flight, a body saved before its deliveries)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinghub.message import Message
from thinghub.store.base import StoredDelivery, StoredState, StoredSubscription
from thinghub.store.sqlite import SQLiteStore

SESSIONS = ("acct\x00a", "acct\x00b")

# One journal call, as data: rebuilt into fresh objects for each store, because the coalescer
# may update a StoredDelivery of its group in place.
Call = tuple[Any, ...]


@st.composite
def journal(draw: st.DrawFn) -> list[Call]:
    calls: list[Call] = [("session", key) for key in SESSIONS]
    next_mid = 1
    # Per session: message ids queued (no packet id) and in flight {packet id: (mid, qos)}.
    queued: dict[str, list[tuple[int, int]]] = {key: [] for key in SESSIONS}
    inflight: dict[str, dict[int, tuple[int, int, bool]]] = {key: {} for key in SESSIONS}
    for _ in range(draw(st.integers(1, 40))):
        key = draw(st.sampled_from(SESSIONS))
        kind = draw(
            st.sampled_from(
                ["publish", "send", "release", "complete", "qos2in", "sub", "unsub", "retain"]
            )
        )
        if kind == "publish":
            mid, next_mid = next_mid, next_mid + 1
            qos = draw(st.sampled_from([1, 2]))
            targets = draw(st.lists(st.sampled_from(SESSIONS), min_size=1, max_size=2, unique=True))
            calls.append(("message", mid))
            for target in targets:
                calls.append(("add", target, mid, qos))
                queued[target].append((mid, qos))
        elif kind == "send" and queued[key]:
            mid, qos = queued[key].pop(0)
            free = [p for p in range(1, 65) if p not in inflight[key]]
            pid = draw(st.sampled_from(free))
            calls.append(("packet_id", key, mid, pid))
            inflight[key][pid] = (mid, qos, False)
        elif kind == "release":
            candidates = [p for p, (_m, q, r) in inflight[key].items() if q == 2 and not r]
            if candidates:
                pid = draw(st.sampled_from(candidates))
                mid, qos, _ = inflight[key][pid]
                inflight[key][pid] = (mid, qos, True)
                calls.append(("released", key, pid))
        elif kind == "complete":
            if inflight[key] and draw(st.booleans()):
                pid = draw(st.sampled_from(sorted(inflight[key])))
                mid, _q, _r = inflight[key].pop(pid)
                calls.append(("remove", key, mid))
            elif queued[key]:
                # A queued delivery dropped (expired) before it was sent.
                mid, _q = queued[key].pop(draw(st.integers(0, len(queued[key]) - 1)))
                calls.append(("remove", key, mid))
        elif kind == "qos2in":
            calls.append(("qos2in", key, draw(st.integers(1, 5)), draw(st.booleans())))
        elif kind == "sub":
            calls.append(("sub", key, draw(st.sampled_from(["a/#", "b/+", "c"]))))
        elif kind == "unsub":
            calls.append(("unsub", key, draw(st.sampled_from(["a/#", "b/+", "c"]))))
        elif kind == "retain":
            calls.append(("retain", draw(st.sampled_from(["r/1", "r/2"])), draw(st.booleans())))
    return calls


def apply(store: SQLiteStore, call: Call) -> None:
    kind = call[0]
    actions: dict[str, Callable[[], None]] = {
        "session": lambda: store.save_session(call[1], 3600),
        "message": lambda: store.save_message(
            Message(topic="t", payload=b"m%d" % call[1], qos=1, id=call[1], account="acct")
        ),
        "add": lambda: store.add_delivery(call[1], StoredDelivery(call[2], call[3], False)),
        "packet_id": lambda: store.set_packet_id(call[1], call[2], call[3]),
        "released": lambda: store.set_released(call[1], call[2]),
        "remove": lambda: store.remove_delivery(call[1], call[2]),
        "qos2in": lambda: store.set_inbound_qos2(call[1], call[2], call[3]),
        "sub": lambda: store.save_subscription(call[1], StoredSubscription(call[2], 1)),
        "unsub": lambda: store.delete_subscription(call[1], call[2]),
        "retain": lambda: (
            store.save_retained(
                Message(topic=call[1], payload=b"r", qos=0, retain=True, id=9_000, account="acct")
            )
            if call[2]
            else store.delete_retained("acct", call[1])
        ),
    }
    actions[kind]()


def snapshot(state: StoredState) -> Any:
    sessions = {
        key: (
            sorted(s.subscriptions),
            [(d.message_id, d.qos, d.packet_id, d.released) for d in s.deliveries],
            s.queued,
            s.queued_bytes,
            sorted(s.inbound_qos2),
        )
        for key, s in state.sessions.items()
    }
    messages = {mid: bytes(m.payload) for mid, m in state.messages.items()}
    retained = sorted((m.topic, bytes(m.payload)) for m in state.retained)
    return sessions, messages, retained


def run(calls: list[Call], *, group_each: bool) -> Any:
    with TemporaryDirectory() as directory:
        store = SQLiteStore.open(Path(directory))
        try:
            for call in calls:
                apply(store, call)
                if group_each:
                    assert store.flush(timeout=10)
            assert store.flush(timeout=10)
            return snapshot(store.load())
        finally:
            store.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(journal())
def test_one_coalesced_group_stores_what_the_calls_one_by_one_store(calls: list[Call]) -> None:
    assert run(calls, group_each=False) == run(calls, group_each=True)
