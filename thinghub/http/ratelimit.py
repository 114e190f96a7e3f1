"""Per-account, per-action request rate limits (token buckets).

Both cloud dialects throttle per account, shared by every access key of that account, as the
clouds do (reference: Alibaba's QPS per account and API; AWS's per-account data-plane rates).
A bucket holds at most one second's worth of requests (its rate) and refills continuously; a
request that finds it empty is refused at once (the dialect answers with its throttling
error) rather than queued, so one busy account never slows another.

In a cluster (docs/architecture.md, *Cluster*) every node enforces ``rate / N`` for each
account and action, N being the nodes live now (this one and those heard from within
``cluster.node_timeout``), asked at every request (``nodes``); the nodes share no counter.
A bucket then holds one second of its share, and at least one request: the cluster lets
through at most the configured rate over time, plus a burst of at most one second's worth
(one request per node where the share is below one per second). The cost of the rule: an
account whose calls all reach one node gets 1/N of its rate; a node cut off from the others
counts alone (N = 1) once it has not heard them for ``cluster.node_timeout``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

# Documented per-account QPS of the Alibaba actions (reference §2; "per account, its RAM users
# share it"). PubBroadcast's 1 QPS is its topic-broadcast rate.
ALIYUN_DEFAULT_RATES: dict[str, float] = {
    "Pub": 1600,
    "BatchPub": 50,
    "PubBroadcast": 1,
    # PubBroadcast without a topic: every online device, once a minute (reference §2.1).
    "PubBroadcast.AllOnline": 1 / 60,
    "BatchCheckDeviceNames": 10,
    "RRpc": 1000,
    "QueryDeviceSubTopic": 100,
    "CreateProduct": 50,
    "QueryProduct": 50,
    "QueryProductList": 50,
    "UpdateProduct": 50,
    "DeleteProduct": 500,
    "RegisterDevice": 30,
    "BatchRegisterDevice": 10,
    "BatchRegisterDeviceWithApplyId": 10,
    "QueryPageByApplyId": 50,
    "QueryDeviceDetail": 50,
    "QueryDevice": 50,
    "DeleteDevice": 50,
    "DisableThing": 50,
    "EnableThing": 50,
    "GetDeviceStatus": 500,
    "BatchGetDeviceState": 50,
    "CreateProductTopic": 1,
    "QueryProductTopic": 3,
    "UpdateProductTopic": 50,
    "DeleteProductTopic": 50,
}

# AWS IoT Core: HTTP publishes count as inbound publishes, 20,000/s per account (reference
# "Rates"); the device shadow operations share the quota "Device Shadow API requests/second
# per account", 4,000 (AWS IoT Core quotas); the other data-plane operations have no
# published TPS: 100/s per account is our choice (documented in the README).
AWS_SHADOW_RATE = "DeviceShadow"
AWS_DEFAULT_RATES: dict[str, float] = {"Publish": 20_000, AWS_SHADOW_RATE: 4_000}
AWS_DEFAULT_OTHER_RATE = 100.0
# Operations that draw from one shared budget (a bucket named after the group) unless a limit
# of their own is configured (aws_rate_limits = ["UpdateThingShadow=50"]).
AWS_RATE_GROUPS: dict[str, str] = {
    "GetThingShadow": AWS_SHADOW_RATE,
    "UpdateThingShadow": AWS_SHADOW_RATE,
    "DeleteThingShadow": AWS_SHADOW_RATE,
    "ListNamedShadowsForThing": AWS_SHADOW_RATE,
}


def parse_rate_overrides(entries: tuple[str, ...]) -> dict[str, float]:
    """``("Pub=100", "BatchPub=5")`` -> ``{"Pub": 100.0, "BatchPub": 5.0}``."""
    rates: dict[str, float] = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = -1.0
        if not sep or not name.strip() or rate <= 0:
            raise ValueError(f"rate limit {entry!r} is not of the form Action=requests_per_second")
        rates[name.strip()] = rate
    return rates


class _Bucket:
    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        # A bucket holds one second's worth, and at least one request, so that rates below
        # 1/s (e.g. once a minute) still let a request through when it is due.
        self.capacity = max(rate, 1.0)
        self.tokens = self.capacity
        self.stamp = now

    def resize(self, rate: float) -> None:
        """The cluster's node count changed: this node's share of the rate with it."""
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self.tokens = min(self.tokens, self.capacity)


class RateLimiter:
    def __init__(
        self,
        limits: Mapping[str, float],
        *,
        default: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = 100_000,
        groups: Mapping[str, str] | None = None,
    ) -> None:
        """``limits`` maps an action name to requests per second; actions not listed use
        their group's limit (``groups`` maps an action to a name in ``limits``; the group's
        actions share one bucket), else ``default`` (None: unlimited). ``max_buckets``
        bounds memory: when full, idle buckets (full again) are dropped."""
        self._limits = dict(limits)
        self._groups = dict(groups or {})
        self._default = default
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._max_buckets = max_buckets
        # Requests refused, in all and by the action asked for (the dialects' own names, a
        # bounded set: shown by /metrics as thinghub_http_throttled_total).
        self.refused = 0
        self.refused_by: dict[str, int] = {}
        # How many nodes share the rates (a cluster's live nodes; None: this hub alone).
        self.nodes: Callable[[], int] | None = None

    def _budget(self, action: str) -> tuple[str, float | None]:
        """The bucket ``action`` draws from and its rate: its own, its group's, the default."""
        rate = self._limits.get(action)
        if rate is not None:
            return action, rate
        group = self._groups.get(action)
        if group is not None and group in self._limits:
            return group, self._limits[group]
        return action, self._default

    def rate_of(self, action: str) -> float | None:
        return self._budget(action)[1]

    def allow(self, account: str, action: str) -> bool:
        asked = action
        rate = self._limits.get(action)
        if rate is None:
            action, rate = self._budget(action)
            if rate is None:
                return True
        nodes = self.nodes
        if nodes is not None:
            rate /= max(1, nodes())
        now = self._clock()
        key = (account, action)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_buckets:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(rate, now)
        else:
            bucket.tokens = min(bucket.capacity, bucket.tokens + (now - bucket.stamp) * bucket.rate)
            bucket.stamp = now
            if bucket.rate != rate:
                bucket.resize(rate)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        self.refused += 1
        self.refused_by[asked] = self.refused_by.get(asked, 0) + 1
        return False

    def _prune(self, now: float) -> None:
        idle = [
            key for key, b in self._buckets.items() if b.tokens + (now - b.stamp) * b.rate >= b.rate
        ]
        for key in idle:
            del self._buckets[key]
