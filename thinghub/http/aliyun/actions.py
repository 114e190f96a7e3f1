"""The RPC actions: one small function per Action (reference ``alibaba-iot-api.md`` §2).

Each handler takes a :class:`Call` (the caller's account, its parameters, the hub's parts) and
returns the response fields beside ``RequestId`` and ``Success``; it raises
:class:`~.errors.ApiError`, a registry error (both HTTP 200 ``Success: false``) or a
:class:`~.errors.GatewayError`. Checks come before changes, so a refused call changes nothing.

Messages go through the hub's one publish path (``http.publishing.publish``) into the caller's
account's topic space; a device's session is found by ``device_client_id`` (the key the
device sign-in gives it). Tenancy: every lookup is scoped by the caller's account (and
``IotInstanceId``), so another account's ProductKey is "not found".

Registry reads run on the event loop (a WAL reader waits for no writer:
``registry/store.py``). Registry writes run on the registry writer thread
(``registry/writer.py``, through ``_write``): the parameters are read on the loop first, the
call and its transaction run on the thread, and the broker's part of the action (closing a
deleted device's connection ...) happens on the loop once the write has returned.
"""

from __future__ import annotations

import base64
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from ...auth import topic_acl
from ...auth.aliyun_device import device_client_id
from ...broker.admission import API_CALLER
from ...broker.broker import AckTicket, Broker
from ...message import Message
from ...mqtt.properties import NO_PROPERTIES, Properties
from ...registry.errors import NOT_EXISTED_DEVICE, NotFoundError, RegistryError
from ...registry.models import (
    Device,
    DeviceDetail,
    Page,
    Product,
    TopicCategory,
)
from ...registry.validation import (
    MAX_TOPIC_BYTES,
    MAX_TOPIC_SLASHES,
    check_device_name,
    check_product_key,
)
from ...topics import validate_topic_name
from .. import sessions
from ..context import HubContext
from ..publishing import StoreUnavailable, committed, publish, publish_now, replicated
from ..sessions import RrpcOutcome
from . import errors as e
from .errors import ApiError
from .params import Params
from .render import gmt_china, gmt_cookie, utc_iso

__all__ = ["ACTIONS", "Call", "Handler"]

log = logging.getLogger("thinghub.http.aliyun")

Fields = dict[str, Any]

# Reference §2.1 and §3 "Limits".
MAX_MESSAGE_BYTES = 256 * 1024
MAX_BROADCAST_BYTES = 64 * 1024
MAX_BATCH_PUB_DEVICES = 100
RRPC_TIMEOUT_MS = (1000, 8000)
# The rate-limiter key of PubBroadcast without TopicFullName (reference §2.1: 1 per minute).
ALL_ONLINE_BROADCAST = "PubBroadcast.AllOnline"
_MAX_EXPIRY = 0xFFFFFFFF
_LEVEL = re.compile(r"[A-Za-z0-9_]+")
# QueryProduct NetType is a number (the Tea model's ``net_type: int``); CreateProduct takes
# the names. Alibaba's QueryProduct page: 3 WiFi, 6 cellular, 7 Ethernet, 8 other.
_NET_TYPES = {"WIFI": 3, "CELLULAR": 6, "ETHERNET": 7, "OTHER": 8}


@dataclass(frozen=True, slots=True)
class Call:
    ctx: HubContext
    account_id: str
    access_key_id: str
    params: Params
    # ``IotInstanceId`` (reference §1.1), None for the account's products without an instance.
    instance_id: str | None

    @property
    def origin(self) -> str:
        return f"http:aliyun:{self.access_key_id}"


Handler = Callable[[Call], Awaitable[Fields]]

T = TypeVar("T")


async def _write(call: Call, work: Callable[[], T]) -> T:
    """``work()`` (a registry write, its arguments already read) on the registry writer
    thread, or here when the hub runs none (tests). Raises what it raises; StoreUnavailable
    (503) when the writer has too many writes waiting."""
    writer = call.ctx.registry.writer
    if writer is None:
        return work()
    return await writer.run(work)


# ===== messaging (§2.1) ========================================================================


# Pub's and BatchPub's MQTT 5 parameters (§2.1), besides UserProp.N.Key/.Value.
_MQTT5_PARAMS = frozenset(
    {
        "ResponseTopic",
        "CorrelationData",
        "MessageExpiryInterval",
        "PayloadFormatIndicator",
        "ContentType",
        "TopicAlias",
    }
)


def _mqtt5_properties(params: Params) -> tuple[Properties, int | None]:
    """The MQTT 5 parameters of Pub/BatchPub (§2.1 "Newer ([SDK])") as message properties,
    and the Message Expiry Interval (kept on the Message: the broker counts it down)."""
    if not params.mentions(_MQTT5_PARAMS, "UserProp."):
        # None sent (most calls): what the reads below would find, without reading them.
        return NO_PROPERTIES, None
    response_topic = params.optional("ResponseTopic")
    if response_topic is not None and validate_topic_name(response_topic) is not None:
        raise ApiError(e.INVALID_PARAMETER, "ResponseTopic is not a valid topic name.")
    correlation = params.base64("CorrelationData", required=False, max_bytes=65535)
    user_properties = params.user_properties()
    expiry = params.integer("MessageExpiryInterval", minimum=0, maximum=_MAX_EXPIRY)
    indicator = params.integer("PayloadFormatIndicator", minimum=0, maximum=1)
    content_type = params.optional("ContentType")
    # TopicAlias is per connection in MQTT 5 (§3.3.2.3.4): checked, then not applied.
    params.integer("TopicAlias", minimum=1, maximum=65535)
    if (
        response_topic is None
        and correlation is None
        and not user_properties
        and indicator is None
        and content_type is None
    ):
        return NO_PROPERTIES, expiry
    properties = Properties(
        payload_format_indicator=indicator,
        content_type=content_type,
        response_topic=response_topic,
        correlation_data=correlation,
        user_properties=user_properties,
    )
    return properties, expiry


def _check_utf8(payload: bytes, properties: Properties) -> None:
    if properties.payload_format_indicator == 1:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(
                e.INVALID_PARAMETER,
                "PayloadFormatIndicator is 1 but the message is not UTF-8 text.",
            ) from None


def _qos(params: Params) -> int:
    """QoS 0 or 1 (§2.1; §3 "QoS 2 is not supported")."""
    raw = params.optional("Qos")
    if raw is None or raw == "0":  # what integer() below makes of them, read directly
        return 0
    if raw == "1":
        return 1
    qos = params.integer("Qos", default=0)
    assert qos is not None
    if qos not in (0, 1):
        raise ApiError(e.INVALID_PARAMETER, f"Qos must be 0 or 1, not {qos}.")
    return qos


def _payload(params: Params, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    payload = params.base64("MessageContent", max_bytes=max_bytes, invalid_code=e.NOT_BASE64)
    assert payload is not None
    return payload


def _check_topic_form(topic: str) -> None:
    """A topic the API may name: valid MQTT, within §3's 128 bytes and 7 slashes."""
    if len(topic) <= _CACHED_TOPIC and _topic_form_ok(topic):
        return
    if validate_topic_name(topic) is not None:
        raise ApiError(e.INVALID_TOPIC_NAME, f"{topic!r} is not a valid topic name.")
    if len(topic.encode()) > MAX_TOPIC_BYTES or topic.count("/") > MAX_TOPIC_SLASHES:
        raise ApiError(
            e.INVALID_TOPIC_NAME,
            f"A topic has at most {MAX_TOPIC_BYTES} bytes and {MAX_TOPIC_SLASHES} slashes.",
        )


# Devices are sent to on the same topics over and over: the verdict of the checks above is
# memoised (a pure function of the topic; bounded in entries and, through the length, in size).
# A refused topic is then checked again above, to raise the right error.
_CACHED_TOPIC = 512


@functools.lru_cache(maxsize=4096)
def _topic_form_ok(topic: str) -> bool:
    return (
        validate_topic_name(topic) is None
        and len(topic.encode()) <= MAX_TOPIC_BYTES
        and topic.count("/") <= MAX_TOPIC_SLASHES
    )


def _is_broadcast_topic(topic: str, product_key: str) -> bool:
    prefix = f"/broadcast/{product_key}/"
    return topic.startswith(prefix) and len(topic) > len(prefix)


def _device(call: Call, product_key: str, device_name: str) -> Device:
    return call.ctx.registry.get_device(
        call.account_id,
        product_key=product_key,
        device_name=device_name,
        instance_id=call.instance_id,
    )


def _product_device(call: Call, product: Product, device_name: str) -> Device:
    """A device of ``product``, which the caller has just found in its account: what
    ``get_device`` answers (same checks, same errors), without looking the product up (and
    counting its devices) once more for every device of a BatchPub."""
    device = call.ctx.registry.lookup_device(product.product_key, check_device_name(device_name))
    if device is None or device.account_id != call.account_id:
        raise NotFoundError(NOT_EXISTED_DEVICE, "The specified device does not exist.")
    return device


# may_subscribe() is a pure function of its arguments, and the registry hands out the same
# (immutable) tuple of a product's categories until they change: its verdicts are
# remembered with the tuple they were given, and used again only for that very tuple (held
# here, so its identity cannot pass to another). Bounded: cleared when full.
_SUBSCRIBE_VERDICTS: dict[tuple[str, str, str], tuple[tuple[TopicCategory, ...], bool]] = {}
_MAX_VERDICTS = 4096


def _check_device_topic(
    product_key: str, device_name: str, topic: str, categories: Iterable[TopicCategory]
) -> None:
    """The topic must be covered by a SUB or ALL category of the product, expanded for this
    device (§2.1 Pub: "The topic needs Subscribe or Pub+Sub permission")."""
    key = (product_key, device_name, topic)
    known = _SUBSCRIBE_VERDICTS.get(key)
    if known is not None and known[0] is categories:
        allowed = known[1]
    else:
        allowed = topic_acl.may_subscribe(product_key, device_name, topic, categories).allowed
        if type(categories) is tuple:
            if len(_SUBSCRIBE_VERDICTS) >= _MAX_VERDICTS:
                _SUBSCRIBE_VERDICTS.clear()
            _SUBSCRIBE_VERDICTS[key] = (categories, allowed)
    if not allowed:
        raise ApiError(
            e.TOPIC_NOT_ALLOWED,
            f"No topic category of product {product_key} gives devices the Subscribe "
            f"permission on {topic}.",
        )


def _pub_target(call: Call, product_key: str, topic: str, device: Device | None) -> None:
    """Pub's ``TopicFullName``: ``/${pk}/${dn}/user/${x}`` of an existing device, covered by a
    SUB/ALL category, or ``/broadcast/${pk}/...`` (§2.1). System topics are refused.
    ``device``: the topic's device when the caller has already looked it up."""
    _check_topic_form(topic)
    pk = product_key
    if _is_broadcast_topic(topic, pk):
        return
    levels = topic.split("/")
    if len(levels) < 5 or levels[0] or levels[1] != pk or levels[3] != "user":
        raise ApiError(
            e.TOPIC_NOT_ALLOWED,
            f"TopicFullName must be /{pk}/${{deviceName}}/user/... or /broadcast/{pk}/...; "
            "system topics are not supported.",
        )
    if device is None:
        device = _device(call, pk, levels[2])
    categories = call.ctx.registry.topic_categories_for_product(pk)
    _check_device_topic(pk, device.device_name, topic, categories)


def _topic_device(call: Call, product_key: str, topic: str) -> Device | None:
    """The caller's device that a ``/${pk}/${dn}/user/...`` topic names, found with one
    indexed read, or None whenever anything is unusual (another instance, a malformed key or
    name, no such device in the caller's account): the caller then takes the general path
    (``query_product`` + ``get_device``), which raises the right error in the right order.

    A device found here means ``query_product`` would have succeeded (the device's row
    carries its product's account and instance) and ``get_device`` would return the same
    row; both also count the product's devices, which Pub does not need."""
    if call.instance_id is not None:
        return None
    levels = topic.split("/", 4)
    if len(levels) < 5 or levels[0] or levels[1] != product_key or levels[3] != "user":
        return None
    try:
        key = check_product_key(product_key)
        name = check_device_name(levels[2])
    except RegistryError:
        return None
    device = call.ctx.registry.lookup_device(key, name)
    if device is None or device.account_id != call.account_id or device.instance_id is not None:
        return None
    return device


async def pub(call: Call) -> Fields:
    """Pub (§2.1): one message to a custom or broadcast topic; ``MessageId`` is a number."""
    p = call.params
    product_key = p.required("ProductKey")
    topic = p.required("TopicFullName")
    payload = _payload(p)
    qos = _qos(p)
    properties, expiry = _mqtt5_properties(p)
    retain = p.boolean("Retained")
    _check_utf8(payload, properties)
    device = _topic_device(call, product_key, topic)
    if device is None:
        product = call.ctx.registry.query_product(
            call.account_id, product_key, instance_id=call.instance_id
        )
        product_key = product.product_key
    _pub_target(call, product_key, topic, device)
    message = Message(
        topic=topic,
        payload=payload,
        qos=qos,
        retain=retain,
        properties=properties,
        account=call.account_id,
        origin=call.origin,
        expiry_interval=expiry,
    )
    await publish(call.ctx.broker, message)
    return {"MessageId": message.id}


def _topic_short_name(short_name: str) -> str:
    """BatchPub ``TopicShortName``: the ``${x}`` of ``/${pk}/${dn}/user/${x}`` (§2.1), levels
    ``[A-Za-z0-9_]+`` (§3 "Category levels")."""
    if not all(_LEVEL.fullmatch(level) for level in short_name.split("/")):
        raise ApiError(
            e.INVALID_TOPIC_NAME, "Each level of TopicShortName must be letters, digits or '_'."
        )
    return short_name


async def batch_pub(call: Call) -> Fields:
    """BatchPub (§2.1): the same message to 1..100 devices of one product on
    ``/${pk}/${dn}/user/${TopicShortName}``. All devices are checked before anything is sent.
    No MessageId in the answer (§2.1)."""
    p = call.params
    product_key = p.required("ProductKey")
    short_name = _topic_short_name(p.required("TopicShortName"))
    payload = _payload(p)
    names = p.repeat_list("DeviceName", limit=MAX_BATCH_PUB_DEVICES)
    if not names:
        raise e.missing("DeviceName.1")
    if len(names) > MAX_BATCH_PUB_DEVICES:
        raise ApiError(
            e.DEVICE_COUNT_EXCEEDED,
            f"BatchPub takes at most {MAX_BATCH_PUB_DEVICES} DeviceName.N.",
        )
    qos = _qos(p)
    properties, expiry = _mqtt5_properties(p)
    retain = p.boolean("Retained")
    _check_utf8(payload, properties)
    registry = call.ctx.registry
    product = registry.query_product(call.account_id, product_key, instance_id=call.instance_id)
    categories = registry.topic_categories_for_product(product.product_key)
    topics: list[str] = []
    # One read transaction (one snapshot) for up to 100 device lookups, instead of one each.
    with registry.store.read():
        for name in dict.fromkeys(names):  # a name given twice gets one copy
            device = _product_device(call, product, name)
            topic = f"/{product.product_key}/{device.device_name}/user/{short_name}"
            _check_topic_form(topic)
            _check_device_topic(product.product_key, device.device_name, topic, categories)
            topics.append(topic)
    messages = [
        Message(
            topic=topic,
            payload=payload,
            qos=qos,
            retain=retain,
            properties=properties,
            account=call.account_id,
            origin=call.origin,
            expiry_interval=expiry,
        )
        for topic in topics
    ]
    await _publish_all(call.ctx.broker, messages)
    return {}


async def _publish_all(broker: Broker, messages: list[Message]) -> None:
    """``publishing.publish`` for each message, in order, sharing one commit: every message is
    routed at once, then (if any of them changed the store) one wait covers them all. A task
    per message (``gather``) cost more than routing it."""
    for message in messages:
        # All or nothing: a message the gate would refuse refuses the batch before any leaves.
        broker.admission.authorize(message, API_CALLER)
    writes = broker.store.sequence
    tickets: list[AckTicket] = []
    for message in messages:
        if not message.id:
            message.id = broker.new_message_id()
        publish_now(broker, message, tickets)
    if broker.store.sequence != writes:
        await committed(broker)
    if tickets:
        await replicated(tickets)  # in a cluster: the message stream has them all


async def pub_broadcast(call: Call) -> Fields:
    """PubBroadcast (§2.1): with ``TopicFullName`` (``/broadcast/${pk}/...``) a QoS 0 publish
    there; without, every online device of the product gets the message on
    ``/sys/${pk}/${dn}/broadcast/request/${MessageId}`` whatever it subscribed to. At most
    64 KB."""
    p = call.params
    product_key = p.required("ProductKey")
    payload = _payload(p, MAX_BROADCAST_BYTES)
    topic = p.optional("TopicFullName")
    registry = call.ctx.registry
    product = registry.query_product(call.account_id, product_key, instance_id=call.instance_id)
    pk = product.product_key
    broker = call.ctx.broker
    if topic is not None:
        _check_topic_form(topic)
        if not _is_broadcast_topic(topic, pk):
            raise ApiError(e.INVALID_TOPIC_NAME, f"TopicFullName must be /broadcast/{pk}/...")
        message = Message(topic=topic, payload=payload, account=call.account_id, origin=call.origin)
        await publish(broker, message)
        return {"MessageId": message.id}
    # §2.1: all-online broadcasts have their own quota (1 per minute), beside the action's.
    if not call.ctx.aliyun_limits.allow(call.account_id, ALL_ONLINE_BROADCAST):
        raise e.throttled()
    message_id = broker.new_message_id()
    names: list[str] = []
    page = 1
    while True:
        devices = registry.list_devices(
            call.account_id, pk, page=page, page_size=50, instance_id=call.instance_id
        )
        names.extend(device.device_name for device in devices.items)
        if page >= devices.page_count:
            break
        page += 1
    # Each node sends to the devices connected to it (http/sessions.py).
    await sessions.broadcast(call.ctx, call.account_id, pk, names, message_id, payload, call.origin)
    return {"MessageId": message_id}


async def rrpc(call: Call) -> Fields:
    """RRpc (§2.1): send ``RequestBase64Byte`` to the device on
    ``/sys/${pk}/${dn}/rrpc/request/${MessageId}`` (or ``/ext/rrpc/${MessageId}${Topic}``) at
    QoS 0 and wait up to ``Timeout`` ms for its reply on ``.../rrpc/response/${MessageId}``
    (or the same ext topic).

    ``RrpcCode`` SUCCESS comes with ``PayloadBase64Byte``. OFFLINE (no connection) and TIMEOUT
    are answered with ``Success: false`` and ``Code`` ``iot.messagebroker.OFFLINE``/``TIMEOUT``
    (§2.5) *and* ``RrpcCode``, so a client that tests either field sees the outcome.
    """
    p = call.params
    product_key = p.required("ProductKey")
    device_name = p.required("DeviceName")
    request = p.base64("RequestBase64Byte", max_bytes=MAX_MESSAGE_BYTES, invalid_code=e.NOT_BASE64)
    assert request is not None
    low, high = RRPC_TIMEOUT_MS
    # The reference's example spells it TimeOut (§2.1); the SDKs send Timeout.
    timeout_ms = p.integer(
        "Timeout" if "Timeout" in p or "TimeOut" not in p else "TimeOut",
        required=True,
        minimum=low,
        maximum=high,
        code=e.INVALID_TIMEOUT,
    )
    assert timeout_ms is not None
    custom = p.optional("Topic")
    if custom is not None and not custom.startswith("/"):
        raise ApiError(e.INVALID_TOPIC_NAME, "Topic must start with '/'.")
    device = _device(call, product_key, device_name)
    pk, dn = device.product_key, device.device_name
    broker = call.ctx.broker
    message_id = broker.new_message_id()
    if custom is not None:
        request_topic = reply_topic = f"/ext/rrpc/{message_id}{custom}"
        _check_topic_form(request_topic)
    else:
        request_topic = f"/sys/{pk}/{dn}/rrpc/request/{message_id}"
        reply_topic = f"/sys/{pk}/{dn}/rrpc/response/{message_id}"
    message = Message(
        topic=request_topic,
        payload=request,
        account=call.account_id,
        origin=call.origin,
        id=message_id,
    )
    # Published, and the reply watched, by the node the device is connected to, whichever
    # that is (http/sessions.py).
    outcome, payload = await sessions.rrpc(
        call.ctx, device_client_id(pk, dn), message, reply_topic, timeout_ms / 1000
    )
    if outcome is RrpcOutcome.OFFLINE:
        raise ApiError(
            e.RRPC_OFFLINE, "The device is offline.", RrpcCode="OFFLINE", MessageId=message_id
        )
    if outcome is RrpcOutcome.TIMEOUT:
        raise ApiError(
            e.RRPC_TIMEOUT,
            f"The device did not answer within {timeout_ms} ms.",
            RrpcCode="TIMEOUT",
            MessageId=message_id,
        )
    return {
        "RrpcCode": "SUCCESS",
        "PayloadBase64Byte": base64.b64encode(payload).decode("ascii"),
        "MessageId": message_id,
    }


async def query_device_sub_topic(call: Call) -> Fields:
    """QueryDeviceSubTopic (§2.1): the filters the device's session holds, with the time of
    each SUBSCRIBE in ms. A device without a session has none."""
    p = call.params
    device = _device(call, p.required("ProductKey"), p.required("DeviceName"))
    info = await sessions.session_info(
        call.ctx, call.account_id, device_client_id(device.product_key, device.device_name)
    )
    entries = () if info is None else info.subscriptions
    return {
        "TopicList": [
            {"TopicName": entry.full_filter, "Timestamp": entry.subscribed_at_ms}
            for entry in entries
        ]
    }


# ===== products (§2.2) =========================================================================


def _product_data(product: Product) -> Fields:
    return {
        "ProductKey": product.product_key,
        "ProductName": product.name,
        "ProductSecret": product.product_secret,
        "NodeType": int(product.node_type),
        "DataFormat": product.data_format,
        "AuthType": product.auth_type,
        "AliyunCommodityCode": product.aliyun_commodity_code,
        "Description": product.description,
        "Id2": product.auth_type == "id2",
    }


async def create_product(call: Call) -> Fields:
    p = call.params
    create = functools.partial(
        call.ctx.registry.create_product,
        call.account_id,
        p.required("ProductName"),
        p.required("NodeType"),
        instance_id=call.instance_id,
        data_format=p.optional("DataFormat"),
        auth_type=p.optional("AuthType"),
        description=p.optional("Description"),
        aliyun_commodity_code=p.optional("AliyunCommodityCode"),
        net_type=p.optional("NetType"),
        category_key=p.optional("CategoryKey"),
    )
    product = await _write(call, create)
    return {"ProductKey": product.product_key, "Data": _product_data(product)}


async def query_product(call: Call) -> Fields:
    product = call.ctx.registry.query_product(
        call.account_id, call.params.required("ProductKey"), instance_id=call.instance_id
    )
    data = _product_data(product)
    data.update(
        {
            "DeviceCount": product.device_count,
            "GmtCreate": product.created_at,
            "ProductStatus": product.status,
            "NetType": _NET_TYPES.get((product.net_type or "").upper()),
            "CategoryKey": product.category_key,
            "Owner": True,
        }
    )
    return {"Data": data}


async def query_product_list(call: Call) -> Fields:
    p = call.params
    page: Page[Product] = call.ctx.registry.list_products(
        call.account_id,
        page=p.required("CurrentPage"),
        page_size=p.required("PageSize"),
        instance_id=call.instance_id,
        aliyun_commodity_code=p.optional("AliyunCommodityCode"),
    )
    return {
        "Data": {
            "CurrentPage": page.page,
            "PageSize": page.page_size,
            "PageCount": page.page_count,
            "Total": page.total,
            "List": {
                "ProductInfo": [
                    {
                        "ProductKey": product.product_key,
                        "ProductName": product.name,
                        "NodeType": int(product.node_type),
                        "DataFormat": product.data_format,
                        "DeviceCount": product.device_count,
                        "GmtCreate": product.created_at,
                        "AuthType": product.auth_type,
                        "Description": product.description,
                    }
                    for product in page.items
                ]
            },
        }
    }


async def update_product(call: Call) -> Fields:
    p = call.params
    update = functools.partial(
        call.ctx.registry.update_product,
        call.account_id,
        p.required("ProductKey"),
        name=p.required("ProductName"),
        description=p.optional("Description"),
        instance_id=call.instance_id,
    )
    await _write(call, update)
    return {}


async def delete_product(call: Call) -> Fields:
    delete = functools.partial(
        call.ctx.registry.delete_product,
        call.account_id,
        call.params.required("ProductKey"),
        instance_id=call.instance_id,
    )
    await _write(call, delete)
    return {}


# ===== devices (§2.3) ==========================================================================


def _identity(call: Call) -> dict[str, str | None]:
    """``IotId``, or ``ProductKey`` + ``DeviceName`` (the registry checks the combination)."""
    p = call.params
    return {
        "iot_id": p.optional("IotId"),
        "product_key": p.optional("ProductKey"),
        "device_name": p.optional("DeviceName"),
        "instance_id": call.instance_id,
    }


async def register_device(call: Call) -> Fields:
    p = call.params
    register = functools.partial(
        call.ctx.registry.register_device,
        call.account_id,
        p.required("ProductKey"),
        p.optional("DeviceName"),
        nickname=p.optional("Nickname"),
        instance_id=call.instance_id,
    )
    device = await _write(call, register)
    return {
        "Data": {
            "IotId": device.iot_id,
            "ProductKey": device.product_key,
            "DeviceName": device.device_name,
            "DeviceSecret": device.device_secret,
            "Nickname": device.nickname or None,
        }
    }


async def batch_register_device(call: Call) -> Fields:
    p = call.params
    register = functools.partial(
        call.ctx.registry.batch_register,
        call.account_id,
        p.required("ProductKey"),
        count=p.required("Count"),
        instance_id=call.instance_id,
    )
    apply = await _write(call, register)
    return {"Data": {"ApplyId": apply.apply_id}}


async def batch_check_device_names(call: Call) -> Fields:
    """BatchCheckDeviceNames: ThingHub checks and registers the names in one transaction
    (all or nothing) and returns the ApplyId, which BatchRegisterDeviceWithApplyId then
    confirms; the pair ends in the same state as on the cloud."""
    p = call.params
    names = p.repeat_list("DeviceName")
    if not names:
        raise ApiError(e.NONE_DEVICE_NAME_ELEMENT, "The device name list cannot be empty.")
    register = functools.partial(
        call.ctx.registry.batch_register,
        call.account_id,
        p.required("ProductKey"),
        device_names=names,
        instance_id=call.instance_id,
    )
    apply = await _write(call, register)
    return {"Data": {"ApplyId": apply.apply_id}}


async def batch_register_device_with_apply_id(call: Call) -> Fields:
    p = call.params
    product_key = p.required("ProductKey")
    apply = call.ctx.registry.query_apply(call.account_id, p.required("ApplyId"))
    product = call.ctx.registry.query_product(
        call.account_id, product_key, instance_id=call.instance_id
    )
    if apply.product_key != product.product_key:
        raise NotFoundError("iot.device.DeviceApplyIsNotFound", "The ApplyId is not found.")
    return {"Data": {"ApplyId": apply.apply_id}}


async def query_page_by_apply_id(call: Call) -> Fields:
    p = call.params
    page = call.ctx.registry.query_page_by_apply_id(
        call.account_id,
        p.required("ApplyId"),
        page=p.optional("CurrentPage"),
        page_size=p.optional("PageSize"),
    )
    return {
        "Page": page.page,
        "PageSize": page.page_size,
        "PageCount": page.page_count,
        "Total": page.total,
        "ApplyDeviceList": {
            "ApplyDeviceInfo": [
                {"DeviceName": d.device_name, "DeviceSecret": d.device_secret, "IotId": d.iot_id}
                for d in page.items
            ]
        },
    }


def _detail_data(detail: DeviceDetail) -> Fields:
    device, product = detail.device, detail.product
    return {
        "IotId": device.iot_id,
        "ProductKey": device.product_key,
        "ProductName": product.name,
        "DeviceName": device.device_name,
        "DeviceSecret": device.device_secret,
        "Nickname": device.nickname or None,
        "Status": device.status.value,
        "NodeType": int(product.node_type),
        "IpAddress": device.ip_address,
        "GmtCreate": gmt_china(device.created_at),
        "UtcCreate": utc_iso(device.created_at),
        "GmtActive": gmt_china(device.activated_at),
        "UtcActive": utc_iso(device.activated_at),
        "GmtOnline": gmt_china(device.last_online_at),
        "UtcOnline": utc_iso(device.last_online_at),
        "Owner": True,
    }


async def query_device_detail(call: Call) -> Fields:
    detail = call.ctx.registry.query_device_detail(call.account_id, **_identity(call))
    return {"Data": _detail_data(detail)}


async def query_device(call: Call) -> Fields:
    p = call.params
    page = call.ctx.registry.list_devices(
        call.account_id,
        p.required("ProductKey"),
        page=p.optional("CurrentPage"),
        page_size=p.optional("PageSize"),
        instance_id=call.instance_id,
    )
    return {
        "Total": page.total,
        "PageSize": page.page_size,
        "PageCount": page.page_count,
        "Page": page.page,
        "Data": {
            "DeviceInfo": [
                {
                    "DeviceName": d.device_name,
                    "ProductKey": d.product_key,
                    "DeviceSecret": d.device_secret,
                    "IotId": d.iot_id,
                    "DeviceStatus": d.status.value,
                    "Nickname": d.nickname or None,
                    "GmtCreate": gmt_cookie(d.created_at),
                    "UtcCreate": utc_iso(d.created_at),
                }
                for d in page.items
            ]
        },
    }


async def delete_device(call: Call) -> Fields:
    """DeleteDevice; a connected device is disconnected and its session ended."""
    delete = functools.partial(call.ctx.registry.delete_device, call.account_id, **_identity(call))
    device = await _write(call, delete)
    await _disconnect(call, device, clean_session=True)
    return {}


async def disable_thing(call: Call) -> Fields:
    """DisableThing; a connected device is disconnected. Its session is kept (it expires as
    usual), so QoS 1 messages queued for it are delivered if it is enabled again in time."""
    disable = functools.partial(
        call.ctx.registry.disable_device, call.account_id, **_identity(call)
    )
    device = await _write(call, disable)
    await _disconnect(call, device, clean_session=False)
    return {}


async def _disconnect(call: Call, device: Device, *, clean_session: bool) -> None:
    """Close a deleted or disabled device's connection on whichever node it is. The registry
    change is made already: a node that cannot be asked now is logged, not answered 503 (its
    device is refused at its next sign-in)."""
    client_id = device_client_id(device.product_key, device.device_name)
    try:
        await sessions.disconnect(
            call.ctx, call.account_id, client_id, clean_session=clean_session, prevent_will=False
        )
    except StoreUnavailable as error:
        log.warning("device %s could not be disconnected: %s", client_id, error)


async def enable_thing(call: Call) -> Fields:
    enable = functools.partial(call.ctx.registry.enable_device, call.account_id, **_identity(call))
    await _write(call, enable)
    return {}


async def get_device_status(call: Call) -> Fields:
    device = call.ctx.registry.get_device(call.account_id, **_identity(call))
    return {"Data": {"Status": device.status.value, "Timestamp": device.status_changed_at}}


async def batch_get_device_state(call: Call) -> Fields:
    p = call.params
    devices = call.ctx.registry.batch_get_device_states(
        call.account_id,
        product_key=p.optional("ProductKey"),
        device_names=p.repeat_list("DeviceName"),
        iot_ids=p.repeat_list("IotId"),
        instance_id=call.instance_id,
    )
    return {
        "DeviceStatusList": {
            "DeviceStatus": [
                {
                    "DeviceName": d.device_name,
                    "IotId": d.iot_id,
                    "Status": d.status.value,
                    "LastOnlineTime": gmt_china(d.last_online_at),
                    "AsAddress": d.ip_address,
                    "Timestamp": d.status_changed_at,
                }
                for d in devices
            ]
        }
    }


# ===== topic categories (§2.4) =================================================================


async def create_product_topic(call: Call) -> Fields:
    p = call.params
    create = functools.partial(
        call.ctx.registry.create_topic_category,
        call.account_id,
        p.required("ProductKey"),
        p.required("TopicShortName"),
        p.required("Operation"),
        description=p.optional("Desc"),
        instance_id=call.instance_id,
    )
    category = await _write(call, create)
    return {"TopicId": category.id}


async def query_product_topic(call: Call) -> Fields:
    """QueryProductTopic: ``Operation`` as "0"/"1"/"2" and ``TopicShortName`` as the full
    template (§2.4)."""
    categories = call.ctx.registry.list_topic_categories(
        call.account_id, call.params.required("ProductKey"), instance_id=call.instance_id
    )
    return {
        "Data": {
            "ProductTopicInfo": [
                {
                    "Id": str(c.id),
                    "ProductKey": c.product_key,
                    "TopicShortName": c.template,
                    "Operation": c.operation.wire_code,
                    "Desc": c.description,
                }
                for c in categories
            ]
        }
    }


async def update_product_topic(call: Call) -> Fields:
    p = call.params
    update = functools.partial(
        call.ctx.registry.update_topic_category,
        call.account_id,
        p.required("TopicId"),
        p.required("TopicShortName"),
        p.required("Operation"),
        description=p.optional("Desc"),
        instance_id=call.instance_id,
    )
    await _write(call, update)
    return {}


async def delete_product_topic(call: Call) -> Fields:
    delete = functools.partial(
        call.ctx.registry.delete_topic_category,
        call.account_id,
        call.params.required("TopicId"),
        instance_id=call.instance_id,
    )
    await _write(call, delete)
    return {}


ACTIONS: dict[str, Handler] = {
    "Pub": pub,
    "BatchPub": batch_pub,
    "PubBroadcast": pub_broadcast,
    "RRpc": rrpc,
    "QueryDeviceSubTopic": query_device_sub_topic,
    "CreateProduct": create_product,
    "QueryProduct": query_product,
    "QueryProductList": query_product_list,
    "UpdateProduct": update_product,
    "DeleteProduct": delete_product,
    "RegisterDevice": register_device,
    "BatchRegisterDevice": batch_register_device,
    "BatchCheckDeviceNames": batch_check_device_names,
    "BatchRegisterDeviceWithApplyId": batch_register_device_with_apply_id,
    "QueryPageByApplyId": query_page_by_apply_id,
    "QueryDeviceDetail": query_device_detail,
    "QueryDevice": query_device,
    "DeleteDevice": delete_device,
    "DisableThing": disable_thing,
    "EnableThing": enable_thing,
    "GetDeviceStatus": get_device_status,
    "BatchGetDeviceState": batch_get_device_state,
    "CreateProductTopic": create_product_topic,
    "QueryProductTopic": query_product_topic,
    "UpdateProductTopic": update_product_topic,
    "DeleteProductTopic": delete_product_topic,
}
