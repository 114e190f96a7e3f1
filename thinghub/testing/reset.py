"""``reset()``: a running test hub brought back to how it started, for the next test, in a few
milliseconds instead of a restart (README *Testing*, *What reset clears*).

On the hub's event loop, in this order:

1. every MQTT connection is closed (MQTT 5: DISCONNECT 0x98 Administrative action), without
   its Will, and the reset waits until the transports have let go of them all;
2. every session ends: subscriptions, queued and in-flight messages, pending Wills (not
   sent), persistent or not;
3. every retained message is deleted, in every account, except the hub's own ``$SYS/``
   topics (observe/systopics.py republishes those);
4. the registry rows added since the hub started are deleted (``baseline.py``), on the
   registry writer thread like any API write, and the caches that could still hold what was
   deleted are told: the device lookups (``Registry.forget_cached_devices``) and the AWS IoT
   sign-in caches (``IdentityChanges.committed``, identity/changes.py).

Kept: rows that were there at the start (as they are now), the MessageId sequence, used
Alibaba signature nonces, the API rate limits' buckets, the counters of ``/metrics`` and
``/api/stats``, and the settings.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ThingHubError
from ..mqtt.types import ReasonCode
from .baseline import RegistryBaseline

if TYPE_CHECKING:
    from ..app import Hub  # a process hub's parent side needs the report, not the hub

__all__ = ["ResetError", "ResetReport", "reset_hub"]

#: retained topics of the hub itself, left alone by a reset
SYS_PREFIX = "$SYS/"


class ResetError(ThingHubError):
    """The hub could not be reset (a connection that would not close, a registry write that
    failed): the hub should be stopped rather than shared with another test."""


@dataclass(slots=True)
class ResetReport:
    """What a reset removed."""

    connections: int = 0
    sessions: int = 0
    retained: int = 0
    #: registry rows deleted, by table
    rows: dict[str, int] = field(default_factory=dict)


async def reset_hub(
    hub: Hub, baseline: RegistryBaseline, *, close_within: float = 5.0
) -> ResetReport:
    """On ``hub``'s loop: see the module notes. Connections still open ``close_within``
    seconds after they were closed make it raise ResetError."""
    broker, registry = hub.broker, hub.registry
    if broker is None or registry is None or registry.writer is None:
        raise ResetError("the hub is not running")
    report = ResetReport()
    loop = asyncio.get_running_loop()

    clients = list(broker.clients)
    for client in clients:
        client.will = None  # closed by the hub, not lost: no Will (MQTT 5 §3.1.2.5)
        if client.session is not None:
            client.session.pending_will = None
        client.disconnect(ReasonCode.ADMINISTRATIVE_ACTION, "the test hub is being reset")
    report.connections = len(clients)
    deadline = loop.time() + close_within
    while broker.clients:
        if loop.time() > deadline:
            raise ResetError(
                f"{len(broker.clients)} MQTT connections were still open {close_within} s after "
                "the reset closed them"
            )
        await asyncio.sleep(0.001)
    # Connection ends still waiting for their turn (Broker.may_end_now) are wound down now.
    broker.finish_pending()

    for session in list(broker.sessions.values()):
        session.pending_will = None
        broker.end_session(session)
        report.sessions += 1

    for account, space in list(broker.spaces.items()):
        for topic, _message in list(space.retained.items()):
            if not topic.startswith(SYS_PREFIX) and space.forget_retained(topic):
                broker.store.delete_retained(account, topic)
                report.retained += 1

    try:
        report.rows = await registry.writer.run(lambda: baseline.purge(registry.store))
    except Exception as error:
        raise ResetError(f"the registry could not be reset: {error}") from error
    registry.forget_cached_devices()
    if hub.identity is not None and any(table.startswith("iot_") for table in report.rows):
        # Certificates, CAs and policies went: every AWS IoT sign-in reads afresh, and the TLS
        # listener rebuilds its trust anchors (identity/changes.py).
        hub.identity.changes.committed(trust=True)
    return report
