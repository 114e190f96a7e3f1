"""Pub, BatchPub, PubBroadcast, RRpc and QueryDeviceSubTopic through the official SDKs, with
paho devices signed in with the Alibaba scheme receiving (reference §2.1)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

from alibabacloud_iot20180120 import models as iot
from aliyun_harness import Hub, PahoDevice, b64, unique
from aliyunsdkiot.request.v20180120.BatchPubRequest import BatchPubRequest
from aliyunsdkiot.request.v20180120.PubBroadcastRequest import PubBroadcastRequest
from aliyunsdkiot.request.v20180120.PubRequest import PubRequest
from aliyunsdkiot.request.v20180120.QueryDeviceSubTopicRequest import QueryDeviceSubTopicRequest
from aliyunsdkiot.request.v20180120.RRpcRequest import RRpcRequest

from thinghub.registry.ids import decode_message_id
from thinghub.registry.models import Device, Product

MakeDevice = Callable[..., PahoDevice]


def _get(device: Device) -> str:
    return f"/{device.product_key}/{device.device_name}/user/get"


def core_pub(hub: Hub, device: Device, payload: bytes, **extra: Any) -> dict[str, Any]:
    request = PubRequest()
    request.set_ProductKey(extra.pop("product_key", device.product_key))
    request.set_TopicFullName(extra.pop("topic", _get(device)))
    request.set_MessageContent(extra.pop("content", b64(payload)))
    request.set_Qos(extra.pop("qos", 0))
    for name, value in extra.items():
        getattr(request, f"set_{name}")(value)
    return hub.core_call(request)


def sentinel(hub: Hub, device: Device, listener: PahoDevice) -> None:
    """A good Pub after a refused one: the next message the device sees must be this one, so
    the refused call delivered nothing (no sleeping to prove an absence)."""
    mark = unique("sentinel-").encode()
    assert core_pub(hub, device, mark)["Success"] is True
    assert listener.expect().payload == mark


# --- Pub -----------------------------------------------------------------------------------


def test_pub_core_sdk_delivers_and_returns_number_message_id(
    hub: Hub, device: Device, paho_device: MakeDevice
) -> None:
    listener = paho_device(device)
    assert listener.subscribe(_get(device)) == 1
    answer = core_pub(hub, device, b'{"hello":"world"}', qos=1)
    assert answer["Success"] is True
    assert isinstance(answer["MessageId"], int) and 0 < answer["MessageId"] < 1 << 63
    assert abs(decode_message_id(answer["MessageId"]).unix_ms / 1000 - time.time()) < 60
    assert answer["RequestId"] == answer["RequestId"].upper() and len(answer["RequestId"]) == 36
    got = listener.expect()
    assert (got.topic, got.payload, got.qos) == (_get(device), b'{"hello":"world"}', 1)


def test_pub_tea_v3_and_v1_with_mqtt5_properties(
    hub: Hub, device: Device, paho_device: MakeDevice
) -> None:
    listener = paho_device(device)
    listener.subscribe(_get(device))
    for v2 in (False, True):
        response = hub.tea(v2=v2).pub(
            iot.PubRequest(
                product_key=device.product_key,
                topic_full_name=_get(device),
                message_content=b64("héllo".encode()),
                qos=1,
                response_topic=f"/{device.product_key}/{device.device_name}/user/update",
                correlation_data=b64(b"\x00corr"),
                user_prop=[
                    iot.PubRequestUserProp(key="k 1", value="ü/v+&="),
                    iot.PubRequestUserProp(key="k2", value=""),
                ],
                message_expiry_interval=3600,
                payload_format_indicator=1,
                content_type="text/plain",
            )
        )
        assert response.status_code == 200 and response.body.success is True
        assert int(response.body.message_id) > 0
        got = listener.expect()
        assert got.payload == "héllo".encode()
        props = got.properties
        assert props["ResponseTopic"] == f"/{device.product_key}/{device.device_name}/user/update"
        assert bytes.fromhex(props["CorrelationData"]) == b"\x00corr"
        assert [tuple(p) for p in props["UserProperty"]] == [("k 1", "ü/v+&="), ("k2", "")]
        assert 3590 <= props["MessageExpiryInterval"] <= 3600
        assert props["PayloadFormatIndicator"] == 1
        assert props["ContentType"] == "text/plain"


def test_pub_v311_device_gets_payload_without_properties(
    hub: Hub, device: Device, paho_device: MakeDevice
) -> None:
    listener = paho_device(device, version=4)
    listener.subscribe(_get(device))
    core_pub(hub, device, b"plain", ResponseTopic=_get(device), ContentType="x/y")
    got = listener.expect()
    assert got.payload == b"plain" and got.properties == {}


def test_pub_qos1_to_offline_persistent_session_is_delivered_on_reconnect(
    hub: Hub, device: Device, paho_device: MakeDevice
) -> None:
    first = paho_device(device, clean=False, session_expiry=3600)
    first.subscribe(_get(device), qos=1)
    first.disconnect()
    answer = core_pub(hub, device, b"while you were out", qos=1)
    assert answer["Success"] is True
    again = paho_device(device, clean=False, session_expiry=3600)
    got = again.expect()
    assert (got.payload, got.qos) == (b"while you were out", 1)


def test_pub_qos1_v311_persistent_session(
    hub: Hub, device: Device, paho_device: MakeDevice
) -> None:
    first = paho_device(device, version=4, clean=False)
    first.subscribe(_get(device), qos=1)
    first.disconnect()
    core_pub(hub, device, b"queued", qos=1)
    got = paho_device(device, version=4, clean=False).expect()
    assert got.payload == b"queued"


def test_pub_to_broadcast_topic(hub: Hub, device: Device, paho_device: MakeDevice) -> None:
    listener = paho_device(device)
    topic = f"/broadcast/{device.product_key}/news"
    assert listener.subscribe(topic) == 1
    core_pub(hub, device, b"to all", topic=topic)
    assert listener.expect().topic == topic


def test_pub_retained_message_reaches_a_later_subscriber(
    hub: Hub, device: Device, paho_device: MakeDevice
) -> None:
    core_pub(hub, device, b"kept", Retained=True)
    listener = paho_device(device)
    listener.subscribe(_get(device))
    got = listener.expect()
    assert got.payload == b"kept" and got.retain


def _pub_error(hub: Hub, device: Device, **extra: Any) -> dict[str, Any]:
    answer = core_pub(hub, device, b"bad", **extra)
    assert answer["Success"] is False, answer
    assert set(answer) == {"RequestId", "Success", "Code", "ErrorMessage"}
    return answer


def test_pub_refusals_deliver_nothing(hub: Hub, product: Product, paho_device: MakeDevice) -> None:
    device = hub.device(product)
    listener = paho_device(device)
    listener.subscribe(_get(device))
    pk, dn = device.product_key, device.device_name
    update = f"/{pk}/{dn}/user/update"  # a PUB category: devices may not subscribe there
    cases: list[tuple[dict[str, Any], str]] = [
        ({"content": "not base64!"}, "iot.messagebroker.MessageContentIsNotBase64Encode"),
        ({"content": "aGVsbG8"}, "iot.messagebroker.MessageContentIsNotBase64Encode"),
        ({"content": b64(b"x" * (256 * 1024 + 1))}, "iot.common.InvalidFormattedParameter"),
        ({"qos": 2}, "iot.common.InvalidFormattedParameter"),
        ({"qos": "one"}, "iot.common.InvalidFormattedParameter"),
        ({"topic": update}, "iot.messagebroker.InvalidFormattedTopicName"),
        ({"topic": f"/{pk}/{dn}/user/nothing"}, "iot.messagebroker.InvalidFormattedTopicName"),
        (
            {"topic": f"/sys/{pk}/{dn}/thing/service/property/set"},
            "iot.messagebroker.InvalidFormattedTopicName",
        ),
        ({"topic": f"/{pk}/{dn}/user/+"}, "iot.messagebroker.InvalidFormattedTopicName"),
        ({"topic": f"/{pk}/nobody123/user/get"}, "iot.device.NotExistedDevice"),
        ({"topic": f"/broadcast/{pk}/"}, "iot.messagebroker.InvalidFormattedTopicName"),
        ({"product_key": "a1NoSuchPrd"}, "iot.prod.NotExistedProduct"),
        ({"IotInstanceId": "iot-cn-nothere"}, "iot.Sre.IotInstanceNotFound"),
        (
            {"PayloadFormatIndicator": 1, "content": b64(b"\xff\xfe")},
            "iot.common.InvalidFormattedParameter",
        ),
        ({"CorrelationData": "%%%"}, "iot.common.InvalidFormattedParameter"),
        ({"MessageExpiryInterval": -1}, "iot.common.InvalidFormattedParameter"),
        ({"ResponseTopic": "a/#"}, "iot.common.InvalidFormattedParameter"),
        ({"UserProps": [{"Key": "only-key"}]}, "iot.common.InvalidFormattedParameter"),
    ]
    for extra, code in cases:
        assert _pub_error(hub, device, **extra)["Code"] == code, extra
    sentinel(hub, device, listener)


def test_pub_another_accounts_product_looks_not_found(
    hub: Hub, device: Device, paho_device: MakeDevice
) -> None:
    listener = paho_device(device)
    listener.subscribe(_get(device))
    request = PubRequest()
    request.set_ProductKey(device.product_key)
    request.set_TopicFullName(_get(device))
    request.set_MessageContent(b64(b"intruder"))
    answer = hub.core_call(request, key=hub.other_key)
    assert (answer["Success"], answer["Code"]) == (False, "iot.prod.NotExistedProduct")
    sentinel(hub, device, listener)


def test_pub_missing_parameter_is_a_gateway_error(hub: Hub, device: Device) -> None:
    request = PubRequest()
    request.set_ProductKey(device.product_key)
    request.set_MessageContent(b64(b"x"))
    error = hub.core_error(request)
    assert (error.get_error_code(), error.get_http_status()) == ("MissingTopicFullName", 400)


# --- BatchPub ------------------------------------------------------------------------------


def _batch(hub: Hub, product: Product, names: list[str], payload: bytes, **extra: Any) -> Any:
    request = BatchPubRequest()
    request.set_ProductKey(product.product_key)
    request.set_DeviceNames(names)
    request.set_TopicShortName(extra.pop("short", "get"))
    request.set_MessageContent(b64(payload))
    for name, value in extra.items():
        getattr(request, f"set_{name}")(value)
    return hub.core_call(request)


def test_batch_pub_core_and_tea(hub: Hub, product: Product, paho_device: MakeDevice) -> None:
    devices = [hub.device(product) for _ in range(3)]
    listeners = [paho_device(d) for d in devices]
    for d, listener in zip(devices, listeners, strict=True):
        listener.subscribe(_get(d))
    answer = _batch(hub, product, [d.device_name for d in devices], b"hi all", Qos=1)
    assert answer["Success"] is True and "MessageId" not in answer
    for d, listener in zip(devices, listeners, strict=True):
        got = listener.expect()
        assert (got.topic, got.payload, got.qos) == (_get(d), b"hi all", 1)
    response = hub.tea().batch_pub(
        iot.BatchPubRequest(
            product_key=product.product_key,
            device_name=[d.device_name for d in devices[:2]],
            topic_short_name="get",
            message_content=b64(b"tea"),
            qos=0,
        )
    )
    assert response.body.success is True
    assert listeners[0].expect().payload == b"tea" and listeners[1].expect().payload == b"tea"


def test_batch_pub_refusals_deliver_nothing(
    hub: Hub, product: Product, paho_device: MakeDevice
) -> None:
    device = hub.device(product)
    listener = paho_device(device)
    listener.subscribe(_get(device))
    names = [device.device_name]
    many = names + [f"x{i:04d}" for i in range(100)]
    cases: list[tuple[list[str], dict[str, Any], str]] = [
        (many, {}, "iot.device.DeviceCountExceeded"),
        ([*names, "nosuchdevice"], {}, "iot.device.NotExistedDevice"),
        (names, {"short": "update"}, "iot.messagebroker.InvalidFormattedTopicName"),
        (names, {"short": "get/#"}, "iot.messagebroker.InvalidFormattedTopicName"),
        (names, {"Qos": 2}, "iot.common.InvalidFormattedParameter"),
    ]
    for call_names, extra, code in cases:
        answer = _batch(hub, product, call_names, b"no", **extra)
        assert (answer["Success"], answer["Code"]) == (False, code), (extra, answer)
    other = hub.product(hub.other_key)
    request = BatchPubRequest()
    request.set_ProductKey(product.product_key)
    request.set_DeviceNames(names)
    request.set_TopicShortName("get")
    request.set_MessageContent(b64(b"no"))
    answer = hub.core_call(request, key=hub.other_key)
    assert answer["Code"] == "iot.prod.NotExistedProduct" and other.product_key
    sentinel(hub, device, listener)


def test_batch_pub_to_100_devices(hub: Hub, product: Product, paho_device: MakeDevice) -> None:
    devices = [hub.device(product) for _ in range(100)]
    watcher = paho_device(devices[-1])
    watcher.subscribe(_get(devices[-1]))
    answer = _batch(hub, product, [d.device_name for d in devices], b"hundred")
    assert answer["Success"] is True
    assert watcher.expect().payload == b"hundred"


# --- PubBroadcast --------------------------------------------------------------------------


def test_pub_broadcast_to_topic_and_to_all_online(
    hub: Hub, product: Product, paho_device: MakeDevice
) -> None:
    online, offline = hub.device(product), hub.device(product)
    listener = paho_device(online)
    topic = f"/broadcast/{product.product_key}/alerts"
    listener.subscribe(topic)
    request = PubBroadcastRequest()
    request.set_ProductKey(product.product_key)
    request.set_TopicFullName(topic)
    request.set_MessageContent(b64(b"alert"))
    answer = hub.core_call(request)
    assert answer["Success"] is True and isinstance(answer["MessageId"], int)
    assert listener.expect().payload == b"alert"

    response = hub.tea().pub_broadcast(
        iot.PubBroadcastRequest(product_key=product.product_key, message_content=b64(b"all"))
    )
    assert response.body.success is True
    got = listener.expect()
    message_id = response.body.message_id
    assert (
        got.topic
        == f"/sys/{product.product_key}/{online.device_name}/broadcast/request/{message_id}"
    )
    assert got.payload == b"all" and offline.device_name


def test_pub_broadcast_refusals(hub: Hub, product: Product) -> None:
    for topic, content, code in [
        (f"/{product.product_key}/x/user/get", b"x", "iot.messagebroker.InvalidFormattedTopicName"),
        (
            f"/broadcast/{product.product_key}/a",
            b"x" * (64 * 1024 + 1),
            "iot.common.InvalidFormattedParameter",
        ),
    ]:
        request = PubBroadcastRequest()
        request.set_ProductKey(product.product_key)
        request.set_TopicFullName(topic)
        request.set_MessageContent(b64(content))
        answer = hub.core_call(request)
        assert (answer["Success"], answer["Code"]) == (False, code)


# --- RRpc ----------------------------------------------------------------------------------


def _rrpc_responder(topic: str, payload: bytes) -> tuple[str, bytes] | None:
    if "/rrpc/request/" in topic:
        return topic.replace("/rrpc/request/", "/rrpc/response/"), b"pong:" + payload
    return None


def _rrpc(hub: Hub, device: Device, timeout: int = 3000) -> dict[str, Any]:
    request = RRpcRequest()
    request.set_ProductKey(device.product_key)
    request.set_DeviceName(device.device_name)
    request.set_RequestBase64Byte(b64(b"ping"))
    request.set_Timeout(timeout)
    return hub.core_call(request)


def test_rrpc_success(hub: Hub, device: Device, paho_device: MakeDevice) -> None:
    responder = paho_device(device, respond=_rrpc_responder)
    rrpc_filter = f"/sys/{device.product_key}/{device.device_name}/rrpc/request/+"
    assert responder.subscribe(rrpc_filter, qos=0) == 0
    answer = _rrpc(hub, device)
    assert answer["Success"] is True and answer["RrpcCode"] == "SUCCESS"
    assert base64.b64decode(answer["PayloadBase64Byte"]) == b"pong:ping"
    request = responder.expect()
    assert request.topic.endswith(f"/rrpc/request/{answer['MessageId']}") and request.qos == 0
    response = hub.tea().r_rpc(
        iot.RRpcRequest(
            product_key=device.product_key,
            device_name=device.device_name,
            request_base_64byte=b64(b"tea"),
            timeout=2000,
        )
    )
    assert response.body.rrpc_code == "SUCCESS"
    assert base64.b64decode(response.body.payload_base_64byte) == b"pong:tea"


def test_rrpc_timeout_and_offline(hub: Hub, device: Device, paho_device: MakeDevice) -> None:
    answer = _rrpc(hub, device)
    assert (answer["Success"], answer["Code"], answer["RrpcCode"]) == (
        False,
        "iot.messagebroker.OFFLINE",
        "OFFLINE",
    )
    silent = paho_device(device)
    silent.subscribe(f"/sys/{device.product_key}/{device.device_name}/rrpc/request/+", qos=0)
    answer = _rrpc(hub, device, timeout=1000)
    assert (answer["Success"], answer["Code"], answer["RrpcCode"]) == (
        False,
        "iot.messagebroker.TIMEOUT",
        "TIMEOUT",
    )
    assert silent.expect().payload == b"ping"


def test_rrpc_refusals(hub: Hub, device: Device) -> None:
    for timeout, code in [
        (999, "iot.messagebroker.InvalidTimeoutValue"),
        (8001, "iot.messagebroker.InvalidTimeoutValue"),
    ]:
        answer = _rrpc(hub, device, timeout)
        assert (answer["Success"], answer["Code"]) == (False, code)
    request = RRpcRequest()
    request.set_ProductKey(device.product_key)
    request.set_DeviceName("nosuchdevice")
    request.set_RequestBase64Byte(b64(b"ping"))
    request.set_Timeout(1000)
    assert hub.core_call(request)["Code"] == "iot.device.NotExistedDevice"


# --- QueryDeviceSubTopic -------------------------------------------------------------------


def test_query_device_sub_topic(hub: Hub, device: Device, paho_device: MakeDevice) -> None:
    request = QueryDeviceSubTopicRequest()
    request.set_ProductKey(device.product_key)
    request.set_DeviceName(device.device_name)
    assert hub.core_call(request)["TopicList"] == []
    listener = paho_device(device)
    listener.subscribe(_get(device))
    listener.subscribe(f"/broadcast/{device.product_key}/#")
    answer = hub.core_call(request)
    assert [t["TopicName"] for t in answer["TopicList"]] == [
        _get(device),
        f"/broadcast/{device.product_key}/#",
    ]
    assert all(t["Timestamp"] > 1_600_000_000_000 for t in answer["TopicList"])
    response = hub.tea().query_device_sub_topic(
        iot.QueryDeviceSubTopicRequest(
            product_key=device.product_key, device_name=device.device_name
        )
    )
    assert {t.topic_name for t in response.body.topic_list} == {
        _get(device),
        f"/broadcast/{device.product_key}/#",
    }


def test_rrpc_custom_topic(hub: Hub, device: Device, paho_device: MakeDevice) -> None:
    """The custom form (§2.1): request and reply both on ``/ext/rrpc/${MessageId}${Topic}``."""

    def respond(topic: str, payload: bytes) -> tuple[str, bytes] | None:
        if topic.startswith("/ext/rrpc/") and not payload.startswith(b"pong:"):
            return topic, b"pong:" + payload
        return None

    responder = paho_device(device, respond=respond)
    assert responder.subscribe(f"/ext/rrpc/+{_get(device)}", qos=0) == 0
    request = RRpcRequest()
    request.set_ProductKey(device.product_key)
    request.set_DeviceName(device.device_name)
    request.set_RequestBase64Byte(b64(b"custom"))
    request.set_Timeout(3000)
    request.set_Topic(_get(device))
    answer = hub.core_call(request)
    assert answer["RrpcCode"] == "SUCCESS", answer
    assert base64.b64decode(answer["PayloadBase64Byte"]) == b"pong:custom"
    assert responder.expect().topic == f"/ext/rrpc/{answer['MessageId']}{_get(device)}"


def test_256_kb_is_accepted_in_the_body_and_in_the_query(
    hub: Hub, device: Device, paho_device: MakeDevice
) -> None:
    """Pub sends MessageContent in the form body, BatchPub (old SDK) in the query (§4.1)."""
    listener = paho_device(device)
    listener.subscribe(_get(device))
    big = bytes(range(256)) * 1024
    assert core_pub(hub, device, big)["Success"] is True
    assert listener.expect().payload == big
    product = hub.registry.query_product(device.account_id, device.product_key)
    assert _batch(hub, product, [device.device_name], big)["Success"] is True
    assert listener.expect().payload == big
