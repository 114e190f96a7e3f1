"""Run a ``thinghub`` command as a real child process, its standard error a pseudo-terminal
(what a person at a terminal sees) or a pipe (what a script or a log sees)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
THINGHUB = str(ROOT / ".venv/bin/thinghub")
TIMEOUT = 120.0
# The pseudo-terminal's size: a bar must fit in its width.
COLUMNS = 100


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str  # as the terminal (or the pipe) received it
    seconds: float


def thinghub(*args: str, tty: bool, timeout: float = TIMEOUT) -> Run:
    """``thinghub ARGS``; with ``tty`` its stderr is the slave side of a new pseudo-terminal
    of ``COLUMNS`` columns, otherwise a pipe. stdout is a pipe either way."""
    started = time.monotonic()
    if not tty:
        done = subprocess.run(
            [THINGHUB, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started)
    child = Terminal(*args)
    try:
        out, _ = child.proc.communicate(timeout=timeout)
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()
    return Run(child.proc.returncode, out, child.collected(), time.monotonic() - started)


class Terminal:
    """A ``thinghub`` child whose stderr is a pseudo-terminal, read as it writes."""

    def __init__(self, *args: str) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, COLUMNS, 0, 0))
        self._master = master
        self._chunks: list[bytes] = []
        self._lock = threading.RLock()  # text() is also called under `changed`
        self.changed = threading.Condition(self._lock)
        try:
            self.proc = subprocess.Popen(
                [THINGHUB, *args], stdout=subprocess.PIPE, stderr=slave, text=True
            )
        finally:
            os.close(slave)
        # Drained all along: a pseudo-terminal's buffer is small, and a full one would
        # block the child.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        try:
            while True:
                try:
                    chunk = os.read(self._master, 4096)
                except OSError:  # EIO: the child closed its side
                    return
                if not chunk:
                    return
                with self.changed:
                    self._chunks.append(chunk)
                    self.changed.notify_all()
        finally:
            os.close(self._master)
            with self.changed:
                self.changed.notify_all()

    def text(self) -> str:
        with self._lock:
            return b"".join(self._chunks).decode(errors="replace")

    def wait_for(self, what: str, timeout: float = TIMEOUT) -> None:
        """Until ``what`` has appeared on the terminal."""
        with self.changed:
            ok = self.changed.wait_for(
                lambda: (
                    what in b"".join(self._chunks).decode(errors="replace")
                    or not self._reader.is_alive()
                ),
                timeout,
            )
        assert ok and what in self.text(), f"{what!r} never shown; the terminal got:\n{self.text()}"

    def collected(self) -> str:
        self._reader.join(TIMEOUT)
        return self.text()


def frames(terminal_text: str) -> list[str]:
    """The bar's drawings: each starts with a carriage return and "erase in line"."""
    return [f.split("\r\n")[0] for f in terminal_text.split("\r\x1b[K")[1:]]
