"""The deadline wheel (thinghub/broker/timeouts.py) on the tests' FakeClock: deadlines are
never handed over early and at most one resolution late, one timer serves every armed object
and none is set while nothing is armed, and a sweep does bounded work."""

from __future__ import annotations

import logging

import pytest
from harness import FakeClock
from hypothesis import example, given, settings
from hypothesis import strategies as st

from thinghub.broker.timeouts import Deadlines


class Recorder:
    """``on_due`` that remembers what it was handed and when."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.handed: list[tuple[str, float]] = []

    def __call__(self, obj: str) -> None:
        self.handed.append((obj, self.clock.time()))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.handed]


def wheel(start: float = 1000.0, **kwargs: float) -> tuple[FakeClock, Recorder, Deadlines[str]]:
    clock = FakeClock(start)
    recorder = Recorder(clock)
    return clock, recorder, Deadlines(recorder, clock, **kwargs)  # type: ignore[arg-type]


def test_never_early_and_at_most_one_second_late() -> None:
    clock, seen, deadlines = wheel()
    deadlines.arm("a", 1000.3)
    deadlines.arm("b", 1002.0)
    clock.advance(0.9)
    assert seen.handed == []
    clock.advance(0.1)
    assert seen.handed == [("a", 1001.0)]
    clock.advance(0.99)
    assert seen.names == ["a"]
    clock.advance(0.01)
    assert seen.handed == [("a", 1001.0), ("b", 1002.0)]
    assert len(deadlines) == 0


def test_a_finer_resolution_is_as_precise() -> None:
    clock, seen, deadlines = wheel(resolution=0.25)
    deadlines.arm("a", 1000.3)
    clock.advance(0.45)
    assert seen.handed == []
    clock.advance(0.05)
    assert seen.handed == [("a", 1000.5)]


def test_disarm_and_rearm() -> None:
    clock, seen, deadlines = wheel()
    deadlines.arm("gone", 1001.0)
    deadlines.arm("moved", 1001.0)
    deadlines.disarm("gone")
    deadlines.disarm("never armed")
    deadlines.arm("moved", 1005.0)
    assert deadlines.due_at("moved") == 1005.0
    assert deadlines.due_at("gone") is None
    assert "moved" in deadlines and "gone" not in deadlines
    clock.advance(4)
    assert seen.handed == []
    deadlines.arm("moved", 1004.5)  # earlier again
    clock.advance(2)
    assert seen.handed == [("moved", 1005.0)]


def test_a_deadline_in_the_past_is_handed_over_at_the_next_sweep() -> None:
    clock, seen, deadlines = wheel()
    clock.advance(0.5)
    deadlines.arm("late", 990.0)
    clock.advance(0.5)
    assert seen.handed == [("late", 1001.0)]


def test_one_timer_for_all_and_none_while_empty() -> None:
    clock, seen, deadlines = wheel()
    assert not deadlines.ticking and clock.pending() == []
    for i in range(1000):
        deadlines.arm(f"c{i}", 1000.0 + 10 + i % 90)
    assert deadlines.ticking
    assert len(clock.pending()) == 1
    for i in range(500):
        deadlines.disarm(f"c{i}")
    assert len(clock.pending()) == 1
    clock.advance(100)
    assert sorted(seen.names) == sorted(f"c{i}" for i in range(500, 1000))
    # Everything handed over: the timer is not set again.
    assert not deadlines.ticking and clock.pending() == []


def test_disarming_the_last_object_stops_the_timer() -> None:
    clock, _seen, deadlines = wheel()
    deadlines.arm("only", 1600.0)
    deadlines.disarm("only")
    assert not deadlines.ticking and clock.pending() == []


def test_a_sweep_hands_over_at_most_max_per_tick() -> None:
    _clock, seen, deadlines = wheel(max_per_tick=10)
    for i in range(25):
        deadlines.arm(f"c{i}", 1001.0)
    deadlines.arm("later", 1002.0)
    assert [deadlines.tick(1001.0) for _ in range(4)] == [10, 10, 5, 0]
    assert len(seen.handed) == 25
    assert deadlines.tick(1002.0) == 1


def test_a_crowded_second_finishes_on_the_following_loop_iterations() -> None:
    clock, seen, deadlines = wheel(max_per_tick=10)
    for i in range(25):
        deadlines.arm(f"c{i}", 1001.0)
    clock.advance(1)
    # The rest went in sweeps run without delay (call_later(0)), all at 1001.
    assert len(seen.handed) == 25
    assert {when for _, when in seen.handed} == {1001.0}


def test_rearming_from_on_due_waits_for_the_next_sweep() -> None:
    clock = FakeClock(1000.0)
    handed: list[float] = []

    def again(obj: str) -> None:
        handed.append(clock.time())
        if len(handed) < 3:
            deadlines.arm(obj, clock.time())  # already due: must not loop in this sweep

    deadlines: Deadlines[str] = Deadlines(again, clock)
    deadlines.arm("x", 1001.0)
    clock.advance(10)
    assert handed == [1001.0, 1002.0, 1003.0]


def test_on_due_may_disarm_others_due_in_the_same_sweep() -> None:
    clock = FakeClock(1000.0)
    handed: list[str] = []

    def first_wins(obj: str) -> None:
        handed.append(obj)
        for other in ("a", "b", "c"):
            deadlines.disarm(other)

    deadlines: Deadlines[str] = Deadlines(first_wins, clock)
    for name in ("a", "b", "c"):
        deadlines.arm(name, 1001.0)
    clock.advance(2)
    assert len(handed) == 1 and len(deadlines) == 0


def test_a_failing_handler_costs_only_its_object(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(1000.0)
    handed: list[str] = []

    def fragile(obj: str) -> None:
        if obj == "bad":
            raise RuntimeError("boom")
        handed.append(obj)

    deadlines: Deadlines[str] = Deadlines(fragile, clock)
    for name in ("bad", "good1", "good2"):
        deadlines.arm(name, 1001.0)
    with caplog.at_level(logging.ERROR, logger="thinghub.broker"):
        clock.advance(1)
    assert sorted(handed) == ["good1", "good2"]
    assert "deadline handler failed for 'bad'" in caplog.text


def test_a_long_idle_gap_is_crossed_at_once() -> None:
    clock, seen, deadlines = wheel()
    clock.advance(30 * 24 * 3600)  # a month with nothing armed
    now = clock.time()
    deadlines.arm("a", now + 5)
    deadlines.arm("b", now + 3600)
    clock.advance(5)
    assert seen.handed == [("a", now + 5)]
    # Driven by hand across the gap to "b" in one call.
    assert deadlines.tick(now + 3600) == 1


def test_bad_settings_are_refused() -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match="resolution"):
        Deadlines(print, clock, resolution=0)
    with pytest.raises(ValueError, match="max_per_tick"):
        Deadlines(print, clock, max_per_tick=0)


# Operations: (kind, object index, seconds); arm deadlines are relative to the current time.
_ops = st.lists(
    st.tuples(
        st.sampled_from(["arm", "disarm", "advance"]),
        st.integers(0, 7),
        st.floats(-2.0, 12.0, allow_nan=False),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    ops=_ops,
    resolution=st.sampled_from([0.5, 1.0, 2.0]),
    max_per_tick=st.sampled_from([1, 3, 10_000]),
)
# An idle stretch crossed at once must not skip the slots after it (a deadline re-armed
# earlier was once never handed over).
@example(
    ops=[("advance", 0, 1.0), ("arm", 0, 2.0), ("advance", 0, 1.0), ("arm", 0, 0.0)],
    resolution=0.5,
    max_per_tick=10_000,
)
def test_every_deadline_is_handed_over_once_and_in_its_window(
    ops: list[tuple[str, int, float]], resolution: float, max_per_tick: int
) -> None:
    """Whatever the order of arms, disarms and time passing: an object is handed over exactly
    when its latest deadline has passed, not before, and within one resolution after it."""
    clock, seen, deadlines = wheel(resolution=resolution, max_per_tick=max_per_tick)
    expected: dict[str, float] = {}  # armed object -> its deadline
    latest: dict[str, float] = {}  # armed object -> when it must be handed over at the latest
    for kind, index, seconds in ops:
        name = f"o{index}"
        if kind == "arm":
            now = clock.time()
            expected[name] = now + seconds
            # One resolution after the deadline, or after arming if that was already past.
            latest[name] = max(now, expected[name]) + resolution
            deadlines.arm(name, expected[name])
        elif kind == "disarm":
            expected.pop(name, None)
            latest.pop(name, None)
            deadlines.disarm(name)
        else:
            before = len(seen.handed)
            clock.advance(abs(seconds))
            for obj, when in seen.handed[before:]:
                deadline = expected.pop(obj)
                assert deadline <= when + 1e-9, (obj, deadline, when)
                assert when <= latest.pop(obj) + 1e-9, (obj, deadline, when)
            for obj in expected:
                assert clock.time() < latest[obj] - 1e-9, (obj, latest[obj], clock.time())
        assert len(deadlines) == len(expected)
        assert deadlines.ticking == bool(expected)
    clock.advance(20)
    assert len(deadlines) == 0 and not deadlines.ticking
