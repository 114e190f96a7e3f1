"""Component health: one registry that the hub's writer threads report to, read by
``/healthz`` and ``/metrics`` (docs/architecture.md, *Threads*).

A component is in one of three states:

* **ok.**
* **degraded**: an episode that heals by itself (a full disk; a database the command line
  holds locked for a moment). The component refuses only what it cannot keep (new QoS 1/2
  work) and serves the rest (QoS 0, subscriptions, reads). A restart would not help, so
  ``/healthz`` answers 200 with ``"status": "degraded"`` and the reasons.
* **failed**: its thread met something it does not understand (a bug, a page that does not
  decode, a violated constraint) and stopped. It is not restarted: what it held may be half
  applied, so the component refuses its work (HTTP 503, MQTT 0x97) until the hub restarts,
  and ``/healthz`` answers 503 so that whatever supervises the hub restarts it. The traceback
  is logged once; every failure is counted (``/metrics``).

Writers report with :meth:`Health.fail`, :meth:`Health.degrade` and :meth:`Health.recover`
(thread-safe), and run their thread's target through :func:`supervised`, which catches
whatever escapes it. A part that only exposes ``failed`` (and maybe ``failing``) attributes is
attached with :meth:`Health.watch`; those are read at each snapshot.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from .errors import ThingHubError

__all__ = [
    "DEGRADED",
    "FAILED",
    "OK",
    "Health",
    "HealthSnapshot",
    "Watched",
    "describe",
    "heals",
    "supervised",
]

log = logging.getLogger("thinghub.health")

OK, DEGRADED, FAILED = "ok", "degraded", "failed"


class Watched(Protocol):
    """A part that keeps its own state: ``failed`` (why it stopped, None while it works) and,
    optionally, ``failing`` (a passing trouble) and ``failures`` (a count)."""

    @property
    def failed(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    #: component -> why it failed (permanent until restart)
    failed: dict[str, str]
    #: component -> what troubles it now (heals by itself)
    degraded: dict[str, str]
    #: component -> failures since start (every known component, 0 included)
    failures: dict[str, int]

    @property
    def status(self) -> str:
        return FAILED if self.failed else DEGRADED if self.degraded else OK

    def as_json(self) -> dict[str, object]:
        """The ``/healthz`` body (see the module notes)."""
        body: dict[str, object] = {"status": self.status}
        if self.failed:
            body["components"] = dict(self.failed)
        if self.degraded:
            body["degraded"] = dict(self.degraded)
        return body


class Health:
    """The hub's component health; one per hub, passed to each writer (no module state)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failed: dict[str, str] = {}
        self._degraded: dict[str, str] = {}
        self._failures: dict[str, int] = {}
        self._watched: dict[str, Watched] = {}

    def register(self, component: str) -> None:
        """Make ``component`` known, so that ``/metrics`` shows its count from the start."""
        with self._lock:
            self._failures.setdefault(component, 0)

    def fail(self, component: str, error: BaseException, consequence: str = "") -> str:
        """``component`` stopped on ``error``: record why, count it, and log the traceback
        (the first failure of the component only, so that a loop of them cannot fill the
        log). ``consequence`` says what users see now. Returns the reason recorded."""
        reason = describe(error)
        with self._lock:
            self._failures[component] = self._failures.get(component, 0) + 1
            first = component not in self._failed
            if first:
                self._failed[component] = reason
        if first:
            log.error(
                "%s failed (%s)%s; it is not restarted: restart the hub",
                component,
                reason,
                f": {consequence}" if consequence else "",
                exc_info=(type(error), error, error.__traceback__),
            )
        return reason

    def degrade(self, component: str, reason: str) -> None:
        """``component`` is in a passing trouble (the caller logs its own line about it)."""
        with self._lock:
            self._failures.setdefault(component, 0)
            self._degraded[component] = reason

    def recover(self, component: str) -> None:
        """The passing trouble of ``component`` is over."""
        with self._lock:
            self._degraded.pop(component, None)

    def watch(self, component: str, part: Watched) -> None:
        """Read ``part.failed`` (and ``failing``, ``failures`` if it has them) at each
        snapshot: attaching a part that keeps its own state is this one line."""
        with self._lock:
            self._failures.setdefault(component, 0)
            self._watched[component] = part

    def snapshot(self) -> HealthSnapshot:
        with self._lock:
            failed = dict(self._failed)
            degraded = dict(self._degraded)
            failures = dict(self._failures)
            watched = list(self._watched.items())
        for component, part in watched:
            reason = part.failed
            if reason is not None:
                failed.setdefault(component, reason)
            failing = getattr(part, "failing", None)
            if isinstance(failing, str):
                degraded.setdefault(component, failing)
            count = getattr(part, "failures", None)
            if isinstance(count, int):
                failures[component] = failures[component] + count
            elif reason is not None:
                failures[component] = max(failures[component], 1)
        return HealthSnapshot(failed, degraded, failures)


def describe(error: BaseException) -> str:
    """``"ExceptionType: message"``, the reason shown on ``/healthz``."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def heals(error: BaseException) -> bool:
    """Whether a write that raised ``error`` may work when tried again: SQLite's operational
    errors (a full disk, an I/O error, a database another process holds locked), the OS's
    errors, and the hub's own refusals (``ThingHubError``, e.g. ``StorageFull``), looking
    through the chain of causes. Anything else (a constraint violated, a database that does
    not decode, a bug) will fail again: the component has failed."""
    return any(
        isinstance(seen, sqlite3.OperationalError | OSError | ThingHubError)
        for seen in _causes(error)
    )


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = error
    for _ in range(8):  # a chain of causes, never a cycle
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


def supervised(
    health: Health,
    component: str,
    target: Callable[[], None],
    *,
    consequence: str = "",
    on_failure: Callable[[str], None] | None = None,
) -> Callable[[], None]:
    """``target`` made fit to be a thread's target: whatever escapes it (``BaseException``:
    a thread has nobody above it to catch it) first runs ``on_failure(reason)`` on the same
    thread, so that the component refuses new work and what waits on it instead of letting it
    hang, then is reported with :meth:`Health.fail`. In that order: once ``/healthz`` shows
    the failure, the component refuses already (logging the traceback takes a while)."""

    def run() -> None:
        try:
            target()
        except BaseException as error:
            if on_failure is not None:
                try:
                    on_failure(describe(error))
                except BaseException:
                    log.exception("%s: handling its failure failed too", component)
            health.fail(component, error, consequence)

    return run
