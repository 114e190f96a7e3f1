"""The read interface the TLS sign-in and policy evaluation use (no HTTP, no writes).

::

    reader = hub.identity.reader
    found = reader.certificate(certificate_id)      # by SHA-256 of the DER, hex; any account
    if found is None or not found.active: refuse
    found.account_id, found.things, found.policies  # policies: name, version, document
    reader.policies(account_id, certificate_id)     # just the default documents
    reader.thing(account_id, name)                  # Thing with attributes, or None
    reader.ca_certificate(account_id, ca_id)        # a registered CA (status, PEM)
    reader.registered_cas(issuer)                   # ACTIVE CAs of every account with that subject
    reader.sign_in(certificate_id)                  # the above a TLS sign-in needs, one snapshot
    reader.trust_anchors()                          # PEMs the TLS layer accepts client certs of

Each call is one read snapshot on the calling thread's read connection (``RegistryStore.read``:
on the event loop it waits for no writer). Nothing is cached here: a caller that needs a
cache (a sign-in storm) keeps one and drops entries when ``IdentityService`` reports a
certificate's status change.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from cryptography import x509

from ..registry.store import RegistryStore
from .models import (
    CACertificate,
    CAStatus,
    Certificate,
    CertificateOrigin,
    CertificateStatus,
    PrincipalIdentity,
    PrincipalPolicy,
    SignInRecord,
    Thing,
)
from .policies import principal_policies
from .store import ca_certificate_row, certificate_row
from .things import thing_of
from .x509 import subject_hash

__all__ = ["IdentityReader"]


class IdentityReader:
    def __init__(self, store: RegistryStore) -> None:
        self._store = store

    def certificate(self, certificate_id: str) -> PrincipalIdentity | None:
        """The device certificate with this id (lowercase hex), whichever account holds it,
        with the things and policies attached to it; None when none is registered."""
        with self._store.read() as conn:
            held = _held(conn, certificate_id)
        if held is None:
            return None
        return PrincipalIdentity(
            certificate=held.certificate,
            things=tuple(name for name, _exclusive in held.things),
            policies=held.policies,
        )

    def policies(self, account_id: str, certificate_id: str) -> tuple[PrincipalPolicy, ...]:
        """The default documents of the policies attached to the certificate in the account
        (empty when there are none, or no such certificate)."""
        with self._store.read() as conn:
            return tuple(principal_policies(conn, account_id, certificate_id.lower()))

    def thing(self, account_id: str, name: str) -> Thing | None:
        with self._store.read() as conn:
            return thing_of(conn, account_id, name)

    def ca_certificate(self, account_id: str, certificate_id: str) -> CACertificate | None:
        with self._store.read() as conn:
            row = conn.execute(
                "SELECT * FROM iot_ca_certificates WHERE account_id = ? AND certificate_id = ?",
                (account_id, certificate_id.lower()),
            ).fetchone()
        return None if row is None else ca_certificate_row(row)

    def registered_cas(self, issuer: x509.Name) -> tuple[CACertificate, ...]:
        """The ACTIVE registered CA certificates, in any account, whose subject is ``issuer``
        (for certificates a device presents before they are registered)."""
        with self._store.read() as conn:
            rows = conn.execute(
                "SELECT * FROM iot_ca_certificates WHERE subject_hash = ? AND status = ? "
                "ORDER BY seq",
                (subject_hash(issuer), CAStatus.ACTIVE.value),
            ).fetchall()
        return tuple(ca_certificate_row(r) for r in rows)

    def sign_in(self, certificate_id: str) -> SignInRecord | None:
        """Everything a TLS sign-in needs of a client certificate (any account), read in one
        snapshot: the certificate, its things (and the exclusive one), its policies with
        their default documents, and the status of the CA that signed it. None when no
        account holds it."""
        with self._store.read() as conn:
            held = _held(conn, certificate_id)
            if held is None:
                return None
            certificate = held.certificate
            ca_status = None
            if certificate.ca_certificate_id is not None:
                ca = conn.execute(
                    "SELECT status FROM iot_ca_certificates WHERE account_id = ? AND "
                    "certificate_id = ?",
                    (certificate.account_id, certificate.ca_certificate_id),
                ).fetchone()
                # A CA that is gone is as good as an inactive one.
                ca_status = CAStatus.INACTIVE if ca is None else CAStatus(ca[0])
        exclusive = [name for name, exclusive in held.things if exclusive]
        return SignInRecord(
            certificate=certificate,
            things=tuple(name for name, _exclusive in held.things),
            exclusive_thing=exclusive[0] if exclusive else None,
            policies=held.policies,
            ca_status=ca_status,
        )

    def trust_anchors(self) -> tuple[str, ...]:
        """The PEMs of the certificates the TLS layer takes client certificates from: every
        ACTIVE registered CA of every account, and every ACTIVE certificate registered without
        its CA (its own anchor), each once."""
        with self._store.read() as conn:
            cas = conn.execute(
                "SELECT DISTINCT pem FROM iot_ca_certificates WHERE status = ? ORDER BY pem",
                (CAStatus.ACTIVE.value,),
            ).fetchall()
            alone = conn.execute(
                "SELECT pem FROM iot_certificates WHERE origin = ? AND status = ? ORDER BY seq",
                (CertificateOrigin.NO_CA.value, CertificateStatus.ACTIVE.value),
            ).fetchall()
        return tuple(str(r[0]) for r in (*cas, *alone))


@dataclass(frozen=True, slots=True)
class _Held:
    """A device certificate and what is attached to it, as one snapshot read them."""

    certificate: Certificate
    #: (thing name, attached exclusively), in name order
    things: tuple[tuple[str, bool], ...]
    policies: tuple[PrincipalPolicy, ...]


def _held(conn: sqlite3.Connection, certificate_id: str) -> _Held | None:
    """The device certificate with this id (any case), whichever account holds it, with its
    things and policies; None when no account holds it."""
    row = conn.execute(
        "SELECT * FROM iot_certificates WHERE certificate_id = ?",
        (certificate_id.lower(),),
    ).fetchone()
    if row is None:
        return None
    certificate = certificate_row(row)
    account = certificate.account_id
    things = conn.execute(
        "SELECT thing_name, exclusive FROM iot_thing_principals WHERE account_id = ? "
        "AND certificate_id = ? ORDER BY thing_name",
        (account, certificate.certificate_id),
    ).fetchall()
    return _Held(
        certificate=certificate,
        things=tuple((str(r[0]), bool(r[1])) for r in things),
        policies=tuple(principal_policies(conn, account, certificate.certificate_id)),
    )
