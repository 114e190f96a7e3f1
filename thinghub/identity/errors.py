"""The identity store's refusals: one exception type whose ``problem`` says what went wrong,
so that each edge maps problems to its own error shapes in one table
(``http/aws_control/errors.py`` for the AWS IoT control plane). A refused call changed nothing.
"""

from __future__ import annotations

import re
from enum import StrEnum

from ..errors import ThingHubError

__all__ = ["IdentityError", "Problem", "invalid", "matching", "not_found"]


class Problem(StrEnum):
    """What kind of refusal; the names follow the AWS IoT error shapes they become."""

    #: a parameter is missing, empty or malformed
    INVALID = "invalid"
    #: no such resource in the caller's account (another account's gets the same answer)
    NOT_FOUND = "not-found"
    #: a resource of that name or id exists already
    ALREADY_EXISTS = "already-exists"
    #: an ``expectedVersion`` that is not the thing's version
    VERSION_CONFLICT = "version-conflict"
    #: the resource is still attached to others (or has versions) and cannot be deleted
    DELETE_CONFLICT = "delete-conflict"
    #: the certificate's status does not allow the operation
    CERTIFICATE_STATE = "certificate-state"
    #: a certificate that cannot be parsed, verified, or is out of its validity period
    CERTIFICATE_VALIDATION = "certificate-validation"
    #: several registered CAs could have signed the certificate
    CERTIFICATE_CONFLICT = "certificate-conflict"
    #: the verification certificate does not carry the account's registration code
    REGISTRATION_CODE = "registration-code"
    #: a policy document that is not a valid policy
    MALFORMED_POLICY = "malformed-policy"
    #: a policy has as many versions as it may have
    VERSIONS_LIMIT = "versions-limit"
    #: a per-resource count limit would be exceeded
    LIMIT_EXCEEDED = "limit-exceeded"


class IdentityError(ThingHubError):
    """A refused identity operation; nothing was changed.

    ``resource_id`` and ``resource_arn`` name the resource that already exists
    (``Problem.ALREADY_EXISTS``), when the caller may know it."""

    def __init__(
        self,
        problem: Problem,
        message: str,
        *,
        resource_id: str | None = None,
        resource_arn: str | None = None,
    ) -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message
        self.resource_id = resource_id
        self.resource_arn = resource_arn


def invalid(message: str) -> IdentityError:
    return IdentityError(Problem.INVALID, message)


def not_found(message: str) -> IdentityError:
    return IdentityError(Problem.NOT_FOUND, message)


def matching(pattern: re.Pattern[str], value: object, what: str, rule: str) -> str:
    """``value`` when it is a string that ``pattern`` matches whole; otherwise INVALID,
    naming ``what`` was given and the ``rule`` it breaks."""
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise invalid(f"The {what} {value!r} is not valid: {rule}")
    return value
