"""Where ``/metrics``, ``/api/stats`` and the ``$SYS`` topics read the hub's figures: its
parts, passed explicitly (no module state)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..http.context import HubContext
from ..transport.admission import AdmissionGate
from .audit import AuditLog
from .logs import LogPipe
from .requests import ApiRequests
from .systopics import SysTopics

if TYPE_CHECKING:
    from ..cluster.node import ClusterNode


@dataclass
class Sources:
    context: HubContext
    # The MQTT admission gate and the HTTP port's refusals and read timeouts (None: none).
    gate: AdmissionGate | None = None
    # The API requests' seam (requests.py).
    requests: ApiRequests = field(default_factory=ApiRequests)
    # The log pipeline and the audit log, when the hub runs them (``thinghub serve``).
    logs: LogPipe | None = None
    audit: AuditLog | None = None
    # The $SYS publisher: its own messages are not counted as received.
    sys_topics: SysTopics | None = None
    # This hub's node of a cluster (its figures: cluster.py), None on a hub of its own.
    cluster: ClusterNode | None = None
    # When the hub started (wall clock, and monotonic for the uptime).
    started_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started

    def received(self) -> list[int]:
        """Messages accepted by QoS, the hub's own ``$SYS`` messages (QoS 0) left out."""
        counts = list(self.context.broker.stats.received)
        if self.sys_topics is not None:
            counts[0] -= self.sys_topics.published
        return counts
