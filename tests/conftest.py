"""Fixtures that start a real broker for the socket scenarios and the interop tests.

Target switch
-------------
The black-box suites (``tests/scenarios``, ``tests/interop``) talk to a broker over sockets
only, so they can run against two targets, chosen by ``THINGHUB_TEST_TARGET``:

* ``thinghub`` (default): ``.venv/bin/thinghub serve --mqtt-port 0 --http-port 0 --data-dir
  DIR`` with settings in ``THINGHUB_MQTT_<KEY>`` environment variables.  The hub prints
  ``ready mqtt=127.0.0.1:PORT http=127.0.0.1:PORT`` once it listens.
* ``mosquitto``: ``mosquitto -c CONF`` with a generated config on free ports, the same
  settings mapped to mosquitto's options and ThingHub's defaults written out explicitly.  This
  is how the suites were validated before ThingHub existed, and it keeps them honest: a
  scenario that fails against mosquitto is a wrong test, unless it says why mosquitto deviates.

    THINGHUB_TEST_TARGET=mosquitto .venv/bin/pytest tests/scenarios tests/interop

Tests of ThingHub-only behaviour (settings mosquitto has no equivalent for, ``/healthz``,
defaults that differ, stricter-than-mosquitto spec choices) carry
``@pytest.mark.thinghub_only`` and are skipped for mosquitto.

Fixture API
-----------
``hub``                 session-scoped broker with default settings (a :class:`Hub`).
``start_hub(**s)``      module-scoped factory: a broker with settings ``s`` (keys as in
                        ``THINGHUB_MQTT_<KEY>``, e.g. ``start_hub(MAX_INFLIGHT=1)``); the same
                        settings within one module share one broker.
``fresh_hub(**s)``      function-scoped factory: a broker nobody else has touched.
``client(...)``         factory of connected :class:`pahoclient.Client` (paho, thread + queues);
                        stopped after the test.
``raw(...)``            factory of :class:`rawmqtt.RawClient` sockets; closed after the test.
``version``             parametrized 4 (3.1.1) and 5: a test that takes it runs for both.

A :class:`Hub` has ``host``, ``port``, ``ws_port``/``ws_path``, ``http_port`` (ThingHub),
``setting(KEY)`` (value in effect, defaults included), ``assert_serving()`` (a new client still
gets CONNACK), and ``deviates(name)`` / ``skip_if_deviates(name)``, which consult
``MOSQUITTO_DEVIATIONS`` below: the documented places where mosquitto 2.0.11 departs from the
spec, so that exactly that assertion is relaxed for mosquitto and stays strict for ThingHub.
``DENY_PUBLISH`` / ``DENY_SUBSCRIBE`` become an ACL file for mosquitto.

Every test uses unique client ids and topics (``unique()``) so tests sharing a hub never see
each other's traffic.
"""

from __future__ import annotations

import collections
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# The helper modules live beside the scenarios; make them importable from every test
# directory (scenarios and interop) under one module name.
sys.path.insert(0, str(Path(__file__).parent / "scenarios"))

import pahoclient
import rawmqtt

TARGET = os.environ.get("THINGHUB_TEST_TARGET", "thinghub")
if TARGET not in ("thinghub", "mosquitto"):
    raise pytest.UsageError(f"THINGHUB_TEST_TARGET must be thinghub or mosquitto, not {TARGET}")

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
# Every hub the tests start, as a subprocess or in this process (load_settings reads the
# environment), takes a free port for its TLS listener: on by default at 8883, it would
# clash between hubs running side by side. A test that wants a port says so.
os.environ.setdefault("THINGHUB_MQTT_TLS_PORT", "0")

READY_LINE = re.compile(r"ready mqtt=([\d.]+):(\d+) http=([\d.]+):(\d+)")

# ThingHub's documented defaults; the mosquitto config spells them out so both targets agree.
DEFAULTS = {
    "MAX_PACKET_SIZE": 262144,
    "MAX_QOS": 2,
    "RECEIVE_MAXIMUM": 100,
    "MAX_INFLIGHT": 100,
    "MAX_QUEUED_MESSAGES": 1000,
    "TOPIC_ALIAS_MAXIMUM": 10,
    "ALLOW_ANONYMOUS": True,
}


# Where the reference broker departs from the spec (or from a SHOULD that ThingHub's contract
# makes a MUST).  A test consults hub.deviates(name) to relax exactly that assertion for
# mosquitto and keeps the strict one for ThingHub.  Every entry was observed with 2.0.11.
MOSQUITTO_DEVIATIONS = {
    "keepalive-late": "keep alive is checked on a ~5 s timer: a silent client is closed up to"
    " ~6 s late, where MQTT-3.1.2-22/24 say 1.5x the keep alive; no DISCONNECT 0x8D either",
    "overlap-v3-qos": "a 3.1.1 client with overlapping subscriptions gets a single copy, at the"
    " QoS of one of them, not the highest one that MQTT-3.3.5-1 requires",
    "receive-maximum-quota": "a v5 client exceeding the Receive Maximum gets PUBREC 0x97"
    " (quota exceeded) and stays connected, where v5 3.3.4 asks for DISCONNECT 0x93",
    "will-delay-without-session": "a v5 will with a Will Delay Interval but Session Expiry 0"
    " is not published when the connection drops (at least not within 5 s), although the"
    " session ends then and v5 3.1.3.2.2 says the will goes out when the session ends",
    "no-disconnect-on-malformed": "some v5 errors (remaining length over 4 bytes, second"
    " CONNECT, duplicated property) close the connection without the DISCONNECT that v5 4.13"
    " says the server SHOULD send (ThingHub's contract: MUST)",
    "malformed-reason-codes": "a PUBLISH topic with wildcards gets 0x82, not 0x90 Topic Name"
    " invalid; a SUBSCRIBE without filters gets 0x81, not 0x82 (MQTT-3.8.3-2: protocol error)",
    "pingreq-reserved-flags": "a PINGREQ with non-zero reserved flags is answered instead of"
    " closing the connection (2.1.3, MQTT-2.2.2-2 in 3.1.1)",
    "takeover-no-disconnect": "on takeover the old v5 connection is closed without the"
    " DISCONNECT 0x8E of v5 3.1.4 / MQTT-3.1.4-3",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if TARGET == "thinghub":
        return
    skip = pytest.mark.skip(reason=f"thinghub_only: not applicable to target {TARGET}")
    for item in items:
        if "thinghub_only" in item.keywords:
            item.add_marker(skip)


@dataclass
class Hub:
    """A running broker, as the tests see it."""

    target: str
    host: str
    port: int  # MQTT over TCP
    ws_port: int  # MQTT over WebSocket (ThingHub: the HTTP port)
    http_port: int | None  # ThingHub's HTTP port; None for mosquitto
    settings: dict[str, Any]
    proc: subprocess.Popen[bytes]
    output: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=300))
    drain: threading.Thread | None = None
    log_file: Path | None = None
    ws_path: str = "/mqtt"

    def port_for(self, transport: str) -> int:
        return self.ws_port if transport == "websockets" else self.port

    def setting(self, key: str) -> Any:
        return self.settings.get(key, DEFAULTS.get(key))

    def deviates(self, name: str) -> bool:
        """True when this target is known to depart from the spec on `name`."""
        assert name in MOSQUITTO_DEVIATIONS, f"undocumented deviation {name}"
        return self.target == "mosquitto"

    def skip_if_deviates(self, name: str) -> None:
        """Skip a scenario whose whole point is where this target departs from the spec."""
        if self.deviates(name):
            pytest.skip(f"{self.target} deviates: {MOSQUITTO_DEVIATIONS[name]}")

    def log(self) -> str:
        return "\n".join(self.output) or _tail(self.log_file)

    def assert_serving(self) -> None:
        """The broker process is alive and completes a CONNECT/CONNACK with a new client."""
        assert self.proc.poll() is None, f"broker exited with {self.proc.returncode}\n{self.log()}"
        with rawmqtt.RawClient(self.host, self.port, version=4) as c:
            c.connect(pahoclient.unique("alive"))
            c.ping()
            c.disconnect()


def _tail(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-100:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _drain(stream: Any, sink: collections.deque[str], ready: list[str], event: threading.Event):
    for raw_line in iter(stream.readline, b""):
        line = raw_line.decode(errors="replace").rstrip()
        sink.append(line)
        if not event.is_set() and READY_LINE.search(line):
            ready.append(line)
            event.set()
    event.set()  # EOF: wake the waiter, which then sees the process has exited


def _start_thinghub(settings: dict[str, Any], data_dir: Path) -> Hub:
    env = dict(os.environ)
    # The scenarios exercise a plain MQTT broker: anonymous clients, unless a test says not.
    for key, value in {"ALLOW_ANONYMOUS": True, **settings}.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        env[f"THINGHUB_MQTT_{key.upper()}"] = str(value)
    exe = ROOT / ".venv" / "bin" / "thinghub"
    cmd = [str(exe), "serve", "--mqtt-port", "0", "--http-port", "0", "--data-dir", str(data_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    output: collections.deque[str] = collections.deque(maxlen=300)
    ready: list[str] = []
    event = threading.Event()
    drain = threading.Thread(target=_drain, args=(proc.stdout, output, ready, event), daemon=True)
    drain.start()
    if not event.wait(READY_TIMEOUT) or not ready:
        proc.kill()
        proc.wait()
        drain.join(2)
        assert proc.stdout is not None
        proc.stdout.close()
        log = "\n".join(output)
        pytest.fail(f"thinghub did not print a ready line within {READY_TIMEOUT}s\n{log}")
    m = READY_LINE.search(ready[0])
    assert m is not None
    http = int(m.group(4))
    return Hub("thinghub", m.group(1), int(m.group(2)), http, http, settings, proc, output, drain)


# THINGHUB_MQTT_* -> mosquitto option; "listener" options go under each listener.
_MOSQUITTO_GLOBAL = {
    "MAX_PACKET_SIZE": "max_packet_size",
    "MAX_QUEUED_MESSAGES": "max_queued_messages",
    "MAX_QUEUED_BYTES": "max_queued_bytes",
    "SERVER_KEEP_ALIVE": "max_keepalive",
}
_MOSQUITTO_LISTENER = {
    "MAX_QOS": "max_qos",
    "MAX_CONNECTIONS": "max_connections",
    "TOPIC_ALIAS_MAXIMUM": "max_topic_alias",
}


def _mosquitto_config(settings: dict[str, Any], port: int, ws_port: int, d: Path) -> str:
    merged = {**DEFAULTS, **settings}
    unknown = set(merged) - set(_MOSQUITTO_GLOBAL) - set(_MOSQUITTO_LISTENER)
    unknown -= {"RECEIVE_MAXIMUM", "MAX_INFLIGHT", "ALLOW_ANONYMOUS"}
    unknown -= {"DENY_PUBLISH", "DENY_SUBSCRIBE"}
    if unknown:
        raise pytest.UsageError(
            f"no mosquitto equivalent for {sorted(unknown)}: mark the test thinghub_only"
        )
    # mosquitto has one knob for both windows: max_inflight_messages bounds the outbound
    # inflight window and is announced as the v5 Receive Maximum for the inbound one.
    inflight = {settings.get("RECEIVE_MAXIMUM"), settings.get("MAX_INFLIGHT")} - {None}
    if len(inflight) > 1:
        raise pytest.UsageError("mosquitto cannot set RECEIVE_MAXIMUM and MAX_INFLIGHT apart")
    anonymous = "true" if merged["ALLOW_ANONYMOUS"] in (True, "true", "1", 1) else "false"
    lines = [
        # Run as root, mosquitto would switch to user "mosquitto", which cannot write into
        # pytest's private temporary directory.  As any other user this line is ignored.
        f"user {getpass.getuser()}",
        "per_listener_settings false",
        f"allow_anonymous {anonymous}",
        "persistence false",
        "sys_interval 0",
        f"log_dest file {d / 'mosquitto.log'}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        f"max_inflight_messages {inflight.pop() if inflight else merged['MAX_INFLIGHT']}",
    ]
    lines += [f"{opt} {merged[key]}" for key, opt in _MOSQUITTO_GLOBAL.items() if key in merged]
    deny = [
        (kind, f.strip())
        for key, kind in (("DENY_PUBLISH", "write"), ("DENY_SUBSCRIBE", "read"))
        for f in str(settings.get(key, "")).split(",")
        if f.strip()
    ]
    if deny:
        # ACL lines before any "user" line apply to anonymous clients.  mosquitto has no
        # "deny subscribe only": denying "read" refuses the SUBSCRIBE (and delivery),
        # denying "write" refuses PUBLISH; each scenario only exercises its own direction.
        acl = ["topic readwrite #", *(f"topic deny {f}" for _, f in deny)]
        (d / "acl").write_text("\n".join(acl) + "\n")
        lines.append(f"acl_file {d / 'acl'}")
    listener_opts = [f"{opt} {merged[k]}" for k, opt in _MOSQUITTO_LISTENER.items() if k in merged]
    lines += [f"listener {port} 127.0.0.1", *listener_opts]
    lines += [f"listener {ws_port} 127.0.0.1", "protocol websockets", *listener_opts]
    return "\n".join(lines) + "\n"


def _start_mosquitto(settings: dict[str, Any], data_dir: Path) -> Hub:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    for _attempt in range(3):  # a free port can be taken between probing and binding
        port, ws_port = _free_port(), _free_port()
        conf = data_dir / "mosquitto.conf"
        conf.write_text(_mosquitto_config(settings, port, ws_port, data_dir))
        (data_dir / "mosquitto.log").unlink(missing_ok=True)
        with (data_dir / "stdout.log").open("wb") as out:
            proc = subprocess.Popen([exe, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
        # Wait for the "running" log line rather than probing the ports: mosquitto 2.0.11
        # miscounts connections closed before CONNECT, which would loosen max_connections.
        log_file = data_dir / "mosquitto.log"
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            if log_file.exists() and " running" in log_file.read_text(errors="replace"):
                return Hub(
                    "mosquitto",
                    "127.0.0.1",
                    port,
                    ws_port,
                    None,
                    settings,
                    proc,
                    log_file=log_file,
                )
            time.sleep(0.02)
        proc.kill()
        proc.wait()
    log = _tail(data_dir / "stdout.log") + "\n" + _tail(data_dir / "mosquitto.log")
    pytest.fail(f"mosquitto did not start\n{log}")


def _start(settings: dict[str, Any], data_dir: Path) -> Hub:
    data_dir.mkdir(parents=True, exist_ok=True)
    if TARGET == "mosquitto":
        return _start_mosquitto(settings, data_dir)
    return _start_thinghub(settings, data_dir)


def _stop(hub: Hub) -> None:
    if hub.proc.poll() is not None:
        pytest.fail(f"{hub.target} exited early with {hub.proc.returncode}\n{hub.log()}")
    hub.proc.send_signal(signal.SIGTERM)
    try:
        code = hub.proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        hub.proc.kill()
        hub.proc.wait()
        pytest.fail(f"{hub.target} ignored SIGTERM for {STOP_TIMEOUT}s\n{hub.log()}")
    if hub.drain is not None:
        hub.drain.join(2)
    if hub.proc.stdout is not None:
        hub.proc.stdout.close()
    assert code == 0, f"{hub.target} exited with {code} on SIGTERM\n{hub.log()}"


class _HubPool:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.hubs: dict[tuple[tuple[str, str], ...], Hub] = {}

    def get(self, settings: dict[str, Any], shared: bool = True) -> Hub:
        key = tuple(sorted((k.upper(), str(v)) for k, v in settings.items()))
        if shared and key in self.hubs:
            return self.hubs[key]
        hub = _start(
            {k.upper(): v for k, v in settings.items()}, self.base / f"hub{len(self.hubs)}"
        )
        self.hubs[key if shared else (*key, ("#", str(id(hub))))] = hub
        return hub

    def close(self) -> None:
        errors = []
        for hub in self.hubs.values():
            try:
                _stop(hub)
            except BaseException as exc:  # stop them all, then report
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """The shared broker with default settings."""
    pool = _HubPool(tmp_path_factory.mktemp("hub"))
    yield pool.get({})
    pool.close()


@pytest.fixture(scope="module")
def start_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Hub]]:
    """start_hub(**settings) -> Hub; one broker per distinct settings within a module."""
    pool = _HubPool(tmp_path_factory.mktemp("hubs"))
    yield lambda **settings: pool.get(settings)
    pool.close()


@pytest.fixture
def fresh_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Hub]]:
    """fresh_hub(**settings) -> Hub that no other test has used; stopped after the test."""
    pool = _HubPool(tmp_path_factory.mktemp("fresh"))
    yield lambda **settings: pool.get(settings, shared=False)
    pool.close()


@pytest.fixture
def client(hub: Hub) -> Iterator[Callable[..., pahoclient.Client]]:
    """client(version=5, hub=..., connect=True, **Client kwargs) -> a paho client."""
    made: list[pahoclient.Client] = []

    def make(
        version: int = 5, *, on: Hub | None = None, connect: bool = True, **kwargs: Any
    ) -> pahoclient.Client:
        c = pahoclient.Client(on or hub, version=version, **kwargs)
        made.append(c)
        if connect:
            c.connect()
        return c

    yield make
    for c in made:
        c.stop()


@pytest.fixture
def raw(hub: Hub) -> Iterator[Callable[..., rawmqtt.RawClient]]:
    """raw(version=5, on=hub) -> a raw socket client (not yet connected at MQTT level)."""
    made: list[rawmqtt.RawClient] = []

    def make(version: int = 5, *, on: Hub | None = None) -> rawmqtt.RawClient:
        h = on or hub
        c = rawmqtt.RawClient(h.host, h.port, version=version)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture(params=[4, 5], ids=["v311", "v5"])
def version(request: pytest.FixtureRequest) -> int:
    """The MQTT protocol level a scenario runs with: 4 (3.1.1) and 5 (5.0)."""
    return int(request.param)
