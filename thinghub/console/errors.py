"""The console API's one error type and its JSON shape.

Every refusal is ``{"error": {"code": ..., "message": ...}}`` with its HTTP status, rendered in
one place (``routes.py``): 400 bad input, 401 no session (or a wrong key at sign-in), 403 a
missing or forged CSRF token or a foreign Origin, 404 not found (also another account's
resource: tenancy, docs/architecture.md), 409 a refused publish, 429 too many sign-in
attempts or tails, 503 a store or the console's reader that cannot take the work now.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

__all__ = ["ConsoleError", "error_response"]

BAD_REQUEST: Final = (400, "BadRequest")
UNAUTHORIZED: Final = (401, "Unauthorized")
FORBIDDEN: Final = (403, "Forbidden")
NOT_FOUND: Final = (404, "NotFound")
CONFLICT: Final = (409, "Refused")
TOO_MANY: Final = (429, "TooManyRequests")
UNAVAILABLE: Final = (503, "ServiceUnavailable")


class ConsoleError(Exception):
    """A refusal: nothing was changed."""

    def __init__(self, kind: tuple[int, str], message: str) -> None:
        super().__init__(message)
        self.status, self.code = kind
        self.message = message

    @classmethod
    def bad(cls, message: str) -> ConsoleError:
        return cls(BAD_REQUEST, message)

    @classmethod
    def not_found(cls, message: str) -> ConsoleError:
        return cls(NOT_FOUND, message)


def error_response(error: ConsoleError) -> web.Response:
    return web.json_response(
        {"error": {"code": error.code, "message": error.message}}, status=error.status
    )
