"""iot-data errors, in the one shape botocore parses into the right exception class.

Reference ``aws-iot-data-api.md`` §3 ("How the error code is chosen"): botocore's
``RestJSONParser`` takes the code from the ``x-amzn-ErrorType`` header first, the message from
the body's ``message``, and ``x-amzn-RequestId`` as ``ResponseMetadata.RequestId``; the
exception class is looked up by code across *all* the service's error shapes. So every error
is answered with::

    HTTP <the shape's modelled status>
    Content-Type: application/json
    x-amzn-ErrorType: <ShapeName>
    x-amzn-RequestId: <uuid>

    {"message": "...", "traceId": "<uuid>"}

Retries (§3, "Retries"): boto3's standard mode retries every 5xx, every 429 and every
throttling code, three attempts in all (legacy mode: five). A deterministic client error must
therefore never be answered with 5xx or 429: only ``ThrottlingException`` (the rate and
retained-message limits) is 429, only ``GatewayTimeoutException`` (a device that did not
PUBACK in time) is 504, and ``InternalFailureException`` (500) is kept for real bugs.

Status codes are the model's ``httpStatusCode`` of each shape (botocore
``data/iot-data/2015-05-28/service-2.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from aiohttp import web

__all__ = [
    "CONFLICT",
    "FORBIDDEN",
    "GATEWAY_TIMEOUT",
    "INTERNAL_FAILURE",
    "INVALID_REQUEST",
    "METHOD_NOT_ALLOWED",
    "REQUEST_ENTITY_TOO_LARGE",
    "RESOURCE_NOT_FOUND",
    "SERVICE_UNAVAILABLE",
    "THROTTLING",
    "UNAUTHORIZED",
    "UNSUPPORTED_DOCUMENT_ENCODING",
    "AwsError",
    "ErrorShape",
    "error_response",
    "json_response",
]


@dataclass(frozen=True, slots=True)
class ErrorShape:
    """One error shape of the model: its name (the wire code) and HTTP status."""

    name: str
    status: int


INVALID_REQUEST = ErrorShape("InvalidRequestException", 400)
UNAUTHORIZED = ErrorShape("UnauthorizedException", 401)
FORBIDDEN = ErrorShape("ForbiddenException", 403)
RESOURCE_NOT_FOUND = ErrorShape("ResourceNotFoundException", 404)
METHOD_NOT_ALLOWED = ErrorShape("MethodNotAllowedException", 405)
CONFLICT = ErrorShape("ConflictException", 409)
REQUEST_ENTITY_TOO_LARGE = ErrorShape("RequestEntityTooLargeException", 413)
UNSUPPORTED_DOCUMENT_ENCODING = ErrorShape("UnsupportedDocumentEncodingException", 415)
THROTTLING = ErrorShape("ThrottlingException", 429)
INTERNAL_FAILURE = ErrorShape("InternalFailureException", 500)
SERVICE_UNAVAILABLE = ErrorShape("ServiceUnavailableException", 503)
GATEWAY_TIMEOUT = ErrorShape("GatewayTimeoutException", 504)


class AwsError(Exception):
    """An iot-data error answer: raised anywhere in the dialect, rendered once in ``api``."""

    def __init__(self, shape: ErrorShape, message: str) -> None:
        super().__init__(f"{shape.name}: {message}")
        self.shape = shape
        self.message = message

    @classmethod
    def invalid(cls, message: str) -> AwsError:
        return cls(INVALID_REQUEST, message)

    @classmethod
    def not_found(cls, message: str) -> AwsError:
        return cls(RESOURCE_NOT_FOUND, message)

    @classmethod
    def throttled(cls, message: str = "Rate exceeded") -> AwsError:
        return cls(THROTTLING, message)


def _headers(request_id: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "x-amzn-RequestId": request_id}


def json_response(body: dict[str, object], request_id: str, status: int = 200) -> web.Response:
    """A successful rest-json answer (compact JSON, the request id in its header)."""
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":")).encode(),
        headers=_headers(request_id),
    )


def ok_response(request_id: str) -> web.Response:
    """``{"message":"OK","traceId":<request id>}``, what a successful HTTPS publish answers
    (reference §3); written directly: a request id needs no JSON escaping."""
    body = f'{{"message":"OK","traceId":"{request_id}"}}'
    return web.Response(status=200, body=body.encode(), headers=_headers(request_id))


def error_response(shape: ErrorShape, message: str, request_id: str) -> web.Response:
    """The error shape of §3: status, ``x-amzn-ErrorType``, ``x-amzn-RequestId`` and a JSON
    body with ``message`` and ``traceId`` (AWS's own error bodies carry exactly these two)."""
    headers = _headers(request_id)
    headers["x-amzn-ErrorType"] = shape.name
    body = json.dumps({"message": message, "traceId": request_id}, separators=(",", ":"))
    return web.Response(status=shape.status, body=body.encode(), headers=headers)
