"""AWS ``Publish`` over HTTP: boto3-shaped requests into the hub, one MQTT 5 subscriber out.

    .venv/bin/python -m bench.http_publish [--seconds 5] [--connections 8] [--json FILE]
    .venv/bin/python -m bench.http_publish --target 127.0.0.1:8080:1883   # a running hub

What is measured (issue 4 target: >= 5,000 requests/s on this machine):

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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench import brokers
from bench.mqttload import mqtt_string, remaining_length

PAYLOAD_SIZE = 64
PROBE_EVERY = 50
MAX_PROBES = 20_000
REGION = "us-east-1"


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
    """A raw MQTT 5 client: CONNECT, SUBSCRIBE at QoS 0, then count PUBLISH packets and time
    the probes."""

    def __init__(self, topic: str, sent_at: dict[int, int]) -> None:
        self.topic = topic
        self.sent_at = sent_at
        self.buffer = bytearray()
        self.received = 0
        self.latencies_ns: list[int] = []
        self.connected = asyncio.get_running_loop().create_future()
        self.subscribed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        client_id = f"benchhttp{secrets.token_hex(4)}"
        # v5 CONNECT: clean start, keep alive 0, empty properties.
        body = mqtt_string("MQTT") + bytes([5, 0x02]) + struct.pack(">H", 0) + b"\x00"
        body += mqtt_string(client_id)
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
        topic_len = (packet[0] << 8) | packet[1]
        index = 2 + topic_len + (2 if qos else 0)
        # MQTT 5: a property length (variable byte integer) before the payload.
        props, step = 0, 1
        while True:
            byte = packet[index]
            index += 1
            props += (byte & 0x7F) * step
            step *= 128
            if not byte & 0x80:
                break
        payload = packet[index + props :]
        if payload.startswith(b"probe:"):
            sent = self.sent_at.pop(int(payload[6:14]), None)
            if sent is not None:
                self.latencies_ns.append(now - sent)

    async def subscribe(self) -> None:
        await asyncio.wait_for(self.connected, 10)
        assert self.transport is not None
        # v5 SUBSCRIBE: packet id 1, no properties, options byte = QoS 0.
        body = struct.pack(">H", 1) + b"\x00" + mqtt_string(self.topic) + b"\x00"
        self.transport.write(b"\x82" + remaining_length(len(body)) + body)
        await asyncio.wait_for(self.subscribed, 10)


# --------------------------------------------------------------------------- HTTP load


@dataclass
class Phase:
    name: str
    requests: int = 0
    errors: int = 0
    elapsed: float = 0.0
    response_ns: list[int] = field(default_factory=list)
    first_error: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "rate": round(self.requests / self.elapsed, 1) if self.elapsed else 0.0,
            "response_p50_ms": _ms(_percentile(self.response_ns, 0.50)),
            "response_p99_ms": _ms(_percentile(self.response_ns, 0.99)),
            **({"first_error": self.first_error} if self.first_error else {}),
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


async def _load(
    target: Target,
    phase: Phase,
    seconds: float,
    connections: int,
    next_request: Callable[[], bytes],
) -> None:
    deadline = time.monotonic() + seconds
    started = time.monotonic()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(target.host, target.http_port)
        try:
            while time.monotonic() < deadline:
                request = next_request()
                t0 = time.perf_counter_ns()
                writer.write(request)
                status, body = await _read_response(reader)
                if len(phase.response_ns) < 200_000:
                    phase.response_ns.append(time.perf_counter_ns() - t0)
                phase.requests += 1
                if status != 200:
                    phase.errors += 1
                    if not phase.first_error:
                        phase.first_error = f"{status} {body[:300]!r}"
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    phase.elapsed = time.monotonic() - started


async def _measure(target: Target, seconds: float, connections: int) -> dict[str, Any]:
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

    health = plain_request(target, "/healthz")
    baseline = Phase("healthz")
    await _load(target, baseline, seconds, connections, lambda: health)
    publish = Phase("publish")
    await _load(target, publish, seconds, connections, next_publish)
    # Let the last QoS 0 messages arrive (bounded; QoS 0 may be dropped).
    for _ in range(100):
        if subscriber.received >= publish.requests - publish.errors:
            break
        await asyncio.sleep(0.01)
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
        "scenario": "http-publish",
        "seconds": seconds,
        "connections": connections,
        "payload_bytes": PAYLOAD_SIZE,
        "publish": result,
        "healthz": baseline.summary(),
    }


def _percentile(values: list[int], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def _ms(ns: float | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 3)


def measure(target: Target, seconds: float = 5.0, connections: int = 8) -> dict[str, Any]:
    """Measure against a hub that is already running."""
    return asyncio.run(_measure(target, seconds, connections))


# --------------------------------------------------------------------------- the hub


class _KeyedThingHub(brokers.ThingHub):
    """bench/brokers.py's ThingHub, started with a known root access key."""

    def __init__(self, cpu: int | None, key_id: str, secret: str) -> None:
        super().__init__(cpu)
        self.key_id = key_id
        self.secret = secret

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["THINGHUB_ROOT_ACCESS_KEY_ID"] = self.key_id
        env["THINGHUB_ROOT_ACCESS_KEY_SECRET"] = self.secret
        # The subscriber connects anonymously; anonymous clients live in the root account.
        env["THINGHUB_MQTT_ALLOW_ANONYMOUS"] = "true"
        return env


def run(seconds: float = 5.0, connections: int = 8, pin: bool = True) -> dict[str, Any]:
    """Start a hub, measure, stop it; the dict for ``python -m bench``."""
    broker_cpu, generator_cpu = brokers.cpu_plan(pin)
    key_id = "AKIDBENCH" + secrets.token_hex(6).upper()
    hub = _KeyedThingHub(broker_cpu, key_id, secrets.token_urlsafe(30))
    hub.start()
    try:
        if generator_cpu is not None:
            os.sched_setaffinity(0, {generator_cpu})
        target = Target(brokers.HOST, hub.http_port, hub.port, hub.key_id, hub.secret)
        result = measure(target, seconds, connections)
        result["broker"] = "thinghub"
        result["at"] = datetime.now(UTC).isoformat(timespec="seconds")
        return result
    finally:
        hub.stop()


def describe(result: dict[str, Any]) -> str:
    p, h = result["publish"], result["healthz"]
    return (
        f"http-publish: {p['rate']:,.0f} req/s (QoS 0, {result['connections']} keep-alive "
        f"connections, {p['errors']} errors), request-to-receipt p50 {p['receipt_p50_ms']} ms "
        f"p99 {p['receipt_p99_ms']} ms ({p['probes']} probes, {p['delivered']} delivered)\n"
        f"healthz:      {h['rate']:,.0f} req/s (do-nothing endpoint, same run), response "
        f"p50 {h['response_p50_ms']} ms p99 {h['response_p99_ms']} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--no-pin", action="store_true", help="do not pin hub and generator")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument(
        "--target",
        metavar="HOST:HTTP_PORT:MQTT_PORT",
        help="measure a hub that is already running (key from THINGHUB_ROOT_ACCESS_KEY_*)",
    )
    args = parser.parse_args(argv)
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
            result = run(args.seconds, args.connections, pin=not args.no_pin)
        finally:
            brokers.stop_all()
    print(describe(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["publish"]["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
