"""Bucket counts for a latency histogram, kept with plain integer increments.

``prometheus_client.Histogram.observe`` takes a lock per call: too much for the delivery path,
which records one observation per copy written to a subscriber. :class:`Buckets` is a list of
integers and a float sum, updated by ONE thread (the event loop for deliveries and HTTP
requests; the store's writer thread for commits) and read by another at scrape time. A reader
may see a bucket counted before the sum has the value (never a count lost): the exported count
is the sum of the buckets, so count and ``+Inf`` always agree.

Bounds are upper bounds in seconds, inclusive (Prometheus ``le``); a value above the last one
goes to the ``+Inf`` bucket.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

__all__ = ["COMMIT_BOUNDS", "DELIVERY_BOUNDS", "REQUEST_BOUNDS", "Buckets"]

#: End-to-end delivery: microseconds when a copy goes out in the turn the message came in,
#: up to hours for a queued copy of a session that was offline.
DELIVERY_BOUNDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
)  # fmt: skip
#: One committed group of the store (a transaction and its fsync).
COMMIT_BOUNDS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: One API request, from the dialect's first look at it to its answer (RRpc waits for a
#: device's reply: seconds).
REQUEST_BOUNDS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class Buckets:
    """Counts per bucket (the last one is ``+Inf``) and the sum of what was observed."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("bucket bounds must be increasing")
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, count)`` pairs as Prometheus exports them: cumulative, the last
        bound infinite."""
        counts = list(self.counts)  # one copy: the writer may go on meanwhile
        found: list[tuple[float, int]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            total += count
            found.append((bound, total))
        return found

    @property
    def count(self) -> int:
        return sum(self.counts)
