"""Account numbers and ARNs: how the hub names its identity resources the way AWS IoT does.

Every hub account is given a 12-digit AWS account number derived from its account id (a
SHA-256, so it is stable across restarts and needs no row of its own). ARNs carry it and the
configured region (``[aws] region``)::

    arn:aws:iot:{region}:{number}:thing/{thingName}
    arn:aws:iot:{region}:{number}:cert/{certificateId}
    arn:aws:iot:{region}:{number}:cacert/{caCertificateId}
    arn:aws:iot:{region}:{number}:policy/{policyName}

An ARN a caller hands in (a principal, a policy target) is only ever looked up in the caller's
own account: one with another account number or region names nothing there
(docs/architecture.md, "Tenancy").
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = ["Arns", "account_number", "certificate_id_of"]

_NUMBER_SPACE = 10**12
_CERT_ARN = re.compile(r"arn:aws:iot:([a-z0-9-]+):([0-9]{12}):cert/([0-9a-fA-F]{64})")


def account_number(account_id: str) -> str:
    """The 12-digit AWS account number of a hub account (stable: derived, never stored)."""
    digest = hashlib.sha256(f"thinghub-aws-account:{account_id}".encode()).digest()
    return f"{int.from_bytes(digest[:8], 'big') % _NUMBER_SPACE:012d}"


@dataclass(frozen=True, slots=True)
class Arns:
    region: str

    def _arn(self, account_id: str, resource: str) -> str:
        return f"arn:aws:iot:{self.region}:{account_number(account_id)}:{resource}"

    def thing(self, account_id: str, name: str) -> str:
        return self._arn(account_id, f"thing/{name}")

    def certificate(self, account_id: str, certificate_id: str) -> str:
        return self._arn(account_id, f"cert/{certificate_id}")

    def ca_certificate(self, account_id: str, certificate_id: str) -> str:
        return self._arn(account_id, f"cacert/{certificate_id}")

    def policy(self, account_id: str, name: str) -> str:
        return self._arn(account_id, f"policy/{name}")


def certificate_id_of(arns: Arns, account_id: str, arn: str) -> str | None:
    """The certificate id a certificate ARN names in ``account_id`` (lowercased), or None when
    it is not a certificate ARN of this account and region."""
    found = _CERT_ARN.fullmatch(arn.strip())
    if found is None:
        return None
    region, number, certificate_id = found.groups()
    if region != arns.region or number != account_number(account_id):
        return None
    return certificate_id.lower()
