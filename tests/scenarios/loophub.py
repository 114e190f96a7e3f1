"""``thinghub.app.Hub`` (wired as ``thinghub serve`` wires it) in the test's own process, on
an event loop of its own in a thread of its own, on loopback with free ports and its files in
the test's directory: for the suites that read or bend hub state where it lives
(tests/awsiot/iothub.py, tests/supervision/suphub.py). Clients still reach it over real
sockets. ``run`` waits for a coroutine on the hub's loop, ``on_loop`` calls a function there;
``stop`` stops the hub (within the timeout), then its loop, then ``closing()``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from thinghub.app import Hub
from thinghub.config import load_settings

T = TypeVar("T")

#: every listener on 127.0.0.1, on a free port
LOOPBACK: dict[str, Any] = {
    "mqtt.host": "127.0.0.1",
    "http.host": "127.0.0.1",
    "mqtt.port": 0,
    "mqtt.tls_port": 0,
    "http.port": 0,
}


class LoopHub:
    def __init__(
        self,
        data_dir: Path,
        key: tuple[str, str],
        overrides: Mapping[str, Any],
        *,
        thread_name: str,
        timeout: float = 10.0,
        **hub_options: Any,
    ) -> None:
        """``overrides``: settings by dotted key (``"mqtt.queue_page_messages"``);
        ``hub_options``: ``Hub``'s own keyword arguments (``id_lease_ms``)."""
        settings = load_settings(
            None, environ={}, overrides={"data_dir": data_dir, **LOOPBACK, **overrides}
        )
        environ = {
            "THINGHUB_ROOT_ACCESS_KEY_ID": key[0],
            "THINGHUB_ROOT_ACCESS_KEY_SECRET": key[1],
        }
        self.data_dir = data_dir
        self.timeout = timeout
        self.hub = Hub(settings, environ=environ, **hub_options)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=thread_name)
        self.thread.start()
        self.stopped = False
        try:
            endpoints = self.run(self.hub.start())
        except BaseException:
            self._stop_loop()
            raise
        self.mqtt_port = endpoints.mqtt[1]
        self.http_port = endpoints.http[1]

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        wait = 2 * self.timeout if timeout is None else timeout
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(wait)

    def on_loop(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the hub's event loop thread, where its state lives."""

        async def call() -> T:
            return fn()

        return self.run(call())

    def stop(self) -> None:
        """Stop the hub (it must stop within the timeout), then its loop."""
        if self.stopped:
            return
        self.stopped = True
        try:
            self.run(self.hub.stop())
        finally:
            self._stop_loop()
            self.closing()

    def closing(self) -> None:
        """What a harness releases once the hub has stopped (its clients, its pools)."""

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(self.timeout)
        assert not self.thread.is_alive(), "the hub's loop did not stop"
        self.loop.close()
