"""Messages in the console::

    POST   /console/api/publish                      one message; answers its MessageId
    GET    /console/api/retained?filter=&after=&limit=   the account's retained messages
    GET    /console/api/retained/message?topic=T     one, whole
    DELETE /console/api/retained/message?topic=T     delete it
    GET    /console/api/trace?topic=&limit=          the account's latest traced messages
    GET    /console/api/trace/{messageId}            one message's delivery report

Publishing goes the HTTP dialects' way (http/publishing.py): ``Broker.publish`` as an API
caller, through the admission gate, and the answer waits until whatever the message changed
in the store is committed, so a MessageId shown for QoS 1 means what a PUBACK means. A
topic is what an MQTT client of this hub may publish to (``mqtt.max_topic_length``,
``mqtt.max_topic_levels``, no wildcards); of the reserved ``$`` topics (§4.7.2) only the
device shadows' requests, never retained. The publisher's origin is ``http:console:<key>``.

Deleting a retained message is MQTT's own way [MQTT-3.3.1-6]: a retained message with an
empty payload, published to the topic through the same path; subscribers see it as MQTT
subscribers see any such deletion.

Traces are the delivery trace's (thinghub/trace: ``report``/``summary``, the JSON that
``GET /thinghub/trace/{MessageId}`` answers), read from the broker's recorder on the event
loop; another account's MessageId is not found, as an unknown one.
"""

from __future__ import annotations

import base64
import binascii
import bisect
from typing import Any

from aiohttp import web

from ..broker.admission import PublishRefused
from ..broker.broker import Broker
from ..config import MQTTSettings
from ..http.publishing import StoreUnavailable, publish
from ..message import Message
from ..mqtt.properties import NO_PROPERTIES, Properties
from ..shadow.names import parse_request_topic
from ..topics import validate_topic_name
from ..trace.report import merge, report, session_state, summary
from .errors import CONFLICT, UNAVAILABLE, ConsoleError
from .params import json_body, query_int, text_field
from .sessions import ConsoleSession
from .state import Console
from .tail import check_filter
from .views import message_view, stored_at

__all__ = [
    "delete_retained",
    "get_retained",
    "get_trace",
    "list_retained",
    "list_traces",
    "publish_message",
]

DEFAULT_RETAINED_PAGE = 50
MAX_RETAINED_PAGE = 200
MAX_USER_PROPERTIES = 100
_MAX_EXPIRY = 0xFFFFFFFF
_MAX_ID = (1 << 63) - 1
TRACE_OFF = (
    "Delivery tracing is off on this hub: no trace is kept. Turn it on with [trace] "
    "enabled = true in the configuration file (or THINGHUB_TRACE_ENABLED=true) and restart."
)


# --------------------------------------------------------------------------- publish


async def publish_message(console: Console, request: web.Request, session: ConsoleSession) -> Any:
    mqtt = console.ctx.settings.mqtt
    limit = mqtt.max_packet_size
    # A base64 payload is 4/3 of its bytes; the rest of the form is small.
    body = await json_body(request, limit * 2 + 65536)
    topic = text_field(body, "topic", required=True)
    assert topic is not None
    retain = _flag(body, "retain")
    _check_topic(topic, retain, mqtt)
    payload = _bytes(body, "payload", body.get("encoding") or "utf8")
    if len(payload) + len(topic.encode()) > limit:
        raise ConsoleError.bad(f"The message is larger than mqtt.max_packet_size ({limit} bytes).")
    qos = body.get("qos", 0)
    if type(qos) is not int or not 0 <= qos <= mqtt.max_qos:
        raise ConsoleError.bad(f"qos must be 0 to {mqtt.max_qos} on this hub.")
    expiry = body.get("messageExpiry")
    if expiry is not None and (type(expiry) is not int or not 0 <= expiry <= _MAX_EXPIRY):
        raise ConsoleError.bad("messageExpiry must be a number of seconds, 0 to 4294967295.")
    message = Message(
        topic=topic,
        payload=payload,
        qos=qos,
        retain=retain,
        properties=_properties(body),
        account=session.account_id,
        origin=f"http:console:{session.access_key_id}",
        expiry_interval=expiry,
    )
    matched = await _publish(console.ctx.broker, message)
    return {"messageId": str(message.id), "matched": matched}


def _check_topic(topic: str, retain: bool, mqtt: MQTTSettings) -> None:
    error = validate_topic_name(
        topic, max_length=mqtt.max_topic_length, max_levels=mqtt.max_topic_levels
    )
    if error is not None:
        raise ConsoleError.bad(f"Not a topic this hub takes: {error}.")
    if topic.startswith("$"):
        # §4.7.2: $ topics are the server's; the shadow service answers requests on its own.
        if parse_request_topic(topic) is None:
            raise ConsoleError.bad(
                f"{topic} is a reserved topic; of those only device shadow requests "
                "($aws/things/NAME/shadow/...) can be published to."
            )
        if retain:
            raise ConsoleError.bad("A reserved topic cannot hold a retained message.")


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise ConsoleError.bad(f"{name} must be true or false.")
    return value


def _bytes(body: dict[str, Any], name: str, encoding: object) -> bytes:
    text = body.get(name) or ""
    if not isinstance(text, str):
        raise ConsoleError.bad(f"{name} must be a string.")
    if encoding == "utf8":
        return text.encode("utf-8", "surrogatepass")
    if encoding == "base64":
        try:
            return base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ConsoleError.bad(f"{name} is not valid base64.") from None
    raise ConsoleError.bad("encoding must be utf8 or base64.")


def _properties(body: dict[str, Any]) -> Properties:
    """The MQTT 5 properties the form sets (§3.3.2.3), checked."""
    content_type = text_field(body, "contentType")
    response_topic = text_field(body, "responseTopic")
    if response_topic is not None:
        error = validate_topic_name(response_topic)
        if error is not None:
            raise ConsoleError.bad(f"responseTopic: {error}.")
    correlation = text_field(body, "correlationData")
    raw_users = body.get("userProperties") or []
    if not isinstance(raw_users, list) or len(raw_users) > MAX_USER_PROPERTIES:
        raise ConsoleError.bad(
            f"userProperties must be a list of at most {MAX_USER_PROPERTIES} [name, value] pairs."
        )
    users: list[tuple[str, str]] = []
    for pair in raw_users:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(part, str) for part in pair)
            or not pair[0]
        ):
            raise ConsoleError.bad("Each user property is a [name, value] pair of strings.")
        users.append((pair[0], pair[1]))
    for text in (content_type, *(part for pair in users for part in pair)):
        if text is not None and ("\x00" in text or len(text.encode("utf-8", "replace")) > 65535):
            raise ConsoleError.bad("A property holds U+0000 or is longer than 65535 bytes.")
    if content_type is None and response_topic is None and correlation is None and not users:
        return NO_PROPERTIES
    return Properties(
        content_type=content_type,
        response_topic=response_topic,
        correlation_data=None if correlation is None else correlation.encode(),
        user_properties=tuple(users),
    )


async def _publish(broker: Broker, message: Message) -> int:
    try:
        return await publish(broker, message)
    except StoreUnavailable as error:
        raise ConsoleError(UNAVAILABLE, f"The hub cannot take the message now: {error}") from None
    except PublishRefused as refusal:
        raise ConsoleError(CONFLICT, f"The hub refused the message: {refusal.reason}.") from None


# --------------------------------------------------------------------------- retained


async def list_retained(console: Console, request: web.Request, session: ConsoleSession) -> Any:
    broker = console.ctx.broker
    topic_filter = check_filter(
        request.query.get("filter") or "#", broker.settings.max_topic_length
    )
    after = request.query.get("after") or None
    limit = query_int(request, "limit", DEFAULT_RETAINED_PAGE, 1, MAX_RETAINED_PAGE)
    space = broker.spaces.get(session.account_id)
    found: list[Message] = []
    if space is not None:
        now = broker.clock.time()
        found = [m for _topic, m in space.retained.match(topic_filter) if not m.expired(now)]
        hidden = console.hidden
        if hidden is not None:
            found = [m for m in found if not hidden.hides(m.topic)]
        found.sort(key=lambda m: m.topic)
    start = 0 if after is None else bisect.bisect_right([m.topic for m in found], after)
    page = found[start : start + limit]
    return {
        "messages": [
            {
                "topic": m.topic,
                "bytes": len(m.payload),
                "qos": m.qos,
                "storedAt": stored_at(m),
            }
            for m in page
        ],
        "total": len(found),
        "next": page[-1].topic if start + limit < len(found) and page else None,
    }


def _retained(console: Console, request: web.Request, session: ConsoleSession) -> Message:
    topic = request.query.get("topic") or ""
    error = validate_topic_name(topic)
    if error is not None:
        raise ConsoleError.bad(f"topic: {error}.")
    message = console.ctx.broker.retained_message(session.account_id, topic)
    hidden = console.hidden
    if message is None or (hidden is not None and hidden.hides(topic)):
        raise ConsoleError.not_found(f"There is no retained message on {topic} in this account.")
    return message


async def get_retained(console: Console, request: web.Request, session: ConsoleSession) -> Any:
    message = _retained(console, request, session)
    return {"message": message_view(message, console.ctx.broker.clock.time())}


async def delete_retained(console: Console, request: web.Request, session: ConsoleSession) -> Any:
    message = _retained(console, request, session)
    deletion = Message(
        topic=message.topic,
        payload=b"",
        retain=True,
        account=session.account_id,
        origin=f"http:console:{session.access_key_id}",
    )
    await _publish(console.ctx.broker, deletion)
    return {"deleted": message.topic, "messageId": str(deletion.id)}


# --------------------------------------------------------------------------- trace


async def list_traces(console: Console, request: web.Request, session: ConsoleSession) -> Any:
    recorder = console.ctx.broker.trace
    if recorder is None:
        return {"enabled": False, "messages": [], "message": TRACE_OFF}
    topic = request.query.get("topic") or None
    limit = query_int(request, "limit", 20, 1, 100)
    found = recorder.recent(session.account_id, topic, limit)
    return {"enabled": True, "messages": [summary(record) for record in found]}


async def get_trace(console: Console, request: web.Request, session: ConsoleSession) -> Any:
    broker = console.ctx.broker
    recorder = broker.trace
    cluster = console.ctx.cluster
    if recorder is None and cluster is None:
        raise ConsoleError.not_found(TRACE_OFF)
    label = request.match_info["messageId"].strip()
    if not label.isascii() or not label.isdigit() or not 0 < int(label) <= _MAX_ID:
        raise ConsoleError.bad("A MessageId is a positive whole number.")
    account = session.account_id
    if cluster is not None:
        # Every node's part, as GET /thinghub/trace/{MessageId} answers (http/trace_routes.py).
        merged = merge(int(label), await cluster.trace(account, int(label)))
        if merged is not None:
            return {"trace": merged}
    record = recorder.get(int(label)) if recorder is not None else None
    if record is None or record.account != account:
        where = " on any node of the cluster" if cluster is not None else ""
        kept = (
            f"the hub keeps the last {recorder.max_messages} messages for {recorder.max_age_s:g} s"
            if recorder is not None
            else "this hub keeps none"
        )
        raise ConsoleError.not_found(
            f"No trace of message {label}{where}: {kept} and forgets them when it restarts; "
            "a MessageId of another account is not shown either."
        )
    return {"trace": report(record, session_state(broker, account))}
