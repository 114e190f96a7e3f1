"""Certificates and CA certificates: CreateKeysAndCertificate, CreateCertificateFromCsr,
GetRegistrationCode, RegisterCACertificate, RegisterCertificate, RegisterCertificateWithoutCA,
DescribeCertificate, ListCertificates, ListCertificatesByCA, DescribeCACertificate,
ListCACertificates, UpdateCACertificate, DeleteCACertificate, UpdateCertificate,
DeleteCertificate (rules: ``identity/certificates.py``).

A certificate whose status changed (UpdateCertificate) or that was deleted is announced to the
identity service's observers once the write has committed
(``IdentityService.certificate_status_changed``), here on the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from ...identity.certificates import check_registration_config, check_status
from ...identity.models import CAStatus, CertificateMode, CertificateStatus
from ..aws.errors import AwsError
from .call import Call, Control, certificate_id
from .listing import Listing
from .shapes import ca_description, ca_summary, certificate_description, certificate_summary

__all__ = [
    "create_certificate_from_csr",
    "create_keys_and_certificate",
    "delete_ca_certificate",
    "delete_certificate",
    "describe_ca_certificate",
    "describe_certificate",
    "get_registration_code",
    "list_ca_certificates",
    "list_certificates",
    "list_certificates_by_ca",
    "register_ca_certificate",
    "register_certificate",
    "register_certificate_without_ca",
    "update_ca_certificate",
    "update_certificate",
]

_CA_CERTIFICATES = Listing.by_marker("ca-certificates")


def _created(control: Control, call: Call, cert_id: str) -> dict[str, object]:
    return {
        "certificateArn": control.identity.arns.certificate(call.account, cert_id),
        "certificateId": cert_id,
    }


def _registration_status(
    body: Mapping[str, object], set_as_active: bool | None
) -> CertificateStatus:
    """``status`` if given, else ACTIVE for the deprecated ``setAsActive=true``, else INACTIVE."""
    raw = body.get("status")
    if raw is not None:
        return check_status(raw)
    return CertificateStatus.ACTIVE if set_as_active else CertificateStatus.INACTIVE


# ---------------------------------------------------------------------- issued by the hub


async def create_keys_and_certificate(control: Control, call: Call) -> web.Response:
    active = bool(call.flag("setAsActive"))
    identity = control.identity
    record, issued = await control.write(
        lambda: identity.certificates.create_keys_and_certificate(call.account, active=active)
    )
    return call.ok(
        {
            **_created(control, call, record.certificate_id),
            "certificatePem": record.pem,
            "keyPair": {
                "PublicKey": issued.public_key_pem,
                "PrivateKey": issued.private_key_pem,
            },
        }
    )


async def create_certificate_from_csr(control: Control, call: Call) -> web.Response:
    active = bool(call.flag("setAsActive"))
    csr = call.json().get("certificateSigningRequest")
    identity = control.identity
    record = await control.write(
        lambda: identity.certificates.create_from_csr(call.account, csr, active=active)
    )
    return call.ok({**_created(control, call, record.certificate_id), "certificatePem": record.pem})


# ---------------------------------------------------------------------- registered


async def get_registration_code(control: Control, call: Call) -> web.Response:
    certificates = control.identity.certificates
    code = certificates.registration_code(call.account)
    if code is None:
        code = await control.write(lambda: certificates.ensure_registration_code(call.account))
    return call.ok({"registrationCode": code})


async def register_ca_certificate(control: Control, call: Call) -> web.Response:
    body = call.json()
    active = bool(call.flag("setAsActive"))
    auto = bool(call.flag("allowAutoRegistration"))
    raw_mode = body.get("certificateMode", CertificateMode.DEFAULT.value)
    try:
        mode = CertificateMode(str(raw_mode))
    except ValueError:
        raise AwsError.invalid(
            f"certificateMode must be DEFAULT or SNI_ONLY, not {raw_mode!r}."
        ) from None
    config = check_registration_config(body.get("registrationConfig"))
    ca_pem, verification_pem = body.get("caCertificate"), body.get("verificationCertificate")
    identity = control.identity
    ca = await control.write(
        lambda: identity.certificates.register_ca(
            call.account,
            ca_pem,
            verification_pem=verification_pem,
            active=active,
            auto_registration=auto,
            registration_config=config,
            mode=mode,
        )
    )
    return call.ok(
        {
            "certificateArn": identity.arns.ca_certificate(call.account, ca.certificate_id),
            "certificateId": ca.certificate_id,
        }
    )


async def register_certificate(control: Control, call: Call) -> web.Response:
    body = call.json()
    status = _registration_status(body, call.flag("setAsActive"))
    pem, ca_pem = body.get("certificatePem"), body.get("caCertificatePem")
    identity = control.identity
    record = await control.write(
        lambda: identity.certificates.register(call.account, pem, ca_pem=ca_pem, status=status)
    )
    return call.ok(_created(control, call, record.certificate_id))


async def register_certificate_without_ca(control: Control, call: Call) -> web.Response:
    body = call.json()
    status = _registration_status(body, None)
    pem = body.get("certificatePem")
    identity = control.identity
    record = await control.write(
        lambda: identity.certificates.register_without_ca(call.account, pem, status=status)
    )
    return call.ok(_created(control, call, record.certificate_id))


# ---------------------------------------------------------------------- device certificates


async def describe_certificate(control: Control, call: Call) -> web.Response:
    cert_id = certificate_id(call.labels[0])
    record = control.identity.certificates.describe(call.account, cert_id)
    return call.ok(
        {"certificateDescription": certificate_description(control.identity.arns, record)}
    )


async def list_certificates(control: Control, call: Call) -> web.Response:
    return _certificate_page(control, call, None)


async def list_certificates_by_ca(control: Control, call: Call) -> web.Response:
    return _certificate_page(control, call, certificate_id(call.labels[0]))


def _certificate_page(control: Control, call: Call, ca_id: str | None) -> web.Response:
    listing = Listing.by_marker("certificates" if ca_id is None else f"certificates-by-ca-{ca_id}")
    page = control.identity.certificates.listing(
        call.account,
        after=listing.after_seq(call),
        limit=listing.limit(call),
        ascending=bool(call.flag("isAscendingOrder")),
        ca_certificate_id=ca_id,
    )
    arns = control.identity.arns
    return listing.answer(call, page, "certificates", lambda c: certificate_summary(arns, c))


async def update_certificate(control: Control, call: Call) -> web.Response:
    cert_id = certificate_id(call.labels[0])
    raw = call.params.get("newStatus")
    if raw is None:
        raise AwsError.invalid("newStatus is required.")
    status = check_status(raw)
    identity = control.identity
    changed = await control.write(
        lambda: identity.certificates.update(call.account, cert_id, status)
    )
    if changed:
        identity.certificate_status_changed(call.account, cert_id)
    return call.done()


async def delete_certificate(control: Control, call: Call) -> web.Response:
    cert_id = certificate_id(call.labels[0])
    force = bool(call.flag("forceDelete"))
    identity = control.identity
    await control.write(lambda: identity.certificates.delete(call.account, cert_id, force=force))
    identity.certificate_status_changed(call.account, cert_id)
    return call.done()


# ---------------------------------------------------------------------- CA certificates


async def describe_ca_certificate(control: Control, call: Call) -> web.Response:
    ca_id = certificate_id(call.labels[0])
    ca = control.identity.certificates.describe_ca(call.account, ca_id)
    body: dict[str, object] = {"certificateDescription": ca_description(control.identity.arns, ca)}
    if ca.registration_config is not None:
        body["registrationConfig"] = dict(ca.registration_config)
    return call.ok(body)


async def list_ca_certificates(control: Control, call: Call) -> web.Response:
    page = control.identity.certificates.ca_listing(
        call.account,
        after=_CA_CERTIFICATES.after_seq(call),
        limit=_CA_CERTIFICATES.limit(call),
        ascending=bool(call.flag("isAscendingOrder")),
        template_name=call.params.get("templateName"),
    )
    arns = control.identity.arns
    return _CA_CERTIFICATES.answer(call, page, "certificates", lambda c: ca_summary(arns, c))


async def update_ca_certificate(control: Control, call: Call) -> web.Response:
    ca_id = certificate_id(call.labels[0])
    params = call.params
    raw_status = params.get("newStatus")
    try:
        status = None if raw_status is None else CAStatus(raw_status)
    except ValueError:
        raise AwsError.invalid(
            f"newStatus must be ACTIVE or INACTIVE, not {raw_status!r}."
        ) from None
    raw_auto = params.get("newAutoRegistrationStatus")
    if raw_auto not in (None, "ENABLE", "DISABLE"):
        raise AwsError.invalid(
            f"newAutoRegistrationStatus must be ENABLE or DISABLE, not {raw_auto!r}."
        )
    auto = None if raw_auto is None else raw_auto == "ENABLE"
    body = call.json()
    config = check_registration_config(body.get("registrationConfig"))
    remove = body.get("removeAutoRegistration", False)
    if not isinstance(remove, bool):
        raise AwsError.invalid("removeAutoRegistration must be true or false.")
    identity = control.identity
    await control.write(
        lambda: identity.certificates.update_ca(
            call.account,
            ca_id,
            new_status=status,
            auto_registration=auto,
            registration_config=config,
            remove_auto_registration=remove,
        )
    )
    return call.done()


async def delete_ca_certificate(control: Control, call: Call) -> web.Response:
    ca_id = certificate_id(call.labels[0])
    identity = control.identity
    await control.write(lambda: identity.certificates.delete_ca(call.account, ca_id))
    return call.ok({})
