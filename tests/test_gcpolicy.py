"""thinghub/gcpolicy.py: objects that have lived a while leave the collector's sight, and
cyclic garbage among them is still collected at the periodic sweep."""

from __future__ import annotations

import asyncio
import gc
import warnings
import weakref
from collections.abc import Iterator

import pytest

from thinghub import gcpolicy


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def frozen(obj: object) -> bool:
    """True when ``obj`` is in the permanent generation (``gc.freeze``): the collector's
    generations, which ``gc.get_objects`` lists, no longer hold it."""
    return not any(tracked is obj for tracked in gc.get_objects())


@pytest.fixture(autouse=True)
def restore_collector() -> Iterator[None]:
    # These tests freeze every object of the test process and sweep them later: garbage that
    # earlier tests left for the collector (a client socket in a cycle, say) would be
    # finalized inside them, its ResourceWarning attributed to them. Collected here first.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_live_objects_are_frozen_and_frozen_cycles_are_swept() -> None:
    async def scenario() -> None:
        # A cycle that becomes garbage only after it has been frozen.
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        task = asyncio.create_task(
            gcpolicy.keep_collector_quiet(freeze_every_s=0.01, sweep_every_s=0.2)
        )
        try:
            # Until the task has frozen them. Asked of the object itself, not of the frozen
            # count: a sweep (due first when the loop wakes late on a busy machine) frees
            # garbage frozen earlier, and the count may then stay below where it was.
            for _ in range(200):
                if frozen(a):
                    break
                await asyncio.sleep(0.005)
            assert frozen(a)
            del a, b
            gc.collect()  # an ordinary collection does not see frozen objects
            assert gone() is not None
            for _ in range(200):  # the sweep comes within sweep_every_s
                if gone() is None:
                    break
                await asyncio.sleep(0.01)
            assert gone() is None
        finally:
            task.cancel()

    gcpolicy.start_quietly()
    assert gc.get_threshold() == gcpolicy.THRESHOLDS
    asyncio.run(scenario())
