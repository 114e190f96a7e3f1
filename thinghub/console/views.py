"""The console's JSON for the hub's records: a device, its broker session and subscriptions, a
message (retained, or in a tail) with its MQTT 5 properties. Pure functions of what they are
given; run on the event loop, where the broker's state lives.

Times are Unix milliseconds (the page formats them in the reader's time zone); MessageIds are
strings, because they use 63 bits and a JavaScript number holds 53 exactly. Payloads are
UTF-8 text when they decode as such, else base64, with ``encoding`` saying which. A device's
secret is never shown.
"""

from __future__ import annotations

import base64
from typing import Any

from ..cluster.sessionops import SessionInfo
from ..message import Message
from ..mqtt.properties import Properties
from ..mqtt.types import ProtocolVersion
from ..registry.ids import decode_message_id
from ..registry.models import Device

__all__ = ["device_view", "message_view", "payload_view", "properties_view", "session_view"]

_VERSIONS: dict[int, str] = {
    ProtocolVersion.V31: "3.1",
    ProtocolVersion.V311: "3.1.1",
    ProtocolVersion.V5: "5.0",
}


def device_view(device: Device, product_name: str) -> dict[str, Any]:
    return {
        "iotId": device.iot_id,
        "productKey": device.product_key,
        "productName": product_name,
        "deviceName": device.device_name,
        "nickname": device.nickname,
        "status": device.status.value,
        "instanceId": device.instance_id,
        "createdAt": device.created_at,
        "activatedAt": device.activated_at,
        "lastOnlineAt": device.last_online_at,
        "statusChangedAt": device.status_changed_at,
        "ipAddress": device.ip_address,
    }


def session_view(info: SessionInfo | None) -> dict[str, Any] | None:
    """A client's session, on whichever node holds it (http/sessions.py): its connection (if
    any), expiry, queue and subscriptions."""
    if info is None:
        return None
    body: dict[str, Any] = {
        "clientId": info.client_id,
        "connected": info.connected,
        # Session Expiry Interval 0 (3.1.1: Clean Session 1) ends the session with its
        # connection (§3.1.2.11.2); above 0 it is persistent.
        "persistent": info.expiry_interval > 0,
        "expiryInterval": info.expiry_interval,
        "queued": info.queued,
        "queuedBytes": info.queued_bytes,
        "inFlight": info.in_flight,
        "subscriptions": [
            {
                "filter": entry.full_filter,
                "qos": entry.qos,
                "noLocal": entry.no_local,
                "retainAsPublished": entry.retain_as_published,
                "subscriptionId": entry.subscription_id,
                "subscribedAt": entry.subscribed_at_ms or None,
            }
            for entry in info.subscriptions
        ],
    }
    if info.node:
        body["node"] = info.node
    if info.connected:
        body["connection"] = {
            "address": info.peer,
            "protocol": _VERSIONS.get(info.protocol, str(info.protocol)),
            "connectedAt": info.connected_at_ms,
            "keepAlive": info.keep_alive,
        }
    return body


def payload_view(payload: bytes) -> dict[str, Any]:
    try:
        return {"payload": payload.decode("utf-8"), "encoding": "utf8", "bytes": len(payload)}
    except UnicodeDecodeError:
        return {
            "payload": base64.b64encode(payload).decode("ascii"),
            "encoding": "base64",
            "bytes": len(payload),
        }


def properties_view(properties: Properties) -> dict[str, Any]:
    """The MQTT 5 properties a message carries (only those set)."""
    body: dict[str, Any] = {}
    if properties.payload_format_indicator is not None:
        body["payloadFormatIndicator"] = properties.payload_format_indicator
    if properties.content_type is not None:
        body["contentType"] = properties.content_type
    if properties.response_topic is not None:
        body["responseTopic"] = properties.response_topic
    if properties.correlation_data is not None:
        body["correlationData"] = payload_view(properties.correlation_data)
    if properties.user_properties:
        body["userProperties"] = [list(pair) for pair in properties.user_properties]
    return body


def message_view(message: Message, now: float) -> dict[str, Any]:
    """A retained message, whole; ``now``: the broker's clock, for the expiry left."""
    body: dict[str, Any] = {
        "topic": message.topic,
        "qos": message.qos,
        "messageId": str(message.id) if message.id else None,
        "storedAt": stored_at(message),
        "origin": message.origin,
        "expiresIn": message.remaining_expiry(now),
        "properties": properties_view(message.properties),
    }
    body.update(payload_view(message.payload))
    return body


def stored_at(message: Message) -> int | None:
    """When a retained message was published, in Unix ms: the time inside the hub's 63-bit
    MessageId (registry/ids.py), or None for a broker that counts ids from 1."""
    if message.id >= 1 << 22:
        return decode_message_id(message.id).unix_ms
    return None
