"""``thinghub trace MESSAGE_ID``: what became of one message, asked of a running hub over
HTTP (``GET /thinghub/trace/{MessageId}``, thinghub/http/trace_routes.py); ``--recent`` lists
the latest traced messages, which is how an MQTT publish's id is found."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .config import ConfigError, load_settings
from .trace.client import TraceError, get_json
from .trace.render import render, render_list


@click.command("trace")
@click.argument("message_id", required=False)
@click.option("--recent", is_flag=True, help="List the latest traced messages, newest first.")
@click.option("--topic", default=None, help="With --recent: only the messages of this topic.")
@click.option(
    "--limit", type=click.IntRange(1, 100), default=20, show_default=True, help="With --recent."
)
@click.option(
    "--url",
    default=None,
    help="The hub's HTTP address (default: http://127.0.0.1 on the configured http.port, 8080).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="The hub's TOML settings file, for its HTTP port.",
)
@click.option(
    "--access-key-id",
    envvar="THINGHUB_ROOT_ACCESS_KEY_ID",
    help="Access key of the account the message belongs to [env THINGHUB_ROOT_ACCESS_KEY_ID].",
)
@click.option(
    "--secret",
    envvar="THINGHUB_ROOT_ACCESS_KEY_SECRET",
    help="Its secret [env THINGHUB_ROOT_ACCESS_KEY_SECRET].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the hub's JSON answer.")
def trace(
    message_id: str | None,
    recent: bool,
    topic: str | None,
    limit: int,
    url: str | None,
    config_file: Path | None,
    access_key_id: str | None,
    secret: str | None,
    as_json: bool,
) -> None:
    """Show which sessions a message matched and what became of each copy: queued, sent,
    acknowledged, or dropped and why. MESSAGE_ID is what Pub, PubBroadcast or RRpc answered
    (or what --recent lists). Needs tracing on in the hub ([trace] enabled = true)."""
    if recent == (message_id is not None):
        raise click.UsageError("give a MESSAGE_ID, or --recent (not both)")
    if not access_key_id or not secret:
        raise click.UsageError(
            "no access key: give --access-key-id and --secret, or set "
            "THINGHUB_ROOT_ACCESS_KEY_ID and THINGHUB_ROOT_ACCESS_KEY_SECRET"
        )
    base = url or _local_url(config_file)
    try:
        if recent:
            query = [("maxResults", str(limit))] + ([("topic", topic)] if topic else [])
            answer: dict[str, Any] = get_json(base, "/thinghub/trace", query, access_key_id, secret)
        else:
            assert message_id is not None
            if not message_id.isascii() or not message_id.isdigit():
                raise click.UsageError(f"MESSAGE_ID must be a number, not {message_id!r}")
            answer = get_json(base, f"/thinghub/trace/{message_id}", [], access_key_id, secret)
    except TraceError as error:
        prefix = f"HTTP {error.status}: " if error.status else ""
        raise click.ClickException(prefix + error.message) from None
    if as_json:
        click.echo(json.dumps(answer, indent=2))
    elif recent:
        click.echo(render_list(answer.get("messages", [])))
    else:
        click.echo(render(answer))


def _local_url(config_file: Path | None) -> str:
    """The hub on this machine, on the HTTP port its settings give."""
    try:
        settings = load_settings(config_file)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    host = settings.http.host
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.http.port}"
