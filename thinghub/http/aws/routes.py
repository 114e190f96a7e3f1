"""One handler per iot-data operation (reference ``aws-iot-data-api.md`` §1).

Each handler gets a :class:`Call` that ``api`` has already matched, read and authenticated
(the account is the access key's), checks its own parameters (``validation``), calls the core
and renders the operation's answer. Errors are raised as :class:`AwsError` and rendered in one
place (``api``). Tenancy: everything is looked up in the caller's account only, so another
account's retained message or client gets the same ``ResourceNotFoundException`` as one that
does not exist.
"""

from __future__ import annotations

import base64
import bisect
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web

from ...message import Message
from ...registry.ids import decode_message_id
from .. import sessions
from ..context import HubContext
from ..publishing import publish as publish_message
from ..sessions import DirectOutcome
from . import shadow_routes
from .errors import GATEWAY_TIMEOUT, AwsError, json_response, ok_response
from .paging import next_token, token_position
from .validation import (
    Params,
    check_client_id,
    check_payload_size,
    check_publish_topic,
    check_topic,
    message_fields,
    parse_bool,
    parse_int,
)

__all__ = ["OPERATIONS", "Call", "Handler"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call:
    """An authenticated request, ready for its operation's handler."""

    request_id: str
    #: the account (topic space) of the access key that signed the request
    account: str
    access_key_id: str
    #: the decoded URI label: ``{topic}`` or ``{clientId}`` ("" for operations without one)
    label: str
    params: Params
    headers: Mapping[str, str]
    body: bytes

    @property
    def origin(self) -> str:
        return f"http:aws:{self.access_key_id}"

    def ok(self, body: dict[str, object]) -> web.Response:
        return json_response(body, self.request_id)


Handler = Callable[[HubContext, Call], Awaitable[web.StreamResponse]]

# A page of ListRetainedMessages when maxResults is absent (the model gives no default).
DEFAULT_RETAINED_PAGE = 200
# ListSubscriptions' documented default page ("By default, this is set to 20").
DEFAULT_SUBSCRIPTIONS_PAGE = 20
# SendDirectMessage timeout: "Valid range: 1 to 15 seconds. Default value: 5 seconds."
DEFAULT_CONFIRM_TIMEOUT = 5
MAX_CONFIRM_TIMEOUT = 15


# --------------------------------------------------------------------------- Publish


async def publish(ctx: HubContext, call: Call) -> web.Response:
    """``POST /topics/{topic}``: one message into the account's topic space, through the
    hub's one publish path (so a 200 for QoS 1 means what a PUBACK means)."""
    params = call.params
    retain = parse_bool("retain", params.get("retain"))
    qos = parse_int("qos", params.get("qos"), 0, 0, 1)
    topic = check_publish_topic(call.label, retain)
    check_payload_size(len(call.body))
    fields = message_fields(params, call.headers, call.body)
    broker = ctx.broker
    message = Message(
        topic=topic,
        payload=call.body,
        qos=qos,
        retain=retain,
        properties=fields.properties,
        account=call.account,
        origin=call.origin,
        expiry_interval=fields.expiry_interval,
    )
    await publish_message(broker, message)
    # What AWS answers a successful HTTPS publish with (reference §3, "Success").
    return ok_response(call.request_id)


# --------------------------------------------------------------------------- retained


async def get_retained_message(ctx: HubContext, call: Call) -> web.Response:
    """``GET /retainedMessage/{topic}``; payload and userProperties are blobs (base64)."""
    topic = check_topic(call.label)
    message = ctx.broker.retained_message(call.account, topic)
    if message is None:
        raise AwsError.not_found(f"No retained message exists for topic {topic}.")
    body: dict[str, object] = {
        "topic": topic,
        "payload": _b64(message.payload),
        "qos": message.qos,
    }
    modified = last_modified_ms(message)
    if modified is not None:
        body["lastModifiedTime"] = modified
    users = message.properties.user_properties
    if users:
        array = [{name: value} for name, value in users]
        body["userProperties"] = _b64(json.dumps(array, separators=(",", ":")).encode())
    return call.ok(body)


async def list_retained_messages(ctx: HubContext, call: Call) -> web.Response:
    """``GET /retainedMessage``: summaries in topic order, paged by ``nextToken``."""
    params = call.params
    limit = parse_int("maxResults", params.get("maxResults"), DEFAULT_RETAINED_PAGE, 1, 200)
    after = token_position("retained", params.get("nextToken"))
    messages = ctx.broker.retained_messages(call.account)  # sorted by topic
    page, token = _page(messages, lambda m: m.topic, after, limit, "retained")
    summaries: list[dict[str, object]] = []
    for message in page:
        summary: dict[str, object] = {
            "topic": message.topic,
            "payloadSize": len(message.payload),
            "qos": message.qos,
        }
        modified = last_modified_ms(message)
        if modified is not None:
            summary["lastModifiedTime"] = modified
        summaries.append(summary)
    body: dict[str, object] = {"retainedTopics": summaries}
    if token is not None:
        body["nextToken"] = token
    return call.ok(body)


def last_modified_ms(message: Message) -> int | None:
    """When the retained message was stored, in Unix milliseconds.

    ``Message.published_at_ms`` when the message carries it; otherwise the time inside the
    hub's 63-bit MessageId (registry/ids.py layout), which is the publish time to the
    millisecond when the broker uses the hub's generator. None (field omitted) when neither
    is known, e.g. a broker counting ids from 1."""
    stamp = getattr(message, "published_at_ms", None)
    if isinstance(stamp, int) and stamp > 0:
        return stamp
    if message.id >= 1 << 22:  # a millisecond part above zero: a generated id
        return decode_message_id(message.id).unix_ms
    return None


# --------------------------------------------------------------------------- connections


async def get_connection(ctx: HubContext, call: Call) -> web.Response:
    """``GET /connections/{clientId}``: the client's session and, while it is connected, its
    connection (socket details only with ``includeSocketInformation=true``), on whichever
    node of a cluster holds it (http/sessions.py)."""
    client_id = check_client_id(call.label)
    include_socket = parse_bool(
        "includeSocketInformation", call.params.get("includeSocketInformation")
    )
    info = await sessions.session_info(ctx, call.account, client_id)
    if info is None:
        raise AwsError.not_found(f"No connection exists for client ID {client_id}.")
    body: dict[str, object] = {
        "clientId": client_id,
        "connected": info.connected,
        # "true for clean sessions or false for persistent sessions": a session that ends
        # with its connection (expiry 0) is a clean one.
        "cleanSession": info.expiry_interval == 0,
        "sessionExpiry": info.expiry_interval,
    }
    if info.connected:
        if info.keep_alive is not None:
            body["keepAliveDuration"] = info.keep_alive
        if info.connected_at_ms is not None:
            body["connectedSince"] = info.connected_at_ms
        if include_socket:
            source = _split_host_port(info.peer) if info.peer else None
            if source is not None:
                body["sourceIp"], body["sourcePort"] = source
            target = _split_host_port(info.local) if info.local else None
            if target is not None:
                body["targetIp"], body["targetPort"] = target
    else:
        if info.disconnected_at_ms is not None:
            body["disconnectedSince"] = info.disconnected_at_ms
        if info.disconnect_reason:
            body["disconnectReason"] = info.disconnect_reason
    return call.ok(body)


async def list_subscriptions(ctx: HubContext, call: Call) -> web.Response:
    """``GET /connections/{clientId}/subscriptions``: topic filters (as subscribed, with any
    ``$share/<group>/``) and granted QoS, in filter order, paged by ``nextToken``."""
    params = call.params
    client_id = check_client_id(call.label)
    limit = parse_int("maxResults", params.get("maxResults"), DEFAULT_SUBSCRIPTIONS_PAGE, 1, 200)
    after = token_position("subscriptions", params.get("nextToken"))
    info = await sessions.session_info(ctx, call.account, client_id)
    if info is None:
        raise AwsError.not_found(f"No connection exists for client ID {client_id}.")
    entries = sorted(info.subscriptions, key=lambda e: e.full_filter)
    page, token = _page(entries, lambda e: e.full_filter, after, limit, "subscriptions")
    body: dict[str, object] = {
        "subscriptions": [{"topicFilter": e.full_filter, "qos": e.qos} for e in page]
    }
    if token is not None:
        body["nextToken"] = token
    return call.ok(body)


async def delete_connection(ctx: HubContext, call: Call) -> web.Response:
    """``DELETE /connections/{clientId}``: close the client's connection (MQTT 5 DISCONNECT
    0x98, administrative action); ``cleanSession`` ends its session, ``preventWillMessage``
    drops its will. "200 OK with no response body" (reference §1)."""
    params = call.params
    client_id = check_client_id(call.label)
    clean = parse_bool("cleanSession", params.get("cleanSession"))
    prevent_will = parse_bool("preventWillMessage", params.get("preventWillMessage"))
    done = await sessions.disconnect(
        ctx, call.account, client_id, clean_session=clean, prevent_will=prevent_will
    )
    if not done:
        raise AwsError.not_found(f"No connected client has the client ID {client_id}.")
    return web.Response(status=200, headers={"x-amzn-RequestId": call.request_id})


async def send_direct_message(ctx: HubContext, call: Call) -> web.Response:
    """``POST /connections/{clientId}/messages``: one message to one connected client,
    whatever it subscribed to. ``confirmation=true`` sends it at QoS 1 and answers once the
    device's PUBACK arrives, or 504 ``GatewayTimeoutException`` after ``timeout`` seconds;
    otherwise QoS 0 and an immediate answer (model documentation). The node holding the
    client's session sends it (http/sessions.py)."""
    params = call.params
    client_id = check_client_id(call.label)
    raw_topic = params.get("topic")
    if raw_topic is None:
        raise AwsError.invalid("The topic parameter is required.")
    topic = check_publish_topic(raw_topic, False)
    check_payload_size(len(call.body))
    confirmation = parse_bool("confirmation", params.get("confirmation"))
    timeout = parse_int(
        "timeout", params.get("timeout"), DEFAULT_CONFIRM_TIMEOUT, 1, MAX_CONFIRM_TIMEOUT
    )
    fields = message_fields(params, call.headers, call.body)
    broker = ctx.broker
    message = Message(
        topic=topic,
        payload=call.body,
        qos=1 if confirmation else 0,
        properties=fields.properties,
        account=call.account,
        origin=call.origin,
    )
    message.id = broker.new_message_id()
    outcome = await sessions.send_direct(ctx, call.account, client_id, message, timeout)
    if outcome is DirectOutcome.OFFLINE:
        raise AwsError.not_found(f"No connected client has the client ID {client_id}.")
    if outcome is DirectOutcome.TIMEOUT:
        raise AwsError(
            GATEWAY_TIMEOUT,
            f"The client did not confirm delivery (PUBACK) within {timeout} seconds.",
        )
    return call.ok({"message": "OK", "traceId": call.request_id})


# --------------------------------------------------------------------------- helpers


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _split_host_port(address: str) -> tuple[str, int] | None:
    """``"1.2.3.4:5"`` or ``"::1:5"`` (how the transports name a peer) as (ip, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _page(
    items: Sequence[T],
    key: Callable[[T], str],
    after: str | None,
    limit: int,
    kind: str,
) -> tuple[Sequence[T], str | None]:
    """Up to ``limit`` items (sorted by ``key``) after the key ``after``, and the token for
    the rest (None on the last page, which ends boto3's paginator)."""
    start = 0 if after is None else bisect.bisect_right(items, after, key=key)
    page = items[start : start + limit]
    more = start + limit < len(items)
    return page, (next_token(kind, key(page[-1])) if more and page else None)


OPERATIONS: dict[str, Handler] = {
    "Publish": publish,
    "GetRetainedMessage": get_retained_message,
    "ListRetainedMessages": list_retained_messages,
    "GetConnection": get_connection,
    "ListSubscriptions": list_subscriptions,
    "DeleteConnection": delete_connection,
    "SendDirectMessage": send_direct_message,
    # Device shadows: shadow_routes.py.
    "GetThingShadow": shadow_routes.get_thing_shadow,
    "UpdateThingShadow": shadow_routes.update_thing_shadow,
    "DeleteThingShadow": shadow_routes.delete_thing_shadow,
    "ListNamedShadowsForThing": shadow_routes.list_named_shadows_for_thing,
}
