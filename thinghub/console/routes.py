"""Mounting the console on the hub's aiohttp application (http/app.py):

    GET  /console                 the page (one HTML document; the script draws every view)
    GET  /console/static/{name}   its script, style sheet and icon (package data, in memory)
    /console/api/...              the JSON API (api_*.py), session-authenticated (guard.py)
    GET  /console/ws/tail         the live tail's WebSocket (tail.py)

Match, then handle (STYLE.md §3.11): every API route is wrapped by ``_guarded``, which checks
the session (and, for a request that changes something, the Origin and the CSRF token)
before the handler runs, and renders every refusal in one place (``errors.py``). The page is
served with a Content-Security-Policy that allows only its own script, style and
connections, so no injected markup could run; the script builds the page with text nodes
only, never HTML from data.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web

from ..http.context import HubContext
from .api_devices import device, device_action, list_devices, list_products, product
from .api_hub import overview
from .api_messages import (
    delete_retained,
    get_retained,
    get_trace,
    list_retained,
    list_traces,
    publish_message,
)
from .api_session import session_info, sign_in, sign_out
from .errors import NOT_FOUND, ConsoleError, error_response
from .guard import CSRF_PROTOCOL_PREFIX
from .state import Console, Handler, build_console
from .tail import PROTOCOL, Tail, check_filter, run_tail

__all__ = ["PREFIX", "add_routes"]

log = logging.getLogger("thinghub.console")

PREFIX = "/console"
API = f"{PREFIX}/api"

_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}
_API_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """The files of ``thinghub/console/static`` (package data), read once."""
    assets: dict[str, Asset] = {}
    for item in resources.files(__package__).joinpath("static").iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if item.is_file() and suffix in _TYPES:
            body = item.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            assets[item.name] = Asset(body, _TYPES[suffix], etag)
    return assets


def add_routes(
    app: web.Application, ctx: HubContext, received: Callable[[], list[int]] | None = None
) -> None:
    """Serve the console on ``app`` unless ``console.enabled`` is off. ``received``: messages
    accepted by QoS without the hub's own ``$SYS`` messages (observe/sources.py), for the
    Overview's rate in; else the broker's counters as they are."""
    if not ctx.settings.console.enabled:
        return
    console = build_console(ctx, received)
    assets = load_assets()

    def serve_asset(request: web.Request, name: str) -> web.Response:
        asset = assets.get(name)
        if asset is None:
            raise web.HTTPNotFound()
        headers = {**_PAGE_HEADERS, "ETag": asset.etag}
        if request.headers.get("If-None-Match") == asset.etag:
            return web.Response(status=304, headers=headers)
        headers["Content-Type"] = asset.content_type
        return web.Response(body=asset.body, headers=headers)

    async def page(request: web.Request) -> web.Response:
        return serve_asset(request, "index.html")

    async def static(request: web.Request) -> web.Response:
        return serve_asset(request, request.match_info["name"])

    async def signin(request: web.Request) -> web.StreamResponse:
        return await _answer(console, request, None)

    def route(method: str, path: str, handler: Handler) -> None:
        async def serve(request: web.Request) -> web.StreamResponse:
            return await _answer(console, request, handler)

        app.router.add_route(method, API + path, serve)

    async def unknown(request: web.Request) -> web.StreamResponse:
        return _with(error_response(ConsoleError(NOT_FOUND, "No such console API.")), _API_HEADERS)

    async def tail(request: web.Request) -> web.StreamResponse:
        return await _tail(console, request)

    async def close_tails(app: web.Application) -> None:
        await console.tails.close_all()

    async def close_reader(app: web.Application) -> None:
        await console.reader.close()

    app.router.add_get(PREFIX, page)
    app.router.add_get(PREFIX + "/", page)
    app.router.add_get(PREFIX + "/static/{name}", static)
    app.router.add_post(API + "/session", signin)
    route("GET", "/session", session_info)
    route("DELETE", "/session", sign_out)
    route("GET", "/overview", overview)
    route("GET", "/devices", list_devices)
    route("GET", "/devices/{iotId}", device)
    route("POST", "/devices/{iotId}/{action}", device_action)
    route("GET", "/products", list_products)
    route("GET", "/products/{productKey}", product)
    route("POST", "/publish", publish_message)
    route("GET", "/retained", list_retained)
    route("GET", "/retained/message", get_retained)
    route("DELETE", "/retained/message", delete_retained)
    route("GET", "/trace", list_traces)
    route("GET", "/trace/{messageId}", get_trace)
    app.router.add_route("*", API + "/{rest:.*}", unknown)
    app.router.add_get(PREFIX + "/ws/tail", tail)
    app.on_shutdown.append(close_tails)
    app.on_cleanup.append(close_reader)


async def _answer(
    console: Console, request: web.Request, handler: Handler | None
) -> web.StreamResponse:
    """Check the session (none for the sign-in itself: ``handler`` None), run the handler,
    render what it answers or refuses."""
    try:
        if handler is None:
            response: web.StreamResponse = await sign_in(console, request)
        else:
            session = await console.guard.session(request)
            result: Any = await handler(console, request, session)
            response = (
                result if isinstance(result, web.StreamResponse) else web.json_response(result)
            )
    except ConsoleError as error:
        response = error_response(error)
    except Exception:
        log.exception("console %s %s failed", request.method, request.path)
        response = error_response(ConsoleError((500, "InternalError"), "Internal error."))
    return _with(response, _API_HEADERS)


async def _tail(console: Console, request: web.Request) -> web.StreamResponse:
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    csrf = next(
        (p[len(CSRF_PROTOCOL_PREFIX) :] for p in offered if p.startswith(CSRF_PROTOCOL_PREFIX)),
        None,
    )
    settings = console.ctx.settings
    try:
        session = await console.guard.session(request, csrf=csrf)
        if PROTOCOL not in offered:
            raise ConsoleError.bad(f"A tail's WebSocket offers the subprotocol {PROTOCOL}.")
        topic_filter = check_filter(
            request.query.get("filter") or "#", settings.mqtt.max_topic_length
        )
        console.tails.admit(session)
    except ConsoleError as error:
        return _with(error_response(error), _API_HEADERS)
    ws = web.WebSocketResponse(protocols=(PROTOCOL,), heartbeat=30.0, max_msg_size=4096)
    try:
        await ws.prepare(request)
        console.tails.sockets.add(ws)
        tail = Tail(
            settings.console.tail_queue, settings.console.tail_payload_bytes, console.hidden
        )
        await run_tail(ws, console.ctx.broker, session, topic_filter, tail, console.book.alive)
    finally:
        session.tails -= 1
        console.tails.sockets.discard(ws)
    return ws


def _with(response: web.StreamResponse, headers: dict[str, str]) -> web.StreamResponse:
    for name, value in headers.items():
        response.headers.setdefault(name, value)
    return response
