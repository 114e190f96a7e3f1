"""The AWS IoT policy evaluator (thinghub/identity/policy_eval.py), pure: a table of documents
and requests (actions, wildcards in actions and resources, policy variables, conditions,
Deny precedence), each answered as AWS IoT documents it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from thinghub.identity.policy_eval import Action, Grants, compile_policy, is_variable

REGION, ACCOUNT = "us-east-1", "123456789012"
PREFIX = f"arn:aws:iot:{REGION}:{ACCOUNT}:"
ARN = PREFIX.rstrip(":")


def doc(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(action: Any, resource: Any, **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(action: Any, resource: Any, **extra: Any) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


VARIABLES = {
    "iot:ClientId": "sensor-1",
    "iot:Connection.Thing.ThingName": "sensor-1",
    "iot:Connection.Thing.IsAttached": "true",
    "iot:Connection.Thing.Attributes[floor]": "3",
    "iot:Certificate.Subject.CommonName": "sensor-1.example",
}


def grants(*documents: str, variables: dict[str, str] | None = None) -> Grants:
    values = VARIABLES if variables is None else variables
    return Grants([compile_policy(d) for d in documents], values.get, PREFIX)


CASES: list[tuple[str, str, Action, str, bool]] = [
    # nothing allowed by default
    ("empty", doc(allow("iot:GetThingShadow", "*")), Action.PUBLISH, "a", False),
    # actions: exact, case, wildcards
    ("exact", doc(allow("iot:Publish", f"{ARN}:topic/a")), Action.PUBLISH, "a", True),
    ("other action", doc(allow("iot:Publish", f"{ARN}:topic/a")), Action.RECEIVE, "a", False),
    ("case", doc(allow("IOT:publish", f"{ARN}:topic/a")), Action.PUBLISH, "a", True),
    ("iot:*", doc(allow("iot:*", "*")), Action.SUBSCRIBE, "a/#", True),
    ("*", doc(allow("*", "*")), Action.CONNECT, "anyone", True),
    ("iot:Pub*", doc(allow("iot:Pub*", "*")), Action.PUBLISH, "a", True),
    ("iot:Pub* not receive", doc(allow("iot:Pub*", "*")), Action.RECEIVE, "a", False),
    ("iot:?eceive", doc(allow("iot:?eceive", "*")), Action.RECEIVE, "a", True),
    ("list", doc(allow(["iot:Connect", "iot:Receive"], "*")), Action.RECEIVE, "a", True),
    ("retain apart", doc(allow("iot:Publish", "*")), Action.RETAIN_PUBLISH, "a", False),
    # resources: type, wildcards, literal MQTT wildcards, case
    ("topic vs filter", doc(allow("iot:*", f"{ARN}:topic/a/b")), Action.SUBSCRIBE, "a/b", False),
    ("filter", doc(allow("iot:Subscribe", f"{ARN}:topicfilter/a/+")),
     Action.SUBSCRIBE, "a/+", True),
    ("+ literal", doc(allow("iot:Subscribe", f"{ARN}:topicfilter/a/+")),
     Action.SUBSCRIBE, "a/x", False),
    ("* spans levels", doc(allow("iot:Publish", f"{ARN}:topic/a/*")),
     Action.PUBLISH, "a/b/c", True),
    ("* empty", doc(allow("iot:Publish", f"{ARN}:topic/a*")), Action.PUBLISH, "a", True),
    ("? one", doc(allow("iot:Publish", f"{ARN}:topic/a?c")), Action.PUBLISH, "abc", True),
    ("? not two", doc(allow("iot:Publish", f"{ARN}:topic/a?c")), Action.PUBLISH, "abbc", False),
    ("inner *", doc(allow("iot:Publish", f"{ARN}:topic/a/*/z")), Action.PUBLISH, "a/b/c/z", True),
    ("case sensitive", doc(allow("iot:Publish", f"{ARN}:topic/A")), Action.PUBLISH, "a", False),
    ("other account", doc(allow("iot:Publish", "arn:aws:iot:us-east-1:999999999999:topic/a")),
     Action.PUBLISH, "a", False),
    ("other region", doc(allow("iot:Publish", "arn:aws:iot:eu-west-1:123456789012:topic/a")),
     Action.PUBLISH, "a", False),
    ("any region", doc(allow("iot:Publish", "arn:aws:iot:*:*:topic/a")), Action.PUBLISH, "a", True),
    ("empty fields", doc(allow("iot:Publish", "arn:aws:iot:::topic/a")), Action.PUBLISH, "a", True),
    ("client", doc(allow("iot:Connect", f"{ARN}:client/c1")), Action.CONNECT, "c1", True),
    ("client other", doc(allow("iot:Connect", f"{ARN}:client/c1")), Action.CONNECT, "c2", False),
    ("$aws topic", doc(allow("iot:Publish", f"{ARN}:topic/$aws/things/t/shadow/get")),
     Action.PUBLISH, "$aws/things/t/shadow/get", True),
    ("${*} literal", doc(allow("iot:Publish", f"{ARN}:topic/a${{*}}")), Action.PUBLISH, "a*", True),
    ("${*} not wild", doc(allow("iot:Publish", f"{ARN}:topic/a${{*}}")),
     Action.PUBLISH, "ab", False),
    ("${$}", doc(allow("iot:Publish", f"{ARN}:topic/${{$}}x")), Action.PUBLISH, "$x", True),
    ("shared filter", doc(allow("iot:Subscribe", f"{ARN}:topicfilter/$share/g/a/*")),
     Action.SUBSCRIBE, "$share/g/a/b", True),
    # Deny wins, whatever the order
    ("deny wins", doc(allow("iot:*", "*"), deny("iot:Publish", f"{ARN}:topic/secret/*")),
     Action.PUBLISH, "secret/x", False),
    ("deny first", doc(deny("iot:Publish", f"{ARN}:topic/secret/*"), allow("iot:*", "*")),
     Action.PUBLISH, "secret/x", False),
    ("deny elsewhere", doc(allow("iot:*", "*"), deny("iot:Publish", f"{ARN}:topic/secret/*")),
     Action.PUBLISH, "open/x", True),
    ("deny other action", doc(allow("iot:*", "*"), deny("iot:Publish", "*")),
     Action.RECEIVE, "open/x", True),
    # variables
    ("ClientId", doc(allow("iot:Publish", f"{ARN}:topic/d/${{iot:ClientId}}")),
     Action.PUBLISH, "d/sensor-1", True),
    ("ClientId other", doc(allow("iot:Publish", f"{ARN}:topic/d/${{iot:ClientId}}")),
     Action.PUBLISH, "d/sensor-2", False),
    ("ThingName", doc(allow("iot:Connect", f"{ARN}:client/${{iot:Connection.Thing.ThingName}}")),
     Action.CONNECT, "sensor-1", True),
    ("attribute", doc(allow("iot:Publish",
                            f"{ARN}:topic/floor/${{iot:Connection.Thing.Attributes[floor]}}/*")),
     Action.PUBLISH, "floor/3/temp", True),
    ("missing attribute", doc(allow("iot:Publish",
                                    f"{ARN}:topic/x/${{iot:Connection.Thing.Attributes[room]}}")),
     Action.PUBLISH, "x/", False),
    ("unknown variable", doc(allow("iot:Publish", f"{ARN}:topic/${{iot:Nonsense}}")),
     Action.PUBLISH, "", False),
    ("unresolved entry only", doc(allow("iot:Publish", [f"{ARN}:topic/${{iot:Nonsense}}",
                                                       f"{ARN}:topic/ok"])),
     Action.PUBLISH, "ok", True),
    ("certificate", doc(allow("iot:Publish",
                              f"{ARN}:topic/${{iot:Certificate.Subject.CommonName}}")),
     Action.PUBLISH, "sensor-1.example", True),
    # conditions
    ("IsAttached true", doc(allow("iot:Connect", "*", Condition={
        "Bool": {"iot:Connection.Thing.IsAttached": "true"}})), Action.CONNECT, "c", True),
    ("IsAttached bool", doc(allow("iot:Connect", "*", Condition={
        "Bool": {"iot:Connection.Thing.IsAttached": [True]}})), Action.CONNECT, "c", True),
    ("StringEquals no", doc(allow("iot:Connect", "*", Condition={
        "StringEquals": {"iot:ClientId": ["other", "more"]}})), Action.CONNECT, "c", False),
    ("StringLike", doc(allow("iot:Connect", "*", Condition={
        "StringLike": {"iot:ClientId": "sensor-*"}})), Action.CONNECT, "c", True),
    ("StringNotLike", doc(allow("iot:Connect", "*", Condition={
        "StringNotLike": {"iot:ClientId": "sensor-*"}})), Action.CONNECT, "c", False),
    ("IgnoreCase", doc(allow("iot:Connect", "*", Condition={
        "StringEqualsIgnoreCase": {"iot:ClientId": "SENSOR-1"}})), Action.CONNECT, "c", True),
    ("value variable", doc(allow("iot:Connect", "*", Condition={
        "StringEquals": {"iot:ClientId": "${iot:Connection.Thing.ThingName}"}})),
     Action.CONNECT, "c", True),
    ("Null", doc(allow("iot:Connect", "*", Condition={
        "Null": {"iot:Connection.Thing.Attributes[room]": "true"}})), Action.CONNECT, "c", True),
    ("IfExists", doc(allow("iot:Connect", "*", Condition={
        "StringEqualsIfExists": {"iot:Connection.Thing.Attributes[room]": "x"}})),
     Action.CONNECT, "c", True),
    ("absent key", doc(allow("iot:Connect", "*", Condition={
        "StringEquals": {"iot:Connection.Thing.Attributes[room]": "x"}})),
     Action.CONNECT, "c", False),
    ("two operators", doc(allow("iot:Connect", "*", Condition={
        "StringEquals": {"iot:ClientId": "sensor-1"},
        "Bool": {"iot:Connection.Thing.IsAttached": "false"}})), Action.CONNECT, "c", False),
    ("unsupported operator", doc(allow("iot:Connect", "*", Condition={
        "IpAddress": {"aws:SourceIp": "10.0.0.0/8"}})), Action.CONNECT, "c", False),
    ("unsupported key", doc(allow("iot:Connect", "*", Condition={
        "StringEquals": {"aws:SourceIp": "10.0.0.1"}})), Action.CONNECT, "c", False),
    ("unsupported deny skipped", doc(allow("iot:Connect", "*"), deny("iot:Connect", "*",
        Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}})), Action.CONNECT, "c", True),
    ("conditional deny", doc(allow("iot:Connect", "*"), deny("iot:Connect", "*", Condition={
        "Bool": {"iot:Connection.Thing.IsAttached": "true"}})), Action.CONNECT, "c", False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("document", "action", "name", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_policy_table(document: str, action: Action, name: str, expected: bool) -> None:
    assert grants(document).allows(action, name) is expected


def test_policies_add_up_and_a_deny_in_any_of_them_wins() -> None:
    publish = doc(allow("iot:Publish", f"{ARN}:topic/a/*"))
    receive = doc(allow("iot:Receive", f"{ARN}:topic/a/*"))
    both = grants(publish, receive)
    assert both.allows(Action.PUBLISH, "a/1") and both.allows(Action.RECEIVE, "a/1")
    fence = doc(deny("iot:*", f"{ARN}:topic/a/private"))
    fenced = grants(publish, receive, fence)
    assert not fenced.allows(Action.PUBLISH, "a/private")
    assert not fenced.allows(Action.RECEIVE, "a/private")
    assert fenced.allows(Action.PUBLISH, "a/public")


def test_variable_values_are_literal() -> None:
    """A client id ``+`` or ``a*`` grants that string, never a wildcard (AWS IoT docs,
    "Basic policy variables"); a thing that is not attached resolves nothing."""
    policy = doc(allow("iot:Subscribe", f"{ARN}:topicfilter/my/${{iot:ClientId}}/topic"))
    plus = grants(policy, variables={"iot:ClientId": "+"})
    assert plus.allows(Action.SUBSCRIBE, "my/+/topic")
    assert not plus.allows(Action.SUBSCRIBE, "my/x/topic")
    star = grants(doc(allow("iot:Publish", f"{ARN}:topic/${{iot:ClientId}}")),
                  variables={"iot:ClientId": "a*"})  # fmt: skip
    assert star.allows(Action.PUBLISH, "a*") and not star.allows(Action.PUBLISH, "ab")
    unattached = grants(
        doc(allow("iot:Connect", f"{ARN}:client/${{iot:Connection.Thing.ThingName}}")),
        variables={"iot:ClientId": "c1", "iot:Connection.Thing.IsAttached": "false"},
    )
    assert not unattached.allows(Action.CONNECT, "c1")
    assert not unattached.allows(Action.CONNECT, "")


def test_variables_are_asked_only_when_an_action_needs_them() -> None:
    asked: list[str] = []

    def lookup(name: str) -> str | None:
        asked.append(name)
        return "t1"

    policy = compile_policy(
        doc(
            allow("iot:Connect", f"{ARN}:client/${{iot:ClientId}}"),
            allow("iot:Publish", f"{ARN}:topic/${{iot:Connection.Thing.Attributes[zone]}}/*"),
        )
    )
    assert policy.variables == {"iot:ClientId", "iot:Connection.Thing.Attributes[zone]"}
    g = Grants([policy], lookup, PREFIX)
    assert g.allows(Action.CONNECT, "t1")
    assert asked == ["iot:ClientId"]
    assert g.allows(Action.PUBLISH, "t1/x") and g.allows(Action.PUBLISH, "t1/y")
    assert asked == ["iot:ClientId", "iot:Connection.Thing.Attributes[zone]"]  # resolved once


def test_unsupported_conditions_are_counted() -> None:
    policy = compile_policy(
        doc(
            allow("iot:Connect", "*"),
            allow("iot:Publish", "*", Condition={"DateLessThan": {"aws:CurrentTime": "2030"}}),
        )
    )
    assert policy.unsupported == 1 and len(policy.statements) == 1


@pytest.mark.parametrize(
    "name",
    ["iot:ClientId", "iot:Connection.Thing.Attributes[a.b]", "iot:Certificate.Issuer.Country"],
)
def test_known_variables(name: str) -> None:
    assert is_variable(name)


@pytest.mark.parametrize("name", ["aws:SourceIp", "iot:Certificate.Subject.Nope", "iot:Other"])
def test_unknown_variables(name: str) -> None:
    assert not is_variable(name)
