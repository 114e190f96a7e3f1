"""A real hub for the iot-data tests: broker, registry, the dialect's routes and an MQTT
listener, on loopback, driven with boto3 unmodified and paho-mqtt.

Everything runs in one background thread with its own asyncio loop; tests talk to it over
sockets only, and read broker state through ``AwsHub.on_loop`` (never from the test thread
directly). MQTT clients connect anonymously and live in the root account, so the root access
key sees them; ``AwsHub.tenant()`` makes a fresh account with its own key, for tenancy tests
and for tests that need an empty topic space.

``start_hub(tmp)`` (an :class:`AwsHub` and its stop coroutine; conftest's ``aws`` fixture
is one per session) has ``endpoint`` (rate-unlimited),
``limited_endpoint`` (the same hub; each account may call each operation ``LIMITED_RATE``
times in all: its limiter's clock never moves), ``client(...)`` (a boto3 ``iot-data``
client), ``raw(...)`` (a botocore-signed raw HTTP request, for what boto3 cannot send) and the
attributes ``pahoclient.Client`` needs (``host``, ``port_for``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
import urllib3
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from thinghub.broker.auth import Decision
from thinghub.broker.broker import Broker
from thinghub.config import MQTTSettings, Settings
from thinghub.http.aws.api import add_routes
from thinghub.http.context import HubContext
from thinghub.http.ratelimit import RateLimiter
from thinghub.mqtt.packets import Connect
from thinghub.registry.accounts import ROOT_ACCOUNT_ID
from thinghub.registry.ids import MemoryLeaseStore, MessageIdGenerator
from thinghub.registry.models import AccessKey
from thinghub.registry.registry import Registry
from thinghub.registry.store import RegistryStore
from thinghub.shadow.service import ShadowService
from thinghub.shadow.store import ShadowStore
from thinghub.transport.tcp import start_tcp_listener

T = TypeVar("T")

# Per-account retained-message limit of the test hub (small, to reach it cheaply).
RETAINED_LIMIT = 12
# Calls of one operation one account may make on ``limited_endpoint``.
LIMITED_RATE = 3
TIMEOUT = 5.0

NO_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1})


class RootAccountAuthenticator:
    """Every MQTT client is accepted into the root account (as app.py does for anonymous
    clients)."""

    def authenticate(self, connect: Connect, peer: str) -> Decision:
        return Decision(True, account=ROOT_ACCOUNT_ID)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class AwsHub:
    loop: asyncio.AbstractEventLoop
    broker: Broker
    registry: Registry
    root_key: AccessKey
    other_key: AccessKey
    port: int
    http_port: int
    limited_port: int
    host: str = "127.0.0.1"
    ws_path: str = "/mqtt"
    _pool: urllib3.PoolManager = field(default_factory=urllib3.PoolManager)
    shadows: ShadowService | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def limited_endpoint(self) -> str:
        return f"http://{self.host}:{self.limited_port}"

    def port_for(self, transport: str) -> int:
        assert transport == "tcp"
        return self.port

    def on_loop(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the hub's loop (where broker state may be read) and return its value."""

        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(TIMEOUT)

    def client(
        self,
        key: AccessKey | None = None,
        *,
        endpoint: str | None = None,
        secret: str | None = None,
        key_id: str | None = None,
        config: Config | None = None,
    ) -> Any:
        key = key or self.root_key
        return boto3.client(
            "iot-data",
            endpoint_url=endpoint or self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=key_id or key.access_key_id,
            aws_secret_access_key=secret or key.secret,
            config=config or NO_RETRIES,
        )

    def tenant(self) -> tuple[AccessKey, Any]:
        """A new account with its own key, and a boto3 client for it."""
        account = self.registry.create_account(f"tenant-{uuid.uuid4().hex[:8]}")
        key = self.registry.create_access_key(account.account_id)
        return key, self.client(key)

    def raw(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        key: AccessKey | None = None,
        when: datetime | None = None,
        service: str = "iotdata",
    ) -> RawResponse:
        """Send ``method target`` signed by botocore's own SigV4Auth (at ``when``, default
        now), without boto3's serializer: for raw slashes, wrong verbs, odd encodings."""
        key = key or self.root_key
        url = self.endpoint + target
        request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
        request.headers["Host"] = urlsplit(url).netloc
        sign_at(request, key.access_key_id, key.secret, when or datetime.now(UTC), service)
        response = self._pool.urlopen(
            method,
            url,
            body=body,
            headers=dict(request.headers.items()),
            retries=False,
            redirect=False,
        )
        return RawResponse(
            response.status, {k.lower(): v for k, v in response.headers.items()}, response.data
        )


def sign_at(
    request: AWSRequest, key_id: str, secret: str, when: datetime, service: str = "iotdata"
) -> None:
    """botocore's SigV4Auth.add_auth, at a chosen time (reference §4, "Libraries")."""
    signer = SigV4Auth(Credentials(key_id, secret), service, "us-east-1")
    for name in ("Authorization", "X-Amz-Date"):
        if name in request.headers:
            del request.headers[name]
    request.context["timestamp"] = when.strftime("%Y%m%dT%H%M%SZ")
    signer._modify_request_before_signing(request)
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    signer._inject_signature_to_request(request, signature)


async def start_hub(tmp: Path) -> tuple[AwsHub, Callable[[], Any]]:
    loop = asyncio.get_running_loop()
    broker = Broker(
        MQTTSettings(max_retained_messages=RETAINED_LIMIT),
        loop,
        authenticator=RootAccountAuthenticator(),
        new_message_id=MessageIdGenerator(MemoryLeaseStore()),
    )
    registry = Registry(RegistryStore.open(tmp))
    registry.ensure_root_account()
    root_key = registry.create_access_key(ROOT_ACCOUNT_ID)
    other = registry.create_account("other")
    other_key = registry.create_access_key(other.account_id)
    # Device shadows: a table of the same registry.db, as thinghub/app.py wires them.
    shadows = ShadowService(broker, ShadowStore.open(tmp))
    shadows.start()

    runners: list[web.AppRunner] = []

    async def serve(ctx: HubContext) -> int:
        app = web.Application()
        add_routes(app, ctx)
        app.router.add_get("/healthz", _healthz)  # as thinghub/http/app.py (the bench uses it)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        server = runner.server
        assert server is not None
        sockets = [s for site_ in runner.sites for s in _site_sockets(site_)]
        return int(sockets[0].getsockname()[1])

    settings = Settings()
    http_port = await serve(HubContext(settings, broker, registry, shadows=shadows))
    frozen = RateLimiter({}, default=LIMITED_RATE, clock=lambda: 0.0)
    limited = HubContext(settings, broker, registry, aws_limits=frozen, shadows=shadows)
    limited_port = await serve(limited)
    mqtt = await start_tcp_listener(broker, "127.0.0.1", 0)
    port = int(mqtt.sockets[0].getsockname()[1])
    hub = AwsHub(loop, broker, registry, root_key, other_key, port, http_port, limited_port)
    hub.shadows = shadows

    async def stop() -> None:
        mqtt.close()
        broker.close_all()
        for runner in runners:
            await runner.cleanup()
        await shadows.close()
        registry.store.close()

    return hub, stop


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _site_sockets(site: Any) -> list[Any]:
    server = getattr(site, "_server", None)
    return list(server.sockets) if server is not None else []
