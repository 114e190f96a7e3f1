"""Node-to-node requests: what the HTTP APIs on one node ask of the node holding a session.

A client's session lives on one node (cluster/owners.py); GetConnection, ListSubscriptions,
QueryDeviceSubTopic, DeleteConnection, SendDirectMessage and RRpc made on any node act on it
there (docs/architecture.md, *Cluster*). Each node answers requests on its own subject,
``<prefix>.rpc.<node>``, with core NATS request/reply; what it does with them is
cluster/sessionops.py, the same functions a call made on that node runs directly.

**Which node.** A session this node holds is answered here, without NATS. Otherwise the
owners bucket says which node holds the client id; when it names none (the claim of a client
that connected a moment ago may not have landed yet, or was dropped under load), every live
node is asked whether it holds it. A session that no node holds is "not connected"; a node
that cannot be asked (NATS out of reach, the node gone or too slow) makes the call fail with
``ClusterUnreachable``, which the dialects answer 503, never "offline".

**A message's trace** (``trace``: ``GET /thinghub/trace/{MessageId}``, http/trace_routes.py)
is in parts, one on each node that routed the message (docs/architecture.md, *Delivery
trace*): this node's part, and every other live node's, asked in parallel, each answering
only for the asking key's account. A node that does not answer within ``request_timeout``
is named as such in the merged answer (trace/report.py, ``merge``); it never fails the call.
So is a node that left the cluster (stopped, or not heard of for ``node_timeout``) after the
message was published (the time in its MessageId, registry/ids.py): its part, if it had one,
went with it. Which nodes left, and when, is sampled every ``heartbeat_interval`` (at most
``_LEFT_KEPT`` of them, for as long as a trace is kept). A part is at most
``report.PART_BYTES`` of JSON (``report.fit``: the sessions beyond are counted, not listed).

**Wire, version 1.** A request is a JSON object ``{"v": 1, "op": ..., ...}``; when it carries
a message (SendDirectMessage, RRpc), a newline and the message's envelope follow
(cluster/envelope.py: topic, payload, QoS, MQTT 5 properties, MessageId). A reply is a JSON
object ``{"v": 1, ...result}``, followed by a newline and the device's reply payload for an
RRpc; or ``{"v": 1, "e": kind, "m": text}`` with kind "busy" (the node has
``max_concurrent`` requests in hand), "bad" (unreadable), "failed" (a fault of the node),
"unavailable" (its store takes no QoS 1 work now) or "refused" (its admission gate refused
the message; "k" names the refusal, "rc" its MQTT reason code). A trace's reply is
``{"v": 1, "tracing": bool, "n": the node's number in MessageIds, "part": its report or null,
"cut": sessions left out of it}``. A reader of another version
answers "bad": the nodes of one cluster run one version.

**Bounds.** At most ``max_concurrent`` requests are in hand on a node (RRpc and confirmed
SendDirectMessage wait for the device); beyond that it answers "busy" at once, and nats-py
holds at most ``_PENDING_MSGS`` unread requests. Every request waits at most
``cluster.request_timeout`` seconds plus the time the operation itself may take (RRpc's
``Timeout``, SendDirectMessage's ``timeout``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from ..broker.admission import PublishRefused, Refusal
from ..message import Message
from ..mqtt.types import ReasonCode
from ..registry.errors import StoreUnavailable
from ..registry.ids import decode_message_id
from ..trace import report as trace_report
from . import envelope, sessionops
from .bus import Bus
from .owners import _kv_key, _owner
from .sessionops import ClusterUnreachable, DirectOutcome, RrpcOutcome, SessionInfo
from .settings import ClusterSettings
from .subjects import Subjects

if TYPE_CHECKING:
    from ..broker.broker import Broker

log = logging.getLogger("thinghub.cluster")

VERSION = 1
#: Requests nats-py holds unread for this node's subscription.
_PENDING_MSGS = 4096
_BROADCAST_CHUNK = 1000
#: Nodes that left the cluster remembered at most (the trace names those that left after the
#: message it shows was published); past it the oldest departures are forgotten.
_LEFT_KEPT = 1024
#: The key under which a reply's binary part (an RRpc reply's payload), which follows its
#: JSON after a newline on the wire, is handed around.
_TAIL = "tail"


class _Busy(Exception):
    pass


@dataclass
class RpcCounters:
    # Asked of other nodes: sent, answered with an error or not at all.
    sent: int = 0
    failed: int = 0
    # Answered for other nodes; refused for lack of room.
    served: int = 0
    busy: int = 0
    # Owner lookups the owners bucket did not settle (every live node was asked).
    searches: int = 0


class ClusterRpc:
    def __init__(
        self,
        bus: Bus,
        subjects: Subjects,
        settings: ClusterSettings,
        node: str,
        broker: Broker,
        owners_bucket: str,
        live_nodes: Callable[[], Collection[str]],
        number: int = 0,
    ) -> None:
        self.bus = bus
        self.subjects = subjects
        self.settings = settings
        self.node = node
        self.broker = broker
        self.owners_bucket = owners_bucket
        # The number in this node's MessageIds (cluster/numbers.py): tells which part of a
        # trace is the publishing node's.
        self.number = number
        #: The other nodes heard from within ``node_timeout`` (cluster/interest.py).
        self.live_nodes = live_nodes
        # Requests in hand at once (each RRpc or confirmed direct message waits for its
        # device); beyond it this node answers "busy".
        self.max_concurrent = settings.rpc_max_concurrent
        self.counters = RpcCounters()
        self._active = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._starting: asyncio.Task[None] | None = None
        self._watching: asyncio.Task[None] | None = None
        # The other nodes at the last look, and those that have left since: name -> when
        # (time.time()) this node first missed it.
        self._members: set[str] = set()
        self._left: dict[str, float] = {}
        self._sub: Subscription | None = None
        self._kv: KeyValue | None = None

    def subject(self, node: str) -> str:
        return f"{self.subjects.prefix}.rpc.{node}"

    def nodes(self) -> int:
        """How many nodes the cluster has now, this one included."""
        return 1 + len(self.live_nodes())

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._starting = loop.create_task(self._subscribe())
        self._watching = loop.create_task(self._watch())

    async def stop(self) -> None:
        started = [task for task in (self._starting, self._watching) if task is not None]
        tasks = [*self._tasks, *started]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error as error:
                log.debug("NATS unsubscribe: %s", error)
            self._sub = None

    def _client(self) -> NATSClient | None:
        # Bus (cluster/bus.py) hands its own subscriptions' messages over without their reply
        # subject; request/reply needs nats-py's own subscription and request on its client.
        return self.bus._nc

    async def _subscribe(self) -> None:
        await self.bus.wait_connected()
        nc = self._client()
        assert nc is not None
        # Renewed by nats-py on every reconnect, as the bus's subscriptions are.
        self._sub = await nc.subscribe(
            self.subject(self.node), cb=self._received, pending_msgs_limit=_PENDING_MSGS
        )

    # ------------------------------------------------------------------ the client side

    async def session_info(self, account: str, client_id: str) -> SessionInfo | None:
        local = sessionops.session_info(self.broker, self.node, account, client_id)
        if local is not None:
            return local
        owner = await self._owner(account, client_id)
        if owner is None:
            return None
        reply = await self._ask(owner, {"op": "info", "a": account, "c": client_id})
        raw = reply.get("info")
        if raw is None:
            return None
        try:
            return SessionInfo.from_wire(raw)
        except ValueError as error:
            raise ClusterUnreachable(f"node {owner} answered unreadably: {error}") from None

    async def disconnect(
        self, account: str, client_id: str, *, clean_session: bool, prevent_will: bool
    ) -> bool:
        if self.broker.session_of(account, client_id) is not None:
            return sessionops.disconnect(
                self.broker,
                account,
                client_id,
                clean_session=clean_session,
                prevent_will=prevent_will,
            )
        owner = await self._owner(account, client_id)
        if owner is None:
            return False
        request = {
            "op": "disconnect",
            "a": account,
            "c": client_id,
            "clean": clean_session,
            "nowill": prevent_will,
        }
        return bool((await self._ask(owner, request)).get("done"))

    async def send_direct(
        self, account: str, client_id: str, message: Message, timeout_s: float
    ) -> DirectOutcome:
        if self.broker.session_of(account, client_id) is not None:
            return await sessionops.send_direct(self.broker, account, client_id, message, timeout_s)
        owner = await self._owner(account, client_id)
        if owner is None:
            return DirectOutcome.OFFLINE
        request = {"op": "direct", "c": client_id, "t": timeout_s}
        reply = await self._ask(owner, request, message, wait=timeout_s)
        try:
            return DirectOutcome(reply.get("r"))
        except ValueError:
            raise ClusterUnreachable(f"node {owner} answered unreadably") from None

    async def rrpc(
        self, client_id: str, request: Message, reply_topic: str, timeout_s: float
    ) -> tuple[RrpcOutcome, bytes]:
        """RRpc through the node holding the device's session: that node publishes the
        request and watches the reply where the device publishes it (sessionops.rrpc)."""
        account = request.account
        if self.broker.session_of(account, client_id) is not None:
            return await sessionops.rrpc(self.broker, client_id, request, reply_topic, timeout_s)
        owner = await self._owner(account, client_id)
        if owner is None:
            return RrpcOutcome.OFFLINE, b""
        ask = {"op": "rrpc", "c": client_id, "rt": reply_topic, "t": timeout_s}
        reply = await self._ask(owner, ask, request, wait=timeout_s)
        try:
            outcome = RrpcOutcome(reply.get("r"))
        except ValueError:
            raise ClusterUnreachable(f"node {owner} answered unreadably") from None
        tail = reply.get(_TAIL, b"")
        return outcome, tail if isinstance(tail, bytes) else b""

    async def broadcast(
        self,
        account: str,
        product_key: str,
        device_names: list[str],
        message_id: int,
        payload: bytes,
        origin: str,
    ) -> int:
        """PubBroadcast to the devices of a product wherever they are connected: this node's
        own, then every other live node, each given the device names (in chunks). A node that
        cannot be told makes it fail (``ClusterUnreachable``) once the others have been."""
        sent = sessionops.broadcast(
            self.broker, account, product_key, device_names, message_id, payload, origin
        )
        others = list(self.live_nodes())
        if not others or not device_names:
            return sent
        message = Message(topic="/", payload=payload, account=account, origin=origin)
        message.id = message_id
        asks = [
            self._ask(
                node,
                {"op": "broadcast", "pk": product_key, "d": device_names[i : i + _BROADCAST_CHUNK]},
                message,
            )
            for node in others
            for i in range(0, len(device_names), _BROADCAST_CHUNK)
        ]
        results = await asyncio.gather(*asks, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        sent += sum(int(r.get("n", 0)) for r in results if isinstance(r, dict))
        if failed:
            raise ClusterUnreachable(f"{len(failed)} node(s) could not be told: {failed[0]}")
        return sent

    async def trace(self, account: str, message_id: int) -> list[trace_report.Part]:
        """Every node's part of a message's trace, this node's first: the others are asked in
        parallel and waited for ``request_timeout`` at most; one that did not answer is a
        part with ``answered`` False and why. For trace/report.py's ``merge``."""
        here = self._trace_part(account, message_id)
        parts = [_trace_part_of(self.node, here, message_id)]
        self._look()
        others = sorted(self._members)
        ask = {"op": "trace", "a": account, "m": message_id}
        results = await asyncio.gather(
            *(self._ask(node, dict(ask)) for node in others), return_exceptions=True
        )
        for node, result in zip(others, results, strict=True):
            if isinstance(result, dict):
                parts.append(_trace_part_of(node, result, message_id))
            elif isinstance(result, Exception):
                parts.append(trace_report.Part(node, answered=False, error=str(result)))
            else:
                raise result  # cancelled: the HTTP request went away
        published = decode_message_id(message_id).unix_ms / 1000
        now = time.time()
        for node, left in sorted(self._left.items()):
            if left >= published:
                error = (
                    f"node {node} left the cluster {now - left:.0f} s ago (stopped, or not "
                    "heard of for cluster.node_timeout): its part, if it had one, went with it"
                )
                parts.append(trace_report.Part(node, answered=False, error=error))
        return parts

    async def _watch(self) -> None:
        while True:
            self._look()
            await asyncio.sleep(self.settings.heartbeat_interval)

    def _look(self) -> None:
        """Note which nodes left the cluster since the last look (and forget those that
        came back, and departures older than any trace here: ``[trace] max_age_s``)."""
        members = set(self.live_nodes())
        now = time.time()
        for node in self._members - members:
            self._left[node] = now
        for node in members:
            self._left.pop(node, None)
        self._members = members
        recorder = self.broker.trace
        oldest = now - recorder.max_age_s if recorder is not None else 0.0
        for node, left in list(self._left.items()):
            if left < oldest or len(self._left) > _LEFT_KEPT:
                del self._left[node]  # in the order they left: the oldest first

    def _trace_part(self, account: str, message_id: int) -> dict[str, Any]:
        """This node's part of a message's trace, as a reply carries it: its report if this
        node traced the message for ``account`` (another account's is not shown, as on a hub
        of its own: http/trace_routes.py), fit for the wire."""
        recorder = self.broker.trace
        if recorder is None:
            return {"tracing": False}
        answer: dict[str, Any] = {"tracing": True, "n": self.number}
        record = recorder.get(message_id)
        if record is None or record.account != account:
            return answer
        state = trace_report.session_state(self.broker, account)
        answer["part"], answer["cut"] = trace_report.fit(trace_report.report(record, state))
        return answer

    # ------------------------------------------------------------------ which node

    async def _owner(self, account: str, client_id: str) -> str | None:
        """The other node holding the session (this node holds none, asked before), or None
        when no node does. Raises ClusterUnreachable when that cannot be known."""
        if not self.bus.connected:
            raise ClusterUnreachable("NATS is out of reach: the node holding it cannot be asked")
        owner: str | None = None
        kv = await self._bucket()
        if kv is not None:
            try:
                entry = await kv.get(_kv_key(account, client_id))
                owner = _owner(entry.value)
            except KeyNotFoundError:
                owner = None
            except (TimeoutError, nats.errors.Error) as error:
                raise ClusterUnreachable(f"the session owners bucket: {error}") from None
        if owner is not None and owner != self.node:
            return owner
        # Not there (yet): whoever holds it says so.
        self.counters.searches += 1
        others = list(self.live_nodes())
        if not others:
            return None
        results = await asyncio.gather(
            *(self._ask(node, {"op": "has", "a": account, "c": client_id}) for node in others),
            return_exceptions=True,
        )
        for node, result in zip(others, results, strict=True):
            if isinstance(result, dict) and result.get("has"):
                return node
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise ClusterUnreachable(f"a node could not be asked: {failed[0]}")
        return None

    async def _bucket(self) -> KeyValue | None:
        if self._kv is None:
            try:
                self._kv = await self.bus.jetstream().key_value(self.owners_bucket)
            except BucketNotFoundError:
                return None
            except (TimeoutError, nats.errors.Error) as error:
                raise ClusterUnreachable(f"the session owners bucket: {error}") from None
        return self._kv

    async def _ask(
        self,
        node: str,
        request: dict[str, Any],
        message: Message | None = None,
        *,
        wait: float = 0.0,
    ) -> dict[str, Any]:
        """One request to ``node``; its answer, or an exception in the caller's terms."""
        nc = self._client()
        if nc is None or not self.bus.connected:
            raise ClusterUnreachable("NATS is out of reach: the node holding it cannot be asked")
        request["v"] = VERSION
        data = json.dumps(request, separators=(",", ":")).encode()
        if message is not None:
            data += b"\n" + envelope.pack_now(message, self.node, self.broker.clock.time)
        self.counters.sent += 1
        try:
            answer = await nc.request(
                self.subject(node), data, timeout=self.settings.request_timeout + wait
            )
            head, newline, tail = answer.data.partition(b"\n")
            reply = json.loads(head)
            if not isinstance(reply, dict) or reply.get("v") != VERSION:
                raise ValueError("not a version 1 reply")
        except nats.errors.NoRespondersError:
            self.counters.failed += 1
            raise ClusterUnreachable(f"node {node} is not answering (gone?)") from None
        except (TimeoutError, nats.errors.Error) as error:
            self.counters.failed += 1
            raise ClusterUnreachable(f"node {node} did not answer: {error!r}") from None
        except ValueError as error:
            self.counters.failed += 1
            raise ClusterUnreachable(f"node {node} answered unreadably: {error}") from None
        kind = reply.get("e")
        if kind is None:
            if newline:
                reply[_TAIL] = tail
            return reply
        self.counters.failed += 1
        text = str(reply.get("m", ""))
        if kind == "unavailable":
            raise StoreUnavailable(f"node {node}: {text}")
        if kind == "refused":
            refusal = {r.name: r for r in Refusal}.get(str(reply.get("k")), Refusal.UNAVAILABLE)
            code = ReasonCode(int(reply.get("rc", ReasonCode.UNSPECIFIED_ERROR)))
            raise PublishRefused(refusal, code, text)
        raise ClusterUnreachable(f"node {node} refused the request ({kind}): {text}")

    # ------------------------------------------------------------------ the server side

    async def _received(self, msg: Msg) -> None:
        """nats-py's callback, one request at a time: the work runs on a task of its own."""
        if not msg.reply:
            return
        if self._active >= self.max_concurrent:
            self.counters.busy += 1
            await self._respond(msg, {"e": "busy", "m": f"{self._active} requests in hand"})
            return
        self._active += 1
        task = asyncio.get_running_loop().create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, msg: Msg) -> None:
        try:
            try:
                answer = await self._handle(msg.data)
            except StoreUnavailable as error:
                answer = {"e": "unavailable", "m": str(error)}
            except PublishRefused as refusal:
                answer = {
                    "e": "refused",
                    "k": refusal.kind.name,
                    "rc": int(refusal.reason_code),
                    "m": refusal.reason,
                }
            except (ValueError, KeyError, TypeError, envelope.EnvelopeError) as error:
                answer = {"e": "bad", "m": str(error)}
            except Exception as error:
                # A bug here costs this request (the asking node answers 503), not the node.
                log.exception("a cluster request failed")
                answer = {"e": "failed", "m": repr(error)}
            self.counters.served += 1
            tail = answer.pop(_TAIL, None)
            await self._respond(msg, answer, tail if isinstance(tail, bytes) else None)
        finally:
            self._active -= 1

    async def _respond(self, msg: Msg, answer: dict[str, Any], tail: bytes | None = None) -> None:
        answer["v"] = VERSION
        nc = self._client()
        if nc is None:
            return
        data = json.dumps(answer, separators=(",", ":")).encode()
        if tail is not None:
            data += b"\n" + tail
        try:
            await nc.publish(msg.reply, data)
        except nats.errors.Error as error:
            log.debug("a cluster request could not be answered: %s", error)

    async def _handle(self, data: bytes) -> dict[str, Any]:
        head, _sep, body = data.partition(b"\n")
        request = json.loads(head)
        if not isinstance(request, dict) or request.get("v") != VERSION:
            raise ValueError(f"not a version {VERSION} request")
        op = request["op"]
        broker = self.broker
        if op == "trace":
            return self._trace_part(str(request["a"]), int(request["m"]))
        if op == "has":
            return {"has": broker.session_of(str(request["a"]), str(request["c"])) is not None}
        if op == "info":
            info = sessionops.session_info(broker, self.node, str(request["a"]), str(request["c"]))
            return {"info": None if info is None else info.to_wire()}
        if op == "disconnect":
            done = sessionops.disconnect(
                broker,
                str(request["a"]),
                str(request["c"]),
                clean_session=bool(request["clean"]),
                prevent_will=bool(request["nowill"]),
            )
            return {"done": done}
        message = self._message(body)
        if op == "direct":
            outcome = await sessionops.send_direct(
                broker, message.account, str(request["c"]), message, float(request["t"])
            )
            return {"r": outcome.value}
        if op == "rrpc":
            rrpc_outcome, payload = await sessionops.rrpc(
                broker, str(request["c"]), message, str(request["rt"]), float(request["t"])
            )
            return {"r": rrpc_outcome.value, _TAIL: payload}
        if op == "broadcast":
            names = [str(name) for name in request["d"]]
            sent = sessionops.broadcast(
                broker,
                message.account,
                str(request["pk"]),
                names,
                message.id,
                message.payload,
                message.origin,
            )
            return {"n": sent}
        raise ValueError(f"unknown operation {op!r}")

    def _message(self, body: bytes) -> Message:
        arrival = envelope.unpack(body, time.time(), self.broker.clock.time())
        message = arrival.message
        message.id = arrival.origin_message_id
        return message


def _trace_part_of(node: str, reply: dict[str, Any], message_id: int) -> trace_report.Part:
    """A node's reply to "trace" as a ``Part``; one that is not what this version sends is a
    node that did not answer (readably)."""
    document = reply.get("part")
    number = reply.get("n")
    cut = reply.get("cut", 0)
    if (
        not isinstance(reply.get("tracing"), bool)
        or not (number is None or isinstance(number, int))
        or not isinstance(cut, int)
        or not (document is None or isinstance(document, dict))
        or (document is not None and document.get("messageId") != str(message_id))
    ):
        return trace_report.Part(node, answered=False, error=f"node {node} answered unreadably")
    return trace_report.Part(
        node,
        answered=True,
        document=document,
        number=number,
        tracing=bool(reply["tracing"]),
        cut=cut,
    )
