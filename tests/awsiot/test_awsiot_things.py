"""Things through boto3's ``iot`` client: create (idempotent), describe, list with attribute
filters and the paginator, update (replace, merge, remove, expectedVersion), delete, and the
data plane's shadows still served beside ``/things/{thingName}``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from iothub import IotHub, refused

from thinghub.identity.arns import account_number
from thinghub.registry.models import AccessKey


def test_create_describe_and_arns(iot_hub: IotHub, tenant: tuple[AccessKey, Any]) -> None:
    key, iot = tenant
    created = iot.create_thing(
        thingName="meter-1", attributePayload={"attributes": {"model": "m7", "floor": "3"}}
    )
    number = account_number(key.account_id)
    assert len(number) == 12 and number.isdigit()
    assert created["thingArn"] == f"arn:aws:iot:us-east-1:{number}:thing/meter-1"
    described = iot.describe_thing(thingName="meter-1")
    assert described["thingName"] == "meter-1"
    assert described["thingId"] == created["thingId"]
    assert described["thingArn"] == created["thingArn"]
    assert described["defaultClientId"] == "meter-1"
    assert described["attributes"] == {"model": "m7", "floor": "3"}
    assert described["version"] == 1


def test_create_again_same_is_success_other_is_conflict(iot: Any) -> None:
    first = iot.create_thing(thingName="same", attributePayload={"attributes": {"a": "1"}})
    again = iot.create_thing(thingName="same", attributePayload={"attributes": {"a": "1"}})
    assert again["thingId"] == first["thingId"]
    error = refused(
        "ResourceAlreadyExistsException",
        409,
        iot.create_thing,
        thingName="same",
        attributePayload={"attributes": {"a": "2"}},
    )
    assert error["resourceId"] == first["thingId"]
    assert error["resourceArn"] == first["thingArn"]
    assert iot.describe_thing(thingName="same")["attributes"] == {"a": "1"}


def test_list_things_paginates_and_filters(iot: Any) -> None:
    for number in range(7):
        iot.create_thing(
            thingName=f"t{number}",
            attributePayload={"attributes": {"room": f"r{number % 2}", "serial": f"SN-{number}"}},
        )
    pages = list(iot.get_paginator("list_things").paginate(PaginationConfig={"PageSize": 3}))
    assert [len(p["things"]) for p in pages] == [3, 3, 1]
    names = [t["thingName"] for p in pages for t in p["things"]]
    assert names == [f"t{n}" for n in range(7)]
    assert all(t["version"] == 1 and "thingArn" in t for p in pages for t in p["things"])
    odd = iot.list_things(attributeName="room", attributeValue="r1")["things"]
    assert [t["thingName"] for t in odd] == ["t1", "t3", "t5"]
    prefixed = iot.list_things(
        attributeName="serial", attributeValue="SN-", usePrefixAttributeValue=True
    )["things"]
    assert len(prefixed) == 7
    assert iot.list_things(attributeName="serial", attributeValue="SN-")["things"] == []
    assert len(iot.list_things(attributeName="room")["things"]) == 7
    refused("InvalidRequestException", 400, iot.list_things, attributeValue="r1")
    refused("InvalidRequestException", 400, iot.list_things, maxResults=251)
    refused("InvalidRequestException", 400, iot.list_things, nextToken="not-a-token")


def test_update_replaces_merges_removes_and_checks_version(iot: Any) -> None:
    iot.create_thing(thingName="u", attributePayload={"attributes": {"a": "1", "b": "2"}})
    iot.update_thing(
        thingName="u", attributePayload={"attributes": {"b": "", "c": "3"}, "merge": True}
    )
    thing = iot.describe_thing(thingName="u")
    assert thing["attributes"] == {"a": "1", "c": "3"}
    assert thing["version"] == 2
    iot.update_thing(thingName="u", attributePayload={"attributes": {"z": "9"}}, expectedVersion=2)
    thing = iot.describe_thing(thingName="u")
    assert thing["attributes"] == {"z": "9"}
    assert thing["version"] == 3
    refused(
        "VersionConflictException",
        409,
        iot.update_thing,
        thingName="u",
        attributePayload={"attributes": {"y": "1"}},
        expectedVersion=1,
    )
    assert iot.describe_thing(thingName="u")["attributes"] == {"z": "9"}
    refused("ResourceNotFoundException", 404, iot.update_thing, thingName="missing")


def test_delete_thing(iot: Any) -> None:
    iot.create_thing(thingName="gone")
    refused("VersionConflictException", 409, iot.delete_thing, thingName="gone", expectedVersion=5)
    iot.delete_thing(thingName="gone", expectedVersion=1)
    refused("ResourceNotFoundException", 404, iot.describe_thing, thingName="gone")
    # AWS IoT: "Returns successfully ... if you specify a thing that doesn't exist".
    iot.delete_thing(thingName="gone")


@pytest.mark.parametrize(
    ("thing_name", "attributes"),
    [
        ("has space", None),
        ("x" * 129, None),
        ("ok", {"bad name!": "v"}),
        ("ok", {"n": "bad value with spaces"}),
        ("ok", {"n": "v" * 801}),
        ("ok", {f"a{i}": "v" for i in range(51)}),
    ],
)
def test_bad_names_and_attributes_change_nothing(
    iot: Any, thing_name: str, attributes: dict[str, str] | None
) -> None:
    payload = {} if attributes is None else {"attributePayload": {"attributes": attributes}}
    refused("InvalidRequestException", 400, iot.create_thing, thingName=thing_name, **payload)
    assert iot.list_things()["things"] == []


def test_thing_types_and_billing_groups_do_not_exist(iot: Any) -> None:
    refused(
        "ResourceNotFoundException", 404, iot.create_thing, thingName="t", thingTypeName="sensor"
    )
    refused(
        "ResourceNotFoundException",
        404,
        iot.create_thing,
        thingName="t",
        billingGroupName="bg",
    )
    assert iot.list_things()["things"] == []


def test_shadows_still_served_beside_things(iot_hub: IotHub, tenant: tuple[AccessKey, Any]) -> None:
    """``/things/{name}`` is the control plane's, ``/things/{name}/shadow`` the data plane's,
    on the same port and with the same key."""
    key, iot = tenant
    iot.create_thing(thingName="lamp")
    data = iot_hub.iot_data(key)
    data.update_thing_shadow(
        thingName="lamp", payload=json.dumps({"state": {"desired": {"on": True}}}).encode()
    )
    shadow = json.loads(data.get_thing_shadow(thingName="lamp")["payload"].read())
    assert shadow["state"]["desired"] == {"on": True}
    assert iot.describe_thing(thingName="lamp")["thingName"] == "lamp"
