"""Delivery traces over HTTP (docs/architecture.md, *Delivery trace*)::

    GET /thinghub/trace/{MessageId}             one message's trace (thinghub/trace/report.py)
    GET /thinghub/trace?topic=T&maxResults=N    the account's latest traced messages, newest
                                                first, without their sessions

Signed like the iot-data plane: Signature Version 4 checked by the hub's own code
(``aws/sigv4.py``) with the registry's access keys, service ``thinghub`` (or ``iotdata``,
so an AWS signer works as is), any region. The key's account is the only one whose messages
it sees: another account's MessageId gets the same 404 as an unknown one (tenancy, as in
``aws/routes.py``). Errors have the iot-data shape (``aws/errors.py``): 403 for a bad
signature, 404 ``ResourceNotFoundException`` for a message without a trace (and for every
MessageId while tracing is off, saying so), 400 for a malformed id, 405 for another verb,
429 past the account's rate (``api.aws_rate_limits``, key ``GetTrace``).

In a cluster a message's trace is in parts, one on each node that routed it: one message's
trace is asked of every live node (cluster/rpc.py, ``trace``) and merged into one document
(trace/report.py, ``merge``) that names each session's node and which nodes answered; 404
only when no node has any part. The list stays this node's own: it shows the messages this
node routed (their MessageIds are the cluster's, so each one's trace is whole).
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..trace.recorder import TraceRecorder
from ..trace.report import merge, report, session_state, summary
from .aws import sigv4
from .aws.api import RequestIds
from .aws.errors import (
    INTERNAL_FAILURE,
    METHOD_NOT_ALLOWED,
    REQUEST_ENTITY_TOO_LARGE,
    AwsError,
    ErrorShape,
    error_response,
    json_response,
)
from .context import HubContext

__all__ = ["PREFIX", "RATE_KEY", "SERVICES", "add_routes"]

log = logging.getLogger("thinghub.http.trace")

PREFIX = "/thinghub/trace"
SERVICES = frozenset({"thinghub", *sigv4.SERVICES})
#: the operation name the per-account rate limiter knows these calls by
RATE_KEY = "GetTrace"
DEFAULT_LIST = 20
MAX_LIST = 100
# A GET has no body; a few bytes are read (and must match the signed hash), no more.
_MAX_BODY = 4096
# MessageIds are positive signed 64-bit numbers (registry/ids.py).
_MAX_ID = (1 << 63) - 1

TRACE_OFF = (
    "Delivery tracing is off on this hub: no trace is kept. Turn it on with [trace] "
    "enabled = true in the configuration file (or THINGHUB_TRACE_ENABLED=true) and restart."
)


def add_routes(app: web.Application, ctx: HubContext) -> None:
    """Mount the trace endpoints on ``app``."""
    request_ids = RequestIds()

    async def handle(request: web.Request) -> web.StreamResponse:
        request_id = request_ids.next()
        try:
            return await _serve(ctx, request, request_id)
        except AwsError as error:
            return error_response(error.shape, error.message, request_id)
        except sigv4.SigV4Error as error:
            log.debug("trace request %s refused: %s", request_id, error)
            shape = ErrorShape(error.error_type, error.status)
            return error_response(shape, error.message, request_id)
        except Exception:
            log.exception("trace request %s failed", request_id)
            return error_response(INTERNAL_FAILURE, "Internal failure.", request_id)

    app.router.add_route("*", PREFIX, handle)
    app.router.add_route("*", PREFIX + "/{rest:.*}", handle)


async def _serve(ctx: HubContext, request: web.Request, request_id: str) -> web.Response:
    raw_path, query = sigv4.split_target(request.raw_path)
    sigv4.check_path(raw_path)
    if request.method != "GET":
        raise AwsError(METHOD_NOT_ALLOWED, f"{request.method} is not supported here; use GET.")
    body = b""
    if request.body_exists:
        if (request.content_length or 0) > _MAX_BODY:
            raise AwsError(REQUEST_ENTITY_TOO_LARGE, "A GET request carries no body.")
        body = await request.content.read(_MAX_BODY + 1)
        if len(body) > _MAX_BODY:
            raise AwsError(REQUEST_ENTITY_TOO_LARGE, "A GET request carries no body.")
    parsed = sigv4.parse(sigv4.WireRequest("GET", raw_path, query, request.headers, body))
    key = ctx.registry.lookup_access_key(parsed.access_key_id)
    account = sigv4.verify(parsed, key, services=SERVICES).key.account_id
    if not ctx.aws_limits.allow(account, RATE_KEY):
        raise AwsError.throttled()
    broker = ctx.broker
    recorder = broker.trace
    cluster = ctx.cluster
    if recorder is None and cluster is None:
        raise AwsError.not_found(TRACE_OFF)
    if raw_path in (PREFIX, PREFIX + "/"):
        if recorder is None:
            raise AwsError.not_found(TRACE_OFF)
        topic, limit = _list_params(query)
        found = recorder.recent(account, topic, limit)
        return json_response({"messages": [summary(record) for record in found]}, request_id)
    label = raw_path[len(PREFIX) + 1 :]
    if not label.isascii() or not label.isdigit() or not 0 < int(label) <= _MAX_ID:
        raise AwsError.invalid("The MessageId must be a positive decimal number.")
    message_id = int(label)
    if cluster is not None:
        # Every node's part, this one's included; a node that does not answer in time is
        # named in the answer (``nodes``, ``complete``), never taken for one without a part.
        parts = await cluster.trace(account, message_id)
        merged = merge(message_id, parts)
        if merged is not None:
            return json_response(merged, request_id)
        silent = sorted(part.node for part in parts if not part.answered)
        if not silent and not any(part.tracing for part in parts):
            raise AwsError.not_found(TRACE_OFF)
        missing = f" Nodes {', '.join(silent)} did not answer." if silent else ""
        raise AwsError.not_found(
            _not_found(label, recorder, " on any node of the cluster") + missing
        )
    assert recorder is not None
    record = recorder.get(message_id)
    if record is None or record.account != account:
        raise AwsError.not_found(_not_found(label, recorder))
    return json_response(report(record, session_state(broker, account)), request_id)


def _not_found(label: str, recorder: TraceRecorder | None, where: str = "") -> str:
    kept = (
        f"the hub keeps the last {recorder.max_messages} messages for "
        f"{recorder.max_age_s:g} s and forgets them when it restarts"
        if recorder is not None
        else "tracing is off on this node"
    )
    return (
        f"No trace of message {label}{where}: {kept}; "
        "a MessageId of another account is not shown either."
    )


def _list_params(query: list[tuple[str, str]]) -> tuple[str | None, int]:
    params = dict(query)
    raw = params.get("maxResults")
    limit = DEFAULT_LIST
    if raw is not None:
        if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST:
            raise AwsError.invalid(f"maxResults must be a number from 1 to {MAX_LIST}.")
        limit = int(raw)
    return params.get("topic"), limit
