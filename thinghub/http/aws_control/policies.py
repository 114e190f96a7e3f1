"""Policies: CreatePolicy, GetPolicy, ListPolicies, DeletePolicy, CreatePolicyVersion,
GetPolicyVersion, ListPolicyVersions, SetDefaultPolicyVersion, DeletePolicyVersion,
AttachPolicy, DetachPolicy, ListAttachedPolicies, ListTargetsForPolicy,
GetEffectivePolicies (rules: ``identity/policies.py``)."""

from __future__ import annotations

from aiohttp import web

from ...identity.policies import check_policy_name, check_version_id
from .call import Call, Control, principal
from .listing import Listing
from .shapes import policy_full, policy_summary, policy_version_summary, seconds

__all__ = [
    "attach_policy",
    "create_policy",
    "create_policy_version",
    "delete_policy",
    "delete_policy_version",
    "detach_policy",
    "get_effective_policies",
    "get_policy",
    "get_policy_version",
    "list_attached_policies",
    "list_policies",
    "list_policy_versions",
    "list_targets_for_policy",
    "set_default_policy_version",
]

_POLICIES = Listing.by_marker("policies")
_ATTACHED = Listing.by_marker("attached-policies")
_TARGETS = Listing.by_marker("policy-targets")


async def create_policy(control: Control, call: Call) -> web.Response:
    name = check_policy_name(call.labels[0])
    document = call.json().get("policyDocument")
    identity = control.identity
    policy = await control.write(lambda: identity.policies.create(call.account, name, document))
    return call.ok(
        {
            **policy_summary(identity.arns, call.account, name),
            "policyDocument": policy.document,
            "policyVersionId": str(policy.default_version),
        }
    )


async def get_policy(control: Control, call: Call) -> web.Response:
    name = check_policy_name(call.labels[0])
    policy = control.identity.policies.get(call.account, name)
    return call.ok(policy_full(control.identity.arns, policy))


async def list_policies(control: Control, call: Call) -> web.Response:
    page = control.identity.policies.listing(
        call.account,
        after=_POLICIES.after_seq(call),
        limit=_POLICIES.limit(call),
        ascending=bool(call.flag("isAscendingOrder")),
    )
    arns = control.identity.arns
    return _POLICIES.answer(
        call, page, "policies", lambda p: policy_summary(arns, call.account, p.name)
    )


async def delete_policy(control: Control, call: Call) -> web.Response:
    name = check_policy_name(call.labels[0])
    identity = control.identity
    await control.write(lambda: identity.policies.delete(call.account, name))
    return call.done()


async def create_policy_version(control: Control, call: Call) -> web.Response:
    name = check_policy_name(call.labels[0])
    document = call.json().get("policyDocument")
    set_default = bool(call.flag("setAsDefault"))
    identity = control.identity
    version = await control.write(
        lambda: identity.policies.create_version(
            call.account, name, document, set_default=set_default
        )
    )
    return call.ok(
        {
            "policyArn": identity.arns.policy(call.account, name),
            "policyDocument": version.document,
            "policyVersionId": str(version.version_id),
            "isDefaultVersion": version.is_default,
        }
    )


async def get_policy_version(control: Control, call: Call) -> web.Response:
    name = check_policy_name(call.labels[0])
    version_id = check_version_id(call.labels[1])
    identity = control.identity
    version = identity.policies.version(call.account, name, version_id)
    return call.ok(
        {
            "policyArn": identity.arns.policy(call.account, name),
            "policyName": name,
            "policyDocument": version.document,
            "policyVersionId": str(version.version_id),
            "isDefaultVersion": version.is_default,
            "creationDate": seconds(version.created_at),
            "lastModifiedDate": seconds(version.created_at),
            "generationId": str(version.version_id),
        }
    )


async def list_policy_versions(control: Control, call: Call) -> web.Response:
    name = check_policy_name(call.labels[0])
    versions = control.identity.policies.versions(call.account, name)
    return call.ok({"policyVersions": [policy_version_summary(v) for v in versions]})


async def set_default_policy_version(control: Control, call: Call) -> web.Response:
    name = check_policy_name(call.labels[0])
    version_id = check_version_id(call.labels[1])
    identity = control.identity
    await control.write(
        lambda: identity.policies.set_default_version(call.account, name, version_id)
    )
    return call.done()


async def delete_policy_version(control: Control, call: Call) -> web.Response:
    name = check_policy_name(call.labels[0])
    version_id = check_version_id(call.labels[1])
    identity = control.identity
    await control.write(lambda: identity.policies.delete_version(call.account, name, version_id))
    return call.done()


def _policy_and_target(control: Control, call: Call) -> tuple[str, str]:
    """AttachPolicy's and DetachPolicy's input: the policy name (URI) and the certificate id
    its ``target`` ARN names."""
    name = check_policy_name(call.labels[0])
    return name, principal(control, call, call.json().get("target"), "target")


async def attach_policy(control: Control, call: Call) -> web.Response:
    name, certificate_id = _policy_and_target(control, call)
    identity = control.identity
    await control.write(lambda: identity.policies.attach(call.account, name, certificate_id))
    return call.done()


async def detach_policy(control: Control, call: Call) -> web.Response:
    name, certificate_id = _policy_and_target(control, call)
    identity = control.identity
    await control.write(lambda: identity.policies.detach(call.account, name, certificate_id))
    return call.done()


async def list_attached_policies(control: Control, call: Call) -> web.Response:
    certificate_id = principal(control, call, call.labels[0], "target")
    page = control.identity.policies.attached(
        call.account,
        certificate_id,
        after=_ATTACHED.after_name(call),
        limit=_ATTACHED.limit(call),
    )
    arns = control.identity.arns
    return _ATTACHED.answer(call, page, "policies", lambda n: policy_summary(arns, call.account, n))


async def list_targets_for_policy(control: Control, call: Call) -> web.Response:
    name = check_policy_name(call.labels[0])
    identity = control.identity
    page = identity.policies.targets(
        call.account, name, after=_TARGETS.after_name(call), limit=_TARGETS.limit(call)
    )
    return _TARGETS.answer(
        call, page, "targets", lambda c: identity.arns.certificate(call.account, c)
    )


async def get_effective_policies(control: Control, call: Call) -> web.Response:
    """The policies attached to the principal (a certificate), with their default
    documents; ThingHub has no thing groups, so ``thingName`` adds none."""
    certificate_id = principal(control, call, call.json().get("principal"))
    identity = control.identity
    policies = identity.policies.effective(call.account, certificate_id)
    return call.ok(
        {
            "effectivePolicies": [
                {
                    "policyName": p.name,
                    "policyArn": identity.arns.policy(call.account, p.name),
                    "policyDocument": p.document,
                }
                for p in policies
            ]
        }
    )
