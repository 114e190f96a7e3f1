"""``GET /api/stats``: the hub's counters as one JSON object, for a console and scripts.

It holds what ``/metrics`` held as JSON before it became Prometheus text (the same keys, so
that what read them still does), plus what a console wants on one page: the time it was taken
and the uptime (rates are the difference of two readings over the difference of their
``time``), counts by QoS, drops by reason, refused sign-ins by reason, API requests by dialect,
operation and status.
"""

from __future__ import annotations

import time
from typing import Any

from .. import __version__
from ..broker.stats import DROP_REASONS
from .cluster import cluster_stats
from .figures import broker_figures
from .sources import Sources

__all__ = ["stats_body"]


def stats_body(sources: Sources) -> dict[str, Any]:
    context = sources.context
    broker = context.broker
    stats = broker.stats
    figures = broker_figures(broker)
    gate = sources.gate
    received = sources.received()  # the hub's own $SYS messages left out
    body: dict[str, Any] = {
        "version": __version__,
        "time": round(time.time(), 3),
        "uptime_s": round(sources.uptime, 3),
        "connections": figures.connections,
        "clients_connected": figures.connected,
        "sessions": figures.sessions,
        "subscriptions": figures.subscriptions,
        "retained": figures.retained,
        "retained_bytes": figures.retained_bytes,
        "queued_messages": figures.queued,
        "queued_bytes": figures.queued_bytes,
        "inflight_messages": figures.inflight,
        **stats.as_dict(),
        "messages_received": sum(received),
        "messages_received_by_qos": received,
        "messages_delivered_by_qos": list(stats.delivered),
        "dropped": {reason: getattr(stats, name) for reason, name in DROP_REASONS.items()},
        "connections_refused_by_reason": dict(sorted(stats.connect_refusals.items())),
        **(gate.as_dict() if gate is not None else {}),
        "component_failures": context.health.snapshot().failures,
    }
    presence = context.presence_writer
    if presence is not None:
        body["presence"] = {
            "pending": presence.pending,
            "oldest_pending_s": round(presence.oldest_pending_s, 3),
            "changes": presence.changes,
            "batches": presence.batches,
            "rows_written": presence.rows_written,
            "write_failures": presence.write_failures,
            "overflows": presence.overflows,
        }
    writer = context.registry_writer
    if writer is not None:
        body["registry_writes"] = {
            "pending": writer.pending,
            "done": writer.writes,
            "refused": writer.refused,
        }
    requests: dict[str, dict[str, dict[str, int]]] = {}
    for (dialect, operation, status), n in sorted(sources.requests.counts.items()):
        requests.setdefault(dialect, {}).setdefault(operation, {})[str(status)] = n
    body["api_requests"] = requests
    body["api_throttled"] = {
        "aliyun": dict(sorted(context.aliyun_limits.refused_by.items())),
        "aws": dict(sorted(context.aws_limits.refused_by.items())),
    }
    if sources.audit is not None:
        body["audit"] = {
            "written": sources.audit.written,
            "suppressed": sources.audit.suppressed_total,
        }
    if sources.logs is not None:
        body["log_records_dropped"] = sources.logs.dropped
    if sources.cluster is not None:
        body["cluster"] = cluster_stats(sources.cluster)
    return body
