"""Interop: the mosquitto_pub / mosquitto_sub command line clients (Debian mosquitto-clients).

Every mosquitto_sub runs with -C (message count) and -W (timeout) so nothing can hang; -d makes
it print the SUBACK, which tells us when it is safe to publish.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time

import pytest
from pahoclient import unique

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_sub") is None or shutil.which("stdbuf") is None,
    reason="mosquitto-clients (or coreutils stdbuf) is not installed",
)

VERSIONS = {4: "mqttv311", 5: "mqttv5"}
FORMAT = "MSG|%t|%q|%r|%p"


class Sub:
    """A running mosquitto_sub; messages are its output lines that start with MSG|."""

    def __init__(self, hub, version: int, *args: str, count: int = 1, timeout: int = 10):
        # stdbuf: line-buffered stdout, so the SUBACK line arrives when it happens.
        cmd = [
            "stdbuf",
            "-oL",
            "mosquitto_sub",
            "-h",
            hub.host,
            "-p",
            str(hub.port),
            "-V",
            VERSIONS[version],
        ]
        cmd += ["-d", "-F", FORMAT, "-C", str(count), "-W", str(timeout), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self._subscribed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if "SUBACK" in line:
                self._subscribed.set()
        self._subscribed.set()

    def wait_subscribed(self) -> None:
        assert self._subscribed.wait(10), self.lines
        assert self.proc.poll() in (None, 0), self.lines

    def messages(self, timeout: float = 15) -> list[tuple[str, int, bool, str]]:
        """Wait for exit (after -C messages) and return (topic, qos, retain, payload)."""
        code = self.proc.wait(timeout)
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        assert code == 0, f"mosquitto_sub exited {code}: {self.lines}"
        out = []
        for line in self.lines:
            if line.startswith("MSG|"):
                _, topic, qos, retain, payload = line.split("|", 4)
                out.append((topic, int(qos), retain == "1", payload))
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def mosquitto_sub(hub):
    subs: list[Sub] = []

    def start(version: int, *args: str, count: int = 1, timeout: int = 10) -> Sub:
        s = Sub(hub, version, *args, count=count, timeout=timeout)
        subs.append(s)
        return s

    yield start
    for s in subs:
        s.kill()


def mosquitto_pub(hub, version: int, *args: str) -> None:
    cmd = ["mosquitto_pub", "-h", hub.host, "-p", str(hub.port), "-V", VERSIONS[version], *args]
    done = subprocess.run(cmd, capture_output=True, timeout=15)
    assert done.returncode == 0, done


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mosquitto_clients_round_trip(hub, mosquitto_sub, version, qos):
    t = unique("cli")
    sub = mosquitto_sub(version, "-t", f"{t}/#", "-q", str(qos), count=3)
    sub.wait_subscribed()
    for i in range(3):
        mosquitto_pub(hub, version, "-t", f"{t}/{i}", "-m", f"hello {i}", "-q", str(qos))
    assert sub.messages() == [(f"{t}/{i}", qos, False, f"hello {i}") for i in range(3)]


def test_mosquitto_clients_retained(hub, mosquitto_sub, version):
    t = unique("cli")
    mosquitto_pub(hub, version, "-t", t, "-m", "kept", "-q", "1", "-r")
    sub = mosquitto_sub(version, "-t", t, "-q", "1")
    assert sub.messages() == [(t, 1, True, "kept")]
    mosquitto_pub(hub, version, "-t", t, "-n", "-r")  # -n: empty payload deletes
    sub = mosquitto_sub(version, "-t", t, "-q", "1")
    sub.wait_subscribed()
    mosquitto_pub(hub, version, "-t", t, "-m", "live")
    assert sub.messages() == [(t, 0, False, "live")]


def test_mosquitto_clients_mixed_versions(hub, mosquitto_sub):
    t = unique("cli")
    old = mosquitto_sub(4, "-t", t, "-q", "2")
    new = mosquitto_sub(5, "-t", t, "-q", "2")
    old.wait_subscribed()
    new.wait_subscribed()
    mosquitto_pub(hub, 5, "-t", t, "-m", "both", "-q", "2")
    assert old.messages() == [(t, 2, False, "both")]
    assert new.messages() == [(t, 2, False, "both")]


def test_mosquitto_clients_persistent_session(hub, mosquitto_sub, version):
    t, cid = unique("cli"), unique()
    session = ["-c", "-i", cid] + (["-x", "300"] if version == 5 else [])
    first = mosquitto_sub(version, "-t", t, "-q", "1", "-E", *session)
    assert first.messages() == []  # -E: exit once subscribed
    for i in range(2):
        mosquitto_pub(hub, version, "-t", t, "-m", f"queued {i}", "-q", "1")
    again = mosquitto_sub(version, "-q", "1", *session, "-t", t, count=2)
    assert again.messages() == [(t, 1, False, "queued 0"), (t, 1, False, "queued 1")]


def test_mosquitto_clients_will(hub, mosquitto_sub, version):
    t = unique("cli")
    watcher = mosquitto_sub(version, "-t", t, "-q", "1")
    watcher.wait_subscribed()
    dying = mosquitto_sub(
        version,
        "-t",
        unique(),
        "--will-topic",
        t,
        "--will-payload",
        "cli will",
        "--will-qos",
        "1",
        timeout=30,
    )
    dying.wait_subscribed()
    dying.kill()  # SIGKILL: the socket closes without DISCONNECT
    assert watcher.messages() == [(t, 1, False, "cli will")]


def test_mosquitto_clients_v5_user_property(hub, mosquitto_sub):
    t = unique("cli")
    sub = mosquitto_sub(5, "-t", t, "-q", "1", "-F", "MSG|%t|%q|%r|%p|%P")
    sub.wait_subscribed()
    mosquitto_pub(
        hub, 5, "-t", t, "-m", "x", "-q", "1", "-D", "publish", "user-property", "colour", "blue"
    )
    started = time.monotonic()
    (topic, qos, retain, rest) = sub.messages()[0]
    assert time.monotonic() - started < 15
    assert (topic, qos, retain) == (t, 1, False)
    assert rest == "x|colour:blue"
