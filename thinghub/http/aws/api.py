"""The AWS IoT Core data plane (``iot-data``, 2015-05-28) on the hub's HTTP port.

Match, then handle (STYLE.md §3.11). Every request goes through the same steps:

1. **match** the raw request target (not aiohttp's decoded path: ``%2F`` inside a topic and a
   literal ``/`` must not be confused, reference ``aws-iot-data-api.md`` §2) to an operation
   and its still-encoded URI label; a verb the resource does not have is 405
   ``MethodNotAllowedException``. Only a canonical path is matched (``sigv4.check_path``: no
   ``.``/``..`` or empty segments, 400 ``InvalidRequestException``), so the path routed is
   exactly the path whose signature is checked in step 3;
2. **read** the body, at most 128 KB (413 ``RequestEntityTooLargeException`` beyond);
3. **authenticate**: SigV4 (``sigv4``) with the registry's access key; the key's account is
   the topic space the call acts in. Failures are 403 ``ForbiddenException`` (§4);
4. **throttle** per account and operation (``HubContext.aws_limits``, keyed by the operation
   name, e.g. ``"Publish"``): 429 ``ThrottlingException``;
5. decode the label exactly once and **handle** (``routes``), which validates its own
   parameters and calls the core;
6. **render** any ``AwsError`` in the one error shape (``errors``). Anything unexpected is
   logged and answered 500 ``InternalFailureException``.

Every call, from the aiohttp routes or the fast path, is reported once answered to the hub's
request seam (``observe/requests.py``: counts, latency, the audit line), with what ``serve``
learnt of it (``ApiCall``: operation, key, account) and the answer's ``x-amzn-ErrorType``.

Routes::

    POST   /topics/{topic}                     Publish (also raw slashes: /topics/a/b/c)
    GET    /retainedMessage/{topic}            GetRetainedMessage
    GET    /retainedMessage                    ListRetainedMessages
    GET    /connections/{clientId}             GetConnection
    DELETE /connections/{clientId}             DeleteConnection
    GET    /connections/{clientId}/subscriptions   ListSubscriptions
    POST   /connections/{clientId}/messages    SendDirectMessage
    GET    /things/{thingName}/shadow          GetThingShadow      (shadow_routes.py)
    POST   /things/{thingName}/shadow          UpdateThingShadow
    DELETE /things/{thingName}/shadow          DeleteThingShadow
    GET    /api/things/shadow/ListNamedShadowsForThing/{thingName}   ListNamedShadowsForThing
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from urllib.parse import unquote

from aiohttp import web
from multidict import CIMultiDictProxy

from ...broker.admission import PublishRefused, Refusal
from ...observe.requests import API_REQUESTS, AWS, ApiCall, ApiRequests
from ..context import HubContext
from ..fastpath import FAST_ROUTES
from ..publishing import StoreUnavailable
from . import sigv4
from .errors import (
    INTERNAL_FAILURE,
    INVALID_REQUEST,
    METHOD_NOT_ALLOWED,
    REQUEST_ENTITY_TOO_LARGE,
    SERVICE_UNAVAILABLE,
    THROTTLING,
    UNAUTHORIZED,
    AwsError,
    ErrorShape,
    error_response,
)
from .routes import OPERATIONS, Call, Handler
from .validation import MAX_PAYLOAD_BYTES, Params

__all__ = ["Match", "RequestIds", "add_routes", "match"]

log = logging.getLogger("thinghub.http.aws")

# The admission gate's refusals (broker/admission.py) as iot-data errors: publishing where
# the hub's configuration denies it is UnauthorizedException (401, as AWS answers a Publish
# its policy does not allow); a retained-message quota is throttling, as AWS's own
# retained-message quotas are; a store that cannot take the message is the modelled 503.
_REFUSAL_SHAPES = {
    Refusal.NOT_AUTHORIZED: UNAUTHORIZED,
    Refusal.QUOTA: THROTTLING,
    Refusal.UNAVAILABLE: SERVICE_UNAVAILABLE,
    Refusal.INVALID: INVALID_REQUEST,
}

# The aiohttp routes that lead here; ``match`` does the real matching on the raw target.
_MOUNTS = (
    "/topics",
    "/topics/{rest:.*}",
    "/retainedMessage",
    "/retainedMessage/{rest:.*}",
    "/connections",
    "/connections/{rest:.*}",
    "/things/{rest:.*}",
    "/api/things/shadow/{rest:.*}",
)
_LIST_SHADOWS = "/api/things/shadow/ListNamedShadowsForThing/"
_SHADOW_VERBS = {
    "GET": "GetThingShadow",
    "POST": "UpdateThingShadow",
    "DELETE": "DeleteThingShadow",
}
_READ_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Match:
    operation: str
    handler: Handler
    #: the URI label as sent (percent-encoded), "" if the operation has none
    raw_label: str


def _pick(method: str, verbs: dict[str, str], raw_label: str) -> Match:
    operation = verbs.get(method)
    if operation is None:
        raise AwsError(
            METHOD_NOT_ALLOWED, "The specified combination of HTTP verb and URI is not supported."
        )
    return Match(operation, OPERATIONS[operation], raw_label)


def match(method: str, raw_path: str) -> Match:
    """The operation for a method and a raw (still percent-encoded) path.

    botocore encodes ``/`` inside a label as ``%2F`` (reference §2), so a raw ``/`` separates
    path segments. Non-SDK clients may send a topic with raw slashes: everything after
    ``/topics/`` is the topic (the greedy ``{topic+}`` form). A ``{clientId}`` is followed by
    nothing, ``/subscriptions`` or ``/messages``."""
    if raw_path == "/topics" or raw_path.startswith("/topics/"):
        return _pick(method, {"POST": "Publish"}, raw_path[len("/topics/") :])
    if raw_path == "/retainedMessage":
        return _pick(method, {"GET": "ListRetainedMessages"}, "")
    if raw_path.startswith("/retainedMessage/"):
        return _pick(method, {"GET": "GetRetainedMessage"}, raw_path[len("/retainedMessage/") :])
    if raw_path == "/connections" or raw_path.startswith("/connections/"):
        rest = raw_path[len("/connections/") :]
        head, sep, tail = rest.rpartition("/")
        if sep and tail == "subscriptions":
            return _pick(method, {"GET": "ListSubscriptions"}, head)
        if sep and tail == "messages":
            return _pick(method, {"POST": "SendDirectMessage"}, head)
        return _pick(method, {"GET": "GetConnection", "DELETE": "DeleteConnection"}, rest)
    if raw_path.startswith("/things/"):
        head, sep, tail = raw_path[len("/things/") :].rpartition("/")
        if sep and tail == "shadow":
            return _pick(method, _SHADOW_VERBS, head)
    if raw_path.startswith(_LIST_SHADOWS):
        return _pick(method, {"GET": "ListNamedShadowsForThing"}, raw_path[len(_LIST_SHADOWS) :])
    raise AwsError(
        METHOD_NOT_ALLOWED, "The specified combination of HTTP verb and URI is not supported."
    )


def _decode_label(raw: str) -> str:
    """Percent-decode a URI label exactly once (reference §2)."""
    if "%" not in raw:
        return raw
    if len(raw) <= _CACHED_LABEL:
        return _decode_cached(raw)
    return _decode(raw)


def _decode(raw: str) -> str:
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise AwsError.invalid("The request URI is not valid UTF-8.") from None


# Devices publish to the same topics over and over: decoded labels are memoised (a pure
# function; bounded in entries and, through the length, in size; errors are not cached).
_CACHED_LABEL = 512
_decode_cached = functools.lru_cache(maxsize=4096)(_decode)


# RFC 4122 §4.4: the 17th digit of a UUID is its variant, 10xx: its two low bits stay random.
_UUID_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


class RequestIds:
    """Random UUIDs (version 4), lowercase as AWS's request ids (``upper=True``: uppercase,
    as Alibaba's), made 256 at a time from one ``os.urandom`` read: ``str(uuid.uuid4())``
    cost as much as a tenth of a Publish, and formatting them in a batch costs a request a
    list pop."""

    __slots__ = ("_ids", "_upper")

    _BATCH = 256

    def __init__(self, *, upper: bool = False) -> None:
        self._ids: list[str] = []
        self._upper = upper

    def next(self) -> str:
        ids = self._ids
        if not ids:
            ids.extend(self._make())
        return ids.pop()

    def _make(self) -> list[str]:
        h = os.urandom(16 * self._BATCH).hex()
        variant = _UUID_VARIANT
        # Version 4 in the 13th digit (the random digit there is dropped).
        ids = [
            f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-"
            f"{variant[h[i + 16]]}{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
            for i in range(0, len(h), 32)
        ]
        return [rid.upper() for rid in ids] if self._upper else ids


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, refused early when it declares (or turns out) larger than ``limit``."""
    if not request.body_exists:
        return b""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise AwsError(
            REQUEST_ENTITY_TOO_LARGE,
            f"The payload is {declared} bytes; the limit is {limit} bytes.",
        )
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(_READ_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise AwsError(REQUEST_ENTITY_TOO_LARGE, f"The payload is larger than {limit} bytes.")
        chunks.append(chunk)
        if size == declared:
            break  # all that Content-Length framing lets through: the next read is EOF
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def add_routes(app: web.Application, ctx: HubContext) -> None:
    """Mount the iot-data operations on ``app``."""

    request_ids = RequestIds()
    # The hub's request seam; an application without one (a test harness) keeps its own.
    requests = app.get(API_REQUESTS) or ApiRequests()

    async def handle(request: web.Request) -> web.StreamResponse:
        return await observed(request.method, request.raw_path, request.headers, request)

    async def observed(
        method: str, target: str, headers: CIMultiDictProxy[str], body: bytes | web.Request
    ) -> web.StreamResponse:
        """``serve``, reported to the request seam once answered."""
        seen = requests.begin(AWS)
        response = await serve(method, target, headers, body, seen)
        status = response.status
        if status >= 400:
            seen.result = response.headers.get("x-amzn-ErrorType", "")
        requests.answered(seen, status)
        return response

    async def serve(
        method: str,
        target: str,
        headers: CIMultiDictProxy[str],
        body: bytes | web.Request,
        seen: ApiCall,
    ) -> web.StreamResponse:
        """One call: ``target`` is the raw request target; ``body`` is the body, or the aiohttp
        request to read it from (the fast path has read it already); ``seen`` is filled in
        with what the request turns out to be."""
        # AWS request ids are lowercase UUIDs; the same id is the error body's traceId.
        request_id = request_ids.next()
        try:
            raw_path, query = sigv4.split_target(target)
            # SigV4 signs the path with dot and empty segments removed; routing the literal
            # path would act on another resource than the one signed (sigv4.py, "Canonical
            # paths only"). Both the aiohttp route and the fast path come through here.
            sigv4.check_path(raw_path)
            found = match(method, raw_path)
            seen.operation = found.operation
            if not isinstance(body, bytes):
                body = await _read_body(body, MAX_PAYLOAD_BYTES)
            wire = sigv4.WireRequest(method, raw_path, query, headers, body)
            parsed = sigv4.parse(wire)
            seen.access_key_id = parsed.access_key_id
            key = ctx.registry.lookup_access_key(parsed.access_key_id)
            verified = sigv4.verify(parsed, key)
            account = seen.account = verified.key.account_id
            if not ctx.aws_limits.allow(account, found.operation):
                raise AwsError.throttled()
            call = Call(
                request_id=request_id,
                account=account,
                access_key_id=parsed.access_key_id,
                label=_decode_label(found.raw_label),
                params=Params(query),
                headers=headers,
                body=body,
            )
            return await found.handler(ctx, call)
        except AwsError as error:
            return error_response(error.shape, error.message, request_id)
        except sigv4.SigV4Error as error:
            log.debug("iot-data %s refused: %s", request_id, error)
            shape = ErrorShape(error.error_type, error.status)
            return error_response(shape, error.message, request_id)
        except StoreUnavailable as error:
            # Modelled 503 (a fault: boto3 retries it, as it should: nothing was published).
            return error_response(SERVICE_UNAVAILABLE, str(error), request_id)
        except PublishRefused as refusal:
            return error_response(_REFUSAL_SHAPES[refusal.kind], refusal.reason, request_id)
        except Exception:
            log.exception("iot-data request %s failed", request_id)
            return error_response(INTERNAL_FAILURE, "Internal failure.", request_id)

    for path in _MOUNTS:
        app.router.add_route("*", path, handle)
    fast = app.get(FAST_ROUTES)
    if fast is not None:  # the hub's own server: Publish without aiohttp's layers
        fast.add("POST", "/topics/", observed, prefix=True)
