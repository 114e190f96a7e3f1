"""The four device shadow operations of iot-data (reference ``aws-iot-data-api.md`` §1;
AWS IoT developer guide ``device-shadow-rest-api``), over ``thinghub.shadow``.

    GET    /things/{thingName}/shadow[?name=]     GetThingShadow
    POST   /things/{thingName}/shadow[?name=]     UpdateThingShadow (body: request state document)
    DELETE /things/{thingName}/shadow[?name=]     DeleteThingShadow
    GET    /api/things/shadow/ListNamedShadowsForThing/{thingName}?nextToken=&pageSize=

The first three answer with the raw JSON document (the model's ``payload`` member, a
StreamingBody to boto3). The shadow service's errors carry the HTTP status of the guide's
``device-shadow-error-messages``; here they become the model's error shapes, rendered by
``api`` like every other error, so boto3 raises ``InvalidRequestException``,
``ResourceNotFoundException``, ``ConflictException``, ``RequestEntityTooLargeException``,
``UnsupportedDocumentEncodingException`` or ``ThrottlingException``. The calls act in the
access key's account: another account's shadow is "not found", like a missing one.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

from aiohttp import web

from ...shadow.document import JSONObject, ShadowError, dumps
from ...shadow.names import check_shadow_name
from ...shadow.service import ShadowService
from ..context import HubContext
from .errors import (
    CONFLICT,
    INTERNAL_FAILURE,
    INVALID_REQUEST,
    REQUEST_ENTITY_TOO_LARGE,
    RESOURCE_NOT_FOUND,
    SERVICE_UNAVAILABLE,
    THROTTLING,
    UNSUPPORTED_DOCUMENT_ENCODING,
    AwsError,
    ErrorShape,
)
from .paging import next_token, token_position
from .validation import parse_int

if TYPE_CHECKING:  # routes imports this module; Call is only a type here
    from .routes import Call

__all__ = [
    "delete_thing_shadow",
    "get_thing_shadow",
    "list_named_shadows_for_thing",
    "update_thing_shadow",
]

# ListNamedShadowsForThing's pageSize: the model allows 1..100 and states no default; 25 is
# what AWS's shadow implementation for Greengrass uses (its IPC ListNamedShadowsForThing).
DEFAULT_SHADOW_PAGE = 25
MAX_SHADOW_PAGE = 100

_SHAPES: dict[int, ErrorShape] = {
    400: INVALID_REQUEST,
    404: RESOURCE_NOT_FOUND,
    409: CONFLICT,
    413: REQUEST_ENTITY_TOO_LARGE,
    415: UNSUPPORTED_DOCUMENT_ENCODING,
    429: THROTTLING,
}


def _service(ctx: HubContext) -> ShadowService:
    if ctx.shadows is None:
        raise AwsError(SERVICE_UNAVAILABLE, "Device shadows are not enabled on this hub.")
    return ctx.shadows


def _aws_error(error: ShadowError) -> AwsError:
    return AwsError(_SHAPES.get(error.code, INTERNAL_FAILURE), error.message)


def _shadow_name(call: Call) -> str | None:
    """The ``name`` query parameter: absent for the classic shadow, else a valid name."""
    name = call.params.get("name")
    if name is not None:
        try:
            check_shadow_name(name)
        except ShadowError as error:
            raise _aws_error(error) from None
    return name


def _document(call: Call, body: JSONObject) -> web.Response:
    # The same compact UTF-8 JSON as the service publishes on MQTT.
    headers = {"Content-Type": "application/json", "x-amzn-RequestId": call.request_id}
    return web.Response(status=200, body=dumps(body), headers=headers)


async def _answer(call: Call, answer: Awaitable[JSONObject]) -> web.Response:
    """The service's answer as the operation's payload, or its refusal as AwsError."""
    try:
        body = await answer
    except ShadowError as error:
        raise _aws_error(error) from None
    return _document(call, body)


async def get_thing_shadow(ctx: HubContext, call: Call) -> web.Response:
    name = _shadow_name(call)
    return await _answer(call, _service(ctx).get(call.account, call.label, name))


async def update_thing_shadow(ctx: HubContext, call: Call) -> web.Response:
    name = _shadow_name(call)
    return await _answer(call, _service(ctx).update(call.account, call.label, name, call.body))


async def delete_thing_shadow(ctx: HubContext, call: Call) -> web.Response:
    name = _shadow_name(call)
    return await _answer(call, _service(ctx).delete(call.account, call.label, name))


async def list_named_shadows_for_thing(ctx: HubContext, call: Call) -> web.Response:
    params = call.params
    limit = parse_int("pageSize", params.get("pageSize"), DEFAULT_SHADOW_PAGE, 1, MAX_SHADOW_PAGE)
    after = token_position("shadows", params.get("nextToken"))
    service = _service(ctx)
    try:
        page = await service.list_named(call.account, call.label, after, limit)
    except ShadowError as error:
        raise _aws_error(error) from None
    # device-shadow-document, "Shadow name list response document": nextToken "is not
    # present when there are no more shadow names to return". A thing without named shadows
    # lists nothing rather than 404: shadows need no registered thing (as on AWS), so "no
    # such thing" is not something the hub can know.
    body: JSONObject = {"results": list(page.names)}
    if page.more and page.names:
        body["nextToken"] = next_token("shadows", page.names[-1])
    body["timestamp"] = service.now()
    return _document(call, body)


# An opaque nextToken: the last name returned. Resuming after a name (not at an offset) stays
# correct when shadows come and go between pages.
