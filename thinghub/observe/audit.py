"""The audit log: one line per API call and per refused sign-in, on the ``thinghub.audit``
logger, at most ``log.audit_rate`` lines a second.

An API call is logged where it is counted (``requests.py``, the one seam of both dialects):
dialect, operation, the access key id it claims, the account of that key once verified, the
HTTP status and the dialect's error code. A refused sign-in is logged where the broker decides
the CONNECT (``broker/client.py`` through ``Stats.connect_refused``): peer, client id, user
name (never the password), the MQTT 5 reason code and its text.

Both can be flooded by anyone who reaches the ports (a bad signature costs its sender
nothing), so the lines take tokens from a bucket: ``audit_rate`` a second, up to
``audit_burst`` at once. A line that finds none is counted and dropped, and while lines are
being dropped one line a second at most says how many were ("N audit lines suppressed"),
also after the flood ends. What the text holds is bounded (:data:`MAX_FIELD` characters a
field) and escaped, so that a client id cannot forge a line of its own.

With ``log.format = "json"`` every field is also a key of the line's JSON object
(``logs.py``): ``event`` (``api_call``, ``signin_refused``, ``audit_suppressed``), ``dialect``,
``action``, ``access_key_id``, ``account``, ``status``, ``result``, ``peer``, ``client_id``,
``username``, ``reason_code``, ``reason``, ``suppressed``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .requests import ApiCall

__all__ = ["AUDIT_LOGGER", "MAX_FIELD", "AuditLog", "clean"]

AUDIT_LOGGER = "thinghub.audit"
#: Characters of one field (a client id, a key id...) written to the log; the rest is cut.
MAX_FIELD = 128
# The summary of suppressed lines is written at most this often (seconds).
_SUMMARY_EVERY = 1.0

#: Schedules a call on the event loop (``loop.call_later``).
CallLater = Callable[[float, Callable[[], None]], object]


def clean(text: str | None, limit: int = MAX_FIELD) -> str:
    """``text`` fit for one log line: at most ``limit`` characters (then ``...``), anything
    not printable (a newline, an escape sequence) written as a Python escape."""
    if text is None:
        return ""
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text + "..." if cut else text


class AuditLog:
    """Writes audit lines through a token bucket; one per hub, used on the event loop."""

    __slots__ = (
        "_call_later",
        "_check_scheduled",
        "_clock",
        "_last_summary",
        "_log",
        "_stamp",
        "_tokens",
        "burst",
        "rate",
        "suppressed",
        "suppressed_total",
        "written",
    )

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        call_later: CallLater | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        """``call_later``: how to come back and write the summary of suppressed lines once a
        flood is over (without it the summary waits for the next line that gets through)."""
        if rate <= 0 or burst < 1:
            raise ValueError("the audit rate must be positive and the burst at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._call_later = call_later
        self._log = logger or logging.getLogger(AUDIT_LOGGER)
        self._tokens = float(burst)
        self._stamp = clock()
        self._last_summary = float("-inf")
        self._check_scheduled = False
        # Lines dropped since the last summary, and since the start; lines written.
        self.suppressed = 0
        self.suppressed_total = 0
        self.written = 0

    # ------------------------------------------------------------------ what is audited

    def api_call(self, call: ApiCall, status: int) -> None:
        if not self._take():
            return
        key, account, result = clean(call.access_key_id), clean(call.account), clean(call.result)
        self._write(
            logging.INFO,
            "api %s %s key=%s account=%s status=%d%s",
            (
                call.dialect,
                call.operation,
                key or "-",
                account or "-",
                status,
                f" result={result}" if result else "",
            ),
            {
                "event": "api_call",
                "dialect": call.dialect,
                "action": call.operation,
                "access_key_id": key,
                "account": account,
                "status": status,
                "result": result,
            },
        )

    def signin_refused(
        self, peer: str, client_id: str, username: str | None, reason_code: str, reason: str
    ) -> None:
        if not self._take():
            return
        client, user, text = clean(client_id), clean(username), clean(reason, 2 * MAX_FIELD)
        self._write(
            logging.INFO,
            "sign-in refused from %s: client id '%s', user '%s': %s (%s)",
            (clean(peer), client, user, reason_code, text),
            {
                "event": "signin_refused",
                "peer": clean(peer),
                "client_id": client,
                "username": user,
                "reason_code": reason_code,
                "reason": text,
            },
        )

    # ------------------------------------------------------------------ the bucket

    def _take(self) -> bool:
        now = self._clock()
        tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            if self.suppressed and now - self._last_summary >= _SUMMARY_EVERY:
                self._summarize(now)
            return True
        self._tokens = tokens
        self.suppressed += 1
        self.suppressed_total += 1
        if not self._check_scheduled and self._call_later is not None:
            self._check_scheduled = True
            self._call_later(_SUMMARY_EVERY, self._check)
        return False

    def _check(self) -> None:
        """A second after lines began to be dropped: say how many, once a second while it
        lasts, and once more after it ends."""
        self._check_scheduled = False
        if not self.suppressed:
            return
        now = self._clock()
        if now - self._last_summary >= _SUMMARY_EVERY:
            self._summarize(now)
        if self._call_later is not None:
            self._check_scheduled = True
            self._call_later(_SUMMARY_EVERY, self._check)

    def _summarize(self, now: float) -> None:
        count, self.suppressed = self.suppressed, 0
        self._last_summary = now
        self._write(
            logging.WARNING,
            "%d audit lines suppressed (more than %g a second, %d at once)",
            (count, self.rate, self.burst),
            {"event": "audit_suppressed", "suppressed": count},
        )

    def _write(
        self, level: int, message: str, args: tuple[Any, ...], fields: dict[str, Any]
    ) -> None:
        self.written += 1
        self._log.log(level, message, *args, extra=fields)
