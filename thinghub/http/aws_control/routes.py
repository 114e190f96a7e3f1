"""The control plane's URIs (botocore ``iot`` model, ``http.requestUri``), matched on the raw
path: botocore percent-encodes ``/`` and ``:`` inside a label (an ARN in
``/attached-policies/{target}``), so a raw ``/`` always separates segments, and each label
is decoded exactly once, after matching."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from ..aws.errors import METHOD_NOT_ALLOWED, AwsError
from . import certificates as c
from . import policies as p
from . import things as t
from .call import Handler
from .endpoint import describe_endpoint

__all__ = ["OPERATIONS", "ROUTES", "Match", "aiohttp_paths", "match"]

_LABEL = "{}"

#: (template, {method: operation}); ``{}`` is one URI label
ROUTES: tuple[tuple[str, dict[str, str]], ...] = (
    ("/things", {"GET": "ListThings"}),
    (
        "/things/{}",
        {
            "POST": "CreateThing",
            "GET": "DescribeThing",
            "PATCH": "UpdateThing",
            "DELETE": "DeleteThing",
        },
    ),
    (
        "/things/{}/principals",
        {
            "PUT": "AttachThingPrincipal",
            "DELETE": "DetachThingPrincipal",
            "GET": "ListThingPrincipals",
        },
    ),
    ("/principals/things", {"GET": "ListPrincipalThings"}),
    ("/keys-and-certificate", {"POST": "CreateKeysAndCertificate"}),
    ("/certificates", {"POST": "CreateCertificateFromCsr", "GET": "ListCertificates"}),
    (
        "/certificates/{}",
        {"GET": "DescribeCertificate", "PUT": "UpdateCertificate", "DELETE": "DeleteCertificate"},
    ),
    ("/certificates-by-ca/{}", {"GET": "ListCertificatesByCA"}),
    ("/certificate/register", {"POST": "RegisterCertificate"}),
    ("/certificate/register-no-ca", {"POST": "RegisterCertificateWithoutCA"}),
    ("/registrationcode", {"GET": "GetRegistrationCode"}),
    ("/cacertificate", {"POST": "RegisterCACertificate"}),
    (
        "/cacertificate/{}",
        {
            "GET": "DescribeCACertificate",
            "PUT": "UpdateCACertificate",
            "DELETE": "DeleteCACertificate",
        },
    ),
    ("/cacertificates", {"GET": "ListCACertificates"}),
    ("/policies", {"GET": "ListPolicies"}),
    ("/policies/{}", {"POST": "CreatePolicy", "GET": "GetPolicy", "DELETE": "DeletePolicy"}),
    ("/policies/{}/version", {"POST": "CreatePolicyVersion", "GET": "ListPolicyVersions"}),
    (
        "/policies/{}/version/{}",
        {
            "GET": "GetPolicyVersion",
            "PATCH": "SetDefaultPolicyVersion",
            "DELETE": "DeletePolicyVersion",
        },
    ),
    ("/target-policies/{}", {"PUT": "AttachPolicy", "POST": "DetachPolicy"}),
    ("/attached-policies/{}", {"POST": "ListAttachedPolicies"}),
    ("/policy-targets/{}", {"POST": "ListTargetsForPolicy"}),
    ("/effective-policies", {"POST": "GetEffectivePolicies"}),
    ("/endpoint", {"GET": "DescribeEndpoint"}),
)

OPERATIONS: dict[str, Handler] = {
    "ListThings": t.list_things,
    "CreateThing": t.create_thing,
    "DescribeThing": t.describe_thing,
    "UpdateThing": t.update_thing,
    "DeleteThing": t.delete_thing,
    "AttachThingPrincipal": t.attach_thing_principal,
    "DetachThingPrincipal": t.detach_thing_principal,
    "ListThingPrincipals": t.list_thing_principals,
    "ListPrincipalThings": t.list_principal_things,
    "CreateKeysAndCertificate": c.create_keys_and_certificate,
    "CreateCertificateFromCsr": c.create_certificate_from_csr,
    "ListCertificates": c.list_certificates,
    "DescribeCertificate": c.describe_certificate,
    "UpdateCertificate": c.update_certificate,
    "DeleteCertificate": c.delete_certificate,
    "ListCertificatesByCA": c.list_certificates_by_ca,
    "RegisterCertificate": c.register_certificate,
    "RegisterCertificateWithoutCA": c.register_certificate_without_ca,
    "GetRegistrationCode": c.get_registration_code,
    "RegisterCACertificate": c.register_ca_certificate,
    "DescribeCACertificate": c.describe_ca_certificate,
    "UpdateCACertificate": c.update_ca_certificate,
    "DeleteCACertificate": c.delete_ca_certificate,
    "ListCACertificates": c.list_ca_certificates,
    "ListPolicies": p.list_policies,
    "CreatePolicy": p.create_policy,
    "GetPolicy": p.get_policy,
    "DeletePolicy": p.delete_policy,
    "CreatePolicyVersion": p.create_policy_version,
    "ListPolicyVersions": p.list_policy_versions,
    "GetPolicyVersion": p.get_policy_version,
    "SetDefaultPolicyVersion": p.set_default_policy_version,
    "DeletePolicyVersion": p.delete_policy_version,
    "AttachPolicy": p.attach_policy,
    "DetachPolicy": p.detach_policy,
    "ListAttachedPolicies": p.list_attached_policies,
    "ListTargetsForPolicy": p.list_targets_for_policy,
    "GetEffectivePolicies": p.get_effective_policies,
    "DescribeEndpoint": describe_endpoint,
}

_TEMPLATES = tuple((template.split("/"), verbs) for template, verbs in ROUTES)


@dataclass(frozen=True, slots=True)
class Match:
    operation: str
    handler: Handler
    #: the URI labels, decoded
    labels: tuple[str, ...]


def match(method: str, raw_path: str) -> Match | None:
    """The operation for a method and a raw path; None when the path is none of the control
    plane's; 405 ``MethodNotAllowedException`` when the path is, but not with this verb."""
    segments = raw_path.split("/")
    for template, verbs in _TEMPLATES:
        if len(template) != len(segments):
            continue
        labels: list[str] = []
        for want, got in zip(template, segments, strict=True):
            if want == _LABEL:
                if not got:
                    break
                labels.append(got)
            elif want != got:
                break
        else:
            operation = verbs.get(method)
            if operation is None:
                raise AwsError(
                    METHOD_NOT_ALLOWED,
                    "The specified combination of HTTP verb and URI is not supported.",
                )
            return Match(operation, OPERATIONS[operation], tuple(_decode(v) for v in labels))
    return None


def _decode(raw: str) -> str:
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise AwsError.invalid("The request URI is not valid UTF-8.") from None


def aiohttp_paths() -> list[str]:
    """The aiohttp route patterns that lead here (one label per segment, ``[^{}/]+``)."""
    paths = []
    for template, _verbs in ROUTES:
        parts = template.split("/")
        numbered = [f"{{p{i}}}" if part == _LABEL else part for i, part in enumerate(parts)]
        paths.append("/".join(numbered))
    return paths
