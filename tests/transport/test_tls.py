"""MQTT over TLS: the hub serves a TLS listener when a certificate and key are configured, and
real clients (paho-mqtt, mosquitto_sub/pub) verify it and exchange messages over it."""

from __future__ import annotations

import queue
import re
import shutil
import socket
import ssl
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

pytestmark = pytest.mark.thinghub_only

TIMEOUT = 10


@pytest.fixture(scope="module")
def tls_hub(start_hub: Callable[..., Any], certificate: tuple[Path, Path]) -> tuple[Any, int]:
    cert, key = certificate
    hub = start_hub(TLS_CERT=str(cert), TLS_KEY=str(key), TLS_PORT=0)
    found = [m for line in hub.output if (m := re.search(r"mqtts=[\d.]+:(\d+)", line))]
    assert found, f"no mqtts endpoint in the ready line:\n{hub.log()}"
    return hub, int(found[0].group(1))


def _client(cert: Path, port: int, version: int) -> tuple[mqtt.Client, queue.Queue[Any]]:
    inbox: queue.Queue[Any] = queue.Queue()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex, protocol=version)
    c.tls_set(ca_certs=str(cert), cert_reqs=ssl.CERT_REQUIRED)
    c.on_message = lambda _c, _u, m: inbox.put(m)
    c.on_connect = lambda _c, _u, _f, rc, _p=None: inbox.put(("connack", rc))
    c.on_subscribe = lambda _c, _u, _mid, codes, _p=None: inbox.put(("suback", codes))
    c.connect("127.0.0.1", port)
    c.loop_start()
    kind, rc = inbox.get(timeout=TIMEOUT)
    assert kind == "connack" and not rc.is_failure
    return c, inbox


@pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_paho_round_trip_over_tls(
    tls_hub: tuple[Any, int], certificate: tuple[Path, Path], version: int
) -> None:
    _hub, port = tls_hub
    cert, _key = certificate
    topic = f"tls/{uuid.uuid4().hex}"
    sub, inbox = _client(cert, port, version)
    pub, _ = _client(cert, port, version)
    try:
        sub.subscribe(topic, qos=1)
        assert inbox.get(timeout=TIMEOUT)[0] == "suback"
        pub.publish(topic, b"over tls", qos=1).wait_for_publish(TIMEOUT)
        message = inbox.get(timeout=TIMEOUT)
        assert (message.topic, message.payload, message.qos) == (topic, b"over tls", 1)
    finally:
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()


def test_untrusted_certificate_is_refused_by_the_client(tls_hub: tuple[Any, int]) -> None:
    """A client that does not trust the hub's certificate cannot connect: the listener really
    is TLS with that certificate, not plain TCP."""
    _hub, port = tls_hub
    context = ssl.create_default_context()  # system CAs only
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as plain,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(plain, server_hostname="localhost")


def test_mosquitto_clients_over_tls(
    tls_hub: tuple[Any, int], certificate: tuple[Path, Path]
) -> None:
    if shutil.which("mosquitto_sub") is None:
        pytest.skip("mosquitto-clients is not installed")
    _hub, port = tls_hub
    cert, _key = certificate
    topic = f"tls/{uuid.uuid4().hex}"
    common = ["-h", "127.0.0.1", "-p", str(port), "--cafile", str(cert), "-t", topic]
    subprocess.run(
        ["mosquitto_pub", *common, "-m", "retained over tls", "-r", "-q", "1"],
        check=True, timeout=TIMEOUT,
    )  # fmt: skip
    out = subprocess.run(
        ["mosquitto_sub", *common, "-C", "1", "-W", str(TIMEOUT)],
        check=True, capture_output=True, timeout=TIMEOUT + 5,
    )  # fmt: skip
    assert out.stdout.strip() == b"retained over tls"
