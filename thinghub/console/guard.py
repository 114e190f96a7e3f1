"""Who a console request comes from, and whether it may change anything.

Every API request and the tail's WebSocket upgrade pass here first:

1. **Origin.** A request that changes something (any method but GET and HEAD) and every
   WebSocket upgrade must come from a page of this very host: its ``Origin`` header (or,
   without one, its ``Referer``) must name the host the request was sent to (the ``Host``
   header). Browsers set both on cross-site requests and pages cannot forge them, so another
   site's page is refused (403) even before the CSRF token is looked at (OWASP CSRF
   cheat sheet, "Verifying Origin With Standard Headers").
2. **Session.** The ``thinghub_console`` cookie (``HttpOnly; SameSite=Strict;
   Path=/console``, ``Secure`` over TLS) names a live session (sessions.py); else 401.
3. **CSRF token.** A request that changes something carries the session's token in
   ``X-CSRF-Token``, compared in constant time (``hmac.compare_digest``); else 403. The
   page's script reads the token from ``GET /console/api/session``, which another site's page
   cannot read (no CORS headers are ever sent). A WebSocket cannot send headers from a
   browser: the tail offers the token as a subprotocol (``csrf.<token>``) beside
   ``thinghub-console``, checked at the upgrade.
4. **The key.** Every ``KEY_RECHECK_S`` seconds a session's access key is looked up again
   (off the event loop): a key disabled or deleted since the sign-in ends its sessions (401).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from aiohttp import web

from ..registry.registry import Registry
from .errors import FORBIDDEN, UNAUTHORIZED, ConsoleError
from .reads import Reader
from .sessions import ConsoleSession, SessionBook

__all__ = ["COOKIE", "CSRF_HEADER", "CSRF_PROTOCOL_PREFIX", "KEY_RECHECK_S", "Guard"]

COOKIE = "thinghub_console"
CSRF_HEADER = "X-CSRF-Token"
#: the subprotocol prefix a tail's WebSocket offers its CSRF token under
CSRF_PROTOCOL_PREFIX = "csrf."
KEY_RECHECK_S = 5.0

_SAFE_METHODS = frozenset({"GET", "HEAD"})


def same_origin(request: web.Request) -> None:
    """Refuse (403) a request whose Origin, or Referer when it sends no Origin, names another
    host than the one it was sent to, or that names neither."""
    host = request.headers.get("Host", "").lower()
    source = request.headers.get("Origin")
    what = "Origin"
    if source is None:
        source = request.headers.get("Referer")
        what = "Referer"
    if source is None:
        raise ConsoleError(FORBIDDEN, "The request names no Origin or Referer.")
    try:
        parts = urlsplit(source)
    except ValueError:
        parts = None
    if (
        not host
        or parts is None
        or parts.scheme not in ("http", "https")
        or parts.netloc.lower() != host
    ):
        raise ConsoleError(FORBIDDEN, f"The request's {what} is not this console.")


def tokens_match(given: str | None, expected: str) -> bool:
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


class Guard:
    def __init__(
        self,
        book: SessionBook,
        registry: Registry,
        reader: Reader,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.book = book
        self._registry = registry
        self._reader = reader
        self._clock = clock

    async def session(self, request: web.Request, *, csrf: str | None = None) -> ConsoleSession:
        """The request's session, checked as the module notes say. ``csrf``: the token the
        request carries elsewhere than in the header (a WebSocket upgrade's subprotocol)."""
        changes = request.method not in _SAFE_METHODS
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if changes or upgrade:
            same_origin(request)
        session = self.book.get(request.cookies.get(COOKIE))
        if session is None:
            raise ConsoleError(UNAUTHORIZED, "Sign in first: there is no session, or it ended.")
        if changes or upgrade:
            given = csrf if upgrade else request.headers.get(CSRF_HEADER)
            if not tokens_match(given, session.csrf):
                raise ConsoleError(FORBIDDEN, "The request's CSRF token is missing or wrong.")
        if self._clock() - session.key_checked >= KEY_RECHECK_S:
            await self.recheck(session)
        return session

    async def recheck(self, session: ConsoleSession) -> None:
        """End the sessions of ``session``'s key if it is no longer enabled (401)."""
        key = await self._reader.run(self._registry.lookup_access_key, session.access_key_id)
        if key is None or not key.enabled or key.account_id != session.account_id:
            self.book.end_key(session.access_key_id)
            raise ConsoleError(UNAUTHORIZED, "The access key of this session is disabled.")
        session.key_checked = self._clock()
