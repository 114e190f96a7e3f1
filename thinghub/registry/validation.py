"""Parameter rules of the Alibaba registry API, as pure checks that raise typed errors.

Each function takes the raw value an API caller sent (the HTTP dialects pass strings through
unchanged) and returns the normalised value, or raises ``InvalidParameterError`` with the
reference's business code. Sources are cited per rule ("reference §N": the Alibaba Cloud
IoT API reference the dialect follows).
"""

from __future__ import annotations

import re

from . import errors as e
from .errors import InvalidParameterError
from .models import NodeType, Operation

__all__ = [
    "MAX_DEVICE_NAME_LENGTH",
    "MAX_TOPIC_BYTES",
    "MAX_TOPIC_SLASHES",
    "check_description",
    "check_device_name",
    "check_iot_id",
    "check_nickname",
    "check_node_type",
    "check_operation",
    "check_page",
    "check_positive_id",
    "check_product_key",
    "check_product_name",
    "check_topic_short_name",
    "weighted_length",
]

# Reference §2.3 RegisterDevice: DeviceName is 4-32 characters of [A-Za-z0-9-_@.:].
MIN_DEVICE_NAME_LENGTH = 4
MAX_DEVICE_NAME_LENGTH = 32
_DEVICE_NAME = re.compile(r"[A-Za-z0-9\-_@.:]{4,32}")
# ProductKeys and IotIds are issued by the hub (11 and 26 alphanumerics); anything that is not
# alphanumeric cannot be one. Longer bounds leave room for keys imported from the cloud.
_PRODUCT_KEY = re.compile(r"[A-Za-z0-9]{1,64}")
_IOT_ID = re.compile(r"[A-Za-z0-9]{1,64}")
# Reference §2.4: each level of a TopicShortName is [A-Za-z0-9_]+; §3 "Topics": '+' and '#'
# only in categories with subscribe permission, '#' only as the last level.
_TOPIC_LEVEL = re.compile(r"[A-Za-z0-9_]+")
# Reference §3 limits: a topic is at most 128 bytes with at most 7 slashes.
MAX_TOPIC_BYTES = 128
MAX_TOPIC_SLASHES = 7
# Reference §2.4: Desc at most 100 characters (also used for product descriptions, which
# Alibaba limits to 100 characters: [D:87387] iot.prod.LongProductDesc).
MAX_DESCRIPTION_LENGTH = 100


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return (
        0x4E00 <= code <= 0x9FFF  # CJK Unified Ideographs
        or 0x3400 <= code <= 0x4DBF  # Extension A
        or 0x3040 <= code <= 0x30FF  # Hiragana, Katakana (Japanese names, as in the console)
        or 0xF900 <= code <= 0xFAFF  # Compatibility Ideographs
    )


def weighted_length(text: str) -> int:
    """Length with each CJK character counted as 2 (reference §2.2 ProductName)."""
    return sum(2 if _is_cjk(char) else 1 for char in text)


def _name_chars_ok(text: str) -> bool:
    return all((c.isascii() and (c.isalnum() or c == "_")) or _is_cjk(c) for c in text)


def check_product_name(name: str | None) -> str:
    """Reference §2.2: 4-30 characters of CJK, letters, digits or '_'; CJK counts as 2."""
    if not name:
        raise InvalidParameterError(e.NULL_PRODUCT_NAME, "ProductName cannot be empty.")
    if not _name_chars_ok(name) or not 4 <= weighted_length(name) <= 30:
        raise InvalidParameterError(
            e.INVALID_PRODUCT_NAME,
            "ProductName must be 4 to 30 characters of letters, digits, '_' or CJK "
            "(a CJK character counts as 2).",
        )
    return name


def check_nickname(nickname: str | None) -> str:
    """Nickname: the reference has no rule. ThingHub follows Alibaba's RegisterDevice page:
    4-64 characters of CJK, letters, digits or '_', CJK counting as 2; empty means none.
    Code: ``iot.common.InvalidFormattedParameter`` (no specific one is listed)."""
    if not nickname:
        return ""
    if not _name_chars_ok(nickname) or not 4 <= weighted_length(nickname) <= 64:
        raise InvalidParameterError(
            e.INVALID_PARAMETER,
            "Nickname must be 4 to 64 characters of letters, digits, '_' or CJK "
            "(a CJK character counts as 2).",
        )
    return nickname


def check_description(description: str | None, *, code: str = e.INVALID_PARAMETER) -> str:
    if description is None:
        return ""
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidParameterError(
            code, f"The description is longer than {MAX_DESCRIPTION_LENGTH} characters."
        )
    return description


def check_product_key(product_key: str | None) -> str:
    if not product_key:
        raise InvalidParameterError(e.NULL_PRODUCT_KEY, "ProductKey cannot be empty.")
    if not _PRODUCT_KEY.fullmatch(product_key):
        raise InvalidParameterError(e.INVALID_PRODUCT_KEY, "The format of ProductKey is invalid.")
    return product_key


def check_device_name(device_name: str | None) -> str:
    """Reference §2.3: 4-32 characters of ``[A-Za-z0-9-_@.:]``."""
    if not device_name:
        raise InvalidParameterError(e.NULL_DEVICE_NAME, "DeviceName cannot be empty.")
    if not _DEVICE_NAME.fullmatch(device_name):
        raise InvalidParameterError(
            e.INVALID_DEVICE_NAME,
            "DeviceName must be 4 to 32 characters of letters, digits and - _ @ . :",
        )
    return device_name


def check_iot_id(iot_id: str) -> str:
    if not _IOT_ID.fullmatch(iot_id):
        raise InvalidParameterError(e.INVALID_IOT_ID, "The format of IotId is invalid.")
    return iot_id


def check_node_type(node_type: int | str | None) -> NodeType:
    """Reference §2.2: NodeType 0 (device) or 1 (gateway); required."""
    try:
        return NodeType(int(node_type))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidParameterError(
            e.INVALID_NODE_TYPE, "NodeType must be 0 (device) or 1 (gateway)."
        ) from None


def check_operation(operation: Operation | str | None) -> Operation:
    """Reference §2.4: Operation is SUB, PUB or ALL. The numeric forms QueryProductTopic
    returns ("0", "1", "2") are accepted too, so an answer can be sent back unchanged."""
    if operation is None or operation == "":
        raise InvalidParameterError(
            e.NULL_TOPIC_OPERATION, "Operation of the topic category cannot be empty."
        )
    text = str(operation).upper()
    for candidate in Operation:
        if text in (candidate.value, candidate.wire_code):
            return candidate
    raise InvalidParameterError(e.INVALID_TOPIC_OPERATION, "Operation must be SUB, PUB or ALL.")


def check_positive_id(value: int | str | None, *, null_code: str, invalid_code: str) -> int:
    """A Long id parameter (TopicId, ApplyId): required, a positive integer."""
    if value is None or value == "":
        raise InvalidParameterError(null_code, "The id cannot be empty.")
    if isinstance(value, bool):
        raise InvalidParameterError(invalid_code, "The id must be a positive integer.")
    if isinstance(value, str):
        if not value.isdigit() or not value.isascii():
            raise InvalidParameterError(invalid_code, "The id must be a positive integer.")
        value = int(value)
    if value < 1 or value >= 1 << 63:
        raise InvalidParameterError(invalid_code, "The id must be a positive integer.")
    return value


def check_page(
    page: int | str | None, page_size: int | str | None, *, default_size: int, max_size: int
) -> tuple[int, int]:
    """CurrentPage >= 1 (default 1) and 1 <= PageSize <= max_size (reference §2.2, §2.3:
    QueryProductList 200, QueryDevice 50 default 10, QueryPageByApplyId 50).
    Code ``iot.common.InvalidPageParams`` ([D:87387])."""

    def number(value: int | str | None, default: int) -> int:
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            raise ValueError
        return int(value)

    try:
        current = number(page, 1)
        size = number(page_size, default_size)
    except ValueError:
        current = size = 0
    if current < 1 or not 1 <= size <= max_size:
        raise InvalidParameterError(
            e.INVALID_PAGE_PARAMS,
            f"CurrentPage must be at least 1 and PageSize between 1 and {max_size}.",
        )
    return current, size


def check_topic_short_name(short_name: str | None, operation: Operation, product_key: str) -> str:
    """Validate a TopicShortName (reference §2.4, §3 "Topics") and return the stored form.

    Accepted forms: the part after ``/${productKey}/${deviceName}/user/`` (``update/error``),
    or the full template QueryProductTopic returns for this product
    (``/a1BwAGVxxxx/${deviceName}/user/update/error``), so an answer can be sent back.
    Levels are ``[A-Za-z0-9_]+``; ``+`` (a whole level) and ``#`` (the last level) only when
    the operation is SUB. The full topic of a device with the longest DeviceName must stay
    within 128 bytes and 7 slashes (reference §3 limits).
    """
    if not short_name:
        raise InvalidParameterError(e.NULL_TOPIC_NAME, "TopicShortName cannot be empty.")
    full_prefix = f"/{product_key}/${{deviceName}}/user/"
    if short_name.startswith(full_prefix):
        short_name = short_name[len(full_prefix) :]
    levels = short_name.split("/")
    for index, level in enumerate(levels):
        if level in ("+", "#"):
            if operation is not Operation.SUB:
                raise InvalidParameterError(
                    e.INVALID_TOPIC_OPERATION,
                    "Wildcards '+' and '#' are allowed only in SUB topic categories.",
                )
            if level == "#" and index != len(levels) - 1:
                raise InvalidParameterError(
                    e.INVALID_TOPIC_NAME, "'#' may only be the last level of a topic category."
                )
        elif not _TOPIC_LEVEL.fullmatch(level):
            raise InvalidParameterError(
                e.INVALID_TOPIC_NAME,
                "Each level of TopicShortName must be letters, digits or '_' "
                "(or a wildcard in a SUB category).",
            )
    longest = f"/{product_key}/{'x' * MAX_DEVICE_NAME_LENGTH}/user/{short_name}"
    if len(longest.encode()) > MAX_TOPIC_BYTES or longest.count("/") > MAX_TOPIC_SLASHES:
        raise InvalidParameterError(
            e.INVALID_TOPIC_NAME,
            f"The full topic would exceed {MAX_TOPIC_BYTES} bytes or {MAX_TOPIC_SLASHES} slashes.",
        )
    return short_name
