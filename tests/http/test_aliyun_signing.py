"""Alibaba V1/V3 signature verification against requests made by the official SDKs.

A tiny ``http.server`` on 127.0.0.1 records each raw request (request target, headers, body)
and answers a canned JSON body, or, for the end-to-end error tests, the gateway error our
verifier produced, so we also see how the SDKs read it.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import pytest
from alibabacloud_iot20180120 import models as iot_models
from alibabacloud_iot20180120.client import Client as TeaIotClient
from alibabacloud_openapi_util.client import Client as OpenApiUtilClient
from alibabacloud_tea_openapi import exceptions as tea_exceptions
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_tea_util import models as util_models
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkcore.request import CommonRequest
from aliyunsdkiot.request.v20180120.BatchPubRequest import BatchPubRequest
from aliyunsdkiot.request.v20180120.PubRequest import PubRequest
from hypothesis import given
from hypothesis import strategies as st

from thinghub.http.aliyun import signing
from thinghub.http.aliyun.signing import GatewayError, NonceCache, SignatureVersion, WireRequest

AK = "testid"
SECRET = "testsecret"
PK = "a1BwAGVxxxx"
TOPIC = f"/{PK}/device1/user/get"
CONTENT = base64.b64encode(b'{"hello":"world"}').decode()


@dataclass(frozen=True)
class Key:
    secret: str
    enabled: bool = True


KEYS = {AK: Key(SECRET), "disabledid": Key("x", enabled=False)}

Responder = Callable[[WireRequest], tuple[int, dict[str, Any]]]


def _ok_response(_: WireRequest) -> tuple[int, dict[str, Any]]:
    return 200, {"RequestId": "BB71E443-4447-4024-A000-EDE09922891E", "Success": True}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Recorder)
        self.captured: list[WireRequest] = []
        self.respond: Responder = _ok_response


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, query = signing.split_target(self.path)
        wire = WireRequest(self.command, path, query, list(self.headers.items()), body)
        self.server.captured.append(wire)
        status, payload = self.server.respond(wire)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


@pytest.fixture
def endpoint(server: _Server) -> Iterator[str]:
    server.captured.clear()
    server.respond = _ok_response
    yield f"127.0.0.1:{server.server_address[1]}"
    server.respond = _ok_response


def _last(server: _Server) -> WireRequest:
    assert server.captured, "the SDK sent nothing"
    return server.captured[-1]


def _verify(wire: WireRequest, **kwargs: Any) -> signing.Verified[Key]:
    nonces = kwargs.pop("nonces", None)
    if nonces is None:  # not `or`: an empty cache is falsy (it has a length)
        nonces = NonceCache()
    return signing.authenticate(wire, KEYS.get, nonces, **kwargs)


def _fails(wire: WireRequest, code: str, status: int = 400, **kwargs: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        _verify(wire, **kwargs)
    assert (info.value.code, info.value.status) == (code, status), info.value.message
    return info.value


# --------------------------------------------------------------------------- SDK clients


def _core_pub(endpoint: str, secret: str = SECRET, ak: str = AK) -> None:
    client = AcsClient(ak, secret, "cn-shanghai")
    request = PubRequest()
    request.set_endpoint(endpoint)
    request.set_ProductKey(PK)
    request.set_TopicFullName(TOPIC)
    request.set_MessageContent(CONTENT)
    request.set_Qos(1)
    client.do_action_with_exception(request)


def _tea(endpoint: str, v2: bool = False, secret: str = SECRET) -> TeaIotClient:
    config = open_api_models.Config(
        access_key_id=AK,
        access_key_secret=secret,
        endpoint=endpoint,
        protocol="http",
        region_id="cn-shanghai",
    )
    if v2:
        config.signature_algorithm = "v2"
    return TeaIotClient(config)


def _tea_pub(endpoint: str, v2: bool = False, secret: str = SECRET) -> None:
    _tea(endpoint, v2, secret).pub(
        iot_models.PubRequest(
            product_key=PK,
            topic_full_name=TOPIC,
            message_content=CONTENT,
            qos=1,
            user_prop=[iot_models.PubRequestUserProp(key="k 1", value="ü/v+&=")],
            correlation_data=base64.b64encode(b"corr").decode(),
            response_topic=f"/{PK}/device1/user/resp",
        )
    )


def _tea_get(endpoint: str, v2: bool = False) -> None:
    params = open_api_models.Params(
        action="Pub",
        version="2018-01-20",
        protocol="HTTP",
        pathname="/",
        method="GET",
        auth_type="AK",
        style="RPC",
        req_body_type="formData",
        body_type="json",
    )
    query = {"ProductKey": PK, "TopicFullName": TOPIC, "MessageContent": CONTENT, "Qos": 0}
    request = open_api_models.OpenApiRequest(query=OpenApiUtilClient.query(query))
    _tea(endpoint, v2).call_api(params, request, util_models.RuntimeOptions())


# --------------------------------------------------------------------------- good requests


def test_core_sdk_pub_post_v1(server: _Server, endpoint: str) -> None:
    _core_pub(endpoint)
    wire = _last(server)
    assert wire.method == "POST" and wire.body.startswith(b"MessageContent=")
    ok = _verify(wire)
    assert ok.request.version is SignatureVersion.V1
    assert ok.access_key_id == AK and ok.key is KEYS[AK]
    assert ok.action == "Pub"
    assert ok.params["MessageContent"] == CONTENT  # from the form body
    assert ok.params["TopicFullName"] == TOPIC and ok.params["Qos"] == "1"
    assert ok.params["SignatureType"] == ""  # the empty SignatureType= is signed too
    assert ok.request.response_format == "JSON"


def test_core_sdk_batch_pub(server: _Server, endpoint: str) -> None:
    client = AcsClient(AK, SECRET, "cn-shanghai")
    request = BatchPubRequest()
    request.set_endpoint(endpoint)
    request.set_ProductKey(PK)
    request.set_DeviceNames(["device1", "device 2", "dév3"])
    request.set_TopicShortName("get")
    request.set_MessageContent(base64.b64encode(b"hi there").decode())
    client.do_action_with_exception(request)
    ok = _verify(_last(server))
    assert ok.params["DeviceName.2"] == "device 2" and ok.params["DeviceName.3"] == "dév3"


def test_core_sdk_get_v1(server: _Server, endpoint: str) -> None:
    client = AcsClient(AK, SECRET, "cn-shanghai")
    request = CommonRequest(domain=endpoint, version="2018-01-20", action_name="Pub")
    request.set_method("GET")
    for name, value in {
        "ProductKey": PK,
        "TopicFullName": TOPIC,
        "MessageContent": "a+b/c= d~*",
    }.items():
        request.add_query_param(name, value)
    client.do_action_with_exception(request)
    wire = _last(server)
    assert wire.method == "GET"
    assert _verify(wire).params["MessageContent"] == "a+b/c= d~*"


def test_tea_sdk_v3_post(server: _Server, endpoint: str) -> None:
    _tea_pub(endpoint)
    wire = _last(server)
    ok = _verify(wire)
    assert ok.request.version is SignatureVersion.V3
    assert ok.action == "Pub" and ok.request.api_version == "2018-01-20"
    assert ok.params["MessageContent"] == CONTENT
    assert ok.params["UserProp.1.Key"] == "k 1" and ok.params["UserProp.1.Value"] == "ü/v+&="
    assert "Action" not in ok.params and "Signature" not in ok.params


def test_tea_sdk_v3_get(server: _Server, endpoint: str) -> None:
    _tea_get(endpoint)
    wire = _last(server)
    assert wire.method == "GET" and wire.body == b""
    assert _verify(wire).params["MessageContent"] == CONTENT


def test_tea_sdk_v1_post(server: _Server, endpoint: str) -> None:
    _tea_pub(endpoint, v2=True)
    ok = _verify(_last(server))
    assert ok.request.version is SignatureVersion.V1
    assert ok.params["Format"] == "json" and ok.request.response_format == "JSON"
    assert "RegionId" not in ok.params
    assert ok.params["UserProp.1.Value"] == "ü/v+&="


def test_tea_sdk_v1_get(server: _Server, endpoint: str) -> None:
    _tea_get(endpoint, v2=True)
    wire = _last(server)
    assert wire.method == "GET"
    assert _verify(wire).request.version is SignatureVersion.V1


def test_tea_batch_pub_v3(server: _Server, endpoint: str) -> None:
    _tea(endpoint).batch_pub(
        iot_models.BatchPubRequest(
            product_key=PK,
            device_name=["device1", "device2"],
            topic_short_name="get",
            message_content=base64.b64encode(b"hi there").decode(),
            qos=0,
        )
    )
    ok = _verify(_last(server))
    assert ok.params["DeviceName.1"] == "device1" and ok.params["DeviceName.2"] == "device2"


# --------------------------------------------------------------------------- the official example


EXAMPLE_PARAMS = [
    ("AccessKeyId", "testid"),
    ("Action", "Pub"),
    ("Format", "XML"),
    ("MessageContent", "aGVsbG93b3JsZA="),
    ("ProductKey", "12345abcdeZ"),
    ("Qos", "0"),
    ("RegionId", "cn-shanghai"),
    ("ServiceCode", "iot"),
    ("SignatureMethod", "HMAC-SHA1"),
    ("SignatureNonce", "0715a395-aedf-4a41-bab7-746b43d38d88"),
    ("SignatureVersion", "1.0"),
    ("Timestamp", "2017-10-02T09:39:41Z"),
    ("TopicFullName", "/productKey/testdevice/get"),
    ("Version", "2017-04-20"),
]
EXAMPLE_STS = (
    "GET&%2F&AccessKeyId%3Dtestid%26Action%3DPub%26Format%3DXML%26MessageContent%3DaGVsbG93b3Js"
    "ZA%253D%26ProductKey%3D12345abcdeZ%26Qos%3D0%26RegionId%3Dcn-shanghai%26ServiceCode%3Diot"
    "%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D0715a395-aedf-4a41-bab7-746b43d38d88%26Si"
    "gnatureVersion%3D1.0%26Timestamp%3D2017-10-02T09%253A39%253A41Z%26TopicFullName%3D%252Fpro"
    "ductKey%252Ftestdevice%252Fget%26Version%3D2017-04-20"
)
EXAMPLE_TIME = 1506937181.0  # 2017-10-02T09:39:41Z


def test_official_worked_example() -> None:
    assert signing.v1_string_to_sign("GET", reversed(EXAMPLE_PARAMS)) == EXAMPLE_STS
    assert signing.v1_signature("testsecret", EXAMPLE_STS) == "Y9eWn4nF8QPh3c4zAFkM/k/u7eA="
    target = "/?" + "&".join(
        f"{signing.percent_encode(k)}={signing.percent_encode(v)}" for k, v in EXAMPLE_PARAMS
    )
    path, query = signing.split_target(target + "&Signature=Y9eWn4nF8QPh3c4zAFkM%2Fk%2Fu7eA%3D")
    wire = WireRequest("GET", path, query, [("Host", "iot.cn-shanghai.aliyuncs.com")])
    ok = _verify(wire, now=EXAMPLE_TIME + 60)
    assert ok.request.response_format == "XML"
    assert ok.params["MessageContent"] == "aGVsbG93b3JsZA="


# --------------------------------------------------------------------------- failures


@pytest.fixture(params=["core-v1", "tea-v1", "tea-v3"])
def signed(request: pytest.FixtureRequest, server: _Server, endpoint: str) -> WireRequest:
    if request.param == "core-v1":
        _core_pub(endpoint)
    else:
        _tea_pub(endpoint, v2=request.param == "tea-v1")
    return _last(server)


def _is_v3(wire: WireRequest) -> bool:
    return signing.parse_request(wire).version is SignatureVersion.V3


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


def _with_param(wire: WireRequest, name: str, value: str | None) -> WireRequest:
    query = [(n, v) for n, v in wire.query if n != name]
    if value is not None:
        query.append((name, value))
    return dataclasses.replace(wire, query=query)


def test_replayed_nonce(signed: WireRequest) -> None:
    nonces = NonceCache()
    _verify(signed, nonces=nonces)
    err = _fails(signed, "SignatureNonceUsed", nonces=nonces)
    assert err.message == "Specified signature nonce was used already."
    # a fresh cache (or another key's scope) accepts it
    _verify(signed, nonces=NonceCache())


def test_stale_and_future_timestamp(signed: WireRequest) -> None:
    now = time.time()
    _fails(signed, "InvalidTimeStamp.Expired", now=now + 16 * 60)
    _fails(signed, "InvalidTimeStamp.Expired", now=now - 16 * 60)
    _verify(signed, now=now + 14 * 60)


def test_tampered_param(signed: WireRequest) -> None:
    tampered = _with_param(signed, "TopicFullName", f"/{PK}/device2/user/get")
    err = _fails(tampered, "SignatureDoesNotMatch")
    assert "server string to sign is:" in err.message
    _fails(
        dataclasses.replace(signed, body=signed.body.replace(b"eyJ", b"eyK")),
        "SignatureDoesNotMatch",
    )


def test_wrong_secret(signed: WireRequest) -> None:
    with pytest.raises(GatewayError) as info:
        signing.authenticate(signed, lambda _: Key("wrong"), NonceCache())
    assert (info.value.code, info.value.status) == ("SignatureDoesNotMatch", 400)


def test_unknown_and_disabled_key(signed: WireRequest) -> None:
    with pytest.raises(GatewayError) as info:
        signing.authenticate(signed, dict[str, Key]().get, NonceCache())
    assert (info.value.code, info.value.status) == ("InvalidAccessKeyId.NotFound", 404)
    assert info.value.message == "Specified access key is not found."
    with pytest.raises(GatewayError) as info:
        signing.authenticate(signed, lambda _: KEYS["disabledid"], NonceCache())
    assert (info.value.code, info.value.status) == ("InvalidAccessKeyId.Inactive", 400)


def test_bad_timestamp_format(signed: WireRequest) -> None:
    if _is_v3(signed):
        bad = _with_header(signed, "x-acs-date", "2024-01-01 00:00:00")
    else:
        bad = _with_param(signed, "Timestamp", "1700000000")
    _fails(bad, "InvalidTimeStamp.Format")


def test_missing_pieces(signed: WireRequest) -> None:
    if _is_v3(signed):
        auth = _header(signed, "Authorization")
        unsigned_nonce = auth.replace("x-acs-signature-nonce;", "")
        _fails(_with_header(signed, "Authorization", unsigned_nonce), "IncompleteSignature")
        no_sig = auth.split(",Signature=")[0]
        _fails(_with_header(signed, "Authorization", no_sig), "IncompleteSignature")
        _fails(_with_header(signed, "x-acs-signature-nonce", None), "IncompleteSignature")
        sm3 = auth.replace("ACS3-HMAC-SHA256", "ACS3-HMAC-SM3")
        _fails(_with_header(signed, "Authorization", sm3), "InvalidSignatureMethod")
        _fails(_with_header(signed, "Authorization", None), "MissingSignature")
    else:
        for name in ("Signature", "AccessKeyId", "Timestamp", "SignatureNonce"):
            err = _fails(_with_param(signed, name, None), f"Missing{name}")
            assert err.message == f"{name} is mandatory for this action."
        _fails(_with_param(signed, "SignatureMethod", "HMAC-SHA256"), "InvalidSignatureMethod")
        _fails(_with_param(signed, "SignatureVersion", "2.0"), "InvalidSignatureVersion")


def test_v3_body_hash_must_match(server: _Server, endpoint: str) -> None:
    _tea_pub(endpoint)
    wire = _last(server)
    err = _fails(dataclasses.replace(wire, body=wire.body + b"&Qos=0"), "SignatureDoesNotMatch")
    assert "x-acs-content-sha256" in err.message


# ------------------------------------------------------------- what the SDKs make of our errors


def _gateway(wire: WireRequest) -> tuple[int, dict[str, Any]]:
    try:
        _verify(wire)
    except GatewayError as exc:
        return exc.status, {
            "RequestId": "7A4A78A8-FEA6-57F0-9ABC-F34866CA740C",
            "HostId": "iot.cn-shanghai.aliyuncs.com",
            "Code": exc.code,
            "Message": exc.message,
        }
    return _ok_response(wire)


def test_core_sdk_reads_bad_secret_as_invalid_access_key_secret(
    server: _Server, endpoint: str
) -> None:
    server.respond = _gateway
    with pytest.raises(ServerException) as info:
        _core_pub(endpoint, secret="wrong")
    # the SDK compares our echoed string to sign with its own and names the real cause
    assert info.value.get_error_code() == "InvalidAccessKeySecret"
    assert info.value.get_http_status() == 400
    with pytest.raises(ServerException) as info:
        _core_pub(endpoint, ak="nobody")
    assert info.value.get_error_code() == "InvalidAccessKeyId.NotFound"
    assert info.value.get_http_status() == 404


@pytest.mark.parametrize("v2", [False, True])
def test_tea_sdk_reads_gateway_errors(server: _Server, endpoint: str, v2: bool) -> None:
    server.respond = _gateway
    with pytest.raises(tea_exceptions.ClientException) as info:
        _tea_pub(endpoint, v2=v2, secret="wrong")
    assert info.value.code == "SignatureDoesNotMatch"
    assert info.value.status_code == 400
    _tea_pub(endpoint, v2=v2)  # and the right secret still passes through the same path


# --------------------------------------------------------------------------- nonce cache


def test_nonce_cache_expiry_and_bound() -> None:
    cache = NonceCache(max_entries=3)
    assert cache.use("ak", "n1", expires_at=100, now=0)
    assert not cache.use("ak", "n1", expires_at=100, now=50)
    assert cache.use("other", "n1", expires_at=100, now=50)  # scoped per AccessKeyId
    assert cache.use("ak", "n1", expires_at=300, now=101)  # expired: usable again
    assert cache.use("ak", "n2", expires_at=300, now=101)
    assert cache.use("ak", "n3", expires_at=300, now=101)
    assert cache.use("ak", "n4", expires_at=300, now=101)
    assert len(cache) <= 3 and cache.evicted >= 1
    with pytest.raises(ValueError):
        NonceCache(max_entries=0)


def test_forgotten_nonce_is_usable_again() -> None:
    # api.py forgets the nonce of a request refused because the nonce store could not take
    # it: that request did nothing, so sending it again is no replay.
    cache = NonceCache()
    assert cache.use("ak", "n", expires_at=100, now=0)
    cache.forget("ak", "n")
    cache.forget("ak", "never used")
    assert cache.use("ak", "n", expires_at=100, now=1)
    assert not cache.use("ak", "n", expires_at=100, now=2)


@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12)), max_size=6))
def test_fast_paths_equal_plain_quote(pairs: list[tuple[str, str]]) -> None:
    canonical = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(pairs)
    )
    expected = f"POST&%2F&{quote(canonical, safe='-_.~')}"
    assert signing.v1_string_to_sign("POST", pairs) == expected
    for name, value in pairs:
        assert signing.percent_encode(value) == quote(value, safe="-_.~")
        assert signing.percent_encode(name) == quote(name, safe="-_.~")
