"""``GET /console/api/overview``: the hub's counters and health for the Overview page, which
polls it every two seconds and draws message rates from the differences of the counters.

Read from the broker's own counters (``broker.stats``, broker/stats.py) and the hub's
``Health`` (health.py) through the HubContext, the figures ``/metrics`` shows too: hub-wide
counts, never another account's topic, client id or key. Beside them the caller's own
account: its retained messages and subscriptions. Nothing here walks the sessions, and the
hub-wide part is made at most once a second whoever asks.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .sessions import ConsoleSession
from .state import Console

__all__ = ["overview"]

# The hub-wide part, shared by every session for this long (seconds).
_SHARED_FOR_S = 1.0


async def overview(console: Console, request: web.Request, session: ConsoleSession) -> Any:
    cache = console.overview_cache
    now = time.monotonic()
    if cache is None or now - cache[0] >= _SHARED_FOR_S:
        cache = console.overview_cache = (now, _hub(console, now))
    body = dict(cache[1])
    space = console.ctx.broker.spaces.get(session.account_id)
    body["account"] = {
        "id": session.account_id,
        "retained": 0 if space is None else len(space.retained),
        "subscriptions": 0 if space is None else len(space.subscriptions),
    }
    return body


def _hub(console: Console, now: float) -> dict[str, Any]:
    broker = console.ctx.broker
    stats = broker.stats
    received = console.received
    spaces = broker.spaces.values()
    health = console.ctx.health.snapshot()
    return {
        # Monotonic seconds: the page divides counter differences by differences of this.
        "at": now,
        "connections": len(broker.clients),
        "sessions": len(broker.sessions),
        "subscriptions": sum(len(space.subscriptions) for space in spaces),
        "retained": sum(len(space.retained) for space in spaces),
        # Without the hub's own $SYS messages, which would draw a spike every round.
        "received": stats.messages_received if received is None else sum(received()),
        "delivered": stats.messages_delivered,
        "connectionsTotal": stats.connections_total,
        "connectionsRefused": stats.connections_refused,
        "drops": stats.drops(),
        "refusedStoreUnavailable": stats.refused_store_unavailable,
        "health": {
            "status": health.status,
            "failed": dict(health.failed),
            "degraded": dict(health.degraded),
            "failures": dict(health.failures),
        },
        "trace": broker.trace is not None,
    }
