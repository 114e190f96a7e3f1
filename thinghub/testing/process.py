"""A test hub in a child process (``--thinghub-process``, ``hub(process=True)``): the hub as
``thinghub serve`` runs it, apart from the test's process (its own GIL, its own event loop,
nothing it imports or patches), driven over the child's standard input (``child.py``).

The child is in a session of its own, so the Ctrl-C a terminal sends to the test run reaches
the test process only, which then stops the hub in its teardown. Whatever ends the test
process, the child sees its standard input close and stops too, removing its temporary data
directory; ``stop()`` waits for that (and kills a child that does not exit in time).

``registry`` and ``identity`` work on the hub's files from the test process, as the
``thinghub`` command line does beside a running hub: the hub finds new devices and
certificates at their first sign-in, and sees deletions within half a second (its device
watch, auth/device_watch.py).
"""

from __future__ import annotations

import collections
import json
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from ..identity.ca import HubCA
from ..identity.service import IdentityService
from ..registry.registry import Registry
from ..registry.store import RegistryStore
from .options import HubOptions
from .reset import ResetError, ResetReport
from .running import Ports, RunningHub

__all__ = ["ProcessHub"]

TIMEOUT = 30.0
#: lines of the child's log kept to explain a failure
LOG_LINES = 200
#: answers the child may have written ahead of their reading (one per command, in turn)
ANSWERS = 16
#: what the answers queue holds once the child's standard output has ended
EXITED = ""


class ProcessHub(RunningHub):
    def __init__(
        self,
        options: HubOptions,
        proc: subprocess.Popen[str],
        answers: queue.Queue[str],
        log: collections.deque[str],
        ready: dict[str, Any],
        temporary: bool,
    ) -> None:
        data_dir = Path(ready["data_dir"])
        ports = Ports(ready["host"], ready["mqtt"], ready["http"], ready["tls"])
        super().__init__(options, options.resolve(data_dir), ports, ready["ca_pem"])
        self.proc = proc
        self._answers = answers
        self._log = log
        self._temporary = temporary
        self._store = RegistryStore.open(data_dir)
        try:
            self._registry = Registry(self._store)
            self._identity = IdentityService(
                self._store, HubCA.load(data_dir), region=self.settings.aws.region
            )
        except BaseException:
            self._store.close()
            raise

    @classmethod
    def start(cls, options: HubOptions) -> ProcessHub:
        proc = subprocess.Popen(
            [sys.executable, "-m", "thinghub.testing.child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        # One answer per command, and commands go one at a time: a few lines at most.
        answers: queue.Queue[str] = queue.Queue(maxsize=ANSWERS)
        log: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        _drain(proc.stdout, answers.put, "thinghub-test-child-out", at_end=EXITED)
        _drain(proc.stderr, log.append, "thinghub-test-child-log")
        try:
            config = {
                "settings": dict(options.settings),
                "access_key_id": options.access_key_id,
                "access_key_secret": options.access_key_secret,
            }
            proc.stdin.write(json.dumps(config, default=str) + "\n")
            proc.stdin.flush()
            answer = _answer(answers, proc, log)
            if "ready" not in answer:
                raise RuntimeError(f"the hub did not start: {answer.get('error')}\n" + _tail(log))
            return cls(options, proc, answers, log, answer["ready"], options.data_dir is None)
        except BaseException:
            _end(proc)
            raise

    @property
    def registry(self) -> Registry:
        return self._registry

    @property
    def identity(self) -> IdentityService:
        return self._identity

    @property
    def log(self) -> str:
        """The last lines the hub logged (its standard error)."""
        return _tail(self._log)

    def reset(self) -> ResetReport:
        if self.stopped:
            raise RuntimeError("the hub has stopped")
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"op": "reset"}) + "\n")
            self.proc.stdin.flush()
        except OSError as error:
            raise ResetError(f"the hub's process is gone: {error}\n{self.log}") from None
        answer = _answer(self._answers, self.proc, self._log)
        if "ok" not in answer:
            raise ResetError(f"the hub could not be reset: {answer.get('error')}")
        self._registry.forget_cached_devices()  # the child deleted rows under this process
        done = answer["ok"]
        return ResetReport(done["connections"], done["sessions"], done["retained"], done["rows"])

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        try:
            self._store.close()
            _end(self.proc)
        finally:
            if self._temporary and self.data_dir.exists():
                shutil.rmtree(self.data_dir, ignore_errors=True)  # a child that was killed


def _drain(stream: IO[str], sink: Any, name: str, *, at_end: str | None = None) -> None:
    def run() -> None:
        for line in stream:
            sink(line.rstrip("\n"))
        if at_end is not None:
            sink(at_end)
        stream.close()

    threading.Thread(target=run, name=name, daemon=True).start()


def _answer(
    answers: queue.Queue[str], proc: subprocess.Popen[str], log: collections.deque[str]
) -> dict[str, Any]:
    try:
        line = answers.get(timeout=TIMEOUT)
    except queue.Empty:
        message = f"the hub's process did not answer within {TIMEOUT} s\n" + _tail(log)
        raise RuntimeError(message) from None
    if line == EXITED:
        try:
            code = proc.wait(5)  # its standard error is drained meanwhile
        except subprocess.TimeoutExpired:
            code = None
        raise RuntimeError(f"the hub's process exited (code {code})\n" + _tail(log))
    try:
        answer: dict[str, Any] = json.loads(line)
    except ValueError:
        raise RuntimeError(f"the hub's process said {line!r}\n" + _tail(log)) from None
    return answer


def _end(proc: subprocess.Popen[str]) -> None:
    """Close the child's standard input (it stops), wait for it; kill it if it hangs."""
    if proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:
            pass  # it is gone already
    try:
        proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(log: collections.deque[str]) -> str:
    return "\n".join(log)
