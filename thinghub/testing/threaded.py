"""A test hub in the test's own process: ``thinghub.app.Hub`` (wired as ``thinghub serve``
wires it) on an event loop of its own, in a thread of its own, so that blocking test code
(boto3, paho's helpers, ``IotDevice.expect``) never stalls it.

Stopping leaves nothing behind: the hub stops (its writer threads are joined), the loop's
remaining tasks are cancelled and its default executor shut down, the loop thread is joined,
and the temporary data directory is removed. A start that fails half way undoes the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from ..app import Hub
from ..identity.service import IdentityService
from ..registry.registry import Registry
from .baseline import RegistryBaseline
from .options import HubOptions
from .reset import ResetReport, reset_hub
from .running import Ports, RunningHub

__all__ = ["ThreadedHub", "new_event_loop"]

T = TypeVar("T")
#: a memory file system for temporary data directories, when it has this much room
SCRATCH = "/dev/shm"
SCRATCH_MIN_FREE = 256 * 1024 * 1024
#: how long start, reset and stop may take before the hub is declared stuck
TIMEOUT = 30.0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's, as ``thinghub serve`` runs, where it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def make_data_dir(options: HubOptions) -> tuple[Path, bool]:
    """The user's data directory, or a new temporary one; and whether it is temporary."""
    chosen = options.data_dir
    if chosen is not None:
        return chosen, False
    return Path(tempfile.mkdtemp(prefix="thinghub-test-", dir=scratch_root())), True


def scratch_root() -> str | None:
    """Where temporary data directories go: ``/dev/shm`` when it is there, writable and has
    room, else the system's temporary directory (None). A hub's first start writes its
    registry, its CA and its nonce store with an fsync each (registry/store.py, identity/ca.py):
    some 100 ms on a busy disk, 10 ms in memory, and a throw-away hub needs no durability."""
    try:
        stat = os.statvfs(SCRATCH)
    except OSError:
        return None
    if stat.f_bavail * stat.f_frsize < SCRATCH_MIN_FREE or not os.access(SCRATCH, os.W_OK):
        return None
    return SCRATCH


class ThreadedHub(RunningHub):
    def __init__(
        self,
        options: HubOptions,
        hub: Hub,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        ports: Ports,
        temporary: bool,
    ) -> None:
        assert hub.ca is not None
        super().__init__(options, hub.settings, ports, hub.ca.pem)
        #: the hub itself: its broker, registry, shadows ... (read them on ``loop``)
        self.hub = hub
        self.loop = loop
        self._thread = thread
        self._temporary = temporary
        assert hub.registry is not None
        self.baseline = RegistryBaseline.capture(hub.registry.store)

    @classmethod
    def start(cls, options: HubOptions) -> ThreadedHub:
        data_dir, temporary = make_data_dir(options)
        loop = new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="thinghub-test-hub", daemon=True)
        hub: Hub | None = None
        try:
            hub = Hub(options.resolve(data_dir), environ=options.environ())
            thread.start()
            endpoints = _run(loop, hub.start())
            tls = endpoints.mqtts[1] if endpoints.mqtts else None
            ports = Ports(endpoints.mqtt[0], endpoints.mqtt[1], endpoints.http[1], tls)
            return cls(options, hub, loop, thread, ports, temporary)
        except BaseException:
            _shut_down(loop, thread, hub)
            if temporary:
                shutil.rmtree(data_dir, ignore_errors=True)
            raise

    @property
    def registry(self) -> Registry:
        registry = self.hub.registry
        assert registry is not None
        return registry

    @property
    def identity(self) -> IdentityService:
        identity = self.hub.identity
        assert identity is not None
        return identity

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = TIMEOUT) -> T:
        """``coro`` on the hub's loop; its result."""
        return _run(self.loop, coro, timeout)

    def reset(self) -> ResetReport:
        if self.stopped:
            raise RuntimeError("the hub has stopped")
        return self.run(reset_hub(self.hub, self.baseline))

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        try:
            _shut_down(self.loop, self._thread, self.hub)
        finally:
            if self._temporary:
                shutil.rmtree(self.data_dir, ignore_errors=True)


def _run(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T], timeout: float = TIMEOUT
) -> T:
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result(timeout)
    except BaseException:
        future.cancel()  # an interrupted or stuck call does not go on behind the caller's back
        raise


def _shut_down(loop: asyncio.AbstractEventLoop, thread: threading.Thread, hub: Hub | None) -> None:
    """Stop the hub (also one that started half way), then the loop and its thread."""
    try:
        if hub is not None and thread.is_alive():
            _run(loop, hub.stop())
    finally:
        if thread.is_alive():
            with contextlib.suppress(Exception):
                _run(loop, _finish_loop())
            loop.call_soon_threadsafe(loop.stop)
            thread.join(TIMEOUT)
        if not thread.is_alive():
            loop.close()


async def _finish_loop() -> None:
    """What ``asyncio.run`` does before closing a loop: cancel what is left, close async
    generators, join the default executor's threads."""
    loop = asyncio.get_running_loop()
    current = asyncio.current_task()
    left = [task for task in asyncio.all_tasks(loop) if task is not current]
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()
