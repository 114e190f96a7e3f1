"""Raw-socket asyncio MQTT 3.1.1 load generator.

Design notes (why it looks the way it does):

* No MQTT library and no ThingHub code: every packet is built by hand here, and the
  PUBLISH packets are pre-encoded.  A QoS 0 batch of ``k`` identical-size packets is
  ``(prefix + timestamp + padding) * k``: one bytes multiplication in C, so the cost of
  publishing is per *batch*, not per message.
* ``asyncio.Protocol`` (not streams): ``data_received`` gets whatever the kernel had
  (up to 256 KiB with uvloop) and one tight loop walks every packet in the chunk.
  Streams would add a coroutine switch and a buffer copy per packet.
* Publishers and subscribers live in ONE process on ONE event loop.  The machine has
  two cores; the broker is pinned to one, the generator to the other.  Two generator
  processes would have to share that single core (pure context-switch overhead) and
  would lose the exact, lock-free end-to-end accounting below, which needs the
  publisher to see what the subscribers received.  The null-broker ceiling run shows
  the single process is far from saturated for the rates brokers reach here.
* Pacing (QoS 0): a credit window of *messages in the pipe*, measured end to end:
  ``in_flight = sent * fanout - delivered``.  Publishers only write while
  ``in_flight < window`` and the transport is not paused (write-buffer high-water
  mark).  This keeps the broker running flat out without letting it buffer an
  unbounded backlog (which would measure the broker's queueing, not its throughput,
  and blow up RSS and latency).  Messages a broker drops are written off after a
  stall timeout so the window can never deadlock; they are reported as ``lost``.
* QoS 1: the publisher keeps at most ``ack_window`` PUBLISH unacknowledged (counted
  by PUBACKs, brokers ack in order) and additionally stays inside the end-to-end
  window so a slow subscriber cannot make the broker queue without bound.
* Latency: the publisher packs ``time.perf_counter_ns()`` (CLOCK_MONOTONIC, shared by
  all processes of the machine) into the first 8 payload bytes.  A subscriber decodes
  it only for the first PUBLISH of each read (the oldest in the chunk, so the bias is
  pessimistic) and the sample set is decimated when it reaches a cap, so latency
  measurement costs one decode per read, not per message.
* Every loop is bounded: connects and subscribes have timeouts, the pump writes a
  bounded number of batches per call, the run has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

PAYLOAD_SIZE = 64
KEEPALIVE = 600  # seconds; runs are capped well below that, so no PINGREQ is needed
CONNECT_TIMEOUT = 10.0
SETUP_DEADLINE = 60.0
LATENCY_CAP = 200_000  # samples kept per run before decimating
STALL_WRITE_OFF = 1.0  # seconds without progress before in-flight messages count as lost
TICK = 0.02

DISCONNECT = b"\xe0\x00"
PINGREQ = b"\xc0\x00"
_PAD = bytes(range(PAYLOAD_SIZE - 8))

# 2-byte packet ids and the matching PUBACKs, built once: one index per message
# instead of an int.to_bytes + concatenation in the hot path.
PID_BYTES: list[bytes] = [i.to_bytes(2, "big") for i in range(65536)]
PUBACK_BY_PID: list[bytes] = [b"\x40\x02" + p for p in PID_BYTES]


# --------------------------------------------------------------------------- encoding


def remaining_length(n: int) -> bytes:
    """MQTT variable-length integer (1-4 bytes)."""
    if not 0 <= n < 268_435_456:
        raise ValueError(f"remaining length out of range: {n}")
    out = bytearray()
    while True:
        digit, n = n % 128, n // 128
        if n:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def mqtt_string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack(">H", len(raw)) + raw


def connect_packet(client_id: str, keepalive: int = KEEPALIVE, clean: bool = True) -> bytes:
    """MQTT 3.1.1 CONNECT, no will/credentials; clean session unless ``clean`` is False (a
    persistent session, whose QoS 1/2 messages the broker must keep)."""
    flags = 0x02 if clean else 0x00
    body = mqtt_string("MQTT") + bytes([4, flags]) + struct.pack(">H", keepalive)
    body += mqtt_string(client_id)
    return b"\x10" + remaining_length(len(body)) + body


def subscribe_packet(packet_id: int, topic: str, qos: int) -> bytes:
    body = struct.pack(">H", packet_id) + mqtt_string(topic) + bytes([qos])
    return b"\x82" + remaining_length(len(body)) + body


def publish_prefix(topic: str, qos: int, payload_len: int = PAYLOAD_SIZE) -> bytes:
    """Fixed header + topic of a PUBLISH; the caller appends [packet id] + payload."""
    rl = 2 + len(topic.encode()) + (2 if qos else 0) + payload_len
    return bytes([0x30 | (qos << 1)]) + remaining_length(rl) + mqtt_string(topic)


def client_id(token: str, role: str, index: int) -> str:
    # Alphanumeric and <= 23 chars: the length every MQTT 3.1.1 server must accept.
    return f"bench{token}{role}{index}"


def new_token() -> str:
    return f"{random.getrandbits(24):06x}"


# --------------------------------------------------------------------------- probes


class ProcessProbe(Protocol):
    """What the load run needs to know about the broker process (see brokers.py)."""

    def cpu_seconds(self) -> float: ...

    def rss_kb(self) -> int: ...

    def peak_rss_kb(self) -> int: ...


# --------------------------------------------------------------------------- client


class SetupError(Exception):
    """A client could not connect or subscribe."""


class Client(asyncio.Protocol):
    """One MQTT connection; publisher, subscriber or idle."""

    def __init__(self, run: LoadRun | None, cid: str, clean: bool = True) -> None:
        self.run = run
        self.cid = cid
        self.clean = clean
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.connack: asyncio.Future[int] = loop.create_future()
        self.suback: asyncio.Future[int] | None = None
        self.paused = False
        self.closed = False
        self._buf = b""

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence a cast.
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        # Pause (and stop publishing) once 256 KiB are queued in user space.
        transport.set_write_buffer_limits(high=256 * 1024, low=64 * 1024)
        transport.write(connect_packet(self.cid, clean=self.clean))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        err = SetupError(f"{self.cid}: connection lost ({exc})")
        for fut in (self.connack, self.suback):
            if fut is not None and not fut.done():
                fut.set_exception(err)
        if self.run is not None:
            self.run.lost_connections += 1

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.run is not None:
            self.run.kick()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            with contextlib.suppress(Exception):
                self.transport.write(DISCONNECT)
            self.transport.close()

    async def subscribe(self, topic: str, qos: int) -> None:
        self.suback = asyncio.get_running_loop().create_future()
        self.write(subscribe_packet(1, topic, qos))
        granted = await asyncio.wait_for(self.suback, CONNECT_TIMEOUT)
        if granted == 0x80 or granted < qos:
            raise SetupError(f"{self.cid}: SUBSCRIBE {topic} refused (granted {granted:#x})")

    # -- the hot path
    def data_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        n = len(data)
        i = 0
        pubs = 0
        pubacks = 0
        first = -1
        first_b0 = 0
        acks: list[bytes] | None = None
        while i + 2 <= n:
            rl = data[i + 1]
            if rl < 0x80:
                start = i + 2
            else:
                # Multi-byte remaining length: never the case for 64-byte payloads and
                # short topics, kept for correctness.  At most 4 bytes by the spec.
                rl &= 0x7F
                j = i + 2
                shift = 7
                while j < n and shift <= 21:
                    b = data[j]
                    j += 1
                    rl |= (b & 0x7F) << shift
                    if b < 0x80:
                        break
                    shift += 7
                else:
                    if shift > 21:
                        self._protocol_error("bad remaining length")
                        return
                    break  # length bytes not all here yet
                start = j
            end = start + rl
            if end > n:
                break
            b0 = data[i]
            if b0 & 0xF0 == 0x30:  # PUBLISH
                pubs += 1
                if first < 0:
                    first = start
                    first_b0 = b0
                if b0 & 0x06:  # QoS 1: acknowledge (we never subscribe with QoS 2)
                    p = start + 2 + (data[start] << 8 | data[start + 1])
                    if acks is None:
                        acks = []
                    acks.append(PUBACK_BY_PID[data[p] << 8 | data[p + 1]])
            elif b0 == 0x40:  # PUBACK for our own QoS 1 publishes
                pubacks += 1
            else:
                self._control(b0, data[start:end])
            i = end
        if i < n:
            self._buf = data[i:]
        if acks is not None and self.transport is not None:
            self.transport.write(b"".join(acks))
        run = self.run
        if run is None:
            return
        if pubs:
            if run.measuring:
                run.sample_latency(data, first, first_b0)
            run.on_delivered(pubs)
        if pubacks:
            run.on_puback(self, pubacks)

    def _control(self, b0: int, body: bytes) -> None:
        kind = b0 & 0xF0
        if kind == 0x20:  # CONNACK
            if not self.connack.done():
                self.connack.set_result(body[1] if len(body) >= 2 else 0xFF)
        elif kind == 0x90 and self.suback is not None and not self.suback.done():  # SUBACK
            self.suback.set_result(body[2] if len(body) >= 3 else 0x80)
        # PINGRESP, UNSUBACK, anything else: nothing to do.

    def _protocol_error(self, why: str) -> None:
        if self.run is not None:
            self.run.errors.append(f"{self.cid}: {why}")
        if self.transport is not None:
            self.transport.abort()


# --------------------------------------------------------------------------- publisher


class Publisher:
    """Builds and writes batches of pre-encoded PUBLISH packets."""

    def __init__(self, client: Client, topics: Sequence[str], qos: int, ack_window: int) -> None:
        self.client = client
        self.qos = qos
        self.ack_window = ack_window
        self.unacked = 0
        self.next_pid = 1
        self.prefixes = [publish_prefix(t, qos) for t in topics]
        # Doubled so a round-robin slice never needs to wrap (batch <= len(topics)).
        self._ring = self.prefixes * 2
        self._cursor = 0

    def capacity(self, want: int) -> int:
        if self.client.paused or self.client.closed:
            return 0
        if self.qos:
            return max(0, min(want, self.ack_window - self.unacked))
        return want

    def send(self, k: int) -> None:
        tsp = time.perf_counter_ns().to_bytes(8, "big") + _PAD
        if self.qos:
            pre = self.prefixes[0]
            pid = self.next_pid
            parts = []
            for _ in range(k):
                parts.append(pre + PID_BYTES[pid] + tsp)
                pid = pid + 1 if pid < 65535 else 1
            self.next_pid = pid
            self.unacked += k
            self.client.write(b"".join(parts))
        elif len(self.prefixes) == 1:
            # Same packet k times: a single C-level bytes multiplication.
            self.client.write((self.prefixes[0] + tsp) * k)
        else:
            c = self._cursor
            k = min(k, len(self.prefixes))
            self.client.write(b"".join([p + tsp for p in self._ring[c : c + k]]))
            self._cursor = (c + k) % len(self.prefixes)


# --------------------------------------------------------------------------- run state


@dataclass
class StreamSpec:
    """A publish/subscribe workload."""

    name: str
    pub_topics: list[list[str]]  # per publisher, published round robin
    sub_topics: list[str]  # one subscription per subscriber connection
    qos: int = 0
    fanout: int = 1  # deliveries per published message
    window: int = 2000  # end-to-end messages in flight (all publishers together)
    batch: int = 50  # messages per write
    ack_window: int = 100  # QoS 1: unacknowledged PUBLISH per publisher
    # Subscribers keep persistent sessions (clean session 0) under ids stable across runs, so
    # each run resumes the same sessions instead of leaving one more behind.
    persistent_subs: bool = False


@dataclass
class StreamResult:
    rate: float  # deliveries per second over the measurement window
    sent: int
    delivered: int
    lost: int
    p50_ms: float | None
    p99_ms: float | None
    latency_samples: int
    gen_cpu: float  # % of one core used by this (generator) process
    broker_cpu: float | None
    peak_rss_kb: int | None
    elapsed: float
    errors: list[str] = field(default_factory=list)


class LoadRun:
    """Counters, credit window and pump shared by all clients of one run."""

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self.loop = asyncio.get_running_loop()
        self.publishers: list[Publisher] = []
        self.sent = 0  # messages published
        self.delivered = 0  # PUBLISH received by all subscribers
        self.written_off = 0  # deliveries given up on (dropped by the broker)
        self.lost_connections = 0
        self.errors: list[str] = []
        self.pumping = False
        self.measuring = False
        self.latency = array("q")
        self._lat_stride = 1
        self._lat_reads = 0
        self._kick_pending = False
        self._rr = 0
        self._window_deliveries = spec.window * spec.fanout
        self._batch_deliveries = spec.batch * spec.fanout
        self._last_progress = time.monotonic()
        self._last_delivered = 0

    # in-flight deliveries: published * fanout - received - written off
    def in_flight(self) -> int:
        return self.sent * self.spec.fanout - self.delivered - self.written_off

    def kick(self) -> None:
        """Schedule one pump on the next loop iteration (coalesces many triggers)."""
        if self.pumping and not self._kick_pending:
            self._kick_pending = True
            self.loop.call_soon(self._pump)

    def on_delivered(self, n: int) -> None:
        self.delivered += n
        if self._window_deliveries - self.in_flight() >= self._batch_deliveries:
            self.kick()

    def on_puback(self, client: Client, n: int) -> None:
        for p in self.publishers:
            if p.client is client:
                p.unacked = max(0, p.unacked - n)
        self.kick()

    def sample_latency(self, data: bytes, start: int, b0: int) -> None:
        self._lat_reads += 1
        if self._lat_reads % self._lat_stride:
            return
        off = start + 2 + (data[start] << 8 | data[start + 1]) + (2 if b0 & 0x06 else 0)
        if off + 8 > len(data):
            return
        sent_ns = int.from_bytes(data[off : off + 8], "big")
        self.latency.append(time.perf_counter_ns() - sent_ns)
        if len(self.latency) >= LATENCY_CAP:
            # Keep every other sample and sample half as often from now on.
            self.latency = self.latency[::2]
            self._lat_stride *= 2

    def _pump(self) -> None:
        self._kick_pending = False
        if not self.pumping or not self.publishers:
            return
        spec = self.spec
        fan = spec.fanout
        budget = (self._window_deliveries - self.in_flight()) // fan
        npub = len(self.publishers)
        # Bounded: at most 64 batches per publisher per pump call.
        for _ in range(64 * npub):
            if budget <= 0:
                break
            p = self.publishers[self._rr]
            self._rr = (self._rr + 1) % npub
            k = p.capacity(min(spec.batch, budget))
            # QoS 0: only full batches, so writes stay large (window >= 2 batches).
            if k <= 0 or (not spec.qos and k < spec.batch):
                if all(q.capacity(1) == 0 for q in self.publishers):
                    break
                continue
            p.send(k)
            self.sent += k
            budget -= k

    def tick(self) -> None:
        """Periodic: write off what a broker dropped so the window cannot deadlock."""
        now = time.monotonic()
        if self.delivered != self._last_delivered or self.in_flight() <= 0:
            self._last_delivered = self.delivered
            self._last_progress = now
        elif now - self._last_progress > STALL_WRITE_OFF:
            self.written_off += self.in_flight()
            for p in self.publishers:
                p.unacked = 0
            self._last_progress = now
        self.kick()


# --------------------------------------------------------------------------- helpers


def percentile(sorted_values: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (ns -> ms)."""
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx] / 1e6


async def _gather_bounded(
    factories: Sequence[Callable[[], asyncio.Future[None] | asyncio.Task[None]]],
    concurrency: int,
) -> None:
    """Run coroutine factories with at most ``concurrency`` in flight; first error wins."""
    it = iter(factories)

    async def worker() -> None:
        for f in it:
            await f()

    tasks = [asyncio.create_task(worker()) for _ in range(max(1, concurrency))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()


async def open_client(
    run: LoadRun | None,
    host: str,
    port: int,
    cid: str,
    clients: list[Client],
    clean: bool = True,
) -> Client:
    """TCP connect + CONNECT/CONNACK.

    ``asyncio.timeout`` rather than ``wait_for``: no extra Task per await, which
    matters when idle10k opens 10,000 of these.
    """
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(CONNECT_TIMEOUT):
        _, proto = await loop.create_connection(lambda: Client(run, cid, clean), host, port)
        clients.append(proto)
        rc = await proto.connack
    if rc != 0:
        raise SetupError(f"{cid}: CONNACK return code {rc}")
    return proto


def close_all(clients: Sequence[Client]) -> None:
    for c in clients:
        c.close()


# --------------------------------------------------------------------------- runs


async def run_stream(
    spec: StreamSpec,
    host: str,
    port: int,
    seconds: float,
    warmup: float,
    probe: ProcessProbe | None,
    *,
    pub_port: int | None = None,
    ready: Callable[[], Awaitable[None]] | None = None,
    sub_ports: Sequence[int] = (),
) -> StreamResult:
    """Connect, subscribe, warm up, measure for ``seconds``, disconnect. Publishers connect to
    ``pub_port`` when given (another node of a cluster: bench/cluster.py), subscriber ``i``
    to ``sub_ports[i % len(sub_ports)]`` when given (several nodes), and ``ready`` is
    awaited once every client is connected and subscribed, before the first publish."""
    pub_to = port if pub_port is None else pub_port
    sub_to = list(sub_ports) or [port]
    run = LoadRun(spec)
    clients: list[Client] = []
    token = new_token()
    tick_task: asyncio.Task[None] | None = None
    try:
        subs: list[tuple[Client, str]] = []

        def sub_factory(i: int, topic: str) -> Callable[[], asyncio.Future[None]]:
            async def go() -> None:
                at = sub_to[i % len(sub_to)]
                if spec.persistent_subs:
                    cid = client_id(spec.name.replace("-", "")[:8], "s", i)
                    c = await open_client(run, host, at, cid, clients, clean=False)
                else:
                    c = await open_client(run, host, at, client_id(token, "s", i), clients)
                await c.subscribe(topic, spec.qos)
                subs.append((c, topic))

            return lambda: asyncio.ensure_future(go())

        def pub_factory(i: int, topics: list[str]) -> Callable[[], asyncio.Future[None]]:
            async def go() -> None:
                c = await open_client(run, host, pub_to, client_id(token, "p", i), clients)
                run.publishers.append(Publisher(c, topics, spec.qos, spec.ack_window))

            return lambda: asyncio.ensure_future(go())

        async with asyncio.timeout(SETUP_DEADLINE):
            await _gather_bounded([sub_factory(i, t) for i, t in enumerate(spec.sub_topics)], 64)
            await _gather_bounded([pub_factory(i, t) for i, t in enumerate(spec.pub_topics)], 16)
        # Stable publisher order for round robin.
        run.publishers.sort(key=lambda p: p.client.cid)
        if ready is not None:
            await ready()

        async def ticker() -> None:
            while True:
                await asyncio.sleep(TICK)
                run.tick()

        run.pumping = True
        tick_task = asyncio.create_task(ticker())
        run.kick()
        await asyncio.sleep(warmup)

        # ---- measurement window
        run.latency = array("q")
        run.measuring = True
        d0, s0, w0 = run.delivered, run.sent, run.written_off
        cpu0 = time.process_time()
        bcpu0 = probe.cpu_seconds() if probe else 0.0
        peak = probe.rss_kb() if probe else 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while (left := end - time.perf_counter()) > 0:
            await asyncio.sleep(min(0.25, left))
            if probe:
                peak = max(peak, probe.rss_kb())
        elapsed = time.perf_counter() - t0
        run.measuring = False
        delivered = run.delivered - d0
        sent = run.sent - s0
        lost = run.written_off - w0
        gen_cpu = 100.0 * (time.process_time() - cpu0) / elapsed
        broker_cpu = 100.0 * (probe.cpu_seconds() - bcpu0) / elapsed if probe else None
        if probe:
            peak = max(peak, probe.peak_rss_kb())
        run.pumping = False

        lat = sorted(run.latency)
        if run.lost_connections:
            run.errors.append(f"{run.lost_connections} connection(s) lost during the run")
        return StreamResult(
            rate=delivered / elapsed,
            sent=sent,
            delivered=delivered,
            lost=lost,
            p50_ms=percentile(lat, 0.50) if lat else None,
            p99_ms=percentile(lat, 0.99) if lat else None,
            latency_samples=len(lat),
            gen_cpu=gen_cpu,
            broker_cpu=broker_cpu,
            peak_rss_kb=peak if probe else None,
            elapsed=elapsed,
            errors=run.errors,
        )
    finally:
        run.pumping = False
        if tick_task is not None:
            tick_task.cancel()
        close_all(clients)
        await asyncio.sleep(0.05)  # let the DISCONNECTs and FINs go out


@dataclass
class IdleResult:
    connections: int
    attempted: int
    connects_per_s: float
    kb_per_conn: float | None
    rss_before_kb: int | None
    rss_after_kb: int | None
    peak_rss_kb: int | None
    gen_cpu: float
    broker_cpu: float | None
    elapsed: float
    errors: list[str] = field(default_factory=list)


async def run_idle(
    n: int,
    host: str,
    port: int,
    probe: ProcessProbe | None,
    concurrency: int = 64,
    settle: float = 1.0,
    deadline: float = 120.0,
) -> IdleResult:
    """Open ``n`` idle connections (CONNECT, wait for CONNACK) and keep them open.

    ``concurrency`` connects are in flight at once: 64 stays below mosquitto's listen
    backlog (100); more overflows it on a burst, the kernel drops SYNs and the 1 s SYN
    retransmit halves the measured rate.
    """
    clients: list[Client] = []
    errors: list[str] = []
    token = new_token()
    ok = 0
    queue = iter(range(n))

    async def worker() -> None:
        nonlocal ok
        for i in queue:
            try:
                await open_client(None, host, port, client_id(token, "i", i), clients)
                ok += 1
            except (OSError, SetupError, TimeoutError) as e:
                if len(errors) < 5:
                    errors.append(f"connect {i}: {e!r}")
                if len(errors) >= 5:
                    return  # the broker is refusing; stop hammering it

    try:
        rss_before = probe.rss_kb() if probe else None
        cpu0 = time.process_time()
        bcpu0 = probe.cpu_seconds() if probe else 0.0
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        try:
            async with asyncio.timeout(deadline):
                await asyncio.gather(*tasks)
        except TimeoutError:
            errors.append(f"deadline of {deadline:.0f}s reached")
        finally:
            for t in tasks:
                t.cancel()
        elapsed = time.perf_counter() - t0
        gen_cpu = 100.0 * (time.process_time() - cpu0) / elapsed
        broker_cpu = 100.0 * (probe.cpu_seconds() - bcpu0) / elapsed if probe else None
        await asyncio.sleep(settle)  # let the broker finish allocating per-connection state
        rss_after = probe.rss_kb() if probe else None
        alive = sum(1 for c in clients if not c.closed)
        if alive < ok:
            errors.append(f"{ok - alive} connection(s) closed by the broker")
        kb = (
            (rss_after - rss_before) / ok
            if rss_after is not None and rss_before is not None and ok
            else None
        )
        return IdleResult(
            connections=ok,
            attempted=n,
            connects_per_s=ok / elapsed if elapsed > 0 else 0.0,
            kb_per_conn=kb,
            rss_before_kb=rss_before,
            rss_after_kb=rss_after,
            peak_rss_kb=probe.peak_rss_kb() if probe else None,
            gen_cpu=gen_cpu,
            broker_cpu=broker_cpu,
            elapsed=elapsed,
            errors=errors,
        )
    finally:
        for c in clients:
            if c.transport is not None and not c.closed:
                c.transport.abort()  # 10k DISCONNECTs are pointless; RST is cheaper
        await asyncio.sleep(0.05)
