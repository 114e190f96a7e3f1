"""Topic Names and Topic Filters: validation, the `$` and `$share` rules (MQTT 5.0 §4.7, §4.8.2).

Pure functions, no state. The broker calls them at the edge (PUBLISH, SUBSCRIBE, HTTP publish);
the tries in ``thinghub.broker`` assume their input already passed here.

The rules, with the spec's own examples:

* A Topic Name has no wildcards [MQTT-4.7.1-1], is at least one character long
  [MQTT-4.7.3-1], has no U+0000 [MQTT-4.7.3-2] and encodes to at most 65535 bytes
  [MQTT-4.7.3-3] (a listener may set a lower limit).
* '/' separates levels. Empty levels are real levels: "/finance" has two levels, "" and
  "finance"; "a//b" has three. "/" alone is a valid name with two empty levels.
* '#' matches the parent level and any number of child levels. It stands alone in its level
  and is the last character of the filter [MQTT-4.7.1-2].
      valid:   "#", "sport/#", "sport/tennis/player1/#", "+/tennis/#"
      invalid: "sport/tennis#", "sport/tennis/#/ranking", "##", "sport/#/"
* '+' matches exactly one level, which may be empty. It occupies a whole level
  [MQTT-4.7.1-3].
      valid:   "+", "+/tennis/#", "sport/+/player1", "/+", "+/+"
      invalid: "sport+", "+a", "a/b+/c"
* Names that start with '$' (e.g. "$SYS/...") are not matched by filters that start with a
  wildcard [MQTT-4.7.2-1]; see ``is_system_topic``. The tries apply that rule.
* A shared subscription is "$share/{ShareName}/{filter}": ShareName is at least one character
  [MQTT-4.8.2-1], contains none of '/', '+', '#', and is followed by '/' and a filter
  [MQTT-4.8.2-2].
      valid:   "$share/consumer1/sport/tennis/+", "$share/g/#", "$share/g//"
      invalid: "$share/", "$share//a", "$share/g", "$share/g/", "$share/a+b/x", "$share/#"
  A filter "$share" without a '/' is an ordinary filter.
* No normalisation: names and filters compare as exact strings, case-sensitive
  [MQTT-4.7.3-4].
"""

from __future__ import annotations

__all__ = [
    "MAX_TOPIC_BYTES",
    "SHARE_PREFIX",
    "is_system_topic",
    "parse_shared",
    "validate_topic_filter",
    "validate_topic_name",
]

MAX_TOPIC_BYTES = 65535
SHARE_PREFIX = "$share/"


def _common_error(text: str, what: str, max_length: int) -> str | None:
    """The checks shared by names and filters: length, U+0000, well-formed UTF-8."""
    if not text:
        return f"{what} is empty [MQTT-4.7.3-1]"
    if "\x00" in text:
        return f"{what} contains U+0000 [MQTT-4.7.3-2]"
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            # Only lone surrogates fail to encode; they are not well-formed UTF-8.
            return f"{what} contains a surrogate code point [MQTT-1.5.4-1]"
    if size > max_length:
        return f"{what} is {size} bytes, more than {max_length} [MQTT-4.7.3-3]"
    return None


def validate_topic_name(
    topic: str, *, max_length: int = MAX_TOPIC_BYTES, max_levels: int | None = None
) -> str | None:
    """Return why ``topic`` is not a valid Topic Name, or None if it is."""
    error = _common_error(topic, "topic name", max_length)
    if error is not None:
        return error
    if "+" in topic or "#" in topic:
        return "topic name contains a wildcard [MQTT-4.7.1-1]"
    if max_levels is not None and topic.count("/") + 1 > max_levels:
        return f"topic name has more than {max_levels} levels"
    return None


def validate_topic_filter(
    topic_filter: str, *, max_length: int = MAX_TOPIC_BYTES, max_levels: int | None = None
) -> str | None:
    """Return why ``topic_filter`` is not a valid Topic Filter, or None if it is.

    Shared subscriptions ("$share/{ShareName}/{filter}") are checked as such; ``max_length``
    applies to the whole string, ``max_levels`` to the filter after the ShareName.
    """
    error = _common_error(topic_filter, "topic filter", max_length)
    if error is not None:
        return error
    actual = topic_filter
    if topic_filter.startswith(SHARE_PREFIX):
        group, slash, actual = topic_filter[len(SHARE_PREFIX) :].partition("/")
        if not group:
            return "shared subscription has an empty ShareName [MQTT-4.8.2-1]"
        if "+" in group or "#" in group:
            return "ShareName contains a wildcard [MQTT-4.8.2-2]"
        if not slash or not actual:
            return "ShareName is not followed by '/' and a topic filter [MQTT-4.8.2-2]"
    if "+" in actual or "#" in actual:
        levels = actual.split("/")
        last = len(levels) - 1
        for index, level in enumerate(levels):
            if "#" in level and (level != "#" or index != last):
                return "'#' must be alone in the last level [MQTT-4.7.1-2]"
            if "+" in level and level != "+":
                return "'+' must occupy a whole level [MQTT-4.7.1-3]"
    if max_levels is not None and actual.count("/") + 1 > max_levels:
        return f"topic filter has more than {max_levels} levels"
    return None


def parse_shared(topic_filter: str) -> tuple[str | None, str]:
    """Split a valid filter into (ShareName or None, the filter that is matched).

    "$share/g/sport/+" -> ("g", "sport/+"); "sport/+" -> (None, "sport/+").
    Raises ValueError for a malformed shared form; call ``validate_topic_filter`` first.
    """
    if not topic_filter.startswith(SHARE_PREFIX):
        return None, topic_filter
    group, slash, actual = topic_filter[len(SHARE_PREFIX) :].partition("/")
    if not group or not slash or not actual:
        raise ValueError(f"malformed shared subscription {topic_filter!r} [MQTT-4.8.2-2]")
    return group, actual


def is_system_topic(topic: str) -> bool:
    """True for names starting with '$' ("$SYS/..."), which wildcard-first filters do not
    match [MQTT-4.7.2-1] and clients should not publish to by convention (§4.7.2)."""
    return topic.startswith("$")
