"""A real ``thinghub serve`` for the attack tests: its own data directory, a known root access
key, products and devices registered through the command line, devices signing in with the
Alibaba scheme over raw MQTT, and the hub's RSS and counters for the memory bounds."""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import paho.mqtt.client as mqtt
from botocore.config import Config
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from thinghub.auth.aliyun_device import build_credentials
from thinghub.cli import main as cli_main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scenarios"))
import rawmqtt
from hubprocess import HubProcess

ROOT = Path(__file__).resolve().parents[2]
KEY_ID, SECRET = "LTAIsecurityTests000000", "security-tests-secret-0123456789ab"
TIMEOUT = 20.0


class SecHub(HubProcess):
    def __init__(self, data_dir: Path, *, nofile: int | None = None, **settings: Any) -> None:
        """Settings as ``THINGHUB_<KEY>``; with ``nofile``, that limit of open files (soft and
        hard) is set in the child before it starts."""
        super().__init__(
            data_dir,
            (KEY_ID, SECRET),
            defaults={"THINGHUB_MQTT_ALLOW_ANONYMOUS": "true"},
            settings=settings,
            nofile=nofile,
            timeout=TIMEOUT,
        )

    # --- the registry, through the command line ---------------------------------------

    def cli(self, *args: str) -> Any:
        result = CliRunner().invoke(cli_main, [*args, "--data-dir", str(self.data_dir), "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    def product(self, name: str) -> str:
        created = self.cli("product", "create", name)
        record = created[0] if isinstance(created, list) else created
        return str(record["product_key"])

    def device(self, product_key: str, name: str) -> Device:
        created = self.cli("device", "register", product_key, name)
        record = created[0] if isinstance(created, list) else created
        return Device(self, product_key, name, str(record["device_secret"]))

    # --- clients ----------------------------------------------------------------------

    def raw(self, version: int = 5) -> rawmqtt.RawClient:
        return rawmqtt.RawClient(self.host, self.mqtt_port, version=version, timeout=TIMEOUT)

    def iot_data(self) -> Any:
        return boto3.client(
            "iot-data",
            endpoint_url=f"http://{self.host}:{self.http_port}",
            region_name="us-east-1",
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            config=Config(retries={"max_attempts": 1}),
        )

    def get(self, path: str) -> tuple[int, bytes]:
        """GET ``path`` on the HTTP port: (status, body)."""
        url = f"http://{self.host}:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.status, response.read()

    def stats(self) -> dict[str, Any]:
        """The hub's counters as JSON (``GET /api/stats``)."""
        url = f"http://{self.host}:{self.http_port}/api/stats"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
            return dict(json.loads(answer.read()))

    def scrape(self) -> Scrape:
        """``GET /metrics``, parsed as Prometheus parses it."""
        url = f"http://{self.host}:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
            assert answer.headers["Content-Type"].startswith("text/plain"), answer.headers
            return Scrape(answer.read().decode())

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


class Scrape:
    """One scrape of ``/metrics``, read with ``prometheus_client``'s own parser: a sample's
    value by name and labels (0.0 for a series not shown yet, as Prometheus reads a counter
    that has not appeared)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in self.families.values():
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over every series of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)


class Device:
    def __init__(self, hub: SecHub, product_key: str, name: str, secret: str) -> None:
        self.hub = hub
        self.product_key = product_key
        self.name = name
        self.secret = secret

    @property
    def client_id(self) -> str:
        return f"{self.product_key}.{self.name}"

    def topic(self, suffix: str) -> str:
        return f"/{self.product_key}/{self.name}/{suffix}"

    def connect_packet(self, version: int = 5, **kwargs: Any) -> bytes:
        client_id, username, password = build_credentials(self.product_key, self.name, self.secret)
        return rawmqtt.connect(
            client_id, version, username=username, password=password.encode(), **kwargs
        )

    def sign_in(
        self, version: int = 5, *, expect: int | None = 0, **kwargs: Any
    ) -> tuple[rawmqtt.RawClient, rawmqtt.Packet]:
        client = self.hub.raw(version)
        client.send(self.connect_packet(version, **kwargs))
        connack = client.expect(rawmqtt.CONNACK)
        if expect is not None:
            assert connack.reason == expect, connack
        return client, connack


def wait_for(condition: Any, timeout: float = TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Filler:
    """A file that takes every free byte of its file system, until ``remove``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fill(self) -> None:
        chunk = 1 << 20
        with open(self.path, "ab", buffering=0) as file:
            while chunk:
                try:
                    file.write(b"\0" * chunk)
                except OSError as error:
                    assert error.errno == errno.ENOSPC, error
                    chunk //= 2
        assert os.statvfs(self.path).f_bavail == 0

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def publish_qos1(hub: SecHub, topic: str, payloads: list[bytes]) -> None:
    """Publish with a clean MQTT 5 client; every PUBACK must say Success."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5)
    codes: dict[int, int] = {}
    acked = threading.Condition()

    def on_publish(_c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with acked:
            codes[mid] = rc.value
            acked.notify_all()

    client.on_publish = on_publish
    client.connect(hub.host, hub.mqtt_port)
    client.loop_start()
    try:
        for payload in payloads:
            mid = client.publish(topic, payload, qos=1).mid
            with acked:
                assert acked.wait_for(lambda: mid in codes, TIMEOUT), "no PUBACK"  # noqa: B023
            assert codes[mid] == 0, f"PUBACK reason code {codes[mid]:#x}"
    finally:
        client.disconnect()
        client.loop_stop()
