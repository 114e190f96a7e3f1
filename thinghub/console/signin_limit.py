"""Sign-in attempts per client address: a token bucket of ``console.signin_per_minute``
attempts that refills at that many a minute, so that guessing a secret through the console
is as slow as the operator wants it (OWASP's advice for login throttling; an AccessKeySecret
has 180 bits or more, so this guards people's weaker hand-made secrets and the hub's CPU).

Every attempt counts, right or wrong: a burst of correct sign-ins from one address (a
script) is as suspicious as a burst of wrong ones. Bounded: at most ``max_addresses`` are
tracked; when full, those whose bucket is full again are forgotten first, then all.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["SignInLimiter"]


class SignInLimiter:
    def __init__(
        self,
        per_minute: int,
        *,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_addresses = max_addresses
        self._clock = clock
        # address -> (tokens, when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}
        self.refused = 0

    def allow(self, address: str) -> bool:
        """Take one attempt for ``address``; False when it has none left."""
        now = self._clock()
        tokens, stamp = self._buckets.get(address, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - stamp) * self.rate)
        if tokens < 1.0:
            self._buckets[address] = (tokens, now)
            self.refused += 1
            return False
        if address not in self._buckets and len(self._buckets) >= self.max_addresses:
            self._prune(now)
        self._buckets[address] = (tokens - 1.0, now)
        return True

    def retry_after(self, address: str) -> int:
        """Seconds until ``address`` has an attempt again (at least 1)."""
        tokens, _stamp = self._buckets.get(address, (self.capacity, 0.0))
        return max(1, int((1.0 - tokens) / self.rate + 0.999))

    def _prune(self, now: float) -> None:
        full = [
            address
            for address, (tokens, stamp) in self._buckets.items()
            if tokens + (now - stamp) * self.rate >= self.capacity
        ]
        for address in full:
            del self._buckets[address]
        if len(self._buckets) >= self.max_addresses:
            self._buckets.clear()
