"""Accounts and access keys, instances, products, devices and their secrets, topic categories.

Knows nothing of MQTT bytes or HTTP: the dialects and the broker call ``Registry`` and get
frozen records (``models``) or a ``RegistryError`` carrying the Alibaba business error code.
"""

from .errors import (
    ConflictError,
    InvalidParameterError,
    NotFoundError,
    QuotaExceededError,
    RegistryError,
    SchemaVersionError,
)
from .ids import MessageIdGenerator, new_request_id
from .models import (
    AccessKey,
    Account,
    AppliedDevice,
    ApplyInfo,
    Device,
    DeviceDetail,
    DeviceStatus,
    Instance,
    NodeType,
    Operation,
    Page,
    Product,
    TopicCategory,
)
from .registry import DEFAULT_TOPIC_CATEGORIES, ROOT_ACCOUNT_ID, Registry
from .store import RegistryStore

__all__ = [
    "DEFAULT_TOPIC_CATEGORIES",
    "ROOT_ACCOUNT_ID",
    "AccessKey",
    "Account",
    "AppliedDevice",
    "ApplyInfo",
    "ConflictError",
    "Device",
    "DeviceDetail",
    "DeviceStatus",
    "Instance",
    "InvalidParameterError",
    "MessageIdGenerator",
    "NodeType",
    "NotFoundError",
    "Operation",
    "Page",
    "Product",
    "QuotaExceededError",
    "Registry",
    "RegistryError",
    "RegistryStore",
    "SchemaVersionError",
    "TopicCategory",
    "new_request_id",
]
