"""Wires the hub into one process with one start/stop lifecycle: the broker, the MQTT listeners
(TCP, TLS when configured) and the HTTP server (health, metrics, MQTT over WebSocket)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiohttp import web

from .broker.broker import Broker
from .config import Settings
from .http.app import build_http_app
from .transport.tcp import make_tls_context, start_tcp_listener

log = logging.getLogger("thinghub")


@dataclass
class Endpoints:
    mqtt: tuple[str, int]
    http: tuple[str, int]
    mqtts: tuple[str, int] | None = None


@dataclass
class Hub:
    settings: Settings
    broker: Broker | None = None
    endpoints: Endpoints | None = None
    _servers: list[asyncio.Server] = field(default_factory=list)
    _http_runner: web.AppRunner | None = None

    async def start(self) -> Endpoints:
        loop = asyncio.get_running_loop()
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.broker = broker = Broker(settings.mqtt, loop)
        broker.restore()
        mqtt = settings.mqtt

        tcp = await start_tcp_listener(broker, mqtt.host, mqtt.port)
        self._servers.append(tcp)
        mqtts = None
        if mqtt.tls_cert and mqtt.tls_key:
            tls = await start_tcp_listener(
                broker, mqtt.host, mqtt.tls_port, make_tls_context(mqtt.tls_cert, mqtt.tls_key)
            )
            self._servers.append(tls)
            mqtts = _bound(tls)

        runner = web.AppRunner(build_http_app(broker), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, settings.http.host, settings.http.port, reuse_address=True)
        await site.start()
        self._http_runner = runner
        http_server = getattr(site, "_server", None)
        http_port = settings.http.port
        if http_server is not None and http_server.sockets:
            http_port = http_server.sockets[0].getsockname()[1]
        self.endpoints = Endpoints(
            mqtt=_bound(tcp),
            http=(_display_host(settings.http.host), http_port),
            mqtts=mqtts,
        )
        return self.endpoints

    async def stop(self) -> None:
        """Stop accepting, tell every client the server is going away (v5 DISCONNECT 0x8B),
        flush, and close."""
        for server in self._servers:
            server.close()
        if self.broker is not None:
            self.broker.close_all()
        # Let the coalesced writes and closes run.
        await asyncio.sleep(0)
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), timeout=5)
            except TimeoutError:
                log.warning("some MQTT connections did not close in time")
        if self._http_runner is not None:
            await self._http_runner.cleanup()


def _bound(server: asyncio.Server) -> tuple[str, int]:
    sockname = server.sockets[0].getsockname()
    return _display_host(sockname[0]), int(sockname[1])


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
