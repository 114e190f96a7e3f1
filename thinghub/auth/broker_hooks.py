"""The registry-backed hooks the broker calls: who may connect (Alibaba device sign-in, or
anonymous when allowed), what a device may publish and subscribe to (its product's topic
categories), and the device's ONLINE/OFFLINE status.

A signed-in device's session is keyed by its ProductKey and DeviceName (one connection per
device: a new sign-in takes over), in its product's account. Anonymous clients, when
``mqtt.allow_anonymous`` is on, live in the root account, where the root access key's HTTP
calls publish too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..broker.auth import ClientInfo, Decision, DenyList
from ..mqtt.packets import Connect
from ..mqtt.types import ReasonCode
from ..registry.errors import RegistryError
from ..registry.registry import Registry
from . import topic_acl
from .aliyun_device import DeviceIdentity, SignInRefused, verify_sign_in

log = logging.getLogger("thinghub.auth")


def uses_device_sign_in(connect: Connect) -> bool:
    """A CONNECT in the Alibaba device form: user name ``deviceName&productKey`` and a
    password (reference §3)."""
    return connect.username is not None and "&" in connect.username and connect.password is not None


class RegistryHooks:
    """Authenticator, Authorizer and ConnectionObserver in one, over the registry."""

    def __init__(
        self,
        registry: Registry,
        *,
        allow_anonymous: bool,
        anonymous_account: str,
        deny: DenyList | None = None,
        max_subscriptions_per_device: int | None = None,
    ) -> None:
        self._registry = registry
        self._max_subscriptions = max_subscriptions_per_device
        self._allow_anonymous = allow_anonymous
        self._anonymous_account = anonymous_account
        self._deny = deny
        # Online epochs of connected devices, so a taken-over connection's end does not mark
        # the new connection's device offline.
        self._epochs: dict[tuple[str, str], int] = {}

    # Authenticator ----------------------------------------------------------------

    def authenticate(self, connect: Connect, peer: str) -> Decision:
        if uses_device_sign_in(connect):
            result = verify_sign_in(
                connect.client_id, connect.username, connect.password, self._registry.lookup_device
            )
            if isinstance(result, SignInRefused):
                log.info("device sign-in refused from %s: %s", peer, result.detail or result.reason)
                return Decision.deny(result.reason_code, result.reason)
            identity = result.identity
            return Decision(
                True,
                account=identity.account_id,
                client_id=identity.session_client_id,
                subject=identity,
                max_subscriptions=self._max_subscriptions,
            )
        if self._allow_anonymous:
            return Decision(True, account=self._anonymous_account)
        return Decision.deny(
            ReasonCode.NOT_AUTHORIZED,
            "anonymous access is disabled: sign in as a device (deviceName&productKey)",
        )

    # Authorizer -------------------------------------------------------------------

    def may_publish(self, client: ClientInfo, topic: str) -> Decision:
        if self._deny is not None:
            decision = self._deny.may_publish(client, topic)
            if not decision.allowed:
                return decision
        return self._by_categories(client, topic, topic_acl.may_publish)

    def may_subscribe(self, client: ClientInfo, topic_filter: str) -> Decision:
        if self._deny is not None:
            decision = self._deny.may_subscribe(client, topic_filter)
            if not decision.allowed:
                return decision
        return self._by_categories(client, topic_filter, topic_acl.may_subscribe)

    def _by_categories(
        self, client: ClientInfo, topic: str, rule: Callable[..., topic_acl.TopicDecision]
    ) -> Decision:
        """A device's topics follow its product's categories; anonymous clients (in the root
        account, when allowed) are limited only by the deny lists."""
        identity = client.subject
        if not isinstance(identity, DeviceIdentity):
            return Decision.allow()
        categories = self._registry.topic_categories_for_product(identity.product_key)
        verdict = rule(identity.product_key, identity.device_name, topic, categories)
        if not verdict.allowed:
            return Decision.deny(verdict.reason_code, verdict.reason)
        return Decision.allow()

    # ConnectionObserver -------------------------------------------------------------

    def connected(self, client: ClientInfo) -> None:
        identity = client.subject
        if not isinstance(identity, DeviceIdentity):
            return
        host = client.peer.rsplit(":", 1)[0]
        try:
            device = self._registry.set_device_online(
                identity.product_key, identity.device_name, ip_address=host
            )
        except RegistryError as error:  # deleted or disabled between sign-in and now
            log.info("device %s went away while signing in: %s", client.client_id, error)
            return
        self._epochs[identity.device_key] = device.online_epoch

    def disconnected(self, client: ClientInfo) -> None:
        identity = client.subject
        if not isinstance(identity, DeviceIdentity):
            return
        epoch = self._epochs.pop(identity.device_key, None)
        self._registry.set_device_offline(
            identity.product_key, identity.device_name, online_epoch=epoch
        )
