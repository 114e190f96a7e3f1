"""``python -m bench.backlog``: a large backlog of queued messages, and a restart under it.

Issue 5's target: with a million QoS 1 messages queued for offline persistent sessions, the
hub restarts to ready in at most 10 s, and its memory does not grow with the queue length
(queues are read from disk as needed).

1. Start ``thinghub serve`` on an empty data directory (queue bounds raised so nothing drops).
2. ``--sessions`` persistent sessions (MQTT 3.1.1, clean session 0) subscribe to a topic each
   at QoS 1, then disconnect: they are offline from here on.
3. Publishers send ``--messages`` QoS 1 messages round-robin over those topics, as fast as
   PUBACKs allow (each PUBACK means the message is on disk for its session). The hub's RSS is
   sampled as the backlog grows.
4. The hub is killed with SIGKILL (a crash, not a clean stop) and started again on the same
   directory; the time from spawn to its ``ready`` line is the restart time.
5. One session comes back and drains its whole queue (count and order checked), which shows
   the backlog is really there and how fast a page-by-page drain runs.

Figures are printed with the machine they came from. mosquitto is not compared here: it keeps
queued messages in memory and saves them only every 30 minutes by default ("Why").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.brokers import TreeProbe, free_port, machine_info
from bench.mqttload import (
    PID_BYTES,
    connect_packet,
    publish_prefix,
    subscribe_packet,
)

HOST = "127.0.0.1"
READY = re.compile(rb"ready mqtt=[\d.]+:(\d+)")
PAYLOAD = 64
WINDOW = 200  # unacknowledged QoS 1 publishes per publisher connection
PUBLISHERS = 4


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the hub


class Hub:
    """``thinghub serve`` as a child process on one data directory, restartable."""

    def __init__(self, binary: str, data_dir: Path, queue_limit: int) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.port = free_port()
        self.http_port = free_port()
        self.queue_limit = queue_limit
        self.proc: subprocess.Popen[bytes] | None = None
        self.probe: TreeProbe | None = None

    def start(self) -> float:
        """Start it and return the seconds from spawn to its ready line."""
        env = dict(os.environ)
        env.update(
            THINGHUB_MQTT_ALLOW_ANONYMOUS="true",
            THINGHUB_MQTT_MAX_QUEUED_MESSAGES=str(self.queue_limit),
            THINGHUB_MQTT_MAX_QUEUED_BYTES=str(1 << 40),
            THINGHUB_MQTT_TLS_PORT="0",  # a free port: runs must not clash
        )
        cmd = [
            self.binary, "serve", "--host", HOST, "--mqtt-port", str(self.port),
            "--http-port", str(self.http_port), "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        began = time.monotonic()
        self.proc = proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        assert proc.stdout is not None
        seen: list[bytes] = []
        for line in proc.stdout:
            seen.append(line)
            if READY.search(line):
                break
        else:
            proc.wait()
            raise RuntimeError("the hub did not start: " + b"".join(seen[-5:]).decode())
        took = time.monotonic() - began
        # Keep reading its output so it never blocks on a full pipe.
        asyncio.get_running_loop().run_in_executor(None, _drain, proc)
        self.probe = TreeProbe(proc.pid)
        return took

    def rss_mb(self) -> float:
        assert self.probe is not None
        return self.probe.rss_kb() / 1024

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _drain(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    for _line in proc.stdout:
        pass


# --------------------------------------------------------------------------- MQTT


class Conn:
    """A raw MQTT 3.1.1 connection: packets in, one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, client_id: str, clean: bool) -> Conn:
        reader, writer = await asyncio.open_connection(HOST, port)
        conn = cls(reader, writer)
        writer.write(connect_packet(client_id, keepalive=0, clean=clean))
        kind, body = await conn.packet()
        if kind != 0x20 or body[1] != 0:
            raise RuntimeError(f"CONNECT of {client_id} refused: {kind:#x} {body!r}")
        return conn

    async def packet(self) -> tuple[int, bytes]:
        first = (await self.reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            byte = (await self.reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.write(b"\xe0\x00")  # DISCONNECT
        self.writer.close()


async def make_sessions(port: int, sessions: int, qos: int) -> list[str]:
    topics = []
    for i in range(sessions):
        conn = await Conn.open(port, f"backlog{i}", clean=False)
        topic = f"backlog/{i}"
        conn.writer.write(subscribe_packet(1, topic, qos))
        kind, body = await conn.packet()
        if kind != 0x90 or body[2] != qos:
            raise RuntimeError(f"SUBSCRIBE refused: {body!r}")
        conn.close()
        topics.append(topic)
    return topics


async def publish_all(
    port: int,
    topics: list[str],
    messages: int,
    qos: int,
    hub: Hub,
    samples: list[tuple[int, float]],
) -> float:
    """Publish ``messages`` messages at ``qos`` round-robin over ``topics`` (payload: the
    message's number on its topic, padded); returns the seconds it took. Each topic has one
    publisher (MQTT orders messages per publisher and topic). Samples the hub's RSS."""
    prefixes = [publish_prefix(t, qos, PAYLOAD) for t in topics]
    acked = 0
    step = max(1, messages // 10)
    publishers = min(PUBLISHERS, len(topics))

    async def publisher(index: int) -> None:
        nonlocal acked
        mine = list(range(index, len(topics), publishers))
        share = sum(-(-(messages - t) // len(topics)) for t in mine)  # messages n with n % T == t
        conn = await Conn.open(port, f"backlogpub{index}", clean=True)
        credit = asyncio.Semaphore(WINDOW)
        pid = 0

        async def reader() -> None:
            nonlocal acked
            while True:
                kind, body = await conn.packet()
                if kind == 0x50:  # PUBREC: release it (QoS 2)
                    conn.writer.write(b"\x62\x02" + body[:2])
                elif kind in (0x40, 0x70):  # PUBACK, PUBCOMP: done
                    credit.release()
                    acked += 1
                    if acked % step == 0:
                        samples.append((acked, hub.rss_mb()))

        task = asyncio.create_task(reader())
        try:
            for n in range(share):
                await credit.acquire()
                pid = pid % 65535 + 1
                topic = mine[n % len(mine)]
                body = str(n // len(mine)).encode().ljust(PAYLOAD, b".")
                conn.writer.write(prefixes[topic] + PID_BYTES[pid] + body)
                if credit.locked():  # the window is full: let the socket take it
                    await conn.writer.drain()
            for _ in range(WINDOW):
                await credit.acquire()  # every PUBACK in
        finally:
            task.cancel()
            conn.close()

    began = time.monotonic()
    await asyncio.gather(*(publisher(i) for i in range(publishers)))
    return time.monotonic() - began


async def drain_one(port: int, expected: int) -> float:
    """Resume session 0 and take its whole queue (PUBACK, or PUBREC then PUBCOMP); checks
    count and order."""
    conn = await Conn.open(port, "backlog0", clean=False)
    began = time.monotonic()
    seq = 0
    while seq < expected:
        kind, body = await asyncio.wait_for(conn.packet(), 30)
        if kind == 0x62:  # PUBREL
            conn.writer.write(b"\x70\x02" + body[:2])
            continue
        if kind & 0xF0 != 0x30:
            continue
        topic_len = struct.unpack(">H", body[:2])[0]
        pid = body[2 + topic_len : 4 + topic_len]
        payload = body[4 + topic_len :]
        got = int(payload.rstrip(b"."))
        if kind & 0x08:  # DUP: a resend of one already counted
            continue
        if got != seq:
            raise RuntimeError(f"session 0: expected message {seq}, got {got}")
        seq += 1
        conn.writer.write((b"\x50\x02" if kind & 0x06 == 0x04 else b"\x40\x02") + pid)
    took = time.monotonic() - began
    conn.close()
    return took


# --------------------------------------------------------------------------- the run


@dataclass
class Result:
    messages: int
    sessions: int
    qos: int
    fill_s: float = 0.0
    rss_samples: list[tuple[int, float]] = field(default_factory=list)
    restart_s: float = 0.0
    rss_empty_mb: float = 0.0
    rss_after_restart_mb: float = 0.0
    db_mb: float = 0.0
    drain_s: float = 0.0
    drained: int = 0

    def to_json(self) -> dict[str, Any]:
        return self.__dict__


async def run(binary: str, messages: int, sessions: int, qos: int, workdir: Path) -> Result:
    result = Result(messages, sessions, qos)
    per_session = -(-messages // sessions)
    hub = Hub(binary, workdir / "data", queue_limit=per_session + 1000)
    hub.start()
    try:
        result.rss_empty_mb = hub.rss_mb()
        topics = await make_sessions(hub.port, sessions, qos)
        log(f"backlog: {sessions} offline sessions; publishing {messages:,} QoS {qos} messages")
        result.fill_s = await publish_all(hub.port, topics, messages, qos, hub, result.rss_samples)
        log(f"backlog: filled in {result.fill_s:.1f} s; killing the hub (SIGKILL)")
        hub.kill()
        db_bytes = sum(p.stat().st_size for p in (workdir / "data").glob("broker.db*"))
        result.db_mb = db_bytes / (1 << 20)
        result.restart_s = hub.start()
        result.rss_after_restart_mb = hub.rss_mb()
        log(f"backlog: ready again in {result.restart_s:.2f} s")
        result.drained = messages // sessions + (1 if messages % sessions else 0)
        result.drain_s = await drain_one(hub.port, result.drained)
    finally:
        hub.stop()
    return result


def render(r: Result, machine: dict[str, str]) -> str:
    lines = [
        f"## backlog: {r.messages:,} QoS {r.qos} messages queued for {r.sessions} offline sessions",
        "",
        f"Machine: {machine['cpu']} x{machine['cores']}, {machine['memory']}, "
        f"{machine['kernel']}, {machine['python']}, {machine['event_loop']}",
        "",
        "| figure | value |",
        "|---|---|",
        f"| fill (publish, each PUBACK on disk) | {r.fill_s:.1f} s, "
        f"{r.messages / r.fill_s:,.0f} msgs/s |",
        f"| broker.db (+ WAL) | {r.db_mb:,.0f} MB |",
        f"| restart after SIGKILL, spawn to ready | {r.restart_s:.2f} s (target <= 10 s) |",
        f"| hub RSS, empty | {r.rss_empty_mb:.1f} MB |",
    ]
    for count, rss in r.rss_samples:
        lines.append(f"| hub RSS with {count:,} queued | {rss:.1f} MB |")
    lines += [
        f"| hub RSS after restart, {r.messages:,} queued | {r.rss_after_restart_mb:.1f} MB |",
        f"| drain one session ({r.drained:,} msgs, order checked) | {r.drain_s:.1f} s, "
        f"{r.drained / r.drain_s:,.0f} msgs/s |",
    ]
    growth = [rss for _c, rss in r.rss_samples]
    if len(growth) >= 2:
        lines.append(
            f"| RSS growth from {r.rss_samples[0][0]:,} to {r.rss_samples[-1][0]:,} queued | "
            f"{growth[-1] - growth[0]:+.1f} MB (median sample {statistics.median(growth):.1f} MB)"
            " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.backlog", description=__doc__)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--qos", type=int, choices=(1, 2), default=1, help="publish and subscribe QoS")
    ap.add_argument("--thinghub", help="ThingHub executable (default: next to this python)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON to FILE")
    args = ap.parse_args(argv)
    if args.messages < args.sessions or args.sessions < 1:
        ap.error("--messages must be at least --sessions, which must be at least 1")
    local = Path(sys.executable).parent / "thinghub"
    binary = args.thinghub or (str(local) if local.exists() else shutil.which("thinghub"))
    if not binary:
        ap.error("thinghub executable not found")
    with tempfile.TemporaryDirectory(prefix="bench-backlog-") as tmp:
        result = asyncio.run(run(binary, args.messages, args.sessions, args.qos, Path(tmp)))
    print(render(result, machine_info()))
    if args.json:
        args.json.write_text(json.dumps(result.to_json(), indent=2))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
