"""Load and receivers for the cluster crash test (test_cluster_crash.py), each in a thread,
each recording what the hub answered and what it delivered, so that the test can compare
"acknowledged" with "received" after nodes were killed under them.

``Hubs``         the ThingHub nodes by name, which of them are up; a client whose node is
                 gone takes the next one that is up.
``MqttPublisher`` paho QoS 1 or 2 (MQTT 3.1.1 or 5), one numbered message after another; a
                 PUBACK (QoS 2: PUBREC, then PUBCOMP) below 0x80 is "acknowledged", 0x80 and
                 above "refused", no answer (the node died, the connection dropped)
                 "unknown"; then it reconnects and goes on.
``AwsPublisher`` / ``AliyunPublisher``: the same through boto3 ``iot-data`` Publish qos=1 and
                 the Alibaba SDK's ``Pub`` Qos=1 (HTTP 200 = acknowledged, 503 = refused).
``Receiver``     a persistent session (Clean Start 0 / clean session 0, expiry 300) on a raw
                 socket: it answers QoS 1 and QoS 2 by hand and, at QoS 2, hands a message to
                 "the application" at its first PUBLISH and keeps its packet id until PUBREL
                 (MQTT 5.0 §4.3.3, method A), across reconnections as a device's session
                 state does; a message handed on twice is a duplicate. With ``share``, a
                 member of that shared group (``$share/<share>/<filter>``): the group's
                 members together get each message (``wait_for_group``).

Payloads are ``<publisher>:<number>``. Every thread catches what it meets and records it:
nothing is raised in a thread (pytest turns that into an error far from its cause).
"""

from __future__ import annotations

import base64
import collections
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
import pahoclient
import rawmqtt
from aliyunsdkcore.acs_exception.exceptions import ClientException, ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkiot.request.v20180120.PubRequest import PubRequest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from hubnodes import KEY_ID, SECRET, HubNode
from rawmqtt import PINGRESP, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL

#: What the load publishes on (MQTT, boto3) and what the receivers subscribe to: one level per
#: publisher; the Alibaba API publishes on its product's topics (``/pk/dn/user/get``, which
#: every product has).
TOPIC_ROOT = "crash"
FILTERS = (f"{TOPIC_ROOT}/+", "/+/+/user/get")


class Hubs:
    """The cluster's ThingHub nodes by name; which are up."""

    def __init__(self, nodes: list[HubNode]) -> None:
        self._lock = threading.Lock()
        self._nodes = {node.name: node for node in nodes}
        self._order = [node.name for node in nodes]
        self._down: set[str] = set()

    def __getitem__(self, name: str) -> HubNode:
        with self._lock:
            return self._nodes[name]

    def up(self) -> list[HubNode]:
        with self._lock:
            return [self._nodes[n] for n in self._order if n not in self._down]

    def pick(self, preferred: str) -> HubNode | None:
        """``preferred`` if it is up, else the next one (in order) that is."""
        with self._lock:
            start = self._order.index(preferred)
            for step in range(len(self._order)):
                name = self._order[(start + step) % len(self._order)]
                if name not in self._down:
                    return self._nodes[name]
            return None

    def down(self, name: str) -> None:
        with self._lock:
            self._down.add(name)

    def replaced(self, node: HubNode) -> None:
        """``node`` (a restart) is up again under its name."""
        with self._lock:
            self._nodes[node.name] = node
            self._down.discard(node.name)


@dataclass
class Outcomes:
    """What one publisher sent and what the hub answered, by message number."""

    acknowledged: set[int] = field(default_factory=set)
    refused: set[int] = field(default_factory=set)
    unknown: set[int] = field(default_factory=set)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    switches: int = 0


class _Worker(threading.Thread):
    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.stopping = threading.Event()
        self.failure = ""  # an exception the loop did not expect: the test fails with it

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        try:
            self.loop()
        except Exception as error:  # recorded, asserted by the test
            self.failure = f"{self.name}: {type(error).__name__}: {error}"

    def loop(self) -> None:
        raise NotImplementedError


class _Publisher(_Worker):
    """Numbered messages, one at a time, every ``interval`` seconds, on a node (the next one up
    when it is gone)."""

    def __init__(self, name: str, hubs: Hubs, node: str, interval: float) -> None:
        super().__init__(name)
        self.hubs = hubs
        self.preferred = node
        self.interval = interval
        self.outcomes = Outcomes()
        self.sent = 0

    def payload(self, number: int) -> bytes:
        return f"{self.name}:{number}".encode()

    def loop(self) -> None:
        node: HubNode | None = None
        while not self.stopping.is_set():
            current = self.hubs.pick(self.preferred)
            if current is None:
                self.stopping.wait(0.2)
                continue
            if current is not node:
                if node is not None:
                    self.outcomes.switches += 1
                self.close()
                node = current
                try:
                    self.open(node)
                except Exception as error:
                    self.outcomes.errors[f"connect: {type(error).__name__}"] += 1
                    self.close()
                    node = None
                    self.stopping.wait(0.2)
                    continue
            number = self.sent
            self.sent += 1
            try:
                answer = self.send(number)
            except Exception as error:
                self.outcomes.unknown.add(number)
                self.outcomes.errors[type(error).__name__] += 1
                self.close()
                node = None  # reconnect, to whichever node is up
                self.stopping.wait(0.2)
                continue
            (self.outcomes.acknowledged if answer else self.outcomes.refused).add(number)
            self.stopping.wait(self.interval)
        self.close()

    def open(self, node: HubNode) -> None:
        raise NotImplementedError

    def send(self, number: int) -> bool:
        """True: acknowledged; False: refused; an exception: no answer."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class MqttPublisher(_Publisher):
    def __init__(
        self, name: str, hubs: Hubs, node: str, version: int, interval: float, qos: int = 1
    ) -> None:
        super().__init__(name, hubs, node, interval)
        self.version = version
        self.qos = qos
        self.topic = f"{TOPIC_ROOT}/{name}"
        self.codes: collections.Counter[int] = collections.Counter()
        self._client: pahoclient.Client | None = None

    def open(self, node: HubNode) -> None:
        client = pahoclient.Client(node, client_id=self.name, version=self.version)
        self._client = client
        result = client.connect(expect_success=False)
        if result.reason_code:
            raise ConnectionError(f"CONNACK {result.reason_code:#x}")

    def send(self, number: int) -> bool:
        assert self._client is not None
        code = self._client.publish(self.topic, self.payload(number), self.qos)
        self.codes[code] += 1
        return code < 0x80

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.stop()
            finally:
                # paho keeps a loopback socket pair (and the socket of a connection that
                # failed) open until collected: closed now, not found unclosed at exit.
                self._client.paho._reset_sockets()
                self._client = None


class AwsPublisher(_Publisher):
    def __init__(self, name: str, hubs: Hubs, node: str, interval: float) -> None:
        super().__init__(name, hubs, node, interval)
        self.topic = f"{TOPIC_ROOT}/{name}"
        self._client: Any = None

    def open(self, node: HubNode) -> None:
        self._client = boto3.client(
            "iot-data",
            endpoint_url=f"http://{node.host}:{node.http_port}",
            region_name="us-east-1",
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=15),
        )

    def send(self, number: int) -> bool:
        try:
            self._client.publish(topic=self.topic, qos=1, payload=self.payload(number))
        except ClientError as error:
            status = error.response["ResponseMetadata"]["HTTPStatusCode"]
            self.outcomes.errors[f"HTTP {status}"] += 1
            if status == 503:
                return False
            raise
        except BotoCoreError as error:
            raise ConnectionError(str(error)) from error
        return True


class AliyunPublisher(_Publisher):
    """``Pub`` on the product each node's registry has (``products``: node name -> (product
    key, device name)); nodes keep their own registries unless clustered on PostgreSQL."""

    def __init__(
        self,
        name: str,
        hubs: Hubs,
        node: str,
        products: dict[str, tuple[str, str]],
        interval: float,
    ) -> None:
        super().__init__(name, hubs, node, interval)
        self.products = products
        self._node: HubNode | None = None

    def open(self, node: HubNode) -> None:
        self._node = node

    def send(self, number: int) -> bool:
        node = self._node
        assert node is not None
        product_key, device_name = self.products[node.name]
        request = PubRequest()
        request.set_endpoint(f"{node.host}:{node.http_port}")
        request.set_protocol_type("http")
        request.set_ProductKey(product_key)
        request.set_TopicFullName(f"/{product_key}/{device_name}/user/get")
        request.set_MessageContent(base64.b64encode(self.payload(number)).decode())
        request.set_Qos(1)
        client = AcsClient(KEY_ID, SECRET, "cn-shanghai", connect_timeout=5, timeout=15)
        try:
            answer = json.loads(client.do_action_with_exception(request))
        except ServerException as error:
            self.outcomes.errors[f"HTTP {error.get_http_status()}"] += 1
            if error.get_http_status() == 503:
                return False
            raise
        except ClientException as error:
            raise ConnectionError(str(error)) from error
        if answer.get("Success") is not True:
            self.outcomes.errors[f"Success false: {answer.get('Code')}"] += 1
            return False
        return True


class Receiver(_Worker):
    """A persistent session at ``qos`` on the load's topics, on ``node`` (the next one up when
    it is gone)."""

    def __init__(
        self, name: str, hubs: Hubs, node: str, qos: int, version: int, share: str = ""
    ) -> None:
        super().__init__(name)
        self.share = share
        self.hubs = hubs
        self.preferred = node
        self.qos = qos
        self.version = version
        # Payloads handed to the application, and how many times each.
        self.got: collections.Counter[bytes] = collections.Counter()
        # Delivered again at QoS 2: (payload, packet id, DUP); how many again at QoS 1.
        self.duplicates: list[tuple[bytes, int, bool]] = []
        self.qos1_duplicates = 0
        # Every PUBLISH by payload: (packet id, DUP, QoS, node, index in ``connections``,
        # seconds since the receiver started).
        self.seen: collections.defaultdict[bytes, list[tuple[int, bool, int, str, int, float]]] = (
            collections.defaultdict(list)
        )
        self._t0 = time.monotonic()
        self.publishes = 0  # PUBLISH packets received (a resend to a QoS 2 PUBREC included)
        self.resends = 0  # QoS 2 PUBLISH again under a packet id awaiting PUBREL: not handed on
        self.dup_flags = 0
        # (node, Session Present) of each accepted CONNECT; refused CONNACK codes.
        self.connections: list[tuple[str, bool]] = []
        self.refused: collections.Counter[int] = collections.Counter()
        self.lost_session = False
        self.node = ""
        self.changed = threading.Condition()
        # The session state a device keeps (§4.3.3): packet id -> payload, until PUBREL.
        self._awaiting_pubrel: dict[int, bytes] = {}
        # (packet id, payload awaiting PUBREL under it, another payload sent under it, DUP)
        self.reused: list[tuple[int, bytes, bytes, bool]] = []
        self._subscribed = False
        self.connected = threading.Event()

    def loop(self) -> None:
        while not self.stopping.is_set():
            node = self.hubs.pick(self.preferred)
            if node is None:
                self.stopping.wait(0.2)
                continue
            try:
                client = node.raw(self.version)
            except OSError:
                self.stopping.wait(0.2)
                continue
            try:
                self._session(node, client)
            except (OSError, TimeoutError, AssertionError):
                pass  # the node died or dropped us: to the next one up
            finally:
                self.connected.clear()
                client.close()
            self.stopping.wait(0.1)

    def _session(self, node: HubNode, client: rawmqtt.RawClient) -> None:
        properties = {"session_expiry_interval": 300} if self.version == 5 else None
        connack = client.connect(
            self.name, clean=False, keepalive=30, properties=properties, expect_reason=None
        )
        if connack.reason:
            self.refused[connack.reason] += 1
            return
        present = bool(connack.session_present)
        self.connections.append((node.name, present))
        if self._subscribed and not present:
            self.lost_session = True
            self._awaiting_pubrel.clear()  # a new session: no state (§4.1)
        if not present:
            prefix = f"$share/{self.share}/" if self.share else ""
            reasons = client.subscribe([(prefix + f, self.qos) for f in FILTERS], mid=1)
            if reasons != [self.qos] * len(FILTERS):
                raise AssertionError(f"SUBACK {reasons}")
            self._subscribed = True
        self.node = node.name
        self.connected.set()
        idle = time.monotonic()
        while not self.stopping.is_set():
            try:
                packet = client.recv(timeout=0.5)
            except TimeoutError:
                if time.monotonic() - idle > 5:
                    client.send(rawmqtt.pingreq())
                    idle = time.monotonic()
                continue
            if packet is None:
                return
            idle = time.monotonic()
            if packet.type == PUBLISH:
                self._publish(client, packet)
            elif packet.type == PUBREL:
                self._awaiting_pubrel.pop(packet.mid or 0, None)
                client.send(rawmqtt.ack(PUBCOMP, packet.mid or 0, self.version))
            elif packet.type != PINGRESP:
                raise AssertionError(f"unexpected {packet!r}")

    def _publish(self, client: rawmqtt.RawClient, packet: rawmqtt.Packet) -> None:
        self.publishes += 1
        self.seen[packet.payload].append(
            (
                packet.mid or 0,
                packet.dup,
                packet.qos,
                self.node,
                len(self.connections) - 1,
                round(time.monotonic() - self._t0, 2),
            )
        )
        self.dup_flags += packet.dup
        mid = packet.mid or 0
        if packet.qos == 2:
            held = self._awaiting_pubrel.get(mid)
            if held is not None:
                self.resends += 1  # already handed on: PUBREC again, nothing more
                if held != packet.payload:
                    # Another message under a packet id still in use: lost to the application.
                    self.reused.append((mid, held, packet.payload, packet.dup))
            else:
                self._deliver(packet.payload, mid, packet.dup, packet.qos)
                self._awaiting_pubrel[mid] = packet.payload
            client.send(rawmqtt.ack(PUBREC, mid, self.version))
            return
        self._deliver(packet.payload, mid, packet.dup, packet.qos)
        if packet.qos == 1:
            client.send(rawmqtt.ack(PUBACK, mid, self.version))

    def _deliver(self, payload: bytes, mid: int, dup: bool, qos: int) -> None:
        with self.changed:
            if payload in self.got:
                if qos == 2:
                    self.duplicates.append((payload, mid, dup))
                else:
                    self.qos1_duplicates += 1  # allowed at QoS 1 (§4.3.2)
            self.got[payload] += 1
            self.changed.notify_all()

    def wait_for(self, wanted: set[bytes], timeout: float) -> set[bytes]:
        """Wait until every payload of ``wanted`` was handed on; what is still missing."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                missing = {p for p in wanted if p not in self.got}
                left = deadline - time.monotonic()
                if not missing or left <= 0 or self.failure:
                    return missing
                self.changed.wait(min(left, 0.5))


def wait_for_group(members: list[Receiver], wanted: set[bytes], timeout: float) -> set[bytes]:
    """Wait until every payload of ``wanted`` was handed on by some member of a shared group;
    what is still missing."""
    deadline = time.monotonic() + timeout
    while True:
        got: set[bytes] = set()
        for member in members:
            with member.changed:
                got.update(member.got)
        missing = wanted - got
        if not missing or time.monotonic() >= deadline or any(m.failure for m in members):
            return missing
        time.sleep(0.2)


def start_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.start()


def stop_all(workers: list[_Worker], timeout: float = 30.0) -> None:
    for worker in workers:
        worker.stop()
    for worker in workers:
        worker.join(timeout)


def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait (checking every 50 ms) for ``condition``; its exceptions count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception as error:
            last = error
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")
