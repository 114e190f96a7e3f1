"""How the hub keeps CPython's cyclic garbage collector from stalling its event loop.

A collection of a generation walks every object in it and in the younger ones, on the loop's
thread. With a fleet connected, the oldest generation holds every object of every connection
(about 30 each): a full collection with 20,000 devices connected takes some 60 ms, during
which no packet is served, and a reconnect storm (thousands of sessions replaced within a
second) used to meet one every time.

So objects that have lived a while are moved out of the collector's sight (``gc.freeze``)
every ``FREEZE_EVERY_S``: the collections that still run walk only what the last second
created. Connections and sessions make no reference cycles (a session's queue lets go of it
when it ends: broker/queue.py), so their garbage is freed by reference counting whether or
not they were frozen. Should something long-lived ever make a cycle that becomes garbage, it
is not lost: every ``SWEEP_EVERY_S`` everything is unfrozen and collected once, a single
full pass at a known rhythm rather than at the worst moment.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger("thinghub.gc")

# Young collections every 700 net allocations (CPython's default: small and cheap), middle
# ones every 10 of those, and a full one considered only after 100 middle ones (default: 10).
THRESHOLDS = (700, 10, 100)
FREEZE_EVERY_S = 1.0
SWEEP_EVERY_S = 3600.0


def start_quietly() -> None:
    """At start-up, once the hub is built: what start-up made lives as long as the process."""
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


async def keep_collector_quiet(
    freeze_every_s: float = FREEZE_EVERY_S, sweep_every_s: float = SWEEP_EVERY_S
) -> None:
    """Run for the hub's lifetime (cancelled at stop)."""
    last_sweep = time.monotonic()
    while True:
        await asyncio.sleep(freeze_every_s)
        now = time.monotonic()
        if now - last_sweep >= sweep_every_s:
            last_sweep = now
            gc.unfreeze()
            started = time.perf_counter()
            found = gc.collect()
            log.debug(
                "full garbage collection: %d unreachable objects, %.1f ms",
                found,
                (time.perf_counter() - started) * 1000,
            )
        gc.freeze()
