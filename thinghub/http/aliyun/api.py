"""The RPC endpoint ``/`` (GET and POST) of the Alibaba Cloud IoT API 2018-01-20.

Match, then handle (STYLE.md §3.11): every request goes through the same steps, and every
failure is rendered in the dialect's own shape by the one ``except`` ladder below.

1. **Parse** (``signing.parse_target``, never fails): parameters from the query and a form
   body, the claimed AccessKeyId, Action, Version, and the response format (§5: V1 ``Format``,
   default XML; V3 JSON).
2. **Authenticate** (``signing.verify``): key, clock (15 min), signature, nonce (§1.2-§1.4);
   then wait until the nonce is on disk (``nonce_store.py``), so that nothing is done for a
   request whose nonce a restart would forget. A store that cannot take it: 503.
3. **Match** the Version and Action (unknown: ``InvalidApi.NotFound``, 404) and charge the
   account's rate quota for the action (``Throttling.User``, §1.4; quotas are per account and
   shared by its keys, §2).
4. **Call the core** through the action's handler (``actions.py``).
5. **Render**: success and business errors HTTP 200 (§2), gateway errors 4xx (§1.4), each with
   a fresh uppercase UUID RequestId (§5).

Every call, from the aiohttp route or the fast path, is reported once answered to the hub's
request seam (``observe/requests.py``: counts, latency, the audit line), with what ``serve``
learnt of it on the way (``ApiCall``: action, key, account, error code).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from ...broker.admission import PublishRefused, Refusal
from ...observe.requests import ALIYUN, API_REQUESTS, ApiCall, ApiRequests
from ...registry.errors import RegistryError
from ..aws.api import RequestIds
from ..context import HubContext
from ..fastpath import FAST_ROUTES
from ..publishing import StoreUnavailable
from . import errors as e
from . import render
from .actions import ACTIONS, Call
from .errors import ApiError, GatewayError
from .nonce_store import NonceStoreUnavailable
from .params import Params
from .signing import Verified, parse_target, verify

__all__ = ["API_VERSION", "add_routes"]

log = logging.getLogger("thinghub.http.aliyun")

API_VERSION = "2018-01-20"


def add_routes(app: web.Application, ctx: HubContext) -> None:
    """Serve the RPC API at ``/`` on ``app`` (GET and POST, as both SDKs may use either)."""

    # Uppercase UUID4s (§5), as registry.ids.new_request_id makes them, from a pool of
    # random bytes: one os.urandom call and one formatting loop per 256 requests.
    request_ids = RequestIds(upper=True)
    # The hub's request seam; an application without one (a test harness) keeps its own.
    requests = app.get(API_REQUESTS) or ApiRequests()

    async def rpc(request: web.Request) -> web.Response:
        seen = requests.begin(ALIYUN)
        response = await serve(
            ctx,
            request.method,
            request.raw_path,
            request.headers,
            request,
            request_ids.next(),
            seen,
        )
        requests.answered(seen, response.status)
        return response

    async def fast_rpc(
        method: str, target: str, headers: CIMultiDictProxy[str], body: bytes
    ) -> web.Response:
        seen = requests.begin(ALIYUN)
        response = await serve(ctx, method, target, headers, body, request_ids.next(), seen)
        requests.answered(seen, response.status)
        return response

    app.router.add_get("/", rpc, allow_head=False)
    app.router.add_post("/", rpc)
    fast = app.get(FAST_ROUTES)
    if fast is not None:  # the hub's own server: the same calls without aiohttp's layers
        fast.add("GET", "/", fast_rpc)
        fast.add("POST", "/", fast_rpc)


async def _read_body(request: web.Request) -> bytes:
    """The whole body, within the server's ``client_max_size``. A body that has arrived in
    full (the parser has seen its end: nearly every API call) is taken as it is, without
    ``request.read()``'s copy into a bytearray and its second, empty read."""
    content = request.content
    limit = request.client_max_size
    if content.is_eof():
        body = content.read_nowait()
        if len(body) <= limit:
            return body
    else:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            pass
    # aiohttp's own words for it, as request.read() raises them.
    raise e.request_too_large(f"Maximum request body size {limit} exceeded.")


async def serve(
    ctx: HubContext,
    method: str,
    target: str,
    headers: CIMultiDictProxy[str],
    body: bytes | web.Request,
    request_id: str,
    seen: ApiCall | None = None,
) -> web.Response:
    """One call: ``target`` is the raw request target (path and query as sent); ``body`` is
    the body, or the aiohttp request to read it from (the fast path has read it already);
    ``seen`` is filled in with what the request turns out to be."""
    if seen is None:
        seen = ApiCall(ALIYUN, 0.0)
    host = headers.get("Host", "")
    response_format = "JSON"
    action: str | None = None
    try:
        if not isinstance(body, bytes):
            body = await _read_body(body)
        rpc = parse_target(method, target, headers, body)
        response_format = rpc.response_format
        action = rpc.action
        seen.access_key_id = rpc.access_key_id or ""
        if action in ACTIONS:
            seen.operation = action
        registry = ctx.registry
        key = registry.lookup_access_key(rpc.access_key_id) if rpc.access_key_id else None
        verified = verify(rpc, key, ctx.nonces)
        if ctx.nonce_store is not None:
            await _remember(ctx, verified)
        if not action:
            raise e.missing("Action")
        if not rpc.api_version:
            raise e.missing("Version")
        handler = ACTIONS.get(action)
        if handler is None or rpc.api_version != API_VERSION:
            raise e.invalid_api(action, rpc.api_version)
        account_id = seen.account = verified.key.account_id
        if not ctx.aliyun_limits.allow(account_id, action):
            raise e.throttled()
        params = Params(rpc.params)
        call = Call(
            ctx=ctx,
            account_id=account_id,
            access_key_id=verified.access_key_id,
            params=params,
            instance_id=params.optional("IotInstanceId"),
        )
        fields = await handler(call)
        return render.success(action, response_format, request_id, fields)
    except GatewayError as error:
        seen.result = error.code
        return render.gateway_error(error, response_format, request_id, host)
    except ApiError as error:
        seen.result = error.code
        return render.business_error(
            action or "", response_format, request_id, error.code, error.message, error.fields
        )
    except RegistryError as error:
        seen.result = error.code
        return render.business_error(
            action or "", response_format, request_id, error.code, error.message
        )
    except (StoreUnavailable, NonceStoreUnavailable) as error:
        # The gateway's 503: nothing was published; the SDKs may retry.
        unavailable = GatewayError("ServiceUnavailable", 503, str(error))
        seen.result = unavailable.code
        return render.gateway_error(unavailable, response_format, request_id, host)
    except PublishRefused as refusal:
        # The admission gate (broker/admission.py): a business error, as Pub answers a topic
        # it may not publish to; nothing was published.
        code = (
            e.TOPIC_NOT_ALLOWED
            if refusal.kind in (Refusal.NOT_AUTHORIZED, Refusal.INVALID)
            else e.QUOTA_EXCEEDED
        )
        seen.result = code
        return render.business_error(
            action or "", response_format, request_id, code, refusal.reason
        )
    except Exception:
        log.exception("Alibaba API %s failed (RequestId %s)", action, request_id)
        internal = e.internal_error()
        seen.result = internal.code
        return render.gateway_error(internal, response_format, request_id, host)


async def _remember(ctx: HubContext, verified: Verified[Any]) -> None:
    """Wait until ``verified``'s nonce is durable: before the action runs, and so before any
    answer, even an error (a throttled request, once replayed after a restart, would otherwise
    do what its sender was told it had not). Raises NonceStoreUnavailable having forgotten
    the nonce, as its request does nothing."""
    store = ctx.nonce_store
    assert store is not None
    try:
        await store.use(verified.access_key_id, verified.nonce, verified.expires_at)
    except NonceStoreUnavailable:
        ctx.nonces.forget(verified.access_key_id, verified.nonce)
        raise
