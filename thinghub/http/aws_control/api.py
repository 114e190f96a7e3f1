"""The AWS IoT control plane (``iot``, 2015-05-28) on the hub's HTTP port: things,
certificates, CA certificates, policies, principals and DescribeEndpoint, for boto3's ``iot``
client unchanged but for ``endpoint_url`` and the keys.

Match, then handle (STYLE.md §3.11), as the data plane does (``http/aws/api.py``):

1. **match** the raw path (``routes``) to an operation; a verb the resource does not have is
   405 ``MethodNotAllowedException``; only a canonical path is matched (``sigv4.check_path``),
   so the path routed is the path whose signature is checked;
2. **read** the body, at most ``MAX_BODY_BYTES`` (413 ``RequestEntityTooLargeException``);
3. **authenticate**: SigV4 with service ``iot`` (what botocore signs the ``iot`` client
   with) and the registry's access key; the key's account is the account the call acts in,
   and another account's resources are not found. Failures are 403 with AWS's generic codes
   (``errors.py``);
4. **throttle** per account and operation (``HubContext.aws_limits``): 400
   ``ThrottlingException``, the ``iot`` model's status;
5. **handle**: reads run here on the event loop (WAL readers wait for no writer), writes on
   the registry writer thread (``call.Control.write``);
6. **render** errors in one place: the identity store's problems through ``errors``'s one
   table; a registry that cannot be written now is 503 ``ServiceUnavailableException``;
   anything unexpected is logged and 500 ``InternalFailureException``.

Every call is reported once answered to the hub's request seam (``observe/requests.py``), as
an ``aws`` dialect call named by its operation (``CreateThing`` ...).

The ``IdentityService`` is handed in through the application (``app[IDENTITY]``, set by
``thinghub/app.py``); until it is, every call is 503.

Routing beside the data plane: ``/things/{thingName}`` and ``/things/{thingName}/principals``
are the control plane's, ``/things/{thingName}/shadow`` the data plane's. aiohttp tries
resources of one path prefix in the order they were added, so ``add_routes`` must run before
the data plane's (``http/app.py``).
"""

from __future__ import annotations

import logging

from aiohttp import web

from ...identity.errors import IdentityError
from ...identity.service import IdentityService
from ...observe.requests import API_REQUESTS, AWS, ApiCall, ApiRequests
from ...registry.errors import StoreUnavailable
from ..aws import sigv4
from ..aws.api import RequestIds
from ..aws.errors import (
    INTERNAL_FAILURE,
    METHOD_NOT_ALLOWED,
    REQUEST_ENTITY_TOO_LARGE,
    SERVICE_UNAVAILABLE,
    AwsError,
    ErrorShape,
    error_response,
)
from ..aws.validation import Params
from ..context import HubContext
from .call import Call, Control
from .errors import THROTTLING, from_identity, render
from .routes import aiohttp_paths, match

__all__ = ["IDENTITY", "MAX_BODY_BYTES", "SERVICES", "add_routes"]

log = logging.getLogger("thinghub.http.aws_control")

#: the identity service the routes act on (set by ``thinghub/app.py`` before the app starts)
IDENTITY = web.AppKey("thinghub.identity", IdentityService)
#: the SigV4 service name of botocore's ``iot`` client (its model's ``signingName``)
SERVICES = frozenset({"iot"})
# The largest request: RegisterCACertificate with two 64 KiB PEMs and a 10 KiB template.
MAX_BODY_BYTES = 256 * 1024
_READ_CHUNK = 64 * 1024
_NOT_RUNNING = "The AWS IoT control plane is not running on this hub."


async def _read_body(request: web.Request) -> bytes:
    if not request.body_exists:
        return b""
    declared = request.content_length
    if declared is not None and declared > MAX_BODY_BYTES:
        raise AwsError(
            REQUEST_ENTITY_TOO_LARGE,
            f"The request body is {declared} bytes; the limit is {MAX_BODY_BYTES} bytes.",
        )
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(_READ_CHUNK):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise AwsError(
                REQUEST_ENTITY_TOO_LARGE,
                f"The request body is larger than {MAX_BODY_BYTES} bytes.",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def add_routes(app: web.Application, ctx: HubContext) -> None:
    """Mount the control-plane operations on ``app`` (before the data plane's routes)."""
    request_ids = RequestIds()
    # The hub's request seam (observe/requests.py); an application without one keeps its own.
    requests = app.get(API_REQUESTS) or ApiRequests()

    async def handle(request: web.Request) -> web.StreamResponse:
        """``serve``, reported to the request seam once answered."""
        seen = requests.begin(AWS)
        response = await serve(request, seen)
        if response.status >= 400:
            seen.result = response.headers.get("x-amzn-ErrorType", "")
        requests.answered(seen, response.status)
        return response

    async def serve(request: web.Request, seen: ApiCall) -> web.StreamResponse:
        request_id = request_ids.next()
        try:
            raw_path, query = sigv4.split_target(request.raw_path)
            sigv4.check_path(raw_path)
            found = match(request.method, raw_path)
            if found is None:
                raise AwsError(
                    METHOD_NOT_ALLOWED,
                    "The specified combination of HTTP verb and URI is not supported.",
                )
            seen.operation = found.operation
            body = await _read_body(request)
            wire = sigv4.WireRequest(request.method, raw_path, query, request.headers, body)
            parsed = sigv4.parse(wire)
            seen.access_key_id = parsed.access_key_id
            key = ctx.registry.lookup_access_key(parsed.access_key_id)
            verified = sigv4.verify(parsed, key, services=SERVICES)
            account = seen.account = verified.key.account_id
            if not ctx.aws_limits.allow(account, found.operation):
                raise AwsError(THROTTLING, "Rate exceeded")
            identity = request.app.get(IDENTITY)
            if identity is None:
                raise AwsError(SERVICE_UNAVAILABLE, _NOT_RUNNING)
            call = Call(
                request_id=request_id,
                account=account,
                labels=found.labels,
                params=Params(query),
                headers=request.headers,
                body=body,
            )
            return await found.handler(Control(ctx, identity), call)
        except AwsError as error:
            return render(error, request_id)
        except IdentityError as error:
            return render(from_identity(error), request_id)
        except sigv4.SigV4Error as error:
            log.debug("iot %s refused: %s", request_id, error)
            # AWS's generic authentication codes (errors.py); the non-canonical path is 400.
            name = error.reason if error.status == 403 else error.error_type
            return error_response(ErrorShape(name, error.status), error.message, request_id)
        except StoreUnavailable as error:
            return error_response(SERVICE_UNAVAILABLE, str(error), request_id)
        except Exception:
            log.exception("iot request %s failed", request_id)
            return error_response(INTERNAL_FAILURE, "Internal failure.", request_id)

    for path in aiohttp_paths():
        app.router.add_route("*", path, handle)
