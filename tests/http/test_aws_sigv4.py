"""SigV4 verification against requests signed by botocore itself.

A real ``boto3.client("iot-data")`` builds and signs every request; a ``before-send`` hook takes
the prepared request and answers with a canned 200, so nothing touches the network.  The
request is then handed to the verifier the way the wire would: raw path, decoded query, the
headers including the ``Host`` urllib3 would add, and the body.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSPreparedRequest, AWSRequest, AWSResponse
from botocore.credentials import Credentials
from botocore.utils import normalize_url_path
from hypothesis import given
from hypothesis import strategies as st

from thinghub.http.aws import sigv4
from thinghub.http.aws.sigv4 import SigV4Error, WireRequest

AKID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
ENDPOINT = "http://127.0.0.1:8443"


@dataclass(frozen=True)
class Key:
    secret: str
    enabled: bool = True


KEYS = {AKID: Key(SECRET), "AKIDDISABLED": Key("s3cret", enabled=False)}


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def _wire(prepared: AWSPreparedRequest) -> WireRequest:
    parts = urlsplit(prepared.url)
    path, query = sigv4.split_target(parts.path + ("?" + parts.query if parts.query else ""))
    body = prepared.body
    if body is None:
        data = b""
    elif isinstance(body, bytes | bytearray):
        data = bytes(body)
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = body.read()
    headers = [
        (name, value.decode() if isinstance(value, bytes) else value)
        for name, value in prepared.headers.items()
    ]
    if not any(name.lower() == "host" for name, _ in headers):
        # What urllib3 sends; botocore signing with the CRT (awscrt installed, as beside
        # awsiotsdk) has set the header itself, and urllib3 then sends that one.
        headers.append(("Host", parts.netloc))
    return WireRequest(prepared.method, path, query, headers, data)


@pytest.fixture
def iot_data() -> Iterator[tuple[Any, list[WireRequest]]]:
    client = boto3.client(
        "iot-data",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id=AKID,
        aws_secret_access_key=SECRET,
    )
    captured: list[WireRequest] = []

    def before_send(request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        captured.append(_wire(request))
        return AWSResponse(request.url, 200, {}, _Raw(b"{}"))

    client.meta.events.register("before-send.iot-data", before_send)
    yield client, captured


def _one(iot_data: tuple[Any, list[WireRequest]], operation: str, **kwargs: Any) -> WireRequest:
    client, captured = iot_data
    captured.clear()
    getattr(client, operation)(**kwargs)
    assert len(captured) == 1
    return captured[0]


def _ok(wire: WireRequest, **kwargs: Any) -> sigv4.Verified[Key]:
    return sigv4.authenticate(wire, KEYS.get, **kwargs)


def _fails(wire: WireRequest, reason: str, **kwargs: Any) -> SigV4Error:
    with pytest.raises(SigV4Error) as info:
        sigv4.authenticate(wire, KEYS.get, **kwargs)
    err = info.value
    assert err.reason == reason, err.message
    assert err.status == 403
    assert err.error_type == "ForbiddenException"
    return err


TOPICS = [
    "simple",
    "a/b/c",
    "with space/and more",
    "+#$?&=%",
    "dev/a b/ü+#/$x?y&z=1%2F",
    "日本語/トピック/ü",
    "percent%25already/%2F",
    "tilde~dash-dot._under",
    "",
]


@pytest.mark.parametrize("topic", TOPICS)
def test_publish_topics_verify(iot_data: tuple[Any, list[WireRequest]], topic: str) -> None:
    wire = _one(iot_data, "publish", topic=topic, qos=1, payload=b"hello")
    ok = _ok(wire)
    assert ok.access_key_id == AKID
    assert ok.request.service == "iotdata"
    assert ok.key is KEYS[AKID]
    # the topic travels as one encoded path segment: decoding it once gives it back
    if topic:
        assert wire.raw_path.startswith("/topics/") and "/" not in wire.raw_path[8:]


def test_publish_all_mqtt5_fields(iot_data: tuple[Any, list[WireRequest]]) -> None:
    wire = _one(
        iot_data,
        "publish",
        topic="dev/a b/ü+#/$x?y&z=1%2F",
        qos=1,
        retain=True,
        payload=b'\x00\x01hello{"k":1}',
        userProperties=json.dumps([{"deviceName": "alpha"}, {"deviceCnt": "45"}]),
        payloadFormatIndicator="UTF8_DATA",
        contentType="application/json; charset=utf-8",
        responseTopic="resp/topic one",
        correlationData="Y29yci0xMjM=",
        messageExpiry=3600,
    )
    ok = _ok(wire)
    assert dict(ok.query)["contentType"] == "application/json; charset=utf-8"
    signed = ok.request.signed_headers
    assert "x-amz-mqtt5-user-properties" in signed and "host" in signed


@pytest.mark.parametrize("payload", [b"", b"\x00" * 3, "text ü".encode(), bytes(range(256)) * 64])
def test_publish_payloads(iot_data: tuple[Any, list[WireRequest]], payload: bytes) -> None:
    _ok(_one(iot_data, "publish", topic="t/p", payload=payload))


def test_user_properties_as_list(iot_data: tuple[Any, list[WireRequest]]) -> None:
    _ok(_one(iot_data, "publish", topic="t", userProperties=[{"k": "v w"}]))


@pytest.mark.parametrize(
    ("operation", "kwargs"),
    [
        ("get_retained_message", {"topic": "dev/a b/ü"}),
        ("list_retained_messages", {}),
        ("list_retained_messages", {"maxResults": 5, "nextToken": "abc/+= ~"}),
        ("get_connection", {"clientId": "client/1 x", "includeSocketInformation": True}),
        ("delete_connection", {"clientId": "c/1", "cleanSession": True}),
        ("list_subscriptions", {"clientId": "c 1", "maxResults": 3}),
        ("send_direct_message", {"clientId": "c1", "topic": "a/b c", "payload": b"x"}),
        ("get_thing_shadow", {"thingName": "thing1", "shadowName": "sh1"}),
        ("update_thing_shadow", {"thingName": "thing1", "payload": b'{"state":{}}'}),
        ("delete_thing_shadow", {"thingName": "thing1"}),
    ],
)
def test_other_operations_verify(
    iot_data: tuple[Any, list[WireRequest]], operation: str, kwargs: dict[str, Any]
) -> None:
    _ok(_one(iot_data, operation, **kwargs))


@pytest.mark.parametrize("region", ["eu-central-1", "cn-north-1", "local"])
def test_any_region(region: str) -> None:
    client = boto3.client(
        "iot-data",
        endpoint_url=ENDPOINT,
        region_name=region,
        aws_access_key_id=AKID,
        aws_secret_access_key=SECRET,
    )
    captured: list[WireRequest] = []

    def before_send(request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        captured.append(_wire(request))
        return AWSResponse(request.url, 200, {}, _Raw(b"{}"))

    client.meta.events.register("before-send.iot-data", before_send)
    client.publish(topic="r", payload=b"x")
    assert _ok(captured[0]).region == region


def _signed_with_auth(
    url: str,
    *,
    method: str = "POST",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    service: str = "iotdata",
    token: str | None = None,
) -> WireRequest:
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    SigV4Auth(Credentials(AKID, SECRET, token), service, "us-east-1").add_auth(request)
    return _wire(request.prepare())


def test_raw_unencoded_slashes() -> None:
    # non-SDK clients (AWS's own requests sample) send /topics/a/b/c
    wire = _signed_with_auth(f"{ENDPOINT}/topics/a/b/c?qos=1", body=b"{}")
    assert wire.raw_path == "/topics/a/b/c"
    _ok(wire)


def test_iotdevicegateway_service_name() -> None:
    _ok(_signed_with_auth(f"{ENDPOINT}/topics/x", service="iotdevicegateway"))


def test_date_header_instead_of_x_amz_date() -> None:
    # botocore signs with Date (not X-Amz-Date) when the caller supplied a Date header
    wire = _signed_with_auth(
        f"{ENDPOINT}/topics/x", headers={"Date": "Mon, 01 Jan 2024 00:00:00 GMT"}
    )
    names = {name.lower() for name, _ in _pairs(wire)}
    assert "date" in names and "x-amz-date" not in names
    _ok(wire)


def test_session_token_header_is_signed() -> None:
    _ok(_signed_with_auth(f"{ENDPOINT}/topics/x", token="session-token"))


def test_content_sha256_header() -> None:
    body = b"payload"
    digest = hashlib.sha256(body).hexdigest()
    wire = _signed_with_auth(
        f"{ENDPOINT}/topics/x", body=body, headers={"X-Amz-Content-SHA256": digest}
    )
    _ok(wire)
    _fails(dataclasses.replace(wire, body=b"other"), "XAmzContentSHA256Mismatch")
    unsigned = _signed_with_auth(
        f"{ENDPOINT}/topics/x", body=body, headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}
    )
    _fails(unsigned, "XAmzContentSHA256Mismatch")
    parsed = sigv4.parse(unsigned)
    sigv4.verify(parsed, KEYS[AKID], allow_unsigned_payload=True)


def test_canonical_request_matches_botocore(iot_data: tuple[Any, list[WireRequest]]) -> None:
    client, captured = iot_data
    seen: list[str] = []

    def canonical(request: AWSRequest, **_: Any) -> None:
        # runs after signing: recompute botocore's canonical request without Authorization
        auth = SigV4Auth(Credentials(AKID, SECRET), "iotdata", "us-east-1")
        authorization = request.headers["Authorization"]
        del request.headers["Authorization"]
        seen.append(auth.canonical_request(request))
        request.headers["Authorization"] = authorization

    client.meta.events.register_last("request-created.iot-data", canonical)
    client.publish(topic="dev/a b/ü+#/$x?y&z=1%2F", qos=1, responseTopic="r/t o", payload=b"x")
    parsed = sigv4.parse(captured[-1])
    ours = sigv4.canonical_request(
        parsed.wire.method,
        parsed.wire.raw_path,
        parsed.wire.query,
        parsed.headers,
        parsed.signed_headers,
        hashlib.sha256(parsed.wire.body).hexdigest(),
    )
    assert ours == seen[-1]
    assert (
        "/topics/dev%252Fa%2520b%252F%25C3%25BC%252B%2523%252F%2524x%253Fy%2526z%253D1%25252F"
        in ours
    )


def test_canonical_uri_double_encodes() -> None:
    assert sigv4.canonical_uri("/topics/a%2Fb") == "/topics/a%252Fb"
    assert sigv4.canonical_uri("/") == "/"
    assert sigv4.canonical_uri("/topics/") == "/topics/"
    assert sigv4.canonical_uri("/topics/a%2F..%2Fb") == "/topics/a%252F..%252Fb"


# Paths that botocore's normalize_url_path would change (or that RFC 3986 §6.2.2 makes
# equivalent to one it would change): never signed as sent, so never routed.
NON_CANONICAL_PATHS = [
    "",
    "topics/x",
    "/topics/cmd/reboot/../../status",
    "/topics/./status",
    "/topics/evil/../status",
    "/topics/status/.",
    "/topics/status/..",
    "/topics/..",
    "/topics/.",
    "/topics//status",
    "/topics/status//",
    "//topics/status",
    "/topics/%2e%2e/status",
    "/topics/%2E%2E/status",
    "/topics/.%2e/status",
    "/topics/%2e./status",
    "/topics/%2E/status",
    "/things/../shadow",
    "/a//b/./c/../d/",
]


@pytest.mark.parametrize("path", NON_CANONICAL_PATHS)
def test_non_canonical_paths_are_refused(path: str) -> None:
    assert not sigv4.is_canonical_path(path)
    with pytest.raises(SigV4Error) as info:
        sigv4.check_path(path)
    assert (info.value.status, info.value.error_type) == (400, "InvalidRequestException")
    with pytest.raises(SigV4Error):
        sigv4.canonical_uri(path)


@pytest.mark.parametrize(
    "path",
    ["/", "/topics/", "/topics/a/b/c", "/topics/a%2F..%2Fb", "/topics/...", "/topics/.a./b",
     "/topics/a%2F%2Fb", "/topics/%252e%252e", "/topics/%2e%2e%2e", "/topics/a/"],
)  # fmt: skip
def test_canonical_paths_are_their_own_normal_form(path: str) -> None:
    assert sigv4.is_canonical_path(path)
    assert sigv4.canonical_uri(path) == quote(normalize_url_path(path), safe="/~")


@given(
    st.lists(st.sampled_from(["", ".", "..", "a", "%2e", "%2E%2e", "b%2F..", "..."]), max_size=6)
)
def test_canonical_means_botocore_leaves_it_alone(segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    if sigv4.is_canonical_path(path):
        assert normalize_url_path(path) == path
        assert all(unquote(s) not in (".", "..") for s in segments)


# Topics with "." and ".." levels are legal MQTT topic names (MQTT 5 §4.7: levels are
# literal); botocore writes their "/" as %2F, so the label stays one segment and verifies.
DOT_LEVEL_TOPICS = ["a/../b", "../a", "a/..", "./a", "a/./b", "...", ". .", "a//b", "/a", "a/"]


@pytest.mark.parametrize("topic", DOT_LEVEL_TOPICS)
def test_dot_level_topics_verify(iot_data: tuple[Any, list[WireRequest]], topic: str) -> None:
    wire = _one(iot_data, "publish", topic=topic, qos=1, payload=b"x")
    assert "/" not in wire.raw_path[len("/topics/") :]
    _ok(wire)


@pytest.mark.parametrize("label", [".", ".."])
@pytest.mark.parametrize(
    ("operation", "name"),
    [("publish", "topic"), ("get_retained_message", "topic"), ("get_connection", "clientId"),
     ("get_thing_shadow", "thingName")],
)  # fmt: skip
def test_sdk_cannot_sign_a_dot_label(
    iot_data: tuple[Any, list[WireRequest]], operation: str, name: str, label: str
) -> None:
    # botocore signs /topics/.. as "/": the signature does not cover the label, so it is
    # refused as a non-canonical path, not verified.
    wire = _one(iot_data, operation, **{name: label})
    with pytest.raises(SigV4Error) as info:
        _ok(wire)
    assert (info.value.status, info.value.error_type) == (400, "InvalidRequestException")


def test_signature_for_the_resolved_path_does_not_cover_the_literal_one(
    signed: WireRequest,
) -> None:
    # signed for /topics/a%2Fb%20c; sent to a path that botocore would resolve to it
    for path in ("/topics/x/../a%2Fb%20c", "/topics/./a%2Fb%20c", "/topics//a%2Fb%20c"):
        with pytest.raises(SigV4Error) as info:
            _ok(dataclasses.replace(signed, raw_path=path))
        assert info.value.status == 400


# --------------------------------------------------------------------------- failures


@pytest.fixture
def signed(iot_data: tuple[Any, list[WireRequest]]) -> WireRequest:
    return _one(
        iot_data,
        "publish",
        topic="a/b c",
        qos=1,
        payload=b"body",
        userProperties=[{"k": "v"}],
    )


def _pairs(wire: WireRequest) -> list[tuple[str, str]]:
    headers = wire.headers
    return list(headers.items() if isinstance(headers, Mapping) else headers)


def _with_header(wire: WireRequest, name: str, value: str | None) -> WireRequest:
    headers = [(n, v) for n, v in _pairs(wire) if n.lower() != name.lower()]
    if value is not None:
        headers.append((name, value))
    return dataclasses.replace(wire, headers=headers)


def _header(wire: WireRequest, name: str) -> str:
    return next(v for n, v in _pairs(wire) if n.lower() == name.lower())


def test_tampered_path(signed: WireRequest) -> None:
    err = _fails(
        dataclasses.replace(signed, raw_path="/topics/a%2Fb%20d"), "InvalidSignatureException"
    )
    assert err.message.startswith(sigv4.MISMATCH_MESSAGE)
    assert err.canonical_request is not None and "/topics/a%252Fb%2520d" in err.canonical_request


def test_encoded_versus_raw_slash_differ(signed: WireRequest) -> None:
    _fails(dataclasses.replace(signed, raw_path="/topics/a/b%20c"), "InvalidSignatureException")


def test_tampered_query(signed: WireRequest) -> None:
    _fails(dataclasses.replace(signed, query=[("qos", "0")]), "InvalidSignatureException")
    _fails(
        dataclasses.replace(signed, query=[*signed.query, ("retain", "true")]),
        "InvalidSignatureException",
    )


def test_tampered_body(signed: WireRequest) -> None:
    _fails(dataclasses.replace(signed, body=b"bodx"), "InvalidSignatureException")


def test_tampered_signed_header(signed: WireRequest) -> None:
    _fails(_with_header(signed, "x-amz-mqtt5-user-properties", "W10="), "InvalidSignatureException")
    _fails(_with_header(signed, "Host", "evil.example:8443"), "InvalidSignatureException")


def test_unsigned_header_may_change(signed: WireRequest) -> None:
    _ok(_with_header(signed, "User-Agent", "something else"))


def test_tampered_date(signed: WireRequest) -> None:
    date = _header(signed, "X-Amz-Date")
    later = date[:-3] + ("00Z" if date[-3:] != "00Z" else "01Z")
    _fails(_with_header(signed, "X-Amz-Date", later), "InvalidSignatureException")


def test_wrong_secret(signed: WireRequest) -> None:
    with pytest.raises(SigV4Error) as info:
        sigv4.authenticate(signed, lambda _: Key("not the secret"))
    assert info.value.reason == "InvalidSignatureException"
    assert "The String-to-Sign should have been" in info.value.message


def test_unknown_and_disabled_keys(signed: WireRequest) -> None:
    for lookup in (dict[str, Key]().get, lambda _: KEYS["AKIDDISABLED"]):
        with pytest.raises(SigV4Error) as info:
            sigv4.authenticate(signed, lookup)
        assert info.value.reason == "UnrecognizedClientException"
        assert info.value.message == "The security token included in the request is invalid."
        assert (info.value.status, info.value.error_type) == (403, "ForbiddenException")


def test_stale_and_future_dates(signed: WireRequest) -> None:
    now = time.time()
    err = _fails(signed, "InvalidSignatureException", now=now + 16 * 60)
    assert err.message.startswith("Signature expired: ")
    assert "is now earlier than" in err.message and err.message.endswith("- 15 min.)")
    err = _fails(signed, "InvalidSignatureException", now=now - 16 * 60)
    assert err.message.startswith("Signature not yet current: ")
    _ok(signed, now=now + 14 * 60)
    _ok(signed, now=now - 14 * 60)


def test_missing_authorization(signed: WireRequest) -> None:
    err = _fails(_with_header(signed, "Authorization", None), "MissingAuthenticationTokenException")
    assert err.message == "Missing Authentication Token"


def test_incomplete_authorization(signed: WireRequest) -> None:
    err = _fails(
        _with_header(signed, "Authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/x"),
        "IncompleteSignatureException",
    )
    assert "requires 'Signature' parameter" in err.message
    _fails(_with_header(signed, "X-Amz-Date", None), "IncompleteSignatureException")
    _fails(
        _with_header(signed, "X-Amz-Date", "2024-01-01T00:00:00Z"), "IncompleteSignatureException"
    )
    _fails(_with_header(signed, "Authorization", "Bearer abc"), "IncompleteSignatureException")


def test_scope_checks(signed: WireRequest) -> None:
    auth = _header(signed, "Authorization")
    wrong_service = auth.replace("/iotdata/", "/s3/")
    err = _fails(_with_header(signed, "Authorization", wrong_service), "InvalidSignatureException")
    assert err.message.startswith("Credential should be scoped to correct service: 'iotdata'.")
    date = _header(signed, "X-Amz-Date")
    wrong_date = auth.replace(f"/{date[:8]}/", "/20000101/")
    err = _fails(_with_header(signed, "Authorization", wrong_date), "InvalidSignatureException")
    assert "Date in Credential scope does not match" in err.message
    no_host = auth.replace("SignedHeaders=host;", "SignedHeaders=")
    err = _fails(_with_header(signed, "Authorization", no_host), "IncompleteSignatureException")
    assert "'Host'" in err.message


def test_split_target_keeps_plus_literal() -> None:
    path, query = sigv4.split_target("/topics/a%2Fb?x=a+b&y=%2B%20&flag")
    assert path == "/topics/a%2Fb"
    assert query == [("x", "a+b"), ("y", "+ "), ("flag", "")]


@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12)), max_size=6))
def test_canonical_query_equals_plain_quote(pairs: list[tuple[str, str]]) -> None:
    expected = "&".join(
        f"{k}={v}"
        for k, v in sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in pairs)
    )
    assert sigv4.canonical_query(pairs) == expected
