"""Reading the console API's input: a JSON object body of bounded size, and query parameters.
Anything malformed is a ConsoleError (400) that says which field and why."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .errors import ConsoleError

__all__ = ["json_body", "query_int", "text_field"]


async def json_body(request: web.Request, max_bytes: int) -> dict[str, Any]:
    """The request's body as a JSON object, at most ``max_bytes`` long."""
    too_long = ConsoleError.bad(f"The request body is longer than {max_bytes} bytes.")
    length = request.content_length
    if length is not None and length > max_bytes:
        raise too_long
    # A body without Content-Length (chunked) is still bounded by the application's
    # client_max_size (http/app.py) while it is read.
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_long from None
    if len(body) > max_bytes:
        raise too_long
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise ConsoleError.bad("The request body is not JSON.") from None
    if not isinstance(value, dict):
        raise ConsoleError.bad("The request body must be a JSON object.")
    return value


def text_field(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    """A string field of ``body``; "" and absent are None (or an error when ``required``)."""
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise ConsoleError.bad(f"{name} is required.")
        return None
    if not isinstance(value, str):
        raise ConsoleError.bad(f"{name} must be a string.")
    return value


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise ConsoleError.bad(f"{name} must be a whole number from {low} to {high}.")
    return int(raw)
