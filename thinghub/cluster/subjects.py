"""MQTT Topic Names and Topic Filters as NATS subjects, per account. Pure.

A node subscribes on NATS to the subjects of the filters its sessions hold, and a message
goes to NATS on the subject of its topic, so that NATS carries it to exactly the nodes whose
filters match (docs/architecture.md, *Cluster*). For that, MQTT matching (§4.7) must be NATS
matching of the mapped strings:

    topic t matches filter f in MQTT  <=>  topic_subject(t) matches one of filter_subjects(f)

which tests/cluster/test_cluster_subjects.py checks property-based. How each rule maps:

* Levels are tokens. MQTT separates levels with '/', NATS tokens with '.'; every level
  becomes exactly one token, whatever it holds.
* Escaping. A NATS token may not be empty and may not hold '.', whitespace, or be '*' or
  '>'; JetStream key-value keys allow only ``[-/_=.A-Za-z0-9]``. A level is kept as it is when
  it is made of ``[A-Za-z0-9_-]`` only; otherwise every other character becomes '=' and the
  two upper-case hex digits of each of its UTF-8 bytes ("a.b" -> "a=2Eb", "é" -> "=C3=A9",
  "$SYS" -> "=24SYS"), and an empty level becomes "=" alone, which no escaped level can be.
  So every MQTT level (empty, '.', spaces, '$', '*', '>', '=', non-ASCII) is representable,
  the mapping is one to one, and a subject is also a valid key of a key-value bucket.
* '+' is '*' and '#' is '>'.
* '#' also matches its parent level (MQTT 4.7.1.2: "sport/#" matches "sport"); NATS '>'
  needs at least one more token. A filter ending in "/#" maps to two subjects: the one with
  '>' and its parent without it ("sport.>" and "sport"); "#" alone needs only ">".
* Topics starting with '$' are not matched by filters starting with a wildcard
  [MQTT-4.7.2-1]; NATS has no such rule. Every subject therefore starts with a kind token:
  "s" for a topic whose first level starts with '$', "t" for any other. A filter whose first
  level is a wildcard maps under "t" only; a literal first level maps under the kind of that
  level. "#" is "t.>", which never matches "s.=24SYS.x".

Whole subjects are ``<prefix>.<space>.<account>.<kind>.<levels...>``: the spaces are "m"
(QoS 0 messages routed by interest), "q" (QoS 1/2 messages: published into the cluster's
replicated message stream, cluster/stream.py, and routed by interest like "m": a node
subscribes to both spaces for each filter) and "r" (retained messages, which every node
keeps); the
account is one escaped token ("" is "="). A subject longer than ``MAX_SUBJECT`` bytes would
not fit a NATS control line: such a topic goes on the account's "long" subject that every
node takes (``long_subject``), a retained one on a subject named by the topic's hash (kind
"h"), and such a filter subscribes to the whole account (``account_wildcard``); the
receiving node's own trie decides, so nothing is lost.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

__all__ = [
    "MAX_SUBJECT",
    "Subjects",
    "escape_level",
    "filter_subjects",
    "subject_topic",
    "topic_subject",
    "unescape_level",
]

#: Longest subject published or subscribed (NATS' control line is 4096 bytes by default, and
#: a route's carries the subject, the account and the queue names besides).
MAX_SUBJECT = 1024

_SAFE = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPED = re.compile(r"(?:[A-Za-z0-9_-]|=[0-9A-F]{2})+")
_HEX = "0123456789ABCDEF"
EMPTY_LEVEL = "="
SYSTEM_KIND = "s"
TOPIC_KIND = "t"
HASHED_KIND = "h"
#: How many (account, topic) -> subject answers ``Subjects.message`` keeps.
_MESSAGE_SUBJECTS = 65536


def escape_level(level: str) -> str:
    """One MQTT level (or any text) as one NATS token; see the module's docstring."""
    if _SAFE.fullmatch(level):
        return level
    if not level:
        return EMPTY_LEVEL
    out: list[str] = []
    for char in level:
        if char.isascii() and (char.isalnum() or char in "-_"):
            out.append(char)
        else:
            out.extend("=" + _HEX[byte >> 4] + _HEX[byte & 15] for byte in char.encode("utf-8"))
    return "".join(out)


def unescape_level(token: str) -> str:
    """The level ``token`` stands for; ValueError if no level maps to it."""
    if token == EMPTY_LEVEL:
        return ""
    if not _ESCAPED.fullmatch(token):
        raise ValueError(f"not an escaped level: {token!r}")
    if "=" not in token:
        return token
    raw = bytearray()
    index = 0
    while index < len(token):
        char = token[index]
        if char == "=":
            raw.append(int(token[index + 1 : index + 3], 16))
            index += 3
        else:
            raw.append(ord(char))
            index += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"not an escaped level: {token!r}") from error


def _kind(first_level: str) -> str:
    return SYSTEM_KIND if first_level.startswith("$") else TOPIC_KIND


@lru_cache(maxsize=65536)
def topic_subject(topic: str) -> str:
    """The kind and level tokens of a Topic Name: "a/b" -> "t.a.b", "$SYS/x" -> "s.=24SYS.x"."""
    levels = topic.split("/")
    return ".".join((_kind(levels[0]), *map(escape_level, levels)))


def subject_topic(tokens: str) -> str:
    """The Topic Name of ``topic_subject``'s result; ValueError for anything else."""
    kind, _dot, rest = tokens.partition(".")
    if not rest or kind not in (SYSTEM_KIND, TOPIC_KIND):
        raise ValueError(f"not a topic subject: {tokens!r}")
    topic = "/".join(unescape_level(token) for token in rest.split("."))
    if _kind(topic.split("/", 1)[0]) != kind:
        raise ValueError(f"kind does not match the topic: {tokens!r}")
    return topic


def filter_subjects(topic_filter: str) -> tuple[str, ...]:
    """The subjects (one or two) whose matches are the filter's matches; the filter is a valid
    Topic Filter without a ``$share/{group}/`` prefix (thinghub/topics.py)."""
    levels = topic_filter.split("/")
    first = levels[0]
    kind = TOPIC_KIND if first in ("+", "#") else _kind(first)
    tokens = [kind]
    tokens.extend("*" if lv == "+" else ">" if lv == "#" else escape_level(lv) for lv in levels)
    subject = ".".join(tokens)
    if levels[-1] == "#" and len(levels) > 1:
        # '#' matches the parent level too (MQTT 4.7.1.2); NATS '>' does not.
        return subject, ".".join(tokens[:-1])
    return (subject,)


class Subjects:
    """The subjects of one cluster, under its prefix (``cluster.subject_prefix``)."""

    __slots__ = (
        "_messages",
        "_queued",
        "control",
        "long_all",
        "prefix",
        "queued_all",
        "retained_all",
    )

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        # Every node's announcements (interest, heartbeats): cluster/interest.py.
        self.control = f"{prefix}.ctl"
        # What every node takes whatever its filters: retained messages, long topics.
        self.retained_all = f"{prefix}.r.>"
        self.long_all = f"{prefix}.l.>"
        # What the cluster's message stream captures: every QoS 1/2 message.
        self.queued_all = f"{prefix}.q.>"
        # ``message``'s answers: it is asked once per message forwarded. Bounded: emptied
        # when full (the topics a hub sees at once are far fewer).
        self._messages: dict[tuple[str, str], str] = {}
        # ``queued``'s answers, kept the same way: asked three times per QoS 1/2 message
        # published here (ClusterNode.plan, forward, streams).
        self._queued: dict[tuple[str, str], str | None] = {}

    def message(self, account: str, topic: str) -> str:
        """Where a message on ``topic`` is published, for the nodes whose filters match."""
        key = (account, topic)
        subject = self._messages.get(key)
        if subject is None:
            subject = f"{self.prefix}.m.{escape_level(account)}.{topic_subject(topic)}"
            if len(subject) > MAX_SUBJECT:
                subject = self.long_subject(account)
            if len(self._messages) >= _MESSAGE_SUBJECTS:
                self._messages.clear()
            self._messages[key] = subject
        return subject

    def queued(self, account: str, topic: str) -> str | None:
        """Where a QoS 1/2 message on ``topic`` is published (into the message stream); None
        for a topic too long for a subject, which the cluster refuses at QoS 1/2
        (``ClusterNode.plan``)."""
        key = (account, topic)
        try:
            return self._queued[key]
        except KeyError:
            pass
        subject = f"{self.prefix}.q.{escape_level(account)}.{topic_subject(topic)}"
        answer = subject if len(subject) <= MAX_SUBJECT else None
        if len(self._queued) >= _MESSAGE_SUBJECTS:
            self._queued.clear()
        self._queued[key] = answer
        return answer

    def queued_filters(self, account: str, topic_filter: str) -> tuple[str, ...] | None:
        """The stream subjects a filter (without ``$share``) matches; None when one would be
        too long (such a filter cannot have a consumer of its own)."""
        head = f"{self.prefix}.q.{escape_level(account)}."
        subjects = tuple(head + s for s in filter_subjects(topic_filter))
        return None if any(len(s) > MAX_SUBJECT for s in subjects) else subjects

    def retained(self, account: str, topic: str) -> str:
        """Where a retained message (or its deletion) is published, for every node; one
        subject per topic, which the retained stream keeps the last message of
        (cluster/retained.py): a topic too long for a subject is named by its SHA-256."""
        head = f"{self.prefix}.r.{escape_level(account)}."
        subject = head + topic_subject(topic)
        if len(subject) <= MAX_SUBJECT:
            return subject
        return head + HASHED_KIND + "." + hashlib.sha256(topic.encode()).hexdigest()

    def long_subject(self, account: str) -> str:
        return f"{self.prefix}.l.{escape_level(account)}"

    def account_wildcard(self, account: str) -> tuple[str, str]:
        token = escape_level(account)
        return f"{self.prefix}.m.{token}.>", f"{self.prefix}.q.{token}.>"

    def subscriptions(
        self, account: str, topic_filter: str, queued: bool = True
    ) -> tuple[str, ...]:
        """What a node subscribes to for a filter of its sessions (without ``$share``): the
        filter's subjects in the QoS 0 space and in the QoS 1/2 space. Two subscriptions, not
        one ``<prefix>.*.<account>...``: that one would also match the retained space "r",
        which every node takes anyway, and hand those messages over twice. Without
        ``queued``, the QoS 0 space only: a shared group's QoS 1/2 messages come from its
        consumer (cluster/groups.py)."""
        token = escape_level(account)
        found = filter_subjects(topic_filter)
        spaces = ("m", "q") if queued else ("m",)
        subjects = tuple(f"{self.prefix}.{space}.{token}.{s}" for space in spaces for s in found)
        if any(len(s) > MAX_SUBJECT for s in subjects):
            wildcards = self.account_wildcard(account)
            return wildcards if queued else wildcards[:1]
        return subjects

    def node(self, name: str) -> str:
        """Where requests for one node go (a takeover of a session it holds)."""
        return f"{self.prefix}.node.{name}"

    def topic_of(self, subject: str) -> tuple[str, str]:
        """(account, topic) of a message or retained subject; ValueError for anything else."""
        head = self.prefix + "."
        if not subject.startswith(head):
            raise ValueError(f"not a subject of this cluster: {subject!r}")
        space, _dot, rest = subject[len(head) :].partition(".")
        account, _dot, tokens = rest.partition(".")
        if space not in ("m", "q", "r") or not tokens:
            raise ValueError(f"not a message subject: {subject!r}")
        return unescape_level(account), subject_topic(tokens)
