"""``make cluster`` (``python -m thinghub.cluster.demo``): a ThingHub cluster on loopback.

Starts, in a temporary directory, a 3-server NATS cluster with JetStream and 3 ThingHub
nodes (``thinghub serve --cluster ... --node-name n1..n3``, each with its own data
directory, free ports, anonymous MQTT allowed), all with the same root access key, generated
here; prints each node's MQTT and HTTP endpoints and the key, then waits. Ctrl-C (SIGINT) or
SIGTERM stops every process it started, by its PID (the hubs first, then NATS), and removes
the directory. The children run in sessions of their own, so that a Ctrl-C on the terminal
reaches this script only and the stop is in order.

The registry is still each node's own SQLite file (PostgreSQL is not used yet): a device is
registered on the node where the API call is made. Messages, session ownership and retained
messages are cluster-wide (docs/architecture.md, *Cluster*).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

NODES = ("n1", "n2", "n3")
NATS_CLUSTER = "thinghub-demo"
READY = re.compile(r"ready mqtt=(\S+) http=(\S+)")
STOP_WAIT = 15.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nats_config(name: str, directory: Path, port: int, route: int, routes: list[int]) -> str:
    peers = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in routes)
    return "\n".join(
        [
            f"server_name: {name}",
            f"listen: 127.0.0.1:{port}",
            f'jetstream {{ store_dir: "{directory / "js"}", max_memory_store: 64MB, '
            "max_file_store: 1GB }",
            f"cluster {{ name: {NATS_CLUSTER}, listen: 127.0.0.1:{route}, routes: [{peers}] }}",
            "",
        ]
    )


class Demo:
    def __init__(self, root: Path, nats_server: str, ready_timeout: float) -> None:
        self.root = root
        self.nats_server = nats_server
        self.ready_timeout = ready_timeout
        self.nats: list[subprocess.Popen[bytes]] = []
        self.hubs: list[subprocess.Popen[bytes]] = []
        self.key_id = "LTAI" + secrets.token_hex(10)
        self.secret = secrets.token_urlsafe(24)

    def start(self) -> list[tuple[str, str, str]]:
        ports = [(_free_port(), _free_port()) for _ in range(3)]
        urls = [f"nats://127.0.0.1:{port}" for port, _route in ports]
        for i, (port, route) in enumerate(ports):
            directory = self.root / f"nats{i + 1}"
            directory.mkdir()
            config = directory / "nats.conf"
            others = [r for j, (_p, r) in enumerate(ports) if j != i]
            config.write_text(_nats_config(f"nats{i + 1}", directory, port, route, others))
            self.nats.append(self._spawn([self.nats_server, "-c", str(config)], directory))
        endpoints = []
        env = {
            **os.environ,
            "THINGHUB_ROOT_ACCESS_KEY_ID": self.key_id,
            "THINGHUB_ROOT_ACCESS_KEY_SECRET": self.secret,
            "THINGHUB_MQTT_ALLOW_ANONYMOUS": "true",
            "THINGHUB_MQTT_TLS_PORT": "0",
            "THINGHUB_CLUSTER_STREAM_REPLICAS": "3",
            "THINGHUB_CLUSTER_CONNECT_TIMEOUT": str(self.ready_timeout),
        }
        for name in NODES:
            directory = self.root / name
            directory.mkdir()
            command = [
                sys.executable, "-c", "from thinghub.cli import main; main()",
                "serve", "--cluster", ",".join(urls),
                "--node-name", name, "--host", "127.0.0.1", "--mqtt-port", "0",
                "--http-port", "0", "--data-dir", str(directory / "data"),
            ]  # fmt: skip
            self.hubs.append(self._spawn(command, directory, env))
        for name, hub in zip(NODES, self.hubs, strict=True):
            mqtt, http = self._wait_ready(name, hub)
            endpoints.append((name, mqtt, http))
        return endpoints

    def _spawn(
        self, command: list[str], directory: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(directory / "output.log", "wb") as log:
            return subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=directory,
                env=env,
                start_new_session=True,
            )

    def _wait_ready(self, name: str, hub: subprocess.Popen[bytes]) -> tuple[str, str]:
        log = self.root / name / "output.log"
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            found = READY.search(log.read_text(errors="replace"))
            if found:
                return found.group(1), found.group(2)
            if hub.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"node {name} did not start; its output:\n{log.read_text()}")

    def stop(self) -> None:
        """The hubs first (they hand their last messages to NATS), then NATS; by PID."""
        for group in (self.hubs, self.nats):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in group:
                try:
                    proc.wait(STOP_WAIT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _stop_on(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    nats_server = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(nats_server).exists():
        print("nats-server is not installed (apt-get install nats-server)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="thinghub-cluster-"))
    demo = Demo(root, nats_server, args.ready_timeout)
    signal.signal(signal.SIGTERM, _stop_on)
    code = 0
    try:
        endpoints = demo.start()
        print(f"ThingHub cluster on loopback: 3 NATS servers with JetStream, {len(NODES)} nodes")
        print(f"  files and logs: {root}")
        print(f"  root key: THINGHUB_ROOT_ACCESS_KEY_ID={demo.key_id}")
        print(f"            THINGHUB_ROOT_ACCESS_KEY_SECRET={demo.secret}")
        print("  registry: each node's own SQLite (PostgreSQL is not needed yet): register a")
        print("  device on the node its API calls go to; messages and sessions are cluster-wide")
        for name, mqtt, http in endpoints:
            print(f"  {name}: mqtt={mqtt} http={http}")
        print("endpoints " + " ".join(f"{n}={m},{h}" for n, m, h in endpoints), flush=True)
        pids = " ".join(str(proc.pid) for proc in demo.hubs + demo.nats)
        print(f"pids {pids}")
        print("Ctrl-C stops everything.", flush=True)
        while all(proc.poll() is None for proc in demo.hubs + demo.nats):
            time.sleep(0.5)
        print("a process of the cluster exited; stopping the others", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        pass
    except RuntimeError as error:
        print(error, file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop
        demo.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        print("stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
