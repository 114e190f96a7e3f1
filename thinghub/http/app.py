"""The one aiohttp application on the HTTP port: ``/healthz``, ``/metrics`` and MQTT over
WebSocket at ``/mqtt``. The cloud dialects mount here too.

Serve it with :class:`~.fastpath.FastSite` to have the dialects' hot calls (AWS ``Publish``,
the Alibaba RPC endpoint) answered without aiohttp's per-request layers (``fastpath.py``);
any other site serves it all through aiohttp, with the same answers."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..transport.websocket import websocket_handler
from .aliyun.api import add_routes as add_aliyun_routes
from .aws.api import add_routes as add_aws_routes
from .context import HubContext
from .fastpath import FAST_CONNECTIONS, FAST_ROUTES, FastConnections, FastRoutes


class QuietBadRequests(logging.Filter):
    """aiohttp logs every malformed request (bad request line, header, URL...) at ERROR with
    a traceback, before it answers 400. A client's bad bytes are not a fault of the hub, and
    anyone could fill its log with them: such records become one DEBUG line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.msg, record.args = "bad HTTP request refused (400): %s", (error.message,)
            record.exc_info = record.exc_text = None
        return True


_QUIET = QuietBadRequests()


def build_http_app(context: HubContext) -> web.Application:
    broker = context.broker
    server_log = logging.getLogger("aiohttp.server")
    if _QUIET not in server_log.filters:
        server_log.addFilter(_QUIET)
    # Large enough for a Base64 MessageContent of the biggest MQTT packet, in a form body or,
    # as the older Alibaba SDK sends BatchPub and PubBroadcast, in the query string.
    limit = max(512 * 1024, broker.settings.max_packet_size * 2)
    app = web.Application(client_max_size=limit, handler_args={"max_line_size": limit})
    app[FAST_ROUTES] = FastRoutes()
    app[FAST_CONNECTIONS] = connections = FastConnections()

    async def close_fast_connections(app: web.Application) -> None:
        await connections.shutdown()

    app.on_shutdown.append(close_fast_connections)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics(request: web.Request) -> web.Response:
        body = {
            "connections": len(broker.clients),
            "sessions": len(broker.sessions),
            "subscriptions": sum(len(s.subscriptions) for s in broker.spaces.values()),
            "retained": sum(len(s.retained) for s in broker.spaces.values()),
            **broker.stats.as_dict(),
        }
        return web.json_response(body)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/mqtt", websocket_handler(broker))
    add_aliyun_routes(app, context)
    add_aws_routes(app, context)
    return app
