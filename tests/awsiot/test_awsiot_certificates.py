"""Device certificates through boto3's ``iot`` client: made by the hub's CA (a real key pair,
or from a CSR made with ``cryptography``), registered without a CA, described, listed with the
paginator, their status changed and the certificate deleted under AWS IoT's rules; bad PEM and
CSRs refused with nothing stored."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import x509util
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from iothub import IotHub, refused

from thinghub.identity.arns import account_number
from thinghub.registry.models import AccessKey


def _hub_ca(iot_hub: IotHub) -> x509.Certificate:
    return x509util.load((iot_hub.data_dir / "ca" / "ca.pem").read_text())


def test_keys_and_certificate_verify_against_the_hub_ca(
    iot_hub: IotHub, tenant: tuple[AccessKey, Any]
) -> None:
    key, iot = tenant
    made = iot.create_keys_and_certificate(setAsActive=True)
    certificate = x509util.load(made["certificatePem"])
    certificate.verify_directly_issued_by(_hub_ca(iot_hub))  # raises if not
    der = certificate.public_bytes(serialization.Encoding.DER)
    assert made["certificateId"] == hashlib.sha256(der).hexdigest()
    assert made["certificateArn"] == (
        f"arn:aws:iot:us-east-1:{account_number(key.account_id)}:cert/{made['certificateId']}"
    )
    private = serialization.load_pem_private_key(
        made["keyPair"]["PrivateKey"].encode(), password=None
    )
    public = serialization.load_pem_public_key(made["keyPair"]["PublicKey"].encode())
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.PEM
    assert private.public_key().public_bytes(enc, spki) == public.public_bytes(enc, spki)
    assert certificate.public_key().public_bytes(enc, spki) == public.public_bytes(enc, spki)
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in usage
    described = iot.describe_certificate(certificateId=made["certificateId"])
    description = described["certificateDescription"]
    assert description["status"] == "ACTIVE"
    assert description["certificatePem"] == made["certificatePem"]
    assert description["ownedBy"] == account_number(key.account_id)
    assert description["certificateMode"] == "DEFAULT"
    assert "caCertificateId" not in description
    validity = description["validity"]
    assert validity["notBefore"] < datetime.now(UTC) < validity["notAfter"]


def test_inactive_unless_set_as_active(iot: Any) -> None:
    made = iot.create_keys_and_certificate()
    described = iot.describe_certificate(certificateId=made["certificateId"])
    assert described["certificateDescription"]["status"] == "INACTIVE"


@pytest.mark.parametrize("make_key", [x509util.ec_key, x509util.rsa_key], ids=["ec", "rsa"])
def test_certificate_from_csr(iot_hub: IotHub, iot: Any, make_key: Any) -> None:
    key = make_key()
    made = iot.create_certificate_from_csr(
        certificateSigningRequest=x509util.csr(key, "sensor-42"), setAsActive=True
    )
    certificate = x509util.load(made["certificatePem"])
    certificate.verify_directly_issued_by(_hub_ca(iot_hub))
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.PEM
    assert certificate.public_key().public_bytes(enc, spki) == key.public_key().public_bytes(
        enc, spki
    )
    assert certificate.subject == x509util.name("sensor-42")
    status = iot.describe_certificate(certificateId=made["certificateId"])
    assert status["certificateDescription"]["status"] == "ACTIVE"


def _tampered_csr() -> str:
    """A CSR whose signature no longer matches its body (one byte of the body changed)."""
    text = x509util.csr(x509util.ec_key(), "aaaaaaaa")
    request = x509.load_pem_x509_csr(text.encode())
    der = bytearray(request.public_bytes(serialization.Encoding.DER))
    index = der.index(b"aaaaaaaa")
    der[index] = ord("b")
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(
    "csr",
    [
        "not a csr",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        "x" * 5000,
        pytest.param(None, id="tampered"),
        pytest.param("ed25519", id="unsupported-key"),
    ],
)
def test_bad_csr_is_refused_and_nothing_stored(iot: Any, csr: str | None) -> None:
    if csr is None:
        csr = _tampered_csr()
    elif csr == "ed25519":
        request = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509util.name("ed"))
            .sign(ed25519.Ed25519PrivateKey.generate(), None)
        )
        csr = request.public_bytes(serialization.Encoding.PEM).decode()
    refused(
        "InvalidRequestException",
        400,
        iot.create_certificate_from_csr,
        certificateSigningRequest=csr,
    )
    assert iot.list_certificates()["certificates"] == []


def test_list_certificates_paginates_in_creation_order(iot: Any) -> None:
    ids = [iot.create_keys_and_certificate()["certificateId"] for _ in range(7)]
    paginator = iot.get_paginator("list_certificates")
    pages = list(paginator.paginate(PaginationConfig={"PageSize": 3}))
    assert [len(p["certificates"]) for p in pages] == [3, 3, 1]
    newest_first = [c["certificateId"] for p in pages for c in p["certificates"]]
    assert newest_first == ids[::-1]
    ascending = paginator.paginate(ascendingOrder=True, PaginationConfig={"PageSize": 2})
    assert [c["certificateId"] for p in ascending for c in p["certificates"]] == ids
    first = pages[0]["certificates"][0]
    assert set(first) >= {"certificateArn", "certificateId", "status", "creationDate"}
    refused("InvalidRequestException", 400, iot.list_certificates, pageSize=251)


def test_update_status_rules(iot: Any) -> None:
    cert_id = iot.create_keys_and_certificate(setAsActive=True)["certificateId"]
    iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
    iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")  # idempotent
    iot.update_certificate(certificateId=cert_id, newStatus="ACTIVE")
    for internal in ("PENDING_TRANSFER", "PENDING_ACTIVATION"):
        refused(
            "InvalidRequestException",
            400,
            iot.update_certificate,
            certificateId=cert_id,
            newStatus=internal,
        )
    iot.update_certificate(certificateId=cert_id, newStatus="REVOKED")
    refused(
        "CertificateStateException",
        406,
        iot.update_certificate,
        certificateId=cert_id,
        newStatus="ACTIVE",
    )
    description = iot.describe_certificate(certificateId=cert_id)["certificateDescription"]
    assert description["status"] == "REVOKED"
    assert description["customerVersion"] == 4  # three changes; the repeat changed nothing
    refused(
        "ResourceNotFoundException",
        404,
        iot.update_certificate,
        certificateId="a" * 64,
        newStatus="ACTIVE",
    )
    refused("InvalidRequestException", 400, iot.describe_certificate, certificateId="z" * 64)


def test_delete_certificate_rules(iot: Any) -> None:
    made = iot.create_keys_and_certificate(setAsActive=True)
    cert_id, arn = made["certificateId"], made["certificateArn"]
    iot.create_thing(thingName="holder")
    iot.attach_thing_principal(thingName="holder", principal=arn)
    iot.create_policy(policyName="p", policyDocument=_ALLOW)
    iot.attach_policy(policyName="p", target=arn)
    refused("CertificateStateException", 406, iot.delete_certificate, certificateId=cert_id)
    iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
    refused("DeleteConflictException", 409, iot.delete_certificate, certificateId=cert_id)
    iot.detach_thing_principal(thingName="holder", principal=arn)
    # A policy still attached: refused, unless forced (which detaches it).
    refused("DeleteConflictException", 409, iot.delete_certificate, certificateId=cert_id)
    iot.delete_certificate(certificateId=cert_id, forceDelete=True)
    refused("ResourceNotFoundException", 404, iot.describe_certificate, certificateId=cert_id)
    assert iot.list_targets_for_policy(policyName="p")["targets"] == []
    iot.delete_policy(policyName="p")


def test_forced_delete_still_refused_while_attached_to_a_thing(iot: Any) -> None:
    made = iot.create_keys_and_certificate()
    iot.create_thing(thingName="keeper")
    iot.attach_thing_principal(thingName="keeper", principal=made["certificateArn"])
    refused(
        "DeleteConflictException",
        409,
        iot.delete_certificate,
        certificateId=made["certificateId"],
        forceDelete=True,
    )


def test_register_without_ca(iot: Any) -> None:
    key = x509util.ec_key()
    certificate = x509util.certificate("self-signed device", key)
    pem = x509util.pem(certificate)
    made = iot.register_certificate_without_ca(certificatePem=pem, status="ACTIVE")
    der = certificate.public_bytes(serialization.Encoding.DER)
    assert made["certificateId"] == hashlib.sha256(der).hexdigest()
    description = iot.describe_certificate(certificateId=made["certificateId"])[
        "certificateDescription"
    ]
    assert description["status"] == "ACTIVE"
    assert description["certificateMode"] == "SNI_ONLY"
    assert x509util.load(description["certificatePem"]) == certificate
    error = refused(
        "ResourceAlreadyExistsException",
        409,
        iot.register_certificate_without_ca,
        certificatePem=pem,
    )
    assert error["resourceId"] == made["certificateId"]


def test_a_certificate_belongs_to_one_account(
    iot_hub: IotHub, tenant: tuple[AccessKey, Any]
) -> None:
    _key, iot = tenant
    _other_key, other = iot_hub.tenant()
    pem = x509util.pem(x509util.certificate("shared", x509util.ec_key()))
    iot.register_certificate_without_ca(certificatePem=pem)
    error = refused(
        "ResourceAlreadyExistsException",
        409,
        other.register_certificate_without_ca,
        certificatePem=pem,
    )
    assert "resourceArn" not in error  # the other account's ARN is not given away
    assert other.list_certificates()["certificates"] == []


def _now() -> datetime:
    return datetime.now(UTC)


@pytest.mark.parametrize(
    ("pem", "code"),
    [
        ("garbage", "CertificateValidationException"),
        (
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            "CertificateValidationException",
        ),
        (
            x509util.pem(
                x509util.certificate(
                    "expired",
                    x509util.ec_key(),
                    not_before=_now() - timedelta(days=10),
                    not_after=_now() - timedelta(days=1),
                )
            ),
            "CertificateValidationException",
        ),
        (
            x509util.pem(
                x509util.certificate(
                    "future",
                    x509util.ec_key(),
                    not_before=_now() + timedelta(days=1),
                    not_after=_now() + timedelta(days=10),
                )
            ),
            "CertificateValidationException",
        ),
        (
            x509util.pem(x509util.certificate("small", x509util.rsa_key(1024))),
            "CertificateValidationException",
        ),
        (
            x509util.pem(x509util.certificate("secp224", ec.generate_private_key(ec.SECP224R1()))),
            "CertificateValidationException",
        ),
        ("x" * 70000, "InvalidRequestException"),
    ],
    ids=["garbage", "bad-base64", "expired", "not-yet-valid", "rsa-1024", "p224", "too-long"],
)
def test_bad_certificates_are_refused_and_nothing_stored(iot: Any, pem: str, code: str) -> None:
    refused(code, 400, iot.register_certificate_without_ca, certificatePem=pem)
    assert iot.list_certificates()["certificates"] == []


def test_two_certificates_in_one_pem_are_refused(iot: Any) -> None:
    one = x509util.pem(x509util.certificate("one", x509util.ec_key()))
    two = x509util.pem(x509util.certificate("two", x509util.ec_key()))
    refused(
        "CertificateValidationException",
        400,
        iot.register_certificate_without_ca,
        certificatePem=one + two,
    )


_ALLOW = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}],
    }
)
