"""Delivery traces: for one message, which sessions it matched and what became of each copy
(docs/architecture.md, *Delivery trace*).

``fates`` names the events, ``recorder`` keeps them (bounded; the broker reports to it),
``report`` turns a trace into the JSON the HTTP endpoint (thinghub/http/trace_routes.py)
answers, ``render`` into text, and ``client`` reads it from a running hub for
``thinghub trace`` (thinghub/cli_trace.py).
"""

from .recorder import MessageTrace, TraceRecorder

__all__ = ["MessageTrace", "TraceRecorder"]
