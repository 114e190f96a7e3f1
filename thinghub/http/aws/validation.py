"""Server-side checks of iot-data input: every rule answers ``InvalidRequestException``.

botocore validates required members and minimums only (reference ``aws-iot-data-api.md`` §1,
"Client-side validation is partial"): ``qos=2``, ``maxResults=500``, a bad enum, a negative
``messageExpiry``, a 200 KB payload, ten slashes or an empty topic all reach the server. So
the hub checks everything here, before anything is published:

====================  ==========================================================  ==========
what                  rule                                                        source
====================  ==========================================================  ==========
topic                 1..256 UTF-8 bytes, at most 7 ``/`` (both not counting a    §5
                      Basic Ingest ``$aws/rules/<rule>/`` prefix); no ``+``/``#``
                      (a Topic Name, not a filter); no U+0000
reserved topics       ``$...`` is reserved: only the documented publishable       §5
                      ``$aws/...`` topics (shadow, jobs, Basic Ingest, defender,
                      fleet provisioning, streams) may be published to; never
                      with retain ("RETAIN cannot be used on reserved topics")
qos                   integer 0..1 (the model's ``Qos`` shape; MQTT QoS 2 is not  §1, §5
                      offered by AWS IoT)
retain, cleanSession  ``true`` or ``false``                                       §2
payload               at most 128 KB (413 ``RequestEntityTooLargeException``,     §5
                      the model's shape for an oversized payload)
payloadFormatIndicator  ``UNSPECIFIED_BYTES`` | ``UTF8_DATA``; with ``UTF8_DATA``  §1; MQTT 5
                      the payload must be UTF-8 (MQTT 5 §3.3.2.3.2 lets the
                      server refuse it)
messageExpiry         an integer 0..2**32-1 (an MQTT Four Byte Integer); 0 is     §5
                      raised to 1 and values above 604800 s (7 days) are clamped,
                      as AWS IoT does for MQTT publishes
userProperties        base64 of a JSON array of single-key objects with string    §2
                      values; the double-encoded JSON-string form boto3 sends for
                      a ``str`` argument is accepted too; at most 8 KB
correlationData       base64 (the API's documented form), at most 65535 bytes     §1; MQTT 5
contentType           an MQTT UTF-8 string (no U+0000, at most 65535 bytes)       MQTT 5
responseTopic         a topic name under the topic rules above (no wildcards)     §1
clientId              1..128 characters, not starting with ``$``                  model
maxResults            integer 1..200                                              model
timeout               integer 1..15 seconds (SendDirectMessage)                   model doc
====================  ==========================================================  ==========
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ...mqtt.properties import NO_PROPERTIES, Properties
from .errors import REQUEST_ENTITY_TOO_LARGE, AwsError

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "MAX_SLASHES",
    "MAX_TOPIC_BYTES",
    "MessageFields",
    "Params",
    "check_client_id",
    "check_payload_size",
    "check_publish_topic",
    "check_topic",
    "message_fields",
    "parse_bool",
    "parse_int",
    "parse_user_properties",
]

# Reference §5 (G-old; CRT AwsIotCoreDefaults).
MAX_TOPIC_BYTES = 256
MAX_SLASHES = 7
MAX_PAYLOAD_BYTES = 128 * 1024
# messageExpiry: AWS IoT's maximum, 7 days (§5 "messageExpiry"); MQTT's Four Byte Integer.
MAX_MESSAGE_EXPIRY = 604_800
_FOUR_BYTE_MAX = 0xFFFFFFFF
# User properties: no published limit was found (§5); 8 KB bounds them (everything is bounded).
MAX_USER_PROPERTIES_BYTES = 8 * 1024
# MQTT UTF-8 strings and binary data are at most 65535 bytes (MQTT 5 §1.5.4, §1.5.6).
_MQTT_STRING_MAX = 65535
MAX_CLIENT_ID_CHARS = 128

_BASIC_INGEST = re.compile(r"\$aws/rules/[^/]+/")
_NAME = r"[^/]+"
# The reserved topics a client may publish to (reference §5, aws-iot-docs reserved-topics.md).
_PUBLISHABLE_RESERVED = tuple(
    re.compile(pattern)
    for pattern in (
        rf"\$aws/things/{_NAME}/shadow(/name/{_NAME})?/(update|get|delete)",
        rf"\$aws/things/{_NAME}/jobs/(get|start-next)",
        rf"\$aws/things/{_NAME}/jobs/{_NAME}/(get|update)",
        rf"\$aws/things/{_NAME}/defender/metrics/(json|cbor)",
        r"\$aws/certificates/create(-from-csr)?/(json|cbor)",
        rf"\$aws/provisioning-templates/{_NAME}/provision/(json|cbor)",
        rf"\$aws/things/{_NAME}/streams/{_NAME}/(get|describe)/(json|cbor)",
        rf"\$aws/rules/{_NAME}/.+",  # Basic Ingest
    )
)
_INTEGER = re.compile(r"-?[0-9]+")
_PAYLOAD_FORMATS = {"UNSPECIFIED_BYTES": 0, "UTF8_DATA": 1}


class Params:
    """The decoded query string: first value of each name (botocore never repeats one)."""

    __slots__ = ("_values",)

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        values: dict[str, str] = {}
        for name, value in pairs:
            values.setdefault(name, value)
        self._values = values

    def get(self, name: str) -> str | None:
        return self._values.get(name)


# --------------------------------------------------------------------------- scalars


def parse_int(name: str, raw: str | None, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    # int() would also take "1_0", " 1" and non-ASCII digits: only plain decimals here.
    if _INTEGER.fullmatch(raw) is None:
        raise AwsError.invalid(f"{name} must be an integer, not {raw!r}.")
    value = int(raw)
    if not low <= value <= high:
        raise AwsError.invalid(f"{name} must be between {low} and {high}, not {value}.")
    return value


def parse_bool(name: str, raw: str | None, default: bool = False) -> bool:
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise AwsError.invalid(f"{name} must be true or false, not {raw!r}.")


def _mqtt_string(name: str, value: str) -> str:
    if "\x00" in value:
        raise AwsError.invalid(f"{name} must not contain U+0000.")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise AwsError.invalid(f"{name} is not valid UTF-8.") from None
    if size > _MQTT_STRING_MAX:
        raise AwsError.invalid(f"{name} is longer than {_MQTT_STRING_MAX} bytes.")
    return value


# --------------------------------------------------------------------------- topics


def check_topic(topic: str, what: str = "topic") -> str:
    """A Topic Name within AWS IoT's limits (reference §5); returns it."""
    if not topic:
        raise AwsError.invalid(f"The {what} must not be empty.")
    _mqtt_string(what, topic)
    if "+" in topic or "#" in topic:
        raise AwsError.invalid(f"The {what} {topic!r} contains a wildcard character (+ or #).")
    # The Basic Ingest prefix does not count against the limits (§5).
    ingest = _BASIC_INGEST.match(topic)
    counted = topic[ingest.end() :] if ingest else topic
    size = len(counted.encode())
    if size > MAX_TOPIC_BYTES:
        raise AwsError.invalid(
            f"The {what} is {size} bytes long; the limit is {MAX_TOPIC_BYTES} bytes."
        )
    slashes = counted.count("/")
    if slashes > MAX_SLASHES:
        raise AwsError.invalid(
            f"The {what} has {slashes} forward slashes; the limit is {MAX_SLASHES}."
        )
    return topic


def check_publish_topic(topic: str, retain: bool) -> str:
    """A topic that may be published to over the API (§5, "Reserved `$` topics")."""
    if len(topic) <= _CACHED_TOPIC:
        return _check_publish_topic_cached(topic, retain)
    return _check_publish_topic(topic, retain)


def _check_publish_topic(topic: str, retain: bool) -> str:
    check_topic(topic)
    if topic.startswith("$"):
        if not any(p.fullmatch(topic) for p in _PUBLISHABLE_RESERVED):
            raise AwsError.invalid(f"The reserved topic {topic!r} cannot be published to.")
        if retain:
            raise AwsError.invalid("RETAIN cannot be used on reserved topics.")
    return topic


# Devices publish to the same topics over and over: the verdict is memoised (a pure
# function; bounded in entries and, through the length, in size; refusals are not cached).
_CACHED_TOPIC = 512
_check_publish_topic_cached = functools.lru_cache(maxsize=4096)(_check_publish_topic)


def check_client_id(client_id: str) -> str:
    """The model's ``ClientId``: 1..128 characters, pattern ``^[^$].*``."""
    if not client_id:
        raise AwsError.invalid("The clientId must not be empty.")
    if len(client_id) > MAX_CLIENT_ID_CHARS:
        raise AwsError.invalid(f"The clientId is longer than {MAX_CLIENT_ID_CHARS} characters.")
    if client_id.startswith("$"):
        raise AwsError.invalid("The clientId cannot start with a dollar sign ($).")
    return _mqtt_string("clientId", client_id)


def check_payload_size(size: int) -> None:
    if size > MAX_PAYLOAD_BYTES:
        raise AwsError(
            REQUEST_ENTITY_TOO_LARGE,
            f"The payload is {size} bytes; the limit is {MAX_PAYLOAD_BYTES} bytes.",
        )


# --------------------------------------------------------------------------- MQTT 5 fields


def parse_user_properties(raw: str) -> tuple[tuple[str, str], ...]:
    """``x-amz-mqtt5-user-properties``: base64 of ``[{"k": "v"}, ...]`` (reference §2).

    botocore writes ``base64(json.dumps(value))``; a caller who follows the documentation and
    passes a JSON *string* gets it encoded twice, so a decoded ``str`` is parsed once more."""
    try:
        text = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise AwsError.invalid("userProperties must be base64-encoded JSON.") from None
    if len(text) > MAX_USER_PROPERTIES_BYTES:
        raise AwsError.invalid(f"userProperties are longer than {MAX_USER_PROPERTIES_BYTES} bytes.")
    try:
        value = json.loads(text)
        if isinstance(value, str):
            value = json.loads(value)
    except (ValueError, RecursionError):
        raise AwsError.invalid("userProperties must be a JSON array of objects.") from None
    if not isinstance(value, list):
        raise AwsError.invalid("userProperties must be a JSON array of objects.")
    pairs: list[tuple[str, str]] = []
    for item in value:
        if not isinstance(item, dict) or len(item) != 1:
            raise AwsError.invalid(
                'Each user property must be an object with one key, e.g. {"deviceName": "a"}.'
            )
        ((name, prop),) = item.items()
        if not isinstance(prop, str):
            raise AwsError.invalid(f"The value of user property {name!r} must be a string.")
        pairs.append((_mqtt_string("userProperties", name), _mqtt_string("userProperties", prop)))
    return tuple(pairs)


def _correlation_data(raw: str) -> bytes:
    try:
        data = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise AwsError.invalid("correlationData must be base64-encoded.") from None
    if len(data) > _MQTT_STRING_MAX:
        raise AwsError.invalid(f"correlationData is longer than {_MQTT_STRING_MAX} bytes.")
    return data


def _message_expiry(raw: str | None) -> int | None:
    if raw is None:
        return None
    value = parse_int("messageExpiry", raw, 0, 0, _FOUR_BYTE_MAX)
    # AWS IoT raises 0 to 1 and clamps above its 7-day maximum (reference §5).
    return min(max(value, 1), MAX_MESSAGE_EXPIRY)


@dataclass(frozen=True, slots=True)
class MessageFields:
    """The MQTT 5 message that Publish or SendDirectMessage describes."""

    properties: Properties
    expiry_interval: int | None


def message_fields(params: Params, headers: Mapping[str, str], payload: bytes) -> MessageFields:
    """The MQTT 5 properties of Publish and SendDirectMessage (query and ``x-amz-mqtt5-*``
    headers, reference §1), checked."""
    fmt: int | None = None
    raw_format = headers.get("x-amz-mqtt5-payload-format-indicator")
    if raw_format is not None:
        if raw_format not in _PAYLOAD_FORMATS:
            raise AwsError.invalid(
                f"payloadFormatIndicator must be UNSPECIFIED_BYTES or UTF8_DATA, "
                f"not {raw_format!r}."
            )
        fmt = _PAYLOAD_FORMATS[raw_format]
        if fmt == 1:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                raise AwsError.invalid(
                    "payloadFormatIndicator is UTF8_DATA but the payload is not UTF-8."
                ) from None
    content_type = params.get("contentType")
    if content_type is not None:
        _mqtt_string("contentType", content_type)
    response_topic = params.get("responseTopic")
    if response_topic is not None:
        check_topic(response_topic, "responseTopic")
    raw_correlation = headers.get("x-amz-mqtt5-correlation-data")
    correlation = None if raw_correlation is None else _correlation_data(raw_correlation)
    raw_users = headers.get("x-amz-mqtt5-user-properties")
    users = () if raw_users is None else parse_user_properties(raw_users)
    expiry = _message_expiry(params.get("messageExpiry"))
    if (fmt, content_type, response_topic, correlation) == (None, None, None, None) and not users:
        return MessageFields(NO_PROPERTIES, expiry)
    properties = Properties(
        payload_format_indicator=fmt,
        content_type=content_type,
        response_topic=response_topic,
        correlation_data=correlation,
        user_properties=users,
    )
    return MessageFields(properties, expiry)
