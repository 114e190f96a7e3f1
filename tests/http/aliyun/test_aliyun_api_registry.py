"""Products, devices and topic categories through the official SDKs (reference §2.2-§2.4):
each action's answer, its errors, and that a refused call leaves the registry unchanged."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from alibabacloud_iot20180120 import models as iot
from aliyun_harness import Hub, PahoDevice, b64, unique
from aliyunsdkiot.request.v20180120 import (
    BatchCheckDeviceNamesRequest,
    BatchGetDeviceStateRequest,
    BatchRegisterDeviceRequest,
    BatchRegisterDeviceWithApplyIdRequest,
    CreateProductRequest,
    CreateProductTopicRequest,
    DeleteDeviceRequest,
    DeleteProductRequest,
    DeleteProductTopicRequest,
    DisableThingRequest,
    EnableThingRequest,
    GetDeviceStatusRequest,
    PubRequest,
    QueryDeviceDetailRequest,
    QueryDeviceRequest,
    QueryPageByApplyIdRequest,
    QueryProductListRequest,
    QueryProductRequest,
    QueryProductTopicRequest,
    RegisterDeviceRequest,
    UpdateProductRequest,
    UpdateProductTopicRequest,
)

from thinghub.registry.models import AccessKey, Device, Product

MakeDevice = Callable[..., PahoDevice]


def call(hub: Hub, module: Any, key: AccessKey | None = None, **params: Any) -> dict[str, Any]:
    """An aliyunsdkiot request of ``module`` with ``set_<Name>(value)`` for each param."""
    request = getattr(module, module.__name__.rsplit(".", 1)[-1])()
    for name, value in params.items():
        getattr(request, f"set_{name}")(value)
    return hub.core_call(request, key=key)


def fails(answer: dict[str, Any], code: str) -> None:
    assert (answer["Success"], answer.get("Code")) == (False, code), answer
    assert answer["ErrorMessage"]


# --- products (§2.2) -----------------------------------------------------------------------


def test_product_lifecycle(hub: Hub) -> None:
    name = unique("prod_")
    created = call(
        hub,
        CreateProductRequest,
        ProductName=name,
        NodeType=0,
        DataFormat=0,
        Description="a product",
        NetType="WIFI",
    )
    assert created["Success"] is True
    pk = created["ProductKey"]
    assert re.fullmatch(r"a1[A-Za-z0-9]{9}", pk) and created["Data"]["ProductKey"] == pk
    assert created["Data"]["ProductName"] == name and len(created["Data"]["ProductSecret"]) == 16
    data = call(hub, QueryProductRequest, ProductKey=pk)["Data"]
    assert (data["NodeType"], data["DataFormat"], data["DeviceCount"]) == (0, 0, 0)
    assert data["NetType"] == 3 and data["ProductStatus"] == "DEVELOPMENT_STATUS"
    assert isinstance(data["GmtCreate"], int)
    listing = call(hub, QueryProductListRequest, CurrentPage=1, PageSize=200)["Data"]
    assert listing["List"]["ProductInfo"][0]["ProductKey"] == pk  # newest first
    assert listing["Total"] >= 1 and listing["CurrentPage"] == 1
    renamed = unique("renamed_")
    assert call(hub, UpdateProductRequest, ProductKey=pk, ProductName=renamed)["Success"]
    tea = hub.tea().query_product(iot.QueryProductRequest(product_key=pk))
    assert tea.body.data.product_name == renamed and tea.body.data.description == "a product"
    assert call(hub, DeleteProductRequest, ProductKey=pk)["Success"] is True
    fails(call(hub, QueryProductRequest, ProductKey=pk), "iot.prod.NotExistedProduct")


def test_product_errors_change_nothing(hub: Hub, product: Product) -> None:
    before = hub.registry.list_products(product.account_id, page_size=200).total
    fails(
        call(hub, CreateProductRequest, ProductName=product.name, NodeType=0),
        "iot.prod.AlreadyExistedProductName",
    )
    fails(
        call(hub, CreateProductRequest, ProductName="a!", NodeType=0),
        "iot.prod.InvalidFormattedProductName",
    )
    fails(
        call(hub, CreateProductRequest, ProductName=unique("p_"), NodeType=7),
        "iot.prod.InvalidNodeType",
    )
    fails(
        call(hub, QueryProductListRequest, CurrentPage=1, PageSize=201),
        "iot.common.InvalidPageParams",
    )
    error = hub.core_error(CreateProductRequest.CreateProductRequest())
    assert (error.get_error_code(), error.get_http_status()) == ("MissingProductName", 400)
    assert hub.registry.list_products(product.account_id, page_size=200).total == before
    # Another account's ProductKey: not found, and untouched.
    other = hub.other_key
    fails(
        call(hub, QueryProductRequest, other, ProductKey=product.product_key),
        "iot.prod.NotExistedProduct",
    )
    fails(
        call(
            hub,
            UpdateProductRequest,
            other,
            ProductKey=product.product_key,
            ProductName=unique("stolen_"),
        ),
        "iot.prod.NotExistedProduct",
    )
    fails(
        call(hub, DeleteProductRequest, other, ProductKey=product.product_key),
        "iot.prod.NotExistedProduct",
    )
    assert hub.registry.query_product(product.account_id, product.product_key) == product
    hub.device(product)
    fails(
        call(hub, DeleteProductRequest, ProductKey=product.product_key),
        "iot.prod.ProductHasDevices",
    )


# --- devices (§2.3) ------------------------------------------------------------------------


def test_register_and_query_devices(hub: Hub, product: Product) -> None:
    pk = product.product_key
    name = unique("dev-")
    data = call(
        hub, RegisterDeviceRequest, ProductKey=pk, DeviceName=name, Nickname="kitchen_lamp"
    )["Data"]
    assert (data["ProductKey"], data["DeviceName"], data["Nickname"]) == (pk, name, "kitchen_lamp")
    assert len(data["DeviceSecret"]) == 32 and len(data["IotId"]) == 26
    generated = call(hub, RegisterDeviceRequest, ProductKey=pk)["Data"]["DeviceName"]
    assert len(generated) == 20
    by_id = call(hub, QueryDeviceDetailRequest, IotId=data["IotId"])["Data"]
    by_name = call(hub, QueryDeviceDetailRequest, ProductKey=pk, DeviceName=name)["Data"]
    assert by_id == by_name
    assert by_id["Status"] == "UNACTIVE" and by_id["ProductName"] == product.name
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", by_id["GmtCreate"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", by_id["UtcCreate"])
    page = call(hub, QueryDeviceRequest, ProductKey=pk, PageSize=1, CurrentPage=2)
    assert (page["Total"], page["PageSize"], page["PageCount"], page["Page"]) == (2, 1, 2, 2)
    info = page["Data"]["DeviceInfo"][0]
    assert info["DeviceName"] == name and info["DeviceStatus"] == "UNACTIVE"
    assert re.fullmatch(r"\w{3}, \d\d-\w{3}-\d{4} \d\d:\d\d:\d\d GMT", info["GmtCreate"])
    tea = hub.tea(v2=True).query_device(iot.QueryDeviceRequest(product_key=pk, page_size=10))
    assert {d.device_name for d in tea.body.data.device_info} == {name, generated}


def test_device_errors_change_nothing(hub: Hub, device: Device) -> None:
    pk = device.product_key
    fails(
        call(hub, RegisterDeviceRequest, ProductKey=pk, DeviceName=device.device_name),
        "iot.device.AlreadyExistedDeviceName",
    )
    fails(
        call(hub, RegisterDeviceRequest, ProductKey=pk, DeviceName="x"),
        "iot.device.InvalidFormattedDeviceName",
    )
    fails(
        call(hub, QueryDeviceDetailRequest, ProductKey=pk, DeviceName="nosuchdevice"),
        "iot.device.NotExistedDevice",
    )
    fails(
        call(hub, QueryDeviceDetailRequest, IotId="CqXL5h5ysRTA4NxjABjj0010fa"),
        "iot.device.NotExistedDevice",
    )
    other = hub.other_key
    for module in (
        QueryDeviceDetailRequest,
        DeleteDeviceRequest,
        DisableThingRequest,
        GetDeviceStatusRequest,
    ):
        fails(call(hub, module, other, IotId=device.iot_id), "iot.device.NotExistedDevice")
    fails(
        call(hub, RegisterDeviceRequest, other, ProductKey=pk, DeviceName=unique("d")),
        "iot.prod.NotExistedProduct",
    )
    assert hub.registry.get_device(device.account_id, iot_id=device.iot_id) == device
    assert hub.registry.list_devices(device.account_id, pk).total == 1


def test_status_disable_enable_delete(hub: Hub, product: Product, paho_device: MakeDevice) -> None:
    device = hub.device(product)
    status = call(hub, GetDeviceStatusRequest, IotId=device.iot_id)["Data"]
    assert status["Status"] == "UNACTIVE" and isinstance(status["Timestamp"], int)
    online = paho_device(device)
    status = call(
        hub, GetDeviceStatusRequest, ProductKey=device.product_key, DeviceName=device.device_name
    )["Data"]
    assert status["Status"] == "ONLINE"
    detail = call(hub, QueryDeviceDetailRequest, IotId=device.iot_id)["Data"]
    assert detail["IpAddress"] == "127.0.0.1" and detail["GmtOnline"]

    assert call(hub, DisableThingRequest, IotId=device.iot_id)["Success"] is True
    online.expect_disconnect()
    assert call(hub, GetDeviceStatusRequest, IotId=device.iot_id)["Data"]["Status"] == "DISABLE"
    assert call(hub, EnableThingRequest, IotId=device.iot_id)["Success"] is True
    assert call(hub, GetDeviceStatusRequest, IotId=device.iot_id)["Data"]["Status"] == "OFFLINE"

    again = paho_device(device)
    assert (
        call(
            hub, DeleteDeviceRequest, ProductKey=device.product_key, DeviceName=device.device_name
        )["Success"]
        is True
    )
    again.expect_disconnect()
    fails(call(hub, GetDeviceStatusRequest, IotId=device.iot_id), "iot.device.NotExistedDevice")


def test_batch_get_device_state(hub: Hub, product: Product, paho_device: MakeDevice) -> None:
    first, second = hub.device(product), hub.device(product)
    paho_device(first)
    answer = call(
        hub,
        BatchGetDeviceStateRequest,
        ProductKey=product.product_key,
        DeviceNames=[first.device_name, second.device_name],
    )
    states = answer["DeviceStatusList"]["DeviceStatus"]
    assert [(s["DeviceName"], s["Status"]) for s in states] == [
        (first.device_name, "ONLINE"),
        (second.device_name, "UNACTIVE"),
    ]
    assert states[0]["AsAddress"] == "127.0.0.1" and states[0]["LastOnlineTime"]
    by_ids = call(hub, BatchGetDeviceStateRequest, IotIds=[second.iot_id])
    assert by_ids["DeviceStatusList"]["DeviceStatus"][0]["IotId"] == second.iot_id
    fails(
        call(
            hub,
            BatchGetDeviceStateRequest,
            ProductKey=product.product_key,
            DeviceNames=[first.device_name, "nosuchdevice"],
        ),
        "iot.device.NotExistedDevice",
    )
    fails(
        call(
            hub,
            BatchGetDeviceStateRequest,
            ProductKey=product.product_key,
            DeviceNames=[f"dev{i:03d}" for i in range(51)],
        ),
        "iot.common.InvalidFormattedParameter",
    )


def test_batch_register_and_query_page_by_apply_id(hub: Hub, product: Product) -> None:
    pk = product.product_key
    apply_id = call(hub, BatchRegisterDeviceRequest, ProductKey=pk, Count=3)["Data"]["ApplyId"]
    assert isinstance(apply_id, int)
    page = call(hub, QueryPageByApplyIdRequest, ApplyId=apply_id, PageSize=2, CurrentPage=1)
    assert (page["Total"], page["PageCount"], page["Page"]) == (3, 2, 1)
    assert len(page["ApplyDeviceList"]["ApplyDeviceInfo"]) == 2
    fails(
        call(hub, BatchRegisterDeviceRequest, ProductKey=pk, Count=1001),
        "iot.device.DeviceCountExceeded",
    )
    fails(
        call(hub, QueryPageByApplyIdRequest, hub.other_key, ApplyId=apply_id),
        "iot.device.DeviceApplyIsNotFound",
    )
    names = [unique("n"), unique("n")]
    checked = call(hub, BatchCheckDeviceNamesRequest, ProductKey=pk, DeviceNames=names)
    apply_id = checked["Data"]["ApplyId"]
    confirmed = call(hub, BatchRegisterDeviceWithApplyIdRequest, ProductKey=pk, ApplyId=apply_id)
    assert confirmed["Data"]["ApplyId"] == apply_id
    infos = call(hub, QueryPageByApplyIdRequest, ApplyId=apply_id)["ApplyDeviceList"]
    assert [i["DeviceName"] for i in infos["ApplyDeviceInfo"]] == names
    before = hub.registry.list_devices(product.account_id, pk).total
    fails(
        call(hub, BatchCheckDeviceNamesRequest, ProductKey=pk, DeviceNames=[unique("n"), "x"]),
        "iot.device.InvalidFormattedDeviceName",
    )
    assert hub.registry.list_devices(product.account_id, pk).total == before == 5


# --- topic categories (§2.4) ---------------------------------------------------------------


def test_topic_category_lifecycle_and_pub_permission(
    hub: Hub, product: Product, paho_device: MakeDevice
) -> None:
    pk = product.product_key
    device = hub.device(product)
    listener = paho_device(device)
    topic = f"/{pk}/{device.device_name}/user/cmd/led"
    assert listener.subscribe(topic) == 0x87  # no category yet: refused
    topic_id = call(
        hub,
        CreateProductTopicRequest,
        ProductKey=pk,
        TopicShortName="cmd/led",
        Operation="SUB",
        Desc="commands",
    )["TopicId"]
    assert isinstance(topic_id, int)
    infos = call(hub, QueryProductTopicRequest, ProductKey=pk)["Data"]["ProductTopicInfo"]
    assert infos[-1] == {
        "Id": str(topic_id),
        "ProductKey": pk,
        "TopicShortName": f"/{pk}/${{deviceName}}/user/cmd/led",
        "Operation": "1",
        "Desc": "commands",
    }
    assert listener.subscribe(topic) == 1
    pub = PubRequest.PubRequest()
    pub.set_ProductKey(pk)
    pub.set_TopicFullName(topic)
    pub.set_MessageContent(b64(b"on"))
    assert hub.core_call(pub)["Success"] is True
    assert listener.expect().payload == b"on"

    assert (
        call(
            hub,
            UpdateProductTopicRequest,
            TopicId=topic_id,
            TopicShortName="cmd/led",
            Operation="PUB",
        )["Success"]
        is True
    )
    fails(hub.core_call(pub), "iot.messagebroker.InvalidFormattedTopicName")
    tea = hub.tea().query_product_topic(iot.QueryProductTopicRequest(product_key=pk))
    assert tea.body.data.product_topic_info[-1].operation == "0"
    assert call(hub, DeleteProductTopicRequest, TopicId=topic_id)["Success"] is True
    fails(
        call(hub, DeleteProductTopicRequest, TopicId=topic_id),
        "iot.messagebroker.TopicTemplateIsNotFound",
    )


def test_topic_category_errors_change_nothing(hub: Hub, product: Product) -> None:
    pk = product.product_key
    before = hub.registry.list_topic_categories(product.account_id, pk)
    fails(
        call(hub, CreateProductTopicRequest, ProductKey=pk, TopicShortName="get", Operation="SUB"),
        "iot.messagebroker.TopicAlreadyFound",
    )
    fails(
        call(hub, CreateProductTopicRequest, ProductKey=pk, TopicShortName="a/#", Operation="PUB"),
        "iot.messagebroker.InvalidTopicTemplateOperationValue",
    )
    fails(
        call(hub, CreateProductTopicRequest, ProductKey=pk, TopicShortName="a b", Operation="SUB"),
        "iot.messagebroker.InvalidFormattedTopicName",
    )
    fails(
        call(hub, CreateProductTopicRequest, ProductKey=pk, TopicShortName="x", Operation="BOTH"),
        "iot.messagebroker.InvalidTopicTemplateOperationValue",
    )
    other = hub.other_key
    fails(
        call(
            hub,
            CreateProductTopicRequest,
            other,
            ProductKey=pk,
            TopicShortName="x",
            Operation="SUB",
        ),
        "iot.prod.NotExistedProduct",
    )
    fails(
        call(
            hub,
            UpdateProductTopicRequest,
            other,
            TopicId=before[0].id,
            TopicShortName="x",
            Operation="SUB",
        ),
        "iot.messagebroker.TopicTemplateIsNotFound",
    )
    fails(
        call(hub, DeleteProductTopicRequest, other, TopicId=before[0].id),
        "iot.messagebroker.TopicTemplateIsNotFound",
    )
    fails(call(hub, QueryProductTopicRequest, other, ProductKey=pk), "iot.prod.NotExistedProduct")
    assert hub.registry.list_topic_categories(product.account_id, pk) == before
