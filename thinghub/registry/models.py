"""The registry's records: frozen values, read from the store and handed to the edges.

Times are integer milliseconds since the Unix epoch (UTC), the unit of the Alibaba API's
``GmtCreate`` in QueryProduct and of ``Timestamp`` in GetDeviceStatus (reference §2.2, §2.3); the
dialects format them as the API wants (``"2018-08-06 10:47:50"``, ``UtcCreate`` ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Generic, TypeVar

__all__ = [
    "AccessKey",
    "Account",
    "AppliedDevice",
    "ApplyInfo",
    "Device",
    "DeviceDetail",
    "DeviceStatus",
    "Instance",
    "NodeType",
    "Operation",
    "Page",
    "Product",
    "TopicCategory",
]

T = TypeVar("T")


class NodeType(IntEnum):
    """CreateProduct ``NodeType`` (reference §2.2)."""

    DEVICE = 0
    GATEWAY = 1


class DeviceStatus(StrEnum):
    """QueryDeviceDetail ``Status`` (reference §2.3)."""

    ONLINE = "ONLINE"
    OFFLINE = "OFFLINE"
    UNACTIVE = "UNACTIVE"  # registered, never connected
    DISABLE = "DISABLE"


class Operation(StrEnum):
    """A topic category's device permission (reference §2.4): the API takes the names; the
    QueryProductTopic answer carries ``wire_code``."""

    PUB = "PUB"
    SUB = "SUB"
    ALL = "ALL"

    @property
    def wire_code(self) -> str:
        """QueryProductTopic renders Operation as "0" publish, "1" subscribe, "2" both (§2.4)."""
        return _WIRE_CODES[self]

    @property
    def may_publish(self) -> bool:
        return self is not Operation.SUB

    @property
    def may_subscribe(self) -> bool:
        return self is not Operation.PUB


_WIRE_CODES = {Operation.PUB: "0", Operation.SUB: "1", Operation.ALL: "2"}


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    name: str
    created_at: int


@dataclass(frozen=True, slots=True)
class AccessKey:
    """An AccessKeyId/Secret pair. Several keys per account (like RAM users); they share the
    account's resources and rate quota. A disabled key is kept so that the gateway can answer
    ``InvalidAccessKeyId.Inactive`` rather than ``...NotFound`` (reference §1.4)."""

    access_key_id: str
    secret: str
    account_id: str
    enabled: bool
    created_at: int
    description: str = ""


@dataclass(frozen=True, slots=True)
class Instance:
    """An ``IotInstanceId`` (reference §1.1): an optional partition of an account."""

    instance_id: str
    account_id: str
    name: str
    created_at: int


@dataclass(frozen=True, slots=True)
class Product:
    product_key: str
    account_id: str
    instance_id: str | None
    name: str
    node_type: NodeType
    data_format: int  # 0 custom (pass-through), 1 Alink JSON
    auth_type: str  # "secret" | "id2" | "x509"
    description: str
    product_secret: str
    created_at: int
    aliyun_commodity_code: str = "iothub"  # "iothub" (basic) | "iothub_senior" (thing model)
    net_type: str | None = None
    category_key: str | None = None
    # Filled by queries (QueryProduct DeviceCount); not stored.
    device_count: int = 0
    # Reference §2.2: DEVELOPMENT_STATUS | RELEASE_STATUS; ThingHub has no release workflow.
    status: str = "DEVELOPMENT_STATUS"


@dataclass(frozen=True, slots=True)
class Device:
    iot_id: str
    product_key: str
    device_name: str
    device_secret: str
    nickname: str
    status: DeviceStatus
    account_id: str
    instance_id: str | None
    created_at: int
    activated_at: int | None  # first successful sign-in
    last_online_at: int | None  # latest sign-in
    status_changed_at: int  # GetDeviceStatus ``Timestamp``
    ip_address: str | None = None  # peer address of the latest sign-in
    # The epoch of the device's current connection (presence.py, kept in memory): the end of
    # a connection with a stale epoch is ignored, so the old connection of a take-over cannot
    # mark the new one offline. 0 when not connected to this hub.
    online_epoch: int = 0


@dataclass(frozen=True, slots=True)
class DeviceDetail:
    """QueryDeviceDetail needs the product's name and node type beside the device."""

    device: Device
    product: Product


@dataclass(frozen=True, slots=True)
class TopicCategory:
    """A topic category ("Topic class") of a product (reference §2.4, §3 "Topics").

    ``topic_short_name`` is the part after ``/${productKey}/${deviceName}/user/`` (what
    CreateProductTopic takes, e.g. ``update/error``; levels ``[A-Za-z0-9_]+``, or ``+``/``#`` in
    a SUB category). ``template`` is the full form QueryProductTopic returns, with the product
    key filled in and ``${deviceName}`` left as a placeholder.
    """

    id: int
    product_key: str
    topic_short_name: str
    operation: Operation
    description: str

    @property
    def template(self) -> str:
        return f"/{self.product_key}/${{deviceName}}/user/{self.topic_short_name}"

    def topic_for(self, device_name: str) -> str:
        """The category as a concrete topic (or filter, if it holds wildcards) of one device."""
        return f"/{self.product_key}/{device_name}/user/{self.topic_short_name}"


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a paged listing (QueryProductList, QueryDevice, QueryPageByApplyId)."""

    items: tuple[T, ...]
    total: int
    page: int  # 1-based
    page_size: int

    @property
    def page_count(self) -> int:
        return (self.total + self.page_size - 1) // self.page_size


@dataclass(frozen=True, slots=True)
class ApplyInfo:
    """A BatchRegisterDevice application (reference §2.3). ThingHub registers the whole batch in
    one transaction, so an application exists only once it has succeeded."""

    apply_id: int
    account_id: str
    product_key: str
    count: int
    created_at: int
    status: str = "CREATE_SUCCESS"


@dataclass(frozen=True, slots=True)
class AppliedDevice:
    """QueryPageByApplyId ``ApplyDeviceInfo`` (reference §2.3)."""

    device_name: str
    device_secret: str
    iot_id: str
