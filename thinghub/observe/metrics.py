"""``GET /metrics``: the hub's figures in the Prometheus text format.

One custom collector reads the hub's own counters and containers at scrape time
(``prometheus_client``'s metric families, written out by ``generate_latest``): nothing is
done per event for Prometheus, the hub keeps its plain counters (``broker/stats.py``, the
admission gate, the writers, the rate limiters, ``requests.py``) as it did before, and the
latency histograms are bucket counts kept with integer increments (``histogram.py``).

Every name starts with ``thinghub_``; every label has a bounded set of values (QoS, a reason
from a fixed list, a dialect and an operation it knows, an HTTP status the hub answers with,
a component name). What a client chooses (client ids, topics, key ids) is never a label.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, cast

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from .. import __version__
from ..broker.stats import DELIVERY_SAMPLE
from .cluster import cluster_metrics
from .figures import broker_figures
from .histogram import Buckets
from .sources import Sources

if TYPE_CHECKING:
    from ..registry.pg_store import PgRegistryStore

__all__ = ["HubCollector", "render_metrics"]


def render_metrics(sources: Sources) -> bytes:
    """The body of ``GET /metrics``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(sources))
    return generate_latest(registry)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _labelled_counter(
    name: str, doc: str, labels: list[str], values: Iterable[tuple[tuple[str, ...], float]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for label_values, value in values:
        family.add_metric(list(label_values), value)
    return family


def _histogram(
    name: str, doc: str, labels: list[str], series: Iterable[tuple[tuple[str, ...], Buckets]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for label_values, buckets in series:
        cumulative = [(_le(bound), float(n)) for bound, n in buckets.cumulative()]
        family.add_metric(list(label_values), cumulative, buckets.sum)
    return family


def _le(bound: float) -> str:
    """A bucket's upper bound as Prometheus writes it (``0.0005``, ``1.0``, ``+Inf``)."""
    return "+Inf" if bound == float("inf") else repr(bound)


class HubCollector(Collector):
    """Reads :class:`Sources` at each scrape."""

    def __init__(self, sources: Sources) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        yield from self._hub()
        yield from self._broker()
        yield from self._messages()
        yield from self._signins()
        yield from self._http()
        yield from self._writers()
        yield from self._health()
        yield from self._logs()
        yield from self._trace()
        if self._sources.cluster is not None:
            yield from cluster_metrics(self._sources.cluster)

    # ------------------------------------------------------------------ the process

    def _hub(self) -> Iterator[Metric]:
        sources = self._sources
        info = GaugeMetricFamily("thinghub_info", "The hub's version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield _gauge(
            "thinghub_start_time_seconds",
            "When the hub started, seconds since the Unix epoch.",
            sources.started_at,
        )
        yield _gauge("thinghub_uptime_seconds", "Seconds since the hub started.", sources.uptime)

    # ------------------------------------------------------------------ what the broker holds

    def _broker(self) -> Iterator[Metric]:
        figures = broker_figures(self._sources.context.broker)
        yield _gauge(
            "thinghub_connections",
            "Open MQTT connections (TCP, TLS and WebSocket), CONNECT accepted or not yet.",
            figures.connections,
        )
        yield _gauge(
            "thinghub_clients_connected",
            "MQTT clients whose CONNECT was accepted and whose connection is open.",
            figures.connected,
        )
        yield _gauge("thinghub_sessions", "MQTT sessions, connected or not.", figures.sessions)
        yield _gauge(
            "thinghub_subscriptions", "Subscriptions of all sessions.", figures.subscriptions
        )
        yield _gauge(
            "thinghub_retained_messages", "Retained messages, all accounts.", figures.retained
        )
        yield _gauge(
            "thinghub_retained_bytes",
            "Bytes of retained messages as counted against mqtt.max_retained_bytes_total.",
            figures.retained_bytes,
        )
        yield _gauge(
            "thinghub_queued_messages",
            "QoS 1/2 copies waiting for their session (in memory and on disk).",
            figures.queued,
        )
        yield _gauge("thinghub_queued_bytes", "Bytes of the queued copies.", figures.queued_bytes)
        yield _gauge(
            "thinghub_inflight_messages",
            "QoS 1/2 copies sent and not acknowledged yet.",
            figures.inflight,
        )
        gate = self._sources.gate
        if gate is not None:
            yield _gauge(
                "thinghub_connections_pending_connect",
                "MQTT connections that have not finished their CONNECT.",
                gate.pending,
            )
            free = gate.as_dict().get("file_descriptors_free")
            if free is not None:
                yield _gauge(
                    "thinghub_file_descriptors_free",
                    "File descriptors the process may still open.",
                    free,
                )

    # ------------------------------------------------------------------ messages

    def _messages(self) -> Iterator[Metric]:
        stats = self._sources.context.broker.stats
        yield _labelled_counter(
            "thinghub_messages_received_total",
            "Messages accepted by the hub (MQTT, HTTP, wills, hub services; not its own $SYS "
            "messages), by QoS.",
            ["qos"],
            [((str(qos),), n) for qos, n in enumerate(self._sources.received())],
        )
        yield _labelled_counter(
            "thinghub_messages_delivered_total",
            "Copies written to subscribers' connections, by QoS.",
            ["qos"],
            [((str(qos),), n) for qos, n in enumerate(stats.delivered)],
        )
        yield _labelled_counter(
            "thinghub_messages_dropped_total",
            "Messages or copies dropped, by reason.",
            ["reason"],
            [((reason,), n) for reason, n in stats.drops().items()],
        )
        yield _labelled_counter(
            "thinghub_messages_refused_total",
            "QoS 1/2 messages refused because the store was not accepting new work.",
            ["reason"],
            [(("store_unavailable",), stats.refused_store_unavailable)],
        )
        yield _histogram(
            "thinghub_delivery_latency_seconds",
            "From a message's acceptance to a copy written to a subscriber's connection; "
            f"one copy in {DELIVERY_SAMPLE} of each QoS is timed.",
            [],
            [((), stats.delivery_latency)],
        )
        store = self._sources.context.broker.store
        commits = getattr(store, "commit_seconds", None)
        if isinstance(commits, Buckets):
            yield _histogram(
                "thinghub_store_commit_seconds",
                "One committed group of broker.db: its transaction and fsync.",
                [],
                [((), commits)],
            )
        pending = getattr(store, "pending_calls", None)
        if isinstance(pending, int):
            yield _gauge(
                "thinghub_store_pending_calls",
                "Journal calls reported to the store and not committed yet.",
                pending,
            )

    # ------------------------------------------------------------------ connections

    def _signins(self) -> Iterator[Metric]:
        stats = self._sources.context.broker.stats
        signins = [(("accepted", "success"), float(stats.connections_total))]
        signins += [
            (("refused", reason), n) for reason, n in sorted(stats.connect_refusals.items())
        ]
        yield _labelled_counter(
            "thinghub_signins_total",
            "MQTT CONNECTs decided, by result and MQTT 5 reason code.",
            ["result", "reason"],
            signins,
        )
        yield _counter(
            "thinghub_protocol_errors_total",
            "MQTT connections ended for a protocol error.",
            stats.protocol_errors,
        )
        yield _counter(
            "thinghub_observer_errors_total",
            "Connection observers (device presence) that raised; the connection went on.",
            stats.observer_errors,
        )
        gate = self._sources.gate
        if gate is not None:
            yield _labelled_counter(
                "thinghub_connections_refused_total",
                "New MQTT connections closed before their CONNECT, by bound reached.",
                ["reason"],
                [
                    (("file_descriptors",), gate.refused_fd),
                    (("per_address",), gate.refused_per_address),
                    (("pending_connects",), gate.refused_pending),
                ],
            )

    # ------------------------------------------------------------------ HTTP

    def _http(self) -> Iterator[Metric]:
        sources = self._sources
        requests = sources.requests
        yield _labelled_counter(
            "thinghub_http_requests_total",
            "Cloud API requests answered, by dialect, operation and HTTP status.",
            ["dialect", "operation", "status"],
            (
                ((dialect, operation, str(status)), n)
                for (dialect, operation, status), n in sorted(requests.counts.items())
            ),
        )
        yield _histogram(
            "thinghub_http_request_duration_seconds",
            "Cloud API requests, from the dialect's first look to the answer.",
            ["dialect", "operation"],
            sorted(requests.latency.items()),
        )
        context = sources.context
        yield _labelled_counter(
            "thinghub_http_throttled_total",
            "Cloud API requests refused by the per-account rate limits, by operation.",
            ["dialect", "operation"],
            [
                ((dialect, operation), n)
                for dialect, limiter in (
                    ("aliyun", context.aliyun_limits),
                    ("aws", context.aws_limits),
                )
                for operation, n in sorted(limiter.refused_by.items())
            ],
        )
        gate = sources.gate
        if gate is not None:
            yield _labelled_counter(
                "thinghub_http_read_timeouts_total",
                "HTTP connections closed (408) because a request's head or body came too slowly.",
                ["part"],
                [(("header",), gate.http_header_timeouts), (("body",), gate.http_body_timeouts)],
            )
            yield _counter(
                "thinghub_http_connections_refused_total",
                "HTTP connections closed at once: too few file descriptors left.",
                gate.http_refused_fd,
            )

    # ------------------------------------------------------------------ writer threads

    def _writers(self) -> Iterator[Metric]:
        context = self._sources.context
        presence = context.presence_writer
        if presence is not None:
            yield _gauge(
                "thinghub_presence_pending",
                "Devices whose ONLINE/OFFLINE change waits for the presence writer.",
                presence.pending,
            )
            yield _gauge(
                "thinghub_presence_oldest_pending_seconds",
                "How long the oldest unwritten presence change has waited.",
                presence.oldest_pending_s,
            )
            for name, doc, value in (
                ("changes", "Presence changes recorded.", presence.changes),
                ("batches", "Presence batches written.", presence.batches),
                ("rows_written", "Presence rows written.", presence.rows_written),
                (
                    "write_failures",
                    "Presence batches that failed to write.",
                    presence.write_failures,
                ),
                ("overflows", "Times the pending presence changes overflowed.", presence.overflows),
            ):
                yield _counter(f"thinghub_presence_{name}_total", doc, value)
        writer = context.registry_writer
        if writer is not None:
            yield _gauge(
                "thinghub_registry_writes_pending",
                "Registry changes made through the API waiting for the registry writer.",
                writer.pending,
            )
            yield _labelled_counter(
                "thinghub_registry_writes_total",
                "Registry changes made through the API, written or refused (queue full).",
                ["result"],
                [(("done",), writer.writes), (("refused",), writer.refused)],
            )

        if context.registry.store.shared:
            # The registry on PostgreSQL: heartbeats and the sweeps of the devices of nodes
            # that stopped heartbeating (a string cast: psycopg is imported only with it).
            store = cast("PgRegistryStore", context.registry.store)
            for name, doc, value in (
                (
                    "heartbeat_failures",
                    "Registry heartbeats that failed (PostgreSQL out of reach).",
                    store.heartbeat_failures,
                ),
                (
                    "node_sweeps",
                    "Sweeps of the devices of silent nodes this node made.",
                    store.sweeps,
                ),
                (
                    "swept_devices",
                    "Devices of silent nodes this node marked OFFLINE.",
                    store.swept_devices,
                ),
            ):
                yield _counter(f"thinghub_registry_{name}_total", doc, value)

    def _health(self) -> Iterator[Metric]:
        snapshot = self._sources.context.health.snapshot()
        components = sorted(snapshot.failures)
        yield _labelled_counter(
            "thinghub_component_failures_total",
            "Failures of the hub's writer threads, by component.",
            ["component"],
            (((c,), snapshot.failures[c]) for c in components),
        )
        state = GaugeMetricFamily(
            "thinghub_component_state",
            "1 for the state each component is in: ok, degraded (heals by itself) or failed "
            "(until a restart).",
            labels=["component", "state"],
        )
        for component in components:
            now = (
                "failed"
                if component in snapshot.failed
                else "degraded"
                if component in snapshot.degraded
                else "ok"
            )
            for name in ("ok", "degraded", "failed"):
                state.add_metric([component, name], 1 if name == now else 0)
        yield state

    def _trace(self) -> Iterator[Metric]:
        recorder = self._sources.context.broker.trace
        if recorder is None:
            return  # tracing is off ([trace] enabled)
        family = CounterMetricFamily(
            "thinghub_trace_messages",
            "Messages the delivery trace recorded (traced), and MQTT publishes it left out "
            "because trace.max_mqtt_per_second was spent (over_budget).",
            labels=["result"],
        )
        family.add_metric(["traced"], recorder.traced)
        family.add_metric(["over_budget"], recorder.over_budget)
        yield family

    def _logs(self) -> Iterator[Metric]:
        sources = self._sources
        if sources.logs is not None:
            yield _counter(
                "thinghub_log_records_dropped_total",
                "Log records dropped because the log writer was behind (log.queue).",
                sources.logs.dropped,
            )
        audit = sources.audit
        if audit is not None:
            yield _counter("thinghub_audit_lines_total", "Audit lines written.", audit.written)
            yield _counter(
                "thinghub_audit_lines_suppressed_total",
                "Audit lines dropped by the audit rate limit (log.audit_rate).",
                audit.suppressed_total,
            )
