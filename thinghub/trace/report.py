"""A message's trace as the JSON document ``GET /thinghub/trace/{MessageId}`` answers and the
console reads (its shape is documented in docs/architecture.md, *Delivery trace*; keep it
stable: add fields, never change or remove one).

Pure: the caller says what state each session is in now (``connected``, ``offline`` or
``ended``), which turns a copy still queued or in flight for a session that is gone into a
copy dropped because the session ended.

In a cluster each node records the copies for its own sessions, under the MessageId the
message travels with (cluster/envelope.py), so one message's trace is in parts, one per node
that routed it. ``fit`` bounds a part for the wire and ``merge`` makes the parts the nodes
answered (cluster/rpc.py, op "trace") into one document of the same shape: each session
names its ``node``, the counts add up, and ``nodes`` says which nodes answered, so that a
partial answer never reads as a whole one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from ..registry.ids import decode_message_id
from . import fates
from .recorder import NO_SUBSCRIBER, NOT_AUTHORIZED, ROUTED, Event, MessageTrace

if TYPE_CHECKING:
    from ..broker.broker import Broker

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


def session_state(broker: Broker, account: str) -> SessionState:
    """What state each of ``account``'s sessions on ``broker`` is in now."""

    def state(client_id: str) -> str:
        session = broker.session_of(account, client_id)
        if session is None:
            return ENDED
        return CONNECTED if session.client is not None else OFFLINE

    return state


# ---------------------------------------------------------------------- a cluster's parts

#: The most bytes of JSON one node's part of a trace takes in its reply to another node
#: (cluster/rpc.py): a part holds at most 2 x ``[trace] max_sessions`` sessions of at most
#: ``EVENTS_PER_SESSION`` events (recorder.py), but ``max_sessions`` has no upper bound and a
#: reply must stay well under NATS' default max_payload (1 MiB).
PART_BYTES: Final = 256 * 1024

_COUNTED = ("matched", "sent", "queued", "resent", "received", "acknowledged")


@dataclass(frozen=True, slots=True)
class Part:
    """What one node of a cluster said of a message: its ``report`` of the message (``fit``
    for the wire), or nothing."""

    node: str
    #: False: the node did not answer in time, or could not be asked (``error`` says why)
    answered: bool
    #: its ``report`` of the message; None: it has no trace of it (for this account)
    document: dict[str, Any] | None = None
    #: the node's number in the MessageIds it issues (registry/ids.py); None: unknown
    number: int | None = None
    #: False: tracing is off on that node ([trace] enabled)
    tracing: bool = True
    #: sessions ``fit`` left out of ``document`` (counted in its ``sessionsOmitted``)
    cut: int = 0
    error: str = ""


def fit(document: dict[str, Any], max_bytes: int = PART_BYTES) -> tuple[dict[str, Any], int]:
    """``document`` (a ``report``) with as many of its sessions, in order, as fit in
    ``max_bytes`` of JSON; those left out are added to its ``sessionsOmitted``. Returns the
    document (the same one when nothing was left out) and how many were left out."""
    sessions: list[dict[str, Any]] = document.get("sessions", [])
    size = len(_json({**document, "sessions": []}))
    kept = 0
    for entry in sessions:
        size += len(_json(entry)) + 1  # and its comma
        if size > max_bytes:
            break
        kept += 1
    cut = len(sessions) - kept
    if not cut:
        return document, 0
    omitted = int(document.get("sessionsOmitted", 0)) + cut
    return {**document, "sessions": sessions[:kept], "sessionsOmitted": omitted}, cut


def merge(message_id: int, parts: Sequence[Part]) -> dict[str, Any] | None:
    """One document from the nodes' parts of a message's trace; None when no node has any.

    The message's own fields (``topic``, ``qos``, ``origin``, ``publishedAt``, ``outcome``)
    are those of the node that published it: the one whose number the MessageId carries
    (registry/ids.py), ``publishedOn``. When no part is that node's (it did not answer, its
    trace of it is gone, or the id was issued elsewhere, as an RRpc's), they are those of the
    part routed first and ``publishedOn`` is null. The counts are the sums of the parts'; each
    session gains ``node``; ``nodes`` says, per node, whether it answered and had a part (and
    when it routed the message: its sessions' ``afterMs`` count from then, on its clock);
    ``complete`` is false when a node did not answer or traces nothing."""
    found = [part for part in parts if part.document is not None]
    if not found:
        return None
    issuer = decode_message_id(message_id).node
    publisher = next((part for part in found if part.number == issuer), None)
    head = publisher or min(found, key=_routed_at)
    first = _doc(head)
    body = {
        name: value
        for name, value in first.items()
        if name not in ("counts", "sessions", "sessionsOmitted", "reason")
    }
    counts = _sum_counts([_doc(part)["counts"] for part in found])
    outcome, reason = first["outcome"], str(first.get("reason", ""))
    if outcome in (ROUTED, NO_SUBSCRIBER):
        # The publishing node may have no subscriber of its own while others routed it.
        hidden = next((_doc(p) for p in found if _doc(p)["outcome"] == NOT_AUTHORIZED), None)
        if counts["matched"]:
            outcome, reason = ROUTED, ""
        elif hidden is not None:
            outcome, reason = NOT_AUTHORIZED, str(hidden.get("reason", ""))
    body["outcome"] = outcome
    body["counts"] = counts
    if reason:
        body["reason"] = reason
    ordered = [head, *sorted((part for part in found if part is not head), key=_name)]
    body["sessions"] = [
        {"clientId": entry["clientId"], "node": part.node, **entry}
        for part in ordered
        for entry in _doc(part)["sessions"]
    ]
    body["sessionsOmitted"] = sum(int(_doc(part).get("sessionsOmitted", 0)) for part in found)
    body["publishedOn"] = None if publisher is None else publisher.node
    body["nodes"] = {part.node: _node(part) for part in sorted(parts, key=_name)}
    body["complete"] = all(part.answered and part.tracing for part in parts)
    return body


def _node(part: Part) -> dict[str, Any]:
    entry: dict[str, Any] = {"answered": part.answered, "found": part.document is not None}
    if part.document is not None:
        entry["routedAt"] = part.document["publishedAt"]
    if part.answered and not part.tracing:
        entry["tracing"] = False
    if part.cut:
        entry["sessionsCut"] = part.cut
    if part.error:
        entry["error"] = part.error
    return entry


def _sum_counts(all_counts: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {
        name: sum(int(c.get(name, 0)) for c in all_counts) for name in _COUNTED
    }
    dropped: dict[str, int] = {}
    for counts in all_counts:
        for reason, n in counts.get("dropped", {}).items():
            dropped[reason] = dropped.get(reason, 0) + int(n)
    # In fates.py's order, as ``summary`` lists them (a name this node does not know last).
    order = {name: index for index, name in enumerate(fates.NAMES)}
    total["dropped"] = dict(
        sorted(dropped.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))
    )
    return total


def _doc(part: Part) -> dict[str, Any]:
    assert part.document is not None
    return part.document


def _routed_at(part: Part) -> tuple[str, str]:
    # ISO UTC strings of one format sort as the times they are.
    return str(_doc(part)["publishedAt"]), part.node


def _name(part: Part) -> str:
    return part.node


def _json(value: Any) -> str:
    # As cluster/rpc.py sends it.
    return json.dumps(value, separators=(",", ":"))


def _iso(moment: float) -> str:
    """UTC, to the millisecond: ``2026-12-05T10:00:00.123Z``."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
