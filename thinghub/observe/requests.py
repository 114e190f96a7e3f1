"""The one seam every API request of the cloud dialects passes, once answered.

Each dialect has a single function that serves its calls, for the aiohttp routes and the fast
path alike (``http/aliyun/api.py`` and ``http/aws/api.py``, ``serve``). Around it the dialect
asks :meth:`ApiRequests.begin` for an :class:`ApiCall`, lets ``serve`` fill in what it learns
(the operation once matched, the access key id it claims, the account once the signature is
verified, an error code), and reports the answer with :meth:`ApiRequests.answered`. That one
call feeds:

* the counts by dialect, operation and status and the latency histograms that ``/metrics``
  exports (``thinghub_http_requests_total``, ``thinghub_http_request_duration_seconds``);
* the audit log (``audit.py``): one line per call.

A console's live view or a trace of API calls would listen here too.

Labels stay bounded whatever a client sends: the operation is one the dialect knows (else
:data:`UNKNOWN`), the status one the hub answers with. The access key id and the account,
which a client chooses, go to the audit log only, never into a label.
"""

from __future__ import annotations

import time

from aiohttp import web

from .audit import AuditLog
from .histogram import REQUEST_BOUNDS, Buckets

__all__ = ["ALIYUN", "API_REQUESTS", "AWS", "UNKNOWN", "ApiCall", "ApiRequests"]

ALIYUN = "aliyun"
AWS = "aws"
#: The operation of a request that did not name one the dialect knows.
UNKNOWN = "unknown"


class ApiCall:
    """What one API request turned out to be, filled in by its dialect as it learns it."""

    __slots__ = ("access_key_id", "account", "dialect", "operation", "result", "started")

    def __init__(self, dialect: str, started: float) -> None:
        self.dialect = dialect
        self.started = started
        self.operation = UNKNOWN
        # The key id the request claims (also when its signature turns out wrong).
        self.access_key_id = ""
        # The account of the verified key; "" when the request was refused before that.
        self.account = ""
        # The dialect's error code for an answer that is an error ("" for success).
        self.result = ""


class ApiRequests:
    """Counts, latencies and the audit line of the API requests of one hub (event loop)."""

    __slots__ = ("audit", "counts", "latency")

    def __init__(self, audit: AuditLog | None = None) -> None:
        self.audit = audit
        # (dialect, operation, status) -> requests answered so.
        self.counts: dict[tuple[str, str, int], int] = {}
        # (dialect, operation) -> how long they took.
        self.latency: dict[tuple[str, str], Buckets] = {}

    def begin(self, dialect: str) -> ApiCall:
        return ApiCall(dialect, time.perf_counter())

    def answered(self, call: ApiCall, status: int) -> None:
        elapsed = time.perf_counter() - call.started
        key = (call.dialect, call.operation, status)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        latency = self.latency.get(key[:2])
        if latency is None:
            latency = self.latency[key[:2]] = Buckets(REQUEST_BOUNDS)
        latency.observe(elapsed)
        audit = self.audit
        if audit is not None:
            audit.api_call(call, status)


#: Set on the hub's application by ``http/app.py``; a dialect mounted on an application
#: without it keeps its counts to itself (test harnesses that mount one dialect alone).
API_REQUESTS = web.AppKey("api_requests", ApiRequests)
