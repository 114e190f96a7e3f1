"""The HTTP dialects' one way to a client's session, on whichever node holds it.

On a hub of its own these are the node's own operations (cluster/sessionops.py); in a
cluster they go through the node-to-node requests (cluster/rpc.py), which answer a session
held here without NATS. Either raises ``ClusterUnreachable`` (a ``StoreUnavailable``: each
dialect's 503) when the node holding the session cannot be asked, never "not connected".
"""

from __future__ import annotations

from ..cluster import sessionops
from ..cluster.sessionops import ClusterUnreachable, DirectOutcome, RrpcOutcome, SessionInfo
from ..message import Message
from .context import HubContext

__all__ = [
    "ClusterUnreachable",
    "DirectOutcome",
    "RrpcOutcome",
    "SessionInfo",
    "broadcast",
    "disconnect",
    "rrpc",
    "send_direct",
    "session_info",
]


async def session_info(ctx: HubContext, account: str, client_id: str) -> SessionInfo | None:
    rpc = ctx.cluster
    if rpc is None:
        return sessionops.session_info(ctx.broker, "", account, client_id)
    return await rpc.session_info(account, client_id)


async def disconnect(
    ctx: HubContext, account: str, client_id: str, *, clean_session: bool, prevent_will: bool
) -> bool:
    """Close the client's connection (DISCONNECT 0x98); False if it is not connected."""
    rpc = ctx.cluster
    if rpc is None:
        return sessionops.disconnect(
            ctx.broker, account, client_id, clean_session=clean_session, prevent_will=prevent_will
        )
    return await rpc.disconnect(
        account, client_id, clean_session=clean_session, prevent_will=prevent_will
    )


async def send_direct(
    ctx: HubContext, account: str, client_id: str, message: Message, timeout_s: float
) -> DirectOutcome:
    rpc = ctx.cluster
    if rpc is None:
        return await sessionops.send_direct(ctx.broker, account, client_id, message, timeout_s)
    return await rpc.send_direct(account, client_id, message, timeout_s)


async def rrpc(
    ctx: HubContext, client_id: str, request: Message, reply_topic: str, timeout_s: float
) -> tuple[RrpcOutcome, bytes]:
    rpc = ctx.cluster
    if rpc is None:
        return await sessionops.rrpc(ctx.broker, client_id, request, reply_topic, timeout_s)
    return await rpc.rrpc(client_id, request, reply_topic, timeout_s)


async def broadcast(
    ctx: HubContext,
    account: str,
    product_key: str,
    device_names: list[str],
    message_id: int,
    payload: bytes,
    origin: str,
) -> int:
    rpc = ctx.cluster
    if rpc is None:
        return sessionops.broadcast(
            ctx.broker, account, product_key, device_names, message_id, payload, origin
        )
    return await rpc.broadcast(account, product_key, device_names, message_id, payload, origin)
