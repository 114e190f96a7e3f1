"""The ``thinghub`` command line."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

import click

from . import __version__, gcpolicy
from .app import Hub
from .cli_backup import backup
from .cli_ca import ca
from .cli_registry import COMMANDS
from .cli_trace import trace
from .config import ConfigError, Settings, load_settings
from .demo import describe, ensure_demo
from .observe.logs import LogPipe, start_logging
from .registry.errors import RegistryError, SchemaVersionError, StoreUnavailable
from .store.errors import StoreError


@click.group()
@click.version_option(__version__, prog_name="thinghub")
def main() -> None:
    """ThingHub: a self-hosted IoT messaging hub."""


for _command in (*COMMANDS, backup, trace, ca):
    main.add_command(_command)


@main.command()
@click.option(
    "--mqtt-port", type=int, default=None, help="MQTT TCP port (default 1883; 0 picks a free one)."
)
@click.option(
    "--http-port",
    type=int,
    default=None,
    help="HTTP port for the APIs and MQTT over WebSocket (default 8080).",
)
@click.option("--host", default=None, help="Address to listen on (default 0.0.0.0).")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where state is kept (default ./data).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="A TOML settings file.",
)
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR.")
@click.option(
    "--cluster",
    "nats_urls",
    default=None,
    metavar="NATS_URLS",
    help="Join a cluster: its NATS servers, comma-separated (nats://h1:4222,nats://h2:4222).",
)
@click.option("--node-name", default=None, help="This node's name in the cluster (host name).")
@click.option(
    "--node-id",
    type=click.IntRange(0, 1023),
    default=None,
    help="This node's number in its MessageIds (0-1023; default: claimed in the cluster).",
)
@click.option(
    "--registry",
    "registry_url",
    default=None,
    metavar="POSTGRES_URL",
    help="A PostgreSQL registry shared by the cluster's nodes (postgresql://user:pw@host/db).",
)
def serve(
    mqtt_port: int | None,
    http_port: int | None,
    host: str | None,
    data_dir: Path | None,
    config_file: Path | None,
    log_level: str | None,
    nats_urls: str | None,
    node_name: str | None,
    node_id: int | None,
    registry_url: str | None,
) -> None:
    """Run the hub until SIGINT or SIGTERM."""
    overrides: dict[str, Any] = {
        "mqtt.port": mqtt_port,
        "http.port": http_port,
        "mqtt.host": host,
        "http.host": host,
        "data_dir": data_dir,
        "log_level": log_level,
        "cluster.nats_urls": nats_urls,
        "cluster.node_name": node_name,
        "cluster.node_id": node_id,
        "registry.url": registry_url,
    }
    try:
        settings = load_settings(config_file, overrides=overrides)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    # Records reach stderr through the log writer thread, never from the event loop.
    logs = start_logging(
        settings.log_level, settings.log.format, settings.log.queue, audit=settings.log.audit
    )
    runner: Any = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        pass
    try:
        runner(_serve(settings, logs))
    except (OSError, StoreError, RegistryError, SchemaVersionError, StoreUnavailable) as error:
        raise click.ClickException(f"cannot start: {error}") from None
    finally:
        logs.close()  # the last records are written before the process ends


async def _serve(settings: Settings, logs: LogPipe) -> None:
    hub = Hub(settings, log_pipe=logs)
    registry = hub.open_registry()
    demo = ensure_demo(registry)
    endpoints = await hub.start()
    gcpolicy.start_quietly()
    collector = asyncio.create_task(gcpolicy.keep_collector_quiet())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    mqtt_host, mqtt_port = endpoints.mqtt
    http_host, http_port = endpoints.http
    lines = [
        f"ThingHub {__version__} is running (data in {settings.data_dir})",
        f"  MQTT            mqtt://{mqtt_host}:{mqtt_port}",
    ]
    if endpoints.mqtts:
        lines.append(
            f"  MQTT over TLS   mqtts://{endpoints.mqtts[0]}:{endpoints.mqtts[1]}  "
            f"(trust: thinghub ca show --data-dir {settings.data_dir} > ca.pem)"
        )
    if hub.cluster is not None:
        nats_urls = ",".join(settings.cluster.nats_urls)
        lines.append(
            f"  Cluster         node {hub.cluster.name} on {nats_urls}  "
            f"(its view: http://{http_host}:{http_port}/thinghub/cluster)"
        )
    lines += [
        f"  MQTT/WebSocket  ws://{http_host}:{http_port}/mqtt",
        f"  HTTP            http://{http_host}:{http_port}  "
        "(health: /healthz, metrics: /metrics, stats: /api/stats)",
        *(
            [f"  Console         http://{http_host}:{http_port}/console  (sign in: access key)"]
            if settings.console.enabled
            else []
        ),
        *describe(demo, mqtt=endpoints.mqtt, http=endpoints.http, new_root_key=hub.new_root_key),
        "",
        "Stop with Ctrl-C.",
        f"ready mqtt={mqtt_host}:{mqtt_port} http={http_host}:{http_port}"
        + (f" mqtts={endpoints.mqtts[0]}:{endpoints.mqtts[1]}" if endpoints.mqtts else ""),
    ]
    print("\n".join(lines), flush=True)
    await stop.wait()
    logging.getLogger("thinghub").info("shutting down")
    collector.cancel()
    await hub.stop()
