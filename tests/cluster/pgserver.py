"""A real PostgreSQL 15 for the cluster tests: a new database cluster (``initdb``) in a
temporary directory, listening on 127.0.0.1 on a free port (and a Unix socket in the same
directory), with a database and a password-protected user for the hub. PostgreSQL refuses to
run as root, so as root everything runs as the ``postgres`` user the Debian package creates,
in a directory handed to it. Stopped with ``pg_ctl stop`` and, failing that, by the PID in
``postmaster.pid``; the directory is removed."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from natscluster import free_port

BIN = Path("/usr/lib/postgresql/15/bin")
TIMEOUT = 60.0


def available() -> bool:
    return (BIN / "initdb").exists() and (os.geteuid() != 0 or _postgres_user() is not None)


def _postgres_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


@dataclass
class PgServer:
    database: str = "thinghub"
    user: str = "thinghub"
    password: str = field(default_factory=lambda: secrets.token_hex(12))
    port: int = 0
    directory: Path = field(default_factory=Path)
    _started: bool = False

    @property
    def url(self) -> str:
        """What ``thinghub serve --registry`` takes."""
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def start(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="thinghub-pg-"))
        owner = _postgres_user() if os.geteuid() == 0 else None
        if owner is not None:
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
        self.port = free_port()
        try:
            self._as_owner(
                [str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
                 "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"],
            )  # fmt: skip
            self._pg_ctl_start()
            self.psql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'")
            self.psql(f"CREATE DATABASE {self.database} OWNER {self.user}")
        except BaseException:
            self.stop()
            raise

    def _pg_ctl_start(self) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=50"
        )
        self._as_owner(
            [str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.directory / "pg.log"),
             "-o", options, "-w", "-t", str(int(TIMEOUT)), "start"],
        )  # fmt: skip
        self._started = True

    def kill(self) -> None:
        """Stop the server abruptly, by the postmaster's PID (SIGQUIT: its children exit at
        once, no checkpoint), as a crash or a network cut would look to its clients; its
        directory is kept for ``restart``."""
        pid = self.pid()
        assert pid is not None, "the server is not running"
        _signal_and_wait(pid, signal.SIGQUIT)
        self._started = False

    def restart(self) -> None:
        """Start the server again on the same directory and port (after ``kill``)."""
        (self.data / "postmaster.pid").unlink(missing_ok=True)
        self._pg_ctl_start()

    def psql(self, sql: str, *, as_hub: bool = False) -> str:
        """Run ``sql``: as the superuser over the Unix socket, or as the hub's user over TCP
        with its password (what a hub would do)."""
        if as_hub:
            command = [str(BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                       "-U", self.user, "-d", self.database]  # fmt: skip
            env = {**os.environ, "PGPASSWORD": self.password}
        else:
            command = [str(BIN / "psql"), "-h", str(self.directory), "-p", str(self.port),
                       "-U", "postgres", "-d", "postgres"]  # fmt: skip
            env = dict(os.environ)
        result = subprocess.run(
            [*command, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
            capture_output=True, text=True, timeout=TIMEOUT, env=env,
        )  # fmt: skip
        assert result.returncode == 0, f"psql {sql!r}: {result.stderr}"
        return result.stdout.strip()

    def pid(self) -> int | None:
        pid_file = self.data / "postmaster.pid"
        try:
            return int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        if self._started:
            self._started = False
            try:
                self._as_owner([str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                                "-t", "30", "stop"])  # fmt: skip
            except (AssertionError, subprocess.TimeoutExpired):
                pid = self.pid()
                if pid is not None:
                    _kill(pid)  # the postmaster this fixture started
        if self.directory.name.startswith("thinghub-pg-"):
            shutil.rmtree(self.directory, ignore_errors=True)

    def log(self) -> str:
        path = self.directory / "pg.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _as_owner(self, command: list[str]) -> None:
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT + 10)
        assert result.returncode == 0, (
            f"{' '.join(command)}: {result.stdout}\n{result.stderr}\n{self.log()}"
        )


def _kill(pid: int) -> None:
    """SIGKILL ``pid`` and wait until it is gone (it is pg_ctl's child, not ours to wait on)."""
    _signal_and_wait(pid, signal.SIGKILL)


def _signal_and_wait(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
