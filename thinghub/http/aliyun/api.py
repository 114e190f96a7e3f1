"""The RPC endpoint ``/`` (GET and POST) of the Alibaba Cloud IoT API 2018-01-20.

Match, then handle (STYLE.md §3.11): every request goes through the same steps, and every
failure is rendered in the dialect's own shape by the one ``except`` ladder below.

1. **Parse** (``signing.parse_target``, never fails): parameters from the query and a form
   body, the claimed AccessKeyId, Action, Version, and the response format (§5: V1 ``Format``,
   default XML; V3 JSON).
2. **Authenticate** (``signing.verify``): key, clock (15 min), signature, nonce (§1.2-§1.4).
3. **Match** the Version and Action (unknown: ``InvalidApi.NotFound``, 404) and charge the
   account's rate quota for the action (``Throttling.User``, §1.4; quotas are per account and
   shared by its keys, §2).
4. **Call the core** through the action's handler (``actions.py``).
5. **Render**: success and business errors HTTP 200 (§2), gateway errors 4xx (§1.4), each with
   a fresh uppercase UUID RequestId (§5).
"""

from __future__ import annotations

import logging

from aiohttp import web
from multidict import CIMultiDictProxy

from ...registry.errors import RegistryError
from ..aws.api import RequestIds
from ..context import HubContext
from ..fastpath import FAST_ROUTES
from ..publishing import StoreUnavailable
from . import errors as e
from . import render
from .actions import ACTIONS, Call
from .errors import ApiError, GatewayError
from .params import Params
from .signing import parse_target, verify

__all__ = ["API_VERSION", "add_routes"]

log = logging.getLogger("thinghub.http.aliyun")

API_VERSION = "2018-01-20"


def add_routes(app: web.Application, ctx: HubContext) -> None:
    """Serve the RPC API at ``/`` on ``app`` (GET and POST, as both SDKs may use either)."""

    # Uppercase UUID4s (§5), as registry.ids.new_request_id makes them, from a pool of
    # random bytes: one os.urandom call and one formatting loop per 256 requests.
    request_ids = RequestIds(upper=True)

    async def rpc(request: web.Request) -> web.Response:
        return await serve(
            ctx, request.method, request.raw_path, request.headers, request, request_ids.next()
        )

    async def fast_rpc(
        method: str, target: str, headers: CIMultiDictProxy[str], body: bytes
    ) -> web.Response:
        return await serve(ctx, method, target, headers, body, request_ids.next())

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
) -> web.Response:
    """One call: ``target`` is the raw request target (path and query as sent); ``body`` is
    the body, or the aiohttp request to read it from (the fast path has read it already)."""
    host = headers.get("Host", "")
    response_format = "JSON"
    action: str | None = None
    try:
        if not isinstance(body, bytes):
            body = await _read_body(body)
        rpc = parse_target(method, target, headers, body)
        response_format = rpc.response_format
        action = rpc.action
        registry = ctx.registry
        key = registry.lookup_access_key(rpc.access_key_id) if rpc.access_key_id else None
        verified = verify(rpc, key, ctx.nonces)
        if not action:
            raise e.missing("Action")
        if not rpc.api_version:
            raise e.missing("Version")
        handler = ACTIONS.get(action)
        if handler is None or rpc.api_version != API_VERSION:
            raise e.invalid_api(action, rpc.api_version)
        account_id = verified.key.account_id
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
        return render.gateway_error(error, response_format, request_id, host)
    except ApiError as error:
        return render.business_error(
            action or "", response_format, request_id, error.code, error.message, error.fields
        )
    except RegistryError as error:
        return render.business_error(
            action or "", response_format, request_id, error.code, error.message
        )
    except StoreUnavailable as error:
        # The gateway's 503: nothing was published; the SDKs may retry.
        unavailable = GatewayError("ServiceUnavailable", 503, str(error))
        return render.gateway_error(unavailable, response_format, request_id, host)
    except Exception:
        log.exception("Alibaba API %s failed (RequestId %s)", action, request_id)
        return render.gateway_error(e.internal_error(), response_format, request_id, host)
