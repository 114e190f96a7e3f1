"""A progress bar for the long commands (``thinghub device import``, ``thinghub backup``).

On a terminal (the stream is a TTY) it draws one line, ``label [#####-----] done/total rate
ETA``, redrawn in place with a carriage return at most ``MIN_INTERVAL_S`` apart however often
it is told of progress, and clipped to the terminal's width (a line that wraps cannot be
redrawn in place). Anywhere else (a pipe, a file, a test runner) it writes nothing at all: no
bar, no control characters, so logs and captured output stay clean. The command prints its own
summary line either way.

Not ``click.progressbar``: that one prints its label when the stream is not a terminal, shows
no rate, and counts only upwards, where a backup's total grows and its count can start over
(store/backup.py).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

__all__ = ["MIN_INTERVAL_S", "Progress", "count", "size"]

# At most ~10 redraws a second: a terminal is slow, and a faster bar is unreadable anyway.
MIN_INTERVAL_S = 0.1
# The bar's own width bounds, in characters, and what is kept free for the numbers.
_BAR_MIN, _BAR_MAX = 10, 30
_TAIL_ROOM = 44
# Carriage return, then ECMA-48 "erase in line" (from the cursor to the end).
_REDRAW = "\r\x1b[K"


def count(value: float) -> str:
    """``12,345``."""
    return f"{value:,.0f}"


def size(value: float) -> str:
    """Bytes in binary units: ``512 B``, ``12.3 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    whole = max(0, int(seconds + 0.5))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """``with Progress("registering", total=n) as bar: ... bar.advance(k)``.

    ``update(done, total)`` sets the position (it may go back: a backup that starts a file
    over); ``advance(n)`` moves it on. ``stream`` defaults to stderr, and the bar is shown
    only if it is a TTY (``enabled`` overrides). ``unit`` formats the numbers (``count``,
    ``size``)."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        unit: Callable[[float], str] = count,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._unit = unit
        self._stream = sys.stderr if stream is None else stream
        self.enabled = _is_terminal(self._stream) if enabled is None else enabled
        self._clock = clock
        # The rate counts from the first news of progress, not from the bar's creation: a
        # command may check its input for a while before the counted work starts.
        self._started: float | None = None
        self._drawn_at: float | None = None
        self._finished = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.finish(completed=kind is None)

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if not self.enabled or self._finished:
            return
        now = self._clock()
        if self._started is None:
            self._started = now
        if self._drawn_at is not None and now - self._drawn_at < MIN_INTERVAL_S:
            return
        self._drawn_at = now
        self._draw(now, final=False)

    def finish(self, *, completed: bool = True) -> None:
        """Draw the last state and end the line (completed), or erase the bar (an error or
        Ctrl-C: the message that follows gets a clean line). Idempotent; nothing if no
        progress was ever reported."""
        if self._finished:
            return
        self._finished = True
        if not self.enabled or self._started is None:  # nothing was drawn
            return
        if completed:
            self._draw(self._clock(), final=True)
            self._stream.write("\n")
        else:
            self._stream.write(_REDRAW)
        self._stream.flush()

    def line(self, now: float, *, final: bool, width: int) -> str:
        """The text of the bar at ``now``, at most ``width - 1`` characters (the last column
        is left free: a full line makes some terminals wrap at once)."""
        elapsed = 0.0 if self._started is None else now - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        total = self.total
        numbers = self._unit(self.done)
        if total is not None:
            numbers += f"/{self._unit(total)}"
        parts = [numbers, f"{self._unit(rate)}/s"]
        if final:
            parts.append(f"in {_duration(elapsed)}")
        elif total is not None and rate > 0:
            parts.append(f"ETA {_duration(max(total - self.done, 0) / rate)}")
        tail = "  ".join(parts)
        # The bar's width depends on the terminal and the label only, not on the numbers
        # beside it, so it does not jitter as they change.
        cells = min(width - 1 - len(self.label) - 5 - _TAIL_ROOM, _BAR_MAX)
        if total is not None and cells >= _BAR_MIN:
            filled = cells if total <= 0 else min(cells, cells * max(self.done, 0) // total)
            bar = "#" * filled + "-" * (cells - filled)
            text = f"{self.label} [{bar}]  {tail}"
        else:
            text = f"{self.label}  {tail}"
        return text[: max(width - 1, 0)]

    def _draw(self, now: float, *, final: bool) -> None:
        self._stream.write(_REDRAW + self.line(now, final=final, width=_columns(self._stream)))
        self._stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False


def _columns(stream: TextIO) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        columns = 0
    # A pseudo-terminal nobody sized reports 0 columns.
    return columns if columns >= 20 else 80
