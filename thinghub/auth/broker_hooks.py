"""The registry-backed hooks the broker calls: who may connect (Alibaba device sign-in, AWS IoT
devices with a client certificate or a signed WebSocket URL, or anonymous when allowed), what
a device may publish and subscribe to (its product's topic categories, or its AWS IoT
policies), and the device's ONLINE/OFFLINE status.

A CONNECT that comes with a credential the transport proved (``broker/auth.py``) is an AWS
IoT sign-in (``aws_device.py``): a client certificate is judged by its record and policies,
a signed key acts in its account. Neither may take over a session an Alibaba device owns.

A signed-in device's session is keyed by its ProductKey and DeviceName (one connection per
device: a new sign-in takes over), in its product's account. Anonymous clients, when
``mqtt.allow_anonymous`` is on, live in the root account, where the root access key's HTTP
calls publish too.

A session belongs to the device record that opened it, its IotId (``owners``): a device
deleted and registered again under the same name is another device, and never resumes, nor
takes over, the old one's session (its queued messages, its subscriptions). Anonymous clients
may not use the client ids of the anonymous account's devices (``${productKey}.*``), nor take
over a session a device owns. ``device_watch.DeviceWatch`` keeps ``owners`` and the reserved
ProductKeys current and ends the connections of deleted and disabled devices.

Presence (ONLINE/OFFLINE in the registry) is recorded in memory here, on the event loop
(``Registry.device_signed_in``/``device_signed_out``), and written to ``registry.db`` by the
presence writer thread in coalesced batches (``registry/presence_writer.py``). A sign-in never
waits for the disk, and a write that fails (a full disk) never refuses or drops a device:
refusing devices because their status cannot be recorded would lock them out of the messages
queued for them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..broker.auth import ClientCertificate, ClientInfo, Credential, Decision, DenyList
from ..broker.broker import session_key
from ..broker.session import Session
from ..mqtt.packets import Connect
from ..mqtt.types import ReasonCode
from ..registry.models import Device
from ..registry.registry import Registry
from . import topic_acl
from .aliyun_device import DeviceIdentity, SignInRefused, verify_sign_in
from .aws_device import AwsDevice, AwsDevices, KeyClient

if TYPE_CHECKING:
    from ..broker.broker import Broker

log = logging.getLogger("thinghub.auth")

# The owner of an anonymous client's session in ``RegistryHooks.owners`` (also of the
# sessions of AWS IoT devices and signed keys, which DeviceWatch must not judge as devices).
ANONYMOUS = ""
_ALLOWED = Decision.allow()
_NO_PUBLISH_POLICY = Decision.deny(
    ReasonCode.NOT_AUTHORIZED, "no policy of the certificate allows iot:Publish to this topic"
)
_NO_SUBSCRIBE_POLICY = Decision.deny(
    ReasonCode.NOT_AUTHORIZED, "no policy of the certificate allows iot:Subscribe to this filter"
)


# A clustered node that cannot reach NATS cannot make a client id unique in the cluster
# (cluster/owners.py): every sign-in is refused until it can, whoever signs in, before any
# credential is looked at: MQTT 5 0x88 Server unavailable (§3.2.2.2), 3.1.1 return code 3
# (§3.2.2.3).
_CLUSTER_UNAVAILABLE = Decision.deny(
    ReasonCode.SERVER_UNAVAILABLE, "the cluster is out of reach from this node: try again later"
)


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
        aws: AwsDevices | None = None,
    ) -> None:
        self._registry = registry
        # AWS IoT devices' sign-in and policies (None: credentials are not looked at).
        self._aws = aws
        self._max_subscriptions = max_subscriptions_per_device
        self._allow_anonymous = allow_anonymous
        self._anonymous_account = anonymous_account
        self._deny = deny
        self._broker: Broker | None = None
        # The online epoch of each device connection, by (IotId, peer address): the end of a
        # connection that another one of the device took over does not mark it offline.
        self._epochs: dict[tuple[str, str], int] = {}
        # Who opened each session, by Session.key: a device's IotId, or ANONYMOUS. Sessions
        # restored from disk are bound by DeviceWatch at start-up; ended sessions' entries are
        # pruned by it too.
        self.owners: dict[str, str] = {}
        # ProductKeys of the anonymous account: client ids ``${productKey}.<anything>`` are its
        # devices' (aliyun_device.device_client_id), refused to anonymous clients. Read off the
        # event loop by DeviceWatch.
        self.reserved_product_keys: frozenset[str] = frozenset()
        # In a cluster: whether this node can claim client ids cluster-wide now
        # (ClusterNode.accepts_sign_ins); None on a hub of its own.
        self.cluster_ready: Callable[[], bool] | None = None

    def attach(self, broker: Broker) -> None:
        """The broker whose sessions these hooks guard (it is built after them)."""
        self._broker = broker
        if self._aws is not None:
            self._aws.attach(broker)

    @property
    def anonymous_account(self) -> str:
        return self._anonymous_account

    # Authenticator ----------------------------------------------------------------

    def authenticate(self, connect: Connect, peer: str) -> Decision:
        if self.cluster_ready is not None and not self.cluster_ready():
            return _CLUSTER_UNAVAILABLE
        if uses_device_sign_in(connect):
            result = verify_sign_in(
                connect.client_id, connect.username, connect.password, self._registry.lookup_sign_in
            )
            if isinstance(result, SignInRefused):
                # DEBUG: a flood of refusals must not fill the log; the audit log has them,
                # rate-limited (observe/audit.py), and /metrics counts them.
                log.debug(
                    "device sign-in refused from %s: %s", peer, result.detail or result.reason
                )
                return Decision.deny(result.reason_code, result.reason)
            identity = result.identity
            self._claim(identity, result.device)
            return Decision(
                True,
                account=identity.account_id,
                client_id=identity.session_client_id,
                subject=identity,
                max_subscriptions=self._max_subscriptions,
            )
        if self._allow_anonymous:
            if self._reserved_for_a_device(connect.client_id):
                # 0x85 rather than 0x87: what is refused is the identifier, and the client can
                # connect with another; 3.1.1 gets return code 2, "identifier rejected".
                log.debug("anonymous CONNECT from %s with a device's client id refused", peer)
                return Decision.deny(
                    ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
                    "this client id belongs to a device: sign in as the device, or use another",
                )
            return Decision(True, account=self._anonymous_account)
        return Decision.deny(
            ReasonCode.NOT_AUTHORIZED,
            "anonymous access is disabled: sign in as a device (deviceName&productKey)",
        )

    def authenticate_credential(
        self, connect: Connect, peer: str, credential: Credential
    ) -> Decision:
        aws = self._aws
        if aws is None:
            return self.authenticate(connect, peer)
        if self.cluster_ready is not None and not self.cluster_ready():
            return _CLUSTER_UNAVAILABLE
        if isinstance(credential, ClientCertificate):
            decision = aws.sign_in(connect, peer, credential)
        else:
            decision = aws.sign_in_key(connect, peer, credential)
        if decision.allowed and self._owned_by_a_device(decision.account, connect.client_id):
            log.info("sign-in from %s refused: client id %r is a device's", peer, connect.client_id)
            return Decision.deny(
                ReasonCode.NOT_AUTHORIZED,
                "this client id belongs to a device that signs in with its device secret",
            )
        return decision

    def _owned_by_a_device(self, account: str, client_id: str) -> bool:
        broker = self._broker
        session = None if broker is None or not client_id else broker.session_of(account, client_id)
        return session is not None and self.owners.get(session.key, ANONYMOUS) != ANONYMOUS

    def _reserved_for_a_device(self, client_id: str) -> bool:
        """An anonymous client may not take a device's session (and its queued messages): the
        ids ``${productKey}.*`` of the anonymous account's products are the devices', whether
        or not the device exists yet, and no session a device owns may be taken over. Both
        checks are in memory: this runs on the event loop for every CONNECT."""
        if not client_id:
            return False  # the broker assigns one
        product_key, dot, _name = client_id.partition(".")
        if dot and product_key in self.reserved_product_keys:
            return True
        broker = self._broker
        if broker is None:
            return False
        session = broker.session_of(self._anonymous_account, client_id)
        if session is None:
            return False
        if self.owners.get(session.key, ANONYMOUS) != ANONYMOUS:
            return True
        # Nor the session of a client signed in with a certificate or a key, while it is on.
        client = session.client
        info = None if client is None else client.info
        return info is not None and isinstance(info.subject, AwsDevice | KeyClient)

    def _claim(self, identity: DeviceIdentity, device: Device) -> None:
        """Before a device's CONNECT opens its session: a session under its client id that
        another device record (deleted since, same name) or an anonymous client opened is
        ended first, so the device starts clean and never sees their messages."""
        broker = self._broker
        if broker is None:
            return
        session = broker.session_of(identity.account_id, identity.session_client_id)
        if session is None:
            return
        owner = self.owners.get(session.key)
        # An unbound session (DeviceWatch binds those restored at start) is the device's own
        # only if the device has signed in before.
        foreign = device.activated_at is None if owner is None else owner != identity.iot_id
        if foreign:
            log.info(
                "device %s (IotId %s) signs in: the session under its client id was another's; "
                "it is ended, the device starts clean",
                identity.session_client_id,
                identity.iot_id,
            )
            self.end_session(session)

    def end_session(self, session: Session) -> None:
        """End a device's session and close its connection, if any (v5 DISCONNECT 0x98,
        administrative action), without its will: the device lost its right to it."""
        broker = self._broker
        if broker is None:
            return
        session.pending_will = None
        if session.client is not None:
            broker.disconnect_client(
                session.account, session.client_id, clean_session=True, prevent_will=True
            )
        else:
            broker.end_session(session)

    # Authorizer -------------------------------------------------------------------

    def may_publish(self, client: ClientInfo, topic: str) -> Decision:
        if self._deny is not None:
            decision = self._deny.may_publish(client, topic)
            if not decision.allowed:
                return decision
        subject = client.subject
        if type(subject) is AwsDevice:
            return _ALLOWED if subject.may_publish(topic) else _NO_PUBLISH_POLICY
        return self._by_categories(client, topic, topic_acl.may_publish)

    def may_subscribe(self, client: ClientInfo, topic_filter: str) -> Decision:
        if self._deny is not None:
            decision = self._deny.may_subscribe(client, topic_filter)
            if not decision.allowed:
                return decision
        subject = client.subject
        if type(subject) is AwsDevice:
            return _ALLOWED if subject.may_subscribe(topic_filter) else _NO_SUBSCRIBE_POLICY
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
        key = session_key(client.account, client.client_id)
        # The session's own key string as the dict key: one copy per session, not two.
        session = self._broker.sessions.get(key) if self._broker is not None else None
        if session is not None:
            key = session.key
        if not isinstance(identity, DeviceIdentity):
            self.owners[key] = ANONYMOUS
            if type(identity) is AwsDevice and self._aws is not None:
                self._aws.connected(identity, client.client_id)
            return
        self.owners[key] = identity.iot_id
        host = client.peer.rsplit(":", 1)[0]
        # In memory (the presence writer writes it later): a device deleted or disabled by
        # another process meanwhile is closed by DeviceWatch at its next look.
        self._epochs[(identity.iot_id, client.peer)] = self._registry.device_signed_in(
            identity.iot_id, identity.product_key, identity.device_name, ip_address=host
        )

    def disconnected(self, client: ClientInfo) -> None:
        identity = client.subject
        if not isinstance(identity, DeviceIdentity):
            if type(identity) is AwsDevice and self._aws is not None:
                self._aws.disconnected(identity)
            return
        epoch = self._epochs.pop((identity.iot_id, client.peer), None)
        self._registry.device_signed_out(
            identity.iot_id, identity.product_key, identity.device_name, online_epoch=epoch
        )
