"""AWS Signature Version 4 for the iot-data plane, checked without a web framework.

Theory of operation
-------------------
botocore signs ``iot-data`` with the plain (non-S3) ``SigV4Auth`` (reference
``aws-iot-data-api.md`` §4; botocore ``auth.py``).  The canonical request is::

    METHOD
    quote(raw_path, safe="/~")                          <- the path *as sent*, encoded again
    sorted k=v of the query, each re-encoded with quote(safe="-_.~")
    name:value\\n for each SignedHeader (values trimmed, inner whitespace collapsed)
    (blank line)
    SignedHeaders
    x-amz-content-sha256 if present, else hex(SHA-256(body))

The path is double-encoded because botocore serialises the topic label with ``%2F`` for ``/``
and then ``SigV4Auth._normalize_url_path`` quotes the already-encoded path once more
(``/topics/a%2Fb`` is signed as ``/topics/a%252Fb``).  So the path must be taken raw from the
request line: decoding it first would confuse ``%2F`` with ``/``.

Canonical paths only.  Before quoting, botocore's ``normalize_url_path`` removes ``.`` and
``..`` segments and empty ones (``//``), RFC 3986 §5.2.4 plus AWS's own rule on consecutive
slashes.  A server that did the same for the signature but routed the literal path would let
a request signed for ``/topics/status`` be sent to ``/topics/cmd/reboot/../../status`` and
publish to the topic ``cmd/reboot/../../status``.  So the hub accepts only a path that is its
own normal form (:func:`check_path`): then the canonical URI is computed from exactly the path
that is routed, and no normalisation is needed.  Percent-encoded dot segments (``%2e%2e``) are
refused too: RFC 3986 §6.2.2.2 makes them equivalent to ``..`` (aiohttp's yarl decodes them in
``URL.path``), so a layer in front of the hub could resolve them.  botocore never sends any of
these for a label: it writes ``/`` inside a topic as ``%2F`` and leaves ``.`` as is, so a
topic with ``.`` or ``..`` *levels* (``a/../b`` is ``/topics/a%2F..%2Fb``) is one segment and
works.  Only a label that is exactly ``.`` or ``..`` (topic, client id, thing name) becomes a
dot segment; botocore then signs a path without it (``/topics/..`` is signed as ``/``), which
no server can bind to that label: the AWS SDKs cannot express it, and it is refused.

The refusal is 400 ``InvalidRequestException`` (the model's shape for "the request is not
valid"), answered before authentication as an unknown route is: the path is not one of the
API's, whatever the signature; a 403 would send the caller after their credentials, and a
deterministic 400 is not retried by boto3 (``errors.py``).

``StringToSign = "AWS4-HMAC-SHA256\\n" + amzdate + "\\n" + date/region/service/aws4_request + "\\n"
+ hex(SHA-256(canonical request))``; the key is HMAC-chained from ``"AWS4" + secret`` over
date, region, service and ``aws4_request``.  boto3 signs with service ``iotdata``; AWS's docs
say ``iotdevicegateway``: both are accepted, with any region.  The timestamp comes from
``X-Amz-Date`` (or ``Date``, which botocore uses instead when the caller set one) and may be at
most 15 minutes off.  Signatures are compared in constant time.

Errors: AWS IoT answers authentication failures on the data endpoint with HTTP 403, and boto3
users see ``ForbiddenException`` (the only modelled 403 shape of ``iot-data``), with AWS's usual
SigV4 messages.  :class:`SigV4Error` carries status, ``x-amzn-ErrorType`` and message, plus
``reason``, AWS's generic code for the failure (``InvalidSignatureException`` ...), for logs.

Presigned URLs (query-string signing, how the AWS IoT device SDKs sign an MQTT-over-WebSocket
upgrade with service ``iotdevicegateway``): ``X-Amz-Algorithm``, ``X-Amz-Credential``,
``X-Amz-Date``, ``X-Amz-SignedHeaders`` and ``X-Amz-Signature`` travel in the query instead
of the ``Authorization`` header (:func:`parse_presigned`). The canonical query is every
parameter but ``X-Amz-Signature``; AWS IoT's signers append ``X-Amz-Security-Token`` after
signing ("IoT does not sign X-Amz-Security-Token", awsiotsdk), so it is left out too unless
the signature only verifies with it. The payload hash is that of the empty body. The URL is
valid from ``X-Amz-Date`` (15 minutes of clock skew allowed) for ``X-Amz-Expires`` seconds
when given (at most 7 days, SigV4's limit), else for the same 15 minutes
(:func:`verify_presigned`).

Use::

    check_path(raw_path)                  # before routing on raw_path; may raise (400)
    parsed = parse(WireRequest(method, raw_path, query_pairs, headers, body))  # may raise
    key = registry.key(parsed.access_key_id)                                  # sync or async
    ok = verify(parsed, key)                                                  # -> Verified
"""

from __future__ import annotations

import calendar
import functools
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Generic
from urllib.parse import quote, unquote

from ..headers import HeaderMap, header_map
from ..keys import AccessKey, K

__all__ = [
    "ALGORITHM",
    "MAX_SKEW_S",
    "SERVICES",
    "AccessKey",
    "SigV4Error",
    "SigV4Request",
    "Verified",
    "WireRequest",
    "authenticate",
    "canonical_query",
    "canonical_request",
    "canonical_uri",
    "check_path",
    "is_canonical_path",
    "is_presigned",
    "parse",
    "parse_presigned",
    "signature",
    "split_target",
    "string_to_sign",
    "verify",
    "verify_presigned",
]

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW_S = 15 * 60
SERVICES: frozenset[str] = frozenset({"iotdata", "iotdevicegateway"})
TERMINATOR = "aws4_request"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

_UNRESERVED = re.compile(r"[A-Za-z0-9\-_.~]*")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_AMZ_FORMAT = "%Y%m%dT%H%M%SZ"

# --------------------------------------------------------------------------- errors

MISMATCH_MESSAGE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)
INVALID_TOKEN_MESSAGE = "The security token included in the request is invalid."
MISSING_TOKEN_MESSAGE = "Missing Authentication Token"


class SigV4Error(Exception):
    """An authentication failure (or a non-canonical path, which is never verified), with what
    the iot-data error response needs.

    Render as ``status`` with headers ``x-amzn-ErrorType: error_type`` and a JSON body
    ``{"message": message, "traceId": ...}``.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        status: int = 403,
        error_type: str = "ForbiddenException",
        canonical_request: str | None = None,
        string_to_sign: str | None = None,
    ) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.status = status
        self.error_type = error_type
        self.canonical_request = canonical_request
        self.string_to_sign = string_to_sign


def _incomplete(message: str) -> SigV4Error:
    return SigV4Error("IncompleteSignatureException", message)


def _invalid(message: str) -> SigV4Error:
    return SigV4Error("InvalidSignatureException", message)


NON_CANONICAL_PATH_MESSAGE = (
    "The request path is not canonical: it has a '.' or '..' segment (also percent-encoded) "
    "or an empty segment ('//'). Signature Version 4 signs such a path with those segments "
    "removed, so it is refused rather than routed as sent. Send '/' inside a topic as %2F; "
    "a topic, client ID or thing name that is exactly '.' or '..' cannot be used over HTTP."
)


# --------------------------------------------------------------------------- request model


@dataclass(frozen=True, slots=True)
class WireRequest:
    """What arrived, framework-neutral.

    ``raw_path`` is the path exactly as on the request line (still percent-encoded); ``query``
    holds the decoded query pairs (:func:`split_target` makes both from a raw request target);
    ``headers`` is a mapping (a case-insensitive multidict is fine: all of its ``items()`` are
    read) or a list of pairs.
    """

    method: str
    raw_path: str
    query: Sequence[tuple[str, str]]
    headers: Mapping[str, str] | Iterable[tuple[str, str]]
    body: bytes = b""


def split_target(raw_target: str) -> tuple[str, list[tuple[str, str]]]:
    """Split a raw request target into the raw path and decoded query pairs.

    RFC 3986 decoding: ``+`` stays ``+`` (botocore always writes a space as ``%20``)."""
    path, _, query = raw_target.partition("?")
    pairs: list[tuple[str, str]] = []
    for part in query.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((unquote(name), unquote(value)))
    return path, pairs


@dataclass(frozen=True, slots=True)
class SigV4Request:
    """The parsed ``Authorization`` header and date of a request; nothing verified yet."""

    wire: WireRequest
    #: lower-case header name -> its values (a view of the server's headers, no copy)
    headers: HeaderMap
    access_key_id: str
    scope_date: str
    region: str
    service: str
    terminator: str
    signed_headers: tuple[str, ...]
    signature: str
    #: the request time in ISO-8601 basic format, from X-Amz-Date or Date
    amz_date: str


def parse(wire: WireRequest) -> SigV4Request:
    """Parse the Authorization header; raises :class:`SigV4Error` if it is absent or malformed."""
    headers = header_map(wire.headers)
    authorization = (headers.get("authorization") or [""])[0].strip()
    if not authorization:
        raise SigV4Error("MissingAuthenticationTokenException", MISSING_TOKEN_MESSAGE)
    algorithm, _, rest = authorization.partition(" ")
    if algorithm != ALGORITHM:
        raise _incomplete(
            f"Unsupported authorization type {algorithm!r}: only {ALGORITHM} is accepted."
        )
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields[name.strip()] = value.strip()
    problems = [
        f"Authorization header requires '{name}' parameter."
        for name in ("Credential", "Signature", "SignedHeaders")
        if not fields.get(name)
    ]
    date_header = (headers.get("x-amz-date") or headers.get("date") or [""])[0].strip()
    if not date_header:
        problems.append(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
        )
    if problems:
        raise _incomplete(" ".join([*problems, f"Authorization={authorization}"]))
    credential = fields["Credential"]
    scope = credential.split("/")
    if len(scope) != 5:
        raise _incomplete(
            "Credential must have exactly 5 slash-delimited elements, "
            f"e.g. keyid/date/region/service/term, got '{credential}'"
        )
    signed = tuple(name.strip().lower() for name in fields["SignedHeaders"].split(";"))
    return SigV4Request(
        wire=wire,
        headers=headers,
        access_key_id=scope[0],
        scope_date=scope[1],
        region=scope[2],
        service=scope[3],
        terminator=scope[4],
        signed_headers=signed,
        signature=fields["Signature"],
        amz_date=_amz_date(headers),
    )


def _amz_date(headers: HeaderMap) -> str:
    if "x-amz-date" in headers:
        value = headers["x-amz-date"][0].strip()
        if _AMZ_DATE.fullmatch(value) is None:
            raise _bad_date(value)
        return value
    value = headers["date"][0].strip()
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        raise _bad_date(value) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime(_AMZ_FORMAT)


def _bad_date(value: str) -> SigV4Error:
    return _incomplete(
        f"Date must be in ISO-8601 'basic format'. Got '{value}'. "
        "See http://en.wikipedia.org/wiki/ISO_8601"
    )


# --------------------------------------------------------------------------- the algorithm


# A segment that is "." or "..", written with or without percent-encoding (lower-cased).
_DOT_SEGMENTS = frozenset({".", "..", "%2e", "%2e%2e", ".%2e", "%2e."})


def is_canonical_path(raw_path: str) -> bool:
    """Whether a raw (still percent-encoded) path is its own normal form under botocore's
    ``normalize_url_path``, and has no percent-encoded dot segment either: it starts with
    ``/``, has no empty segment (a trailing ``/`` is kept by botocore, so it is allowed) and no
    ``.``/``..`` segment (see the module docstring)."""
    if not raw_path.startswith("/") or "//" in raw_path:
        return False
    if "." not in raw_path and "%" not in raw_path:  # the usual topic: nothing to look at
        return True
    return not any(segment.lower() in _DOT_SEGMENTS for segment in raw_path.split("/"))


def check_path(raw_path: str) -> None:
    """Raise 400 ``InvalidRequestException`` unless :func:`is_canonical_path`."""
    if not is_canonical_path(raw_path):
        raise SigV4Error(
            "InvalidRequestException",
            NON_CANONICAL_PATH_MESSAGE,
            status=400,
            error_type="InvalidRequestException",
        )


def canonical_uri(raw_path: str) -> str:
    """botocore's ``quote(normalize_url_path(path), safe="/~")`` of the path as sent, for a
    canonical path, where the normalisation changes nothing; any other path raises (see
    :func:`check_path`): the URI that is signed is always the one that is routed."""
    if len(raw_path) <= _CACHED_PATH:
        return _canonical_uri_cached(raw_path)
    return _canonical_uri(raw_path)


def _canonical_uri(raw_path: str) -> str:
    check_path(raw_path)
    return quote(raw_path, safe="/~")


# Devices publish to the same topics over and over: memoised (a pure function; bounded in
# entries and, through the length, in size; refusals are not cached).
_CACHED_PATH = 512
_canonical_uri_cached = functools.lru_cache(maxsize=4096)(_canonical_uri)


def _encode(value: str) -> str:
    # Most names and values are plain tokens: skip urllib's byte-by-byte loop for them.
    if _UNRESERVED.fullmatch(value):
        return value
    return quote(value, safe="-_.~")


def canonical_query(query: Iterable[tuple[str, str]], *, exclude: str | None = None) -> str:
    if not query:  # an empty list or tuple (Publish at QoS 0 has no query)
        return ""
    encoded = sorted((_encode(name), _encode(value)) for name, value in query if name != exclude)
    return "&".join(f"{name}={value}" for name, value in encoded)


def canonical_request(
    method: str,
    raw_path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, Sequence[str]],
    signed_headers: Sequence[str],
    payload_hash: str,
) -> str:
    """The SigV4 canonical request; ``headers`` maps lower-case names to their values."""
    parts: list[str] = []
    for name in signed_headers:
        values = headers.get(name, ())
        if len(values) == 1:  # the usual case, without the generator
            value = values[0]
            parts.append(f"{name}:{' '.join(value.split())}\n")
        else:
            parts.append(f"{name}:{','.join(' '.join(v.split()) for v in values)}\n")
    lines = "".join(parts)
    return "\n".join(
        (
            method.upper(),
            canonical_uri(raw_path),
            canonical_query(query),
            lines,
            ";".join(signed_headers),
            payload_hash,
        )
    )


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def signature(secret: str, scope_date: str, region: str, service: str, to_sign: str) -> str:
    mac = _signing_hmac(secret, scope_date, region, service).copy()
    mac.update(to_sign.encode())
    return mac.hexdigest()


@functools.lru_cache(maxsize=1024)
def _signing_key(secret: str, scope_date: str, region: str, service: str) -> bytes:
    """The derived key changes once a day per key, region and service; deriving it costs four
    HMACs, so it is memoised (a pure function of its arguments; bounded)."""
    key = f"AWS4{secret}".encode()
    for part in (scope_date, region, service, TERMINATOR):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


@functools.lru_cache(maxsize=1024)
def _signing_hmac(secret: str, scope_date: str, region: str, service: str) -> hmac.HMAC:
    """HMAC-SHA256 keyed with the derived key, before any data: a copy of it skips the key
    set-up that a new HMAC repeats every time (memoised like the key itself)."""
    return hmac.new(_signing_key(secret, scope_date, region, service), digestmod=hashlib.sha256)


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class Verified(Generic[K]):
    request: SigV4Request
    key: K
    #: seconds since the epoch, from the signed date
    timestamp: float

    @property
    def access_key_id(self) -> str:
        return self.request.access_key_id

    @property
    def region(self) -> str:
        return self.request.region

    @property
    def query(self) -> Sequence[tuple[str, str]]:
        return self.request.wire.query


# --------------------------------------------------------------------------- presigned URLs

SIGNATURE_PARAM = "X-Amz-Signature"
TOKEN_PARAM = "X-Amz-Security-Token"
MAX_EXPIRES_S = 7 * 24 * 3600
_EMPTY_HASH = hashlib.sha256(b"").hexdigest()


def is_presigned(query: Iterable[tuple[str, str]]) -> bool:
    """Whether a query carries a SigV4 signature."""
    return any(name in ("X-Amz-Algorithm", SIGNATURE_PARAM) for name, _value in query)


def parse_presigned(wire: WireRequest) -> SigV4Request:
    """Parse the signing parameters of a presigned URL (``wire.query``); raises
    :class:`SigV4Error` when one is missing or malformed."""
    params: dict[str, str] = {}
    for name, value in wire.query:
        if name.startswith("X-Amz-") and name in params:
            raise _incomplete(f"The query parameter {name} is given more than once.")
        params[name] = value
    algorithm = params.get("X-Amz-Algorithm", "")
    if algorithm != ALGORITHM:
        raise _incomplete(
            f"Unsupported X-Amz-Algorithm {algorithm!r}: only {ALGORITHM} is accepted."
        )
    missing = [
        name
        for name in ("X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders", SIGNATURE_PARAM)
        if not params.get(name)
    ]
    if missing:
        raise _incomplete(f"The presigned URL lacks {', '.join(missing)}.")
    credential = params["X-Amz-Credential"]
    scope = credential.split("/")
    if len(scope) != 5:
        raise _incomplete(
            "Credential must have exactly 5 slash-delimited elements, "
            f"e.g. keyid/date/region/service/term, got '{credential}'"
        )
    amz_date = params["X-Amz-Date"]
    if _AMZ_DATE.fullmatch(amz_date) is None:
        raise _bad_date(amz_date)
    return SigV4Request(
        wire=wire,
        headers=header_map(wire.headers),
        access_key_id=scope[0],
        scope_date=scope[1],
        region=scope[2],
        service=scope[3],
        terminator=scope[4],
        signed_headers=tuple(n.strip().lower() for n in params["X-Amz-SignedHeaders"].split(";")),
        signature=params[SIGNATURE_PARAM],
        amz_date=amz_date,
    )


def verify_presigned(
    parsed: SigV4Request,
    key: K | None,
    *,
    now: float | None = None,
    max_skew_s: float = MAX_SKEW_S,
    services: Collection[str] = SERVICES,
) -> Verified[K]:
    """Check a parsed presigned URL against ``key`` (None: the access key id is unknown), in
    :func:`verify`'s order."""
    _check_scope(parsed, services)
    if key is None or not key.enabled:
        raise SigV4Error("UnrecognizedClientException", INVALID_TOKEN_MESSAGE)
    current = time.time() if now is None else now
    expires = _expires(parsed.wire.query)
    timestamp = _date_s(parsed)
    # Valid from its date, less the clock skew, for X-Amz-Expires seconds (without it, for
    # the skew, as a signed header's date is), plus the skew.
    if timestamp > current + max_skew_s:
        raise SigV4Error(
            "InvalidSignatureException",
            f"Signature not yet current: {parsed.amz_date} is still later than "
            f"{_format(current + max_skew_s)} ({_format(current)} + {max_skew_s / 60:g} min.)",
        )
    lifetime = max_skew_s if expires is None else expires + max_skew_s
    if timestamp + lifetime < current:
        raise SigV4Error(
            "InvalidSignatureException",
            f"Signature expired: {parsed.amz_date} is now earlier than "
            f"{_format(current - lifetime)} ({_format(current)} - {lifetime:g} s)",
        )
    query = [(n, v) for n, v in parsed.wire.query if n != SIGNATURE_PARAM]
    unsigned_token = [(n, v) for n, v in query if n != TOKEN_PARAM]
    attempts = [unsigned_token, query] if len(unsigned_token) != len(query) else [query]
    scope = f"{parsed.scope_date}/{parsed.region}/{parsed.service}/{TERMINATOR}"
    for attempt in attempts:
        canonical = canonical_request(
            parsed.wire.method,
            parsed.wire.raw_path,
            attempt,
            parsed.headers,
            parsed.signed_headers,
            _EMPTY_HASH,
        )
        to_sign = string_to_sign(parsed.amz_date, scope, canonical)
        expected = signature(key.secret, parsed.scope_date, parsed.region, parsed.service, to_sign)
        if hmac.compare_digest(expected.encode(), parsed.signature.encode()):
            return Verified(request=parsed, key=key, timestamp=timestamp)
    raise SigV4Error(
        "InvalidSignatureException",
        f"{MISMATCH_MESSAGE}\n\nThe Canonical String for this request should have been\n"
        f"'{canonical}'\n\nThe String-to-Sign should have been\n'{to_sign}'\n",
        canonical_request=canonical,
        string_to_sign=to_sign,
    )


def _date_s(parsed: SigV4Request) -> float:
    try:
        return _parse_amz_date(parsed.amz_date)
    except ValueError:
        raise _bad_date(parsed.amz_date) from None


def _expires(query: Iterable[tuple[str, str]]) -> int | None:
    for name, value in query:
        if name == "X-Amz-Expires":
            if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_EXPIRES_S:
                raise _incomplete(
                    f"X-Amz-Expires must be a number of seconds from 1 to {MAX_EXPIRES_S}."
                )
            return int(value)
    return None


def _check_scope(parsed: SigV4Request, services: Collection[str]) -> None:
    """The path (400 unless canonical), the credential scope and the signed headers."""
    check_path(parsed.wire.raw_path)
    if parsed.terminator != TERMINATOR:
        raise _invalid(
            f"Credential should be scoped with a valid terminator: '{TERMINATOR}', "
            f"not '{parsed.terminator}'."
        )
    if parsed.service not in services:
        expected = "iotdata" if "iotdata" in services else min(services)
        raise _invalid(f"Credential should be scoped to correct service: '{expected}'. ")
    if not parsed.region:
        raise _invalid(f"Credential should be scoped to a valid region, not '{parsed.region}'. ")
    if parsed.scope_date != parsed.amz_date[:8]:
        raise _invalid(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{parsed.scope_date}' != '{parsed.amz_date[:8]}', "
            f"from '{parsed.amz_date}'."
        )
    if "host" not in parsed.signed_headers:
        raise _incomplete(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
        )


def verify(
    parsed: SigV4Request,
    key: K | None,
    *,
    now: float | None = None,
    max_skew_s: float = MAX_SKEW_S,
    services: Collection[str] = SERVICES,
    allow_unsigned_payload: bool = False,
) -> Verified[K]:
    """Check a parsed request against ``key`` (None when the access key id is unknown).

    Order: the path (400 unless canonical), credential scope, signed headers, the key, the
    clock, the body hash, the signature.
    """
    current = time.time() if now is None else now
    _check_scope(parsed, services)
    if key is None or not key.enabled:
        raise SigV4Error("UnrecognizedClientException", INVALID_TOKEN_MESSAGE)
    timestamp = _check_clock(parsed.amz_date, current, max_skew_s)
    payload_hash = _payload_hash(parsed, allow_unsigned_payload)
    canonical = canonical_request(
        parsed.wire.method,
        parsed.wire.raw_path,
        parsed.wire.query,
        parsed.headers,
        parsed.signed_headers,
        payload_hash,
    )
    scope = f"{parsed.scope_date}/{parsed.region}/{parsed.service}/{TERMINATOR}"
    to_sign = string_to_sign(parsed.amz_date, scope, canonical)
    expected = signature(key.secret, parsed.scope_date, parsed.region, parsed.service, to_sign)
    if not hmac.compare_digest(expected.encode(), parsed.signature.encode()):
        raise SigV4Error(
            "InvalidSignatureException",
            f"{MISMATCH_MESSAGE}\n\nThe Canonical String for this request should have been\n"
            f"'{canonical}'\n\nThe String-to-Sign should have been\n'{to_sign}'\n",
            canonical_request=canonical,
            string_to_sign=to_sign,
        )
    return Verified(request=parsed, key=key, timestamp=timestamp)


def authenticate(
    wire: WireRequest,
    lookup: Callable[[str], K | None],
    *,
    now: float | None = None,
    max_skew_s: float = MAX_SKEW_S,
    services: Collection[str] = SERVICES,
) -> Verified[K]:
    """parse() + lookup + verify() for a synchronous key lookup."""
    parsed = parse(wire)
    return verify(
        parsed, lookup(parsed.access_key_id), now=now, max_skew_s=max_skew_s, services=services
    )


@functools.lru_cache(maxsize=256)
def _parse_amz_date(amz_date: str) -> float:
    """``YYYYMMDD'T'HHMMSS'Z'`` to a POSIX timestamp. Parsed by hand: ``strptime`` was a
    tenth of the cost of a whole Publish; and memoised, as requests signed in the same second
    carry the same date (a pure function; a ValueError is not cached)."""
    d = amz_date
    if len(d) != 16 or d[8] != "T" or d[15] != "Z" or not (d[:8] + d[9:15]).isdigit():
        raise ValueError(d)
    year, month, day = int(d[0:4]), int(d[4:6]), int(d[6:8])
    hour, minute, second = int(d[9:11]), int(d[11:13]), int(d[13:15])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise ValueError(d)
    if day > calendar.monthrange(year, month)[1]:
        raise ValueError(d)
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))


def _check_clock(amz_date: str, now: float, max_skew_s: float) -> float:
    try:
        timestamp = _parse_amz_date(amz_date)
    except ValueError:
        raise _bad_date(amz_date) from None
    if timestamp < now - max_skew_s:
        raise SigV4Error(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is now earlier than "
            f"{_format(now - max_skew_s)} ({_format(now)} - {max_skew_s / 60:g} min.)",
        )
    if timestamp > now + max_skew_s:
        raise SigV4Error(
            "InvalidSignatureException",
            f"Signature not yet current: {amz_date} is still later than "
            f"{_format(now + max_skew_s)} ({_format(now)} + {max_skew_s / 60:g} min.)",
        )
    return timestamp


def _format(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime(_AMZ_FORMAT)


def _payload_hash(parsed: SigV4Request, allow_unsigned: bool) -> str:
    actual = hashlib.sha256(parsed.wire.body).hexdigest()
    declared_values = parsed.headers.get("x-amz-content-sha256")
    if not declared_values:
        return actual
    declared = declared_values[0].strip()
    if declared == UNSIGNED_PAYLOAD and allow_unsigned:
        return declared
    if _HEX_SHA256.fullmatch(declared) is None or declared.lower() != actual:
        raise SigV4Error(
            "XAmzContentSHA256Mismatch",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        )
    return declared
