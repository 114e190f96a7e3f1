"""Things and their principals: CreateThing, DescribeThing, ListThings, UpdateThing,
DeleteThing, AttachThingPrincipal, DetachThingPrincipal, ListThingPrincipals,
ListPrincipalThings (rules: ``identity/things.py``)."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from ...identity.things import check_attribute_name, check_attributes, check_thing_name
from ..aws.errors import AwsError
from .call import Call, Control, principal
from .listing import Listing
from .shapes import thing_attribute, thing_description

__all__ = [
    "attach_thing_principal",
    "create_thing",
    "delete_thing",
    "describe_thing",
    "detach_thing_principal",
    "list_principal_things",
    "list_thing_principals",
    "list_things",
    "update_thing",
]

_THING_PRINCIPAL_TYPES = {"EXCLUSIVE_THING": True, "NON_EXCLUSIVE_THING": False}
_THINGS = Listing.by_token("things")
_PRINCIPALS = Listing.by_token("thing-principals")
_PRINCIPAL_THINGS = Listing.by_token("principal-things")


def _payload(body: Mapping[str, object]) -> tuple[dict[str, str] | None, bool]:
    """``attributePayload``: its attributes (None when absent) and its ``merge`` flag."""
    payload = body.get("attributePayload")
    if payload is None:
        return None, False
    if not isinstance(payload, Mapping):
        raise AwsError.invalid("attributePayload must be an object.")
    merge = payload.get("merge", False)
    if not isinstance(merge, bool):
        raise AwsError.invalid("attributePayload.merge must be true or false.")
    raw = payload.get("attributes")
    return (None if raw is None else check_attributes(raw)), merge


def _optional_string(body: Mapping[str, object], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise AwsError.invalid(f"{name} must be a string.")
    return value


async def create_thing(control: Control, call: Call) -> web.Response:
    name = check_thing_name(call.labels[0])
    body = call.json()
    attributes, _merge = _payload(body)
    type_name = _optional_string(body, "thingTypeName")
    billing_group = _optional_string(body, "billingGroupName")
    if billing_group is not None:
        raise AwsError.not_found(f"The billing group {billing_group} does not exist.")
    identity = control.identity
    thing = await control.write(
        lambda: identity.things.create(
            call.account, name, type_name=type_name, attributes=attributes
        )
    )
    return call.ok(
        {
            "thingName": thing.name,
            "thingArn": identity.arns.thing(call.account, thing.name),
            "thingId": thing.thing_id,
        }
    )


async def describe_thing(control: Control, call: Call) -> web.Response:
    name = check_thing_name(call.labels[0])
    thing = control.identity.things.describe(call.account, name)
    return call.ok(thing_description(control.identity.arns, thing))


async def list_things(control: Control, call: Call) -> web.Response:
    params = call.params
    attribute_name = params.get("attributeName")
    if attribute_name is not None:
        check_attribute_name(attribute_name)
    page = control.identity.things.listing(
        call.account,
        after=_THINGS.after_name(call),
        limit=_THINGS.limit(call),
        attribute_name=attribute_name,
        attribute_value=params.get("attributeValue"),
        prefix=bool(call.flag("usePrefixAttributeValue")),
        type_name=params.get("thingTypeName"),
    )
    arns = control.identity.arns
    return _THINGS.answer(call, page, "things", lambda t: thing_attribute(arns, t))


async def update_thing(control: Control, call: Call) -> web.Response:
    name = check_thing_name(call.labels[0])
    body = call.json()
    attributes, merge = _payload(body)
    type_name = _optional_string(body, "thingTypeName")
    expected = body.get("expectedVersion")
    if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool)):
        raise AwsError.invalid("expectedVersion must be an integer.")
    identity = control.identity
    await control.write(
        lambda: identity.things.update(
            call.account,
            name,
            attributes=attributes,
            merge=merge,
            expected_version=expected,
            type_name=type_name,
        )
    )
    return call.ok({})


async def delete_thing(control: Control, call: Call) -> web.Response:
    name = check_thing_name(call.labels[0])
    raw = call.params.get("expectedVersion")
    expected = None
    if raw is not None:
        if not raw.lstrip("-").isdigit():
            raise AwsError.invalid(f"expectedVersion must be an integer, not {raw!r}.")
        expected = int(raw)
    identity = control.identity
    await control.write(
        lambda: identity.things.delete(call.account, name, expected_version=expected)
    )
    return call.ok({})


async def attach_thing_principal(control: Control, call: Call) -> web.Response:
    name = check_thing_name(call.labels[0])
    certificate_id = principal(control, call, call.headers.get("x-amzn-principal"))
    raw_type = call.params.get("thingPrincipalType") or "NON_EXCLUSIVE_THING"
    if raw_type not in _THING_PRINCIPAL_TYPES:
        raise AwsError.invalid(
            f"thingPrincipalType must be EXCLUSIVE_THING or NON_EXCLUSIVE_THING, not {raw_type!r}."
        )
    exclusive = _THING_PRINCIPAL_TYPES[raw_type]
    identity = control.identity
    await control.write(
        lambda: identity.things.attach_principal(
            call.account, name, certificate_id, exclusive=exclusive
        )
    )
    return call.ok({})


async def detach_thing_principal(control: Control, call: Call) -> web.Response:
    name = check_thing_name(call.labels[0])
    certificate_id = principal(control, call, call.headers.get("x-amzn-principal"))
    identity = control.identity
    await control.write(
        lambda: identity.things.detach_principal(call.account, name, certificate_id)
    )
    return call.ok({})


async def list_thing_principals(control: Control, call: Call) -> web.Response:
    name = check_thing_name(call.labels[0])
    identity = control.identity
    page = identity.things.principals(
        call.account, name, after=_PRINCIPALS.after_name(call), limit=_PRINCIPALS.limit(call)
    )
    return _PRINCIPALS.answer(
        call, page, "principals", lambda c: identity.arns.certificate(call.account, c)
    )


async def list_principal_things(control: Control, call: Call) -> web.Response:
    certificate_id = principal(control, call, call.headers.get("x-amzn-principal"))
    page = control.identity.things.principal_things(
        call.account,
        certificate_id,
        after=_PRINCIPAL_THINGS.after_name(call),
        limit=_PRINCIPAL_THINGS.limit(call),
    )
    return _PRINCIPAL_THINGS.answer(call, page, "things", str)
