"""Deadlines of many objects on one timer: the CONNECT timeout and the keep alive of every
connection, without an event-loop timer per connection.

A timer per connection is the largest thing an idle connection holds: with uvloop, ~600 bytes
(its ``TimerHandle`` and ``UVTimer``, libuv's ``uv_timer_t``, the bound method it calls and a
copy of the contextvars ``Context``), for a deadline that almost never fires. ``Deadlines``
keeps them in a timing wheel instead: an armed object sits in the bucket of the
``resolution``-long slot its deadline falls in (an entry in a dict and one in a set, ~100
bytes), and a single timer, set only while something is armed, sweeps the slots that have come
due, once per ``resolution``.

* Never early: ``on_due(obj)`` runs at the first sweep at or after the deadline. Sweeps run at
  the multiples of ``resolution``, so it runs at most ``resolution`` late (plus the event
  loop's own delay). MQTT gives the server one and a half times the keep alive before it must
  close (MQTT 5.0 §3.1.2.10 [MQTT-3.1.2-22], 3.1.1 §3.1.2.10 [MQTT-3.1.2-24]); whole seconds
  are precise enough for that and for the CONNECT timeout.
* Bounded work: one sweep hands at most ``max_per_tick`` objects to ``on_due``. The rest stay
  due, and the next sweep runs on the next loop iteration, so a crowd of deadlines in one
  second (10,000 devices that connected together) cannot stall the event loop.
* One callback for all: ``on_due`` is given to the constructor, so arming allocates no closure
  or bound method. ``on_due`` may arm and disarm anything, the object it was handed included; an
  object armed during a sweep is never handed over by that same sweep.

Usage, as the broker's connections use it (one wheel per broker)::

    deadlines = Deadlines(Client.deadline_passed, loop)
    deadlines.arm(client, loop.time() + connect_timeout)   # a new connection
    deadlines.arm(client, last_received + 1.5 * keep_alive)  # after CONNECT
    deadlines.disarm(client)                                 # the connection is gone
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["Clock", "Deadlines", "TimerHandle"]

log = logging.getLogger("thinghub.broker")

T = TypeVar("T", bound=Hashable)


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """An asyncio event loop (or the tests' fake clock): ``time`` and ``call_later``."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle: ...


class _Bucket(Generic[T]):
    """The objects due in one slot (the slot is kept so that an emptied bucket can leave the
    wheel without an int per armed object)."""

    __slots__ = ("members", "slot")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.members: set[T] = set()


class Deadlines(Generic[T]):
    """A timing wheel of deadlines that hands each object to ``on_due`` once its deadline has
    passed (module docstring)."""

    __slots__ = (
        "_bucket_of",
        "_buckets",
        "_clock",
        "_current",
        "_max_per_tick",
        "_next",
        "_on_due",
        "_resolution",
        "_sweeping",
        "_timer",
    )

    def __init__(
        self,
        on_due: Callable[[T], object],
        clock: Clock,
        *,
        resolution: float = 1.0,
        max_per_tick: int = 10_000,
    ) -> None:
        if not resolution > 0:
            raise ValueError(f"resolution must be positive, not {resolution!r}")
        if max_per_tick < 1:
            raise ValueError(f"max_per_tick must be at least 1, not {max_per_tick!r}")
        self._on_due = on_due
        self._clock = clock
        self._resolution = resolution
        self._max_per_tick = max_per_tick
        self._buckets: dict[int, _Bucket[T]] = {}
        self._bucket_of: dict[T, _Bucket[T]] = {}
        # Slot n covers ((n - 1) * resolution, n * resolution]: it is due from n * resolution.
        # Slots up to ``_current`` have come due; ``_next`` is the first one that may still
        # hold objects (below ``_current`` only while a sweep ran out of budget).
        self._current = math.floor(clock.time() / resolution)
        self._next = self._current + 1
        self._timer: TimerHandle | None = None
        self._sweeping = False

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        """Objects armed."""
        return len(self._bucket_of)

    def __contains__(self, obj: object) -> bool:
        return obj in self._bucket_of

    def due_at(self, obj: T) -> float | None:
        """When ``obj`` will be handed to ``on_due`` at the earliest (its deadline rounded up to
        the wheel's resolution), or None if it is not armed."""
        bucket = self._bucket_of.get(obj)
        return None if bucket is None else bucket.slot * self._resolution

    @property
    def ticking(self) -> bool:
        """Whether the wheel's timer is set (it is exactly while something is armed)."""
        return self._timer is not None

    # ------------------------------------------------------------------ arming

    def arm(self, obj: T, at: float) -> None:
        """Hand ``obj`` to ``on_due`` once the clock has reached ``at`` (replacing any deadline
        it had). A deadline already past is handed over at the next sweep."""
        slot = math.ceil(at / self._resolution)
        if slot <= self._current:
            slot = self._current + 1
        old = self._bucket_of.get(obj)
        if old is not None:
            if old.slot == slot:
                return
            self._leave(obj, old)
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = _Bucket(slot)
        bucket.members.add(obj)
        self._bucket_of[obj] = bucket
        if self._timer is None and not self._sweeping:
            self._schedule(self._clock.time(), backlog=False)

    def disarm(self, obj: T) -> None:
        """Forget ``obj``'s deadline, if it has one."""
        bucket = self._bucket_of.pop(obj, None)
        if bucket is None:
            return
        self._leave(obj, bucket)
        if not self._bucket_of and self._timer is not None and not self._sweeping:
            # Nothing left to wait for: the wheel costs no timer while empty.
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Forget every deadline and stop the timer."""
        self._buckets.clear()
        self._bucket_of.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _leave(self, obj: T, bucket: _Bucket[T]) -> None:
        members = bucket.members
        members.discard(obj)
        if not members and self._buckets.get(bucket.slot) is bucket:
            del self._buckets[bucket.slot]

    # ------------------------------------------------------------------ sweeping

    def tick(self, now: float | None = None) -> int:
        """Hand every object whose deadline is at or before ``now`` (the clock's time if None)
        to ``on_due``, at most ``max_per_tick`` of them; returns how many were handed over.
        The wheel's own timer calls this; a caller that drives the wheel itself may too."""
        if now is None:
            now = self._clock.time()
        due = math.floor(now / self._resolution)
        if due > self._current:
            self._current = due
        current = self._current
        buckets = self._buckets
        bucket_of = self._bucket_of
        on_due = self._on_due
        budget = self._max_per_tick
        handled = 0
        slot = self._next
        self._sweeping = True
        try:
            while slot <= current:
                if current - slot > len(buckets):
                    # A long stretch since the last sweep (the timer is off while the wheel is
                    # empty, or the loop was held up): go to the earliest bucket at once
                    # rather than slot by slot. Every bucket is at or after ``slot``.
                    slot = min(buckets, default=current + 1)
                    if slot > current:
                        # Nothing due; later arms may still take any slot after ``current``.
                        slot = current + 1
                        break
                bucket = buckets.get(slot)
                if bucket is not None:
                    members = bucket.members
                    while members and handled < budget:
                        obj = members.pop()
                        del bucket_of[obj]
                        handled += 1
                        try:
                            on_due(obj)
                        except Exception:
                            # One object's failure must not leave the others waiting forever.
                            log.exception("deadline handler failed for %r", obj)
                    if members:
                        break  # out of budget: this slot goes on at the next sweep
                    if buckets.get(slot) is bucket:
                        del buckets[slot]
                slot += 1
        finally:
            self._next = slot
            self._sweeping = False
        return handled

    def _schedule(self, now: float, *, backlog: bool) -> None:
        if backlog:
            delay = 0.0  # the rest of a crowded slot, after the loop's other work
        else:
            # Sweeps fall on the slot boundaries, so a deadline waits at most one resolution.
            delay = (math.floor(now / self._resolution) + 1) * self._resolution - now
        self._timer = self._clock.call_later(delay, self._run)

    def _run(self) -> None:
        self._timer = None
        now = self._clock.time()
        self.tick(now)
        if self._bucket_of and self._timer is None:
            self._schedule(now, backlog=self._next <= self._current)
