"""Counters the broker keeps so that nothing is dropped silently (exposed at /metrics)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class Stats:
    connections_total: int = 0
    connections_refused: int = 0
    protocol_errors: int = 0
    messages_received: int = 0
    messages_delivered: int = 0
    # Drops, by cause.
    dropped_queue_full: int = 0
    dropped_slow_consumer: int = 0
    dropped_expired: int = 0
    dropped_too_large: int = 0
    dropped_offline_qos0: int = 0
    dropped_retained_full: int = 0
    dropped_not_authorized: int = 0
    # QoS 1/2 messages refused because the store was not accepting new work.
    refused_store_unavailable: int = 0
    # Connection observers (device presence) that raised; the connection went on.
    observer_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
