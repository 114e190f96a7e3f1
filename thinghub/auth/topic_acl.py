"""Where an Alibaba device may publish and subscribe (reference §3 "Topics", §2.1, §2.4).

Pure functions: the caller passes the device's ProductKey and DeviceName (from its sign-in) and
its product's topic categories (``Registry.topic_categories_for_product``).

The rules:

* **Custom topics** ``/${productKey}/${deviceName}/user/<short>``: a device may publish where a
  category of its product has PUB or ALL, and subscribe where one has SUB or ALL (§2.4). The
  category is expanded with the device's *own* ProductKey and DeviceName, so no device reaches
  another device's topics ("a device may only use topics that contain its own ${dn}", §3).
* **Wildcards**: categories may hold ``+``/``#`` only when SUB (the registry enforces it, §3).
  A subscription filter is allowed when it is *covered* by an allowed category: every topic it
  can match is matched by the category. ``/pk/dn/user/data/+`` covers ``/pk/dn/user/data/x`` and
  itself, not ``/pk/dn/user/#``; a ``+`` in the DeviceName level is never covered. A PUBLISH
  topic has no wildcards and must be matched by an allowed category.
* **Broadcast**: ``/broadcast/${productKey}/<anything>`` may be subscribed to (at least one level
  after the ProductKey, wildcards allowed there), never published to by a device (§2.1
  PubBroadcast).
* **System topics** (``/sys/``, ``/ext/``, ``/ota/``, ``/shadow/``) only as a hub feature defines
  them, listed in ``SYSTEM_TOPIC_RULES`` with the feature that owns each. Enabled by default:
  ``rrpc`` (§2.1 RRpc: subscribe ``/sys/${pk}/${dn}/rrpc/request/+``, publish
  ``.../rrpc/response/<messageId>``), ``ext_rrpc`` (the custom form ``/ext/rrpc/<messageId>`` +
  a custom topic the device may subscribe to, both directions), and ``broadcast`` (§2.1: all
  online devices receive ``/sys/${pk}/${dn}/broadcast/request/<MessageId>``). The Alink
  ``thing``, ``ota`` and ``shadow`` topics of §3 are defined but off until those features
  exist, so a device cannot publish into topics nothing consumes.
* **Shared subscriptions** (MQTT 5, ``$share/<group>/<filter>``) are judged by their filter.
* Anything else is refused: MQTT 5 reason 0x87 Not authorized (the broker sends 0x80 in a
  3.1.1 SUBACK). Malformed names and filters get 0x90 / 0x8F.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..mqtt.types import ReasonCode
from ..registry.models import Operation, TopicCategory
from ..topics import parse_shared, validate_topic_filter, validate_topic_name

__all__ = [
    "ALL_FEATURES",
    "DEFAULT_FEATURES",
    "SYSTEM_TOPIC_RULES",
    "SystemTopicRule",
    "TopicDecision",
    "expand_template",
    "filter_covers",
    "may_publish",
    "may_subscribe",
    "topic_matches",
]


@dataclass(frozen=True, slots=True)
class SystemTopicRule:
    """A system topic (or filter) template and the device permission it carries."""

    template: str
    operation: Operation
    feature: str


_SYS = "/sys/${productKey}/${deviceName}"

# Reference §2.1 (RRpc, PubBroadcast) and §3 "System topics".
SYSTEM_TOPIC_RULES: tuple[SystemTopicRule, ...] = (
    SystemTopicRule(f"{_SYS}/rrpc/request/+", Operation.SUB, "rrpc"),
    SystemTopicRule(f"{_SYS}/rrpc/response/+", Operation.PUB, "rrpc"),
    SystemTopicRule(f"{_SYS}/broadcast/request/+", Operation.SUB, "broadcast"),
    SystemTopicRule(f"{_SYS}/thing/event/property/post", Operation.PUB, "thing"),
    SystemTopicRule(f"{_SYS}/thing/event/property/post_reply", Operation.SUB, "thing"),
    SystemTopicRule(f"{_SYS}/thing/service/property/set", Operation.SUB, "thing"),
    SystemTopicRule(f"{_SYS}/thing/service/property/set_reply", Operation.PUB, "thing"),
    SystemTopicRule("/ota/device/inform/${productKey}/${deviceName}", Operation.PUB, "ota"),
    SystemTopicRule("/ota/device/upgrade/${productKey}/${deviceName}", Operation.SUB, "ota"),
    SystemTopicRule("/ota/device/progress/${productKey}/${deviceName}", Operation.PUB, "ota"),
    SystemTopicRule("/ota/device/request/${productKey}/${deviceName}", Operation.PUB, "ota"),
    SystemTopicRule("/shadow/update/${productKey}/${deviceName}", Operation.PUB, "shadow"),
    SystemTopicRule("/shadow/get/${productKey}/${deviceName}", Operation.SUB, "shadow"),
)

DEFAULT_FEATURES = frozenset({"rrpc", "ext_rrpc", "broadcast"})
ALL_FEATURES = DEFAULT_FEATURES | {"thing", "ota", "shadow"}

_EXT_RRPC = "/ext/rrpc/"


@dataclass(frozen=True, slots=True)
class TopicDecision:
    allowed: bool
    reason_code: ReasonCode = ReasonCode.SUCCESS
    reason: str = ""


_ALLOW = TopicDecision(True)


def _deny(reason: str, code: ReasonCode = ReasonCode.NOT_AUTHORIZED) -> TopicDecision:
    return TopicDecision(False, code, reason)


def expand_template(template: str, product_key: str, device_name: str) -> str:
    """Fill ``${productKey}`` and ``${deviceName}`` (the placeholders of §2.4 templates)."""
    return template.replace("${productKey}", product_key).replace("${deviceName}", device_name)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Does ``topic_filter`` match the topic name ``topic`` (MQTT 5.0 §4.7)?"""
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)


def filter_covers(granted: str, requested: str) -> bool:
    """Is every topic matched by the filter ``requested`` also matched by ``granted``?"""
    granted_levels = granted.split("/")
    requested_levels = requested.split("/")
    for index, level in enumerate(granted_levels):
        if level == "#":
            return True  # matches the parent and everything below
        if index >= len(requested_levels):
            return False
        wanted = requested_levels[index]
        if wanted == "#":
            return False  # reaches deeper than a non-'#' grant
        if level == "+":
            continue
        if wanted != level:  # includes wanted == '+' against a literal level
            return False
    return len(granted_levels) == len(requested_levels)


def _user_prefix(product_key: str, device_name: str) -> str:
    return f"/{product_key}/{device_name}/user/"


def _category_allows(
    categories: Iterable[TopicCategory],
    device_name: str,
    topic_filter: str,
    *,
    publish: bool,
) -> bool:
    for category in categories:
        granted = category.topic_for(device_name)
        if publish and category.operation.may_publish and topic_matches(granted, topic_filter):
            return True
        if (
            not publish
            and category.operation.may_subscribe
            and filter_covers(granted, topic_filter)
        ):
            return True
    return False


def _ext_rrpc_inner(topic_or_filter: str, *, subscribe: bool) -> str | None:
    """For ``/ext/rrpc/<messageId>/<topic>`` return ``/<topic>``, else None. The message id
    level is one literal level, or ``+`` in a subscription."""
    if not topic_or_filter.startswith(_EXT_RRPC):
        return None
    message_id, slash, rest = topic_or_filter[len(_EXT_RRPC) :].partition("/")
    if not slash or not rest or not message_id or message_id == "#":
        return None
    if message_id == "+" and not subscribe:
        return None
    return "/" + rest


def _ext_rrpc_allowed(
    inner: str | None,
    product_key: str,
    device_name: str,
    categories: tuple[TopicCategory, ...],
) -> bool:
    return (
        inner is not None
        and inner.startswith(_user_prefix(product_key, device_name))
        and _category_allows(categories, device_name, inner, publish=False)
    )


def _system_allows(
    product_key: str,
    device_name: str,
    topic_filter: str,
    features: frozenset[str],
    *,
    publish: bool,
) -> bool:
    for rule in SYSTEM_TOPIC_RULES:
        if rule.feature not in features:
            continue
        granted = expand_template(rule.template, product_key, device_name)
        if publish and rule.operation.may_publish and topic_matches(granted, topic_filter):
            return True
        if not publish and rule.operation.may_subscribe and filter_covers(granted, topic_filter):
            return True
    return False


def may_publish(
    product_key: str,
    device_name: str,
    topic: str,
    categories: Iterable[TopicCategory],
    *,
    features: frozenset[str] = DEFAULT_FEATURES,
) -> TopicDecision:
    """May device (product_key, device_name) publish to ``topic``?"""
    error = validate_topic_name(topic)
    if error is not None:
        return _deny(error, ReasonCode.TOPIC_NAME_INVALID)
    categories = tuple(categories)
    if topic.startswith(_user_prefix(product_key, device_name)):
        if _category_allows(categories, device_name, topic, publish=True):
            return _ALLOW
        return _deny("no topic category of the product allows publishing to this topic")
    if _system_allows(product_key, device_name, topic, features, publish=True):
        return _ALLOW
    if "ext_rrpc" in features:
        inner = _ext_rrpc_inner(topic, subscribe=False)
        # The reply goes to the same topic the request came on, which the device may
        # subscribe to (reference §2.1 RRpc custom form).
        if _ext_rrpc_allowed(inner, product_key, device_name, categories):
            return _ALLOW
    return _deny("devices may publish only to their own allowed topics")


def may_subscribe(
    product_key: str,
    device_name: str,
    topic_filter: str,
    categories: Iterable[TopicCategory],
    *,
    features: frozenset[str] = DEFAULT_FEATURES,
) -> TopicDecision:
    """May device (product_key, device_name) subscribe to ``topic_filter``?"""
    error = validate_topic_filter(topic_filter)
    if error is not None:
        return _deny(error, ReasonCode.TOPIC_FILTER_INVALID)
    _group, actual = parse_shared(topic_filter)
    categories = tuple(categories)
    if actual.startswith(_user_prefix(product_key, device_name)):
        if _category_allows(categories, device_name, actual, publish=False):
            return _ALLOW
        return _deny("no topic category of the product allows subscribing to this filter")
    broadcast = f"/broadcast/{product_key}/"
    if "broadcast" in features and actual.startswith(broadcast) and len(actual) > len(broadcast):
        return _ALLOW
    if _system_allows(product_key, device_name, actual, features, publish=False):
        return _ALLOW
    if "ext_rrpc" in features:
        inner = _ext_rrpc_inner(actual, subscribe=True)
        if _ext_rrpc_allowed(inner, product_key, device_name, categories):
            return _ALLOW
    return _deny("devices may subscribe only to their own allowed topics")
