"""Who may read the ``$SYS`` topics, and that nobody but the hub writes them.

The ``$SYS/broker/...`` figures are the whole hub's (``systopics.py``): how many clients,
messages and sessions all accounts have together. They are published in the root account's
topic space only, so no other account's client ever sees them (tenancy: a topic of one account
never matches another's subscription), and inside the root account only the clients that
``mqtt.sys_readers`` names may subscribe to them:

* ``anonymous``: clients without device credentials (``mqtt.allow_anonymous``), the default;
* ``client:<glob>``: client ids matching the glob (``fnmatch``, case-sensitive);
* ``user:<glob>``: user names matching the glob (a device signs in as ``deviceName&productKey``).

A signed-in device is not a reader unless a ``client:`` or ``user:`` entry names it. Anyone
else's SUBSCRIBE to a ``$SYS`` filter (also as ``$share/<group>/$SYS/...``) gets the refusal
every denied filter gets (SUBACK 0x87, 0x80 on 3.1.1). The operator's ``deny_subscribe``
still applies to readers. A filter that does not begin with ``$SYS`` never matches them
(MQTT 4.7.2: ``#`` and ``+/...`` do not match topics beginning with ``$``).

No client may PUBLISH to a ``$SYS`` topic (MQTT 4.7.2: they are the server's): PUBACK 0x87,
as for any topic it may not publish to. The HTTP dialects cannot either (AWS refuses ``$``
topics it does not model; Alibaba's topics begin with ``/``).

:class:`SysReaders` is an ``Authorizer`` placed in front of the hub's own (the registry's
hooks): it decides ``$SYS`` filters and topics and hands everything else on unchanged.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from ..broker.auth import Authorizer, ClientInfo, Decision, DenyList
from ..mqtt.types import ReasonCode
from ..topics import SHARE_PREFIX

__all__ = ["SysReaders", "is_sys_filter", "is_sys_topic"]

_ALLOW = Decision.allow()
_NOT_A_READER = Decision.deny(
    ReasonCode.NOT_AUTHORIZED, "$SYS topics are readable only by the clients mqtt.sys_readers names"
)
_NOT_WRITABLE = Decision.deny(ReasonCode.NOT_AUTHORIZED, "$SYS topics are the hub's own")


def is_sys_topic(topic: str) -> bool:
    return topic == "$SYS" or topic.startswith("$SYS/")


def is_sys_filter(topic_filter: str) -> bool:
    """A filter (shared or not) that can match ``$SYS`` topics: only one that begins with
    ``$SYS`` can (MQTT 4.7.2)."""
    if topic_filter.startswith(SHARE_PREFIX):
        _group, _slash, topic_filter = topic_filter[len(SHARE_PREFIX) :].partition("/")
    return is_sys_topic(topic_filter)


class SysReaders:
    """An Authorizer: ``$SYS`` for the configured readers of ``account``, the rest for
    ``inner`` (None: everything else is allowed)."""

    def __init__(
        self,
        inner: Authorizer | None,
        readers: tuple[str, ...],
        account: str,
        deny: DenyList | None = None,
    ) -> None:
        self._inner = inner
        self._account = account
        self._deny = deny
        self._anonymous = "anonymous" in readers
        self._client_globs = tuple(r[len("client:") :] for r in readers if r.startswith("client:"))
        self._user_globs = tuple(r[len("user:") :] for r in readers if r.startswith("user:"))

    def reads(self, client: ClientInfo) -> bool:
        """Whether ``client`` may subscribe to ``$SYS`` topics."""
        if client.account != self._account:
            return False
        if self._anonymous and client.subject is None:
            return True
        if any(fnmatchcase(client.client_id, glob) for glob in self._client_globs):
            return True
        username = client.username
        return username is not None and any(fnmatchcase(username, g) for g in self._user_globs)

    def may_publish(self, client: ClientInfo, topic: str) -> Decision:
        if topic.startswith("$SYS") and is_sys_topic(topic):
            return _NOT_WRITABLE
        inner = self._inner
        return _ALLOW if inner is None else inner.may_publish(client, topic)

    def may_subscribe(self, client: ClientInfo, topic_filter: str) -> Decision:
        if is_sys_filter(topic_filter):
            if not self.reads(client):
                return _NOT_A_READER
            deny = self._deny
            return _ALLOW if deny is None else deny.may_subscribe(client, topic_filter)
        inner = self._inner
        return _ALLOW if inner is None else inner.may_subscribe(client, topic_filter)
