"""Other MQTT clients with AWS IoT certificates on the hub's TLS port: paho-mqtt with
``tls_set(certfile, keyfile)``, ``mosquitto_sub``/``mosquitto_pub`` with ``--cert --key
--cafile``, a client offering ALPN ``x-amzn-mqtt-ca`` (what the AWS SDKs send on port 443);
and clients without a certificate keep today's behaviour there: an Alibaba device signs in
with its secret, an anonymous client is refused unless the hub allows anonymous clients."""

from __future__ import annotations

import queue
import shutil
import socket
import ssl
import subprocess
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from devhub import TIMEOUT, DevHub, allow, policy
from paho.mqtt.enums import CallbackAPIVersion

from thinghub.auth.aliyun_device import build_credentials

pytestmark = pytest.mark.thinghub_only

ANY = "arn:aws:iot:*:*"


def paho_client(
    hub: DevHub, client_id: str, version: int, cert: Path | None = None, key: Path | None = None
) -> tuple[paho.Client, queue.Queue[Any]]:
    inbox: queue.Queue[Any] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version)
    client.tls_set(
        ca_certs=str(hub.ca_file),
        certfile=None if cert is None else str(cert),
        keyfile=None if key is None else str(key),
        cert_reqs=ssl.CERT_REQUIRED,
    )
    client.on_connect = lambda _c, _u, _f, rc, _p=None: inbox.put(("connack", rc))
    client.on_subscribe = lambda _c, _u, _m, codes, _p=None: inbox.put(("suback", codes))
    client.on_message = lambda _c, _u, m: inbox.put(m)
    client.connect(hub.host, hub.tls_port)
    client.loop_start()
    return client, inbox


@pytest.mark.parametrize("version", [paho.MQTTv311, paho.MQTTv5], ids=["v311", "v5"])
def test_paho_with_a_client_certificate(dev_hub: DevHub, version: int) -> None:
    device = dev_hub.device(dev_hub.iot())
    client, inbox = paho_client(dev_hub, device.thing, version, device.cert_file, device.key_file)
    try:
        kind, rc = inbox.get(timeout=TIMEOUT)
        assert kind == "connack" and not rc.is_failure, rc
        topic = f"paho/{device.thing}"
        client.subscribe(topic, qos=1)
        assert inbox.get(timeout=TIMEOUT)[0] == "suback"
        client.publish(topic, b"paho over mtls", qos=1).wait_for_publish(TIMEOUT)
        message = inbox.get(timeout=TIMEOUT)
        assert (message.topic, message.payload) == (topic, b"paho over mtls")
    finally:
        client.disconnect()
        client.loop_stop()


def test_mosquitto_clients_with_certificates(dev_hub: DevHub) -> None:
    if shutil.which("mosquitto_sub") is None:
        pytest.skip("mosquitto-clients is not installed")
    iot = dev_hub.iot()
    topic = f"mosquitto/{uuid.uuid4().hex}"
    reader = dev_hub.device(iot, policy(allow(["iot:Connect", "iot:Subscribe", "iot:Receive"])))
    writer = dev_hub.device(iot, policy(allow(["iot:Connect", "iot:Publish", "iot:RetainPublish"])))

    def common(device: Any) -> list[str]:
        return [
            "-h", "127.0.0.1", "-p", str(dev_hub.tls_port), "--cafile", str(dev_hub.ca_file),
            "--cert", str(device.cert_file), "--key", str(device.key_file),
            "-i", device.thing, "-t", topic,
        ]  # fmt: skip

    subprocess.run(
        ["mosquitto_pub", *common(writer), "-m", "retained with a certificate", "-r", "-q", "1"],
        check=True, timeout=TIMEOUT,
    )  # fmt: skip
    out = subprocess.run(
        ["mosquitto_sub", *common(reader), "-C", "1", "-W", str(int(TIMEOUT))],
        check=True, capture_output=True, timeout=TIMEOUT + 5,
    )  # fmt: skip
    assert out.stdout.strip() == b"retained with a certificate"


def connect_raw(
    hub: DevHub, client_id: str, *, cert: Path | None = None, key: Path | None = None,
    alpn: list[str] | None = None, username: str | None = None, password: str | None = None,
) -> tuple[int, str | None]:  # fmt: skip
    """An MQTT 3.1.1 CONNECT over TLS: (CONNACK return code, the ALPN protocol agreed)."""
    context = ssl.create_default_context(cafile=str(hub.ca_file))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    flags = 0x02
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        flags |= 0x40
        payload += _string(password)
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x3c" + payload
    raw = socket.create_connection((hub.host, hub.tls_port), timeout=TIMEOUT)
    with context.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(b"\x10" + _length(len(body)) + body)
        connack = b""
        while len(connack) < 4:
            chunk = sock.recv(4 - len(connack))
            assert chunk, f"closed after {connack!r}"
            connack += chunk
        return connack[3], sock.selected_alpn_protocol()


def _length(n: int) -> bytes:
    """MQTT's Remaining Length (§2.2.3): seven bits a byte, the high bit "more"."""
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def test_alpn_x_amzn_mqtt_ca(dev_hub: DevHub) -> None:
    device = dev_hub.device(dev_hub.iot())
    files = {"cert": device.cert_file, "key": device.key_file}
    assert connect_raw(dev_hub, device.thing, alpn=["x-amzn-mqtt-ca"], **files) == (
        0,
        "x-amzn-mqtt-ca",
    )
    assert connect_raw(dev_hub, device.thing, alpn=["mqtt"], **files) == (0, "mqtt")
    assert connect_raw(dev_hub, device.thing, alpn=["h2"], **files) == (0, None)
    assert connect_raw(dev_hub, device.thing, **files) == (0, None)


def test_clients_without_certificates_keep_their_sign_in(dev_hub: DevHub) -> None:
    """No certificate on the TLS port: an Alibaba device signs in with its secret as on the
    TCP port; an anonymous client is refused (this hub does not allow them)."""
    product = dev_hub.cli("product", "create", f"tls_{uuid.uuid4().hex[:6]}")[0]["product_key"]
    name = f"dev{uuid.uuid4().hex[:6]}"
    secret = dev_hub.cli("device", "register", product, name)[0]["device_secret"]
    client_id, username, password = build_credentials(product, name, secret)
    assert connect_raw(dev_hub, client_id, username=username, password=password)[0] == 0
    assert connect_raw(dev_hub, client_id, username=username, password="0" * 64)[0] == 4
    assert connect_raw(dev_hub, f"anon-{uuid.uuid4().hex[:6]}")[0] == 5


def test_anonymous_clients_on_the_tls_port_when_allowed(tmp_path: Path) -> None:
    hub = DevHub(tmp_path / "data", MQTT_ALLOW_ANONYMOUS=True)
    try:
        assert connect_raw(hub, f"anon-{uuid.uuid4().hex[:6]}")[0] == 0
        # A certificate the hub does not know is refused, anonymous or not.
        other = DevHub(tmp_path / "other", MQTT_ALLOW_ANONYMOUS=True)
        try:
            stranger = other.device(other.iot())
        finally:
            other.stop()
        rc = _answer_or_closed(hub, stranger.thing, stranger.cert_file, stranger.key_file)
        assert rc != 0
    finally:
        hub.stop()


def _answer_or_closed(hub: DevHub, client_id: str, cert: Path, key: Path) -> int:
    try:
        return connect_raw(hub, client_id, cert=cert, key=key)[0]
    except (AssertionError, ssl.SSLError, ConnectionResetError):
        return -1  # refused by the TLS layer: another hub's CA is no anchor here
