"""The identity store's records: frozen values read from ``registry.db`` (schema version 3,
``thinghub/registry/store.py``) and handed to the edges. Times are epoch milliseconds (UTC).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

__all__ = [
    "CACertificate",
    "CAStatus",
    "Certificate",
    "CertificateMode",
    "CertificateOrigin",
    "CertificateStatus",
    "Page",
    "Policy",
    "PolicyVersion",
    "PrincipalIdentity",
    "PrincipalPolicy",
    "SignInRecord",
    "Thing",
]

T = TypeVar("T")


class CertificateStatus(StrEnum):
    """A device certificate's status (AWS IoT ``CertificateStatus``). Only ACTIVE signs in."""

    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    REVOKED = "REVOKED"
    PENDING_TRANSFER = "PENDING_TRANSFER"
    REGISTER_INACTIVE = "REGISTER_INACTIVE"
    PENDING_ACTIVATION = "PENDING_ACTIVATION"


class CAStatus(StrEnum):
    """A registered CA certificate's status (AWS IoT ``CACertificateStatus``)."""

    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"


class CertificateMode(StrEnum):
    """``DEFAULT``: the certificate's issuer is known (the hub's CA or a registered one).
    ``SNI_ONLY``: registered without its CA (RegisterCertificateWithoutCA); AWS IoT requires
    such devices to send SNI."""

    DEFAULT = "DEFAULT"
    SNI_ONLY = "SNI_ONLY"


class CertificateOrigin(StrEnum):
    """Who vouches for a device certificate, and so which chain the TLS layer must check."""

    #: signed by the hub's own CA (CreateKeysAndCertificate, CreateCertificateFromCsr)
    HUB = "hub"
    #: signed by a CA registered in the account (RegisterCertificate; ``ca_certificate_id``)
    CA = "ca"
    #: registered as is, without its issuer (RegisterCertificateWithoutCA)
    NO_CA = "no-ca"


@dataclass(frozen=True, slots=True)
class Thing:
    account_id: str
    name: str
    #: a UUID, as AWS IoT's thingId
    thing_id: str
    type_name: str | None
    attributes: Mapping[str, str]
    #: starts at 1, raised by every UpdateThing
    version: int
    created_at: int
    modified_at: int


@dataclass(frozen=True, slots=True)
class Certificate:
    """A device certificate. ``certificate_id`` is the SHA-256 of its DER, lowercase hex; it is
    unique across the hub, so a TLS client certificate names one account."""

    account_id: str
    certificate_id: str
    status: CertificateStatus
    origin: CertificateOrigin
    #: the registered CA that signed it (origin CA), else None
    ca_certificate_id: str | None
    mode: CertificateMode
    #: the certificate, PEM, normalised (one certificate, re-encoded)
    pem: str
    not_before: int
    not_after: int
    created_at: int
    modified_at: int
    customer_version: int
    generation: int
    #: creation order within the hub (listing order)
    seq: int


@dataclass(frozen=True, slots=True)
class CACertificate:
    account_id: str
    certificate_id: str
    status: CAStatus
    #: AWS IoT's autoRegistrationStatus: ENABLE or DISABLE
    auto_registration: str
    mode: CertificateMode
    #: the RegistrationConfig given (templateBody, templateName, roleArn), or None
    registration_config: Mapping[str, str] | None
    pem: str
    not_before: int
    not_after: int
    created_at: int
    modified_at: int
    customer_version: int
    generation: int
    seq: int


@dataclass(frozen=True, slots=True)
class Policy:
    account_id: str
    name: str
    default_version: int
    #: the default version's document, as given (JSON text)
    document: str
    created_at: int
    modified_at: int
    generation: int
    seq: int


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    policy_name: str
    version_id: int
    document: str
    is_default: bool
    created_at: int


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing and the sort key to resume after (None: the last page)."""

    items: tuple[T, ...]
    next_key: str | None


@dataclass(frozen=True, slots=True)
class PrincipalPolicy:
    """A policy attached to a principal, with its default version's document."""

    name: str
    version_id: int
    document: str


@dataclass(frozen=True, slots=True)
class PrincipalIdentity:
    """What the TLS sign-in needs of a client certificate (``IdentityReader.certificate``)."""

    certificate: Certificate
    #: names of the things the certificate is attached to
    things: tuple[str, ...]
    #: the policies attached to it, with their default documents
    policies: tuple[PrincipalPolicy, ...]

    @property
    def account_id(self) -> str:
        return self.certificate.account_id

    @property
    def active(self) -> bool:
        return self.certificate.status is CertificateStatus.ACTIVE


@dataclass(frozen=True, slots=True)
class SignInRecord:
    """What a TLS sign-in reads of a client certificate, in one snapshot
    (``IdentityReader.sign_in``)."""

    certificate: Certificate
    #: names of the things the certificate is attached to
    things: tuple[str, ...]
    #: the thing it is attached to exclusively (EXCLUSIVE_THING), if any
    exclusive_thing: str | None
    #: the policies attached to it, with their default documents
    policies: tuple[PrincipalPolicy, ...]
    #: the status of the registered CA that signed it (origin CA), else None
    ca_status: CAStatus | None

    @property
    def account_id(self) -> str:
        return self.certificate.account_id
