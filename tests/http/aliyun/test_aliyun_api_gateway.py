"""The gateway side of the RPC endpoint (reference §1, §5): signatures from both SDKs and by
hand, replays, clocks, keys, unknown actions, Format=JSON|XML, RequestIds. Every refused call
must deliver nothing."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from alibabacloud_iot20180120 import models as iot
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_tea_util import models as util_models
from aliyun_harness import Hub, PahoDevice, b64, tea_error, unique
from aliyunsdkcore.request import CommonRequest
from aliyunsdkiot.request.v20180120.PubRequest import PubRequest

from thinghub.http.aliyun.nonce_store import NonceStore, NonceStoreUnavailable
from thinghub.http.aliyun.signing import v1_signature, v1_string_to_sign
from thinghub.registry.models import AccessKey, Device

MakeDevice = Callable[..., PahoDevice]
UUID = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}")


def _get(device: Device) -> str:
    return f"/{device.product_key}/{device.device_name}/user/get"


def _pub_request(device: Device, payload: bytes) -> PubRequest:
    request = PubRequest()
    request.set_ProductKey(device.product_key)
    request.set_TopicFullName(_get(device))
    request.set_MessageContent(b64(payload))
    return request


def _timestamp(delta: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def v1_params(key: AccessKey, action: str, **params: str) -> dict[str, str]:
    common = {
        "Action": action,
        "Version": "2018-01-20",
        "AccessKeyId": key.access_key_id,
        "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0",
        "SignatureNonce": uuid.uuid4().hex,
        "Timestamp": _timestamp(),
    }
    common.update(params)
    return common


def send_v1(
    hub: Hub, params: dict[str, str], *, secret: str, method: str = "GET"
) -> tuple[int, str, str]:
    """Sign ``params`` by reference §1.2 and send them in the query; (status, type, body)."""
    signature = v1_signature(secret, v1_string_to_sign(method, params.items()))
    query = urlencode({**params, "Signature": signature})
    connection = http.client.HTTPConnection(hub.host, hub.http_port, timeout=5)
    try:
        connection.request(method, f"/?{query}")
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        connection.close()


def sentinel(hub: Hub, device: Device, listener: PahoDevice) -> None:
    mark = unique("sentinel-").encode()
    assert hub.core_call(_pub_request(device, mark))["Success"] is True
    assert listener.expect().payload == mark


def test_request_ids_are_uppercase_uuids_on_success_and_errors(hub: Hub, device: Device) -> None:
    ok = hub.core_call(_pub_request(device, b"x"))
    error = hub.core_error(_pub_request(device, b"x"), secret="wrong")
    assert UUID.fullmatch(ok["RequestId"])
    assert UUID.fullmatch(error.get_request_id() or "")
    assert ok["RequestId"] != error.get_request_id()


def test_forged_signatures_are_refused(hub: Hub, device: Device, paho_device: MakeDevice) -> None:
    listener = paho_device(device)
    listener.subscribe(_get(device))
    # aliyun-python-sdk-core recognises our echoed string to sign (reference §1.4).
    error = hub.core_error(_pub_request(device, b"forged"), secret="not-the-secret")
    assert (error.get_error_code(), error.get_http_status()) == ("InvalidAccessKeySecret", 400)
    for v2 in (False, True):
        client = hub.tea(v2=v2, secret="not-the-secret")
        tea = tea_error(
            lambda c=client: c.pub(
                iot.PubRequest(
                    product_key=device.product_key,
                    topic_full_name=_get(device),
                    message_content=b64(b"forged"),
                )
            )
        )
        assert (tea.code, tea.status_code) == ("SignatureDoesNotMatch", 400)
    sentinel(hub, device, listener)


def test_tampered_parameter_breaks_the_signature(
    hub: Hub, device: Device, paho_device: MakeDevice
) -> None:
    listener = paho_device(device)
    listener.subscribe(_get(device))
    key = hub.root_key
    params = v1_params(
        key,
        "Pub",
        ProductKey=device.product_key,
        TopicFullName=_get(device),
        MessageContent=b64(b"original"),
        Format="JSON",
    )
    signature = v1_signature(key.secret, v1_string_to_sign("GET", params.items()))
    params["MessageContent"] = b64(b"tampered")
    query = urlencode({**params, "Signature": signature})
    connection = http.client.HTTPConnection(hub.host, hub.http_port, timeout=5)
    connection.request("GET", f"/?{query}")
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    assert (response.status, body["Code"]) == (400, "SignatureDoesNotMatch")
    assert body["Message"].startswith("Specified signature is not matched")
    assert set(body) == {"RequestId", "HostId", "Code", "Message", "Recommend"}
    sentinel(hub, device, listener)


def test_replayed_request_is_refused_and_delivers_once(
    hub: Hub, device: Device, paho_device: MakeDevice
) -> None:
    listener = paho_device(device)
    listener.subscribe(_get(device))
    params = v1_params(
        hub.root_key,
        "Pub",
        ProductKey=device.product_key,
        TopicFullName=_get(device),
        MessageContent=b64(b"once"),
        Format="JSON",
    )
    first = send_v1(hub, params, secret=hub.root_key.secret)
    again = send_v1(hub, params, secret=hub.root_key.secret)
    assert first[0] == 200 and json.loads(first[2])["Success"] is True
    assert (again[0], json.loads(again[2])["Code"]) == (400, "SignatureNonceUsed")
    assert listener.expect().payload == b"once"
    sentinel(hub, device, listener)


def test_nonce_store_failure_answers_503_and_does_nothing(
    hub: Hub, device: Device, paho_device: MakeDevice, tmp_path: Path
) -> None:
    """While the nonce store cannot make a nonce durable (its writer failed), a request must
    not be acted on: a restart would forget its nonce and let a capture of it be replayed.
    The caller gets the gateway's 503 and nothing is delivered; the nonce is not burnt, so
    the very same request succeeds once the store works again, and only once."""
    listener = paho_device(device)
    listener.subscribe(_get(device))

    async def open_store(name: str, fail: bool) -> NonceStore:
        store = NonceStore.open(tmp_path / name)
        store.start(asyncio.get_running_loop())
        if fail:  # NaN is stored as NULL: the writer's transaction fails (and is logged)
            with contextlib.suppress(NonceStoreUnavailable):
                await store.use("x", "y", float("nan"))
        return store

    (tmp_path / "failed").mkdir()
    (tmp_path / "ok").mkdir()
    failed = hub.run(open_store("failed", True))
    working = hub.run(open_store("ok", False))
    assert failed.failed is not None
    params = v1_params(
        hub.root_key,
        "Pub",
        ProductKey=device.product_key,
        TopicFullName=_get(device),
        MessageContent=b64(b"held back"),
        Format="JSON",
    )
    try:
        hub.ctx.nonce_store = failed
        status, _, body = send_v1(hub, params, secret=hub.root_key.secret)
        assert (status, json.loads(body)["Code"]) == (503, "ServiceUnavailable")
        hub.ctx.nonce_store = working
        status, _, body = send_v1(hub, params, secret=hub.root_key.secret)
        assert status == 200 and json.loads(body)["Success"] is True
        status, _, body = send_v1(hub, params, secret=hub.root_key.secret)
        assert (status, json.loads(body)["Code"]) == (400, "SignatureNonceUsed")
    finally:
        hub.ctx.nonce_store = None
        hub.run(failed.close())
        hub.run(working.close())
    assert listener.expect().payload == b"held back"
    sentinel(hub, device, listener)


def test_stale_and_malformed_timestamps(hub: Hub, device: Device, paho_device: MakeDevice) -> None:
    listener = paho_device(device)
    listener.subscribe(_get(device))
    for stamp, code in [
        (_timestamp(timedelta(minutes=-16)), "InvalidTimeStamp.Expired"),
        (_timestamp(timedelta(minutes=16)), "InvalidTimeStamp.Expired"),
        ("yesterday", "InvalidTimeStamp.Format"),
    ]:
        params = v1_params(
            hub.root_key,
            "Pub",
            ProductKey=device.product_key,
            TopicFullName=_get(device),
            MessageContent=b64(b"late"),
            Format="JSON",
            Timestamp=stamp,
        )
        status, _type, body = send_v1(hub, params, secret=hub.root_key.secret)
        assert (status, json.loads(body)["Code"]) == (400, code)
    sentinel(hub, device, listener)


def test_unknown_and_disabled_access_keys(hub: Hub, device: Device) -> None:
    ghost = AccessKey("LTAInotarealkey000000000", "secret", "root", True, 0)
    error = hub.core_error(_pub_request(device, b"x"), key=ghost)
    assert (error.get_error_code(), error.get_http_status()) == ("InvalidAccessKeyId.NotFound", 404)
    spare = hub.registry.create_access_key(hub.root_key.account_id)
    assert hub.core_call(_pub_request(device, b"x"), key=spare)["Success"] is True
    hub.registry.disable_access_key(spare.access_key_id)
    error = hub.core_error(_pub_request(device, b"x"), key=spare)
    assert (error.get_error_code(), error.get_http_status()) == ("InvalidAccessKeyId.Inactive", 400)


def test_unknown_action_and_version(hub: Hub) -> None:
    for action, version in [("NoSuchAction", "2018-01-20"), ("Pub", "2017-04-20")]:
        request = CommonRequest(domain=hub.endpoint, version=version, action_name=action)
        request.set_method("POST")
        error = hub.core_error(request)
        assert (error.get_error_code(), error.get_http_status()) == ("InvalidApi.NotFound", 404)
    client = hub.tea()
    params = open_api_models.Params(
        action="NoSuchAction",
        version="2018-01-20",
        protocol="HTTP",
        pathname="/",
        method="POST",
        auth_type="AK",
        style="RPC",
        req_body_type="formData",
        body_type="json",
    )
    tea = tea_error(
        lambda: client.call_api(
            params, open_api_models.OpenApiRequest(), util_models.RuntimeOptions()
        )
    )
    assert (tea.code, tea.status_code) == ("InvalidApi.NotFound", 404)


def test_get_requests_work(hub: Hub, device: Device, paho_device: MakeDevice) -> None:
    listener = paho_device(device)
    listener.subscribe(_get(device))
    request = CommonRequest(domain=hub.endpoint, version="2018-01-20", action_name="Pub")
    request.set_method("GET")
    request.add_query_param("ProductKey", device.product_key)
    request.add_query_param("TopicFullName", _get(device))
    request.add_query_param("MessageContent", b64(b"via GET"))
    assert hub.core_call(request)["Success"] is True
    assert listener.expect().payload == b"via GET"


def test_xml_is_the_v1_default(hub: Hub, device: Device, paho_device: MakeDevice) -> None:
    listener = paho_device(device)
    listener.subscribe(_get(device))
    params = v1_params(
        hub.root_key,
        "Pub",
        ProductKey=device.product_key,
        TopicFullName=_get(device),
        MessageContent=b64(b"<xml & friends>"),
    )
    status, content_type, body = send_v1(hub, params, secret=hub.root_key.secret)
    assert (status, content_type) == (200, "text/xml;charset=utf-8")
    match = re.fullmatch(
        r"<\?xml version='1.0' encoding='UTF-8'\?><PubResponse><RequestId>([0-9A-F-]{36})"
        r"</RequestId><Success>true</Success><MessageId>(\d+)</MessageId></PubResponse>",
        body,
    )
    assert match, body
    assert listener.expect().payload == b"<xml & friends>"
    # A business error in XML, then a gateway error in XML.
    params = v1_params(hub.root_key, "QueryProduct", ProductKey="a1NoSuchPrd", Format="xml")
    status, _type, body = send_v1(hub, params, secret=hub.root_key.secret)
    assert status == 200 and "<QueryProductResponse>" in body
    assert "<Success>false</Success><Code>iot.prod.NotExistedProduct</Code>" in body
    params = v1_params(hub.root_key, "Pub", Format="XML")
    status, content_type, body = send_v1(hub, params, secret="wrong")
    assert (status, content_type) == (400, "text/xml;charset=utf-8")
    assert body.startswith('<?xml version="1.0" encoding="UTF-8"?><Error><RequestId>')
    assert "<Code>SignatureDoesNotMatch</Code>" in body


def test_list_renders_the_same_in_xml_and_json(hub: Hub, device: Device) -> None:
    for fmt in ("JSON", "XML"):
        params = v1_params(
            hub.root_key, "QueryProductTopic", ProductKey=device.product_key, Format=fmt
        )
        status, _type, body = send_v1(hub, params, secret=hub.root_key.secret)
        assert status == 200
        if fmt == "JSON":
            infos = json.loads(body)["Data"]["ProductTopicInfo"]
            assert [i["Operation"] for i in infos] == ["0", "0", "1"]
        else:
            assert body.count("<ProductTopicInfo>") == 3
            assert "<Data><ProductTopicInfo><Id>" in body


def test_missing_common_and_required_parameters(hub: Hub, device: Device) -> None:
    params = v1_params(hub.root_key, "Pub", Format="JSON")
    del params["SignatureNonce"]
    status, _type, body = send_v1(hub, params, secret=hub.root_key.secret)
    assert (status, json.loads(body)["Code"]) == (400, "MissingSignatureNonce")
    params = v1_params(hub.root_key, "Pub", Format="JSON", ProductKey=device.product_key)
    status, _type, body = send_v1(hub, params, secret=hub.root_key.secret)
    answer = json.loads(body)
    assert (status, answer["Code"]) == (400, "MissingTopicFullName")
    assert answer["Message"] == "TopicFullName is mandatory for this action."


def test_body_over_the_limit_gets_a_gateway_error(hub: Hub) -> None:
    connection = http.client.HTTPConnection(hub.host, hub.http_port, timeout=5)
    body = b"MessageContent=" + b"A" * (600 * 1024)
    connection.request(
        "POST",
        "/?Action=Pub&Format=JSON",
        body,
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    response = connection.getresponse()
    answer: dict[str, Any] = json.loads(response.read())
    connection.close()
    assert (response.status, answer["Code"]) == (413, "RequestEntityTooLarge")
