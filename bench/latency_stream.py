"""A paced QoS 0 stream through the broker, timed message by message, in its own process.

    python -m bench.latency_stream --port P [--rate 2000] [--max-seconds 1800]

One publisher sends ``--rate`` messages per second to one topic; one subscriber receives them.
Each 64-byte payload starts with its sequence number and ``time.perf_counter_ns()`` at sending
(CLOCK_MONOTONIC, the same clock in every process of the machine), so the latency of every
message is known, and the parent can later cut the record into phases by sending time (the
baseline, a cold sign-in, a reconnect storm: bench/signin.py).

Why a process of its own: the sign-in generator keeps its core busy opening thousands of
connections; a stream on the same event loop would time the generator's own backlog, not the
broker's. This process sleeps between ticks, so the scheduler wakes it promptly, and its parent
starts it at a slightly higher priority (nice -5) when allowed.

Protocol with the parent: the child prints ``ready`` on stdout once subscribed and its first
message came back; on SIGTERM it stops publishing, waits up to a second for the messages still
in flight, writes the record to ``--out`` and prints one JSON line of counters. The record is
``n`` then ``n`` sending times (int64), then ``m`` then ``m`` (sequence, receiving time) pairs.
Bounded: at most ``rate * max_seconds`` messages are recorded; publishing stops there.

Pacing: every millisecond tick sends the messages due since the last one, each with its own
timestamp. If the process was not scheduled for a while, at most ``MAX_BURST_S`` worth are
sent at once and the rest are counted as ``skipped`` (the generator's lateness is not the
broker's latency).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import signal
import struct
import subprocess
import sys
import time
from array import array
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from bench.mqttload import connect_packet, mqtt_string, remaining_length, subscribe_packet

PAYLOAD_SIZE = 64
TICK_S = 0.001
MAX_BURST_S = 0.1
READY_TIMEOUT_S = 20.0
DRAIN_S = 1.0
REPO = Path(__file__).resolve().parent.parent
_HEAD = struct.Struct(">QQ")  # sequence number, sending time
_PAD = b"s" * (PAYLOAD_SIZE - _HEAD.size)


# --------------------------------------------------------------------------- the child


class _Client(asyncio.Protocol):
    """A 3.1.1 client: CONNECT, then (subscriber) SUBSCRIBE and record every PUBLISH."""

    def __init__(self, client_id: str, record: Record | None) -> None:
        loop = asyncio.get_running_loop()
        self.client_id = client_id
        self.record = record
        self.connack: asyncio.Future[None] = loop.create_future()
        self.suback: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(connect_packet(self.client_id))

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in (self.connack, self.suback):
            if not fut.done():
                fut.set_exception(ConnectionError(f"{self.client_id}: closed ({exc})"))
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        n = len(buf)
        i = 0
        while i + 2 <= n:
            length, shift, j = 0, 0, i + 1
            while j < n:
                byte = buf[j]
                j += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
            else:
                break  # the Remaining Length is not all here yet
            end = j + length
            if end > n:
                break
            kind = buf[i] & 0xF0
            if kind == 0x30 and self.record is not None:
                start = j + 2 + (buf[j] << 8 | buf[j + 1])  # QoS 0: no packet id
                self.record.received(_HEAD.unpack_from(buf, start)[0])
            elif kind == 0x20 and not self.connack.done():
                if buf[j + 1]:
                    self.connack.set_exception(ConnectionError(f"CONNACK {buf[j + 1]}"))
                else:
                    self.connack.set_result(None)
            elif kind == 0x90 and not self.suback.done():
                if buf[j + 2] == 0x80:
                    self.suback.set_exception(ConnectionError("SUBSCRIBE refused"))
                else:
                    self.suback.set_result(None)
            i = end
        self.buf = buf[i:]


class Record:
    """Sending times by sequence number, and (sequence, receiving time) pairs."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent = array("q")
        self.recv = array("q")
        self.first_back: asyncio.Event = asyncio.Event()
        # Set once publishing has stopped and every message sent came back.
        self.drained: asyncio.Event = asyncio.Event()
        self.stopped = False

    def received(self, seq: int) -> None:
        self.recv.append(seq)
        self.recv.append(time.perf_counter_ns())
        self.first_back.set()
        if self.stopped and len(self.recv) // 2 >= len(self.sent):
            self.drained.set()

    def stop(self) -> None:
        self.stopped = True
        if len(self.recv) // 2 >= len(self.sent):
            self.drained.set()


async def _stream(port: int, rate: float, limit: int, out: Path) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    record = Record(limit)
    token = secrets.token_hex(4)
    topic = f"bench/stream/{token}"
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _, sub = await loop.create_connection(
        lambda: _Client(f"benchstream{token}s", record), "127.0.0.1", port
    )
    _, pub = await loop.create_connection(
        lambda: _Client(f"benchstream{token}p", None), "127.0.0.1", port
    )
    async with asyncio.timeout(READY_TIMEOUT_S):
        await asyncio.gather(sub.connack, pub.connack)
        assert sub.transport is not None
        sub.transport.write(subscribe_packet(1, topic, 0))
        await sub.suback
    assert pub.transport is not None
    prefix = b"\x30" + remaining_length(2 + len(topic) + PAYLOAD_SIZE) + mqtt_string(topic)
    skipped = 0
    errors: list[str] = []
    ready = False
    base = time.perf_counter_ns()
    per_ns = rate / 1e9
    burst = max(1, int(rate * MAX_BURST_S))
    while not stop.is_set():
        if pub.lost.done() or sub.lost.done():
            errors.append("the broker closed the stream's connection")
            break
        now = time.perf_counter_ns()
        due = int((now - base) * per_ns) - len(record.sent) - skipped
        if due > burst:
            skipped += due - burst
            due = burst
        due = min(due, record.limit - len(record.sent))
        if due > 0:
            parts = []
            for _ in range(due):
                parts.append(prefix + _HEAD.pack(len(record.sent), now) + _PAD)
                record.sent.append(now)
            pub.transport.write(b"".join(parts))
        if not ready and record.first_back.is_set():
            ready = True
            print("ready", flush=True)
        if len(record.sent) >= record.limit:
            errors.append(f"record full ({record.limit} messages): publishing stopped")
            await stop.wait()
            break
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TICK_S):
                await stop.wait()
    # The last messages: wait (bounded) until as many came back as were sent.
    record.stop()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_S):
            await record.drained.wait()
    for client in (pub, sub):
        if client.transport is not None:
            client.transport.write(b"\xe0\x00")
            client.transport.close()
    with out.open("wb") as f:
        f.write(struct.pack("<q", len(record.sent)))
        record.sent.tofile(f)
        f.write(struct.pack("<q", len(record.recv) // 2))
        record.recv.tofile(f)
    return {
        "sent": len(record.sent),
        "received": len(record.recv) // 2,
        "skipped": skipped,
        "errors": errors,
    }


def _child_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--max-seconds", type=float, default=1800.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    limit = max(1, int(args.rate * args.max_seconds))
    try:
        import uvloop

        counters = uvloop.run(_stream(args.port, args.rate, limit, args.out))
    except ImportError:
        counters = asyncio.run(_stream(args.port, args.rate, limit, args.out))
    print(json.dumps(counters), flush=True)
    return 0


# --------------------------------------------------------------------------- the parent


@dataclass
class Latency:
    """Latency of the messages sent within one window of time."""

    sent: int
    received: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    @property
    def lost(self) -> int:
        return self.sent - self.received


@dataclass
class Samples:
    """The whole record of one stream process."""

    sent_ns: array[int]
    latency_ns: array[int]  # by sequence number; -1: never received
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def window(self, start_ns: int, end_ns: int) -> Latency:
        """The messages sent in [start_ns, end_ns)."""
        a = bisect_left(self.sent_ns, start_ns)
        b = bisect_left(self.sent_ns, end_ns)
        got = sorted(x for x in self.latency_ns[a:b] if x >= 0)

        def pick(q: float) -> float | None:
            if not got:
                return None
            return got[min(len(got) - 1, round(q * (len(got) - 1)))] / 1e6

        return Latency(b - a, len(got), pick(0.5), pick(0.99), pick(1.0))


def _read_record(path: Path) -> tuple[array[int], array[int]]:
    sent: array[int] = array("q")
    pairs: array[int] = array("q")
    with path.open("rb") as f:
        (n,) = struct.unpack("<q", f.read(8))
        sent.fromfile(f, n)
        (m,) = struct.unpack("<q", f.read(8))
        pairs.fromfile(f, 2 * m)
    latency: array[int] = array("q", [-1]) * len(sent)
    for k in range(0, len(pairs), 2):
        seq = pairs[k]
        if 0 <= seq < len(sent):
            latency[seq] = pairs[k + 1] - sent[seq]
    return sent, latency


def _preexec() -> None:
    # In the forked child: die with the parent; a little ahead of the busy generator.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, -5)


class LatencyStream:
    """The parent's handle: start the child, wait until it streams, stop it, read it."""

    def __init__(self, port: int, workdir: Path, rate: float = 2000.0, max_s: float = 1800.0):
        self.port = port
        self.rate = rate
        self.max_s = max_s
        self.out = workdir / f"stream-{port}.bin"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.latency_stream",
            "--port",
            str(self.port),
            "--rate",
            str(self.rate),
            "--max-seconds",
            str(self.max_s),
            "--out",
            str(self.out),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=_preexec,
        )
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                line = await self.proc.stdout.readline()
        except TimeoutError:
            line = b""
        if line.strip() != b"ready":
            await self.kill()
            assert self.proc.stderr is not None
            why = (await self.proc.stderr.read(64 * 1024)).decode(errors="replace").strip()
            tail = why.splitlines()[-1] if why else line.decode(errors="replace").strip()
            raise ConnectionError(f"the QoS 0 stream did not start: {tail or 'no output'}")

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()

    async def stop(self) -> Samples:
        """SIGTERM, then the record. Raises ConnectionError if the child failed."""
        proc = self.proc
        if proc is None:
            raise ConnectionError("the QoS 0 stream was not started")
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                out, err = await proc.communicate()
        except TimeoutError:
            await self.kill()
            raise ConnectionError("the QoS 0 stream did not stop") from None
        lines = out.decode(errors="replace").strip().splitlines()
        if proc.returncode != 0 or not lines:
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            raise ConnectionError(f"the QoS 0 stream failed ({proc.returncode}): {tail}")
        counters = json.loads(lines[-1])
        sent, latency = _read_record(self.out)
        with contextlib.suppress(OSError):
            self.out.unlink()
        return Samples(sent, latency, counters["skipped"], counters["errors"])


if __name__ == "__main__":
    raise SystemExit(_child_main())
