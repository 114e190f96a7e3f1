"""Connection admission: which new connections the hub takes at all, before a byte of MQTT.

A connection costs a file descriptor from the moment the kernel hands it over, whether or not
the client ever speaks. Without a bound, a client that opens sockets and stays silent holds
one descriptor each until the CONNECT timeout (``mqtt.connect_timeout``), and a few thousand
of them starve the process: then ``accept()`` fails on every port, the HTTP port (``/healthz``,
the APIs) included, and the stores cannot open a file. So every new MQTT connection (TCP, TLS
before its handshake, WebSocket before its upgrade) passes :meth:`AdmissionGate.admit`, which
closes it at once when any of these holds:

* fewer than ``mqtt.reserved_file_descriptors`` descriptors are free (what is left is kept for
  the HTTP port, the stores and the clients already connected);
* its source address already holds ``mqtt.max_connections_per_address`` connections (IPv6
  addresses count by their /64 prefix, which one host usually owns whole);
* ``mqtt.max_pending_connects`` connections have not finished CONNECT yet, hub-wide (a
  connection stops counting when the broker has accepted or refused its CONNECT, MQTT 5.0
  §3.1.4, or when it closes).

A refusal is counted (``/metrics``) and logged once per episode: when the bound is first hit,
and when connections are accepted again, with the number refused in between.

File descriptors are counted from ``/proc/self/fd``: on Linux 6.2 and later a ``stat()`` of it
gives the count in a few microseconds; elsewhere listing it costs ~1 ms per thousand open
descriptors, so it is listed at most once a second, and the hub's own connections opened and
closed since the last listing are added in between (:class:`FileDescriptors`). HTTP
connections refuse themselves past a lower floor, a quarter of the reserve
(:meth:`AdmissionGate.http_opened`), so that a flood on the HTTP port cannot take the
descriptors the stores need either.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import resource
import sys
import time
from collections.abc import Callable

from ..config import MQTTSettings

log = logging.getLogger("thinghub.transport")

#: Where the open file descriptors of this process are listed (Linux; macOS has /dev/fd).
_FD_DIRS = ("/proc/self/fd", "/dev/fd")
#: Seconds between two listings of the descriptor directory, when ``stat()`` cannot count.
LIST_INTERVAL = 1.0
#: Seconds after which even a cheap count is refreshed while far from the reserve.
STAT_INTERVAL = 1.0


def raise_file_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit (the soft one is often
    1024 while the hard one allows far more); the limit in effect afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, hard, error)
    return soft


def _soft_limit() -> int | None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


class FileDescriptors:
    """How many file descriptors this process may still open, cheaply enough to ask for every
    new connection: a count of the open ones, refreshed when it may be stale, plus the
    connections opened (``opened``) and closed (``closed``) since."""

    __slots__ = (
        "_clock",
        "_counted",
        "_counted_at",
        "_delta",
        "_dir",
        "_interval",
        "_near",
        "_use_stat",
        "limit",
    )

    def __init__(self, reserve: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.limit = _soft_limit()
        self._dir: str | None = None
        self._use_stat = False
        for path in _FD_DIRS:
            try:
                listed = len(os.listdir(path)) - 1  # minus the listing's own descriptor
                counted = os.stat(path).st_size
            except OSError:
                continue
            self._dir = path
            # Linux 6.2+ reports the number of open descriptors as the directory's size.
            self._use_stat = counted > 0 and abs(counted - listed) <= 4
            break
        self._interval = STAT_INTERVAL if self._use_stat else LIST_INTERVAL
        # Within this many descriptors of the reserve, a stat()-count is taken every time.
        self._near = 2 * reserve + 64
        self._counted = 0
        self._counted_at = -1e9
        self._delta = 0
        self._count()

    @property
    def method(self) -> str:
        """How open descriptors are counted: "stat", "list" or "connections" (only ours)."""
        return "stat" if self._use_stat else "list" if self._dir else "connections"

    def opened(self) -> None:
        self._delta += 1

    def closed(self) -> None:
        self._delta -= 1

    def free(self) -> int | None:
        """Descriptors that may still be opened (None: no limit)."""
        if self.limit is None:
            return None
        free = self.limit - self._counted - self._delta
        age = self._clock() - self._counted_at
        if age >= self._interval or (self._use_stat and free < self._near):
            self._count()
            free = self.limit - self._counted
        return free

    def _count(self) -> None:
        path = self._dir
        if path is None:
            return  # only the connections counted by opened/closed
        try:
            count = os.stat(path).st_size if self._use_stat else len(os.listdir(path)) - 1
        except OSError:
            # EMFILE itself: nothing is free.
            count = self.limit or 0
        self._counted = count
        self._counted_at = self._clock()
        self._delta = 0


#: The key of every connection when connections are not counted per address.
_UNCOUNTED = ""

_FD = "fd"
_ADDRESS = "address"
_PENDING = "pending"
_WHY = {
    _FD: "fewer than %d file descriptors are free (mqtt.reserved_file_descriptors)",
    _ADDRESS: "%d connections from one address (mqtt.max_connections_per_address)",
    _PENDING: "%d connections have not sent CONNECT yet (mqtt.max_pending_connects)",
}


class AdmissionGate:
    """The hub-wide counts of MQTT connections and the bounds on them (module docstring)."""

    __slots__ = (
        "_by_address",
        "_episodes",
        "_fd_reserve",
        "_fds",
        "_http_floor",
        "_max_pending",
        "_per_address",
        "_refusing_addresses",
        "connections",
        "http_body_timeouts",
        "http_header_timeouts",
        "http_refused_fd",
        "pending",
        "refused_fd",
        "refused_pending",
        "refused_per_address",
    )

    def __init__(self, settings: MQTTSettings, fds: FileDescriptors | None = None) -> None:
        # 0 (or less) turns a bound off.
        self._max_pending = max(0, settings.max_pending_connects)
        self._per_address = max(0, settings.max_connections_per_address)
        self._fd_reserve = max(0, settings.reserved_file_descriptors)
        self._http_floor = self._fd_reserve // 4
        if fds is None and self._fd_reserve:
            fds = FileDescriptors(self._fd_reserve)
        self._fds = fds
        self._by_address: dict[str, int] = {}
        # Bounds being hit now -> connections refused since the episode began.
        self._episodes: dict[str, int] = {}
        self._refusing_addresses: dict[str, int] = {}
        self.connections = 0
        self.pending = 0
        self.refused_fd = 0
        self.refused_per_address = 0
        self.refused_pending = 0
        self.http_refused_fd = 0
        self.http_header_timeouts = 0
        self.http_body_timeouts = 0

    # MQTT connections -----------------------------------------------------------------------

    def admit(self, host: str) -> str | None:
        """Admit a new connection from ``host``, or refuse it (None: close it at once).

        An admitted connection is counted until it is given back with :meth:`release`, under
        the key returned here, and waits for its CONNECT until :meth:`connect_done`. The key
        is all a connection holds of the gate: one interned string per source address, shared
        by all its connections ("" when connections are not counted per address)."""
        fds = self._fds
        if fds is not None:
            free = fds.free()
            if free is not None and free < self._fd_reserve:
                self.refused_fd += 1
                self._refused(_FD, self._fd_reserve)
                return None
            self._accepting(_FD)
        address = _UNCOUNTED
        held = 0
        if self._per_address:
            address = address_key(host)
            held = self._by_address.get(address, 0)
            if held >= self._per_address:
                self.refused_per_address += 1
                refused = self._refusing_addresses.get(address)
                if refused is None:
                    log.warning(
                        "refusing new MQTT connections from %s: " + _WHY[_ADDRESS],
                        address,
                        self._per_address,
                    )
                    refused = 0
                self._refusing_addresses[address] = refused + 1
                return None
        if self._max_pending and self.pending >= self._max_pending:
            self.refused_pending += 1
            self._refused(_PENDING, self._max_pending)
            return None
        if self._per_address:
            address = sys.intern(address)
            self._by_address[address] = held + 1
        self.connections += 1
        self.pending += 1
        if fds is not None:
            fds.opened()
        return address

    def connect_done(self) -> None:
        """An admitted connection's CONNECT was answered (accepted or refused): it no longer
        counts as pending (MQTT 5.0 §3.1.4). Call it once per connection, and not after
        ``release``."""
        self.pending -= 1
        if _PENDING in self._episodes and self.pending < self._max_pending:
            self._accepting(_PENDING)

    def release(self, address: str, *, pending: bool) -> None:
        """An admitted connection closed; ``pending``: before :meth:`connect_done`."""
        if pending:
            self.connect_done()
        self.connections -= 1
        if self._fds is not None:
            self._fds.closed()
        if not self._per_address:
            return
        held = self._by_address[address] - 1
        if held:
            self._by_address[address] = held
        else:
            del self._by_address[address]
        if self._refusing_addresses and held < self._per_address:
            refused = self._refusing_addresses.pop(address, None)
            if refused is not None:
                log.info("accepting MQTT connections from %s again (%d refused)", address, refused)

    def _refused(self, bound: str, value: int) -> None:
        refused = self._episodes.get(bound)
        if refused is None:
            log.warning("refusing new MQTT connections: " + _WHY[bound], value)
            refused = 0
        self._episodes[bound] = refused + 1

    def _accepting(self, bound: str) -> None:
        if self._episodes:
            refused = self._episodes.pop(bound, None)
            if refused is not None:
                log.info("accepting new MQTT connections again (%d refused)", refused)

    # HTTP connections -----------------------------------------------------------------------

    def http_opened(self) -> bool:
        """A new connection on the HTTP port: False to close it at once (fewer than a quarter
        of the reserve left, kept for the stores and the connections already open)."""
        fds = self._fds
        if fds is None:
            return True
        free = fds.free()
        if free is not None and free < self._http_floor:
            self.http_refused_fd += 1
            return False
        fds.opened()
        return True

    def http_closed(self) -> None:
        if self._fds is not None:
            self._fds.closed()

    # /metrics -------------------------------------------------------------------------------

    def as_dict(self) -> dict[str, int | None]:
        fds = self._fds
        return {
            "connections_pending_connect": self.pending,
            "connections_refused_fd": self.refused_fd,
            "connections_refused_per_address": self.refused_per_address,
            "connections_refused_pending": self.refused_pending,
            "http_refused_fd": self.http_refused_fd,
            "http_header_timeouts": self.http_header_timeouts,
            "http_body_timeouts": self.http_body_timeouts,
            "file_descriptors_free": None if fds is None else fds.free(),
        }


def address_key(host: str) -> str:
    """The key one source address is counted under: IPv4 as it is (also when IPv4-mapped),
    IPv6 by its /64 prefix."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        return host
    mapped = address.ipv4_mapped
    if mapped is not None:
        return str(mapped)
    prefix = ipaddress.IPv6Address(int(address) >> 64 << 64)
    return f"{prefix}/64"
