"""What the HTTP dialects are given: the hub's parts, passed explicitly (no module state)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
