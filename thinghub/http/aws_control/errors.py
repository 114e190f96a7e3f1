"""AWS IoT control-plane errors, in the shape botocore parses (``http/aws/errors.py``: the
``x-amzn-ErrorType`` header names the shape, the body carries ``message``).

Status codes are the ``iot`` model's ``httpStatusCode`` of each shape (botocore
``data/iot/2015-05-28/service-2.json``), which differ from ``iot-data``'s in places: the
control plane's ``ThrottlingException`` is 400 (botocore retries it by its code) and
``LimitExceededException`` 410. ``ResourceAlreadyExistsException`` also carries
``resourceId`` and ``resourceArn``, as the model's shape does.

Authentication failures are answered with AWS's generic codes and 403
(``InvalidSignatureException``, ``UnrecognizedClientException``,
``MissingAuthenticationTokenException``, ``IncompleteSignatureException``): the ``iot`` model
has no shape of its own for them, and these are what AWS answers on every service.
"""

from __future__ import annotations

from aiohttp import web

from ...identity.errors import IdentityError, Problem
from ..aws.errors import (
    INVALID_REQUEST,
    RESOURCE_NOT_FOUND,
    AwsError,
    ErrorShape,
    error_response,
    json_response,
)

__all__ = [
    "CERTIFICATE_CONFLICT",
    "CERTIFICATE_STATE",
    "CERTIFICATE_VALIDATION",
    "DELETE_CONFLICT",
    "LIMIT_EXCEEDED",
    "MALFORMED_POLICY",
    "REGISTRATION_CODE_VALIDATION",
    "RESOURCE_ALREADY_EXISTS",
    "THROTTLING",
    "VERSIONS_LIMIT_EXCEEDED",
    "VERSION_CONFLICT",
    "IotError",
    "from_identity",
    "render",
]

THROTTLING = ErrorShape("ThrottlingException", 400)
CERTIFICATE_VALIDATION = ErrorShape("CertificateValidationException", 400)
MALFORMED_POLICY = ErrorShape("MalformedPolicyException", 400)
REGISTRATION_CODE_VALIDATION = ErrorShape("RegistrationCodeValidationException", 400)
CERTIFICATE_STATE = ErrorShape("CertificateStateException", 406)
RESOURCE_ALREADY_EXISTS = ErrorShape("ResourceAlreadyExistsException", 409)
VERSION_CONFLICT = ErrorShape("VersionConflictException", 409)
DELETE_CONFLICT = ErrorShape("DeleteConflictException", 409)
VERSIONS_LIMIT_EXCEEDED = ErrorShape("VersionsLimitExceededException", 409)
CERTIFICATE_CONFLICT = ErrorShape("CertificateConflictException", 409)
LIMIT_EXCEEDED = ErrorShape("LimitExceededException", 410)

# The identity store's problems (identity/errors.py) as the model's shapes: the one table.
_SHAPES = {
    Problem.INVALID: INVALID_REQUEST,
    Problem.NOT_FOUND: RESOURCE_NOT_FOUND,
    Problem.ALREADY_EXISTS: RESOURCE_ALREADY_EXISTS,
    Problem.VERSION_CONFLICT: VERSION_CONFLICT,
    Problem.DELETE_CONFLICT: DELETE_CONFLICT,
    Problem.CERTIFICATE_STATE: CERTIFICATE_STATE,
    Problem.CERTIFICATE_VALIDATION: CERTIFICATE_VALIDATION,
    Problem.CERTIFICATE_CONFLICT: CERTIFICATE_CONFLICT,
    Problem.REGISTRATION_CODE: REGISTRATION_CODE_VALIDATION,
    Problem.MALFORMED_POLICY: MALFORMED_POLICY,
    Problem.VERSIONS_LIMIT: VERSIONS_LIMIT_EXCEEDED,
    Problem.LIMIT_EXCEEDED: LIMIT_EXCEEDED,
}


class IotError(AwsError):
    """An ``AwsError`` with the extra members some shapes carry (``resourceId`` ...)."""

    def __init__(
        self, shape: ErrorShape, message: str, members: dict[str, str] | None = None
    ) -> None:
        super().__init__(shape, message)
        self.members = members or {}


def from_identity(error: IdentityError) -> IotError:
    members: dict[str, str] = {}
    if error.resource_id is not None:
        members["resourceId"] = error.resource_id
    if error.resource_arn is not None:
        members["resourceArn"] = error.resource_arn
    return IotError(_SHAPES[error.problem], error.message, members)


def render(error: AwsError, request_id: str) -> web.Response:
    members = error.members if isinstance(error, IotError) else {}
    if not members:
        return error_response(error.shape, error.message, request_id)
    body: dict[str, object] = {"message": error.message, "traceId": request_id, **members}
    response = json_response(body, request_id, status=error.shape.status)
    response.headers["x-amzn-ErrorType"] = error.shape.name
    return response
