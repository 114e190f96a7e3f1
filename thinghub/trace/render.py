"""A trace (the JSON of report.py) as text for people: what ``thinghub trace`` prints. A
cluster's trace (report.py, ``merge``) also names each session's node and says which nodes
answered."""

from __future__ import annotations

from typing import Any

from . import fates

_OUTCOME = {
    "routed": "handed to {matched} session(s)",
    "no_subscriber": "no subscriber matched its topic: nobody got it",
    "not_authorized": "not delivered: {reason}",
    "handled_by_service": "taken by a hub service (device shadows), not routed to subscribers",
    "refused": "refused when it was published: {reason}",
}
_FATE = {
    "sent": "sent (QoS 0: no acknowledgement is asked for)",
    "in_flight": "sent, not acknowledged yet",
    "queued": "queued, not sent yet",
    "acknowledged": "delivered and acknowledged",
}
_DROP_TEXT = {fates.NAMES[what]: text for what, text in fates.DROP_TEXT.items()}


def render(trace: dict[str, Any]) -> str:
    counts = trace.get("counts", {})
    lines = [
        f"Message {trace['messageId']}",
        f"  topic      {trace['topic']}",
        f"  QoS        {trace['qos']}{'  retained' if trace.get('retain') else ''}"
        f"  ({trace.get('payloadBytes', 0)} bytes)",
        f"  from       {trace.get('origin') or '(the hub)'}",
        f"  published  {trace['publishedAt']}",
        "  outcome    "
        + _OUTCOME.get(trace["outcome"], trace["outcome"]).format(
            matched=counts.get("matched", 0), reason=trace.get("reason", "")
        ),
    ]
    totals = [
        f"{name} {counts[name]}"
        for name in ("matched", "sent", "queued", "resent", "received", "acknowledged")
        if counts.get(name)
    ]
    totals += [f"dropped ({reason}) {n}" for reason, n in counts.get("dropped", {}).items()]
    if totals:
        lines.append("  counts     " + ", ".join(totals))
    nodes = trace.get("nodes")
    if nodes:
        lines.append(
            "  nodes      " + ", ".join(_node(name, node, trace) for name, node in nodes.items())
        )
        if not trace.get("complete", True):
            lines.append(
                "  PARTIAL    not every node answered (or traces): it may have had more sessions"
            )
    sessions = trace.get("sessions", [])
    if sessions:
        lines.append("")
        lines.append("Sessions")
    for entry in sessions:
        fate = entry["fate"]
        if fate == "dropped":
            reason = entry.get("reason", "")
            text = f"DROPPED: {_DROP_TEXT.get(reason, reason)}"
            if "reasonCode" in entry:
                text += f" (reason code 0x{entry['reasonCode']:02X})"
        else:
            text = _FATE.get(fate, fate)
        where = f"  on {entry['node']}" if "node" in entry else ""
        lines.append(
            f"  {entry['clientId']}{where}  QoS {entry['qos']}, session {entry['session']}: " + text
        )
        lines.extend(
            f"      +{event['afterMs']:>10.3f} ms  {event['event']}"
            for event in entry.get("events", [])
        )
    omitted = trace.get("sessionsOmitted", 0)
    if omitted:
        lines.append(f"  ... and {omitted} more session(s), counted above ([trace] max_sessions)")
    return "\n".join(lines)


def _node(name: str, node: dict[str, Any], trace: dict[str, Any]) -> str:
    """One node of a cluster's trace: what it said."""
    if not node.get("answered"):
        return f"{name} DID NOT ANSWER ({node.get('error') or 'no reason given'})"
    if node.get("tracing") is False:
        return f"{name} (tracing off)"
    if not node.get("found"):
        return f"{name} (no trace of it)"
    notes = ["published here"] if name == trace.get("publishedOn") else []
    if node.get("sessionsCut"):
        notes.append(f"{node['sessionsCut']} session(s) left out to fit")
    return f"{name} ({', '.join(notes)})" if notes else name


def render_list(summaries: list[dict[str, Any]]) -> str:
    """``thinghub trace --recent``: one line per message, newest first."""
    if not summaries:
        return "No traced messages."
    lines = []
    for item in summaries:
        counts = item.get("counts", {})
        dropped = sum(counts.get("dropped", {}).values())
        lines.append(
            f"{item['messageId']:>20}  {item['publishedAt']}  QoS {item['qos']}  "
            f"{item['outcome']:<18} matched {counts.get('matched', 0)}, "
            f"dropped {dropped}  {item['topic']}"
        )
    return "\n".join(lines)
