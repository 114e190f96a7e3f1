"""What a node does, for the HTTP APIs, with a session it holds. No NATS.

GetConnection, ListSubscriptions, QueryDeviceSubTopic, DeleteConnection, SendDirectMessage,
RRpc and PubBroadcast act on one client's session (or on the devices of a product), which
lives on exactly one node of a cluster (cluster/owners.py). The node that holds the session
runs these functions: for a call made on that node directly, or for a call made on another
node, through the node-to-node service (cluster/rpc.py), which carries their results in
their wire form (``SessionInfo.to_wire``, ``DirectOutcome``). A hub of its own calls them
directly; importing this module imports no NATS client.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..auth.aliyun_device import device_client_id
from ..broker.admission import API_CALLER
from ..http.publishing import publish
from ..message import Message
from ..registry.errors import StoreUnavailable

if TYPE_CHECKING:
    from ..broker.broker import Broker

__all__ = [
    "ClusterUnreachable",
    "DirectOutcome",
    "RrpcOutcome",
    "SessionInfo",
    "SubscriptionInfo",
    "broadcast",
    "disconnect",
    "rrpc",
    "send_direct",
    "session_info",
]


class ClusterUnreachable(StoreUnavailable):
    """The node holding the session cannot be asked now (NATS out of reach, the node gone or
    too slow to answer). Never reported as "not connected": the dialects answer their
    "service unavailable" (AWS 503 ``ServiceUnavailableException``, the Alibaba gateway's 503
    ``ServiceUnavailable``), which the SDKs retry."""


@dataclass(frozen=True, slots=True)
class SubscriptionInfo:
    full_filter: str
    qos: int
    subscribed_at_ms: int
    no_local: bool
    retain_as_published: bool
    retain_handling: int
    subscription_id: int | None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One session as the APIs show it, wherever it lives."""

    client_id: str
    #: the node holding it ("" on a hub of its own)
    node: str
    connected: bool
    expiry_interval: int
    #: MQTT protocol level of the connection (4: 3.1.1, 5: 5.0); 0 while offline
    protocol: int
    keep_alive: int | None
    connected_at_ms: int | None
    disconnected_at_ms: int | None
    disconnect_reason: str | None
    #: "ip:port" of the client and of the hub's end, while connected
    peer: str | None
    local: str | None
    #: messages waiting for the client (queued, in memory or on disk)
    queued: int
    subscriptions: tuple[SubscriptionInfo, ...]
    #: their bytes, and the QoS 1/2 copies sent and not yet acknowledged (the console's)
    queued_bytes: int = 0
    in_flight: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {
            "c": self.client_id,
            "n": self.node,
            "on": self.connected,
            "x": self.expiry_interval,
            "p": self.protocol,
            "k": self.keep_alive,
            "ca": self.connected_at_ms,
            "da": self.disconnected_at_ms,
            "dr": self.disconnect_reason,
            "pe": self.peer,
            "lo": self.local,
            "q": self.queued,
            "qb": self.queued_bytes,
            "fl": self.in_flight,
            "s": [
                [
                    s.full_filter,
                    s.qos,
                    s.subscribed_at_ms,
                    s.no_local,
                    s.retain_as_published,
                    s.retain_handling,
                    s.subscription_id,
                ]
                for s in self.subscriptions
            ],
        }

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> SessionInfo:
        """ValueError for anything but ``to_wire``'s form."""
        try:
            subscriptions = tuple(
                SubscriptionInfo(
                    str(f), int(q), int(at), bool(nl), bool(rap), int(rh), _opt_int(sid)
                )
                for f, q, at, nl, rap, rh, sid in raw["s"]
            )
            return cls(
                client_id=str(raw["c"]),
                node=str(raw["n"]),
                connected=bool(raw["on"]),
                expiry_interval=int(raw["x"]),
                protocol=int(raw["p"]),
                keep_alive=_opt_int(raw["k"]),
                connected_at_ms=_opt_int(raw["ca"]),
                disconnected_at_ms=_opt_int(raw["da"]),
                disconnect_reason=_opt_str(raw["dr"]),
                peer=_opt_str(raw["pe"]),
                local=_opt_str(raw["lo"]),
                queued=int(raw["q"]),
                subscriptions=subscriptions,
                # Absent from a node of an earlier version: not known there.
                queued_bytes=int(raw.get("qb", 0)),
                in_flight=int(raw.get("fl", 0)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a session description: {error}") from None


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _int_attr(obj: object, name: str) -> int | None:
    value = getattr(obj, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def session_info(broker: Broker, node: str, account: str, client_id: str) -> SessionInfo | None:
    """The session of ``client_id`` in ``account`` on this node, None if it holds none."""
    session = broker.session_of(account, client_id)
    if session is None:
        return None
    client = session.client
    connected = client is not None and client.connected
    peer = local = None
    keep_alive = connected_at = None
    protocol = 0
    if client is not None and connected:
        keep_alive = client.keep_alive
        connected_at = client.connected_at_ms or None
        protocol = int(client.version)
        peer = client.link.peer
        held = getattr(client.link, "local", None)
        local = held if isinstance(held, str) else None
    reason = getattr(session, "disconnect_reason", None)
    return SessionInfo(
        client_id=client_id,
        node=node,
        connected=connected,
        expiry_interval=session.expiry_interval,
        protocol=protocol,
        keep_alive=keep_alive,
        connected_at_ms=connected_at,
        disconnected_at_ms=None if connected else _int_attr(session, "disconnected_at_ms"),
        disconnect_reason=reason if isinstance(reason, str) and reason else None,
        peer=peer,
        local=local,
        queued=session.delivery.queued,
        queued_bytes=session.delivery.queued_bytes,
        in_flight=len(session.delivery.inflight),
        subscriptions=tuple(
            SubscriptionInfo(
                e.full_filter,
                e.qos,
                e.subscribed_at_ms,
                e.no_local,
                e.retain_as_published,
                e.retain_handling,
                e.subscription_id,
            )
            for e in session.subscriptions.values()
        ),
    )


def disconnect(
    broker: Broker, account: str, client_id: str, *, clean_session: bool, prevent_will: bool
) -> bool:
    """DeleteConnection on this node: ``Broker.disconnect_client``; False if not connected."""
    return broker.disconnect_client(
        account, client_id, clean_session=clean_session, prevent_will=prevent_will
    )


class DirectOutcome(enum.Enum):
    """What became of one message sent to one client (SendDirectMessage)."""

    DELIVERED = "ok"  # sent (QoS 0), or acknowledged by the client (QoS 1)
    OFFLINE = "offline"  # the client is not connected
    TIMEOUT = "timeout"  # sent at QoS 1, no PUBACK within the time given


async def send_direct(
    broker: Broker, account: str, client_id: str, message: Message, timeout_s: float
) -> DirectOutcome:
    """Send ``message`` (its id set) to the connected client ``client_id`` whatever it
    subscribed to; at QoS 1, wait up to ``timeout_s`` for its PUBACK. Raises StoreUnavailable
    (the store takes no QoS 1 work now) and PublishRefused as ``Broker.send_direct`` does,
    before anything is sent."""
    if not message.qos:
        sent = broker.send_direct(account, client_id, message, API_CALLER)
        return DirectOutcome.DELIVERED if sent else DirectOutcome.OFFLINE
    acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_acked() -> None:
        if not acked.done():
            acked.set_result(None)

    if not broker.store.accepting:
        # A QoS 1 copy to a persistent session is stored: refused like any publish while the
        # store cannot take more, before anything is sent.
        raise StoreUnavailable("the message store is not accepting new messages")
    if not broker.send_direct(account, client_id, message, API_CALLER, on_acked):
        return DirectOutcome.OFFLINE
    try:
        await asyncio.wait_for(acked, timeout_s)
    except TimeoutError:
        return DirectOutcome.TIMEOUT
    return DirectOutcome.DELIVERED


class RrpcOutcome(enum.Enum):
    SUCCESS = "SUCCESS"
    OFFLINE = "OFFLINE"
    TIMEOUT = "TIMEOUT"


async def rrpc(
    broker: Broker,
    client_id: str,
    request: Message,
    reply_topic: str,
    timeout_s: float,
) -> tuple[RrpcOutcome, bytes]:
    """RRpc on the node holding the device's session: publish ``request`` (its id set, in
    the device's account) and wait up to ``timeout_s`` for the device's own publication on
    ``reply_topic``. The request goes through the one publish path (http/publishing.py), so
    it is also routed to any other subscriber, on any node, as any publish is; the reply is
    watched here, where the device publishes it."""
    account = request.account
    session = broker.session_of(account, client_id)
    if session is None or session.client is None:
        return RrpcOutcome.OFFLINE, b""
    reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def on_reply(message: Message) -> None:
        # With the custom form the request itself is on the reply topic: only the device's
        # own publications answer.
        if message.origin == client_id and not reply.done():
            reply.set_result(message.payload)

    watch = broker.watch(account, reply_topic, on_reply)
    try:
        await publish(broker, request)
        try:
            payload = await asyncio.wait_for(reply, timeout_s)
        except TimeoutError:
            return RrpcOutcome.TIMEOUT, b""
    finally:
        watch.cancel()
    return RrpcOutcome.SUCCESS, payload


def broadcast(
    broker: Broker,
    account: str,
    product_key: str,
    device_names: Iterable[str],
    message_id: int,
    payload: bytes,
    origin: str,
) -> int:
    """PubBroadcast to every online device of a product: each of ``device_names`` whose
    session is on this node gets the message on ``/sys/${pk}/${dn}/broadcast/request/${id}``
    whatever it subscribed to. Returns how many were sent."""
    sent = 0
    for device_name in device_names:
        copy = Message(
            topic=f"/sys/{product_key}/{device_name}/broadcast/request/{message_id}",
            payload=payload,
            account=account,
            origin=origin,
            id=message_id,
        )
        sent += broker.send_direct(
            account, device_client_id(product_key, device_name), copy, API_CALLER
        )
    return sent
