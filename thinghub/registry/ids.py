"""MessageIds and RequestIds (reference §5; docs/architecture.md "Time and ids").

MessageId
---------
The reference found no statement of Alibaba's algorithm, only examples that are unquoted 60-61
bit numbers which decode sensibly as Snowflake ids (§5). ThingHub uses that layout, kept below
2**63 so it is a positive signed 64-bit integer in every language and JSON parser that matters:

    bit 63      0
    bits 62-22  milliseconds since 2024-01-01T00:00:00Z (41 bits, about 69 years)
    bits 21-12  node number, 0..1023 (0 for a hub of its own; one per node of a cluster,
                thinghub/cluster/numbers.py)
    bits 11-0   sequence within the millisecond, 0..4095

Ids are strictly increasing within a process: when the wall clock stands still or steps back,
the generator keeps its own millisecond and runs on from it; when the 4096 sequence numbers
of a millisecond are used up, it moves on to the next millisecond without waiting.

Cost: the lock, the lease and the clock's range are dealt with once per millisecond, by the
first id of each; the other ids of that millisecond come from an iterator over its sequence
numbers, without the lock (``next`` on it is atomic, so threads never share an id), while
the clock has not passed that millisecond. The delivery trace issues an id per MQTT publish
(thinghub/trace/recorder.py): this is on the broker's hot path.

Unique across restarts: the generator holds a *lease*, a millisecond in the future that is
persisted (``LeaseStore``, implemented by the registry store) before any id at or past it is
issued. At start-up the new generator begins after the persisted lease, so every id it issues
is above every id the previous process could have issued, even if that process was killed,
or the clock was set back between the runs. One small write per ``lease_ms`` of issuing.

That write is an fsync. Given ``renew`` (a way to run a function on another thread), the
generator extends its lease when half of it is used, off the caller's thread, so the event
loop does not wait for the disk; it writes on the caller's thread only when the lease has
actually run out. Saves only ever raise the stored lease (``save_id_lease`` keeps the
larger value), so a late background save cannot lower it below one written since.

A full disk: no id may be issued past a lease that is not on disk, so once the lease runs out
``next_id`` raises ``StorageFull`` (the HTTP dialects answer 503, as for a full message store:
README "Durability") and has issued nothing; every later call tries the write again, so ids
flow again as soon as there is room, without a restart. A background extension that fails is
retried at most every ``RENEW_RETRY_MS`` (not once per id), and logged once per episode. The
same holds for every write error that may heal (``health.heals``: SQLite's operational errors,
such as a database the command line holds locked, and the OS's); ``Health`` shows the
generator as degraded meanwhile.

Any other error of a lease write (a bug, a damaged database) would fail again: the generator
has *failed* for good (``failed``; ``/healthz`` 503 until the hub restarts; the traceback is
logged once). It writes no lease any more and issues ids only below the lease already on disk,
which is still safe; past it, ``next_id`` raises ``StoreUnavailable`` (503 in the dialects).
Background extensions run under ``health.supervised`` on their ``thinghub-id-lease`` thread.

RequestId
---------
An uppercase UUID4 string, the form the Alibaba API shows (§5).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import NamedTuple, Protocol

from ..health import Health, heals, supervised
from .errors import StorageFull, StoreUnavailable, is_disk_full

log = logging.getLogger("thinghub.registry")

__all__ = [
    "COMPONENT",
    "EPOCH_MS",
    "MAX_NODE",
    "RENEW_RETRY_MS",
    "LeaseStore",
    "MemoryLeaseStore",
    "MessageIdGenerator",
    "MessageIdParts",
    "decode_message_id",
    "new_request_id",
    "wall_clock_ms",
]

EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
TIME_BITS = 41
NODE_BITS = 10
SEQUENCE_BITS = 12
MAX_NODE = (1 << NODE_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1
MAX_TIME = (1 << TIME_BITS) - 1
# After a failed background extension, the next one is tried no sooner than this (of the
# generator's milliseconds): a full disk must not cost a thread and a failing fsync per id.
RENEW_RETRY_MS = 1000
#: the generator's name in ``Health`` (``/healthz``, ``/metrics``)
COMPONENT = "id-lease"


def wall_clock_ms() -> int:
    """The default clock: Unix time in milliseconds."""
    return time.time_ns() // 1_000_000


class LeaseStore(Protocol):
    """Where the generator persists its lease (a Unix-ms time)."""

    def load_id_lease(self) -> int: ...

    def save_id_lease(self, lease_ms: int) -> None:
        """Durably raise the stored lease to ``lease_ms`` (a smaller value changes nothing).
        May be called from any thread."""


class MemoryLeaseStore:
    """A ``LeaseStore`` that forgets on restart: tests, and hubs without a data directory."""

    def __init__(self, lease_ms: int = 0) -> None:
        self.lease_ms = lease_ms
        self.saves = 0

    def load_id_lease(self) -> int:
        return self.lease_ms

    def save_id_lease(self, lease_ms: int) -> None:
        self.lease_ms = max(self.lease_ms, lease_ms)
        self.saves += 1


class MessageIdParts(NamedTuple):
    unix_ms: int
    node: int
    sequence: int


def decode_message_id(message_id: int) -> MessageIdParts:
    """Split an id into (Unix milliseconds, node, sequence)."""
    return MessageIdParts(
        (message_id >> (NODE_BITS + SEQUENCE_BITS)) + EPOCH_MS,
        (message_id >> SEQUENCE_BITS) & MAX_NODE,
        message_id & MAX_SEQUENCE,
    )


class MessageIdGenerator:
    """Thread-safe source of 63-bit, time-ordered MessageIds, unique across restarts."""

    def __init__(
        self,
        lease_store: LeaseStore,
        *,
        node: int = 0,
        clock: Callable[[], int] = wall_clock_ms,
        lease_ms: int = 10_000,
        renew: Callable[[Callable[[], None]], object] | None = None,
        health: Health | None = None,
    ) -> None:
        if not 0 <= node <= MAX_NODE:
            raise ValueError(f"node must be 0..{MAX_NODE}, not {node}")
        if lease_ms < 1:
            raise ValueError("lease_ms must be at least 1")
        self._store = lease_store
        self._node = node
        self._clock = clock
        self._lease_step = lease_ms
        self._lock = threading.Lock()
        self._renew = renew
        self._renewing = False
        # No background extension before this millisecond (set when one failed).
        self._renew_after = 0
        self._failing = False  # the last write of the lease failed (logged once)
        #: why lease writes stopped for good (see the module notes), None while they work
        self.failed: str | None = None
        self._health = health if health is not None else Health()
        self._health.register(COMPONENT)
        # Every id of an earlier run used a millisecond below its persisted lease, so this
        # run starts at the lease itself (start-up bump).
        self._last_ms = lease_store.load_id_lease() - 1
        self._lease = self._last_ms  # nothing leased yet in this run
        # What ``next_id`` reads without the lock: the ids left of millisecond ``_last_ms``
        # and the ``_tick`` reading at which that millisecond is over (none yet: the first id
        # takes the slow path). The default clock is read as ``time.time_ns`` there, which
        # costs no Python call; a clock given by the caller is read as it is.
        self._fast: tuple[Iterator[int], int] = (iter(()), 0)
        if clock is wall_clock_ms:
            self._tick: Callable[[], int] = time.time_ns
            self._scale = 1_000_000
        else:
            self._tick = clock
            self._scale = 1

    def next_id(self) -> int:
        # The fast path (see "Cost" in the module notes): the next id of the millisecond in
        # use, from its iterator, while the clock has not passed that millisecond.
        ids, end = self._fast
        if self._tick() < end:
            message_id = next(ids, -1)
            if message_id >= 0:
                return message_id
        return self._next_slow()

    __call__ = next_id

    def _next_slow(self) -> int:
        """The first id of a millisecond (or of the next one, when the sequence numbers of
        this one are used up), under the lock: the lease and the clock's range are checked
        here, once per millisecond, before that millisecond's ids are handed out."""
        with self._lock:
            now = self._clock()
            if now > self._last_ms:
                ms = now
            else:
                # Same millisecond, or the clock stepped back: continue on our own time.
                message_id = next(self._fast[0], -1)
                if message_id >= 0:
                    return message_id
                ms = self._last_ms + 1  # its 4096 ids are used up: the next one
            if ms >= self._lease:
                if self.failed is not None:
                    raise StoreUnavailable(self._why())
                # Persist before issuing: no id at or past the old lease leaves this process
                # until the store knows the new one.
                lease = ms + self._lease_step
                try:
                    self._store.save_id_lease(lease)
                except Exception as error:
                    if not heals(error):
                        self.failed = self._health.fail(COMPONENT, error, _CONSEQUENCE)
                        raise StoreUnavailable(self._why()) from error
                    self._note_failure(error)
                    if is_disk_full(error):
                        raise StorageFull(
                            "no MessageId can be issued now (its lease cannot be written): "
                            "the disk is full"
                        ) from error
                    raise
                self._note_success()
                self._lease = lease
            elif (
                self._renew is not None
                and not self._renewing
                and self._lease - ms <= self._lease_step // 2
                and ms >= self._renew_after
            ):
                # Half used: extend it in the background, before it runs out.
                self._renewing = True
                self._renew(
                    supervised(
                        self._health,
                        COMPONENT,
                        partial(self._extend, self._lease + self._lease_step),
                        consequence=_CONSEQUENCE,
                        on_failure=self._extension_failed,
                    )
                )
            offset = ms - EPOCH_MS
            if not 0 <= offset <= MAX_TIME:
                raise OverflowError(f"clock {ms} ms is outside the MessageId range")
            self._last_ms = ms
            first = (offset << (NODE_BITS + SEQUENCE_BITS)) | (self._node << SEQUENCE_BITS)
            # The rest of this millisecond's ids, for the fast path. One tuple, replaced in
            # one store: a caller on another thread sees the old pair or the new one, and
            # ``next`` on a range iterator is atomic, so no id is handed out twice.
            self._fast = (iter(range(first + 1, first + MAX_SEQUENCE + 1)), (ms + 1) * self._scale)
            return first

    def _extend(self, lease: int) -> None:
        """Persist ``lease``, then use it (``renew``'s thread)."""
        try:
            self._store.save_id_lease(lease)
        except Exception as error:
            if not heals(error):
                raise  # it would fail again: ``_extension_failed`` (run by ``supervised``)
            # Not fatal: the lease is written on the caller's thread when it runs out.
            with self._lock:
                self._note_failure(error)
                self._renewing = False
                self._renew_after = self._last_ms + RENEW_RETRY_MS
            return
        with self._lock:
            self._note_success()
            self._lease = max(self._lease, lease)
            self._renewing = False

    def _extension_failed(self, reason: str) -> None:
        """``renew``'s thread, once a background extension failed for good."""
        with self._lock:
            # ``_renewing`` stays True: no extension is tried again.
            self.failed = reason

    def _why(self) -> str:
        return f"no MessageId can be issued now: its lease cannot be written ({self.failed})"

    def _note_failure(self, error: Exception) -> None:
        """Log the first failure of an episode (under the lock): one line for a full disk,
        the traceback for anything else."""
        if self._failing:
            return
        self._failing = True
        self._health.degrade(COMPONENT, f"cannot write the MessageId lease: {error}")
        if is_disk_full(error):
            log.warning("cannot write the MessageId lease: the disk is full; retrying")
        else:
            log.error("cannot write the MessageId lease; retrying", exc_info=error)

    def _note_success(self) -> None:
        if self._failing:
            self._failing = False
            self._health.recover(COMPONENT)
            log.warning("the MessageId lease is written again")


_CONSEQUENCE = (
    "no MessageId lease is written any more; once the lease on disk is used up, MessageIds "
    "are refused (503)"
)


def new_request_id() -> str:
    """An uppercase UUID4, e.g. ``BB71E443-4447-4024-A000-EDE09922891E`` (reference §5)."""
    return str(uuid.uuid4()).upper()
