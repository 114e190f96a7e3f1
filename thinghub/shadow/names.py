"""Thing and shadow names, and the reserved MQTT topics of shadows. Pure functions.

Names (iot-data service model, reference ``aws-iot-data-api.md`` §1): a thing name is 1..128
characters of ``[a-zA-Z0-9:_-]``, a shadow name 1..64 of ``[$a-zA-Z0-9:_-]``. botocore checks
only the minimum length, so the server checks the rest (400 ``InvalidRequestException``).

Topics (``device-shadow-mqtt``, "ShadowTopicPrefix"): ``$aws/things/{thing}/shadow`` for the
classic shadow, ``$aws/things/{thing}/shadow/name/{shadow}`` for a named one. A client
publishes a request to ``<prefix>/update``, ``/get`` or ``/delete``; the service answers on
``<prefix>/<operation>/accepted`` or ``/rejected``, and after an update also on
``<prefix>/update/delta`` and ``/update/documents``. Requests have exactly 5 or 7 levels;
every answer topic has more (6 or 8), so the service can never take its own answer for a
request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .document import BAD_REQUEST, ShadowError

__all__ = [
    "CLASSIC",
    "OPERATIONS",
    "TOPIC_ROOT",
    "RequestTopic",
    "check_shadow_name",
    "check_thing_name",
    "parse_request_topic",
    "topic_prefix",
]

#: the shadow name under which the classic (unnamed) shadow is kept
CLASSIC = ""
TOPIC_ROOT = "$aws/things/"
OPERATIONS = ("update", "get", "delete")

_THING = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_SHADOW = re.compile(r"[$a-zA-Z0-9:_-]{1,64}")


def check_thing_name(name: str) -> str:
    if _THING.fullmatch(name) is None:
        raise ShadowError(
            BAD_REQUEST,
            "Invalid thing name: 1 to 128 characters of a-z, A-Z, 0-9, ':', '_' and '-'",
        )
    return name


def check_shadow_name(name: str) -> str:
    if _SHADOW.fullmatch(name) is None:
        raise ShadowError(
            BAD_REQUEST,
            "Invalid shadow name: 1 to 64 characters of a-z, A-Z, 0-9, '$', ':', '_' and '-'",
        )
    return name


def topic_prefix(thing: str, shadow: str) -> str:
    """The ShadowTopicPrefix of a shadow (``shadow`` is CLASSIC for the classic one)."""
    if shadow == CLASSIC:
        return f"{TOPIC_ROOT}{thing}/shadow"
    return f"{TOPIC_ROOT}{thing}/shadow/name/{shadow}"


@dataclass(frozen=True, slots=True)
class RequestTopic:
    """A request topic, its names as they appear in it (not yet checked)."""

    thing: str
    shadow: str
    operation: str

    @property
    def prefix(self) -> str:
        return topic_prefix(self.thing, self.shadow)


def parse_request_topic(topic: str) -> RequestTopic | None:
    """The request a topic makes, or None if it is not a shadow request topic."""
    if not topic.startswith(TOPIC_ROOT):
        return None
    levels = topic.split("/")
    if len(levels) == 5 and levels[3] == "shadow" and levels[4] in OPERATIONS:
        return RequestTopic(levels[2], CLASSIC, levels[4])
    if (
        len(levels) == 7
        and levels[3] == "shadow"
        and levels[4] == "name"
        and levels[6] in OPERATIONS
        and levels[5]
    ):
        return RequestTopic(levels[2], levels[5], levels[6])
    return None
