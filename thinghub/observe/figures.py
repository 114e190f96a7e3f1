"""How much the broker holds right now: connections, sessions, subscriptions, retained and
queued messages. Read from the broker's own containers when asked (``/metrics``,
``/api/stats``, the ``$SYS`` topics), never kept up to date per event.

Sessions are walked once for the connected and queued figures: some 70 ns each, 7 ms for
100,000 sessions, on the event loop, once per scrape or ``$SYS`` round.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..broker.broker import Broker

__all__ = ["BrokerFigures", "broker_figures"]


@dataclass(frozen=True, slots=True)
class BrokerFigures:
    #: open MQTT connections (TCP, TLS, WebSocket), CONNECT done or not
    connections: int
    #: clients whose CONNECT was accepted and whose connection is still open
    connected: int
    #: sessions, connected or not (a persistent session outlives its connection)
    sessions: int
    subscriptions: int
    retained: int
    retained_bytes: int
    #: QoS 1/2 copies waiting for a session (in memory and on disk), and their bytes
    queued: int
    queued_bytes: int
    #: QoS 1/2 copies sent and not yet acknowledged
    inflight: int


def broker_figures(broker: Broker) -> BrokerFigures:
    connected = queued = queued_bytes = inflight = 0
    for session in broker.sessions.values():
        if session.client is not None:
            connected += 1
        delivery = session.delivery
        if delivery.queued_bytes:
            queued_bytes += delivery.queued_bytes
            queued += delivery.queued
        if delivery.inflight:
            inflight += len(delivery.inflight)
    spaces = broker.spaces.values()
    return BrokerFigures(
        connections=len(broker.clients),
        connected=connected,
        sessions=len(broker.sessions),
        subscriptions=sum(len(space.subscriptions) for space in spaces),
        retained=sum(len(space.retained) for space in spaces),
        retained_bytes=broker.retained_budget.total_bytes,
        queued=queued,
        queued_bytes=queued_bytes,
        inflight=inflight,
    )
