"""The console's server-side sessions: who signed in with which access key, and until when.

A session is found by the random id its cookie carries (256 bits from ``secrets``); the book
keys sessions by the SHA-256 of that id, so what it holds in memory cannot be replayed as a
cookie. Each session has its own CSRF token, which the page sends back in a header with every
request that changes something (``guard.py``).

Bounds (``[console]`` in config.py): a session ends ``session_idle_s`` after its last request
and ``session_max_s`` after its sign-in, whatever it does; at most ``max_sessions`` live at
once, and a sign-in beyond that ends the least recently used one. Expired sessions are swept
at every sign-in and whenever one is looked up.

Pure bookkeeping on the event loop (no I/O); the clock is a seam for the tests.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ConsoleSession", "SessionBook"]


@dataclass(slots=True, eq=False)
class ConsoleSession:
    #: the cookie's value; kept only so the sign-in answer can set it
    cookie: str
    #: what the page sends in ``X-CSRF-Token`` (compared in constant time, guard.py)
    csrf: str
    account_id: str
    account_name: str
    access_key_id: str
    created: float
    last_seen: float
    #: when the access key was last found enabled in the registry (guard.py checks it again)
    key_checked: float
    #: live tails of this session (tail.py)
    tails: int = 0
    ended: bool = False


def _digest(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


class SessionBook:
    def __init__(
        self,
        *,
        idle_s: float,
        max_s: float,
        max_sessions: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_s = idle_s
        self.max_s = max_s
        self.max_sessions = max_sessions
        self._clock = clock
        # Least recently used first: a lookup moves its session to the end.
        self._sessions: OrderedDict[str, ConsoleSession] = OrderedDict()
        # Sessions ended to make room for a new one (shown nowhere yet; kept for tests and logs).
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, account_id: str, account_name: str, access_key_id: str) -> ConsoleSession:
        """A new session for a checked access key."""
        now = self._clock()
        self._sweep(now)
        while len(self._sessions) >= self.max_sessions:
            _key, oldest = self._sessions.popitem(last=False)
            oldest.ended = True
            self.evicted += 1
        cookie = secrets.token_urlsafe(32)
        session = ConsoleSession(
            cookie=cookie,
            csrf=secrets.token_urlsafe(32),
            account_id=account_id,
            account_name=account_name,
            access_key_id=access_key_id,
            created=now,
            last_seen=now,
            key_checked=now,
        )
        self._sessions[_digest(cookie)] = session
        return session

    def get(self, cookie: str | None) -> ConsoleSession | None:
        """The live session of ``cookie``, its idle time restarted; None if there is none or
        it has expired (it is then ended)."""
        if not cookie:
            return None
        key = _digest(cookie)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            self._end(key, session)
            return None
        session.last_seen = now
        self._sessions.move_to_end(key)
        return session

    def alive(self, session: ConsoleSession) -> bool:
        """Whether ``session`` is still live (for a tail, which holds it between requests);
        does not count as activity."""
        if session.ended:
            return False
        if self._expired(session, self._clock()):
            self._end(_digest(session.cookie), session)
            return False
        return True

    def close(self, session: ConsoleSession) -> None:
        """Sign-out."""
        self._end(_digest(session.cookie), session)

    def end_key(self, access_key_id: str) -> int:
        """End every session of a key found disabled or gone; returns how many."""
        ended = [(k, s) for k, s in self._sessions.items() if s.access_key_id == access_key_id]
        for key, session in ended:
            self._end(key, session)
        return len(ended)

    def _expired(self, session: ConsoleSession, now: float) -> bool:
        return now - session.last_seen >= self.idle_s or now - session.created >= self.max_s

    def _end(self, key: str, session: ConsoleSession) -> None:
        session.ended = True
        if self._sessions.get(key) is session:
            del self._sessions[key]

    def _sweep(self, now: float) -> None:
        expired = [(k, s) for k, s in self._sessions.items() if self._expired(s, now)]
        for key, session in expired:
            self._end(key, session)
