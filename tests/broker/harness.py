"""An in-memory broker with scripted clients: the h11 ``ConnectionPair`` idea (STYLE §3.13).

Nothing here opens a socket or sleeps. A test builds an ``InMemoryHub`` (a real ``Broker`` with
a ``FakeClock``), opens ``TestClient``s on it and talks MQTT to it: each TestClient encodes
packet dataclasses with the codec in its protocol version, feeds the bytes to the broker's
``Client.data_received``, and decodes whatever the broker wrote to its ``FakeLink`` with a
client-side ``Decoder``. Time moves only when the test calls ``hub.advance(seconds)``.

The harness plays the transport's part faithfully:

* like ``transport/tcp.py``, a closed link drops later writes, and ``connection_lost`` follows
  a ``close()`` on a later turn of the loop (``InMemoryHub.settle``, run after every action and
  after every timer callback), never re-entrantly from inside the broker;
* it checks, on every packet the broker sends, the rules a real client would trip over: the
  bytes must decode completely, a PUBLISH may not exceed the Maximum Packet Size the client
  announced, may not use a Topic Alias it never defined, and QoS 1/2 PUBLISHes may not exceed
  the client's Receive Maximum ([MQTT-3.3.4-9]). A broker that breaks one of them fails the test
  with ``BrokerViolation`` whatever the test was about.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from thinghub.broker.broker import Broker
from thinghub.broker.client import Client
from thinghub.broker.stats import Stats
from thinghub.config import MQTTSettings
from thinghub.mqtt.codec import Decoder, encode
from thinghub.mqtt.packets import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from thinghub.mqtt.properties import NO_PROPERTIES, Properties
from thinghub.mqtt.types import ProtocolVersion
from thinghub.store.base import BrokerStore
from thinghub.store.memory import MemoryStore

V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5

# Run a test once per protocol version (mosquitto's do_test(proto_ver=4) / (proto_ver=5)).
both_versions = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])

P = TypeVar("P", bound=Packet)

# The largest packet MQTT can frame (§1.5.5: 268,435,455 bytes of remaining length + header).
_MQTT_MAX_PACKET = 268_435_460


class BrokerViolation(AssertionError):
    """The broker sent something a conforming client would reject."""


# ---------------------------------------------------------------------------------- clock


class FakeTimer:
    __slots__ = ("args", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """The broker's ``Clock``: time moves only in ``advance``, which runs due callbacks in the
    order of their due time (then of scheduling), each at its own due time."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, FakeTimer]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback, args)
        heapq.heappush(self._heap, (timer.when, next(self._seq), timer))
        return timer

    def advance(self, seconds: float, after_each: Callable[[], None] | None = None) -> None:
        """Move time forward by ``seconds``, firing what falls due (including callbacks
        scheduled by callbacks) in order; cancelled timers do not fire."""
        assert seconds >= 0, "time does not go backwards"
        target = self.now + seconds
        while self._heap and self._heap[0][0] <= target:
            when, _, timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            self.now = max(self.now, when)
            timer.callback(*timer.args)
            if after_each is not None:
                after_each()
        self.now = target

    def pending(self) -> list[FakeTimer]:
        """Timers that have neither fired nor been cancelled, soonest first."""
        return [t for _, _, t in sorted(self._heap) if not t.cancelled]


# ---------------------------------------------------------------------------------- link


class FakeLink:
    """The broker's ``Link``: records writes and closes. ``backlog`` is what ``buffered()``
    reports, so a test can make the connection look like a slow consumer."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.chunks: list[bytes] = []
        self.closed = False
        self.close_calls = 0
        self.writes_after_close = 0
        self.backlog = 0

    def write(self, data: bytes) -> None:
        if self.closed:
            # transport/tcp.py drops them too; counted so a test can tell.
            self.writes_after_close += 1
            return
        self.chunks.append(data)

    def close(self) -> None:
        self.close_calls += 1
        self.closed = True

    def buffered(self) -> int:
        return self.backlog

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data


# ---------------------------------------------------------------------------------- hub


class InMemoryHub:
    """A Broker with a FakeClock, and the TestClients connected to it."""

    def __init__(self, *, store: BrokerStore | None = None, **settings: Any) -> None:
        # The broker's rules are tested with anonymous clients unless a test says otherwise
        # (device credentials are the registry's business).
        settings.setdefault("allow_anonymous", True)
        # Time moves only when a test says so: CONNECTs are not spread over loop turns here
        # unless a test asks (test_broker_robustness.py tests that spreading).
        settings.setdefault("connects_per_turn", 0)
        settings.setdefault("disconnects_per_turn", 0)
        self.settings = MQTTSettings(**settings)
        self.clock = FakeClock()
        self.store: BrokerStore = MemoryStore() if store is None else store
        self.broker = Broker(self.settings, self.clock, store=self.store)
        self.clients: list[TestClient] = []
        self._peers = itertools.count(40000)

    def restart(self) -> None:
        """The process stops and starts again on the same store: every connection is gone
        (nothing is told: the broker that knew them is gone too), a new Broker restores the
        persistent state, and its timers start over on the same clock."""
        for client in self.clients:
            client.link.closed = True
            client.lost = True
        for timer in self.clock.pending():
            timer.cancel()
        self.broker = Broker(self.settings, self.clock, store=self.store)
        self.broker.restore()

    @property
    def stats(self) -> Stats:
        return self.broker.stats

    def client(self, version: ProtocolVersion = V5) -> TestClient:
        """A new network connection, before its CONNECT."""
        client = TestClient(self, version, f"127.0.0.1:{next(self._peers)}")
        self.clients.append(client)
        return client

    def connect(self, client_id: str, version: ProtocolVersion = V5, **kwargs: Any) -> TestClient:
        """A new connection that completed CONNECT/CONNACK successfully."""
        client = self.client(version)
        ack = client.connect(client_id, **kwargs)
        assert ack.reason_code == 0, f"CONNECT of {client_id!r} refused: {ack}"
        return client

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds, self.settle)
        self.settle()

    def settle(self) -> None:
        """Deliver ``connection_lost`` for every link the broker closed (the transport does so
        on a later turn of the event loop)."""
        for client in self.clients:
            if client.link.closed and not client.lost:
                client.lost = True
                client.server.connection_lost()


# ---------------------------------------------------------------------------------- client


class TestClient:
    """One scripted MQTT client connection to an InMemoryHub."""

    __test__ = False  # not a pytest test class

    def __init__(self, hub: InMemoryHub, version: ProtocolVersion, peer: str) -> None:
        self.hub = hub
        self.version = version
        self.link = FakeLink(peer)
        self.server: Client = hub.broker.connection_made(self.link)
        self.decoder = Decoder(_MQTT_MAX_PACKET)
        self.decoder.version = version
        self.inbox: deque[Packet] = deque()
        self.lost = False  # connection_lost delivered to the broker
        self.client_id = ""
        self.receive_maximum = 65535  # what this client announced (§3.1.2.11.3)
        self.aliases: dict[int, str] = {}  # Topic Aliases the broker defined for us
        # QoS 1/2 PUBLISHes from the broker that this client has not completed yet.
        self.unacked: dict[int, Publish] = {}
        self._ids = itertools.count(1)

    @property
    def is_v5(self) -> bool:
        return self.version == V5

    def next_id(self) -> int:
        return (next(self._ids) - 1) % 65535 + 1

    # -- raw traffic ---------------------------------------------------------------------

    def send(self, *packets: Packet) -> None:
        for packet in packets:
            if isinstance(packet, PubAck | PubComp) or (
                isinstance(packet, PubRec) and packet.reason_code >= 0x80
            ):
                self.unacked.pop(packet.packet_id, None)
        self.send_bytes(b"".join(encode(p, self.version) for p in packets))

    def send_bytes(self, data: bytes) -> None:
        assert not self.lost, "this connection is gone"
        self.server.data_received(data)
        self.hub.settle()

    def _pull(self) -> None:
        data = self.link.take()
        if not data:
            return
        for packet in self.decoder.feed(data):
            self._check(packet)
            self.inbox.append(packet)
        if self.decoder.buffered:
            raise BrokerViolation(f"{self.decoder.buffered} bytes of a partial packet written")

    def _check(self, packet: Packet) -> None:
        if not isinstance(packet, Publish):
            return
        alias = packet.properties.topic_alias
        if alias is not None:
            if packet.topic:
                self.aliases[alias] = packet.topic
            elif alias not in self.aliases:
                raise BrokerViolation(f"PUBLISH uses Topic Alias {alias} that was never defined")
        if packet.qos:
            assert packet.packet_id is not None
            if packet.packet_id not in self.unacked and len(self.unacked) >= self.receive_maximum:
                raise BrokerViolation(
                    f"QoS {packet.qos} PUBLISH beyond Receive Maximum {self.receive_maximum} "
                    f"(unacknowledged: {sorted(self.unacked)}) [MQTT-3.3.4-9]"
                )
            self.unacked[packet.packet_id] = packet

    def topic_of(self, packet: Publish) -> str:
        """The topic name of a received PUBLISH, resolving a Topic Alias."""
        if packet.topic:
            return packet.topic
        assert packet.properties.topic_alias is not None
        return self.aliases[packet.properties.topic_alias]

    def received(self) -> list[Packet]:
        """Everything received and not yet expected, in order."""
        self._pull()
        packets = list(self.inbox)
        self.inbox.clear()
        return packets

    def expect(self, kind: type[P]) -> P:
        """The next packet received, which must be a ``kind``."""
        self._pull()
        assert self.inbox, f"expected {kind.__name__}, received nothing"
        packet = self.inbox.popleft()
        assert isinstance(packet, kind), f"expected {kind.__name__}, received {packet}"
        return packet

    def expect_publish(
        self, topic: str | None = None, payload: bytes | None = None, *, qos: int | None = None
    ) -> Publish:
        packet = self.expect(Publish)
        if topic is not None:
            assert self.topic_of(packet) == topic, packet
        if payload is not None:
            assert packet.payload == payload, packet
        if qos is not None:
            assert packet.qos == qos, packet
        return packet

    def publishes(self) -> list[Publish]:
        """Every pending packet, all of which must be PUBLISHes."""
        packets = self.received()
        assert all(isinstance(p, Publish) for p in packets), packets
        return [p for p in packets if isinstance(p, Publish)]

    def assert_nothing_pending(self) -> None:
        self._pull()
        assert not self.inbox, f"unexpected packets: {list(self.inbox)}"

    @property
    def closed(self) -> bool:
        """The broker closed this connection (or the client dropped it)."""
        return self.link.closed

    def expect_closed(self, reason_code: int | None = None) -> None:
        """The broker closed the connection; on v5 after a DISCONNECT with ``reason_code``
        (when given), on 3.1.1 without sending anything (3.1.1 has no server DISCONNECT)."""
        if reason_code is not None and self.is_v5:
            disconnect = self.expect(Disconnect)
            assert disconnect.reason_code == reason_code, disconnect
        self.assert_nothing_pending()
        assert self.link.closed, "the connection is still open"

    # -- conversations -------------------------------------------------------------------

    def connect(
        self,
        client_id: str = "",
        *,
        clean_start: bool = True,
        keep_alive: int = 0,
        will: Will | None = None,
        session_expiry: int | None = None,
        receive_maximum: int | None = None,
        maximum_packet_size: int | None = None,
        topic_alias_maximum: int | None = None,
        username: str | None = None,
        password: bytes | None = None,
        properties: Properties | None = None,
    ) -> ConnAck:
        """Send CONNECT and return the CONNACK. Property arguments other than
        ``session_expiry`` need v5."""
        if properties is None:
            properties = NO_PROPERTIES
            if self.is_v5:
                properties = Properties(
                    session_expiry_interval=session_expiry,
                    receive_maximum=receive_maximum,
                    maximum_packet_size=maximum_packet_size,
                    topic_alias_maximum=topic_alias_maximum,
                )
            else:
                # session_expiry is ignored on 3.1.1, so that one call serves both versions
                # (a 3.1.1 session outlives its connection when clean_start is False).
                assert receive_maximum is None
                assert maximum_packet_size is None and topic_alias_maximum is None
        if properties.receive_maximum is not None:
            self.receive_maximum = properties.receive_maximum
        if properties.maximum_packet_size is not None:
            # The decoder refuses anything bigger: the broker must not send it [MQTT-3.1.2-24].
            self.decoder.max_packet_size = properties.maximum_packet_size
        self.client_id = client_id
        self.send(
            Connect(
                protocol_version=self.version,
                client_id=client_id,
                clean_start=clean_start,
                keep_alive=keep_alive,
                username=username,
                password=password,
                will=will,
                properties=properties,
            )
        )
        ack = self.expect(ConnAck)
        if ack.properties.assigned_client_identifier is not None:
            self.client_id = ack.properties.assigned_client_identifier
        return ack

    def subscribe(
        self, *filters: str | Subscription, qos: int = 0, subscription_id: int | None = None
    ) -> SubAck:
        """SUBSCRIBE to ``filters`` (strings get ``qos``) and return the SUBACK."""
        subs = tuple(
            f if isinstance(f, Subscription) else Subscription(topic_filter=f, qos=qos)
            for f in filters
        )
        props = NO_PROPERTIES
        if subscription_id is not None:
            props = Properties(subscription_identifiers=(subscription_id,))
        packet_id = self.next_id()
        self.send(Subscribe(packet_id=packet_id, subscriptions=subs, properties=props))
        ack = self.expect(SubAck)
        assert ack.packet_id == packet_id
        assert len(ack.reason_codes) == len(subs)
        return ack

    def unsubscribe(self, *filters: str) -> UnsubAck:
        packet_id = self.next_id()
        self.send(Unsubscribe(packet_id=packet_id, topic_filters=filters))
        ack = self.expect(UnsubAck)
        assert ack.packet_id == packet_id
        return ack

    def publish(
        self,
        topic: str,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        *,
        properties: Properties = NO_PROPERTIES,
        packet_id: int | None = None,
        dup: bool = False,
    ) -> PubAck | PubRec | None:
        """Send a PUBLISH; for QoS 1/2 return the PUBACK/PUBREC that answers it. A QoS 2
        exchange is left at PUBREC: ``release`` finishes it."""
        if qos and packet_id is None:
            packet_id = self.next_id()
        self.send(
            Publish(
                topic=topic,
                payload=payload,
                qos=qos,
                retain=retain,
                dup=dup,
                packet_id=packet_id if qos else None,
                properties=properties,
            )
        )
        if qos == 0:
            return None
        ack: PubAck | PubRec = self.expect(PubAck) if qos == 1 else self.expect(PubRec)
        assert ack.packet_id == packet_id
        return ack

    def publish_qos2(self, topic: str, payload: bytes = b"", retain: bool = False) -> PubComp:
        """A whole QoS 2 exchange: PUBLISH, PUBREC, PUBREL, PUBCOMP."""
        rec = self.publish(topic, payload, 2, retain)
        assert isinstance(rec, PubRec) and rec.reason_code < 0x80, rec
        return self.release(rec.packet_id)

    def release(self, packet_id: int) -> PubComp:
        self.send(PubRel(packet_id=packet_id))
        comp = self.expect(PubComp)
        assert comp.packet_id == packet_id
        return comp

    def ack(self, publish: Publish) -> None:
        """Complete a QoS 1/2 PUBLISH received from the broker (PUBACK, or PUBREC, PUBREL,
        PUBCOMP); nothing for QoS 0."""
        if publish.qos == 0:
            return
        assert publish.packet_id is not None
        if publish.qos == 1:
            self.send(PubAck(packet_id=publish.packet_id))
        else:
            self.send(PubRec(packet_id=publish.packet_id))
            # The PUBREL answers the PUBREC; PUBLISHes the freed window let through may be
            # queued ahead of it, and stay queued.
            self._pull()
            rel = next((p for p in self.inbox if isinstance(p, PubRel)), None)
            assert rel is not None, f"no PUBREL for {publish.packet_id}: {list(self.inbox)}"
            assert rel.packet_id == publish.packet_id and rel.reason_code == 0, rel
            self.inbox.remove(rel)
            self.send(PubComp(packet_id=publish.packet_id))

    def drop(self) -> None:
        """The network connection breaks: no DISCONNECT (an abnormal end, §3.1.2.5)."""
        self.link.closed = True
        self.hub.settle()

    def disconnect(self, reason_code: int = 0, properties: Properties = NO_PROPERTIES) -> None:
        """A client DISCONNECT; the broker closes the connection."""
        self.send(Disconnect(reason_code=reason_code, properties=properties))
        assert self.link.closed, "the broker did not close the connection after DISCONNECT"
