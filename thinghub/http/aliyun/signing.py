"""Alibaba Cloud POP gateway signatures (RPC V1 and ACS3 V3), checked without a web framework.

Theory of operation
-------------------
An RPC call to ``/`` is signed in one of two ways (reference ``alibaba-iot-api.md`` §1.2-1.4):

* **V1** (``aliyun-python-sdk-core``; ``alibabacloud-iot20180120`` with
  ``signature_algorithm="v2"``).  Every parameter except ``Signature``, from the query *and* from
  a form-encoded body, is percent-encoded per RFC 3986 (``quote(s, safe="-_.~")``), sorted by
  name and joined as ``k=v&...``.  ``StringToSign = METHOD & "%2F" & pe(canonical)`` and
  ``Signature = Base64(HMAC-SHA1(secret + "&", StringToSign))``.  ``SignatureMethod=HMAC-SHA1``,
  ``SignatureVersion=1.0``, ``Timestamp`` and ``SignatureNonce`` are parameters too.
* **V3** (``ACS3-HMAC-SHA256``, the Tea SDK's default).  ``Authorization: ACS3-HMAC-SHA256
  Credential=<AK>,SignedHeaders=a;b,Signature=<hex>``; the canonical request is
  ``METHOD\\nURI\\nquery\\nheaders\\nSignedHeaders\\nx-acs-content-sha256`` and the signature is
  ``hex(HMAC-SHA256(secret, "ACS3-HMAC-SHA256\\n" + hex(SHA256(canonical request))))``.  The
  signed headers are the ones the client lists; ``host`` and every ``x-acs-*`` header present
  must be among them (the V3 spec: "all common request headers except Authorization, if
  present, must be signed"), otherwise the date and nonce would not be covered.

Both: the timestamp may be at most 15 minutes from the server's clock either way, and a
``(AccessKeyId, nonce)`` pair is accepted once while its timestamp is valid (:class:`NonceCache`,
bounded).  The nonce is recorded only after the signature checks out, so a forged request cannot
burn somebody else's nonce.  The cache is checked here, in memory; the hub also writes each used
nonce to ``nonces.db`` before acting on the request (``nonce_store.py``) and loads the unexpired
ones back at start-up, so a restart does not reopen the replay window.

Use::

    rpc = parse_request(WireRequest(method, raw_path, query_pairs, headers, body))
    key = registry.key(rpc.access_key_id) if rpc.access_key_id else None   # sync or async
    ok = verify(rpc, key, nonces)            # -> Verified, or raises GatewayError

``parse_request`` never raises, so the caller always has ``rpc.response_format`` for rendering
an error; ``authenticate()`` does both steps with a synchronous lookup.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import hmac
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from operator import itemgetter
from typing import Generic
from urllib.parse import quote, unquote

from ..headers import HeaderMap, header_map
from ..keys import AccessKey, K

__all__ = [
    "MAX_SKEW_S",
    "NONCE_CACHE_ENTRIES",
    "V3_ALGORITHM",
    "AccessKey",
    "GatewayError",
    "NonceCache",
    "RpcRequest",
    "SignatureVersion",
    "Verified",
    "WireRequest",
    "authenticate",
    "parse_request",
    "parse_target",
    "percent_encode",
    "split_target",
    "v1_signature",
    "v1_string_to_sign",
    "v3_canonical_request",
    "v3_signature",
    "v3_string_to_sign",
    "verify",
]

log = logging.getLogger(__name__)

MAX_SKEW_S = 15 * 60
#: NonceCache's default bound (and nonce_store.py's on disk)
NONCE_CACHE_ENTRIES = 200_000
V3_ALGORITHM = "ACS3-HMAC-SHA256"
V1_METHOD = "HMAC-SHA1"
V1_VERSION = "1.0"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

# yyyy-MM-ddTHH:mm:ssZ; fractional seconds tolerated (some older SDKs send them).
_UNRESERVED = re.compile(r"[A-Za-z0-9\-_.~]*")
_TIMESTAMP = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d{1,9})?Z")


# --------------------------------------------------------------------------- errors


class GatewayError(Exception):
    """A POP gateway error: rendered as a 4xx with ``{RequestId, HostId, Code, Message}``.

    Also usable by the API layer for the other gateway answers (``InvalidApi.NotFound``,
    ``Throttling.User``, ``Missing{Param}``) so one handler renders them all.
    """

    def __init__(self, code: str, status: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status
        self.message = message

    @classmethod
    def missing(cls, name: str) -> GatewayError:
        return cls(f"Missing{name}", 400, f"{name} is mandatory for this action.")

    @classmethod
    def signature_mismatch(cls, string_to_sign: str) -> GatewayError:
        # aliyun-python-sdk-core compares message.split(':')[1] with its own string to sign and
        # reports InvalidAccessKeySecret when they are equal, so nothing may follow it.
        return cls(
            "SignatureDoesNotMatch",
            400,
            "Specified signature is not matched with our calculation. "
            f"server string to sign is:{string_to_sign}",
        )

    @classmethod
    def incomplete(cls, detail: str) -> GatewayError:
        return cls(
            "IncompleteSignature",
            400,
            f"The request signature does not conform to Aliyun standards. {detail}",
        )


def _key_not_found() -> GatewayError:
    return GatewayError("InvalidAccessKeyId.NotFound", 404, "Specified access key is not found.")


def _key_inactive() -> GatewayError:
    return GatewayError("InvalidAccessKeyId.Inactive", 400, "Specified access key is disabled.")


def _timestamp_format(name: str) -> GatewayError:
    return GatewayError(
        "InvalidTimeStamp.Format",
        400,
        f"Specified time stamp or date value is not well formatted: {name}.",
    )


def _timestamp_expired() -> GatewayError:
    return GatewayError(
        "InvalidTimeStamp.Expired", 400, "Specified time stamp or date value is expired."
    )


def _nonce_used() -> GatewayError:
    return GatewayError("SignatureNonceUsed", 400, "Specified signature nonce was used already.")


def _bad_method(value: str) -> GatewayError:
    return GatewayError(
        "InvalidSignatureMethod", 400, f"Specified signature method {value!r} is not supported."
    )


def _bad_version(value: str) -> GatewayError:
    return GatewayError(
        "InvalidSignatureVersion", 400, f"Specified signature version {value!r} is not supported."
    )


# --------------------------------------------------------------------------- request model


@dataclass(frozen=True, slots=True)
class WireRequest:
    """What arrived, framework-neutral.

    ``raw_path`` is the path exactly as on the request line (still percent-encoded); ``query``
    holds the decoded query pairs in wire order (:func:`split_target` makes both from a raw
    request target); ``headers`` is a mapping (a case-insensitive multidict is fine: all of its
    ``items()`` are read) or a list of pairs.
    """

    method: str
    raw_path: str
    query: Sequence[tuple[str, str]]
    headers: Mapping[str, str] | Iterable[tuple[str, str]]
    body: bytes = b""


def split_target(raw_target: str) -> tuple[str, list[tuple[str, str]]]:
    """Split a raw request target (``/?a=1&b=%2F``) into the raw path and decoded query pairs.

    Form decoding (``+`` is a space), as the SDKs build the query with ``urlencode``."""
    path, _, query = raw_target.partition("?")
    return path, parse_form(query)


def parse_form(text: str) -> list[tuple[str, str]]:
    """``urllib.parse.parse_qsl(text, keep_blank_values=True)``, pair for pair, without its
    per-call and per-value overhead (it was a fifth of a whole ``Pub``): empty pieces are
    skipped, a piece without ``=`` has an empty value, ``+`` is a space, and ``%XX`` is
    decoded as UTF-8 with invalid sequences replaced."""
    pairs: list[tuple[str, str]] = []
    append = pairs.append
    for piece in text.split("&"):
        if not piece:
            continue
        if "%" in piece or "+" in piece:
            # Pieces that repeat verbatim (ProductKey=..., the topic, the Timestamp of this
            # second) are decoded once; the per-request ones would only evict them.
            if len(piece) <= _CACHED_LENGTH and not piece.startswith(_UNIQUE_PIECES):
                append(_cached_piece(piece))
            else:
                append(_decode_piece(piece))
        else:
            name, _, value = piece.partition("=")
            append((name, value))
    return pairs


def _decode_piece(piece: str) -> tuple[str, str]:
    name, _, value = piece.partition("=")
    return _form_decode(name), _form_decode(value)


def _form_decode(value: str) -> str:
    if "+" in value:
        value = value.replace("+", " ")
    if "%" not in value:
        return value
    return _unquote(value)


# "%XX" of each ASCII character, XX in either case -> the character.
_ASCII_ESCAPES = {
    f"{high}{low}": chr(int(high + low, 16))
    for high in "01234567"
    for low in "0123456789abcdefABCDEF"
}


def _unquote(value: str) -> str:
    """``urllib.parse.unquote(value)``, result for result. When every escape is an ASCII
    character (all that the SDKs escape but non-ASCII text) it is a split and a table
    lookup per escape, without unquote's regex split and bytes round trip; anything else
    (UTF-8 sequences, a malformed escape) goes to unquote itself."""
    pieces = value.split("%")
    out = [pieces[0]]
    escapes = _ASCII_ESCAPES
    for index in range(1, len(pieces)):
        piece = pieces[index]
        char = escapes.get(piece[:2])
        if char is None:
            return unquote(value)
        out.append(char)
        out.append(piece[2:])
    return "".join(out)


# Names, ProductKeys, topics and the Timestamp repeat from request to request: their
# decoded and encoded forms are memoised (pure functions; bounded in entries and, through
# _CACHED_LENGTH, in size). Signatures and payloads are unique: never cached.
_CACHED_LENGTH = 256
_UNIQUE_PIECES = ("Signature=", "SignatureNonce=", "MessageContent=")
_cached_piece = functools.lru_cache(maxsize=4096)(_decode_piece)

#: One parameter of a query or form body: its decoded name and value, and
#: ``pe(name)=pe(value)``, the form the V1 signature covers ("" for ``Signature``, not signed).
Piece = tuple[str, str, str]


def _signed_piece(piece: str) -> Piece:
    if _CANONICAL_PIECE.fullmatch(piece):
        # Already pe(name)=pe(value) (the SDKs encode as the signature does): decoding maps
        # each escape to a character that pe() escapes back to the same upper-case escape,
        # and leaves the unreserved characters as they are, so the piece is its own signed
        # form.
        name, _, value = piece.partition("=")
        if "%" in piece:
            name = _unquote(name) if "%" in name else name
            value = _unquote(value) if "%" in value else value
    else:
        if "%" in piece or "+" in piece:
            name, value = _decode_piece(piece)
        else:
            name, _, value = piece.partition("=")
        if name != "Signature":
            return name, value, f"{_percent_encode(name)}={_percent_encode(value)}"
    if name == "Signature":
        return name, value, ""
    return name, value, piece


# name=value, each made of unreserved characters and upper-case escapes of the other ASCII
# characters (never of an unreserved one, which pe() would not escape; never "+", a space).
# Possessive runs of unreserved characters: a fifth of the time of one alternation a character.
_CANONICAL_ESCAPE = r"%(?:[01][0-9A-F]|2[0-9A-CF]|3[A-F]|40|5[B-E]|60|7[B-DF])"
_CANONICAL_TEXT = rf"(?:[A-Za-z0-9_.~\-]++|{_CANONICAL_ESCAPE})*+"
_CANONICAL_PIECE = re.compile(rf"{_CANONICAL_TEXT}={_CANONICAL_TEXT}")


_cached_signed_piece = functools.lru_cache(maxsize=4096)(_signed_piece)


def _add_pieces(text: str, out: list[Piece]) -> None:
    """Append the parameters of ``text`` (``parse_form``'s rules) to ``out``, each decoded and
    encoded once: a parameter that repeats verbatim from request to request (all but the
    nonce, the signature and the payload) is a cache hit, and the string to sign is then a
    sort and a join."""
    append = out.append
    for piece in text.split("&"):
        if not piece:
            continue
        if len(piece) <= _CACHED_LENGTH and not piece.startswith(_UNIQUE_PIECES):
            append(_cached_signed_piece(piece))
        else:
            append(_signed_piece(piece))


class SignatureVersion(Enum):
    V1 = "HMAC-SHA1"
    V3 = V3_ALGORITHM


@dataclass(frozen=True, slots=True)
class _V3Authorization:
    algorithm: str
    credential: str | None
    signed_headers: str | None
    signature: str | None


@dataclass(frozen=True, slots=True)
class RpcRequest:
    """A parsed RPC request: its parameters and the credentials it claims, not yet checked."""

    wire: WireRequest
    version: SignatureVersion
    #: query + form body in wire order, without ``Signature`` (V1 signs exactly these).
    pairs: tuple[tuple[str, str], ...]
    #: the same as a dict (the last occurrence of a repeated name wins).  For V1 it includes the
    #: common parameters (``Action``, ``Format``, ``Timestamp``...); for V3 it holds business
    #: parameters only, as the common ones travel in ``x-acs-*`` headers.
    params: dict[str, str]
    #: lower-case header name -> its values (a view of the server's headers, no copy)
    headers: HeaderMap
    access_key_id: str | None
    signature: str | None
    action: str | None
    api_version: str | None
    #: ``"JSON"`` or ``"XML"``: V1 ``Format`` (default XML, any case), V3 the ``accept`` header.
    response_format: str
    v3_authorization: _V3Authorization | None
    #: ``pairs`` with their signed forms (:data:`Piece`), in the same order, when the parser
    #: had them at hand (``parse_target``); None: computed from ``pairs`` when verifying.
    pieces: tuple[Piece, ...] | None = None

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[0] if values else None


def _first(headers: HeaderMap, name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None


def _is_form(headers: HeaderMap) -> bool:
    content_type = _first(headers, "content-type") or ""
    if content_type == FORM_CONTENT_TYPE:  # as the SDKs send it
        return True
    return content_type.split(";", 1)[0].strip().lower() == FORM_CONTENT_TYPE


def _parse_v3_authorization(value: str) -> _V3Authorization:
    algorithm, _, rest = value.strip().partition(" ")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, val = part.strip().partition("=")
        if sep:
            fields[name.strip()] = val.strip()
    return _V3Authorization(
        algorithm=algorithm,
        credential=fields.get("Credential"),
        signed_headers=fields.get("SignedHeaders"),
        signature=fields.get("Signature"),
    )


def parse_request(wire: WireRequest) -> RpcRequest:
    """Extract parameters and claimed credentials.  Never raises: checks belong to verify()."""
    return _parse(wire, None)


def parse_target(
    method: str,
    raw_target: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes = b"",
) -> RpcRequest:
    """``parse_request(WireRequest(method, *split_target(raw_target), headers, body))``, with
    each parameter decoded and encoded once for the V1 signature (see :data:`Piece`)."""
    path, _, query = raw_target.partition("?")
    pieces: list[Piece] = []
    _add_pieces(query, pieces)
    pairs = [(name, value) for name, value, _ in pieces]
    return _parse(WireRequest(method, path, pairs, headers, body), pieces)


def _parse(wire: WireRequest, query_pieces: list[Piece] | None) -> RpcRequest:
    headers = header_map(wire.headers)
    form = bool(wire.body) and _is_form(headers)
    signed: tuple[Piece, ...] | None = None
    if query_pieces is None:
        pairs = list(wire.query)
        if form:
            pairs.extend(parse_form(wire.body.decode("utf-8", errors="replace")))
    else:
        if form:
            _add_pieces(wire.body.decode("utf-8", errors="replace"), query_pieces)
        signed = tuple(query_pieces)
        pairs = [(name, value) for name, value, _ in signed]
    params = dict(pairs)
    # The last Signature wins, as the other names' last values do; none is signed.
    signature = params.pop("Signature", None)
    if signature is None:
        kept = tuple(pairs)
    else:
        kept = tuple([pair for pair in pairs if pair[0] != "Signature"])
        if signed is not None:
            signed = tuple([piece for piece in signed if piece[0] != "Signature"])
    authorization = _first(headers, "authorization") or ""
    v3 = _parse_v3_authorization(authorization) if authorization.startswith("ACS3-") else None
    if v3 is not None:
        accept = (_first(headers, "accept") or "").lower()
        return RpcRequest(
            wire=wire,
            version=SignatureVersion.V3,
            pairs=kept,
            params=params,
            headers=headers,
            access_key_id=v3.credential or None,
            signature=v3.signature,
            action=_first(headers, "x-acs-action"),
            api_version=_first(headers, "x-acs-version"),
            response_format="XML" if "xml" in accept and "json" not in accept else "JSON",
            v3_authorization=v3,
        )
    fmt = params.get("Format", "XML").upper()
    return RpcRequest(
        wire=wire,
        version=SignatureVersion.V1,
        pairs=kept,
        params=params,
        headers=headers,
        access_key_id=params.get("AccessKeyId") or None,
        signature=signature,
        action=params.get("Action"),
        api_version=params.get("Version"),
        response_format=fmt if fmt in ("JSON", "XML") else "XML",
        v3_authorization=None,
        pieces=signed,
    )


# --------------------------------------------------------------------------- the algorithms


def percent_encode(value: str) -> str:
    """RFC 3986 percent-encoding of UTF-8, as both signature versions require."""
    if len(value) > _CACHED_LENGTH:
        return _percent_encode(value)
    return _cached_percent_encode(value)


def _percent_encode(value: str) -> str:
    """``quote(value, safe="-_.~")``, result for result, by the cheapest way that gives it:
    urllib's quote goes byte by byte in Python (about 60 ns a byte), which made a large
    MessageContent the most expensive part of checking a Pub."""
    # Most names and values are plain tokens.
    if _UNRESERVED.fullmatch(value):
        return value
    # Base64 (every MessageContent): only "+", "/" and "=" need escaping, and str.replace
    # finds them at memory speed.
    if _BASE64.fullmatch(value):
        return value.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    # Other ASCII text (topics, JSON): one table lookup per character, in C.
    if value.isascii():
        return value.translate(_ASCII_QUOTED)
    return quote(value, safe="-_.~")


_BASE64 = re.compile(r"[A-Za-z0-9+/]*=*")
# Every ASCII character that is not unreserved -> its %XX (RFC 3986, upper-case hex).
_ASCII_QUOTED = {
    code: f"%{code:02X}" for code in range(128) if not _UNRESERVED.fullmatch(chr(code))
}
_cached_percent_encode = functools.lru_cache(maxsize=4096)(_percent_encode)


def _encode_pair(pair: tuple[str, str]) -> str:
    """``pe(name)=pe(value)``, not memoised (long or unique pairs)."""
    return f"{_percent_encode(pair[0])}={_percent_encode(pair[1])}"


# Most pairs (Action=Pub, ProductKey=..., the Timestamp of this second) repeat verbatim.
_cached_pair = functools.lru_cache(maxsize=4096)(_encode_pair)


def v1_string_to_sign(method: str, pairs: Iterable[tuple[str, str]]) -> str:
    """``METHOD&%2F&pe(sorted k=v&...)``; ``pairs`` must not contain ``Signature``."""
    limit = _CACHED_LENGTH
    canonical = "&".join(
        [
            _cached_pair(pair) if len(pair[0]) + len(pair[1]) <= limit else _encode_pair(pair)
            for pair in sorted(pairs)
        ]
    )
    return _v1_string_to_sign(method, canonical)


def _v1_pieces_to_sign(method: str, pieces: Sequence[Piece], unique_names: bool) -> str:
    """:func:`v1_string_to_sign` of the pairs of ``pieces``. Sorting the pieces sorts by
    (name, value), as sorting the pairs does (equal pairs have equal signed forms); when no
    name repeats, by name alone, which is the same order and a cheaper sort."""
    ordered = sorted(pieces, key=_piece_name) if unique_names else sorted(pieces)
    return _v1_string_to_sign(method, "&".join([piece[2] for piece in ordered]))


_piece_name = itemgetter(0)


def _v1_string_to_sign(method: str, canonical: str) -> str:
    # canonical holds only unreserved characters, %XX, "=" and "&", so encoding it again
    # is these three replacements (same result as percent_encode, several times faster).
    encoded = canonical.replace("%", "%25").replace("=", "%3D").replace("&", "%26")
    return f"{method.upper()}&%2F&{encoded}"


def v1_signature(secret: str, string_to_sign: str) -> str:
    mac = _v1_hmac(secret).copy()
    mac.update(string_to_sign.encode())
    return binascii.b2a_base64(mac.digest(), newline=False).decode("ascii")


@functools.lru_cache(maxsize=1024)
def _v1_hmac(secret: str) -> hmac.HMAC:
    """HMAC-SHA1 keyed with ``secret + "&"``, before any data. A copy of it skips the key
    set-up that a new HMAC repeats (a third of the HMAC of a Pub's string to sign). A pure
    function of the secret; bounded."""
    return hmac.new((secret + "&").encode(), digestmod=hashlib.sha1)


def v3_canonical_request(
    method: str,
    raw_path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, Sequence[str]],
    signed_headers: Sequence[str],
    payload_hash: str,
) -> str:
    """The ACS3 canonical request.  ``headers`` maps lower-case names to their values."""
    canonical_query = "&".join(
        f"{k}={v}" for k, v in sorted((percent_encode(k), percent_encode(v)) for k, v in query)
    )
    canonical_headers = "".join(
        f"{name}:{','.join(sorted(v.strip() for v in headers.get(name, ())))}\n"
        for name in signed_headers
    )
    return "\n".join(
        (
            method.upper(),
            raw_path or "/",
            canonical_query,
            canonical_headers,
            ";".join(signed_headers),
            payload_hash,
        )
    )


def v3_string_to_sign(canonical_request: str) -> str:
    return f"{V3_ALGORITHM}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"


def v3_signature(secret: str, string_to_sign: str) -> str:
    return hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


def _parse_timestamp(value: str, name: str) -> float:
    # A valid timestamp has at most 30 characters: longer values are refused uncached.
    seconds = _timestamp_seconds(value) if len(value) <= 32 else None
    if seconds is None:
        raise _timestamp_format(name)
    return seconds


@functools.lru_cache(maxsize=256)
def _timestamp_seconds(value: str) -> float | None:
    """Memoised: the requests of one second carry the same Timestamp (a pure function)."""
    match = _TIMESTAMP.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups())
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None
    return moment.timestamp()


def _same(expected: str, provided: str) -> bool:
    return hmac.compare_digest(expected.encode(), provided.encode())


# --------------------------------------------------------------------------- replay protection


class NonceCache:
    """Remembers ``(AccessKeyId, nonce)`` pairs until their request timestamp goes stale.

    Bounded: past ``max_entries`` the oldest entries are dropped even if still valid (counted in
    ``evicted``, logged once), which weakens replay protection for the oldest requests under a
    flood rather than refusing service.  Entries live at most ``2 * MAX_SKEW_S`` (a timestamp
    15 minutes in the future stays valid for 30), so size it as peak rate x that.
    """

    def __init__(self, max_entries: int = NONCE_CACHE_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.evicted = 0
        self._entries: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def use(self, access_key_id: str, nonce: str, expires_at: float, now: float) -> bool:
        """Record the nonce; False if it was already recorded and has not expired."""
        key = f"{access_key_id}\x00{nonce}"
        entries = self._entries
        seen = entries.get(key)
        if seen is not None:
            if seen > now:
                return False
            del entries[key]
        # The usual case, room left and the oldest entry still valid: nothing to drop.
        if entries and len(entries) < self.max_entries and entries[next(iter(entries))] > now:
            entries[key] = expires_at
            return True
        while entries:
            oldest_key, oldest_expiry = next(iter(entries.items()))
            if oldest_expiry > now and len(entries) < self.max_entries:
                break
            if oldest_expiry > now:
                if self.evicted == 0:
                    log.warning(
                        "nonce cache full (%d entries): evicting unexpired nonces", len(entries)
                    )
                self.evicted += 1
            del entries[oldest_key]
        entries[key] = expires_at
        return True

    def forget(self, access_key_id: str, nonce: str) -> None:
        """Make the nonce usable again: its request was refused before doing anything because
        the nonce could not be stored (``api.py``), so sending it again is no replay."""
        self._entries.pop(f"{access_key_id}\x00{nonce}", None)


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class Verified(Generic[K]):
    """An authenticated request: the key it was signed with and what the API layer needs."""

    request: RpcRequest
    key: K
    access_key_id: str
    timestamp: float
    nonce: str
    #: until when the nonce stays used (the timestamp plus the allowed skew)
    expires_at: float

    @property
    def params(self) -> dict[str, str]:
        return self.request.params

    @property
    def action(self) -> str | None:
        return self.request.action


def verify(
    rpc: RpcRequest,
    key: K | None,
    nonces: NonceCache,
    *,
    now: float | None = None,
    max_skew_s: float = MAX_SKEW_S,
) -> Verified[K]:
    """Check ``rpc`` against ``key`` (None when the AccessKeyId is unknown).

    Order: required parameters and formats, the key, the clock, the signature, the nonce.
    """
    current = time.time() if now is None else now
    if rpc.version is SignatureVersion.V3:
        access_key_id, timestamp, nonce = _verify_v3(rpc, key, current, max_skew_s)
    else:
        access_key_id, timestamp, nonce = _verify_v1(rpc, key, current, max_skew_s)
    assert key is not None  # both checkers refuse a missing key
    expires_at = timestamp + max_skew_s
    if not nonces.use(access_key_id, nonce, expires_at, current):
        raise _nonce_used()
    return Verified(
        request=rpc,
        key=key,
        access_key_id=access_key_id,
        timestamp=timestamp,
        nonce=nonce,
        expires_at=expires_at,
    )


def authenticate(
    wire: WireRequest,
    lookup: Callable[[str], K | None],
    nonces: NonceCache,
    *,
    now: float | None = None,
    max_skew_s: float = MAX_SKEW_S,
) -> Verified[K]:
    """parse_request() + lookup + verify() for a synchronous key lookup."""
    rpc = parse_request(wire)
    key = lookup(rpc.access_key_id) if rpc.access_key_id else None
    return verify(rpc, key, nonces, now=now, max_skew_s=max_skew_s)


def _check_key(key: K | None) -> str:
    if key is None:
        raise _key_not_found()
    if not key.enabled:
        raise _key_inactive()
    return key.secret


def _check_clock(timestamp: float, now: float, max_skew_s: float) -> None:
    if abs(now - timestamp) > max_skew_s:
        raise _timestamp_expired()


def _verify_v1(
    rpc: RpcRequest, key: K | None, now: float, max_skew_s: float
) -> tuple[str, float, str]:
    params = rpc.params
    if rpc.signature is None:
        raise GatewayError.missing("Signature")
    for name in ("AccessKeyId", "Timestamp", "SignatureMethod", "SignatureNonce"):
        if not params.get(name):
            raise GatewayError.missing(name)
    if params["SignatureMethod"] != V1_METHOD:
        raise _bad_method(params["SignatureMethod"])
    if params.get("SignatureVersion", V1_VERSION) != V1_VERSION:
        raise _bad_version(params["SignatureVersion"])
    timestamp = _parse_timestamp(params["Timestamp"], "Timestamp")
    secret = _check_key(key)
    _check_clock(timestamp, now, max_skew_s)
    if rpc.pieces is not None:
        unique = len(rpc.pieces) == len(params)  # params: one entry per distinct name
        string_to_sign = _v1_pieces_to_sign(rpc.wire.method, rpc.pieces, unique)
    else:
        string_to_sign = v1_string_to_sign(rpc.wire.method, rpc.pairs)
    if not _same(v1_signature(secret, string_to_sign), rpc.signature):
        raise GatewayError.signature_mismatch(string_to_sign)
    return params["AccessKeyId"], timestamp, params["SignatureNonce"]


_V3_REQUIRED = ("x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256")


def _verify_v3(
    rpc: RpcRequest, key: K | None, now: float, max_skew_s: float
) -> tuple[str, float, str]:
    auth = rpc.v3_authorization
    assert auth is not None
    if auth.algorithm != V3_ALGORITHM:
        raise _bad_method(auth.algorithm)
    for part, value in (
        ("Credential", auth.credential),
        ("SignedHeaders", auth.signed_headers),
        ("Signature", auth.signature),
    ):
        if not value:
            raise GatewayError.incomplete(f"Authorization requires {part}.")
    assert auth.credential and auth.signed_headers and auth.signature
    signed = [name.strip().lower() for name in auth.signed_headers.split(";")]
    for name in _V3_REQUIRED:
        if not rpc.header(name):
            raise GatewayError.incomplete(f"Header {name} is mandatory.")
    must_sign = {"host"} | {name for name in rpc.headers if name.startswith("x-acs-")}
    unsigned = sorted(must_sign - set(signed))
    if unsigned:
        raise GatewayError.incomplete(f"Headers {';'.join(unsigned)} must be signed.")
    absent = [name for name in signed if name not in rpc.headers]
    if absent:
        raise GatewayError.incomplete(f"Signed headers {';'.join(absent)} are missing.")
    date = rpc.header("x-acs-date") or ""
    timestamp = _parse_timestamp(date, "x-acs-date")
    secret = _check_key(key)
    _check_clock(timestamp, now, max_skew_s)
    declared = (rpc.header("x-acs-content-sha256") or "").lower()
    if not _same(hashlib.sha256(rpc.wire.body).hexdigest(), declared):
        raise GatewayError(
            "SignatureDoesNotMatch",
            400,
            "Specified signature is not matched with our calculation. "
            "The x-acs-content-sha256 header does not match the request body.",
        )
    canonical = v3_canonical_request(
        rpc.wire.method, rpc.wire.raw_path, rpc.wire.query, rpc.headers, signed, declared
    )
    string_to_sign = v3_string_to_sign(canonical)
    if not _same(v3_signature(secret, string_to_sign), auth.signature.lower()):
        raise GatewayError.signature_mismatch(string_to_sign)
    return auth.credential, timestamp, rpc.header("x-acs-signature-nonce") or ""
