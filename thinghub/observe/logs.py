"""The hub's log: where records go, in which format, without the event loop waiting.

``thinghub serve`` calls :func:`start_logging` once. Every record, from any thread, is handed
to ONE writer thread (``thinghub-log``) through a bounded queue (``log.queue`` records): the
loop logs a refused sign-in or an audit line and goes on, and a terminal, pipe or disk that is
slow (or a reader that stopped reading) never blocks it. When the queue is full a record is
dropped and counted (:attr:`LogPipe.dropped`, ``thinghub_log_records_dropped_total``).

Formats (``[log] format``, ``THINGHUB_LOG_FORMAT``):

* ``text`` (the default): ``2026-12-05 10:00:00,123 INFO thinghub.audit: api aliyun Pub ...``
* ``json``: one JSON object per line with ``time`` (UTC, ISO 8601, milliseconds), ``level``,
  ``logger``, ``message``, every extra field of the record (the audit fields:
  ``observe/audit.py``), and ``exception`` (the traceback) when there is one. Non-ASCII
  characters are escaped, so a line never holds a character that some tool reads as a line
  break.
"""

from __future__ import annotations

import copy
import json
import logging
import logging.handlers
import queue
import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

from .audit import AUDIT_LOGGER

__all__ = ["TEXT_FORMAT", "JsonFormatter", "LogPipe", "start_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
_TRACEBACKS = logging.Formatter()


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module notes)."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in body:
                body[key] = value
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            body["exception"] = record.exc_text
        if record.stack_info:
            body["stack"] = record.stack_info
        return json.dumps(body, default=str)


class LogPipe:
    """The bounded queue between the threads that log and the one that writes."""

    def __init__(self, handler: logging.Handler, capacity: int) -> None:
        self._queue: queue.Queue[logging.LogRecord | None] = queue.Queue(capacity)
        self._handler = handler
        self._thread = threading.Thread(target=self._write, name="thinghub-log", daemon=True)
        #: Records dropped because the queue was full.
        self.dropped = 0
        self.entrance: logging.Handler = _Entrance(self)

    def start(self) -> None:
        self._thread.start()

    def put(self, record: logging.LogRecord) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (for at most ``timeout`` seconds), then stop the thread."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _write(self) -> None:
        handler = self._handler
        while True:
            record = self._queue.get()
            if record is None:
                handler.flush()
                return
            handler.handle(record)


class _Entrance(logging.handlers.QueueHandler):
    """Hands records to the pipe, formatted as far as they depend on the moment (the message
    with its arguments, a traceback), so that the writer thread only lays them out."""

    def __init__(self, pipe: LogPipe) -> None:
        super().__init__(queue.Queue(1))  # unused: ``enqueue`` is the pipe's
        self._pipe = pipe

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        record.message = record.getMessage()
        record.msg, record.args = record.message, None
        if record.exc_info:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
            record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        self._pipe.put(record)


def start_logging(
    level: str,
    log_format: str,
    capacity: int,
    stream: TextIO | None = None,
    *,
    audit: bool = False,
) -> LogPipe:
    """Send every record of ``level`` and above to ``stream`` (stderr) in ``log_format``
    ("text" or "json") through a :class:`LogPipe`, which is started and returned; close it
    when the hub has stopped, so that the last records are written. With ``audit``, the audit
    lines (INFO) are written whatever ``level`` is: turning the log down to WARNING does not
    turn the audit log off (``log.audit`` does)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    pipe = LogPipe(handler, capacity)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(pipe.entrance)
    root.setLevel(level.upper())
    if audit:
        logging.getLogger(AUDIT_LOGGER).setLevel(logging.INFO)
    pipe.start()
    return pipe
