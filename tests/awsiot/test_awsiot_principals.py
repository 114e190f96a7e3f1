"""Certificates attached to things as principals: attach, detach, both listings and their
paginators, exclusive attachment, and the rules that tie them (a thing with principals is not
deleted)."""

from __future__ import annotations

from typing import Any

from iothub import refused


def test_attach_list_detach(iot: Any) -> None:
    certificates = [iot.create_keys_and_certificate() for _ in range(5)]
    arns = [c["certificateArn"] for c in certificates]
    for name in ("a", "b", "c"):
        iot.create_thing(thingName=name)
    for arn in arns:
        iot.attach_thing_principal(thingName="a", principal=arn)
    iot.attach_thing_principal(thingName="a", principal=arns[0])  # again: no error
    for name in ("b", "c"):
        iot.attach_thing_principal(thingName=name, principal=arns[0])
    pages = list(
        iot.get_paginator("list_thing_principals").paginate(
            thingName="a", PaginationConfig={"PageSize": 2}
        )
    )
    assert [len(p["principals"]) for p in pages] == [2, 2, 1]
    assert sorted(a for p in pages for a in p["principals"]) == sorted(arns)
    things = list(
        iot.get_paginator("list_principal_things").paginate(
            principal=arns[0], PaginationConfig={"PageSize": 2}
        )
    )
    assert [t for p in things for t in p["things"]] == ["a", "b", "c"]
    refused("InvalidRequestException", 400, iot.delete_thing, thingName="b")
    iot.detach_thing_principal(thingName="b", principal=arns[0])
    iot.detach_thing_principal(thingName="b", principal=arns[0])  # not attached: no error
    iot.delete_thing(thingName="b")
    assert iot.list_principal_things(principal=arns[0])["things"] == ["a", "c"]


def test_unknown_things_and_principals(iot: Any) -> None:
    made = iot.create_keys_and_certificate()
    iot.create_thing(thingName="t")
    missing_cert = made["certificateArn"][:-64] + "0" * 64
    refused(
        "ResourceNotFoundException",
        404,
        iot.attach_thing_principal,
        thingName="nope",
        principal=made["certificateArn"],
    )
    refused(
        "ResourceNotFoundException",
        404,
        iot.attach_thing_principal,
        thingName="t",
        principal=missing_cert,
    )
    refused(
        "InvalidRequestException",
        400,
        iot.attach_thing_principal,
        thingName="t",
        principal="us-east-1:a1b2c3d4-cognito-identity",
    )
    refused("ResourceNotFoundException", 404, iot.list_thing_principals, thingName="nope")
    refused("ResourceNotFoundException", 404, iot.list_principal_things, principal=missing_cert)
    refused(
        "ResourceNotFoundException",
        404,
        iot.detach_thing_principal,
        thingName="nope",
        principal=made["certificateArn"],
    )
    assert iot.list_thing_principals(thingName="t")["principals"] == []


def test_exclusive_attachment(iot: Any) -> None:
    arn = iot.create_keys_and_certificate()["certificateArn"]
    for name in ("one", "two", "three"):
        iot.create_thing(thingName=name)
    iot.attach_thing_principal(thingName="one", principal=arn, thingPrincipalType="EXCLUSIVE_THING")
    refused(
        "InvalidRequestException", 400, iot.attach_thing_principal, thingName="two", principal=arn
    )
    iot.detach_thing_principal(thingName="one", principal=arn)
    iot.attach_thing_principal(thingName="two", principal=arn)
    refused(
        "InvalidRequestException",
        400,
        iot.attach_thing_principal,
        thingName="three",
        principal=arn,
        thingPrincipalType="EXCLUSIVE_THING",
    )
    assert iot.list_principal_things(principal=arn)["things"] == ["two"]
