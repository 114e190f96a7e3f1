"""AWS ``Publish`` over HTTP: boto3-shaped requests into the hub, one MQTT 5 subscriber out.

    .venv/bin/python -m bench.http_publish [--seconds 5] [--connections 8] [--json FILE]
    .venv/bin/python -m bench.http_publish --target 127.0.0.1:8080:1883   # a running hub

What is measured (target: >= 5,000 requests/s on this machine):

* ``publish``: ``POST /topics/{topic}`` at QoS 0, signed exactly as botocore signs it
  (``SigV4Auth``, service ``iotdata``; reference ``aws-iot-data-api.md`` §2 and §4), sent
  over ``--connections`` keep-alive HTTP/1.1 connections, one request outstanding on each
  (closed loop). One MQTT 5 subscriber (raw socket, no library) receives every message.
  Requests are signed *before* the run: signing costs the generator, not the hub. Every
  request of a run carries the same payload and signature, except a probe every
  ``PROBE_EVERY`` requests, signed with its own numbered payload: its request-to-receipt
  latency (request written -> PUBLISH read by the subscriber) gives p50/p99.
* ``healthz``: ``GET /healthz``, the hub's do-nothing endpoint, with the same connections
  and duration in the same run: what the HTTP stack alone costs.

The hub is started as ``bench/brokers.py`` starts it (a child process on free ports), with
``THINGHUB_ROOT_ACCESS_KEY_ID``/``_SECRET`` set so the generator knows the root key.
``run(seconds)`` returns a dict for ``python -m bench``; ``measure(target, seconds)`` runs
against a hub that is already up (tests). Like the rest of the harness, it never imports
ThingHub: it talks HTTP and MQTT to whatever listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import struct
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast
from urllib.parse import quote

from bench import brokers
from bench.mqttload import mqtt_string, remaining_length

PAYLOAD_SIZE = 64
PROBE_EVERY = 50
MAX_PROBES = 20_000
REGION = "us-east-1"
T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    host: str
    http_port: int
    mqtt_port: int
    key_id: str
    secret: str


# --------------------------------------------------------------------------- requests


def signed_request(target: Target, method: str, path: str, body: bytes) -> bytes:
    """The bytes of one HTTP/1.1 request signed by botocore's SigV4Auth, as boto3 sends it
    (no Content-Type, Host with the port, X-Amz-Date, Authorization)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    netloc = f"{target.host}:{target.http_port}"
    request = AWSRequest(method=method, url=f"http://{netloc}{path}", data=body)
    request.headers["Host"] = netloc
    SigV4Auth(Credentials(target.key_id, target.secret), "iotdata", REGION).add_auth(request)
    lines = [f"{method} {path} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in request.headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def plain_request(target: Target, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {target.host}:{target.http_port}\r\n\r\n".encode()


def probe_payload(index: int) -> bytes:
    head = b"probe:%08d:" % index
    return head + b"p" * (PAYLOAD_SIZE - len(head))


# --------------------------------------------------------------------------- subscriber


class Subscriber(asyncio.Protocol):
    """A raw MQTT client (5 by default, or 3.1.1): CONNECT (with credentials when given),
    SUBSCRIBE at QoS 0, then count PUBLISH packets and, if ``timed``, time the probes."""

    def __init__(
        self,
        topic: str,
        sent_at: dict[int, int],
        *,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        version: int = 5,
        timed: bool = True,
    ) -> None:
        self.topic = topic
        self.sent_at = sent_at
        self.client_id = client_id or f"benchhttp{secrets.token_hex(4)}"
        self.username = username
        self.password = password
        self.version = version
        self.timed = timed
        self.buffer = bytearray()
        self.received = 0
        self.latencies_ns: list[int] = []
        self.connected = asyncio.get_running_loop().create_future()
        self.subscribed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = transport = cast(asyncio.Transport, transport)
        flags = 0x02  # clean start / clean session
        if self.username is not None:
            flags |= 0x80
        if self.password is not None:
            flags |= 0x40
        # Keep alive 0; MQTT 5 adds an empty property list.
        body = mqtt_string("MQTT") + bytes([self.version, flags]) + struct.pack(">H", 0)
        if self.version == 5:
            body += b"\x00"
        body += mqtt_string(self.client_id)
        if self.username is not None:
            body += mqtt_string(self.username)
        if self.password is not None:
            body += mqtt_string(self.password)
        transport.write(b"\x10" + remaining_length(len(body)) + body)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while len(buf) >= 2:
            length, used = 0, 1
            multiplier = 1
            while True:
                if used >= len(buf):
                    return
                byte = buf[used]
                used += 1
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                if not byte & 0x80:
                    break
            end = used + length
            if len(buf) < end:
                return
            kind = buf[0] >> 4
            if kind == 3:
                self._publish(bytes(buf[used:end]), (buf[0] >> 1) & 3)
            elif kind == 2 and not self.connected.done():
                # v5 reason code / v3.1.1 return code: the second byte of both.
                reason = buf[used + 1] if length >= 2 else 0
                if reason:
                    self.connected.set_exception(
                        ConnectionError(f"CONNACK refused: 0x{reason:02x}")
                    )
                else:
                    self.connected.set_result(None)
            elif kind == 9 and not self.subscribed.done():
                self.subscribed.set_result(None)
            del buf[:end]

    def connection_lost(self, exc: Exception | None) -> None:
        for waiter in (self.connected, self.subscribed):
            if not waiter.done():
                waiter.set_exception(ConnectionError("the hub closed the MQTT connection"))

    def _publish(self, packet: bytes, qos: int) -> None:
        now = time.perf_counter_ns()
        self.received += 1
        if not self.timed:
            return
        topic_len = (packet[0] << 8) | packet[1]
        index = 2 + topic_len + (2 if qos else 0)
        if self.version == 5:
            # A property length (variable byte integer) before the payload.
            props, step = 0, 1
            while True:
                byte = packet[index]
                index += 1
                props += (byte & 0x7F) * step
                step *= 128
                if not byte & 0x80:
                    break
            index += props
        payload = packet[index:]
        if payload.startswith(b"probe:"):
            sent = self.sent_at.pop(int(payload[6:14]), None)
            if sent is not None:
                self.latencies_ns.append(now - sent)

    async def subscribe(self) -> None:
        await asyncio.wait_for(self.connected, 10)
        assert self.transport is not None
        # SUBSCRIBE: packet id 1, (v5: no properties,) options byte = QoS 0.
        props = b"\x00" if self.version == 5 else b""
        body = struct.pack(">H", 1) + props + mqtt_string(self.topic) + b"\x00"
        self.transport.write(b"\x82" + remaining_length(len(body)) + body)
        await asyncio.wait_for(self.subscribed, 10)


# --------------------------------------------------------------------------- HTTP load


class CpuProbe(Protocol):
    def cpu_seconds(self) -> float: ...


@dataclass
class Phase:
    name: str
    requests: int = 0
    errors: int = 0
    elapsed: float = 0.0
    response_ns: list[int] = field(default_factory=list)
    first_error: str = ""
    #: the pre-signed pool ran out before the time was up (the figures cover what was sent).
    exhausted: bool = False
    hub_cpu: float | None = None  # % of one core over the phase
    gen_cpu: float | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "rate": round(self.requests / self.elapsed, 1) if self.elapsed else 0.0,
            "response_p50_ms": _ms(_percentile(self.response_ns, 0.50)),
            "response_p99_ms": _ms(_percentile(self.response_ns, 0.99)),
            "hub_cpu": self.hub_cpu,
            "gen_cpu": self.gen_cpu,
            **({"first_error": self.first_error} if self.first_error else {}),
            **({"pool_exhausted": True} if self.exhausted else {}),
        }


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return status, body


def _ok(status: int, body: bytes) -> bool:
    return status == 200


async def _load(
    target: Target,
    phase: Phase,
    seconds: float,
    connections: int,
    next_request: Callable[[], bytes | None],
    *,
    ok: Callable[[int, bytes], bool] = _ok,
    hub: CpuProbe | None = None,
) -> None:
    """``connections`` closed loops of one request each for ``seconds``; a connection stops
    early when ``next_request`` returns None (its pool of signed requests is used up)."""
    started = time.monotonic()
    deadline = started + seconds
    cpu0 = hub.cpu_seconds() if hub is not None else 0.0
    gen0 = time.process_time()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(target.host, target.http_port)
        try:
            while time.monotonic() < deadline:
                request = next_request()
                if request is None:
                    phase.exhausted = True
                    break
                t0 = time.perf_counter_ns()
                writer.write(request)
                status, body = await _read_response(reader)
                if len(phase.response_ns) < 200_000:
                    phase.response_ns.append(time.perf_counter_ns() - t0)
                phase.requests += 1
                if not ok(status, body):
                    phase.errors += 1
                    if not phase.first_error:
                        phase.first_error = f"{status} {body[:300]!r}"
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    phase.elapsed = time.monotonic() - started
    if phase.elapsed > 0:
        if hub is not None:
            phase.hub_cpu = round(100 * (hub.cpu_seconds() - cpu0) / phase.elapsed, 1)
        phase.gen_cpu = round(100 * (time.process_time() - gen0) / phase.elapsed, 1)


async def measure_healthz(
    target: Target, seconds: float, connections: int, hub: CpuProbe | None = None
) -> Phase:
    """The do-nothing endpoint (``GET /healthz``), same connections and duration."""
    health = plain_request(target, "/healthz")
    baseline = Phase("healthz")
    await _load(target, baseline, seconds, connections, lambda: health, hub=hub)
    return baseline


async def wait_for(done: Callable[[], bool], limit_s: float = 1.0) -> None:
    """Let the last QoS 0 messages arrive (bounded; QoS 0 may be dropped)."""
    for _ in range(max(1, int(limit_s / 0.01))):
        if done():
            return
        await asyncio.sleep(0.01)


async def _measure(
    target: Target,
    seconds: float,
    connections: int,
    hub: CpuProbe | None = None,
    warmup: float = 0.0,
    baseline_seconds: float | None = None,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    topic = f"bench/http/{secrets.token_hex(4)}"
    path = "/topics/" + quote(topic, safe="-._~")
    sent_at: dict[int, int] = {}
    _, subscriber = await loop.create_connection(
        lambda: Subscriber(topic, sent_at), target.host, target.mqtt_port
    )
    await subscriber.subscribe()

    fixed = signed_request(target, "POST", path, b"x" * PAYLOAD_SIZE)
    probes = [
        signed_request(target, "POST", path, probe_payload(i))
        for i in range(min(MAX_PROBES, int(seconds * 20_000 / PROBE_EVERY) + 10))
    ]
    counter = 0

    def next_publish() -> bytes:
        nonlocal counter
        counter += 1
        index = counter // PROBE_EVERY
        if counter % PROBE_EVERY == 0 and index < len(probes):
            sent_at[index] = time.perf_counter_ns()
            return probes[index]
        return fixed

    baseline = await measure_healthz(target, baseline_seconds or seconds, connections, hub)
    if warmup > 0:
        await _load(target, Phase("warm-up"), warmup, connections, lambda: fixed)
        await asyncio.sleep(0.2)
        subscriber.received = 0
    publish = Phase("publish")
    await _load(target, publish, seconds, connections, next_publish, hub=hub)
    await wait_for(lambda: subscriber.received >= publish.requests - publish.errors)
    assert subscriber.transport is not None
    subscriber.transport.close()
    latencies = sorted(subscriber.latencies_ns)
    result = publish.summary()
    result.update(
        delivered=subscriber.received,
        probes=len(latencies),
        receipt_p50_ms=_ms(_percentile(latencies, 0.50)),
        receipt_p99_ms=_ms(_percentile(latencies, 0.99)),
    )
    return {
        "scenario": "aws-publish",
        "seconds": seconds,
        "connections": connections,
        "payload_bytes": PAYLOAD_SIZE,
        "publish": result,
        "healthz": baseline.summary(),
        "notes": [note for note in [generator_note("Publish", result)] if note],
    }


def generator_note(name: str, phase: dict[str, Any]) -> str | None:
    """The load generator's own ceiling for a phase, from its CPU use: this closed loop of
    pre-signed requests, using X% of its core at R requests/s, could send about R * 100 / X
    (so a hub figure well below that is the hub's, not the generator's)."""
    cpu, rate = phase.get("gen_cpu"), phase.get("rate")
    if not cpu or not rate:
        return None
    # Rounded to 1,000 (an estimate), so that runs alike print one note.
    ceiling = round(rate * 100 / cpu, -3)
    return f"generator: its own ceiling for {name} is about {ceiling:,.0f} req/s (from its CPU use)"


def _percentile(values: list[int], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def _ms(ns: float | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 3)


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """uvloop when available, as the hub and ``python -m bench`` use."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def measure(target: Target, seconds: float = 5.0, connections: int = 8) -> dict[str, Any]:
    """Measure against a hub that is already running."""
    return run_loop(_measure(target, seconds, connections))


# --------------------------------------------------------------------------- the hub


class KeyedThingHub(brokers.ThingHub):
    """bench/brokers.py's ThingHub, started with a known root access key and extra
    environment (the raised rate limits)."""

    def __init__(
        self,
        cpu: int | None,
        key_id: str,
        secret: str,
        extra_env: dict[str, str] | None = None,
        binary: str | None = None,
    ) -> None:
        super().__init__(cpu, binary)
        self.key_id = key_id
        self.secret = secret
        self.extra_env = dict(extra_env or {})

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["THINGHUB_ROOT_ACCESS_KEY_ID"] = self.key_id
        env["THINGHUB_ROOT_ACCESS_KEY_SECRET"] = self.secret
        # The subscriber connects anonymously; anonymous clients live in the root account.
        env["THINGHUB_MQTT_ALLOW_ANONYMOUS"] = "true"
        env.setdefault("THINGHUB_MQTT_TLS_PORT", "0")  # a free port: runs must not clash
        env.update(self.extra_env)
        return env


# The documented per-account limits (20,000 Publish/s) would not bind here, but a bench
# must never measure a throttle: raised, and said so in the output.
RATE_LIMITS = {"THINGHUB_API_AWS_RATE_LIMITS": "Publish=1000000"}


def limits_note(env: dict[str, str]) -> str:
    return "rate limits raised for the bench: " + "; ".join(
        f"{name}={value}" for name, value in env.items()
    )


def run(
    seconds: float = 5.0,
    connections: int = 8,
    pin: bool = True,
    *,
    warmup: float = 0.0,
    binary: str | None = None,
    baseline_seconds: float | None = None,
    cpus: tuple[int | None, int | None] | None = None,
) -> dict[str, Any]:
    """Start a hub, measure, stop it; the dict for ``python -m bench``. The do-nothing
    endpoint is measured for ``baseline_seconds`` (default: ``seconds``)."""
    # (hub cpu, generator cpu); a caller that has pinned itself already passes its plan.
    broker_cpu, generator_cpu = cpus if cpus is not None else brokers.cpu_plan(pin)
    key_id = "AKIDBENCH" + secrets.token_hex(6).upper()
    hub = KeyedThingHub(broker_cpu, key_id, secrets.token_urlsafe(30), RATE_LIMITS, binary)
    hub.start()
    try:
        if generator_cpu is not None:
            os.sched_setaffinity(0, {generator_cpu})
        target = Target(brokers.HOST, hub.http_port, hub.port, hub.key_id, hub.secret)
        result = run_loop(
            _measure(target, seconds, connections, hub.probe, warmup, baseline_seconds)
        )
        result["peak_rss_kb"] = hub.probe.peak_rss_kb() if hub.probe else None
        result["broker"] = "thinghub"
        result["at"] = datetime.now(UTC).isoformat(timespec="seconds")
        result["notes"].append(limits_note(RATE_LIMITS))
        return result
    finally:
        hub.stop()


def describe(result: dict[str, Any]) -> str:
    p, h = result["publish"], result["healthz"]
    ratio = p["rate"] / h["rate"] if h["rate"] else 0.0
    lines = [
        f"aws-publish: {p['rate']:,.0f} req/s (QoS 0, {result['connections']} keep-alive "
        f"connections, {p['errors']} errors), request-to-receipt p50 {p['receipt_p50_ms']} ms "
        f"p99 {p['receipt_p99_ms']} ms ({p['probes']} probes, {p['delivered']} delivered), "
        f"hub CPU {_pct(p['hub_cpu'])}",
        f"healthz:     {h['rate']:,.0f} req/s (do-nothing endpoint, same run), response "
        f"p50 {h['response_p50_ms']} ms p99 {h['response_p99_ms']} ms, hub CPU "
        f"{_pct(h['hub_cpu'])}; Publish/healthz = {ratio:.2f}",
    ]
    lines += [f"note: {note}" for note in result.get("notes", [])]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.0, help="publish before measuring")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--no-pin", action="store_true", help="do not pin hub and generator")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument(
        "--target",
        metavar="HOST:HTTP_PORT:MQTT_PORT",
        help="measure a hub that is already running (key from THINGHUB_ROOT_ACCESS_KEY_*)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 300 or not 1 <= args.connections <= 1000:
        parser.error("--seconds must be in (0, 300] and --connections in [1, 1000]")
    if args.target:
        host, http_port, mqtt_port = args.target.rsplit(":", 2)
        target = Target(
            host,
            int(http_port),
            int(mqtt_port),
            os.environ["THINGHUB_ROOT_ACCESS_KEY_ID"],
            os.environ["THINGHUB_ROOT_ACCESS_KEY_SECRET"],
        )
        result = measure(target, args.seconds, args.connections)
    else:
        try:
            result = run(args.seconds, args.connections, pin=not args.no_pin, warmup=args.warmup)
        finally:
            brokers.stop_all()
    print(describe(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["publish"]["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
