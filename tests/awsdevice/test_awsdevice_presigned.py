"""SigV4 presigned URLs (thinghub/http/aws/sigv4.py ``verify_presigned``), pure: what
botocore's query signer makes verifies; a security token appended after signing (as AWS
IoT's signers do) is ignored; tampering, an unknown or disabled key, a date out of range and
an expired URL are refused with AWS's reasons."""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import pytest
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from thinghub.http.aws import sigv4

HOST = "127.0.0.1:8080"


@dataclass(frozen=True)
class Key:
    secret: str
    enabled: bool = True


KEY = Key("presigned-secret-0123456789")


def presign(expires: int = 300, *, key_id: str = "AKIAPRESIGNED", secret: str = KEY.secret) -> str:
    request = AWSRequest(method="GET", url=f"http://{HOST}/mqtt", headers={"Host": HOST})
    SigV4QueryAuth(Credentials(key_id, secret), "iotdevicegateway", "us-east-1", expires).add_auth(
        request
    )
    parts = urlsplit(request.url)
    return f"{parts.path}?{parts.query}"


def check(target: str, key: Key | None = KEY, now: float | None = None) -> object:
    raw_path, query = sigv4.split_target(target)
    assert sigv4.is_presigned(query)
    wire = sigv4.WireRequest("GET", raw_path, query, {"Host": HOST})
    parsed = sigv4.parse_presigned(wire)
    return sigv4.verify_presigned(parsed, key, now=now)


def refused(target: str, reason: str, **kwargs: object) -> str:
    with pytest.raises(sigv4.SigV4Error) as caught:
        check(target, **kwargs)  # type: ignore[arg-type]
    assert caught.value.reason == reason, caught.value
    return caught.value.message


def test_botocore_presigned_url_verifies() -> None:
    verified = check(presign())
    assert verified.access_key_id == "AKIAPRESIGNED"  # type: ignore[attr-defined]


def test_a_token_appended_after_signing_is_ignored() -> None:
    target = presign() + "&X-Amz-Security-Token=" + quote("session/token+=", safe="")
    check(target)


def test_tampering_and_keys() -> None:
    target = presign()
    refused(target.replace("us-east-1", "eu-west-1"), "InvalidSignatureException")
    refused(target + "&extra=1", "InvalidSignatureException")
    refused(target, "InvalidSignatureException", key=Key("another-secret"))
    refused(target, "UnrecognizedClientException", key=None)
    refused(target, "UnrecognizedClientException", key=Key(KEY.secret, enabled=False))
    refused(target.replace("X-Amz-Signature=", "X-Amz-Nothing="), "IncompleteSignatureException")
    refused(target + "&X-Amz-Date=20200101T000000Z", "IncompleteSignatureException")


def test_validity_window() -> None:
    now = time.time()
    target = presign(expires=60)
    check(target, now=now + 60 + 15 * 60 - 5)  # its expiry plus the clock skew
    assert "expired" in refused(target, "InvalidSignatureException", now=now + 60 + 15 * 60 + 5)
    message = refused(target, "InvalidSignatureException", now=now - 15 * 60 - 5)
    assert "not yet current" in message
