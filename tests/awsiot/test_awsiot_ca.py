"""CA certificates through boto3's ``iot`` client: the registration code, a CA registered with
its verification certificate, device certificates registered under it (and refused when an
unregistered CA signed them), CA status and its effects, the CA listings and deletion."""

from __future__ import annotations

from typing import Any

import pytest
import x509util
from cryptography import x509
from iothub import IotHub, refused

from thinghub.registry.models import AccessKey


def _register_ca(
    iot: Any, subject: str = "Fleet CA", *, active: bool = True
) -> tuple[str, x509.Certificate, Any]:
    """A CA registered the way AWS IoT documents: a verification certificate whose CN is the
    registration code, signed by the CA's key. Its id, certificate and key."""
    ca_cert, ca_key = x509util.ca(subject)
    code = iot.get_registration_code()["registrationCode"]
    verification = x509util.certificate(code, x509util.ec_key(), issuer=(ca_cert, ca_key))
    made = iot.register_ca_certificate(
        caCertificate=x509util.pem(ca_cert),
        verificationCertificate=x509util.pem(verification),
        setAsActive=active,
    )
    return made["certificateId"], ca_cert, ca_key


def test_registration_code_is_stable_per_account(
    iot_hub: IotHub, tenant: tuple[AccessKey, Any]
) -> None:
    _key, iot = tenant
    code = iot.get_registration_code()["registrationCode"]
    assert len(code) == 64 and int(code, 16) >= 0
    assert iot.get_registration_code()["registrationCode"] == code
    _other_key, other = iot_hub.tenant()
    assert other.get_registration_code()["registrationCode"] != code


def test_register_ca_and_device_certificates(iot: Any) -> None:
    ca_id, ca_cert, ca_key = _register_ca(iot)
    described = iot.describe_ca_certificate(certificateId=ca_id)["certificateDescription"]
    assert described["status"] == "ACTIVE"
    assert described["certificateId"] == ca_id
    assert x509util.load(described["certificatePem"]) == ca_cert
    assert described["autoRegistrationStatus"] == "DISABLE"
    assert described["certificateArn"].endswith(f":cacert/{ca_id}")
    device = x509util.certificate("device-1", x509util.ec_key(), issuer=(ca_cert, ca_key))
    made = iot.register_certificate(certificatePem=x509util.pem(device), status="ACTIVE")
    description = iot.describe_certificate(certificateId=made["certificateId"])[
        "certificateDescription"
    ]
    assert description["caCertificateId"] == ca_id
    assert description["status"] == "ACTIVE"
    assert description["certificateMode"] == "DEFAULT"
    # setAsActive (deprecated) still works; the CA may be named explicitly too.
    second = x509util.certificate("device-2", x509util.rsa_key(), issuer=(ca_cert, ca_key))
    iot.register_certificate(
        certificatePem=x509util.pem(second),
        caCertificatePem=x509util.pem(ca_cert),
        setAsActive=True,
    )
    pages = list(
        iot.get_paginator("list_certificates_by_ca").paginate(
            caCertificateId=ca_id, PaginationConfig={"PageSize": 1}
        )
    )
    assert len(pages) == 2
    assert all(c["status"] == "ACTIVE" for p in pages for c in p["certificates"])
    refused(
        "ResourceAlreadyExistsException",
        409,
        iot.register_certificate,
        certificatePem=x509util.pem(device),
    )


def test_device_certificate_of_an_unregistered_ca_is_refused(iot: Any) -> None:
    _register_ca(iot, "Registered CA")
    stranger_cert, stranger_key = x509util.ca("Stranger CA")
    device = x509util.certificate("d", x509util.ec_key(), issuer=(stranger_cert, stranger_key))
    refused(
        "CertificateValidationException",
        400,
        iot.register_certificate,
        certificatePem=x509util.pem(device),
    )
    refused(
        "CertificateValidationException",
        400,
        iot.register_certificate,
        certificatePem=x509util.pem(device),
        caCertificatePem=x509util.pem(stranger_cert),
    )
    assert iot.list_certificates()["certificates"] == []


def test_same_subject_other_key_is_not_the_signer(iot: Any) -> None:
    _register_ca(iot, "Twin CA")
    impostor_cert, impostor_key = x509util.ca("Twin CA")  # same name, another key
    device = x509util.certificate("d", x509util.ec_key(), issuer=(impostor_cert, impostor_key))
    refused(
        "CertificateValidationException",
        400,
        iot.register_certificate,
        certificatePem=x509util.pem(device),
    )


def test_inactive_ca_refuses_registrations_until_activated(iot: Any) -> None:
    ca_id, ca_cert, ca_key = _register_ca(iot, active=False)
    device = x509util.certificate("d", x509util.ec_key(), issuer=(ca_cert, ca_key))
    refused(
        "CertificateStateException",
        406,
        iot.register_certificate,
        certificatePem=x509util.pem(device),
    )
    iot.update_ca_certificate(certificateId=ca_id, newStatus="ACTIVE")
    iot.register_certificate(certificatePem=x509util.pem(device))


def test_two_registered_cas_that_could_sign_must_be_told_apart(iot: Any) -> None:
    """Two CA certificates with the same subject and key (a CA re-issued): which one signed a
    device certificate is ambiguous, so it must be named (CertificateConflictException)."""
    ca_cert, ca_key = x509util.ca("Reissued CA")
    reissued = x509util.certificate("Reissued CA", ca_key, ca=True)
    code = iot.get_registration_code()["registrationCode"]
    for cert in (ca_cert, reissued):
        verification = x509util.certificate(code, x509util.ec_key(), issuer=(cert, ca_key))
        iot.register_ca_certificate(
            caCertificate=x509util.pem(cert),
            verificationCertificate=x509util.pem(verification),
            setAsActive=True,
        )
    device = x509util.certificate("d", x509util.ec_key(), issuer=(ca_cert, ca_key))
    refused(
        "CertificateConflictException",
        409,
        iot.register_certificate,
        certificatePem=x509util.pem(device),
    )
    iot.register_certificate(
        certificatePem=x509util.pem(device), caCertificatePem=x509util.pem(reissued)
    )


def test_verification_certificate_rules(iot: Any) -> None:
    ca_cert, ca_key = x509util.ca("Checked CA")
    code = iot.get_registration_code()["registrationCode"]
    wrong_cn = x509util.certificate("not-the-code", x509util.ec_key(), issuer=(ca_cert, ca_key))
    refused(
        "RegistrationCodeValidationException",
        400,
        iot.register_ca_certificate,
        caCertificate=x509util.pem(ca_cert),
        verificationCertificate=x509util.pem(wrong_cn),
    )
    other_cert, other_key = x509util.ca("Checked CA")
    not_signed = x509util.certificate(code, x509util.ec_key(), issuer=(other_cert, other_key))
    refused(
        "CertificateValidationException",
        400,
        iot.register_ca_certificate,
        caCertificate=x509util.pem(ca_cert),
        verificationCertificate=x509util.pem(not_signed),
    )
    refused(
        "InvalidRequestException",
        400,
        iot.register_ca_certificate,
        caCertificate=x509util.pem(ca_cert),
    )
    leaf = x509util.certificate("leaf", x509util.ec_key())
    refused(
        "CertificateValidationException",
        400,
        iot.register_ca_certificate,
        caCertificate=x509util.pem(leaf),
        verificationCertificate=x509util.pem(not_signed),
    )
    assert iot.list_ca_certificates()["certificates"] == []
    # SNI_ONLY mode needs no verification certificate.
    made = iot.register_ca_certificate(
        caCertificate=x509util.pem(ca_cert), certificateMode="SNI_ONLY"
    )
    described = iot.describe_ca_certificate(certificateId=made["certificateId"])
    assert described["certificateDescription"]["certificateMode"] == "SNI_ONLY"
    refused(
        "ResourceAlreadyExistsException",
        409,
        iot.register_ca_certificate,
        caCertificate=x509util.pem(ca_cert),
        certificateMode="SNI_ONLY",
    )


def test_list_update_delete_ca(iot: Any) -> None:
    ids = [_register_ca(iot, f"CA {n}")[0] for n in range(3)]
    pages = list(
        iot.get_paginator("list_ca_certificates").paginate(PaginationConfig={"PageSize": 2})
    )
    assert [c["certificateId"] for p in pages for c in p["certificates"]] == ids[::-1]
    iot.update_ca_certificate(
        certificateId=ids[0],
        newAutoRegistrationStatus="ENABLE",
        registrationConfig={"templateName": "fleet-template"},
    )
    described = iot.describe_ca_certificate(certificateId=ids[0])
    assert described["certificateDescription"]["autoRegistrationStatus"] == "ENABLE"
    assert described["registrationConfig"] == {"templateName": "fleet-template"}
    listed = iot.list_ca_certificates(templateName="fleet-template")["certificates"]
    assert [c["certificateId"] for c in listed] == [ids[0]]
    refused("CertificateStateException", 406, iot.delete_ca_certificate, certificateId=ids[0])
    iot.update_ca_certificate(certificateId=ids[0], newStatus="INACTIVE")
    iot.delete_ca_certificate(certificateId=ids[0])
    refused("ResourceNotFoundException", 404, iot.describe_ca_certificate, certificateId=ids[0])
    refused(
        "InvalidRequestException",
        400,
        iot.update_ca_certificate,
        certificateId=ids[1],
        newStatus="REVOKED",
    )


@pytest.mark.parametrize(
    "bad", ["", "nonsense", "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----"]
)
def test_malformed_ca_pem(iot: Any, bad: str) -> None:
    code = "InvalidRequestException" if not bad else "CertificateValidationException"
    if not bad:
        # botocore refuses an empty string itself (min length 1): send a blank one.
        bad = " "
    refused(code, 400, iot.register_ca_certificate, caCertificate=bad, certificateMode="SNI_ONLY")
    assert iot.list_ca_certificates()["certificates"] == []
