"""Signing in and out of the console::

    POST   /console/api/session   {"accessKeyId", "accessKeySecret"}: a new session (cookie)
    GET    /console/api/session   who is signed in, and the session's CSRF token
    DELETE /console/api/session   sign out

A sign-in is checked against the registry's access keys (read off the event loop): a wrong
id or secret gets one answer for both (401, the secret compared in constant time), a
disabled key is told so only when its secret was right. Attempts are limited per client
address (signin_limit.py, 429 with ``Retry-After``), and the request must come from this
console's own page (its Origin, guard.py): a sign-in forced by another site would put the
browser in the attacker's account.
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from ..registry.errors import RegistryError
from .errors import TOO_MANY, UNAUTHORIZED, ConsoleError
from .guard import COOKIE, same_origin
from .params import json_body, text_field
from .sessions import ConsoleSession
from .state import Console

__all__ = ["session_info", "sign_in", "sign_out"]

# An access key id and secret are short; nothing else belongs in the body.
_MAX_BODY = 4096
_WRONG = "The AccessKeyId or AccessKeySecret is wrong."
# Compared against when the key does not exist, so both cases take the same time.
_NO_SECRET = "-" * 30


async def sign_in(console: Console, request: web.Request) -> web.Response:
    same_origin(request)
    address = request.remote or "?"
    if not console.signins.allow(address):
        retry = console.signins.retry_after(address)
        error = ConsoleError(TOO_MANY, f"Too many sign-in attempts; try again in {retry} s.")
        response = web.json_response(
            {"error": {"code": error.code, "message": error.message}}, status=error.status
        )
        response.headers["Retry-After"] = str(retry)
        return response
    body = await json_body(request, _MAX_BODY)
    key_id = text_field(body, "accessKeyId", required=True)
    secret = text_field(body, "accessKeySecret", required=True)
    assert key_id is not None and secret is not None
    registry = console.ctx.registry
    key = await console.reader.run(registry.lookup_access_key, key_id)
    expected = key.secret if key is not None else _NO_SECRET
    right = hmac.compare_digest(
        secret.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )
    if key is None or not right:
        raise ConsoleError(UNAUTHORIZED, _WRONG)
    if not key.enabled:
        raise ConsoleError(UNAUTHORIZED, "This access key is disabled.")
    try:
        account = await console.reader.run(registry.get_account, key.account_id)
        name = account.name
    except RegistryError:
        name = key.account_id
    session = console.book.open(key.account_id, name, key.access_key_id)
    response = web.json_response(_info(session))
    response.set_cookie(
        COOKIE,
        session.cookie,
        path="/console",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return response


async def session_info(console: Console, request: web.Request, session: ConsoleSession) -> Any:
    return _info(session)


async def sign_out(console: Console, request: web.Request, session: ConsoleSession) -> Any:
    console.book.close(session)
    response = web.json_response({"signedOut": True})
    response.del_cookie(COOKIE, path="/console")
    return response


def _info(session: ConsoleSession) -> dict[str, Any]:
    return {
        "accessKeyId": session.access_key_id,
        "accountId": session.account_id,
        "accountName": session.account_name,
        "csrfToken": session.csrf,
    }
