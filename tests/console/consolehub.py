"""A real ``thinghub serve`` for the console tests, and the clients they use on it.

* :class:`ConsoleHub`: the hub in a subprocess with its own data directory, a known root
  access key, delivery tracing on and any setting as ``THINGHUB_<KEY>``; products, devices,
  accounts and keys made with the command line beside it (as an operator would).
* :class:`Browserless`: the console's JSON API over plain HTTP (``urllib``), with the
  session cookie and CSRF token handled by hand so that tests can forge or drop either.
* :class:`PahoDevice`: a device signed in with the Alibaba scheme through paho-mqtt (MQTT 5).

Waits are on events with timeouts; the hub is stopped by its own PID.
"""

from __future__ import annotations

import json
import queue
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from thinghub.auth.aliyun_device import build_credentials
from thinghub.cli import main as cli_main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scenarios"))
from hubprocess import HubProcess

ROOT = Path(__file__).resolve().parents[2]
KEY_ID, SECRET = "LTAIconsoleTests00000000", "console-tests-secret-0123456789abcdef"
TIMEOUT = 20.0


class ConsoleHub(HubProcess):
    def __init__(self, data_dir: Path, **settings: Any) -> None:
        super().__init__(
            data_dir,
            (KEY_ID, SECRET),
            defaults={
                "THINGHUB_MQTT_ALLOW_ANONYMOUS": "true",
                "THINGHUB_TRACE_ENABLED": "true",
            },
            settings=settings,
            timeout=TIMEOUT,
        )

    # --- the registry, through the command line ---------------------------------------

    def cli(self, *args: str) -> Any:
        result = CliRunner().invoke(cli_main, [*args, "--data-dir", str(self.data_dir), "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output) if result.output.strip() else None

    def cli_plain(self, *args: str) -> str:
        """A command without ``--json`` (``device import``); its output."""
        result = CliRunner().invoke(cli_main, [*args, "--data-dir", str(self.data_dir)])
        assert result.exit_code == 0, result.output
        return result.output

    def product(self, name: str, account: str = "root") -> str:
        created = self.cli("product", "create", name, "--account", account)
        record = created[0] if isinstance(created, list) else created
        return str(record["product_key"])

    def device(self, product_key: str, name: str, account: str = "root") -> Device:
        created = self.cli("device", "register", product_key, name, "--account", account)
        record = created[0] if isinstance(created, list) else created
        return Device(product_key, name, str(record["device_secret"]), str(record["iot_id"]))

    def account(self, name: str) -> tuple[str, str, str]:
        """A new account and its first key: (account id, key id, secret)."""
        created = self.cli("account", "create", name)
        record = created[0] if isinstance(created, list) else created
        return _account_fields(record)

    def console(self) -> Browserless:
        return Browserless(self.url)


def _account_fields(record: dict[str, Any]) -> tuple[str, str, str]:
    account = record.get("account") or record
    key = record.get("access_key") or record.get("key") or record
    return (
        str(account.get("account_id")),
        str(key.get("access_key_id")),
        str(key.get("secret") or key.get("access_key_secret")),
    )


@dataclass(frozen=True)
class Device:
    product_key: str
    name: str
    secret: str
    iot_id: str

    @property
    def client_id(self) -> str:
        return f"{self.product_key}.{self.name}"

    def topic(self, suffix: str) -> str:
        return f"/{self.product_key}/{self.name}/{suffix}"


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]

    @property
    def error(self) -> str:
        return str(self.body["error"]["code"]) if isinstance(self.body, dict) else ""


class Browserless:
    """The console API as its page uses it, over plain HTTP. ``cookie`` and ``csrf`` are
    plain attributes: a test may change or drop them; ``origin`` is sent as ``Origin`` on
    requests that change something (None: no Origin header)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.cookie: str | None = None
        self.csrf: str | None = None
        self.origin: str | None = url

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        sent = {"Accept": "application/json", **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        if self.cookie is not None:
            sent["Cookie"] = f"thinghub_console={self.cookie}"
        if method not in ("GET", "HEAD"):
            if self.csrf is not None:
                sent.setdefault("X-CSRF-Token", self.csrf)
            if self.origin is not None:
                sent.setdefault("Origin", self.origin)
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                status, raw, got = response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as error:
            status, raw, got = error.code, error.read(), dict(error.headers)
        text = raw.decode()
        try:
            parsed: Any = json.loads(text) if text else None
        except ValueError:
            parsed = text
        return Answer(status, parsed, got)

    def sign_in(self, key_id: str = KEY_ID, secret: str = SECRET) -> Answer:
        answer = self.request(
            "POST", "/console/api/session", {"accessKeyId": key_id, "accessKeySecret": secret}
        )
        if answer.status == 200:
            cookie = answer.headers.get("Set-Cookie", "")
            match = re.match(r"thinghub_console=([^;]+)", cookie)
            assert match, cookie
            self.cookie = match.group(1)
            self.csrf = answer.body["csrfToken"]
        return answer

    def get(self, path: str) -> Answer:
        return self.request("GET", "/console/api" + path)

    def post(self, path: str, body: Any = None) -> Answer:
        return self.request("POST", "/console/api" + path, {} if body is None else body)

    def delete(self, path: str) -> Answer:
        return self.request("DELETE", "/console/api" + path)


class PahoDevice:
    """A device signed in over MQTT 5 with the Alibaba scheme. ``messages`` gets (topic,
    payload, user properties, content type); ``closed`` is set when the hub ends the
    connection."""

    def __init__(self, hub: ConsoleHub, device: Device) -> None:
        self.hub = hub
        client_id, username, password = build_credentials(
            device.product_key, device.name, device.secret
        )
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(username, password)
        self.messages: queue.Queue[tuple[str, bytes, list[tuple[str, str]], str | None]] = (
            queue.Queue()
        )
        self.connected = threading.Event()
        self.closed = threading.Event()
        self.subscribed = threading.Event()
        self.reason: int | None = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_args: self.subscribed.set()

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        self.reason = reason.value
        self.connected.set()

    def _on_disconnect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.reason = reason.value
        client.disconnect()  # no automatic reconnect
        self.closed.set()

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        props = getattr(message, "properties", None)
        users = list(getattr(props, "UserProperty", []) or [])
        content_type = getattr(props, "ContentType", None)
        self.messages.put((message.topic, message.payload, users, content_type))

    def connect(self) -> None:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 600
        self.client.connect(
            self.hub.host, self.hub.mqtt_port, clean_start=True, properties=properties
        )
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT), "no CONNACK"
        assert self.reason == 0, f"CONNACK {self.reason:#x}"

    def subscribe(self, topic_filter: str) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic_filter, qos=1)
        assert self.subscribed.wait(TIMEOUT), "no SUBACK"

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(condition: Any, timeout: float = TIMEOUT, what: str = "condition") -> None:
    """Poll ``condition`` (a state another process changes, with no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
