"""thinghub.registry.ids: MessageIds (63-bit, time-ordered, unique across restarts), RequestIds."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from thinghub.registry.ids import (
    EPOCH_MS,
    MAX_NODE,
    MemoryLeaseStore,
    MessageIdGenerator,
    decode_message_id,
    new_request_id,
)
from thinghub.registry.store import RegistryStore

T0 = 1_760_000_000_000  # 2025-10-09, some Unix ms


class Clock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_layout_and_decoding() -> None:
    clock = Clock()
    gen = MessageIdGenerator(MemoryLeaseStore(), node=5, clock=clock)
    first = gen.next_id()
    assert 0 < first < 2**63
    assert decode_message_id(first) == (T0, 5, 0)
    assert first == ((T0 - EPOCH_MS) << 22) | (5 << 12)
    assert decode_message_id(gen()) == (T0, 5, 1)  # same millisecond: next sequence
    clock.now += 1
    assert decode_message_id(gen()) == (T0 + 1, 5, 0)


def test_ids_look_like_alibabas() -> None:
    """Reference §5: examples are unquoted 60-61 bit numbers, e.g. 889455942124347329."""
    message_id = MessageIdGenerator(MemoryLeaseStore()).next_id()
    assert 2**57 < message_id < 2**63
    assert str(message_id).isdigit()


def test_sequence_overflow_moves_to_next_millisecond() -> None:
    clock = Clock()
    gen = MessageIdGenerator(MemoryLeaseStore(), clock=clock)
    ids = [gen() for _ in range(4097)]
    assert ids == sorted(ids) and len(set(ids)) == 4097
    assert decode_message_id(ids[4095]) == (T0, 0, 4095)
    assert decode_message_id(ids[4096]) == (T0 + 1, 0, 0)
    # When the clock catches up, ids stay increasing.
    clock.now = T0 + 1
    nxt = gen()
    assert nxt > ids[-1] and decode_message_id(nxt) == (T0 + 1, 0, 1)


def test_clock_stepping_back_keeps_ids_increasing() -> None:
    clock = Clock()
    gen = MessageIdGenerator(MemoryLeaseStore(), clock=clock)
    before = [gen() for _ in range(3)]
    clock.now -= 60_000
    after = [gen() for _ in range(3)]
    assert before + after == sorted(before + after)
    assert len(set(before + after)) == 6


def test_lease_is_saved_rarely_and_ahead_of_issued_ids() -> None:
    clock = Clock()
    lease = MemoryLeaseStore()
    gen = MessageIdGenerator(lease, clock=clock, lease_ms=10_000)
    for step in range(100):
        clock.now = T0 + step * 100  # 10 seconds of ids
        message_id = gen()
        assert decode_message_id(message_id).unix_ms < lease.lease_ms
    assert lease.saves == 1
    clock.now = T0 + 10_000
    gen()
    assert lease.saves == 2 and lease.lease_ms == T0 + 20_000


def test_restart_never_repeats_even_with_the_clock_set_back(tmp_path: Path) -> None:
    clock = Clock()
    store = RegistryStore.open(tmp_path)
    gen = MessageIdGenerator(store, clock=clock)
    issued = [gen() for _ in range(5000)]  # spills into the next millisecond
    store.close()  # as good as kill -9: nothing is written at shutdown

    clock.now = T0 - 3_600_000  # the clock went back an hour
    store = RegistryStore.open(tmp_path)
    try:
        restarted = MessageIdGenerator(store, clock=clock)
        later = [restarted() for _ in range(100)]
    finally:
        store.close()
    assert min(later) > max(issued)
    assert later == sorted(later)


def test_restart_within_the_same_millisecond() -> None:
    clock = Clock()
    lease = MemoryLeaseStore()
    first = MessageIdGenerator(lease, clock=clock)
    a = [first() for _ in range(10)]
    second = MessageIdGenerator(lease, clock=clock)  # same ms, same node
    b = [second() for _ in range(10)]
    assert min(b) > max(a)


def test_failed_lease_write_issues_nothing_and_retries() -> None:
    class Flaky(MemoryLeaseStore):
        fail = True

        def save_id_lease(self, lease_ms: int) -> None:
            if self.fail:
                raise OSError("disk full")
            super().save_id_lease(lease_ms)

    store = Flaky()
    gen = MessageIdGenerator(store, clock=Clock())
    with pytest.raises(OSError):
        gen()
    store.fail = False
    message_id = gen()
    assert decode_message_id(message_id).unix_ms < store.lease_ms


def test_unique_across_threads() -> None:
    gen = MessageIdGenerator(MemoryLeaseStore())
    results: list[list[int]] = [[] for _ in range(4)]

    def work(out: list[int]) -> None:
        out.extend(gen() for _ in range(5000))

    threads = [threading.Thread(target=work, args=(r,)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for r in results for i in r]
    assert len(set(everything)) == 20_000
    for r in results:
        assert r == sorted(r)


def test_nodes_do_not_collide() -> None:
    clock = Clock()
    a = MessageIdGenerator(MemoryLeaseStore(), node=0, clock=clock)
    b = MessageIdGenerator(MemoryLeaseStore(), node=MAX_NODE, clock=clock)
    assert {a() for _ in range(100)}.isdisjoint({b() for _ in range(100)})


@pytest.mark.parametrize("node", [-1, MAX_NODE + 1])
def test_node_out_of_range(node: int) -> None:
    with pytest.raises(ValueError):
        MessageIdGenerator(MemoryLeaseStore(), node=node)


def test_bad_lease_and_out_of_range_clock() -> None:
    with pytest.raises(ValueError):
        MessageIdGenerator(MemoryLeaseStore(), lease_ms=0)
    gen = MessageIdGenerator(MemoryLeaseStore(), clock=Clock(EPOCH_MS - 1))
    with pytest.raises(OverflowError):
        gen()


def test_request_id_is_uppercase_uuid4() -> None:
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    for request_id in ids:
        assert re.fullmatch(
            r"[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}", request_id
        )
        assert uuid.UUID(request_id).version == 4


def test_with_renew_the_lease_is_extended_off_the_callers_thread_before_it_runs_out() -> None:
    clock = Clock()
    lease = MemoryLeaseStore()
    queued: list[Callable[[], None]] = []  # renew's work, run when the test says
    gen = MessageIdGenerator(lease, clock=clock, lease_ms=10_000, renew=queued.append)
    gen()
    assert lease.saves == 1 and lease.lease_ms == T0 + 10_000  # the first lease: at once
    clock.now = T0 + 4_999
    gen()
    assert queued == []  # less than half used
    clock.now = T0 + 5_000
    gen()
    gen()
    assert len(queued) == 1 and lease.saves == 1  # one renewal asked for, not yet written
    queued.pop()()
    assert lease.saves == 2 and lease.lease_ms == T0 + 20_000
    clock.now = T0 + 12_000  # past the first lease: no write on the caller's thread now
    assert decode_message_id(gen()).unix_ms < lease.lease_ms
    assert lease.saves == 2


def test_a_late_background_save_never_lowers_the_stored_lease(tmp_path: Path) -> None:
    clock = Clock()
    store = RegistryStore.open(tmp_path)
    queued: list[Callable[[], None]] = []
    try:
        gen = MessageIdGenerator(store, clock=clock, lease_ms=10_000, renew=queued.append)
        gen()
        clock.now = T0 + 6_000
        gen()  # renewal to T0 + 20,000 asked for, left waiting
        clock.now = T0 + 30_000
        issued = gen()  # the lease ran out: written at once, to T0 + 40,000
        queued.pop()()  # the old renewal lands late
        assert store.load_id_lease() == T0 + 40_000
        assert decode_message_id(issued).unix_ms < store.load_id_lease()
    finally:
        store.close()
    store = RegistryStore.open(tmp_path)
    try:
        assert min(MessageIdGenerator(store, clock=clock)() for _ in range(3)) > issued
    finally:
        store.close()


# The fast path (module notes, "Cost"): the ids of a millisecond after its first come from an
# iterator, without the lock; the lease and the clock are checked once per millisecond.


class Recording(MemoryLeaseStore):
    """A lease store that can be made to fail, and is checked on every save."""

    fail = False

    def save_id_lease(self, lease_ms: int) -> None:
        if self.fail:
            raise OSError("disk full")
        super().save_id_lease(lease_ms)


def test_fast_path_ids_are_strictly_increasing_and_below_the_lease_across_renewals() -> None:
    # The wall clock, and a lease of 1 ms: every millisecond writes a new lease on the
    # caller's thread, so the fast path and the lease alternate all the time.
    lease = MemoryLeaseStore()
    gen = MessageIdGenerator(lease, lease_ms=1)
    issued = []
    for _ in range(50_000):
        message_id = gen()
        assert decode_message_id(message_id).unix_ms < lease.lease_ms
        issued.append(message_id)
    assert issued == sorted(issued) and len(set(issued)) == len(issued)
    assert lease.saves >= len({decode_message_id(i).unix_ms for i in issued})


def test_fast_path_with_background_renewal_never_passes_the_lease_on_disk() -> None:
    lease = MemoryLeaseStore()
    renewals: list[threading.Thread] = []

    def renew(work: Callable[[], None]) -> None:
        thread = threading.Thread(target=work)
        renewals.append(thread)
        thread.start()

    gen = MessageIdGenerator(lease, lease_ms=4, renew=renew)
    issued = []
    for _ in range(50_000):
        message_id = gen()
        assert decode_message_id(message_id).unix_ms < lease.lease_ms
        issued.append(message_id)
    for thread in renewals:
        thread.join(timeout=10)
    assert issued == sorted(issued) and len(set(issued)) == len(issued)
    # A new process on the same store issues above every id of this one.
    restarted = MessageIdGenerator(lease)
    assert min(restarted() for _ in range(100)) > issued[-1]


def test_a_restart_within_the_millisecond_of_fast_path_ids_never_repeats_one() -> None:
    clock = Clock()
    lease = MemoryLeaseStore()
    first = MessageIdGenerator(lease, clock=clock)
    before = [first() for _ in range(1000)]  # one millisecond: all but one by the fast path
    assert {decode_message_id(i).unix_ms for i in before} == {T0}
    second = MessageIdGenerator(lease, clock=clock)
    assert min(second() for _ in range(1000)) > max(before)


def test_the_fast_path_follows_the_clock() -> None:
    clock = Clock()
    gen = MessageIdGenerator(MemoryLeaseStore(), clock=clock)
    assert [decode_message_id(gen()) for _ in range(3)] == [(T0, 0, 0), (T0, 0, 1), (T0, 0, 2)]
    clock.now = T0 + 7
    assert decode_message_id(gen()) == (T0 + 7, 0, 0)
    clock.now = T0 + 5  # back: the generator keeps its own millisecond
    assert decode_message_id(gen()) == (T0 + 7, 0, 1)


def test_a_failed_lease_write_stops_ids_at_the_leased_millisecond() -> None:
    clock = Clock()
    store = Recording()
    gen = MessageIdGenerator(store, clock=clock, lease_ms=1)
    last = gen()
    assert store.lease_ms == T0 + 1
    store.fail = True
    # Within the leased millisecond the fast path goes on (those ids are below the lease)...
    more = [gen() for _ in range(10)]
    assert more == sorted(more) and more[0] > last
    # ...but none is issued past it until the lease is written.
    clock.now = T0 + 1
    for _ in range(3):
        with pytest.raises(OSError):
            gen()
    store.fail = False
    after = gen()
    assert after > more[-1] and decode_message_id(after) == (T0 + 1, 0, 0)


def test_fast_path_is_unique_and_ordered_across_threads() -> None:
    # Four threads, a 1 ms lease written on whichever thread starts a millisecond, and calls
    # that do not overlap (the test's lock) must come out in increasing order whatever thread
    # makes them; calls that overlap must still never share an id.
    gen = MessageIdGenerator(MemoryLeaseStore(), lease_ms=1)
    ordered: list[int] = []
    free: list[list[int]] = [[] for _ in range(4)]
    turn = threading.Lock()

    def work(out: list[int]) -> None:
        for _ in range(5000):
            out.append(gen())
            with turn:
                ordered.append(gen())

    threads = [threading.Thread(target=work, args=(r,)) for r in free]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = ordered + [i for r in free for i in r]
    assert len(set(everything)) == len(everything) == 40_000
    assert ordered == sorted(ordered)
    for r in free:
        assert r == sorted(r)
