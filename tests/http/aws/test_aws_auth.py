"""Authentication, the error shape, rate limits: what boto3 makes of each answer."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pahoclient
import pytest
from awshub import LIMITED_RATE, AwsHub, RawResponse
from botocore import UNSIGNED
from botocore.config import Config
from pahoclient import unique

Sub = Callable[..., pahoclient.Client]


def _forbidden(aws: AwsHub, client: Any, sub: Sub) -> dict[str, Any]:
    """Publish with ``client`` must raise ForbiddenException and deliver nothing."""
    topic = unique("auth")
    watcher = sub(topic)
    with pytest.raises(client.exceptions.ForbiddenException) as info:
        client.publish(topic=topic, payload=b"should not arrive", retain=True)
    aws.client().publish(topic=topic, payload=b"sentinel")
    assert watcher.expect_message().payload == b"sentinel"
    root = aws.client()
    with pytest.raises(root.exceptions.ResourceNotFoundException):
        root.get_retained_message(topic=topic)
    response: dict[str, Any] = info.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 403
    return response


def test_wrong_secret(aws: AwsHub, sub: Sub) -> None:
    response = _forbidden(aws, aws.client(secret="not-the-secret"), sub)
    assert "signature we calculated does not match" in response["Error"]["Message"]


def test_unknown_access_key(aws: AwsHub, sub: Sub) -> None:
    response = _forbidden(aws, aws.client(key_id="AKIDUNKNOWN0000000000"), sub)
    assert "security token" in response["Error"]["Message"]


def test_key_of_another_account_with_this_secret(aws: AwsHub, sub: Sub) -> None:
    _forbidden(aws, aws.client(key_id=aws.other_key.access_key_id, secret=aws.root_key.secret), sub)


def test_disabled_key(aws: AwsHub, sub: Sub) -> None:
    key, client = aws.tenant()
    client.list_retained_messages()
    aws.registry.disable_access_key(key.access_key_id)
    _forbidden(aws, client, sub)


def test_unsigned_request(aws: AwsHub, sub: Sub) -> None:
    unsigned = aws.client(
        config=Config(signature_version=UNSIGNED, retries={"total_max_attempts": 1})
    )
    response = _forbidden(aws, unsigned, sub)
    assert response["Error"]["Message"] == "Missing Authentication Token"


def test_forged_signature(aws: AwsHub, sub: Sub) -> None:
    client = aws.client()

    def forge(request: Any, **kwargs: Any) -> None:
        auth = request.headers["Authorization"]
        auth = auth.decode() if isinstance(auth, bytes) else auth
        request.headers["Authorization"] = auth[:-1] + ("0" if auth[-1] != "0" else "1")

    client.meta.events.register("before-send.iot-data.Publish", forge)
    _forbidden(aws, client, sub)


def test_tampered_body_after_signing(aws: AwsHub, sub: Sub) -> None:
    client = aws.client()

    def tamper(request: Any, **kwargs: Any) -> None:
        request.body = b"X" * len(request.body)

    client.meta.events.register("before-send.iot-data.Publish", tamper)
    _forbidden(aws, client, sub)


@pytest.mark.parametrize("minutes", [-16, 16, -60 * 24])
def test_stale_and_future_signatures(aws: AwsHub, sub: Sub, minutes: int) -> None:
    topic = unique("stale")
    watcher = sub(topic)
    when = datetime.now(UTC) + timedelta(minutes=minutes)
    answer = aws.raw("POST", f"/topics/{topic}", b"late", when=when)
    _assert_error(answer, 403, "ForbiddenException")
    assert b"Signature expired" in answer.body or b"not yet current" in answer.body
    aws.client().publish(topic=topic, payload=b"sentinel")
    assert watcher.expect_message().payload == b"sentinel"


def test_within_the_skew_and_either_service_name(aws: AwsHub) -> None:
    when = datetime.now(UTC) - timedelta(minutes=14)
    assert aws.raw("GET", "/retainedMessage", when=when).status == 200
    assert aws.raw("GET", "/retainedMessage", service="iotdevicegateway").status == 200
    _assert_error(aws.raw("GET", "/retainedMessage", service="iot"), 403, "ForbiddenException")


def _assert_error(answer: RawResponse, status: int, code: str) -> dict[str, Any]:
    assert answer.status == status, answer.body
    assert answer.headers["x-amzn-errortype"] == code
    assert answer.headers["content-type"] == "application/json"
    body: dict[str, Any] = json.loads(answer.body)
    assert set(body) == {"message", "traceId"}
    assert body["traceId"] == answer.headers["x-amzn-requestid"]
    return body


def test_error_shape_on_the_wire_and_in_boto3(aws: AwsHub) -> None:
    answer = aws.raw("GET", f"/retainedMessage/{unique('none')}")
    body = _assert_error(answer, 404, "ResourceNotFoundException")
    client = aws.client()
    with pytest.raises(client.exceptions.ResourceNotFoundException) as info:
        client.get_retained_message(topic=unique("none"))
    response = info.value.response
    assert response["Error"]["Code"] == "ResourceNotFoundException"
    assert response["Error"]["Message"].startswith("No retained message")
    assert response["message"] == response["Error"]["Message"]
    request_id = response["ResponseMetadata"]["RequestId"]
    assert len(request_id) == 36 and request_id != body["traceId"]
    assert response["ResponseMetadata"]["RetryAttempts"] == 0


def test_client_errors_are_not_retried_by_boto3(aws: AwsHub) -> None:
    # Default config: standard mode, 3 attempts; a 4xx other than throttling is final.
    client = aws.client(config=Config())
    with pytest.raises(client.exceptions.InvalidRequestException) as info:
        client.publish(topic="a/#")
    assert info.value.response["ResponseMetadata"]["RetryAttempts"] == 0


def test_rate_limit_per_account_and_operation(aws: AwsHub, sub: Sub) -> None:
    key, _ = aws.tenant()
    client = aws.client(key, endpoint=aws.limited_endpoint)
    topic = unique("rate")
    for _ in range(LIMITED_RATE):
        client.publish(topic=topic, payload=b"ok")
    watcher = sub(topic)
    with pytest.raises(client.exceptions.ThrottlingException) as info:
        client.publish(topic=topic, payload=b"one too many", retain=True)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    # Other operations of the account, and other accounts, have their own buckets.
    client.list_retained_messages()
    other_key, _ = aws.tenant()
    aws.client(other_key, endpoint=aws.limited_endpoint).publish(topic=topic, payload=b"x")
    with pytest.raises(client.exceptions.ThrottlingException):
        client.publish(topic=topic)
    # None of the refused publishes arrived (other accounts never reach this root subscriber).
    aws.client().publish(topic=topic, payload=b"sentinel")
    assert watcher.expect_message().payload == b"sentinel"
