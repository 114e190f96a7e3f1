"""Wires the hub into one process with one start/stop lifecycle: the registry (SQLite in the
data directory), the broker with the registry's hooks, the MQTT listeners (TCP, and TLS unless
``mqtt.tls`` is off: client certificates, MQTT over WebSocket) and the HTTP server (health,
metrics, MQTT over WebSocket, the cloud APIs)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from aiohttp import web

from .auth.aws_device import AwsDevices
from .auth.broker_hooks import RegistryHooks
from .auth.device_watch import DeviceWatch, RegistrySignInGate
from .auth.signed_url import SignedUrls
from .broker.auth import Authenticator, DenyList
from .broker.broker import Broker
from .config import Settings
from .health import Health
from .http.aliyun.nonce_store import NonceStore, open_nonce_store
from .http.app import build_http_app
from .http.aws_control.api import IDENTITY
from .http.context import HubContext
from .http.fastpath import FastSite, ReadTimeouts
from .http.ratelimit import (
    ALIYUN_DEFAULT_RATES,
    AWS_DEFAULT_OTHER_RATE,
    AWS_DEFAULT_RATES,
    AWS_RATE_GROUPS,
    RateLimiter,
    parse_rate_overrides,
)
from .identity import server_cert
from .identity.ca import HubCA
from .identity.service import IdentityService
from .observe.audit import AuditLog
from .observe.logs import LogPipe
from .observe.requests import ApiRequests
from .observe.sources import Sources
from .observe.sysaccess import SysReaders
from .observe.systopics import SysTopics
from .registry.ids import MessageIdGenerator
from .registry.models import AccessKey
from .registry.presence_writer import PresenceWriter
from .registry.registry import Registry
from .registry.store import RegistryChange, RegistryStore
from .registry.writer import RegistryWriter
from .shadow.document import Limits as ShadowLimits
from .shadow.service import ShadowService
from .shadow.store import PgShadowStore, ShadowStore
from .store.lock import DataDirLock
from .store.sqlite import SQLiteStore, StoreLimits
from .trace.recorder import TraceRecorder
from .transport.admission import AdmissionGate, raise_file_limit
from .transport.tcp import start_tcp_listener
from .transport.tls import ServerTLS
from .transport.websocket import HANDSHAKE_SIGN_IN

if TYPE_CHECKING:
    from .cluster.node import ClusterNode
    from .registry.pg_store import PgRegistryStore

log = logging.getLogger("thinghub")


@dataclass
class Endpoints:
    mqtt: tuple[str, int]
    http: tuple[str, int]
    mqtts: tuple[str, int] | None = None


@dataclass
class Hub:
    settings: Settings
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    broker: Broker | None = None
    registry: Registry | None = None
    endpoints: Endpoints | None = None
    # A root access key created at this start (its secret is shown once), else None.
    new_root_key: AccessKey | None = None
    _store: RegistryStore | None = None
    # The broker's durable store and the data directory lock held while running.
    broker_store: SQLiteStore | None = None
    _lock: DataDirLock | None = None
    _servers: list[asyncio.Server] = field(default_factory=list)
    _http_runner: web.AppRunner | None = None
    # AWS IoT device shadows (a table of registry.db, on their own connection and thread).
    shadows: ShadowService | None = None
    # Ends the connections of deleted and disabled devices, also when another process (the
    # command line) changed registry.db (auth/device_watch.py).
    device_watch: DeviceWatch | None = None
    # Used Alibaba SignatureNonces, kept across restarts (nonces.db, its own writer thread).
    nonce_store: NonceStore | None = None
    # The threads that write registry.db: device presence in batches, and the API's changes.
    presence_writer: PresenceWriter | None = None
    registry_writer: RegistryWriter | None = None
    # Filling the sign-in cache at start (Registry.preload_sign_ins), on an executor thread.
    _preload: asyncio.Future[None] | None = None
    # What every writer thread reports to; /healthz and /metrics read it (health.py).
    health: Health = field(default_factory=Health)
    # The hub's CA (data_dir/ca, made at the first start) and the AWS IoT identities (things,
    # certificates, policies) the control plane manages: thinghub/identity. The TLS sign-in
    # reads ``identity.reader`` and watches certificate status changes.
    ca: HubCA | None = None
    identity: IdentityService | None = None
    # AWS IoT devices' sign-in (client certificates, signed WebSocket URLs) and policies.
    aws_devices: AwsDevices | None = None
    # The log pipeline (``thinghub serve`` starts it; /metrics counts what it dropped), the
    # audit log (log.audit) and the $SYS topics (mqtt.sys_interval): thinghub/observe.
    log_pipe: LogPipe | None = None
    audit: AuditLog | None = None
    sys_topics: SysTopics | None = None
    # How far ahead the MessageId lease is written (registry/ids.py); tests shorten it.
    id_lease_ms: int = 10_000
    # This hub's node of a cluster ([cluster] nats_urls; thinghub/cluster), else None.
    cluster: ClusterNode | None = None

    def open_registry(self) -> Registry:
        """Open the registry and make sure the root account has an access key."""
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # One hub per data directory: taken before any file in it is opened (store/lock.py).
        if self._lock is None:
            self._lock = DataDirLock.acquire(settings.data_dir)
        if settings.registry.url:
            # Imported here: only a hub with a PostgreSQL registry loads the driver.
            from .registry.pg_store import PgRegistryStore

            store: RegistryStore = PgRegistryStore.open_url(
                settings.registry.url, settings.data_dir
            )
        else:
            store = RegistryStore.open(settings.data_dir)
        self._store = store
        self.registry = registry = Registry(
            store, presence_max_pending=settings.registry.presence_max_pending
        )
        root = registry.ensure_root_account()
        key_id = self.environ.get("THINGHUB_ROOT_ACCESS_KEY_ID")
        secret = self.environ.get("THINGHUB_ROOT_ACCESS_KEY_SECRET")
        if key_id and secret:
            registry.ensure_root_key(key_id, secret)
        elif not registry.list_access_keys(root.account_id):
            self.new_root_key = registry.create_access_key(
                root.account_id, description="created at first start"
            )
        return registry

    async def start(self) -> Endpoints:
        loop = asyncio.get_running_loop()
        started_at, started = time.time(), time.monotonic()
        settings = self.settings
        mqtt = settings.mqtt
        registry = self.registry or self.open_registry()
        assert self._store is not None
        self.ca = HubCA.load_or_create(settings.data_dir)
        self.identity = identity = IdentityService(self._store, self.ca, region=settings.aws.region)
        identity.bind(loop)  # CA certificate changes are told on the loop
        self.aws_devices = AwsDevices(
            identity,
            cache_size=settings.aws.sign_in_cache,
            topic_cache=settings.aws.policy_topic_cache,
        )
        # Devices are offline until they sign in again, whatever the last run recorded.
        registry.mark_all_offline()
        self.presence_writer = PresenceWriter(
            self._store,
            registry.presence,
            batch=settings.registry.presence_batch,
            interval_s=settings.registry.presence_interval,
        )
        self.presence_writer.start(loop)
        self.registry_writer = RegistryWriter(max_pending=settings.registry.max_pending_writes)
        self.registry_writer.start(loop)
        # They keep their own failed/failing/failures: /healthz and /metrics read them.
        self.health.watch("presence", self.presence_writer)
        self.health.watch("registry-writer", self.registry_writer)
        registry.writer = self.registry_writer
        self._share_registry(registry, identity)
        node_number = 0
        if settings.cluster.enabled:
            # MessageIds are unique across nodes by their node number (cluster/numbers.py).
            from .cluster.numbers import node_number as claim_node_number

            node_number = await claim_node_number(settings.cluster, settings.data_dir)
        elif settings.cluster.node_id >= 0:
            node_number = settings.cluster.node_id  # hubs sharing a registry (config.py)
        # The lease's fsync runs on its own short-lived thread, not on the event loop.
        ids = MessageIdGenerator(
            self._store,
            node=node_number,
            renew=_in_thread,
            lease_ms=self.id_lease_ms,
            health=self.health,
        )
        deny = (
            DenyList(mqtt.deny_publish, mqtt.deny_subscribe)
            if mqtt.deny_publish or mqtt.deny_subscribe
            else None
        )
        hooks = RegistryHooks(
            registry,
            allow_anonymous=mqtt.allow_anonymous,
            anonymous_account=registry.ensure_root_account().account_id,
            deny=deny,
            max_subscriptions_per_device=mqtt.max_subscriptions_per_device,
            aws=self.aws_devices,
        )
        limits = settings.store
        if limits.backend == "sqlite":
            self.broker_store = SQLiteStore.open(
                settings.data_dir,
                loop=loop,
                limits=StoreLimits(
                    max_pending_calls=limits.max_pending_calls,
                    max_pending_bytes=limits.max_pending_bytes,
                    max_size_bytes=limits.max_size_bytes,
                    retention_s=limits.retention_s,
                ),
                lock=self._lock,
                health=self.health,
            )
        authenticator: Authenticator = hooks
        if self._store.shared:
            # Sign-ins the node cannot answer while PostgreSQL is out of reach are refused.
            shared = cast("PgRegistryStore", self._store)
            authenticator = RegistrySignInGate(hooks, registry, shared.is_fresh, self.aws_devices)
        self.broker = broker = Broker(
            mqtt,
            loop,
            authenticator=authenticator,
            # $SYS: only mqtt.sys_readers of the root account read it, nobody writes it.
            authorizer=SysReaders(hooks, mqtt.sys_readers, hooks.anonymous_account, deny),
            observers=(hooks,),
            store=self.broker_store,
            new_message_id=ids.next_id,
            trace=_trace_recorder(settings),
        )
        broker.restore()
        if settings.cluster.enabled:
            # Imported here: only a clustered hub loads the NATS client.
            from .cluster.node import ClusterNode

            self.cluster = ClusterNode(settings.cluster, broker, self.health, node_number)
            # No sign-in while the node cannot claim client ids in the cluster.
            hooks.cluster_ready = self.cluster.accepts_sign_ins
            await self.cluster.start()
        if settings.log.audit:
            self.audit = AuditLog(
                settings.log.audit_rate, settings.log.audit_burst, call_later=loop.call_later
            )
            broker.stats.on_connect_refused = self.audit.signin_refused
        # Before any connection: the $SYS values of an earlier run are replaced or deleted.
        self.sys_topics = SysTopics(broker, hooks.anonymous_account, mqtt.sys_interval, started)
        self.sys_topics.forget_stale()
        if mqtt.sys_interval:
            self.sys_topics.start(loop)
        # Before any connection: binds the restored sessions to their devices.
        self.device_watch = DeviceWatch(registry, broker, hooks)
        await self.device_watch.start()
        if settings.registry.preload_devices:
            self._preload = loop.run_in_executor(
                None, self._preload_sign_ins, settings.registry.preload_devices
            )
        shadow = settings.shadow
        self.shadows = shadows = ShadowService(
            broker,
            (
                PgShadowStore(settings.registry.url)
                if settings.registry.url
                else ShadowStore.open(settings.data_dir)
            ),
            limits=ShadowLimits(
                max_state_bytes=shadow.max_document_bytes, max_depth=shadow.max_depth
            ),
            max_inflight_per_thing=shadow.max_inflight_per_thing,
            max_pending=shadow.max_pending,
            health=self.health,
        )
        shadows.start()

        # Which new connections are taken at all (transport/admission.py): the open files
        # limit is raised to the hard one first, so that the reserve is counted from it.
        raise_file_limit()
        gate = AdmissionGate(mqtt)
        tcp = await start_tcp_listener(broker, mqtt.host, mqtt.port, gate=gate)
        self._servers.append(tcp)
        mqtts = None
        if mqtt.tls:
            tls = await start_tcp_listener(
                broker,
                mqtt.host,
                mqtt.tls_port,
                self._server_tls(),
                gate=gate,
                http=self._http_protocol,
            )
            self._servers.append(tls)
            mqtts = _bound(tls)
            if not mqtt.tls_cert:
                log.info(
                    "MQTT over TLS on port %d, its certificate signed by the hub's CA, as the "
                    "devices' are: thinghub ca show --data-dir %s > ca.pem",
                    mqtts[1],
                    settings.data_dir,
                )

        api = settings.api
        self.nonce_store, nonces = await open_nonce_store(settings.data_dir, health=self.health)
        context = HubContext(
            settings=settings,
            broker=broker,
            registry=registry,
            aliyun_limits=RateLimiter(
                {**ALIYUN_DEFAULT_RATES, **parse_rate_overrides(api.aliyun_rate_limits)}
            ),
            aws_limits=RateLimiter(
                {**AWS_DEFAULT_RATES, **parse_rate_overrides(api.aws_rate_limits)},
                default=AWS_DEFAULT_OTHER_RATE,
                groups=AWS_RATE_GROUPS,
            ),
            shadows=shadows,
            nonces=nonces,
            nonce_store=self.nonce_store,
            health=self.health,
            presence_writer=self.presence_writer,
            registry_writer=self.registry_writer,
        )
        sources = Sources(
            context,
            gate,
            requests=ApiRequests(self.audit),
            logs=self.log_pipe,
            audit=self.audit,
            sys_topics=self.sys_topics,
            cluster=self.cluster,
            started_at=started_at,
            started=started,
        )
        http_app = build_http_app(context, gate, sources)
        http_app[IDENTITY] = self.identity  # the AWS IoT control plane (http/aws_control)
        # SigV4-signed MQTT over WebSocket URLs (auth/signed_url.py, transport/websocket.py).
        http_app[HANDSHAKE_SIGN_IN] = SignedUrls(registry.lookup_access_key)
        if self.cluster is not None:
            http_app.router.add_get("/thinghub/cluster", _cluster_status(self.cluster))
        runner = web.AppRunner(http_app, access_log=None, handle_signals=False)
        await runner.setup()
        # A TCPSite whose connections serve the hot API calls on the fast path (http/fastpath.py).
        http = settings.http
        site = FastSite(
            runner,
            http.host,
            http.port,
            reuse_address=True,
            timeouts=ReadTimeouts(http.header_timeout, http.body_timeout, gate),
        )
        await site.start()
        self._http_runner = runner
        http_server = getattr(site, "_server", None)
        http_port = settings.http.port
        if http_server is not None and http_server.sockets:
            http_port = http_server.sockets[0].getsockname()[1]
        self.endpoints = Endpoints(
            mqtt=_bound(tcp),
            http=(_display_host(settings.http.host), http_port),
            mqtts=mqtts,
        )
        return self.endpoints

    async def stop(self) -> None:
        """Stop accepting, tell every client the server is going away (v5 DISCONNECT 0x8B),
        flush, and close."""
        if self.sys_topics is not None:
            self.sys_topics.stop()
        for server in self._servers:
            server.close()
        if self.broker is not None:
            self.broker.close_all()
        # Let the coalesced writes and closes run.
        await asyncio.sleep(0)
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), timeout=5)
            except TimeoutError:
                log.warning("some MQTT connections did not close in time")
        if self.broker is not None:
            self.broker.finish_pending()  # sessions of connections that ended just now
        if self._http_runner is not None:
            await self._http_runner.cleanup()
        if self.registry_writer is not None:
            await self.registry_writer.close()  # the API's last changes
        if self.nonce_store is not None:
            await self.nonce_store.close()  # commits the last nonces taken
            self.nonce_store = None
        if self.shadows is not None:
            # Answers what it has taken (its answers may still reach the broker's store).
            await self.shadows.close()
            self.shadows = None
        if self.cluster is not None:
            await self.cluster.stop()  # after the last wills and answers were routed
            self.cluster = None
        if self.broker_store is not None:
            # Commits what the last connections changed, then stops the writer thread.
            self.broker_store.close()
        if self.device_watch is not None:
            await self.device_watch.stop()
            self.device_watch = None
        if self._preload is not None:
            await self._preload  # it reads registry.db, closed below; it never raises
            self._preload = None
        if self.presence_writer is not None:
            await self.presence_writer.close()  # every connection has ended: the last statuses
        if self._store is not None:
            self._store.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _share_registry(self, registry: Registry, identity: IdentityService) -> None:
        """A PostgreSQL registry (registry/pg_store.py): follow the other nodes' changes,
        tell the identity caches about theirs, and say on /healthz when it is out of reach."""
        if self._store is None or not self._store.shared:
            return
        store = cast("PgRegistryStore", self._store)
        health = self.health
        health.register("registry")

        def reachability(fresh: bool, why: str) -> None:
            if fresh:
                health.recover("registry")
            else:
                health.degrade("registry", f"the PostgreSQL registry is out of reach: {why}")

        loop = asyncio.get_running_loop()
        aws_devices = self.aws_devices
        assert aws_devices is not None

        def identities(change: RegistryChange) -> None:
            """On the thread that applied the change: the identity caches, and the live
            connections of certificates another node revoked (as its own writes do)."""
            if any(table.startswith("iot_") for table in change.tables):
                identity.changes.committed(trust=True)
            for account, ca_id in change.ca_certificates:
                identity.changes.ca_changed(account, ca_id)
            for account, cert_id in change.certificates:
                try:
                    loop.call_soon_threadsafe(identity.certificate_status_changed, account, cert_id)
                except RuntimeError:  # the loop is closed: no connection is left
                    return
            if change.devices is None and "iot_certificates" in change.tables:
                # A whole copy (after the listener reconnected): which certificates changed
                # while nothing was heard is not known, so every connected one is checked.
                try:
                    loop.call_soon_threadsafe(aws_devices.recheck_connections)
                except RuntimeError:
                    return

        def swept() -> None:
            """On the heartbeat thread: another node marked this one's devices offline (its
            heartbeat was late); the presence writer writes the connected ones again."""
            try:
                loop.call_soon_threadsafe(registry.presence.resync)
            except RuntimeError:  # the loop is closed: no connection is left
                return

        store.on_reachability = reachability
        store.on_swept = swept
        store.add_change_listener(identities)
        store.start_listening()
        # Devices of a node that died are marked offline by the others (registry/pg_store.py).
        settings = self.settings.registry
        store.start_heartbeat(settings.node_heartbeat, settings.node_timeout_s)

    def _server_tls(self) -> ServerTLS:
        """The TLS listener's contexts: the configured certificate, or the one the hub's CA
        signs for ``mqtt.tls_hosts`` (identity/server_cert.py); client certificates of the
        hub's CA and of the registered CAs (transport/tls.py)."""
        mqtt = self.settings.mqtt
        ca, identity = self.ca, self.identity
        assert ca is not None and identity is not None
        if mqtt.tls_cert and mqtt.tls_key:
            cert_file, key_file = mqtt.tls_cert, mqtt.tls_key
        else:
            hosts = mqtt.tls_hosts or server_cert.default_hosts()
            cert_path, key_path = server_cert.ensure(ca, self.settings.data_dir, hosts)
            cert_file, key_file = str(cert_path), str(key_path)
        changes = identity.changes
        return ServerTLS(
            cert_file,
            key_file,
            ca_pem=ca.pem,
            anchors=identity.reader.trust_anchors,
            generation=lambda: changes.trust,
        )

    def _http_protocol(self) -> asyncio.Protocol | None:
        """A protocol of the HTTP server for a TLS connection that is an HTTP request (MQTT
        over WebSocket on the TLS port: transport/tcp.py); None until it serves."""
        runner = self._http_runner
        server = None if runner is None else runner.server
        return None if server is None else server()

    def _preload_sign_ins(self, limit: int) -> None:
        """On an executor thread: a failure leaves the cache to fill as devices sign in (a
        degraded start, not a failed hub)."""
        registry = self.registry
        assert registry is not None
        try:
            loaded = registry.preload_sign_ins(limit)
        except Exception as error:
            log.warning("reading devices into the sign-in cache failed: %s", error)
            self.health.degrade("device-preload", f"reading devices at start failed: {error}")
            return
        log.debug("%d devices read into the sign-in cache", loaded)


def _trace_recorder(settings: Settings) -> TraceRecorder | None:
    """The delivery trace ([trace]; thinghub/trace), None when it is off."""
    trace = settings.trace
    if not trace.enabled:
        return None
    return TraceRecorder(
        max_messages=trace.max_messages,
        max_age_s=trace.max_age_s,
        max_sessions=trace.max_sessions,
        max_mqtt_per_second=trace.max_mqtt_per_second,
    )


def _cluster_status(node: ClusterNode) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``GET /thinghub/cluster``: this node's view of the cluster (cluster/node.py, status)."""

    async def status(_request: web.Request) -> web.Response:
        return web.json_response(node.status())

    return status


def _in_thread(work: Callable[[], None]) -> None:
    threading.Thread(target=work, name="thinghub-id-lease", daemon=True).start()


def _bound(server: asyncio.Server) -> tuple[str, int]:
    sockname = server.sockets[0].getsockname()
    return _display_host(sockname[0]), int(sockname[1])


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
