"""What ``make run`` shows a new user: a demo product and device in the root account (created
on first start), and ready-to-paste commands for a device and for the Alibaba ``Pub`` API."""

from __future__ import annotations

from dataclasses import dataclass

from .auth.aliyun_device import build_credentials
from .registry.errors import ConflictError, NotFoundError
from .registry.models import AccessKey, Device, Product
from .registry.registry import Registry

DEMO_PRODUCT = "ThingHub_demo"
DEMO_DEVICE = "demo-device"


@dataclass(frozen=True)
class Demo:
    product: Product
    device: Device


def ensure_demo(registry: Registry) -> Demo | None:
    """Create the demo product and device if the root account has no product yet; return
    them if they exist (None once the user has deleted them)."""
    root = registry.ensure_root_account().account_id
    products = registry.list_products(root, page=1, page_size=50).items
    product = next((p for p in products if p.name == DEMO_PRODUCT), None)
    if product is None:
        if products:
            return None  # the user's own products: no demo
        try:
            product = registry.create_product(root, DEMO_PRODUCT, 0, description="made by make run")
            registry.register_device(root, product.product_key, DEMO_DEVICE)
        except ConflictError:
            # Nodes starting together on a new shared registry (PostgreSQL): another one
            # made it first.
            products = registry.list_products(root, page=1, page_size=50).items
            product = next((p for p in products if p.name == DEMO_PRODUCT), None)
            if product is None:
                return None
    try:
        device = registry.get_device(root, product_key=product.product_key, device_name=DEMO_DEVICE)
    except NotFoundError:
        return None  # the other node has not registered the device yet, or it was deleted
    return Demo(product, device)


def describe(
    demo: Demo | None,
    *,
    mqtt: tuple[str, int],
    http: tuple[str, int],
    new_root_key: AccessKey | None,
) -> list[str]:
    lines: list[str] = []
    if new_root_key is not None:
        lines += [
            "",
            "Root access key (shown once; set THINGHUB_ROOT_ACCESS_KEY_ID/_SECRET to choose it):",
            f"  AccessKeyId     {new_root_key.access_key_id}",
            f"  AccessKeySecret {new_root_key.secret}",
        ]
    if demo is None:
        return lines
    pk, dn, secret = demo.product.product_key, demo.device.device_name, demo.device.device_secret
    client_id, username, password = build_credentials(pk, dn, secret)
    host, port = mqtt
    lines += [
        "",
        f"Demo device: ProductKey {pk}, DeviceName {dn}, DeviceSecret {secret}",
        "  Listen as the device:",
        f"    mosquitto_sub -h {host} -p {port} -V mqttv311 -i '{client_id}' -u '{username}' \\",
        f"      -P '{password}' -t '/{pk}/{dn}/user/get' -q 1 -v",
        "  Publish to it from Python (aliyun-python-sdk-core + aliyun-python-sdk-iot):",
        "    from aliyunsdkcore.client import AcsClient",
        "    from aliyunsdkiot.request.v20180120.PubRequest import PubRequest",
        "    client = AcsClient(AK_ID, AK_SECRET, 'cn-shanghai')",
        f"    req = PubRequest(); req.set_endpoint('{http[0]}:{http[1]}')",
        "    req.set_protocol_type('http')",
        f"    req.set_ProductKey('{pk}'); req.set_TopicFullName('/{pk}/{dn}/user/get')",
        "    req.set_MessageContent('aGVsbG8='); req.set_Qos(1)  # Base64 of 'hello'",
        "    print(client.do_action_with_exception(req))",
    ]
    return lines
