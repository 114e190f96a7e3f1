"""The cluster's figures (thinghub/cluster/node.py) for ``/metrics`` and ``/api/stats``.

Read at scrape time from the node's plain counters, as everything in ``metrics.py`` is;
nothing here imports NATS (``ClusterNode`` is only a type). Labels have fixed values; a node
name is the operator's, one per hub, and only ``thinghub_cluster_node_info`` carries it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from ..cluster.node import ClusterNode

__all__ = ["cluster_metrics", "cluster_stats"]

# Why a message published here, or arriving from another node, went nowhere across the hop:
# label value -> ``MessageCounters`` field (cluster/node.py).
DROP_REASONS = {
    "not_sent": "not_forwarded",  # NATS out of reach or the outbound bound reached
    "expired": "expired",  # its Message Expiry Interval ran out on the way (§3.3.2.3.3)
    "unreadable": "unreadable",
    "refused_here": "failed",
}


def cluster_stats(node: ClusterNode) -> dict[str, Any]:
    """The ``cluster`` object of ``/api/stats``."""
    bus, owners, counters = node.bus, node.owners, node.counters
    return {
        "node": node.name,
        "number": node.number,
        "nats_connected": bus.connected,
        "accepting_sign_ins": node.accepts_sign_ins(),
        "messages": {
            "forwarded": counters.forwarded,
            "kept_local": counters.kept_local,
            "received": counters.received,
        },
        "dropped": {label: getattr(counters, name) for label, name in DROP_REASONS.items()},
        "remote_nodes": len(node.interest.remote.nodes),
        "outbound_buffer_bytes": bus.queued_bytes,
        "outbound_refused": {
            "full": bus.counters.refused_full,
            "disconnected": bus.counters.refused_disconnected,
            "failed": bus.counters.failed,
        },
        "session_claims": owners.counters.claims,
        "session_claims_dropped": owners.counters.dropped,
        "session_claims_failed": owners.counters.failed,
        "takeovers_sent": owners.counters.takeovers_sent,
        "takeovers_received": owners.counters.takeovers_received,
        "nats_disconnects": bus.counters.disconnects,
        "stream": node.stream.status(),
        "persistent_sessions": node.persistent.status(),
        # Requests of the HTTP APIs for sessions held elsewhere (cluster/rpc.py).
        "api_requests": asdict(node.rpc.counters),
    }


def cluster_metrics(node: ClusterNode) -> Iterator[Metric]:
    bus, owners, counters = node.bus, node.owners, node.counters
    info = GaugeMetricFamily(
        "thinghub_cluster_node_info",
        "This node's name and its number in MessageIds.",
        labels=["node", "number"],
    )
    info.add_metric([node.name, str(node.number)], 1)
    yield info
    yield GaugeMetricFamily(
        "thinghub_cluster_nats_connected",
        "1 while this node is connected to NATS, else 0.",
        value=1 if bus.connected else 0,
    )
    yield CounterMetricFamily(
        "thinghub_cluster_nats_disconnects",
        "Times this node lost its NATS connection.",
        value=bus.counters.disconnects,
    )
    messages = CounterMetricFamily(
        "thinghub_cluster_messages",
        "Messages published here sent to other nodes (forwarded) or kept here because no "
        "other node's filter matched (kept_local), and messages from other nodes (received).",
        labels=["direction"],
    )
    for direction in ("forwarded", "kept_local", "received"):
        messages.add_metric([direction], getattr(counters, direction))
    yield messages
    dropped = CounterMetricFamily(
        "thinghub_cluster_messages_dropped",
        "Messages that did not cross the hop: not sent (NATS out of reach or the outbound "
        "bound reached; QoS 1/2 ones were refused to their publisher), expired on the way, "
        "unreadable, or refused by this node.",
        labels=["reason"],
    )
    for label, name in DROP_REASONS.items():
        dropped.add_metric([label], getattr(counters, name))
    yield dropped
    yield GaugeMetricFamily(
        "thinghub_cluster_outbound_buffer_bytes",
        "Bytes of messages waiting to be handed to NATS (bounded by "
        "cluster.outbound_buffer_bytes).",
        value=bus.queued_bytes,
    )
    yield GaugeMetricFamily(
        "thinghub_cluster_remote_nodes",
        "Other nodes this node has heard of (their interest is known or being learned).",
        value=len(node.interest.remote.nodes),
    )
    yield CounterMetricFamily(
        "thinghub_cluster_session_claims",
        "Client ids this node claimed in the cluster's session owners bucket.",
        value=owners.counters.claims,
    )
    failed = CounterMetricFamily(
        "thinghub_cluster_session_claims_failed",
        "Claims not made: dropped (too many waiting) or failed (JetStream refused or timed out).",
        labels=["reason"],
    )
    failed.add_metric(["dropped"], owners.counters.dropped)
    failed.add_metric(["failed"], owners.counters.failed)
    yield failed
    takeovers = CounterMetricFamily(
        "thinghub_cluster_session_takeovers",
        "Sessions taken over across nodes: sent (a client came here, its session was "
        "elsewhere) and received (a client of this node went to another).",
        labels=["direction"],
    )
    takeovers.add_metric(["sent"], owners.counters.takeovers_sent)
    takeovers.add_metric(["received"], owners.counters.takeovers_received)
    yield takeovers
    stream = node.stream.counters
    publishes = CounterMetricFamily(
        "thinghub_cluster_stream_publishes",
        "QoS 1/2 messages published into the cluster's message stream: acknowledged by "
        "JetStream (their publishers were then acknowledged), refused (stream full, no "
        "stream) or timed out (no answer within cluster.request_timeout); the publishers of "
        "the last two were refused.",
        labels=["outcome"],
    )
    publishes.add_metric(["acknowledged"], stream.acknowledged)
    publishes.add_metric(["refused"], stream.refused)
    publishes.add_metric(["timed_out"], stream.timed_out)
    yield publishes
    yield GaugeMetricFamily(
        "thinghub_cluster_stream_unacknowledged",
        "QoS 1/2 messages waiting for JetStream's acknowledgement (bounded by "
        "cluster.max_unacked_publishes).",
        value=node.stream.unacknowledged,
    )
    consumers = node.persistent.counters
    deliveries = CounterMetricFamily(
        "thinghub_cluster_consumer_deliveries",
        "Copies the persistent sessions' JetStream consumers delivered here: first deliveries, "
        "redeliveries (the session moved, its node died, or no acknowledgement in time), "
        "acknowledged by their receivers, given back (connection closed, window full).",
        labels=["kind"],
    )
    deliveries.add_metric(["first"], consumers.deliveries)
    deliveries.add_metric(["redelivery"], consumers.redeliveries)
    deliveries.add_metric(["acknowledged"], consumers.acknowledged)
    deliveries.add_metric(["given_back"], consumers.given_back)
    yield deliveries
    yield CounterMetricFamily(
        "thinghub_cluster_sessions_resumed",
        "Persistent sessions rebuilt here from the cluster's record (held on another node).",
        value=consumers.resumed,
    )
    rpc = node.rpc.counters
    requests = CounterMetricFamily(
        "thinghub_cluster_api_requests",
        "Requests of the HTTP APIs for a session held on another node (cluster/rpc.py): sent "
        "by this node, failed (no answer in time, the node gone, or an error answer), served "
        "here for other nodes, refused here as busy (too many in hand).",
        labels=["kind"],
    )
    requests.add_metric(["sent"], rpc.sent)
    requests.add_metric(["failed"], rpc.failed)
    requests.add_metric(["served"], rpc.served)
    requests.add_metric(["busy"], rpc.busy)
    yield requests
