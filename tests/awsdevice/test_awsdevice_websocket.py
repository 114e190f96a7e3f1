"""MQTT over WebSocket signed with SigV4 (a presigned ``/mqtt`` URL, service
``iotdevicegateway``): the SDK's ``websockets_with_default_aws_signing`` connects to the TLS
port, acting in its key's account; a bad signature is refused before the upgrade; and the
same presigned URL, made with botocore, works on the plain HTTP port (paho over WebSocket)."""

from __future__ import annotations

import http.client
import queue
import socket
import ssl
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
import pytest
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from devhub import KEY_ID, SECRET, TIMEOUT, DevHub, wait_for
from paho.mqtt.enums import CallbackAPIVersion
from sdk import Sdk311

pytestmark = pytest.mark.thinghub_only


def test_sdk_sigv4_websocket(dev_hub: DevHub, tenant_iot: Any) -> None:
    key_id, secret, _iot = tenant_iot
    client_id = f"console-{uuid.uuid4().hex[:8]}"
    sdk = Sdk311(dev_hub, None, client_id, credentials=(key_id, secret))
    try:
        assert sdk.connect() == {"session_present": False}
        topic = f"ops/{uuid.uuid4().hex}"
        sdk.subscribe(topic)
        sdk.publish(topic, b"over wss").result(TIMEOUT)
        assert sdk.next_message() == (topic, b"over wss")
        # It lives in its key's account: that account's iot-data Publish reaches it, the
        # root account's does not (sent first, it would have come first).
        dev_hub.iot_data().publish(topic=topic, qos=1, payload=b"root")
        dev_hub.iot_data(key_id, secret).publish(topic=topic, qos=1, payload=b"tenant")
        assert sdk.next_message() == (topic, b"tenant")
        assert sdk.messages.empty()
    finally:
        sdk.close()


def test_bad_signature_is_refused_before_the_upgrade(dev_hub: DevHub) -> None:
    sdk = Sdk311(dev_hub, None, "intruder", credentials=(KEY_ID, "not-the-secret"))
    with pytest.raises(Exception, match="WEBSOCKET_UPGRADE_FAILURE"):
        sdk.connect()
    unknown = Sdk311(dev_hub, None, "intruder", credentials=("AKIANOSUCHKEY0000000", SECRET))
    with pytest.raises(Exception, match="WEBSOCKET_UPGRADE_FAILURE"):
        unknown.connect()
    # The hub's log lines reach its output through its log thread: waited for, not assumed.
    for reason in ("InvalidSignatureException", "UnrecognizedClientException"):
        wait_for(lambda r=reason: f"refused: {r}" in dev_hub.log(), what=f"the {reason} line")


def presigned_path(hub: DevHub, key_id: str, secret: str, *, host: str) -> str:
    """``/mqtt?X-Amz-...`` as AWS IoT's documentation builds it, signed by botocore."""
    request = AWSRequest(method="GET", url=f"http://{host}/mqtt", headers={"Host": host})
    SigV4QueryAuth(Credentials(key_id, secret), "iotdevicegateway", "us-east-1", 300).add_auth(
        request
    )
    parts = urlsplit(request.url)
    return f"{parts.path}?{parts.query}"


def test_presigned_url_on_the_http_port(dev_hub: DevHub) -> None:
    host = f"{dev_hub.host}:{dev_hub.http_port}"
    inbox: queue.Queue[Any] = queue.Queue()
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"ws-{uuid.uuid4().hex[:8]}", transport="websockets"
    )
    client.ws_set_options(path=presigned_path(dev_hub, KEY_ID, SECRET, host=host))
    client.on_connect = lambda _c, _u, _f, rc, _p=None: inbox.put(("connack", rc))
    client.on_message = lambda _c, _u, m: inbox.put(m)
    client.on_subscribe = lambda _c, _u, _m, codes, _p=None: inbox.put(("suback", codes))
    client.connect(dev_hub.host, dev_hub.http_port)
    client.loop_start()
    try:
        kind, rc = inbox.get(timeout=TIMEOUT)
        assert kind == "connack" and not rc.is_failure
        topic = f"ws/{uuid.uuid4().hex}"
        client.subscribe(topic, qos=1)
        assert inbox.get(timeout=TIMEOUT)[0] == "suback"
        dev_hub.iot_data().publish(topic=topic, qos=1, payload=b"signed")
        message = inbox.get(timeout=TIMEOUT)
        assert (message.topic, message.payload) == (topic, b"signed")
    finally:
        client.disconnect()
        client.loop_stop()


def test_tampered_presigned_url_gets_403(dev_hub: DevHub) -> None:
    host = f"{dev_hub.host}:{dev_hub.http_port}"
    path = presigned_path(dev_hub, KEY_ID, SECRET, host=host).replace("us-east-1", "eu-west-1")
    connection = http.client.HTTPConnection(dev_hub.host, dev_hub.http_port, timeout=TIMEOUT)
    connection.request(
        "GET",
        path,
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Protocol": "mqtt",
        },
    )
    answer = connection.getresponse()
    assert answer.status == 403
    assert b"InvalidSignatureException" in answer.read()
    connection.close()


def test_a_silent_http_request_on_the_tls_port_is_closed(tmp_path: Path) -> None:
    """An HTTP request on the TLS port must send its head within the CONNECT timeout, as a
    CONNECT must: a client that starts one and stalls is closed."""
    hub = DevHub(tmp_path / "data", MQTT_CONNECT_TIMEOUT=1)
    try:
        context = ssl.create_default_context(cafile=str(hub.ca_file))
        raw = socket.create_connection((hub.host, hub.tls_port), timeout=TIMEOUT)
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            try:
                assert sock.recv(4096) == b""  # closed by the hub, well within TIMEOUT
            except ConnectionResetError:
                pass
    finally:
        hub.stop()
