"""The read interface and the certificate status hook that the mutual-TLS sign-in builds on:
what the control plane stored, read back through ``IdentityService.reader``, and the observer
called on the event loop once a status change or a deletion has committed."""

from __future__ import annotations

import json
import threading
from typing import Any

import x509util
from iothub import TIMEOUT, IotHub

from thinghub.identity.models import CertificateOrigin, CertificateStatus
from thinghub.registry.models import AccessKey

ALLOW = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}],
    }
)


def test_reader_sees_what_was_stored(iot_hub: IotHub, tenant: tuple[AccessKey, Any]) -> None:
    key, iot = tenant
    made = iot.create_keys_and_certificate(setAsActive=True)
    cert_id = made["certificateId"]
    iot.create_thing(thingName="r1", attributePayload={"attributes": {"site": "north"}})
    iot.attach_thing_principal(thingName="r1", principal=made["certificateArn"])
    iot.create_policy(policyName="allow-all", policyDocument=ALLOW)
    iot.attach_policy(policyName="allow-all", target=made["certificateArn"])
    reader = iot_hub.identity.reader
    found = iot_hub.on_loop(lambda: reader.certificate(cert_id.upper()))
    assert found is not None
    assert found.account_id == key.account_id
    assert found.active
    assert found.certificate.origin is CertificateOrigin.HUB
    assert found.certificate.pem == made["certificatePem"]
    assert found.things == ("r1",)
    assert [(p.name, p.version_id, p.document) for p in found.policies] == [("allow-all", 1, ALLOW)]
    policies = iot_hub.on_loop(lambda: reader.policies(key.account_id, cert_id))
    assert [p.name for p in policies] == ["allow-all"]
    thing = iot_hub.on_loop(lambda: reader.thing(key.account_id, "r1"))
    assert thing is not None and dict(thing.attributes) == {"site": "north"}
    assert iot_hub.on_loop(lambda: reader.thing("another-account", "r1")) is None
    assert iot_hub.on_loop(lambda: reader.certificate("0" * 64)) is None


def test_reader_finds_registered_cas_by_subject(
    iot_hub: IotHub, tenant: tuple[AccessKey, Any]
) -> None:
    key, iot = tenant
    ca_cert, _ca_key = x509util.ca("Reader CA")
    made = iot.register_ca_certificate(
        caCertificate=x509util.pem(ca_cert), certificateMode="SNI_ONLY", setAsActive=True
    )
    reader = iot_hub.identity.reader
    found = iot_hub.on_loop(lambda: reader.registered_cas(ca_cert.subject))
    assert [c.certificate_id for c in found] == [made["certificateId"]]
    one = iot_hub.on_loop(lambda: reader.ca_certificate(key.account_id, made["certificateId"]))
    assert one is not None and x509util.load(one.pem) == ca_cert


def test_status_changes_are_announced_after_commit(
    iot_hub: IotHub, tenant: tuple[AccessKey, Any]
) -> None:
    key, iot = tenant
    cert_id = iot.create_keys_and_certificate(setAsActive=True)["certificateId"]
    seen: list[tuple[str, str, CertificateStatus | None, bool]] = []
    arrived = threading.Event()
    identity = iot_hub.identity
    loop_thread = iot_hub.thread

    def observer(account: str, certificate_id: str) -> None:
        if certificate_id != cert_id:
            return  # another test's certificate
        found = identity.reader.certificate(certificate_id)
        status = None if found is None else found.certificate.status
        seen.append((account, certificate_id, status, threading.current_thread() is loop_thread))
        arrived.set()

    iot_hub.on_loop(lambda: identity.watch_certificates(observer))
    iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
    assert arrived.wait(TIMEOUT)
    # Called on the event loop, with the new status already readable.
    assert seen == [(key.account_id, cert_id, CertificateStatus.INACTIVE, True)]
    arrived.clear()
    iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")  # no change: no call
    iot.update_certificate(certificateId=cert_id, newStatus="REVOKED")
    assert arrived.wait(TIMEOUT)
    assert seen[-1][2] is CertificateStatus.REVOKED
    assert len(seen) == 2
    arrived.clear()
    iot.delete_certificate(certificateId=cert_id)
    assert arrived.wait(TIMEOUT)
    assert seen[-1] == (key.account_id, cert_id, None, True)
