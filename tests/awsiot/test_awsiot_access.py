"""Who may call the control plane, and in which account: SigV4 with service ``iot`` (boto3's
``iot`` client) and ``iotdata`` (its ``iot-data`` client) both verify with the hub's keys,
each on its own plane; every key acts in its own account; the errors of bad requests."""

from __future__ import annotations

import json
from typing import Any

from iothub import SECRET, IotHub, refused

from thinghub.registry.models import AccessKey


def test_both_clients_work_with_one_key(iot_hub: IotHub, tenant: tuple[AccessKey, Any]) -> None:
    key, iot = tenant
    iot.create_thing(thingName="pump")
    data = iot_hub.iot_data(key)
    assert (
        data.publish(topic="pump/status", qos=1, payload=b"on")["ResponseMetadata"][
            "HTTPStatusCode"
        ]
        == 200
    )
    assert iot.describe_thing(thingName="pump")["thingName"] == "pump"


def test_signature_problems_are_403_with_aws_codes(iot_hub: IotHub) -> None:
    wrong = iot_hub.iot(secret=SECRET + "x")
    refused("InvalidSignatureException", 403, wrong.list_things)
    registry = iot_hub.hub.registry
    assert registry is not None
    unknown = AccessKey("AKIAUNKNOWNKEY0000000", "s", "root", True, 0)
    refused("UnrecognizedClientException", 403, iot_hub.iot(unknown).list_things)
    # A request signed for the data plane's service is not one for the control plane.
    answer = iot_hub.raw("GET", "/things", service="iotdata")
    assert answer.status == 403
    assert answer.headers["x-amzn-errortype"] == "InvalidSignatureException"
    unsigned = iot_hub._pool.urlopen("GET", iot_hub.endpoint + "/things", retries=False)
    assert unsigned.status == 403
    assert unsigned.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"


def test_a_disabled_key_is_refused(iot_hub: IotHub, tenant: tuple[AccessKey, Any]) -> None:
    key, iot = tenant
    iot.list_things()
    registry = iot_hub.hub.registry
    assert registry is not None
    registry.disable_access_key(key.access_key_id)
    refused("UnrecognizedClientException", 403, iot.list_things)


def test_accounts_see_only_their_own(iot_hub: IotHub, tenant: tuple[AccessKey, Any]) -> None:
    _key, iot = tenant
    _other_key, other = iot_hub.tenant()
    iot.create_thing(thingName="mine", attributePayload={"attributes": {"a": "1"}})
    made = iot.create_keys_and_certificate(setAsActive=True)
    cert_id, arn = made["certificateId"], made["certificateArn"]
    iot.create_policy(
        policyName="mine",
        policyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}],
            }
        ),
    )
    iot.attach_thing_principal(thingName="mine", principal=arn)
    refused("ResourceNotFoundException", 404, other.describe_thing, thingName="mine")
    refused("ResourceNotFoundException", 404, other.describe_certificate, certificateId=cert_id)
    refused("ResourceNotFoundException", 404, other.get_policy, policyName="mine")
    refused(
        "ResourceNotFoundException",
        404,
        other.update_certificate,
        certificateId=cert_id,
        newStatus="REVOKED",
    )
    refused("ResourceNotFoundException", 404, other.list_principal_things, principal=arn)
    refused("ResourceNotFoundException", 404, other.list_attached_policies, target=arn)
    other.create_thing(thingName="theirs")
    refused(
        "ResourceNotFoundException",
        404,
        other.attach_thing_principal,
        thingName="theirs",
        principal=arn,
    )
    # The same names are free in another account.
    other.create_thing(thingName="mine")
    assert other.describe_thing(thingName="mine")["attributes"] == {}
    assert [t["thingName"] for t in other.list_things()["things"]] == ["mine", "theirs"]
    assert other.list_certificates()["certificates"] == []
    assert other.list_policies()["policies"] == []
    # Nothing of the first account changed.
    assert iot.describe_certificate(certificateId=cert_id)["certificateDescription"]["status"] == (
        "ACTIVE"
    )
    assert iot.list_thing_principals(thingName="mine")["principals"] == [arn]


def test_describe_endpoint(iot_hub: IotHub, iot: Any) -> None:
    for kind in ("iot:Data-ATS", "iot:Data", "iot:CredentialProvider", "iot:Jobs"):
        assert iot.describe_endpoint(endpointType=kind)["endpointAddress"] == "127.0.0.1"
    assert iot.describe_endpoint()["endpointAddress"] == "127.0.0.1"
    refused("InvalidRequestException", 400, iot.describe_endpoint, endpointType="iot:Nope")


def test_requests_boto3_would_not_send(iot_hub: IotHub) -> None:
    wrong_verb = iot_hub.raw("DELETE", "/things")
    assert wrong_verb.status == 405
    assert wrong_verb.headers["x-amzn-errortype"] == "MethodNotAllowedException"
    dotted = iot_hub.raw("GET", "/policies/%2e/version")  # a dot segment, encoded
    assert dotted.status == 400
    assert dotted.headers["x-amzn-errortype"] == "InvalidRequestException"
    too_large = iot_hub.raw("POST", "/certificate/register-no-ca", b"x" * (300 * 1024))
    assert too_large.status == 413
    not_json = iot_hub.raw("POST", "/certificate/register-no-ca", b"{not json")
    assert not_json.status == 400
    assert json.loads(not_json.body)["message"] == "The request body is not valid JSON."
    bad_id = iot_hub.raw("GET", "/certificates/xyz")
    assert bad_id.status == 400
    bad_flag = iot_hub.raw("POST", "/keys-and-certificate?setAsActive=maybe")
    assert bad_flag.status == 400
    for answer in (wrong_verb, dotted, too_large, not_json, bad_id, bad_flag):
        assert answer.headers["x-amzn-requestid"]
        assert json.loads(answer.body)["traceId"] == answer.headers["x-amzn-requestid"]
