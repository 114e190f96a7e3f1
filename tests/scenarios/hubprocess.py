"""A real ``thinghub serve`` in a subprocess, for the suites that drive one hub of their own
(tests/security/sechub.py, tests/console/consolehub.py, tests/awsdevice/devhub.py): its own
data directory, a root access key the test knows, any setting as ``THINGHUB_<KEY>``, free
ports read from its ``ready`` line, its output kept (the last lines) for the test to read and
for a failure to show, and a stop by its own PID. (Log lines reach the output through the
hub's log thread, a moment after what they describe: wait for them.)"""

from __future__ import annotations

import collections
import os
import re
import resource
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
THINGHUB = ROOT / ".venv/bin/thinghub"
READY = re.compile(r"ready mqtt=([\d.]+):(\d+) http=[\d.]+:(\d+)(?: mqtts=[\d.]+:(\d+))?")


def environment(
    key: tuple[str, str], defaults: Mapping[str, str], settings: Mapping[str, Any]
) -> dict[str, str]:
    """The hub's environment: this process's, the root key, ``defaults`` (already named
    ``THINGHUB_...``), then ``settings`` as ``THINGHUB_<KEY>`` (booleans as true/false)."""
    env = {
        **os.environ,
        "THINGHUB_ROOT_ACCESS_KEY_ID": key[0],
        "THINGHUB_ROOT_ACCESS_KEY_SECRET": key[1],
        # MQTT over TLS on a free port too: hubs run side by side.
        "THINGHUB_MQTT_TLS_PORT": "0",
        **defaults,
    }
    for name, value in settings.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        env[f"THINGHUB_{name.upper()}"] = str(value)
    return env


class HubProcess:
    """``thinghub serve`` on 127.0.0.1, every port free; ``host``, ``mqtt_port``,
    ``http_port`` and ``tls_port`` (0: no TLS listener) once it is ready."""

    def __init__(
        self,
        data_dir: Path,
        key: tuple[str, str],
        *,
        defaults: Mapping[str, str] | None = None,
        settings: Mapping[str, Any] | None = None,
        args: Sequence[str] = (),
        nofile: int | None = None,
        timeout: float = 20.0,
        keep_lines: int = 400,
    ) -> None:
        """``args``: more ``serve`` options (``--cluster URLS``). With ``nofile``, that limit
        of open files (soft and hard) is set in the child before it starts."""
        self.data_dir = data_dir
        self.timeout = timeout
        env = environment(key, defaults or {}, settings or {})

        def limit_files() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.output: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self.proc = subprocess.Popen(
            [str(THINGHUB), "serve", "--mqtt-port", "0", "--http-port", "0",
             "--host", "127.0.0.1", "--data-dir", str(data_dir), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
            preexec_fn=limit_files if nofile is not None else None,
        )  # fmt: skip
        ready = threading.Event()
        found: list[re.Match[str]] = []

        def drain() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line.rstrip())
                match = READY.search(line)
                if match and not found:
                    found.append(match)
                    ready.set()
            ready.set()  # the hub exited

        self._drain = threading.Thread(target=drain, daemon=True)
        self._drain.start()
        if not ready.wait(timeout) or not found:
            self.stop()
            raise AssertionError("thinghub did not start:\n" + self.log())
        match = found[0]
        self.host = match.group(1)
        self.mqtt_port = int(match.group(2))
        self.http_port = int(match.group(3))
        self.tls_port = int(match.group(4) or 0)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def log(self) -> str:
        return "\n".join(self.output)

    def stop(self) -> int:
        """SIGTERM to the hub's own PID (SIGKILL after 15 s); its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._drain.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, f"the hub exited:\n{self.log()}"
