"""Start/stop the brokers under test and look at their processes.

Every broker is a fresh child process per (scenario, run): peak RSS (VmHWM) then
belongs to that scenario alone and no state leaks between runs.  Children are

* pinned to the broker core (the generator takes the other one),
* given RLIMIT_NOFILE = hard limit (10,000 idle connections need it),
* started in their own session (a terminal Ctrl-C reaches only us; we stop them in
  order) and with PR_SET_PDEATHSIG, so they die even if we are SIGKILLed,
* logging to a file, never to an unread pipe that could fill up and stall them.

Readiness = a TCP connect to the MQTT port succeeds.  A broker that exits or does not
listen within the timeout raises :class:`BrokerUnavailable` with its log tail.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent

_live: list[Broker] = []  # every started broker, for cleanup on exit / Ctrl-C


class BrokerUnavailable(Exception):
    """The broker is not installed or did not come up."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_plan(pin: bool) -> tuple[int | None, int | None]:
    """(broker cpu, generator cpu): first and last allowed CPU, or no pinning."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None, None
    if not pin or len(cpus) < 2:
        return None, None
    return cpus[0], cpus[-1]


def _child_setup(cpu: int | None) -> None:
    # Runs in the forked child before exec (single-threaded parent, so this is safe).
    raise_nofile()
    if cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


# --------------------------------------------------------------------------- /proc


def _descendants(pid: int) -> list[int]:
    """pid and all its descendants (ThingHub might fork workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 10_000:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


class TreeProbe:
    """RSS/CPU of a process tree (implements mqttload.ProcessProbe)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._pids = _descendants(pid)
        self._refreshed = time.monotonic()

    def _tree(self) -> list[int]:
        # Re-scan for children at most once a second (cheap, but not free).
        if time.monotonic() - self._refreshed > 1.0:
            self._pids = _descendants(self.pid)
            self._refreshed = time.monotonic()
        return self._pids

    def cpu_seconds(self) -> float:
        return sum(_cpu_seconds(p) for p in self._tree())

    def rss_kb(self) -> int:
        return sum(_status_kb(p, "VmRSS:") for p in self._tree())

    def peak_rss_kb(self) -> int:
        return sum(_status_kb(p, "VmHWM:") for p in self._tree())


# --------------------------------------------------------------------------- brokers


class Broker:
    """A broker started as a child process on a free 127.0.0.1 port."""

    name = "broker"

    def __init__(self, cpu: int | None) -> None:
        self.cpu = cpu
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir: tempfile.TemporaryDirectory[str] | None = None
        self.probe: TreeProbe | None = None

    # subclasses
    def command(self, workdir: Path) -> list[str]:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def installed(self) -> str | None:
        """None if it can be started, else why not."""
        return None

    def env(self) -> dict[str, str] | None:
        """Environment for the child (None: inherit ours)."""
        return None

    # common
    def start(self) -> None:
        why = self.installed()
        if why:
            raise BrokerUnavailable(why)
        self.port = free_port()
        self.workdir = tempfile.TemporaryDirectory(prefix=f"bench-{self.name}-")
        wd = Path(self.workdir.name)
        cmd = self.command(wd)
        log = open(wd / "broker.log", "wb")  # noqa: SIM115 - closed by the child's exit
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=wd,
                env=self.env(),
                start_new_session=True,
                preexec_fn=lambda: _child_setup(self.cpu),
            )
        except OSError as e:
            self.stop()
            raise BrokerUnavailable(f"cannot execute {cmd[0]}: {e}") from e
        finally:
            log.close()
        _live.append(self)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise BrokerUnavailable(f"exited with code {self.proc.returncode}: {tail}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.5):
                self.probe = TreeProbe(self.proc.pid)
                time.sleep(0.1)  # let it finish starting up before RSS "before"
                return
            time.sleep(0.05)
        tail = self.log_tail()
        self.stop()
        raise BrokerUnavailable(
            f"not listening on {HOST}:{self.port} after {READY_TIMEOUT}s: {tail}"
        )

    def log_tail(self, lines: int = 3) -> str:
        if self.workdir is None:
            return ""
        try:
            text = (Path(self.workdir.name) / "broker.log").read_text(errors="replace")
        except OSError:
            return ""
        tail = [ln.strip() for ln in text.strip().splitlines()[-lines:]]
        return " | ".join(tail) or "(no output)"

    def stop(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)  # its own session: take workers too
                p.wait(STOP_TIMEOUT)
        if self in _live:
            _live.remove(self)
        if self.workdir is not None:
            with contextlib.suppress(OSError):
                self.workdir.cleanup()
            self.workdir = None
        self.probe = None


class Mosquitto(Broker):
    name = "mosquitto"

    def __init__(self, cpu: int | None, binary: str | None = None) -> None:
        super().__init__(cpu)
        self.binary = binary or shutil.which("mosquitto") or "/usr/sbin/mosquitto"

    def installed(self) -> str | None:
        if not os.access(self.binary, os.X_OK):
            return "mosquitto not installed"
        return None

    def command(self, workdir: Path) -> list[str]:
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    f"listener {self.port} {HOST}",
                    "allow_anonymous true",
                    "max_connections -1",
                    # Large enough that nothing a scenario can queue is dropped (the
                    # generator's window bounds the backlog anyway).
                    "max_queued_messages 1000000",
                    "max_queued_bytes 0",
                    "persistence false",
                    "log_dest stderr",
                    "log_type error",
                    "log_type warning",
                    "connection_messages false",
                    "",
                ]
            )
        )
        return [self.binary, "-c", str(conf)]

    def version(self) -> str:
        if self.installed():
            return "not installed"
        try:
            out = subprocess.run(
                [self.binary, "-h"], capture_output=True, timeout=5, check=False
            ).stdout.decode(errors="replace")
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
        m = re.search(r"version\s+(\S+)", out)
        return m.group(1) if m else "unknown"


class ThingHub(Broker):
    name = "thinghub"

    def __init__(self, cpu: int | None, binary: str | None = None) -> None:
        super().__init__(cpu)
        local = Path(sys.executable).parent / "thinghub"
        self.binary = binary or (str(local) if local.exists() else shutil.which("thinghub") or "")
        self.http_port = 0

    def installed(self) -> str | None:
        if not self.binary or not os.access(self.binary, os.X_OK):
            return "thinghub executable not found"
        return None

    def env(self) -> dict[str, str]:
        # The generator's clients are anonymous, as they are for mosquitto.
        env = dict(os.environ)
        env["THINGHUB_MQTT_ALLOW_ANONYMOUS"] = "true"
        # Every generator client comes from 127.0.0.1: the per-address bound would cap the
        # idle-connections scenario at its default (10,000), which mosquitto does not have.
        env["THINGHUB_MQTT_MAX_CONNECTIONS_PER_ADDRESS"] = "0"
        # The TLS listener (on by default at 8883) on a free port: runs must not clash.
        env.setdefault("THINGHUB_MQTT_TLS_PORT", "0")
        return env

    def data_dir(self, workdir: Path) -> Path:
        """Where the hub keeps its data: a fresh directory per run."""
        data = workdir / "data"
        data.mkdir()
        return data

    def command(self, workdir: Path) -> list[str]:
        self.http_port = free_port()
        data = self.data_dir(workdir)
        return [
            self.binary,
            "serve",
            "--mqtt-port",
            str(self.port),
            "--http-port",
            str(self.http_port),
            "--data-dir",
            str(data),
        ]

    def version(self) -> str:
        if self.installed():
            return "not installed"
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            out = subprocess.run(
                [self.binary, "--version"], capture_output=True, timeout=10, check=False
            )
            m = re.search(r"\d+\.\d+\S*", out.stdout.decode(errors="replace"))
            if out.returncode == 0 and m:
                return m.group(0)
        # Package metadata only (no ThingHub code is imported).
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            return version("thinghub")
        return "unknown"


class TracedThingHub(ThingHub):
    """ThingHub with its delivery trace on ([trace] enabled, its default budget of MQTT
    publishes traced per second): the trace's cost is this broker's figures against
    ``thinghub``'s of the same run."""

    name = "thinghub-traced"

    def env(self) -> dict[str, str]:
        env = super().env()
        env["THINGHUB_TRACE_ENABLED"] = "true"
        return env


class NullBroker(Broker):
    """bench/nullbroker.py: measures the generator's ceiling."""

    name = "null"

    def env(self) -> dict[str, str]:
        # Runs from a temp dir: make the bench package importable.
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        return env

    def command(self, workdir: Path) -> list[str]:
        return [sys.executable, "-m", "bench.nullbroker", "--port", str(self.port)]

    def version(self) -> str:
        return "bench.nullbroker"


BROKERS: dict[str, type[Broker]] = {
    "thinghub": ThingHub,
    "thinghub-traced": TracedThingHub,
    "mosquitto": Mosquitto,
    "null": NullBroker,
}


def stop_all() -> None:
    # stop() removes the broker from _live; bounded in case one refuses to leave.
    for _ in range(len(_live) + 1):
        if not _live:
            break
        b = _live[-1]
        with contextlib.suppress(Exception):
            b.stop()
        if _live and _live[-1] is b:
            _live.pop()


# --------------------------------------------------------------------------- machine


def listen_overflows() -> int | None:
    """Kernel count of connections dropped because an accept queue was full."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            table = dict(zip(head.split()[1:], vals.split()[1:], strict=False))
            v = table.get("ListenOverflows")
            return int(v) if v is not None else None
    return None


def machine_info() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    try:
        import uvloop

        loop = f"uvloop {getattr(uvloop, '__version__', '?')}"
    except ImportError:
        loop = "asyncio (uvloop not installed)"
    return {
        "cpu": model,
        "cores": str(os.cpu_count() or 0),
        "memory": mem,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "event_loop": loop,
    }
