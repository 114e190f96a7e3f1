"""Policies through boto3's ``iot`` client: documents validated (MalformedPolicyException and
nothing stored), versions (at most five, the default), deletion rules, attachment to
certificates and the listings' paginators, GetEffectivePolicies."""

from __future__ import annotations

import json
from typing import Any

import pytest
from iothub import IotHub, refused

from thinghub.identity.arns import account_number
from thinghub.registry.models import AccessKey


def document(action: str = "iot:Connect", resource: str = "*") -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": action, "Resource": resource}],
        }
    )


def test_create_get_list(iot_hub: IotHub, tenant: tuple[AccessKey, Any]) -> None:
    key, iot = tenant
    created = iot.create_policy(policyName="p0", policyDocument=document())
    number = account_number(key.account_id)
    assert created["policyArn"] == f"arn:aws:iot:us-east-1:{number}:policy/p0"
    assert created["policyVersionId"] == "1"
    assert created["policyDocument"] == document()
    got = iot.get_policy(policyName="p0")
    assert got["policyDocument"] == document()
    assert got["defaultVersionId"] == "1"
    assert got["creationDate"] <= got["lastModifiedDate"]
    for n in range(1, 5):
        iot.create_policy(policyName=f"p{n}", policyDocument=document())
    pages = list(iot.get_paginator("list_policies").paginate(PaginationConfig={"PageSize": 2}))
    assert [len(p["policies"]) for p in pages] == [2, 2, 1]
    assert {p["policyName"] for page in pages for p in page["policies"]} == {
        f"p{n}" for n in range(5)
    }
    refused(
        "ResourceAlreadyExistsException",
        409,
        iot.create_policy,
        policyName="p0",
        policyDocument=document(),
    )
    refused("ResourceNotFoundException", 404, iot.get_policy, policyName="missing")


MALFORMED = {
    "not-json": "{",
    "not-object": "[]",
    "no-version": json.dumps({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
    "old-version": json.dumps(
        {"Version": "2008-10-17", "Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}}
    ),
    "no-statement": json.dumps({"Version": "2012-10-17"}),
    "empty-statement": json.dumps({"Version": "2012-10-17", "Statement": []}),
    "bad-effect": json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Maybe", "Action": "*", "Resource": "*"}],
        }
    ),
    "no-action": json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*"}]}
    ),
    "no-resource": json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Publish"}]}
    ),
    "bad-action": document(action="publish everything"),
    "bad-resource": document(resource="topic/a"),
    "not-action": json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "NotAction": "*", "Resource": "*"}],
        }
    ),
    "unknown-element": json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*", "Oops": 1}],
        }
    ),
    "too-large": document(resource="arn:aws:iot:us-east-1:123456789012:topic/" + "a" * 2100),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_documents_are_refused_and_nothing_stored(iot: Any, name: str) -> None:
    refused(
        "MalformedPolicyException",
        400,
        iot.create_policy,
        policyName="bad",
        policyDocument=MALFORMED[name],
    )
    assert iot.list_policies()["policies"] == []
    iot.create_policy(policyName="good", policyDocument=document())
    refused(
        "MalformedPolicyException",
        400,
        iot.create_policy_version,
        policyName="good",
        policyDocument=MALFORMED[name],
    )
    assert len(iot.list_policy_versions(policyName="good")["policyVersions"]) == 1


def test_a_policy_document_may_use_the_full_grammar(iot: Any) -> None:
    text = json.dumps(
        {
            "Version": "2012-10-17",
            "Id": "fleet",
            "Statement": [
                {
                    "Sid": "connect",
                    "Effect": "Allow",
                    "Action": ["iot:Connect"],
                    "Resource": [
                        "arn:aws:iot:us-east-1:*:client/${iot:Connection.Thing.ThingName}"
                    ],
                    "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
                },
                {"Effect": "Deny", "Action": "iot:*", "Resource": "*"},
            ],
        },
        indent=2,
    )
    assert iot.create_policy(policyName="rich", policyDocument=text)["policyDocument"] == text


def test_bad_policy_names(iot: Any) -> None:
    refused(
        "InvalidRequestException",
        400,
        iot.create_policy,
        policyName="has space",
        policyDocument=document(),
    )
    refused(
        "InvalidRequestException",
        400,
        iot.create_policy,
        policyName="x" * 129,
        policyDocument=document(),
    )


def test_versions(iot: Any) -> None:
    iot.create_policy(policyName="v", policyDocument=document("iot:Connect"))
    second = iot.create_policy_version(policyName="v", policyDocument=document("iot:Publish"))
    assert second["policyVersionId"] == "2"
    assert second["isDefaultVersion"] is False
    third = iot.create_policy_version(
        policyName="v", policyDocument=document("iot:Subscribe"), setAsDefault=True
    )
    assert third["isDefaultVersion"] is True
    assert iot.get_policy(policyName="v")["policyDocument"] == document("iot:Subscribe")
    for action in ("iot:Receive", "iot:GetRetainedMessage"):
        iot.create_policy_version(policyName="v", policyDocument=document(action))
    refused(
        "VersionsLimitExceededException",
        409,
        iot.create_policy_version,
        policyName="v",
        policyDocument=document("iot:*"),
    )
    listed = iot.list_policy_versions(policyName="v")["policyVersions"]
    assert [v["versionId"] for v in listed] == ["5", "4", "3", "2", "1"]
    assert [v["isDefaultVersion"] for v in listed] == [False, False, True, False, False]
    got = iot.get_policy_version(policyName="v", policyVersionId="2")
    assert got["policyDocument"] == document("iot:Publish")
    assert got["isDefaultVersion"] is False
    refused(
        "DeleteConflictException",
        409,
        iot.delete_policy_version,
        policyName="v",
        policyVersionId="3",
    )
    iot.set_default_policy_version(policyName="v", policyVersionId="1")
    assert iot.get_policy(policyName="v")["defaultVersionId"] == "1"
    iot.delete_policy_version(policyName="v", policyVersionId="5")
    # Ids are never reused: the next one is 6.
    assert (
        iot.create_policy_version(policyName="v", policyDocument=document())["policyVersionId"]
        == "6"
    )
    refused(
        "ResourceNotFoundException",
        404,
        iot.get_policy_version,
        policyName="v",
        policyVersionId="5",
    )
    refused(
        "ResourceNotFoundException",
        404,
        iot.set_default_policy_version,
        policyName="v",
        policyVersionId="99",
    )
    refused(
        "InvalidRequestException", 400, iot.get_policy_version, policyName="v", policyVersionId="x"
    )
    # Deleting the policy needs its other versions gone first.
    refused("DeleteConflictException", 409, iot.delete_policy, policyName="v")
    for version in ("2", "3", "4", "6"):
        iot.delete_policy_version(policyName="v", policyVersionId=version)
    iot.delete_policy(policyName="v")
    refused("ResourceNotFoundException", 404, iot.get_policy, policyName="v")


def test_attach_detach_and_listings(iot: Any) -> None:
    arns = [iot.create_keys_and_certificate()["certificateArn"] for _ in range(3)]
    for n in range(4):
        iot.create_policy(policyName=f"pol-{n}", policyDocument=document())
    for n in range(4):
        iot.attach_policy(policyName=f"pol-{n}", target=arns[0])
    iot.attach_policy(policyName="pol-0", target=arns[0])  # again: no error
    for arn in arns:
        iot.attach_policy(policyName="pol-1", target=arn)
    attached = list(
        iot.get_paginator("list_attached_policies").paginate(
            target=arns[0], PaginationConfig={"PageSize": 3}
        )
    )
    assert [p["policyName"] for page in attached for p in page["policies"]] == [
        f"pol-{n}" for n in range(4)
    ]
    targets = list(
        iot.get_paginator("list_targets_for_policy").paginate(
            policyName="pol-1", PaginationConfig={"PageSize": 2}
        )
    )
    assert sorted(t for page in targets for t in page["targets"]) == sorted(arns)
    refused("DeleteConflictException", 409, iot.delete_policy, policyName="pol-1")
    effective = iot.get_effective_policies(principal=arns[0])["effectivePolicies"]
    assert [p["policyName"] for p in effective] == [f"pol-{n}" for n in range(4)]
    assert all(p["policyDocument"] == document() for p in effective)
    for arn in arns:
        iot.detach_policy(policyName="pol-1", target=arn)
    iot.detach_policy(policyName="pol-1", target=arns[0])  # not attached: no error
    assert iot.list_targets_for_policy(policyName="pol-1")["targets"] == []
    iot.delete_policy(policyName="pol-1")
    refused("ResourceNotFoundException", 404, iot.attach_policy, policyName="pol-1", target=arns[0])
    refused(
        "ResourceNotFoundException",
        404,
        iot.list_attached_policies,
        target=arns[0][:-64] + "f" * 64,
    )
    refused(
        "InvalidRequestException",
        400,
        iot.attach_policy,
        policyName="pol-0",
        target="arn:aws:iot:us-east-1:123456789012:thinggroup/g",
    )


def test_at_most_ten_policies_per_certificate(iot: Any) -> None:
    arn = iot.create_keys_and_certificate()["certificateArn"]
    for n in range(11):
        iot.create_policy(policyName=f"many-{n}", policyDocument=document())
    for n in range(10):
        iot.attach_policy(policyName=f"many-{n}", target=arn)
    refused("LimitExceededException", 410, iot.attach_policy, policyName="many-10", target=arn)
    assert len(iot.list_attached_policies(target=arn, pageSize=50)["policies"]) == 10
