"""Registering the devices of ``iot_device``: an Alibaba product and device in the registry,
or an AWS IoT thing with a certificate of the hub's CA and a policy attached to it, exactly
as the cloud APIs (RegisterDevice; CreateThing, CreateKeysAndCertificate, CreatePolicy,
AttachPolicy, AttachThingPrincipal) would, without going through HTTP."""

from __future__ import annotations

import json
import secrets
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..identity.service import IdentityService
from ..registry.registry import Registry

__all__ = ["ALLOW_ALL", "AliyunDevice", "AwsThing", "register_aliyun", "register_aws"]

#: The policy of ``iot_device(kind="aws")`` unless the test gives one: everything allowed.
ALLOW_ALL: Mapping[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}],
}


@dataclass(frozen=True, slots=True)
class AliyunDevice:
    product_key: str
    device_name: str
    device_secret: str


@dataclass(frozen=True, slots=True)
class AwsThing:
    thing_name: str
    certificate_id: str
    certificate_arn: str
    certificate_pem: str
    private_key_pem: str
    policy_name: str

    def tls_context(self, ca_pem: str) -> ssl.SSLContext:
        """A client context that trusts the hub's CA and presents this thing's certificate.
        The PEM files ``load_cert_chain`` needs exist only while it reads them."""
        context = ssl.create_default_context(cadata=ca_pem)
        with tempfile.TemporaryDirectory(prefix="thinghub-device-") as directory:
            cert_file, key_file = Path(directory, "cert.pem"), Path(directory, "key.pem")
            key_file.touch(mode=0o600)
            key_file.write_text(self.private_key_pem)
            cert_file.write_text(self.certificate_pem)
            context.load_cert_chain(cert_file, key_file)
        return context


def register_aliyun(
    registry: Registry,
    account_id: str,
    *,
    product_key: str | None = None,
    device_name: str | None = None,
) -> AliyunDevice:
    """A device in ``product_key``, or in a new product (with the default topic categories:
    ``/user/update`` and ``/user/update/error`` to publish, ``/user/get`` to subscribe)."""
    if product_key is None:
        product = registry.create_product(account_id, f"test_{secrets.token_hex(6)}", 0)
        product_key = product.product_key
    name = device_name or f"device-{secrets.token_hex(6)}"
    device = registry.register_device(account_id, product_key, name)
    return AliyunDevice(device.product_key, device.device_name, device.device_secret)


def register_aws(
    identity: IdentityService,
    account_id: str,
    *,
    thing_name: str | None = None,
    policy: Mapping[str, Any] | str | None = None,
) -> AwsThing:
    """A thing (made unless it exists), a new ACTIVE certificate and key pair signed by the
    hub's CA, a new policy (``ALLOW_ALL`` unless given) attached to the certificate, and the
    certificate attached to the thing."""
    name = thing_name or f"thing-{secrets.token_hex(6)}"
    identity.things.create(account_id, name)
    certificate, issued = identity.certificates.create_keys_and_certificate(account_id, active=True)
    document = policy if isinstance(policy, str) else json.dumps(policy or ALLOW_ALL)
    policy_name = f"test-policy-{secrets.token_hex(6)}"
    identity.policies.create(account_id, policy_name, document)
    identity.policies.attach(account_id, policy_name, certificate.certificate_id)
    identity.things.attach_principal(account_id, name, certificate.certificate_id)
    return AwsThing(
        thing_name=name,
        certificate_id=certificate.certificate_id,
        certificate_arn=identity.arns.certificate(account_id, certificate.certificate_id),
        certificate_pem=certificate.pem,
        private_key_pem=issued.private_key_pem,
        policy_name=policy_name,
    )
