"""What a control-plane handler is given: the authenticated :class:`Call` and the
:class:`Control` (the hub's parts), plus the small readers of the request's members that every
handler shares (JSON body members, page sizes and tokens, certificate ids and ARNs)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web

from ...identity.arns import certificate_id_of
from ...identity.service import IdentityService
from ..aws.errors import AwsError, json_response
from ..aws.paging import next_token, token_position
from ..aws.validation import Params, parse_int
from ..context import HubContext

__all__ = ["Call", "Control", "Handler", "certificate_id", "principal", "token"]

T = TypeVar("T")

#: the model's PageSize and RegistryMaxResults: 1..250
MAX_PAGE = 250
#: a page when the caller names no size (the model gives no default)
DEFAULT_PAGE = 50
_CERTIFICATE_ID_CHARS = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class Control:
    """The hub's parts a handler may use."""

    ctx: HubContext
    identity: IdentityService

    async def write(self, work: Callable[[], T]) -> T:
        """``work()`` (an identity write, its arguments already read) on the registry writer
        thread (``registry/writer.py``), or here when the hub runs none (tests). Raises what
        it raises; ``StoreUnavailable`` (503) when the writer has too many writes waiting."""
        writer = self.ctx.registry.writer
        if writer is None:
            return work()
        return await writer.run(work)


@dataclass(frozen=True, slots=True)
class Call:
    """An authenticated request, matched to its operation."""

    request_id: str
    #: the hub account of the access key that signed the request
    account: str
    #: the URI labels, decoded, in the order of the route's template
    labels: tuple[str, ...]
    params: Params
    headers: Mapping[str, str]
    body: bytes

    # ---------------------------------------------------------------- answers

    def ok(self, body: dict[str, object]) -> web.Response:
        return json_response(body, self.request_id)

    def done(self) -> web.Response:
        """200 with an empty body (the operations whose output has no members)."""
        return web.Response(status=200, headers={"x-amzn-RequestId": self.request_id})

    # ---------------------------------------------------------------- body members

    def json(self) -> dict[str, object]:
        """The JSON body (``{}`` when there is none); anything else is refused."""
        if not self.body.strip():
            return {}
        try:
            value = json.loads(self.body)
        except (ValueError, RecursionError):
            raise AwsError.invalid("The request body is not valid JSON.") from None
        if not isinstance(value, dict):
            raise AwsError.invalid("The request body must be a JSON object.")
        return value

    # ---------------------------------------------------------------- query members

    def flag(self, name: str) -> bool | None:
        raw = self.params.get(name)
        if raw is None:
            return None
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise AwsError.invalid(f"{name} must be true or false, not {raw!r}.")

    def limit(self, name: str) -> int:
        return parse_int(name, self.params.get(name), DEFAULT_PAGE, 1, MAX_PAGE)

    def after_name(self, name: str, kind: str) -> str | None:
        """Where a listing by name resumes (the token's name), or None."""
        return token_position(kind, self.params.get(name))

    def after_seq(self, name: str, kind: str) -> int | None:
        """Where a listing in creation order resumes (the token's sequence number)."""
        position = token_position(kind, self.params.get(name))
        if position is None:
            return None
        if not position.isascii() or not position.isdigit():
            raise AwsError.invalid(f"The {name} is not valid.")
        return int(position)


def token(kind: str, key: str | None) -> str | None:
    """The token that resumes a listing after ``key`` (None: the listing is complete)."""
    return None if key is None else next_token(kind, key)


def certificate_id(raw: str) -> str:
    """A certificate id from a URI: 64 hex digits (the model's CertificateId), lowercased."""
    if len(raw) != 64 or not set(raw) <= _CERTIFICATE_ID_CHARS:
        raise AwsError.invalid(f"The certificate id {raw!r} is not 64 hexadecimal digits.")
    return raw.lower()


def principal(control: Control, call: Call, raw: object, what: str = "principal") -> str:
    """The certificate id a principal (or policy target) ARN names in the caller's account.

    Only certificate ARNs are principals here (no Cognito identities, no thing groups). An
    ARN of another account or region names nothing in this one: ResourceNotFoundException,
    the answer for a certificate that does not exist."""
    if not isinstance(raw, str) or not raw:
        raise AwsError.invalid(f"The {what} is required.")
    found = certificate_id_of(control.identity.arns, call.account, raw)
    if found is not None:
        return found
    if raw.startswith("arn:aws:iot:") and ":cert/" in raw:
        raise AwsError.not_found(f"The certificate {raw} does not exist.")
    raise AwsError.invalid(
        f"The {what} {raw!r} is not supported: only certificate ARNs "
        "(arn:aws:iot:<region>:<account>:cert/<certificateId>) are."
    )


Handler = Callable[[Control, Call], Awaitable[web.Response]]
