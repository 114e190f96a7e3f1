"""The registry's hooks inside a real (in-memory) broker: Alibaba device sign-in, one session
per device, topic permissions from the product's categories, the per-device subscription
limit, and the device's ONLINE/OFFLINE status."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from thinghub.auth.aliyun_device import build_credentials, device_client_id
from thinghub.auth.broker_hooks import RegistryHooks
from thinghub.mqtt.packets import ConnAck, Disconnect, PubAck
from thinghub.mqtt.types import ProtocolVersion, ReasonCode
from thinghub.registry.models import Device, DeviceStatus, Product
from thinghub.registry.registry import Registry
from thinghub.registry.store import RegistryStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "broker"))
from harness import InMemoryHub, TestClient

V3, V5 = ProtocolVersion.V311, ProtocolVersion.V5


class World:
    def __init__(self, *, allow_anonymous: bool = False, max_subscriptions: int = 100) -> None:
        self.registry = Registry(RegistryStore.in_memory())
        root = self.registry.ensure_root_account().account_id
        self.product: Product = self.registry.create_product(root, "Hooks_01", 0)
        self.device: Device = self.registry.register_device(root, self.product.product_key, "dev-1")
        self.other: Device = self.registry.register_device(root, self.product.product_key, "dev-2")
        self.hub = InMemoryHub(allow_anonymous=allow_anonymous)
        hooks = RegistryHooks(
            self.registry,
            allow_anonymous=allow_anonymous,
            anonymous_account=root,
            max_subscriptions_per_device=max_subscriptions,
        )
        broker = self.hub.broker
        broker.authenticator = hooks
        broker.authorizer = hooks
        broker.observers = (hooks,)

    def sign_in(
        self, version: ProtocolVersion = V5, *, secret: str | None = None, client_id: str = "x"
    ) -> tuple[TestClient, ConnAck]:
        d = self.device
        cid, user, password = build_credentials(
            d.product_key, d.device_name, secret or d.device_secret, client_id=client_id
        )
        client = self.hub.client(version)
        return client, client.connect(cid, username=user, password=password.encode())

    def status(self, device: Device) -> DeviceStatus:
        found = self.registry.lookup_device(device.product_key, device.device_name)
        assert found is not None
        return found.status


@pytest.mark.parametrize("version", [V3, V5], ids=["v311", "v5"])
def test_device_signs_in_and_its_status_follows_the_connection(version: ProtocolVersion) -> None:
    world = World()
    assert world.status(world.device) == DeviceStatus.UNACTIVE
    client, ack = world.sign_in(version)
    assert ack.reason_code == 0
    d = world.device
    assert world.hub.broker.session_of("root", device_client_id(d.product_key, d.device_name))
    assert world.status(world.device) == DeviceStatus.ONLINE
    client.drop()
    world.hub.settle()
    assert world.status(world.device) == DeviceStatus.OFFLINE


@pytest.mark.parametrize(
    ("version", "expected"),
    [(V3, 4), (V5, ReasonCode.BAD_USER_NAME_OR_PASSWORD)],
    ids=["v311", "v5"],
)
def test_wrong_secret_is_refused(version: ProtocolVersion, expected: int) -> None:
    world = World()
    _client, ack = world.sign_in(version, secret="not-the-secret-0123456789abcdef")
    assert ack.reason_code == expected
    assert world.status(world.device) == DeviceStatus.UNACTIVE


def test_anonymous_clients_are_refused_unless_allowed() -> None:
    ack = World().hub.client(V5).connect("plain")
    assert ack.reason_code == ReasonCode.NOT_AUTHORIZED
    ack = World(allow_anonymous=True).hub.client(V5).connect("plain")
    assert ack.reason_code == 0


def test_a_second_sign_in_of_the_device_takes_over() -> None:
    world = World()
    first, _ = world.sign_in(V5, client_id="first")
    second, ack = world.sign_in(V5, client_id="second")  # another clientId string, same device
    assert ack.reason_code == 0
    kicked = first.expect(Disconnect)
    assert kicked.reason_code == ReasonCode.SESSION_TAKEN_OVER
    world.hub.settle()
    assert world.status(world.device) == DeviceStatus.ONLINE  # the old end does not win
    second.drop()
    world.hub.settle()
    assert world.status(world.device) == DeviceStatus.OFFLINE


def test_topics_follow_the_product_categories() -> None:
    world = World()
    client, _ = world.sign_in(V5)
    pk, dn, other = world.product.product_key, world.device.device_name, world.other.device_name
    ack = client.subscribe(f"/{pk}/{dn}/user/get", f"/{pk}/{other}/user/get", qos=1)
    assert ack.reason_codes == (1, ReasonCode.NOT_AUTHORIZED)
    refused = client.publish(f"/{pk}/{dn}/user/get", b"not a PUB category", 1)
    assert isinstance(refused, PubAck) and refused.reason_code == ReasonCode.NOT_AUTHORIZED
    allowed = client.publish(f"/{pk}/{dn}/user/update", b"telemetry", 1)
    assert isinstance(allowed, PubAck) and allowed.reason_code < 0x80
    client.assert_nothing_pending()  # the refused message reached nobody, not even itself


def test_subscriptions_per_device_are_limited() -> None:
    world = World(max_subscriptions=1)
    client, _ = world.sign_in(V5)
    pk, dn = world.product.product_key, world.device.device_name
    ack = client.subscribe(f"/{pk}/{dn}/user/get", f"/broadcast/{pk}/news", qos=1)
    assert ack.reason_codes == (1, ReasonCode.QUOTA_EXCEEDED)
