"""Rate limits per account and action (reference §2: QPS per account, shared by its keys;
§1.4 ``Throttling.User``). The limiter's clock stands still here, so a bucket holds exactly its
rate until the test moves time."""

from __future__ import annotations

from collections.abc import Callable

from alibabacloud_iot20180120 import models as iot
from aliyun_harness import Hub, PahoDevice, b64, tea_error, unique
from aliyunsdkiot.request.v20180120.CreateProductTopicRequest import CreateProductTopicRequest
from aliyunsdkiot.request.v20180120.PubRequest import PubRequest

from thinghub.registry.models import AccessKey, Device, Product

LIMITS = {"Pub": 5, "CreateProductTopic": 1}

MakeDevice = Callable[..., PahoDevice]


def _pub(device: Device, payload: bytes) -> PubRequest:
    request = PubRequest()
    request.set_ProductKey(device.product_key)
    request.set_TopicFullName(f"/{device.product_key}/{device.device_name}/user/get")
    request.set_MessageContent(b64(payload))
    return request


def _accepted(hub: Hub, device: Device, payload: bytes, key: AccessKey | None = None) -> bool:
    try:
        return bool(hub.core_call(_pub(device, payload), key=key)["Success"])
    except Exception as error:
        code = getattr(error, "get_error_code", lambda: None)()
        status = getattr(error, "get_http_status", lambda: None)()
        assert (code, status) == ("Throttling.User", 400), error
        return False


def test_flood_past_the_limit_is_throttled_and_delivers_only_what_was_accepted(
    hub: Hub, device: Device, paho_device: MakeDevice
) -> None:
    listener = paho_device(device)
    listener.subscribe(f"/{device.product_key}/{device.device_name}/user/get")
    results = [_accepted(hub, device, f"m{i}".encode()) for i in range(12)]
    assert results == [True] * 5 + [False] * 7
    # Every key of the account shares its quota.
    spare = hub.registry.create_access_key(hub.root_key.account_id)
    assert _accepted(hub, device, b"spare", key=spare) is False
    tea = tea_error(
        lambda: hub.tea().pub(
            iot.PubRequest(
                product_key=device.product_key,
                topic_full_name=f"/{device.product_key}/{device.device_name}/user/get",
                message_content=b64(b"tea"),
            )
        )
    )
    assert (tea.code, tea.status_code) == ("Throttling.User", 400)
    # Another account is not slowed down.
    other_product = hub.product(hub.other_key)
    other_device = hub.device(other_product)
    assert _accepted(hub, other_device, b"other", key=hub.other_key) is True
    # A second later the bucket is full again; the device saw exactly the accepted messages.
    hub.limit_now += 1.0
    mark = unique("after-").encode()
    assert _accepted(hub, device, mark) is True
    received = [listener.expect().payload for _ in range(6)]
    assert received == [b"m0", b"m1", b"m2", b"m3", b"m4", mark]


def test_throttled_call_changes_nothing(hub: Hub, product: Product) -> None:
    hub.limit_now += 10.0
    before = hub.registry.list_topic_categories(product.account_id, product.product_key)
    for index, expected in enumerate((True, False)):
        request = CreateProductTopicRequest()
        request.set_ProductKey(product.product_key)
        request.set_TopicShortName(f"flood{index}")
        request.set_Operation("SUB")
        if expected:
            assert hub.core_call(request)["Success"] is True
        else:
            error = hub.core_error(request)
            assert (error.get_error_code(), error.get_http_status()) == ("Throttling.User", 400)
    after = hub.registry.list_topic_categories(product.account_id, product.product_key)
    assert [c.topic_short_name for c in after] == [
        *(c.topic_short_name for c in before),
        "flood0",
    ]
