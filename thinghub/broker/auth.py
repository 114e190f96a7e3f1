"""Authentication and authorisation hooks: typed interfaces that return a decision.

The broker asks an ``Authenticator`` whether a CONNECT may proceed and an ``Authorizer`` whether
a client may publish to a topic or subscribe to a filter. A refusal carries the MQTT 5 reason
code to send; the broker maps it to the 3.1.1 equivalent where the packet has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..mqtt.packets import Connect
from ..mqtt.types import ReasonCode
from .subtrie import SubscriptionTrie


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason_code: ReasonCode = ReasonCode.SUCCESS
    reason: str = ""
    # For an accepted CONNECT: the account (topic space) the client belongs to, the client id
    # its session is keyed by when the authenticator knows better than the CONNECT (e.g. one
    # session per device), and whatever the authorizer will want to know about it.
    account: str = ""
    client_id: str | None = None
    subject: object | None = None
    # A tighter subscription limit for this client than mqtt.max_subscriptions_per_client.
    max_subscriptions: int | None = None

    @staticmethod
    def allow() -> Decision:
        return _ALLOW

    @staticmethod
    def deny(reason_code: ReasonCode = ReasonCode.NOT_AUTHORIZED, reason: str = "") -> Decision:
        return Decision(False, reason_code, reason)


_ALLOW = Decision(True)


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """What the hooks know about a connected client."""

    client_id: str
    username: str | None
    peer: str
    protocol_version: int
    account: str = ""
    # The authenticator's ``Decision.subject`` (e.g. the device identity).
    subject: object | None = None


class ConnectionObserver(Protocol):
    """Told when a client's connection is accepted and when it ends (e.g. to keep the
    registry's device status)."""

    def connected(self, client: ClientInfo) -> None: ...

    def disconnected(self, client: ClientInfo) -> None: ...


class Authenticator(Protocol):
    def authenticate(self, connect: Connect, peer: str) -> Decision: ...


class Authorizer(Protocol):
    def may_publish(self, client: ClientInfo, topic: str) -> Decision: ...

    def may_subscribe(self, client: ClientInfo, topic_filter: str) -> Decision: ...


class AllowAnonymous:
    """Accepts every CONNECT (the default until the registry adds real devices)."""

    def authenticate(self, connect: Connect, peer: str) -> Decision:
        return Decision.allow()


class RequireCredentials:
    """Refuses a CONNECT without a user name (``allow_anonymous = false`` with no registry)."""

    def authenticate(self, connect: Connect, peer: str) -> Decision:
        if connect.username is None:
            return Decision.deny(ReasonCode.NOT_AUTHORIZED, "anonymous access is disabled")
        return Decision.allow()


class DenyList:
    """Refuses publishing to topics, and subscribing to filters, matched by configured filters.

    A subscription filter is refused when it is itself matched by a deny filter, read as a topic
    (so ``deny/#`` refuses ``deny/a``, ``deny/+`` and ``deny/#``). A broader filter (``#``) is
    allowed, but the broker does not deliver denied topics through it (``hides``).
    """

    def __init__(self, deny_publish: tuple[str, ...], deny_subscribe: tuple[str, ...]) -> None:
        self._publish: SubscriptionTrie[str, bool] = SubscriptionTrie()
        self._subscribe: SubscriptionTrie[str, bool] = SubscriptionTrie()
        for topic_filter in deny_publish:
            self._publish.add(topic_filter, topic_filter, True)
        for topic_filter in deny_subscribe:
            self._subscribe.add(topic_filter, topic_filter, True)

    def may_publish(self, client: ClientInfo, topic: str) -> Decision:
        if self._publish.match(topic):
            return _DENIED
        return _ALLOW

    def denies_publish(self, topic: str) -> bool:
        """True if nobody may publish to ``topic``."""
        return bool(self._publish.match(topic))

    def may_subscribe(self, client: ClientInfo, topic_filter: str) -> Decision:
        if self._subscribe.match(topic_filter):
            return _DENIED
        return _ALLOW

    def hides(self, topic: str) -> bool:
        """True if ``topic`` is under a deny-subscribe filter: nobody may receive it, also
        through a broader filter such as ``#`` that was allowed."""
        return bool(self._subscribe.match(topic))


_DENIED = Decision(False, ReasonCode.NOT_AUTHORIZED, "denied by the hub's configuration")
