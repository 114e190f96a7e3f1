"""A message's trace as the JSON document ``GET /thinghub/trace/{MessageId}`` answers and the
console reads (its shape is documented in docs/architecture.md, *Delivery trace*; keep it
stable: add fields, never change or remove one).

Pure: the caller says what state each session is in now (``connected``, ``offline`` or
``ended``), which turns a copy still queued or in flight for a session that is gone into a
copy dropped because the session ended.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from . import fates
from .recorder import Event, MessageTrace

# What a session's state is now (``SessionState``).
CONNECTED: Final = "connected"
OFFLINE: Final = "offline"
ENDED: Final = "ended"

#: client id -> CONNECTED, OFFLINE or ENDED
SessionState = Callable[[str], str]

# A session's fate, from its last event.
_FATE = {
    fates.QUEUED: "queued",
    fates.RESENT: "in_flight",
    fates.RECEIVED: "in_flight",
    fates.ACKNOWLEDGED: "acknowledged",
}


def summary(record: MessageTrace) -> dict[str, Any]:
    """The message and its counts, without the sessions (``GET /thinghub/trace`` lists these)."""
    counts = record.counts
    # A QoS 0 copy handed to a connected client is sent unless a drop was reported
    # (recorder.py): those sends are not events.
    sent0 = max(0, record.copies - record.offered - record.qos0_dropped)
    body: dict[str, Any] = {
        # A string: MessageIds use 63 bits, and JSON numbers past 2**53 lose digits in
        # JavaScript (the console).
        "messageId": str(record.id),
        "topic": record.topic,
        "qos": record.qos,
        "retain": record.retain,
        "payloadBytes": record.payload_bytes,
        "origin": record.origin,
        "publishedAt": _iso(record.published_at),
        "outcome": record.outcome,
        "counts": {
            "matched": record.copies,
            "sent": counts[fates.SENT] + sent0,
            "queued": counts[fates.QUEUED],
            "resent": counts[fates.RESENT],
            "received": counts[fates.RECEIVED],
            "acknowledged": counts[fates.ACKNOWLEDGED],
            "dropped": {
                fates.NAMES[what]: counts[what]
                for what in range(fates.FIRST_DROP, fates.COUNT)
                if counts[what]
            },
        },
    }
    if record.reason:
        body["reason"] = record.reason
    return body


def report(record: MessageTrace, state: SessionState) -> dict[str, Any]:
    """The whole trace: ``summary`` plus one entry per recorded session."""
    body = summary(record)
    sessions: list[dict[str, Any]] = []
    recorded = record.sessions or {}
    for client_id in record.handed:
        events = recorded.get(client_id)
        if events is None:
            # A QoS 0 copy to a connected client: sent when the message was published.
            events = [(fates.SENT, record.started, 0)]
        sessions.append(_session(record, client_id, events, state(client_id)))
    handed = set(record.handed)
    for client_id, events in recorded.items():
        if client_id not in handed:
            sessions.append(_session(record, client_id, events, state(client_id)))
    body["sessions"] = sessions
    body["sessionsOmitted"] = max(0, record.copies - len(handed))
    return body


def _session(record: MessageTrace, client_id: str, events: list[Event], now: str) -> dict[str, Any]:
    # Every event's detail is the copy's QoS, but a refusal's (its reason code).
    qos = next((detail for what, _t, detail in events if what != fates.REFUSED), 0)
    last, _at, detail = events[-1]
    entry: dict[str, Any] = {"clientId": client_id, "qos": qos, "session": now}
    if fates.is_drop(last):
        entry["fate"] = "dropped"
        entry["reason"] = fates.NAMES[last]
        if last == fates.REFUSED:
            entry["reasonCode"] = detail
    elif last == fates.SENT:
        entry["fate"] = "sent" if qos == 0 else "in_flight"
    else:
        entry["fate"] = _FATE[last]
    if entry["fate"] in ("queued", "in_flight") and now == ENDED:
        # Its queue went with the session; what was on disk only left no event.
        entry["fate"] = "dropped"
        entry["reason"] = fates.NAMES[fates.SESSION_ENDED]
    entry["events"] = [
        {
            "event": fates.NAMES[what],
            "at": _iso(record.published_at + (t - record.started)),
            "afterMs": round((t - record.started) * 1000, 3),
        }
        for what, t, _detail in events
    ]
    return entry


def _iso(moment: float) -> str:
    """UTC, to the millisecond: ``2026-12-05T10:00:00.123Z``."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
