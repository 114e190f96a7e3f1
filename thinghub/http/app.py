"""The one aiohttp application on the HTTP port: ``/healthz``, ``/metrics`` (Prometheus),
``/api/stats`` (the same counters as JSON) and MQTT over WebSocket at ``/mqtt``. The cloud
dialects mount here too, and report every request to the seam ``API_REQUESTS``
(``observe/requests.py``) set on the application here.

``/healthz`` shows the hub's component health (``thinghub/health.py``): 200
``{"status": "ok"}``; 200 ``{"status": "degraded", "degraded": {component: reason}}`` while a
component is in a trouble that heals by itself (a full disk: QoS 1/2 work is refused, QoS 0
and everything else keep working, and a restart would not help); 503 ``{"status": "failed",
"components": {component: reason}}`` once a writer thread has failed for good, which only a
restart repairs. ``/metrics`` counts the failures per component
(``thinghub_component_failures_total``; ``component_failures`` in ``/api/stats``).

``/metrics`` is the Prometheus text format (``observe/metrics.py``), ``/api/stats`` a JSON
object (``observe/stats.py``); both read the hub's counters when asked. Neither needs a key:
they show hub-wide counts, never a topic, client id or key id.

Serve it with :class:`~.fastpath.FastSite` to have the dialects' hot calls (AWS ``Publish``,
the Alibaba RPC endpoint) answered without aiohttp's per-request layers (``fastpath.py``);
any other site serves it all through aiohttp, with the same answers."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST

from ..console import add_routes as add_console_routes
from ..observe.metrics import render_metrics
from ..observe.requests import API_REQUESTS
from ..observe.sources import Sources
from ..observe.stats import stats_body
from ..transport.admission import AdmissionGate
from ..transport.websocket import websocket_handler
from .aliyun.api import add_routes as add_aliyun_routes
from .aws.api import add_routes as add_aws_routes
from .aws_control.api import add_routes as add_aws_control_routes
from .context import HubContext
from .fastpath import (
    FAST_CONNECTIONS,
    FAST_ROUTES,
    KEEPALIVE_TIMEOUT,
    FastConnections,
    FastRoutes,
    watch_requests,
)
from .trace_routes import add_routes as add_trace_routes


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


def build_http_app(
    context: HubContext, gate: AdmissionGate | None = None, sources: Sources | None = None
) -> web.Application:
    """The application; ``gate``: the MQTT admission gate (transport/admission.py), which
    MQTT over WebSocket passes too, and whose counters ``/metrics`` shows; ``sources``: what
    ``/metrics`` and ``/api/stats`` read (the hub's, with its audit log and log pipe), else
    made from ``context`` and ``gate``."""
    if sources is None:
        sources = Sources(context, gate)
    broker = context.broker
    server_log = logging.getLogger("aiohttp.server")
    if _QUIET not in server_log.filters:
        server_log.addFilter(_QUIET)
    # Large enough for a Base64 MessageContent of the biggest MQTT packet, in a form body or,
    # as the older Alibaba SDK sends BatchPub and PubBroadcast, in the query string.
    limit = max(512 * 1024, broker.settings.max_packet_size * 2)
    # watch_requests: the read timeouts of connections the fast path handed over; an idle
    # keep-alive connection is closed after the fast path's timeout, not aiohttp's hour.
    app = web.Application(
        client_max_size=limit,
        handler_args={"max_line_size": limit, "keepalive_timeout": KEEPALIVE_TIMEOUT},
        middlewares=[watch_requests],
    )
    app[FAST_ROUTES] = FastRoutes()
    app[API_REQUESTS] = sources.requests
    app[FAST_CONNECTIONS] = connections = FastConnections()

    async def close_fast_connections(app: web.Application) -> None:
        await connections.shutdown()

    app.on_shutdown.append(close_fast_connections)

    health = context.health

    async def healthz(request: web.Request) -> web.Response:
        snapshot = health.snapshot()
        return web.json_response(snapshot.as_json(), status=503 if snapshot.failed else 200)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=render_metrics(sources), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(stats_body(sources))

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/stats", stats)
    app.router.add_get("/mqtt", websocket_handler(broker, gate))
    add_aliyun_routes(app, context)
    add_aws_control_routes(app, context)  # before the data plane: /things/{name} (api.py)
    add_aws_routes(app, context)
    add_trace_routes(app, context)
    add_console_routes(app, context, sources.received)  # /console (thinghub/console)
    return app
