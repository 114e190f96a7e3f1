"""Which certificates sign in, and for how long: a certificate made INACTIVE or REVOKED closes
its connections and cannot sign in again; a certificate of a CA that is unknown, or
registered INACTIVE, or deactivated, is refused (at the TLS layer when no account trusts
the CA, at CONNECT when another account does); a certificate outside its validity period is
refused by the TLS layer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from awscrt import mqtt5
from certs import issue, make_ca, pem, register_ca, tls_answer, write_pair
from devhub import EVERYTHING, TIMEOUT, DevHub, wait_for
from sdk import Sdk5, Sdk311

pytestmark = pytest.mark.thinghub_only


def test_revoked_certificate_is_disconnected(dev_hub: DevHub) -> None:
    iot = dev_hub.iot()
    device = dev_hub.device(iot)
    sdk = Sdk5(dev_hub, device, device.thing)
    try:
        sdk.wait_connected()
        iot.update_certificate(certificateId=device.certificate_id, newStatus="REVOKED")
        gone = sdk.disconnections.get(timeout=TIMEOUT)
        assert gone.disconnect_packet is not None
        assert (
            gone.disconnect_packet.reason_code == mqtt5.DisconnectReasonCode.ADMINISTRATIVE_ACTION
        )
    finally:
        sdk.close()
    assert tls_answer(dev_hub, device.cert_file, device.key_file, device.thing) == "connack:5"


def test_inactive_certificate_closes_and_refuses(dev_hub: DevHub) -> None:
    iot = dev_hub.iot()
    device = dev_hub.device(iot)
    sdk = Sdk311(dev_hub, device, device.thing)
    try:
        sdk.connect()
        iot.update_certificate(certificateId=device.certificate_id, newStatus="INACTIVE")
        sdk.interrupted.get(timeout=TIMEOUT)
    finally:
        sdk.close()
    assert tls_answer(dev_hub, device.cert_file, device.key_file, device.thing) == "connack:5"
    iot.update_certificate(certificateId=device.certificate_id, newStatus="ACTIVE")
    assert tls_answer(dev_hub, device.cert_file, device.key_file, device.thing) == "connack:0"
    # Deleted: unknown to every account.
    iot.update_certificate(certificateId=device.certificate_id, newStatus="INACTIVE")
    iot.detach_thing_principal(thingName=device.thing, principal=device.certificate_arn)
    iot.delete_certificate(certificateId=device.certificate_id, forceDelete=True)
    assert tls_answer(dev_hub, device.cert_file, device.key_file, device.thing) == "connack:5"


def _ca_device(hub: DevHub, iot: Any, ca: Any, subject: str) -> tuple[Any, Any, str]:
    certificate, key = issue(ca, subject)
    cert_file, key_file = write_pair(hub.files, certificate, key)
    registered = iot.register_certificate(
        certificatePem=pem(certificate), caCertificatePem=ca.pem, status="ACTIVE"
    )
    name = f"ca-policy-{registered['certificateId'][:10]}"
    iot.create_policy(policyName=name, policyDocument=EVERYTHING)
    iot.attach_policy(policyName=name, target=registered["certificateArn"])
    return cert_file, key_file, registered["certificateId"]


def test_certificates_of_registered_cas(dev_hub: DevHub, tenant_iot: Any) -> None:
    """A maker's own CA, registered with its verification certificate: its certificates sign
    in while it is ACTIVE. Deactivated, it closes their connections; the TLS layer still
    takes its certificates while another account trusts the same CA, and the CONNECT refuses
    them; once no account does, the TLS layer refuses them."""
    _key_id, _secret, iot = tenant_iot
    ca = make_ca()
    ca_id = register_ca(iot, ca)
    cert_file, key_file, _cert_id = _ca_device(dev_hub, iot, ca, "maker-device-1")
    assert tls_answer(dev_hub, cert_file, key_file, "maker-device-1") == "connack:0"
    _other_key, _other_secret, other_iot = dev_hub.tenant()
    other_ca_id = register_ca(other_iot, ca)  # the same CA, trusted by a second account
    live = Sdk311(dev_hub, (cert_file, key_file), "maker-device-1")
    try:
        live.connect()
        iot.update_ca_certificate(certificateId=ca_id, newStatus="INACTIVE")
        live.interrupted.get(timeout=TIMEOUT)
    finally:
        live.close()
    assert tls_answer(dev_hub, cert_file, key_file, "maker-device-1") == "connack:5"
    other_iot.update_ca_certificate(certificateId=other_ca_id, newStatus="INACTIVE")
    assert tls_answer(dev_hub, cert_file, key_file, "maker-device-1").startswith(("tls:", "closed"))
    iot.update_ca_certificate(certificateId=ca_id, newStatus="ACTIVE")
    assert tls_answer(dev_hub, cert_file, key_file, "maker-device-1") == "connack:0"


def test_unknown_and_inactive_cas_are_refused(dev_hub: DevHub, tenant_iot: Any) -> None:
    _key_id, _secret, iot = tenant_iot
    stranger = make_ca()  # never registered anywhere
    certificate, key = issue(stranger, "stranger")
    cert_file, key_file = write_pair(dev_hub.files, certificate, key)
    assert tls_answer(dev_hub, cert_file, key_file, "stranger").startswith(("tls:", "closed"))
    dormant = make_ca()
    register_ca(iot, dormant, active=False)
    certificate, key = issue(dormant, "dormant")
    cert_file, key_file = write_pair(dev_hub.files, certificate, key)
    assert tls_answer(dev_hub, cert_file, key_file, "dormant").startswith(("tls:", "closed"))


def test_certificates_outside_their_validity_are_refused(dev_hub: DevHub, tenant_iot: Any) -> None:
    _key_id, _secret, iot = tenant_iot
    ca = make_ca()
    register_ca(iot, ca)
    now = datetime.now(UTC)
    early, early_key = issue(ca, "early", not_before=now + timedelta(hours=1))
    cert_file, key_file = write_pair(dev_hub.files, early, early_key)
    assert tls_answer(dev_hub, cert_file, key_file, "early").startswith(("tls:", "closed"))
    # Registered while valid, presented once expired.
    end = now + timedelta(seconds=2)
    brief, brief_key = issue(ca, "brief", not_before=now - timedelta(minutes=1), not_after=end)
    registered = iot.register_certificate(
        certificatePem=pem(brief), caCertificatePem=ca.pem, status="ACTIVE"
    )
    iot.create_policy(policyName="brief-policy", policyDocument=EVERYTHING)
    iot.attach_policy(policyName="brief-policy", target=registered["certificateArn"])
    cert_file, key_file = write_pair(dev_hub.files, brief, brief_key)
    wait_for(lambda: datetime.now(UTC) > end + timedelta(seconds=1), what="the expiry")
    assert tls_answer(dev_hub, cert_file, key_file, "brief").startswith(("tls:", "closed"))
