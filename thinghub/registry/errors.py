"""The registry's exceptions: one tree, each carrying the Alibaba business error code.

The Alibaba dialect renders a ``RegistryError`` as HTTP 200 with ``Success: false``, ``Code`` and
``ErrorMessage`` (reference §2 "Response envelope", §2.5). The subclasses group the codes by what
went wrong so that other edges (the command line, a future AWS dialect) can map them without a
table of strings.

Where the codes come from:

* the Alibaba Cloud IoT API reference, §2.5 (error codes), the primary source;
* the public Alibaba error-code list ([D:87387], English mirror), for codes §2.5 abbreviates or
  leaves out: ``iot.common.InvalidPageParams``, ``iot.prod.NullProductName``,
  ``iot.prod.LongProductDesc``, ``iot.prod.InvalidNodeType``,
  ``iot.prod.InvalidAliyunCommodityCode``, ``iot.device.DeviceApplyIsNotFound``,
  ``iot.device.NullApplyId``, ``iot.device.DeviceCountExceeded``,
  ``iot.device.NoneDeviceNameElement``, ``iot.messagebroker.NullTopicTemplateId``,
  ``iot.messagebroker.NullTopicTemplateOperation``;
* chosen by ThingHub where neither has one, marked "ThingHub's choice" below.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import ThingHubError

__all__ = [
    "ConflictError",
    "InvalidParameterError",
    "NotFoundError",
    "QuotaExceededError",
    "RegistryError",
    "RegistryUnreachable",
    "SchemaVersionError",
    "StorageFull",
    "StoreUnavailable",
    "full_disk_refuses",
    "is_disk_full",
]


class RegistryError(Exception):
    """A registry operation that was refused; nothing was changed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class NotFoundError(RegistryError):
    """The resource does not exist, or belongs to another account or instance (the same answer
    either way: docs/architecture.md "Tenancy")."""


class InvalidParameterError(RegistryError):
    """A parameter is missing, empty or malformed."""


class ConflictError(RegistryError):
    """The request clashes with existing state: a duplicate name, a product that still has
    devices, an access key id held by another account."""


class QuotaExceededError(RegistryError):
    """A per-account or per-product count limit would be exceeded."""


class SchemaVersionError(Exception):
    """The registry database was written by a newer ThingHub (its ``PRAGMA user_version`` is
    above the newest migration this build knows); opening it could corrupt it."""


class StoreUnavailable(ThingHubError):
    """The hub cannot take this work now (a store that is full, or whose writer is behind or
    failing); nothing was changed. Not a ``RegistryError``: it is no business error of the
    request but a passing state of the hub, so every HTTP dialect answers it with its "service
    unavailable" (AWS 503 ``ServiceUnavailableException``, the Alibaba gateway's 503
    ``ServiceUnavailable``), which the SDKs retry (README "Durability")."""


class StorageFull(StoreUnavailable):
    """A write was refused because the data directory's disk is full (SQLite ``SQLITE_FULL``,
    ``ENOSPC``). The transaction was rolled back; the hub works again by itself once there is
    room (no restart: the next write simply succeeds)."""


class RegistryUnreachable(StorageFull):
    """The PostgreSQL registry (``pg_store.py``) cannot be reached now. A ``StorageFull`` for
    its callers: the same passing trouble (nothing changed, 503, the hub recovers by itself),
    so every path that turns a full disk into 503 turns this one into 503 too."""


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) says the disk is full: SQLite's ``SQLITE_FULL``
    (it maps a write's ``ENOSPC`` to it), or an ``OSError`` ``ENOSPC``/``EDQUOT``."""
    seen: BaseException | None = error
    for _ in range(8):  # a chain of causes, never a cycle
        if seen is None:
            return False
        if isinstance(seen, StorageFull):
            return True
        if isinstance(seen, sqlite3.Error):
            code = getattr(seen, "sqlite_errorcode", None)
            # Extended result codes keep the primary code in their low byte.
            if (code is not None and code & 0xFF == sqlite3.SQLITE_FULL) or (
                "database or disk is full" in str(seen)
            ):
                return True
        elif isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def full_disk_refuses(what: str) -> Iterator[None]:
    """Turn a full-disk failure inside the block into ``StorageFull`` ("``what``: the disk is
    full"); anything else passes unchanged. Wrap the one place where a store commits, so the
    callers (the HTTP dialects above all) see one typed error, not SQLite's."""
    try:
        yield
    except StorageFull:
        raise
    except Exception as error:
        if is_disk_full(error):
            raise StorageFull(f"{what}: the disk is full") from error
        raise


# --- Codes (reference §2.5 unless noted) -------------------------------------------------

SYSTEM_EXCEPTION = "iot.system.SystemException"
INVALID_PARAMETER = "iot.common.InvalidFormattedParameter"
INVALID_PAGE_PARAMS = "iot.common.InvalidPageParams"  # [D:87387]
INSTANCE_NOT_FOUND = "iot.Sre.IotInstanceNotFound"

NOT_EXISTED_PRODUCT = "iot.prod.NotExistedProduct"
NULL_PRODUCT_KEY = "iot.prod.NullProductKey"
INVALID_PRODUCT_KEY = "iot.prod.InvalidFormattedProductkey"
ALREADY_EXISTED_PRODUCT_NAME = "iot.prod.AlreadyExistedProductName"
INVALID_PRODUCT_NAME = "iot.prod.InvalidFormattedProductName"
NULL_PRODUCT_NAME = "iot.prod.NullProductName"  # [D:87387]
PRODUCT_COUNT_EXCEED_MAX = "iot.prod.ProductCountExceedMax"
LONG_PRODUCT_DESC = "iot.prod.LongProductDesc"  # [D:87387]
INVALID_NODE_TYPE = "iot.prod.InvalidNodeType"  # [D:87387]
INVALID_COMMODITY_CODE = "iot.prod.InvalidAliyunCommodityCode"  # [D:87387]
# ThingHub's choice: neither source has a code for deleting a product that still has devices.
PRODUCT_HAS_DEVICES = "iot.prod.ProductHasDevices"

NOT_EXISTED_DEVICE = "iot.device.NotExistedDevice"
ALREADY_EXISTED_DEVICE_NAME = "iot.device.AlreadyExistedDeviceName"
INVALID_DEVICE_NAME = "iot.device.InvalidFormattedDeviceName"
NULL_DEVICE_NAME = "iot.device.NullDeviceName"
INVALID_IOT_ID = "iot.device.InvalidIoTId"
NONE_DEVICE_NAME_ELEMENT = "iot.device.NoneDeviceNameElement"  # [D:87387]
DEVICE_COUNT_EXCEEDED = "iot.device.DeviceCountExceeded"  # [D:87387]
DEVICE_APPLY_NOT_FOUND = "iot.device.DeviceApplyIsNotFound"  # [D:87387]
NULL_APPLY_ID = "iot.device.NullApplyId"  # [D:87387]

NULL_TOPIC_NAME = "iot.messagebroker.NullTopicName"
INVALID_TOPIC_NAME = "iot.messagebroker.InvalidFormattedTopicName"
TOPIC_ALREADY_FOUND = "iot.messagebroker.TopicAlreadyFound"
TOPIC_TEMPLATE_NOT_FOUND = "iot.messagebroker.TopicTemplateIsNotFound"
TOPIC_TEMPLATE_COUNT_EXCEED_MAX = "iot.messagebroker.TopicTemplateCountExceedMax"
INVALID_TOPIC_OPERATION = "iot.messagebroker.InvalidTopicTemplateOperationValue"
NULL_TOPIC_TEMPLATE_ID = "iot.messagebroker.NullTopicTemplateId"  # [D:87387]
NULL_TOPIC_OPERATION = "iot.messagebroker.NullTopicTemplateOperation"  # [D:87387]

# ThingHub's own codes, for operations the Alibaba API does not have (accounts and access keys
# are managed by the command line and the environment, never by the RPC API).
NOT_EXISTED_ACCOUNT = "thinghub.NotExistedAccount"
NOT_EXISTED_ACCESS_KEY = "InvalidAccessKeyId.NotFound"  # the gateway's code, reference §1.4
ACCESS_KEY_IN_USE = "thinghub.AccessKeyIdInUse"
DEVICE_DISABLED = "thinghub.DeviceDisabled"
