"""What the delivery trace costs per message, measured in process (not part of ``make bench``).

A real ``Broker`` (memory store, the hub's ``MessageIdGenerator``) with one subscriber, fed N
messages through ``Broker.publish`` as an MQTT publish arrives (no MessageId yet), at QoS 0
and at QoS 1; the subscriber acknowledges each QoS 1 copy with a PUBACK through its
connection, as tests/broker/harness.py's TestClient does. Runs alternate trace off / on, so a
busy machine slows both alike; the median of the runs is reported, in µs per message.

    .venv/bin/python -m bench.trace_cost [--messages N] [--runs R] [--qos 0 1]

For repeatable instruction counts on a busy machine, run one mode under callgrind:

    valgrind --tool=callgrind .venv/bin/python -m bench.trace_cost --runs 1 --only on
"""

from __future__ import annotations

import argparse
import gc
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from thinghub import gcpolicy
from thinghub.broker.admission import API_CALLER
from thinghub.broker.broker import Broker
from thinghub.config import MQTTSettings, TraceSettings
from thinghub.message import Message
from thinghub.mqtt.codec import encode
from thinghub.mqtt.packets import Connect, Packet, PubAck, Subscribe, Subscription
from thinghub.mqtt.types import ProtocolVersion
from thinghub.registry.ids import MemoryLeaseStore, MessageIdGenerator
from thinghub.store.memory import MemoryStore
from thinghub.trace.recorder import TraceRecorder

V5 = ProtocolVersion.V5
TOPIC = "bench/trace"


class _Clock:
    """The broker's clock: nothing here waits for a timer."""

    def time(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> _Timer:
        return _Timer()


class _Timer:
    def cancel(self) -> None:
        pass


class _Link:
    """A connection whose writes are counted, never decoded: the subscriber's side costs the
    same with the trace on and off."""

    peer = "127.0.0.1:40000"

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def close(self) -> None:
        pass

    def buffered(self) -> int:
        return 0


def _in_thread(work: Callable[[], None]) -> None:
    threading.Thread(target=work, name="thinghub-id-lease", daemon=True).start()


def _send(client: Any, packet: Packet) -> None:
    client.data_received(encode(packet, V5))


def _hub(traced: bool, qos: int, budget: int) -> tuple[Broker, Callable[[], None]]:
    """A broker with one connected subscriber to TOPIC; and what acknowledges its copy in
    flight (nothing at QoS 0)."""
    settings = MQTTSettings(allow_anonymous=True, connects_per_turn=0, disconnects_per_turn=0)
    ids = MessageIdGenerator(MemoryLeaseStore(), renew=_in_thread)
    bounds = TraceSettings()  # the hub's defaults: the ring wraps within a run
    trace = (
        TraceRecorder(
            max_messages=bounds.max_messages,
            max_age_s=bounds.max_age_s,
            max_sessions=bounds.max_sessions,
            max_mqtt_per_second=budget,
        )
        if traced
        else None
    )
    broker = Broker(settings, _Clock(), store=MemoryStore(), new_message_id=ids, trace=trace)
    link = _Link()
    client = broker.connection_made(link)
    _send(client, Connect(protocol_version=V5, client_id="sub", clean_start=True))
    _send(
        client, Subscribe(packet_id=1, subscriptions=(Subscription(topic_filter=TOPIC, qos=qos),))
    )
    assert link.written, "no CONNACK/SUBACK"
    inflight = next(iter(broker.sessions.values())).delivery.inflight
    # A PUBACK per packet id, encoded once: the loop pays for feeding it, not for building it.
    acks = [b""] + [encode(PubAck(packet_id=pid), V5) for pid in range(1, 65536)]

    def ack() -> None:
        for pid in list(inflight):
            client.data_received(acks[pid])

    return broker, ack


def run(traced: bool, qos: int, messages: int, budget: int = 0) -> float:
    """µs per message over ``messages`` publishes."""
    broker, ack = _hub(traced, qos, budget)
    payload = b"x" * 64
    publish = broker.publish
    batch = [Message(topic=TOPIC, payload=payload, qos=qos) for _ in range(messages)]
    # The hub's collector policy (thinghub/gcpolicy.py): what exists at the start is frozen.
    gc.collect()
    gcpolicy.start_quietly()
    start = time.perf_counter_ns()
    if qos:
        for message in batch:
            publish(message, API_CALLER)
            ack()
    else:
        for message in batch:
            publish(message, API_CALLER)
    elapsed = time.perf_counter_ns() - start
    gc.unfreeze()
    assert broker.stats.received[qos] == messages
    return elapsed / messages / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--qos", type=int, nargs="+", default=[0, 1], choices=[0, 1])
    parser.add_argument("--only", choices=["off", "on"], help="one mode only (for callgrind)")
    parser.add_argument("--no-warmup", action="store_true", help="(for callgrind)")
    parser.add_argument(
        "--budget",
        type=int,
        default=0,
        help="trace.max_mqtt_per_second (default 0: every message, the trace's full cost; "
        f"the hub's default is {TraceSettings().max_mqtt_per_second})",
    )
    args = parser.parse_args(argv)
    modes = [False, True] if args.only is None else [args.only == "on"]
    for qos in args.qos:
        results: dict[bool, list[float]] = {mode: [] for mode in modes}
        if not args.no_warmup:
            run(True, qos, min(args.messages, 5000))  # warm up imports and caches
        for _ in range(args.runs):
            for traced in modes:
                results[traced].append(run(traced, qos, args.messages, args.budget))
        line = [f"QoS {qos}:"]
        medians = {mode: statistics.median(values) for mode, values in results.items()}
        for mode, median in medians.items():
            line.append(f"trace {'on' if mode else 'off'} {median:.2f} µs/msg")
        if len(medians) == 2:
            line.append(f"cost {medians[True] - medians[False]:+.2f} µs/msg")
        print("  ".join(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
