"""AWS IoT devices on the hub's MQTT listeners: sign-in with an X.509 client certificate (or a
SigV4-signed WebSocket URL), and the AWS IoT policies that decide what they may do.

Sign-in (``AwsDevices.sign_in``), for a CONNECT on a TLS connection whose client certificate
the handshake verified (``transport/tls.py``):

1. the certificate id is the SHA-256 of its DER, lowercase hex (``identity/x509.py``);
2. its record (status, validity, the CA that signed it, its things, its policies with their
   default documents) comes from the sign-in cache, or from one WAL read on a miss
   (``IdentityReader.sign_in``; a reader never waits for the writer). An entry is used only
   while ``IdentityChanges.grants`` has not moved since it was read: any committed identity
   write (a status, an attachment, a policy version, a thing's attributes, a CA's status)
   makes the next sign-in of every certificate read again;
3. it must be ACTIVE, within its validity period, and, when a registered CA signed it, that CA
   must be ACTIVE in the certificate's account;
4. its policies, compiled once per document (``identity/policy_eval.py``), resolved with the
   connection's variables, must allow ``iot:Connect`` on ``client/{clientId}``.

Any refusal is CONNACK 0x87 Not authorized (3.1.1: return code 5), the reason in the log and
the audit line. The session lives in the certificate's account, under the CONNECT's client
id; the connection's ``AwsDevice`` is both its ``ClientInfo.subject`` and its
``ConnectionPolicy`` (``broker/auth.py``): PUBLISH (and a Will) asks ``iot:Publish``,
retaining asks ``iot:RetainPublish`` too, SUBSCRIBE ``iot:Subscribe`` on the filter as sent,
each delivered copy ``iot:Receive``. Answers are kept per connection and topic, bounded
(``aws.policy_topic_cache``), and worked out again after any identity write, so a policy
change applies to connected devices from their next request. A refused PUBLISH or SUBSCRIBE
ends a 3.1.1 connection (AWS IoT's answer); MQTT 5 gets PUBACK/SUBACK 0x87; a refused Receive
drops the copy, counted as not authorised.

A certificate that stops being ACTIVE (UpdateCertificate, DeleteCertificate) or whose CA is
deactivated (UpdateCACertificate) closes its connections (MQTT 5: DISCONNECT 0x98), without
their Wills: their right to publish went with the certificate (``certificate_changed``,
``ca_changed``, told by the identity service on the loop).

SigV4-signed WebSocket URLs (``auth/signed_url.py``) give a ``SignedKey``: the client acts in
the key's account with no policy, as the key's own HTTP calls do (``sign_in_key``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..broker.auth import ClientCertificate, Decision, SignedKey
from ..identity.arns import account_number
from ..identity.models import CAStatus, CertificateStatus, SignInRecord
from ..identity.policy_eval import (
    CERTIFICATE_ATTRIBUTES,
    Action,
    CompiledPolicy,
    Grants,
    PolicyError,
    compile_policy,
)
from ..identity.service import IdentityService
from ..mqtt.packets import Connect
from ..mqtt.types import ReasonCode
from ..registry.ids import wall_clock_ms

if TYPE_CHECKING:
    from ..broker.broker import Broker

__all__ = ["AwsDevice", "AwsDevices", "KeyClient"]

log = logging.getLogger("thinghub.auth")

# Compiled documents kept (by text): past it the cache starts again.
_COMPILED_LIMIT = 4096
_THING_ATTRIBUTE = "iot:Connection.Thing.Attributes["
_CERTIFICATE_PREFIX = "iot:Certificate."
# AWS IoT leaves a certificate variable unreplaced when its value holds one of these, or is
# longer than 1024 characters ("X.509 Certificate policy variable limitations").
_WILDCARDS = frozenset("*$+?#")
_MAX_CERTIFICATE_VALUE = 1024
_NAME_OIDS: Mapping[str, x509.ObjectIdentifier] = {
    "CommonName": NameOID.COMMON_NAME,
    "Country": NameOID.COUNTRY_NAME,
    "DistinguishedNameQualifier": NameOID.DN_QUALIFIER,
    "GenerationQualifier": NameOID.GENERATION_QUALIFIER,
    "GivenName": NameOID.GIVEN_NAME,
    "Initials": NameOID.INITIALS,
    "Locality": NameOID.LOCALITY_NAME,
    "Organization": NameOID.ORGANIZATION_NAME,
    "OrganizationalUnit": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "Pseudonym": NameOID.PSEUDONYM,
    "SerialNumber": NameOID.SERIAL_NUMBER,
    "State": NameOID.STATE_OR_PROVINCE_NAME,
    "Surname": NameOID.SURNAME,
    "Title": NameOID.TITLE,
}
assert set(_NAME_OIDS) == CERTIFICATE_ATTRIBUTES


@dataclass(frozen=True, slots=True)
class KeyClient:
    """A client signed in with an access key's signed WebSocket URL (``ClientInfo.subject``):
    it acts in the key's account, allowed everything there."""

    account_id: str
    access_key_id: str


class _Principal:
    """A certificate's sign-in record as cached: the record, its compiled policies, and what
    its connections' variables read of the thing and the certificate (filled on first use)."""

    __slots__ = ("_fields", "attributes", "generation", "policies", "record")

    def __init__(
        self, record: SignInRecord, policies: tuple[CompiledPolicy, ...], generation: int
    ) -> None:
        self.record = record
        self.policies = policies
        self.generation = generation
        # Thing attributes by thing name (None: no such thing), read when a policy needs them.
        self.attributes: dict[str, Mapping[str, str] | None] = {}
        self._fields: dict[str, str] | None = None

    def certificate_fields(self) -> dict[str, str]:
        """``iot:Certificate.*`` variable values of the certificate (parsed once)."""
        fields = self._fields
        if fields is None:
            fields = self._fields = _certificate_fields(self.record.certificate.pem)
        return fields


class AwsDevice:
    """One connection signed in with a client certificate: who it is (``ClientInfo.subject``)
    and what its policies let it do (``ClientInfo.policy``, ``broker/auth.py``)."""

    __slots__ = (
        "_devices",
        "_generation",
        "_grants",
        "_publish",
        "_receive",
        "_subscribe",
        "account_id",
        "ca_certificate_id",
        "certificate_id",
        "client_id",
        "thing_name",
    )

    #: AWS IoT ends a 3.1.1 connection that publishes or subscribes where it may not
    closes_on_denial = True

    def __init__(
        self,
        devices: AwsDevices,
        principal: _Principal,
        client_id: str,
        grants: Grants,
        thing_name: str | None,
    ) -> None:
        self._devices = devices
        record = principal.record
        self.account_id = record.account_id
        self.certificate_id = record.certificate.certificate_id
        self.ca_certificate_id = record.certificate.ca_certificate_id
        self.client_id = client_id
        self.thing_name = thing_name
        self._grants = grants
        self._generation = principal.generation
        self._publish: dict[str, bool] = {}
        self._subscribe: dict[str, bool] = {}
        self._receive: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"<AwsDevice {self.client_id!r} certificate {self.certificate_id[:12]}>"

    def may_publish(self, topic: str) -> bool:
        return self._allows(self._publish, Action.PUBLISH, topic)

    def may_subscribe(self, topic_filter: str) -> bool:
        return self._allows(self._subscribe, Action.SUBSCRIBE, topic_filter)

    def may_receive(self, topic: str) -> bool:
        return self._allows(self._receive, Action.RECEIVE, topic)

    def may_retain(self, topic: str) -> bool:
        if self._generation != self._devices.changes.grants:
            self._refresh()
        return self._grants.allows(Action.RETAIN_PUBLISH, topic)

    def _allows(self, answers: dict[str, bool], action: Action, name: str) -> bool:
        if self._generation != self._devices.changes.grants:
            self._refresh()
        found = answers.get(name)
        if found is None:
            if len(answers) >= self._devices.topic_cache:
                answers.clear()
            found = answers[name] = self._grants.allows(action, name)
        return found

    def _refresh(self) -> None:
        """An identity write committed since the answers were worked out: the policies are
        read again (through the sign-in cache) and the answers start over."""
        devices = self._devices
        principal = devices.principal(self.certificate_id)
        self._publish.clear()
        self._subscribe.clear()
        self._receive.clear()
        if principal is None or devices.refusal(principal, signing_in=False) is not None:
            # Gone or no longer usable: nothing is allowed until the connection is closed
            # (certificate_changed closes it on the loop).
            self._generation = devices.changes.grants
            self._grants = Grants((), lambda _name: None, "")
            return
        self._generation = principal.generation
        self._grants, _thing = devices.grants(principal, self.client_id)


class AwsDevices:
    """The sign-in cache, the policy compiler's cache, and the connections by certificate."""

    def __init__(
        self,
        identity: IdentityService,
        *,
        cache_size: int = 100_000,
        topic_cache: int = 256,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._identity = identity
        self._reader = identity.reader
        self.changes = identity.changes
        self.topic_cache = topic_cache
        self._cache_size = cache_size
        self._clock_ms = clock_ms
        self._principals: dict[str, _Principal] = {}
        self._compiled: dict[str, CompiledPolicy] = {}
        # The open connections of each certificate, to close when it is revoked.
        self._connections: dict[str, set[AwsDevice]] = {}
        self._broker: Broker | None = None
        identity.watch_certificates(self.certificate_changed)
        identity.changes.watch_cas(self.ca_changed)

    def attach(self, broker: Broker) -> None:
        self._broker = broker

    # ------------------------------------------------------------------ sign-in

    def sign_in(self, connect: Connect, peer: str, certificate: ClientCertificate) -> Decision:
        certificate_id = hashlib.sha256(certificate.der).hexdigest()
        principal = self.principal(certificate_id)
        if principal is None:
            return _refused(peer, certificate_id, "the client certificate is not registered")
        refusal = self.refusal(principal)
        if refusal is not None:
            return _refused(peer, certificate_id, refusal)
        client_id = connect.client_id
        grants, thing_name = self.grants(principal, client_id)
        if not grants.allows(Action.CONNECT, client_id):
            return _refused(
                peer, certificate_id, f"no policy allows iot:Connect for client id {client_id!r}"
            )
        device = AwsDevice(self, principal, client_id, grants, thing_name)
        return Decision(True, account=principal.record.account_id, subject=device, policy=device)

    def sign_in_key(self, connect: Connect, peer: str, key: SignedKey) -> Decision:
        return Decision(
            True, account=key.account, subject=KeyClient(key.account, key.access_key_id)
        )

    def cached(self, certificate: ClientCertificate) -> bool:
        """Whether the certificate's sign-in record is cached and current: while a shared
        registry is out of reach its copy takes no changes, so such a record is as good as
        any other node's (auth/device_watch.py, ``RegistrySignInGate``)."""
        cached = self._principals.get(hashlib.sha256(certificate.der).hexdigest())
        return cached is not None and cached.generation == self.changes.grants

    def principal(self, certificate_id: str) -> _Principal | None:
        """The certificate's sign-in record, cached while no identity write has committed
        since it was read (None: no account holds it)."""
        changes = self.changes
        cached = self._principals.get(certificate_id)
        if cached is not None and cached.generation == changes.grants:
            return cached
        # Read the counter before the record: a write committing in between makes the entry
        # stale at once rather than current with old contents.
        generation = changes.grants
        record = self._reader.sign_in(certificate_id)
        cache = self._principals
        if record is None:
            cache.pop(certificate_id, None)
            return None
        principal = _Principal(
            record, tuple(self._compile(p.document) for p in record.policies), generation
        )
        if certificate_id not in cache and len(cache) >= self._cache_size:
            del cache[next(iter(cache))]  # the oldest read
        cache[certificate_id] = principal
        return principal

    def refusal(self, principal: _Principal, *, signing_in: bool = True) -> str | None:
        """Why the certificate cannot sign in now (``signing_in``), or keep its connections
        (its status, its CA's: a connection outlives its certificate's validity period, as on
        AWS IoT, which checks it in the TLS handshake), or None."""
        record = principal.record
        certificate = record.certificate
        if certificate.status is not CertificateStatus.ACTIVE:
            return f"the certificate is {certificate.status.value}"
        now = self._clock_ms()
        if signing_in and now < certificate.not_before:
            return "the certificate is not valid yet"
        if signing_in and now > certificate.not_after:
            return "the certificate has expired"
        if record.ca_status is not None and record.ca_status is not CAStatus.ACTIVE:
            return "the CA certificate that signed it is not ACTIVE"
        return None

    def grants(self, principal: _Principal, client_id: str) -> tuple[Grants, str | None]:
        """The certificate's policies resolved for a connection with ``client_id``, and the
        thing the connection is (the one the certificate is attached to exclusively, else the
        attached thing named like the client id, else none)."""
        record = principal.record
        thing_name = record.exclusive_thing
        if thing_name is None and client_id in record.things:
            thing_name = client_id

        def lookup(name: str) -> str | None:
            if name == "iot:ClientId":
                return client_id
            if name == "iot:Connection.Thing.ThingName":
                return thing_name
            if name == "iot:Connection.Thing.IsAttached":
                return "false" if thing_name is None else "true"
            if name.startswith(_THING_ATTRIBUTE):
                attributes = self._attributes(principal, thing_name)
                return (
                    None if attributes is None else attributes.get(name[len(_THING_ATTRIBUTE) : -1])
                )
            if name.startswith(_CERTIFICATE_PREFIX):
                return principal.certificate_fields().get(name)
            return None  # iot:Connection.Thing.ThingTypeName: the hub has no thing types

        region = self._identity.region
        prefix = f"arn:aws:iot:{region}:{account_number(record.account_id)}:"
        return Grants(principal.policies, lookup, prefix), thing_name

    def _attributes(
        self, principal: _Principal, thing_name: str | None
    ) -> Mapping[str, str] | None:
        if thing_name is None:
            return None
        cache = principal.attributes
        if thing_name not in cache:
            thing = self._reader.thing(principal.record.account_id, thing_name)
            cache[thing_name] = None if thing is None else thing.attributes
        return cache[thing_name]

    def _compile(self, document: str) -> CompiledPolicy:
        compiled = self._compiled.get(document)
        if compiled is None:
            try:
                compiled = compile_policy(document)
            except PolicyError as error:
                # Documents are checked when stored; one that is not a policy grants nothing.
                log.warning(
                    "a stored policy document does not compile (%s): it grants nothing", error
                )
                compiled = CompiledPolicy((), frozenset())
            if compiled.unsupported:
                log.info(
                    "%d policy statements with conditions the hub does not evaluate do not apply",
                    compiled.unsupported,
                )
            if len(self._compiled) >= _COMPILED_LIMIT:
                self._compiled.clear()
            self._compiled[document] = compiled
        return compiled

    # ------------------------------------------------------------------ connections

    def connected(self, device: AwsDevice, client_id: str) -> None:
        """The device's CONNECT was accepted (``client_id``: the session's, assigned if it
        sent none)."""
        device.client_id = client_id
        self._connections.setdefault(device.certificate_id, set()).add(device)

    def disconnected(self, device: AwsDevice) -> None:
        devices = self._connections.get(device.certificate_id)
        if devices is not None:
            devices.discard(device)
            if not devices:
                del self._connections[device.certificate_id]

    def certificate_changed(self, account_id: str, certificate_id: str) -> None:
        """A certificate's status changed or it was deleted (committed; on the loop)."""
        if certificate_id not in self._connections:
            return
        principal = self.principal(certificate_id)
        reason = (
            "the certificate was deleted"
            if principal is None
            else self.refusal(principal, signing_in=False)
        )
        if reason is not None:
            for device in list(self._connections.get(certificate_id, ())):
                self._close(device, reason)

    def recheck_connections(self) -> None:
        """Every connected certificate checked again (on the loop): after a shared registry
        was copied whole, what changed while its changes were not heard is not known
        (registry/pg_store.py), and a certificate revoked meanwhile must not stay connected."""
        for certificate_id, devices in list(self._connections.items()):
            if devices:
                self.certificate_changed(next(iter(devices)).account_id, certificate_id)

    def ca_changed(self, account_id: str, ca_certificate_id: str) -> None:
        """A registered CA certificate changed (committed; on the loop)."""
        ca = self._reader.ca_certificate(account_id, ca_certificate_id)
        if ca is not None and ca.status is CAStatus.ACTIVE:
            return
        for devices in list(self._connections.values()):
            for device in list(devices):
                if (
                    device.account_id == account_id
                    and device.ca_certificate_id == ca_certificate_id
                ):
                    self._close(device, "the CA certificate that signed it is not ACTIVE")

    def _close(self, device: AwsDevice, reason: str) -> None:
        """Close the device's connection (v5 DISCONNECT 0x98) without its Will; its session
        stays, as after any disconnection."""
        broker = self._broker
        self.disconnected(device)
        if broker is None:
            return
        session = broker.session_of(device.account_id, device.client_id)
        client = None if session is None else session.client
        if client is None or client.info is None or client.info.subject is not device:
            return  # that connection has ended or been taken over already
        log.info("closing %s: %s", device.client_id, reason)
        broker.disconnect_client(
            device.account_id, device.client_id, clean_session=False, prevent_will=True
        )


def _refused(peer: str, certificate_id: str, reason: str) -> Decision:
    log.info("certificate sign-in refused from %s (%s): %s", peer, certificate_id[:16], reason)
    return Decision.deny(ReasonCode.NOT_AUTHORIZED, reason)


def _certificate_fields(pem: str) -> dict[str, str]:
    """The ``iot:Certificate.*`` variables of a certificate: the first value of each subject
    and issuer attribute, and the serial number (decimal), leaving out what AWS IoT does not
    substitute (wildcard characters, more than 1024 characters)."""
    certificate = x509.load_pem_x509_certificate(pem.encode())
    fields: dict[str, str] = {"iot:Certificate.SerialNumber": str(certificate.serial_number)}
    for side, name in (("Subject", certificate.subject), ("Issuer", certificate.issuer)):
        for attribute, oid in _NAME_OIDS.items():
            values = name.get_attributes_for_oid(oid)
            if values:
                value = values[0].value
                text = value if isinstance(value, str) else value.decode(errors="replace")
                fields[f"{_CERTIFICATE_PREFIX}{side}.{attribute}"] = text
    return {
        k: v
        for k, v in fields.items()
        if len(v) <= _MAX_CERTIFICATE_VALUE and not _WILDCARDS.intersection(v)
    }
