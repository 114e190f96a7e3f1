"""Settings: frozen dataclasses with documented defaults, filled from a TOML file, then
``THINGHUB_*`` environment variables, then command-line flags (each overriding the one before).

Environment names are ``THINGHUB_<SECTION>_<KEY>`` for sectioned keys (``THINGHUB_MQTT_MAX_QOS``)
and ``THINGHUB_<KEY>`` for top-level ones (``THINGHUB_DATA_DIR``). Lists are comma-separated.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cluster.settings import ClusterSettings
from .http.ratelimit import parse_rate_overrides

KIB = 1024
MIB = 1024 * KIB


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the setting and says why."""


@dataclass(frozen=True, slots=True)
class MQTTSettings:
    """The MQTT listener and the broker's limits. Defaults follow the clouds' published limits
    where they exist (the README's *Limits* cites each) and mosquitto's otherwise."""

    host: str = "0.0.0.0"
    port: int = 1883
    # The TLS listener: MQTT over TLS, also with client certificates (AWS IoT devices), and
    # MQTT over WebSocket with TLS at /mqtt (transport/tcp.py). On by default; ``tls = false``
    # turns it off. Port 0 picks a free port (the ready line says which).
    tls: bool = True
    tls_port: int = 8883
    # Its certificate and key (PEM files). When not given, the hub's CA signs one at start for
    # ``tls_hosts``, kept in data_dir/ca/server.pem: devices trust ``thinghub ca show``.
    tls_cert: str | None = None
    tls_key: str | None = None
    # The host names and addresses that certificate is for; empty: localhost, 127.0.0.1 and
    # the machine's host name.
    tls_hosts: tuple[str, ...] = ()
    # Largest packet accepted and advertised in CONNACK (Alibaba's 256 KB message limit).
    max_packet_size: int = 256 * KIB
    # 2 is full MQTT; 1 behaves like AWS IoT Core and Alibaba IoT (QoS 2 downgraded/refused).
    max_qos: int = 2
    # Receive Maximum the hub announces: QoS 1/2 publishes a client may have unacknowledged.
    receive_maximum: int = 100
    # Outbound window per session (also capped by the client's own Receive Maximum).
    max_inflight: int = 100
    # Per-session queue (offline or slow consumers) for QoS 1/2 messages.
    max_queued_messages: int = 1000
    max_queued_bytes: int = 16 * MIB
    # Queued messages of one persistent session held in memory while it is connected (none
    # while offline); the rest wait on disk and are read back in pages of this many.
    queue_page_messages: int = 500
    # Bytes waiting in one connection's socket buffer before QoS 0 messages to it are dropped.
    max_write_buffer: int = 1 * MIB
    max_connections: int = 100_000
    max_subscriptions_per_client: int = 1000
    # Devices signed in with the Alibaba scheme: Alibaba's limit of 100 subscriptions each.
    max_subscriptions_per_device: int = 100
    max_topic_length: int = 65535
    max_topic_levels: int = 128
    max_client_id_length: int = 256
    max_retained_messages: int = 1_000_000
    # Retained messages in bytes (topic + payload + properties + a fixed per-message overhead),
    # per account and hub-wide: past either, a new or larger retained message is refused
    # (v5 PUBACK 0x97, HTTP 429/503 by dialect) and counted.
    max_retained_bytes: int = 64 * MIB
    max_retained_bytes_total: int = 512 * MIB
    # Topic filters under which nothing may be retained: the Alibaba system and RRpc topics
    # carry requests and answers, never state (a retained PUBLISH there gets v5 PUBACK 0x87).
    unretainable_topics: tuple[str, ...] = ("/sys/#", "/ext/rrpc/#", "$aws/#")
    # Bytes of topic filters one session may hold, and all sessions together (SUBACK 0x97).
    max_subscription_bytes: int = 256 * KIB
    max_subscription_bytes_total: int = 256 * MIB
    # Connections that have not finished CONNECT yet, hub-wide: past it new connections are
    # closed at once (a flood of silent sockets cannot starve the hub of descriptors).
    max_pending_connects: int = 5000
    # CONNECTs handled per turn of the event loop (0: no limit); the rest wait for the next
    # turn, so a fleet signing in at once cannot hold up established clients' traffic.
    connects_per_turn: int = 64
    # Connection ends (a socket closed or reset) whose session work (will, expiry, presence)
    # is done per turn (0: no limit): a fleet dropping at once is wound down over a few turns.
    disconnects_per_turn: int = 256
    # Connections from one source address (0: no limit); past it new ones are closed at once.
    max_connections_per_address: int = 10_000
    # File descriptors kept free for established clients, the HTTP port and the stores: new
    # MQTT connections are closed at once while fewer than this many are left.
    reserved_file_descriptors: int = 256
    # Server Keep Alive: when set, it overrides the client's value (v5 CONNACK property).
    server_keep_alive: int | None = None
    # Session Expiry Interval is capped here (seconds); 7 days as the clouds keep offline messages.
    max_session_expiry: int = 7 * 24 * 3600
    topic_alias_maximum: int = 10
    # Clients without device credentials are refused unless this is on (then they join the
    # root account): a plain MQTT broker for trusted networks and development.
    allow_anonymous: bool = False
    retain_available: bool = True
    # Topic filters refused to every client (an operator's coarse ACL, also used by tests).
    deny_publish: tuple[str, ...] = ()
    deny_subscribe: tuple[str, ...] = ()
    # Seconds a new connection may take to send CONNECT before it is closed.
    connect_timeout: float = 10.0
    # $SYS/broker/... topics (thinghub/observe/systopics.py): published, retained, in the root
    # account every this many seconds (0: not at all), readable by the root account's clients
    # that ``sys_readers`` names: "anonymous" (clients without device credentials),
    # "client:<glob>" (client ids), "user:<glob>" (user names). Nobody else may subscribe.
    sys_interval: float = 10.0
    sys_readers: tuple[str, ...] = ("anonymous",)


@dataclass(frozen=True, slots=True)
class HTTPSettings:
    host: str = "0.0.0.0"
    port: int = 8080
    # Seconds a client may take to send a request's head, and then its body, before the
    # connection is closed (a client trickling bytes cannot hold a connection for ever).
    header_timeout: float = 10.0
    body_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class APISettings:
    """The cloud-compatible HTTP APIs."""

    # Per-account request rates, "Action=requests_per_second", overriding the documented
    # defaults (thinghub/http/ratelimit.py; Alibaba's per-API QPS, AWS's publish rate).
    aliyun_rate_limits: tuple[str, ...] = ()
    aws_rate_limits: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """The broker's durable store, ``broker.db`` in the data directory. Past any of
    these bounds new QoS 1/2 messages are refused (MQTT 5: 0x97) rather than accepted and
    lost; see thinghub/store/sqlite.py."""

    # "sqlite" (durable, the default) or "memory": nothing survives a restart, for
    # benchmarks against the durable figure and throw-away test hubs.
    backend: str = "sqlite"
    # Journal calls / bytes the broker reported and the writer has not committed yet.
    max_pending_calls: int = 200_000
    max_pending_bytes: int = 64 * MIB
    # Live data in broker.db (0: no limit but the disk's, which is also handled).
    max_size_bytes: int = 8 * 1024 * MIB
    # Queued messages older than this are dropped at start-up (the clouds keep 7 days).
    retention_s: int = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class ShadowSettings:
    """AWS IoT device shadows (thinghub/shadow). Defaults are AWS IoT Core's Device Shadow
    quotas; see the README, "Device shadows"."""

    # "Maximum size of a JSON state document": desired + reported, metadata not counted.
    max_document_bytes: int = 8 * KIB
    # "Maximum depth of JSON device state documents": levels in desired or reported.
    max_depth: int = 8
    # "Maximum number of in-flight, unacknowledged messages per thing" (429 beyond).
    max_inflight_per_thing: int = 10
    # Shadow requests waiting for the store, hub-wide (429 beyond).
    max_pending: int = 10_000


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """The registry (accounts, products, devices), ``registry.db`` in the data directory, or
    PostgreSQL (``url``)."""

    # Devices whose ONLINE/OFFLINE change waits for the presence writer; one entry per device
    # (later changes of the same device replace the earlier), so a fleet reconnecting at once
    # costs one entry per device. Past it, a change is not kept on its own: the writer's next
    # batch rewrites every device's status from the hub's memory (statuses stay right; the
    # sign-in times of devices that came and went meanwhile are lost).
    presence_max_pending: int = 200_000
    # Presence changes written in one transaction (one fsync), and how long the writer lets
    # changes gather before it takes a batch (seconds): how far registry.db may lag.
    presence_batch: int = 10_000
    presence_interval: float = 0.1
    # Registry writes made through the APIs, waiting for the registry writer (503 beyond).
    max_pending_writes: int = 10_000
    # Devices read into the sign-in cache at start, on a thread, the most recently online
    # first (at most the cache's 100,000 entries; 0: none): a fleet reconnecting after a
    # restart signs in without a file read per device on the event loop.
    preload_devices: int = 100_000
    # A PostgreSQL registry shared by the nodes of a cluster (``serve --registry URL``,
    # THINGHUB_REGISTRY_URL): the registry, the AWS identities and the shadows live there,
    # and each node reads a local copy kept current by LISTEN/NOTIFY
    # (registry/pg_store.py). None: registry.db in the data directory.
    url: str | None = None
    # With ``url``: devices of a node that died (SIGKILL, a lost machine) are shown OFFLINE
    # by the others. Each node writes a heartbeat to PostgreSQL every ``node_heartbeat``
    # seconds and, in the same transaction, marks OFFLINE the devices online on a node whose
    # last heartbeat is older than ``node_timeout`` seconds (None: 3 heartbeats), on
    # PostgreSQL's clock. So a dead node's devices are OFFLINE everywhere within
    # node_timeout + node_heartbeat; a node only paused longer than node_timeout writes its
    # connected devices ONLINE again at its next heartbeat (registry/pg_store.py).
    node_heartbeat: float = 5.0
    node_timeout: float | None = None

    @property
    def node_timeout_s(self) -> float:
        """``node_timeout``, or 3 heartbeats when unset."""
        return 3 * self.node_heartbeat if self.node_timeout is None else self.node_timeout


@dataclass(frozen=True, slots=True)
class AWSSettings:
    """The AWS IoT control plane (thinghub/http/aws_control): what the hub calls itself in ARNs
    and in DescribeEndpoint answers."""

    # The region in every ARN (arn:aws:iot:<region>:<account>:...); any region a client signs
    # with is accepted, as on the data plane.
    region: str = "us-east-1"
    # The host DescribeEndpoint answers (None: the host the request came to, without its port).
    endpoint_host: str | None = None
    # Client certificates whose sign-in records (certificate, things, policies) are kept in
    # memory (auth/aws_device.py); past it the oldest go, and come back with one WAL read.
    sign_in_cache: int = 100_000
    # Answers per action each AWS IoT device connection keeps by topic (publish, subscribe,
    # receive); past it they are forgotten and worked out again.
    policy_topic_cache: int = 256


@dataclass(frozen=True, slots=True)
class TraceSettings:
    """Delivery traces (thinghub/trace): what became of each recent message, per session,
    read with ``thinghub trace MESSAGE_ID`` or ``GET /thinghub/trace/{MessageId}``. Kept in
    memory only; see the README, *Delivery trace*."""

    enabled: bool = False
    # Messages traced: past it, or past the age, the oldest traces go first.
    max_messages: int = 10_000
    max_age_s: float = 3600.0
    # Sessions whose events are kept per message (the first ones handed a copy, and the first
    # ones with an event); beyond them a message keeps counts by event only.
    max_sessions: int = 16
    # MQTT publishes traced per second at most (messages of API calls are always traced);
    # beyond, they are counted as over budget and not traced. 0: every message. The cost of
    # the trace has this ceiling whatever the traffic (thinghub/trace/recorder.py).
    max_mqtt_per_second: int = 1000


@dataclass(frozen=True, slots=True)
class LogSettings:
    """The hub's log (thinghub/observe/logs.py) and its audit lines (observe/audit.py). The
    level is the top-level ``log_level``."""

    # "text" (one readable line per record) or "json" (one JSON object per line).
    format: str = "text"
    # Records waiting for the thread that writes them (past it they are dropped and counted),
    # so that the event loop never waits on the terminal, a pipe or the disk.
    queue: int = 10_000
    # One line per API call and per refused sign-in on the "thinghub.audit" logger, at most
    # ``audit_rate`` lines a second, ``audit_burst`` at once; beyond, they are counted and
    # summarised ("N audit lines suppressed"), so a flood cannot fill the disk.
    audit: bool = True
    audit_rate: float = 50.0
    audit_burst: int = 500


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """The web console at ``/console`` on the HTTP port (thinghub/console): sign-in with an
    access key, server-side sessions, the live tail. See the README, *The console*."""

    enabled: bool = True
    # A session ends after this long without a request, and this long after its sign-in
    # whatever it does (seconds); at most ``max_sessions`` live at once (past it, signing in
    # ends the least recently used one).
    session_idle_s: float = 1800.0
    session_max_s: float = 12 * 3600.0
    max_sessions: int = 100
    # Sign-in attempts per client address: a burst of this many, then this many a minute.
    signin_per_minute: int = 10
    # Live tails (WebSockets at /console/ws/tail): per session and hub-wide; messages waiting
    # for one browser (past it they are dropped and counted), and the payload bytes a tail
    # shows of each message.
    max_tails_per_session: int = 4
    max_tails: int = 64
    tail_queue: int = 500
    tail_payload_bytes: int = 4096


#: What ``mqtt.sys_readers`` entries look like.
SYS_READER = re.compile(r"anonymous|(client|user):.+")


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path("./data")
    log_level: str = "INFO"
    mqtt: MQTTSettings = field(default_factory=MQTTSettings)
    http: HTTPSettings = field(default_factory=HTTPSettings)
    api: APISettings = field(default_factory=APISettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    shadow: ShadowSettings = field(default_factory=ShadowSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    aws: AWSSettings = field(default_factory=AWSSettings)
    trace: TraceSettings = field(default_factory=TraceSettings)
    log: LogSettings = field(default_factory=LogSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    # Several hubs as one, on NATS (thinghub/cluster/settings.py); off unless nats_urls is set.
    cluster: ClusterSettings = field(default_factory=ClusterSettings)

    def validate(self) -> Settings:
        m = self.mqtt
        checks: list[tuple[bool, str]] = [
            (m.max_qos in (0, 1, 2), "mqtt.max_qos must be 0, 1 or 2"),
            (1 <= m.receive_maximum <= 65535, "mqtt.receive_maximum must be 1..65535"),
            (1 <= m.max_inflight <= 65535, "mqtt.max_inflight must be 1..65535"),
            (m.max_packet_size >= 64, "mqtt.max_packet_size must be at least 64 bytes"),
            (m.max_packet_size <= 268_435_455, "mqtt.max_packet_size exceeds MQTT's maximum"),
            (0 <= m.topic_alias_maximum <= 65535, "mqtt.topic_alias_maximum must be 0..65535"),
            (m.max_queued_messages >= 0, "mqtt.max_queued_messages must be >= 0"),
            (m.queue_page_messages >= 1, "mqtt.queue_page_messages must be >= 1"),
            (m.max_connections >= 1, "mqtt.max_connections must be >= 1"),
            (m.connects_per_turn >= 0, "mqtt.connects_per_turn must be >= 0"),
            (m.disconnects_per_turn >= 0, "mqtt.disconnects_per_turn must be >= 0"),
            (
                m.server_keep_alive is None or 0 <= m.server_keep_alive <= 65535,
                "mqtt.server_keep_alive must be 0..65535",
            ),
            (
                0 <= m.port <= 65535 and 0 <= m.tls_port <= 65535 and 0 <= self.http.port <= 65535,
                "ports must be 0..65535",
            ),
            (
                (m.tls_cert is None) == (m.tls_key is None),
                "mqtt.tls_cert and mqtt.tls_key are given together (or neither: the hub's CA "
                "signs the TLS certificate)",
            ),
            (
                min(self.aws.sign_in_cache, self.aws.policy_topic_cache) >= 1,
                "aws.sign_in_cache and aws.policy_topic_cache must be at least 1",
            ),
            (self.store.backend in ("sqlite", "memory"), "store.backend must be sqlite or memory"),
            (
                min(
                    self.shadow.max_document_bytes,
                    self.shadow.max_depth,
                    self.shadow.max_inflight_per_thing,
                    self.shadow.max_pending,
                )
                >= 1,
                "shadow settings must be at least 1",
            ),
            (
                min(
                    self.registry.presence_max_pending,
                    self.registry.presence_batch,
                    self.registry.max_pending_writes,
                )
                >= 1,
                "registry settings must be at least 1",
            ),
            (self.registry.preload_devices >= 0, "registry.preload_devices must be at least 0"),
            (
                0 < self.registry.node_heartbeat < self.registry.node_timeout_s,
                "registry.node_heartbeat must be above 0 and below registry.node_timeout",
            ),
            (
                min(self.trace.max_messages, self.trace.max_sessions) >= 1
                and self.trace.max_age_s > 0
                and self.trace.max_mqtt_per_second >= 0,
                "trace.max_messages and trace.max_sessions must be at least 1, "
                "trace.max_age_s above 0, trace.max_mqtt_per_second 0 or more",
            ),
        ]
        checks.append(
            (
                re.fullmatch(r"[a-z]{2}(-[a-z]+)+-[0-9]+", self.aws.region) is not None,
                "aws.region must look like us-east-1",
            )
        )
        log = self.log
        checks += [
            (
                m.sys_interval == 0 or m.sys_interval >= 0.1,
                "mqtt.sys_interval must be 0 (no $SYS topics) or at least 0.1 seconds",
            ),
            (
                all(SYS_READER.fullmatch(entry) for entry in m.sys_readers),
                'mqtt.sys_readers entries must be "anonymous", "client:<glob>" or "user:<glob>"',
            ),
            (log.format in ("text", "json"), "log.format must be text or json"),
            (log.queue >= 1, "log.queue must be at least 1"),
            (
                min(
                    self.console.session_idle_s,
                    self.console.session_max_s,
                    self.console.max_sessions,
                    self.console.signin_per_minute,
                    self.console.max_tails_per_session,
                    self.console.max_tails,
                    self.console.tail_queue,
                    self.console.tail_payload_bytes,
                )
                > 0,
                "console settings must be above 0",
            ),
            (log.audit_rate > 0, "log.audit_rate must be above 0"),
            (log.audit_burst >= 1, "log.audit_burst must be at least 1"),
            (
                self.log_level.upper() in ("DEBUG", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL"),
                "log_level must be DEBUG, INFO, WARNING or ERROR",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        for problem in self.cluster.problems():
            raise ConfigError(problem)
        if self.registry.url and not self.cluster.enabled and self.cluster.node_id < 0:
            # Hubs sharing a registry without a cluster to claim numbers in: each needs its
            # own number, or their MessageIds (registry/ids.py) could be the same.
            raise ConfigError(
                "registry.url without cluster.nats_urls needs cluster.node_id (--node-id "
                "0-1023, a different one on each hub sharing the registry): MessageIds carry it"
            )
        for name in ("aliyun_rate_limits", "aws_rate_limits"):
            try:
                parse_rate_overrides(getattr(self.api, name))
            except ValueError as error:
                raise ConfigError(f"api.{name}: {error}") from None
        return self


_SECTIONS = {
    "mqtt": MQTTSettings,
    "http": HTTPSettings,
    "api": APISettings,
    "store": StoreSettings,
    "shadow": ShadowSettings,
    "registry": RegistrySettings,
    "aws": AWSSettings,
    "trace": TraceSettings,
    "log": LogSettings,
    "console": ConsoleSettings,
    "cluster": ClusterSettings,
}
#: Top-level keys whose name starts like a section's (THINGHUB_LOG_LEVEL is ``log_level``,
#: not ``[log] level``).
_TOP_LEVEL = {"log_level"}


def _convert(name: str, raw: Any, annotation: Any) -> Any:
    """Turn a TOML or environment value into the field's declared type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "null")):
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(name, raw, inner[0])
    if origin is tuple:
        if isinstance(raw, str):
            items: list[Any] = [s.strip() for s in raw.split(",") if s.strip()]
        elif isinstance(raw, list):
            items = raw
        else:
            raise ConfigError(f"{name}: expected a list, got {raw!r}")
        return tuple(str(i) for i in items)
    if annotation is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {raw!r}")
    if annotation in (int, float):
        try:
            return annotation(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
    if annotation is Path:
        return Path(str(raw))
    return str(raw)


def _apply(obj: Any, values: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(type(obj))
    changes: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(obj)}
    for key, raw in values.items():
        if key not in names or key in _SECTIONS:
            raise ConfigError(f"unknown setting {where}{key}")
        changes[key] = _convert(f"{where}{key}", raw, hints[key])
    return dataclasses.replace(obj, **changes)


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build Settings from (in rising priority) defaults, a TOML file, the environment, and
    ``overrides`` (dotted keys such as ``"mqtt.port"``, from command-line flags)."""
    environ = os.environ if environ is None else environ
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        try:
            with open(config_file, "rb") as fh:
                layers.append((f"{config_file}: ", tomllib.load(fh)))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from None

    env_layer: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith("THINGHUB_") or name.startswith("THINGHUB_ROOT_"):
            continue
        key = name[len("THINGHUB_") :].lower()
        if key.startswith("test_"):
            continue  # the test suite's own switches
        section = key.split("_", 1)[0]
        if section in _SECTIONS and "_" in key and key not in _TOP_LEVEL:
            env_layer.setdefault(section, {})[key.split("_", 1)[1]] = value
        else:
            env_layer[key] = value
    layers.append(("environment THINGHUB_", env_layer))

    flag_layer: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        if "." in dotted:
            section, key = dotted.split(".", 1)
            flag_layer.setdefault(section, {})[key] = value
        else:
            flag_layer[dotted] = value
    layers.append(("option ", flag_layer))

    settings = Settings()
    for where, layer in layers:
        top = {k: v for k, v in layer.items() if k not in _SECTIONS}
        settings = _apply(settings, top, where)
        for section in _SECTIONS:
            if section in layer:
                if not isinstance(layer[section], dict):
                    raise ConfigError(f"{where}{section} must be a table")
                current = getattr(settings, section)
                settings = dataclasses.replace(
                    settings, **{section: _apply(current, layer[section], f"{where}{section}.")}
                )
    return settings.validate()
