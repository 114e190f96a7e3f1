"""A full disk must not lock devices and applications out (README "Durability": "when the
disk is full, the hub refuses new QoS 1/2 work ... the HTTP APIs answer 503").

The attack: fill the disk the hub's data directory lives on (any tenant that can publish to
an offline persistent session, or anything else writing to that disk, can). Before the fix,
every HTTP call that had to write (a MessageId lease, a shadow update, a device registration)
failed with 500 ``InternalFailureException`` / ``InternalError``, which tells a client "bug",
not "try again later"; and a subscriber coming back for the messages queued for it could not
drain them while the disk was full.

A real full disk: an 8 MiB tmpfs mounted as the data directory (the tests run as root; they
are skipped where ``mount`` is not permitted), a real ``thinghub serve`` on it, and a filler
file written until ``ENOSPC``. Every call is made with the real SDKs (boto3 ``iot-data``,
aliyun-python-sdk-core) or paho-mqtt, then repeated once the filler is gone: the hub recovers
by itself.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import paho.mqtt.client as mqtt
import pytest
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkcore.request import RpcRequest
from aliyunsdkiot.request.v20180120.CreateProductRequest import CreateProductRequest
from aliyunsdkiot.request.v20180120.CreateProductTopicRequest import CreateProductTopicRequest
from aliyunsdkiot.request.v20180120.PubRequest import PubRequest
from aliyunsdkiot.request.v20180120.QueryProductListRequest import QueryProductListRequest
from aliyunsdkiot.request.v20180120.RegisterDeviceRequest import RegisterDeviceRequest
from botocore.config import Config
from botocore.exceptions import ClientError
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sechub import KEY_ID, SECRET, TIMEOUT, Filler, SecHub, publish_qos1

from thinghub.registry.errors import StorageFull, StoreUnavailable
from thinghub.registry.ids import MessageIdGenerator
from thinghub.registry.registry import Registry
from thinghub.registry.store import RegistryStore

pytestmark = pytest.mark.thinghub_only


@pytest.fixture
def hub(small_disk: Path) -> Iterator[SecHub]:
    # No $SYS rounds: their retained messages would take the run's first MessageId (and its
    # lease write) before the tests below fill the disk.
    h = SecHub(small_disk / "data", mqtt_sys_interval=0)
    try:
        yield h
    finally:
        assert h.stop() == 0, h.log()


def assert_no_internal_errors(hub: SecHub) -> None:
    assert "Traceback" not in hub.log(), hub.log()


def aws_client(hub: SecHub) -> Any:
    return boto3.client(
        "iot-data",
        endpoint_url=f"http://127.0.0.1:{hub.http_port}",
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        config=Config(retries={"max_attempts": 1}),
    )


class Aliyun:
    def __init__(self, hub: SecHub) -> None:
        self.endpoint = f"127.0.0.1:{hub.http_port}"
        self.client = AcsClient(KEY_ID, SECRET, "cn-shanghai", auto_retry=False)

    def call(self, request: RpcRequest, **params: object) -> dict[str, Any]:
        request.set_endpoint(self.endpoint)
        request.set_protocol_type("http")
        for name, value in params.items():
            request.add_query_param(name, value)
        answer: dict[str, Any] = json.loads(self.client.do_action_with_exception(request))
        return answer


def aws_unavailable(call: Callable[[], object]) -> None:
    """``call`` is refused with the modelled 503, in the shape botocore maps to its class."""
    with pytest.raises(ClientError) as refused:
        call()
    error = refused.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 503, error
    assert error["Error"]["Code"] == "ServiceUnavailableException", error
    assert type(refused.value).__name__ == "ServiceUnavailableException"


def aliyun_unavailable(aliyun: Aliyun, request: RpcRequest, **params: object) -> None:
    """The gateway's 503 ``ServiceUnavailable`` (never 500 ``InternalError``)."""
    with pytest.raises(ServerException) as refused:
        aliyun.call(request, **params)
    got = (refused.value.get_error_code(), refused.value.get_http_status())
    assert got == ("ServiceUnavailable", 503), refused.value


def eventually(check: Callable[[], object], what: str, timeout: float = TIMEOUT) -> Any:
    """``check()``'s result once it stops raising (the hub recovering by itself)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (ClientError, ServerException, AssertionError):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {timeout} s") from None
            time.sleep(0.1)


# ----------------------------------------------------------------------------- MQTT


class Subscriber:
    """A paho MQTT 5 client with a persistent session; records what it receives."""

    def __init__(self, hub: SecHub, client_id: str) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.received: list[bytes] = []
        self.cond = threading.Condition()
        self.connected = threading.Event()
        self.disconnected = threading.Event()

        def on_message(_c: Any, _u: Any, message: Any) -> None:
            with self.cond:
                self.received.append(message.payload)
                self.cond.notify_all()

        def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            assert not rc.is_failure, rc
            self.connected.set()

        self.client.on_message = on_message
        self.client.on_connect = on_connect
        self.client.on_disconnect = lambda *_a: self.disconnected.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", hub.mqtt_port, clean_start=False, properties=props)
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT), "no CONNACK"

    def subscribe(self, topic_filter: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_a: done.set()
        self.client.subscribe(topic_filter, qos=1)
        assert done.wait(TIMEOUT)

    def wait_received(self, count: int, timeout: float = TIMEOUT) -> list[bytes]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.received) >= count, timeout), (
                f"{len(self.received)} of {count} received"
            )
            return list(self.received)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ----------------------------------------------------------------------------- the tests


def test_aws_calls_that_must_write_answer_503_on_a_full_disk_and_recover(hub: SecHub) -> None:
    aws = aws_client(hub)
    shadow_update = b'{"state":{"desired":{"on":true}}}'
    filler = Filler(hub.data_dir.parent / "filler")
    filler.fill()
    try:
        # No MessageId has been issued yet in this run: the first one needs a lease write,
        # QoS 0 included (a MessageId is what makes a publish traceable, registry/ids.py).
        aws_unavailable(lambda: aws.publish(topic="disk/qos0", qos=0, payload=b"a"))
        aws_unavailable(lambda: aws.publish(topic="disk/qos1", qos=1, payload=b"b"))
        aws_unavailable(lambda: aws.update_thing_shadow(thingName="t1", payload=shadow_update))
        aws_unavailable(
            lambda: aws.update_thing_shadow(
                thingName="t1", shadowName="config", payload=shadow_update
            )
        )
    finally:
        filler.remove()

    # Space is back: the same calls succeed, without a restart, and the refused shadow
    # updates changed nothing (the shadows start at version 1).
    eventually(lambda: aws.publish(topic="disk/qos0", qos=0, payload=b"a"), "Publish QoS 0")
    eventually(lambda: aws.publish(topic="disk/qos1", qos=1, payload=b"b"), "Publish QoS 1")
    for name in ({}, {"shadowName": "config"}):
        answer = aws.update_thing_shadow(thingName="t1", payload=shadow_update, **name)
        assert json.loads(answer["payload"].read())["version"] == 1
    assert_no_internal_errors(hub)


def test_alibaba_calls_that_must_write_answer_503_on_a_full_disk_and_recover(hub: SecHub) -> None:
    aliyun = Aliyun(hub)
    products = aliyun.call(QueryProductListRequest(), CurrentPage=1, PageSize=10)
    product_key = products["Data"]["List"]["ProductInfo"][0]["ProductKey"]
    register = {"ProductKey": product_key, "DeviceName": "full-disk-1"}
    topic = {"ProductKey": product_key, "TopicShortName": "fulldisk", "Operation": "PUB"}
    pub = {
        "ProductKey": product_key,
        "TopicFullName": f"/{product_key}/demo-device/user/get",
        "MessageContent": "aGk=",
    }
    filler = Filler(hub.data_dir.parent / "filler")
    filler.fill()
    try:
        aliyun_unavailable(aliyun, RegisterDeviceRequest(), **register)
        aliyun_unavailable(aliyun, CreateProductRequest(), ProductName="FullDisk", NodeType=0)
        aliyun_unavailable(aliyun, CreateProductTopicRequest(), **topic)
        aliyun_unavailable(aliyun, PubRequest(), Qos=0, **pub)
        aliyun_unavailable(aliyun, PubRequest(), Qos=1, **pub)
    finally:
        filler.remove()

    # Space is back: the same calls succeed without a restart, and the refused ones changed
    # nothing (the device name, the product name and the topic are still free).
    eventually(lambda: aliyun.call(PubRequest(), Qos=0, **pub), "Pub QoS 0")
    assert aliyun.call(PubRequest(), Qos=1, **pub)["Success"] is True
    assert aliyun.call(RegisterDeviceRequest(), **register)["Success"] is True
    product = aliyun.call(CreateProductRequest(), ProductName="FullDisk", NodeType=0)
    assert product["Success"] is True, product
    assert aliyun.call(CreateProductTopicRequest(), **topic)["Success"] is True
    assert_no_internal_errors(hub)


def test_registry_writes_on_a_full_disk_raise_storage_full_and_change_nothing(
    small_disk: Path,
) -> None:
    """Below the dialects: every registry write (the Alibaba registry actions, the MessageId
    lease) raises the one typed error the dialects answer 503, on a real full disk."""
    store = RegistryStore.open(small_disk / "data")
    try:
        registry = Registry(store)
        account = registry.ensure_root_account().account_id
        product = registry.create_product(account, "Meters", 0)
        ids = MessageIdGenerator(store)
        filler = Filler(small_disk / "filler")
        filler.fill()
        try:
            writes: list[Callable[[], object]] = [
                lambda: registry.register_device(account, product.product_key, "dev-1"),
                lambda: registry.batch_register(account, product.product_key, count=5),
                lambda: registry.create_product(account, "Other", 0),
                lambda: registry.update_product(account, product.product_key, name="Renamed"),
                lambda: registry.create_topic_category(account, product.product_key, "cmd", "SUB"),
                ids.next_id,
            ]
            for write in writes:
                with pytest.raises(StorageFull):
                    write()
            with pytest.raises(StoreUnavailable):  # what the dialects' handlers catch
                ids.next_id()
        finally:
            filler.remove()
        assert registry.query_product(account, product.product_key).name == "Meters"
        assert registry.query_product(account, product.product_key).device_count == 0
        registry.register_device(account, product.product_key, "dev-1")
        assert ids.next_id() > 0
    finally:
        store.close()


def test_a_persistent_subscriber_drains_its_queue_while_the_disk_is_full(hub: SecHub) -> None:
    subscriber = Subscriber(hub, "drainer")
    subscriber.subscribe("drain/#")
    subscriber.stop()  # offline: what is published now waits on disk for it
    queued = [f"m{i}".encode() for i in range(20)]
    publish_qos1(hub, "drain/t", queued)

    filler = Filler(hub.data_dir.parent / "filler")
    filler.fill()
    try:
        subscriber = Subscriber(hub, "drainer")
        assert subscriber.wait_received(len(queued), timeout=10) == queued
        assert not subscriber.disconnected.is_set()
        subscriber.stop()

        # The premise: the store really could not write meanwhile (its log line comes
        # through the hub's log thread: waited for).
        def logged() -> None:
            assert "database or disk is full" in hub.log()

        eventually(logged, "the store's full-disk log line")
    finally:
        filler.remove()

    # The acknowledgements given on the full disk hold: once there is room again (the store
    # catches up by itself), nothing already acknowledged is delivered a second time.
    eventually(lambda: publish_qos1(hub, "drain/t", [b"after"]), "a QoS 1 publish")
    subscriber = Subscriber(hub, "drainer")
    assert subscriber.wait_received(1) == [b"after"]
    subscriber.stop()
