"""Authentication and authorisation hooks: typed interfaces that return a decision.

The broker asks an ``Authenticator`` whether a CONNECT may proceed and an ``Authorizer`` whether
a client may publish to a topic or subscribe to a filter. A refusal carries the MQTT 5 reason
code to send; the broker maps it to the 3.1.1 equivalent where the packet has one.

What a transport proved before the CONNECT (a TLS client certificate the handshake verified,
an access key whose signature of a WebSocket URL checked out) is its ``credential``
(``transport/tcp.py``, ``transport/websocket.py``); a CONNECT that comes with one is judged by
``Authenticator.authenticate_credential``.

An authenticator may hand the broker a ``ConnectionPolicy`` for a client (``Decision.policy``,
then ``ClientInfo.policy``): the checks that only some clients have (AWS IoT policies: may it
receive a message on this topic, may it retain there, is a refused request the end of its
connection). The broker consults it only for clients that have one (``Client.send_publish``,
``_handle_publish``, ``_handle_subscribe``), so the others pay one attribute test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..errors import ThingHubError
from ..mqtt.packets import Connect
from ..mqtt.types import ReasonCode
from .subtrie import SubscriptionTrie


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """A TLS client certificate (DER) that the handshake verified against the hub's trust
    anchors (``transport/tls.py``)."""

    der: bytes


@dataclass(frozen=True, slots=True)
class SignedKey:
    """An access key that signed the WebSocket request (a SigV4 presigned URL), checked
    before the upgrade: its client acts for the key's account."""

    account: str
    access_key_id: str


#: what a transport proved about a client before its CONNECT
Credential = ClientCertificate | SignedKey


class CredentialRefused(ThingHubError):
    """A credential that does not hold (a bad signature, an unknown key); the transport
    refuses the connection in its own shape (HTTP 403 for a WebSocket upgrade)."""


class ConnectionPolicy(Protocol):
    """Checks an authenticator attaches to one client (``Decision.policy``)."""

    #: a refused PUBLISH or SUBSCRIBE ends a 3.1.1 connection (AWS IoT's answer), where the
    #: broker would otherwise drop the message, or answer SUBACK 0x80
    @property
    def closes_on_denial(self) -> bool: ...

    def may_receive(self, topic: str) -> bool:
        """May a message on ``topic`` be delivered to the client? Asked for each copy as it is
        sent; a refused copy is dropped (counted as not authorised)."""
        ...

    def may_retain(self, topic: str) -> bool:
        """May the client's retained message (or retained Will) be kept on ``topic``?"""
        ...


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
    # Checks only this client has (ConnectionPolicy), passed on in its ClientInfo.
    policy: ConnectionPolicy | None = None

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
    # The authenticator's ``Decision.policy``: checks only this client has.
    policy: ConnectionPolicy | None = None


class ConnectionObserver(Protocol):
    """Told when a client's connection is accepted and when it ends (e.g. to keep the
    registry's device status)."""

    def connected(self, client: ClientInfo) -> None: ...

    def disconnected(self, client: ClientInfo) -> None: ...


class Authenticator(Protocol):
    def authenticate(self, connect: Connect, peer: str) -> Decision: ...

    def authenticate_credential(
        self, connect: Connect, peer: str, credential: Credential
    ) -> Decision:
        """A CONNECT on a connection whose transport proved ``credential``."""
        ...


class Authorizer(Protocol):
    def may_publish(self, client: ClientInfo, topic: str) -> Decision: ...

    def may_subscribe(self, client: ClientInfo, topic_filter: str) -> Decision: ...


class AllowAnonymous:
    """Accepts every CONNECT (the default until the registry adds real devices)."""

    def authenticate(self, connect: Connect, peer: str) -> Decision:
        return Decision.allow()

    def authenticate_credential(
        self, connect: Connect, peer: str, credential: Credential
    ) -> Decision:
        return Decision.allow()


class RequireCredentials:
    """Refuses a CONNECT without a user name (``allow_anonymous = false`` with no registry)."""

    def authenticate(self, connect: Connect, peer: str) -> Decision:
        if connect.username is None:
            return Decision.deny(ReasonCode.NOT_AUTHORIZED, "anonymous access is disabled")
        return Decision.allow()

    def authenticate_credential(
        self, connect: Connect, peer: str, credential: Credential
    ) -> Decision:
        # Without a registry no certificate or key names anybody: judged as any CONNECT.
        return self.authenticate(connect, peer)


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
