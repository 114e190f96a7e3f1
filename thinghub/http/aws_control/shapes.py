"""The identity records as the ``iot`` model's output shapes. Timestamps (``DateType``) are
epoch seconds, what rest-json's default ``unixTimestamp`` format is for botocore."""

from __future__ import annotations

from ...identity.arns import Arns, account_number
from ...identity.models import CACertificate, Certificate, Policy, PolicyVersion, Thing

__all__ = [
    "ca_description",
    "ca_summary",
    "certificate_description",
    "certificate_summary",
    "policy_full",
    "policy_summary",
    "policy_version_summary",
    "seconds",
    "thing_attribute",
    "thing_description",
]


def seconds(ms: int) -> float:
    return ms / 1000


def thing_attribute(arns: Arns, thing: Thing) -> dict[str, object]:
    """``ThingAttribute`` (ListThings)."""
    shape: dict[str, object] = {
        "thingName": thing.name,
        "thingArn": arns.thing(thing.account_id, thing.name),
        "attributes": dict(thing.attributes),
        "version": thing.version,
    }
    if thing.type_name is not None:
        shape["thingTypeName"] = thing.type_name
    return shape


def thing_description(arns: Arns, thing: Thing) -> dict[str, object]:
    """DescribeThing's output; a thing's default client id is its name (AWS IoT's rule)."""
    return {
        **thing_attribute(arns, thing),
        "defaultClientId": thing.name,
        "thingId": thing.thing_id,
    }


def certificate_summary(arns: Arns, certificate: Certificate) -> dict[str, object]:
    """``Certificate`` (ListCertificates, ListCertificatesByCA)."""
    return {
        "certificateArn": arns.certificate(certificate.account_id, certificate.certificate_id),
        "certificateId": certificate.certificate_id,
        "status": certificate.status.value,
        "certificateMode": certificate.mode.value,
        "creationDate": seconds(certificate.created_at),
    }


def certificate_description(arns: Arns, certificate: Certificate) -> dict[str, object]:
    """``CertificateDescription`` (DescribeCertificate)."""
    shape: dict[str, object] = {
        **certificate_summary(arns, certificate),
        "certificatePem": certificate.pem,
        "ownedBy": account_number(certificate.account_id),
        "lastModifiedDate": seconds(certificate.modified_at),
        "customerVersion": certificate.customer_version,
        "transferData": {},
        "generationId": str(certificate.generation),
        "validity": {
            "notBefore": seconds(certificate.not_before),
            "notAfter": seconds(certificate.not_after),
        },
    }
    if certificate.ca_certificate_id is not None:
        shape["caCertificateId"] = certificate.ca_certificate_id
    return shape


def ca_summary(arns: Arns, ca: CACertificate) -> dict[str, object]:
    """``CACertificate`` (ListCACertificates)."""
    return {
        "certificateArn": arns.ca_certificate(ca.account_id, ca.certificate_id),
        "certificateId": ca.certificate_id,
        "status": ca.status.value,
        "creationDate": seconds(ca.created_at),
    }


def ca_description(arns: Arns, ca: CACertificate) -> dict[str, object]:
    """``CACertificateDescription`` (DescribeCACertificate)."""
    return {
        **ca_summary(arns, ca),
        "certificatePem": ca.pem,
        "ownedBy": account_number(ca.account_id),
        "autoRegistrationStatus": ca.auto_registration,
        "lastModifiedDate": seconds(ca.modified_at),
        "customerVersion": ca.customer_version,
        "generationId": str(ca.generation),
        "validity": {"notBefore": seconds(ca.not_before), "notAfter": seconds(ca.not_after)},
        "certificateMode": ca.mode.value,
    }


def policy_summary(arns: Arns, account_id: str, name: str) -> dict[str, object]:
    """``Policy`` (ListPolicies, ListAttachedPolicies)."""
    return {"policyName": name, "policyArn": arns.policy(account_id, name)}


def policy_full(arns: Arns, policy: Policy) -> dict[str, object]:
    """GetPolicy's output."""
    return {
        **policy_summary(arns, policy.account_id, policy.name),
        "policyDocument": policy.document,
        "defaultVersionId": str(policy.default_version),
        "creationDate": seconds(policy.created_at),
        "lastModifiedDate": seconds(policy.modified_at),
        "generationId": str(policy.generation),
    }


def policy_version_summary(version: PolicyVersion) -> dict[str, object]:
    """``PolicyVersion`` (ListPolicyVersions)."""
    return {
        "versionId": str(version.version_id),
        "isDefaultVersion": version.is_default,
        "createDate": seconds(version.created_at),
    }
