"""Reading a running hub's traces over HTTP, as ``thinghub trace`` does: ``GET
/thinghub/trace/{MessageId}`` (or ``GET /thinghub/trace`` for the latest), signed with
Signature Version 4 by the hub's own signing code (thinghub/http/aws/sigv4.py), service
``thinghub``."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from ..http.aws import sigv4

__all__ = ["REGION", "SERVICE", "TraceError", "get_json", "signed_headers"]

SERVICE = "thinghub"
# Any region is accepted, as on the iot-data plane; this one names none in particular.
REGION = "us-east-1"
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class TraceError(Exception):
    """The hub answered with an error, or could not be reached (``status`` 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def signed_headers(
    method: str,
    host: str,
    raw_path: str,
    query: Sequence[tuple[str, str]],
    access_key_id: str,
    secret: str,
    now: float | None = None,
) -> dict[str, str]:
    """The headers that sign a request without a body (``Host``, ``X-Amz-Date``,
    ``Authorization``)."""
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    scope_date = amz_date[:8]
    headers = {"host": [host], "x-amz-date": [amz_date]}
    signed = ("host", "x-amz-date")
    canonical = sigv4.canonical_request(method, raw_path, query, headers, signed, _EMPTY_SHA256)
    scope = f"{scope_date}/{REGION}/{SERVICE}/{sigv4.TERMINATOR}"
    to_sign = sigv4.string_to_sign(amz_date, scope, canonical)
    mac = sigv4.signature(secret, scope_date, REGION, SERVICE, to_sign)
    return {
        "Host": host,
        "X-Amz-Date": amz_date,
        "Authorization": (
            f"{sigv4.ALGORITHM} Credential={access_key_id}/{scope}, "
            f"SignedHeaders={';'.join(signed)}, Signature={mac}"
        ),
    }


def get_json(
    base_url: str,
    raw_path: str,
    query: Sequence[tuple[str, str]],
    access_key_id: str,
    secret: str,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """GET ``raw_path`` (already percent-encoded) on the hub at ``base_url``, signed; the JSON
    answer. Raises TraceError for an error answer or an unreachable hub."""
    base = urllib.parse.urlsplit(base_url.rstrip("/"))
    if base.scheme not in ("http", "https") or not base.netloc:
        raise TraceError(0, f"not an http(s) URL: {base_url!r}")
    path = base.path + raw_path
    encoded = "&".join(f"{_quote(name)}={_quote(value)}" for name, value in query)
    url = f"{base.scheme}://{base.netloc}{path}" + (f"?{encoded}" if encoded else "")
    headers = signed_headers("GET", base.netloc, path, query, access_key_id, secret)
    request = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            body: dict[str, Any] = json.loads(answer.read())
            return body
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            message = str(json.loads(raw)["message"])
        except (ValueError, KeyError, TypeError):
            message = raw.decode("utf-8", "replace").strip() or error.reason
        raise TraceError(error.code, message) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TraceError(0, f"cannot reach the hub at {base_url}: {reason}") from None


def _quote(value: str) -> str:
    # As SigV4 encodes query values (sigv4.canonical_query): the hub decodes them once.
    return urllib.parse.quote(value, safe="-_.~")
