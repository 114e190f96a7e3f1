"""What the HTTP dialects are given: the hub's parts, passed explicitly (no module state)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..broker.broker import Broker
from ..config import Settings
from ..health import Health
from ..registry.presence_writer import PresenceWriter
from ..registry.registry import Registry
from ..registry.writer import RegistryWriter
from ..shadow.service import ShadowService
from .aliyun.nonce_store import NonceStore
from .aliyun.signing import NonceCache
from .ratelimit import RateLimiter

if TYPE_CHECKING:
    from ..cluster.rpc import ClusterRpc


@dataclass
class HubContext:
    settings: Settings
    broker: Broker
    registry: Registry
    # SignatureNonce replay protection for the Alibaba dialect (one per hub).
    nonces: NonceCache = field(default_factory=NonceCache)
    # Where used nonces are made durable before a request is acted on (None: memory only,
    # a restart forgets them).
    nonce_store: NonceStore | None = None
    # Per-account request rates, one limiter per dialect.
    aliyun_limits: RateLimiter = field(default_factory=lambda: RateLimiter({}))
    aws_limits: RateLimiter = field(default_factory=lambda: RateLimiter({}))
    # AWS IoT device shadows (None: the shadow operations answer 503).
    shadows: ShadowService | None = None
    # The hub's component health, shown by /healthz and /metrics (health.py).
    health: Health = field(default_factory=Health)
    # The registry's writer threads, whose lag /metrics shows (None: not started).
    presence_writer: PresenceWriter | None = None
    registry_writer: RegistryWriter | None = None

    def __post_init__(self) -> None:
        # In a cluster every node enforces its share of each rate (http/ratelimit.py).
        self.aliyun_limits.nodes = self.cluster_nodes
        self.aws_limits.nodes = self.cluster_nodes

    @property
    def cluster(self) -> ClusterRpc | None:
        """The node-to-node requests of this hub's cluster node (cluster/rpc.py), None on a
        hub of its own; read at each call, since the node detaches when it stops."""
        rpc: ClusterRpc | None = getattr(self.broker.cluster, "rpc", None)
        return rpc

    def cluster_nodes(self) -> int:
        """How many nodes share this hub's request rates: its cluster's live nodes, or 1."""
        rpc = self.cluster
        return 1 if rpc is None else rpc.nodes()
