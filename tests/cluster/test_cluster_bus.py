"""The node's NATS connection (thinghub/cluster/bus.py) against a real NATS cluster, in
process: what the rest of the cluster code relies on.

* messages of overlapping subscriptions in the node's queue group arrive once each, in the
  order they were published (nats-py would hand each subscription's messages to a task of
  its own; the bus serves them inline, in wire order);
* the outbound bound holds: past ``outbound_buffer_bytes`` a message is refused, counted;
* unsubscribing stops the messages; the hub's health says degraded until connected."""

from __future__ import annotations

import asyncio

import nats
from natscluster import NatsCluster

from thinghub.cluster.bus import COMPONENT, Bus
from thinghub.cluster.settings import ClusterSettings
from thinghub.health import Health


def test_overlapping_subscriptions_deliver_once_each_in_wire_order(
    nats_cluster: NatsCluster,
) -> None:
    async def run() -> tuple[list[bytes], list[bytes], Health, bool]:
        health = Health()
        # The node on one server, the publisher on another: the messages cross a route.
        bus = Bus(ClusterSettings(nats_urls=(nats_cluster.urls[0],)), "bus-test", health)
        got: list[bytes] = []
        connected = await bus.start()
        done = asyncio.Event()

        def handler(_subject: bytes, data: bytes) -> None:
            got.append(data)
            if data == b"end":
                done.set()

        for subject in ("o.*", "o.>", "o.a", "o.b"):
            bus.subscribe(subject, handler, queue="bus-test")
        # Subscribed last: once the publisher's server knows it, it knows the others (a
        # server forwards a connection's subscriptions over its routes in order).
        bus.subscribe("probe", lambda _s, _d: None)
        publisher = await nats.connect(servers=[nats_cluster.urls[1]])
        await _wait_for_interest(publisher, "probe")
        sent = [f"{i:05d}".encode() for i in range(3000)]
        for index, payload in enumerate(sent):
            await publisher.publish("o.a" if index % 2 else "o.b", payload)
        await publisher.publish("o.a", b"end")
        await publisher.flush()
        await asyncio.wait_for(done.wait(), 20)
        await publisher.close()
        await bus.close()
        return got, sent, health, connected

    got, sent, health, connected = asyncio.run(run())
    assert connected
    assert got == [*sent, b"end"]
    assert COMPONENT not in health.snapshot().degraded


def test_the_outbound_bound_refuses_and_counts(nats_cluster: NatsCluster) -> None:
    async def run() -> tuple[int, int, int]:
        settings = ClusterSettings(nats_urls=tuple(nats_cluster.urls), outbound_buffer_bytes=65536)
        bus = Bus(settings, "bound-test", Health())
        await bus.start()
        payload = b"x" * 1000
        # In one turn of the loop: nothing can leave meanwhile.
        accepted = sum(bus.send("bound.test", payload) for _ in range(100))
        refused = bus.counters.refused_full
        queued = bus.queued_bytes
        await bus.close()
        return accepted, refused, queued

    accepted, refused, queued = asyncio.run(run())
    assert (accepted, refused) == (65, 35)
    assert queued == 65_000


def test_a_bus_that_cannot_reach_nats_is_degraded_and_refuses(nats_cluster: NatsCluster) -> None:
    async def run() -> tuple[bool, str | None, bool, int]:
        health = Health()
        settings = ClusterSettings(
            nats_urls=("nats://127.0.0.1:1",), connect_timeout=0.3, reconnect_wait=0.1
        )
        bus = Bus(settings, "nowhere", health)
        connected = await bus.start()
        reason = health.snapshot().degraded.get(COMPONENT)
        sent = bus.send("x", b"y")
        await bus.close()
        return connected, reason, sent, bus.counters.refused_disconnected

    connected, reason, sent, refused = asyncio.run(run())
    assert not connected and reason is not None and "NATS" in reason
    assert not sent and refused == 1


async def _wait_for_interest(publisher: nats.NATS, subject: str) -> None:
    """Until the publisher's server knows a subscriber of ``subject``: a request answers "no
    responders" at once while it does not, and times out (nobody answers) once it does."""
    for _attempt in range(200):
        try:
            await publisher.request(subject, b"", timeout=0.05)
        except nats.errors.NoRespondersError:
            await asyncio.sleep(0.02)
            continue
        except nats.errors.TimeoutError:
            return
        return
    raise AssertionError(f"no interest in {subject} reached the publisher's server")
