"""Replaying a captured, signed Alibaba ``Pub`` after the hub restarts.

The attack: record a signed request on the wire (here through a tiny loopback proxy in front
of a real ``thinghub serve``), wait for the hub to restart (an upgrade, a crash), and send
the same bytes again while the request's timestamp is still within the gateway's 15
minutes. The ``SignatureNonce`` cache was in memory only, so the restarted hub accepted the
replay and delivered the message a second time. Now used nonces are stored in
``nonces.db`` (``thinghub/http/aliyun/nonce_store.py``) before the request is acted on and
loaded back at start-up: the replay is refused with ``SignatureNonceUsed`` and the device
subscribed to the topic receives nothing, after a clean stop and after ``kill -9`` alike.

The requests are made by the SDKs themselves: ``aliyun-python-sdk-core`` (signature V1) and
``alibabacloud-iot20180120`` (V3, ``ACS3-HMAC-SHA256``). The second half tests the store on
its own, on a real SQLite file: nonces load back, expired ones are purged, the writer's queue
is bounded, and a failing writer refuses instead of hanging.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import logging
import os
import queue
import re
import socket
import sqlite3
import subprocess
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from alibabacloud_iot20180120 import models as iot_models
from alibabacloud_iot20180120.client import Client as TeaClient
from alibabacloud_tea_openapi import models as open_api_models
from aliyunsdkcore.client import AcsClient
from aliyunsdkiot.request.v20180120.PubRequest import PubRequest

from thinghub.auth.aliyun_device import build_credentials
from thinghub.http.aliyun.nonce_store import FILE_NAME, NonceStore, NonceStoreUnavailable
from thinghub.http.aliyun.signing import NonceCache

pytestmark = pytest.mark.thinghub_only

ROOT = Path(__file__).resolve().parents[2]
KEY_ID, SECRET = "LTAInonceReplayKey00000", "nonce-replay-secret-0123456789abcdef"
READY = re.compile(r"ready mqtt=[\d.]+:(\d+) http=[\d.]+:(\d+)")
DEMO = re.compile(r"Demo device: ProductKey (\S+), DeviceName (\S+), DeviceSecret (\S+)")
TIMEOUT = 15.0


# --------------------------------------------------------------------------- the real hub


class Hub:
    """``thinghub serve`` on free ports with a known root key; its demo device's secrets."""

    def __init__(self, data_dir: Path) -> None:
        env = {
            **os.environ,
            "THINGHUB_ROOT_ACCESS_KEY_ID": KEY_ID,
            "THINGHUB_ROOT_ACCESS_KEY_SECRET": SECRET,
        }
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/thinghub"), "serve", "--mqtt-port", "0", "--http-port", "0",
             "--host", "127.0.0.1", "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.log: list[str] = []
        demo: re.Match[str] | None = None
        for line in self.proc.stdout:
            self.log.append(line)
            demo = demo or DEMO.search(line)
            if m := READY.search(line):
                self.mqtt_port, self.http_port = int(m.group(1)), int(m.group(2))
                break
        else:
            self.proc.wait(TIMEOUT)
            pytest.fail("the hub did not start:\n" + "".join(self.log))
        assert demo is not None, "".join(self.log)
        self.product_key, self.device_name, self.device_secret = demo.groups()
        stdout = self.proc.stdout
        self.reader = threading.Thread(target=lambda: self.log.extend(stdout), daemon=True)
        self.reader.start()

    @property
    def topic(self) -> str:
        return f"/{self.product_key}/{self.device_name}/user/get"

    def stop(self, *, crash: bool = False) -> None:
        """SIGTERM and a clean exit, or SIGKILL (``crash``): nothing is flushed at exit."""
        if self.proc.poll() is None:
            if crash:
                self.proc.kill()
            else:
                self.proc.terminate()
        code = self.proc.wait(TIMEOUT)
        self.reader.join(5)  # EOF once the hub is gone
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        if not crash:
            assert code == 0, "".join(self.log[-30:])


class Device:
    """The hub's demo device, signed in with the Alibaba scheme (paho, MQTT 3.1.1) and
    subscribed to its ``/user/get`` topic, where ``Pub`` publishes."""

    def __init__(self, hub: Hub) -> None:
        client_id, username, password = build_credentials(
            hub.product_key, hub.device_name, hub.device_secret
        )
        self.messages: queue.Queue[bytes] = queue.Queue()
        acks: queue.Queue[str] = queue.Queue()
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311
        )
        client.username_pw_set(username, password)
        client.on_connect = lambda c, u, f, rc, p: acks.put(f"connack {rc.value}")
        client.on_subscribe = lambda c, u, mid, rcs, p: acks.put(f"suback {rcs[0].value}")
        client.on_message = lambda c, u, msg: self.messages.put(bytes(msg.payload))
        client.connect("127.0.0.1", hub.mqtt_port, keepalive=60)
        client.loop_start()
        self.client = client
        assert acks.get(timeout=TIMEOUT) == "connack 0"
        client.subscribe(hub.topic, 1)
        assert acks.get(timeout=TIMEOUT) == "suback 1"

    def next(self) -> bytes:
        try:
            return self.messages.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no message within {TIMEOUT}s") from None

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --------------------------------------------------------------------------- the wire


def send_raw(port: int, raw: bytes) -> tuple[int, str, str, bytes]:
    """Send one raw HTTP request; (status, reason, content type, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            body = response.read()
            content_type = response.getheader("Content-Type", "")
        finally:
            response.close()
    return response.status, response.reason, content_type, body


def _read_request(conn: socket.socket) -> bytes:
    """One HTTP/1.1 request exactly as sent: its head and a ``Content-Length`` body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        assert name.strip().lower() != b"transfer-encoding", "chunked bodies are not recorded"
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


class Recorder:
    """A loopback proxy that forwards each request to the hub and keeps its raw bytes: what
    an attacker on the path (or a leaky log of request dumps) would have."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.captured: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(TIMEOUT)
                raw = _read_request(conn)
                if not raw:
                    continue
                self.captured.append(raw)
                status, reason, content_type, body = send_raw(self.target_port, raw)
                head = (
                    f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                conn.sendall(head.encode() + body)

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(TIMEOUT)
        self.server.close()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def pub_v1(endpoint: str, hub: Hub, text: str) -> dict[str, Any]:
    """``Pub`` through aliyun-python-sdk-core (signature V1)."""
    request = PubRequest()
    request.set_endpoint(endpoint)
    request.set_protocol_type("http")
    request.set_accept_format("JSON")
    request.set_ProductKey(hub.product_key)
    request.set_TopicFullName(hub.topic)
    request.set_MessageContent(_b64(text))
    body = AcsClient(KEY_ID, SECRET, "cn-shanghai").do_action_with_exception(request)
    answer: dict[str, Any] = json.loads(body)
    return answer


def pub_v3(endpoint: str, hub: Hub, text: str) -> bool:
    """``Pub`` through alibabacloud-iot20180120 (signature V3, ACS3-HMAC-SHA256)."""
    config = open_api_models.Config(
        access_key_id=KEY_ID,
        access_key_secret=SECRET,
        endpoint=endpoint,
        protocol="http",
        region_id="cn-shanghai",
    )
    request = iot_models.PubRequest(
        product_key=hub.product_key, topic_full_name=hub.topic, message_content=_b64(text)
    )
    return bool(TeaClient(config).pub(request).body.success)


def gateway_code(answer: tuple[int, str, str, bytes]) -> tuple[int, str]:
    status, _reason, content_type, body = answer
    assert "json" in content_type, (content_type, body)
    return status, str(json.loads(body).get("Code", "accepted"))


# --------------------------------------------------------------------------- the attack


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "kill-9"])
def test_captured_pub_replayed_after_restart_is_refused(data_dir: Path, crash: bool) -> None:
    hub = Hub(data_dir)
    device = Device(hub)
    recorder = Recorder(hub.http_port)
    try:
        # The victim's calls, through the recording proxy.
        endpoint = f"127.0.0.1:{recorder.port}"
        assert pub_v1(endpoint, hub, "v1 once")["Success"] is True
        assert pub_v3(endpoint, hub, "v3 once") is True
        assert device.next() == b"v1 once"
        assert device.next() == b"v3 once"
    finally:
        recorder.close()
        device.stop()
    captured = recorder.captured
    assert len(captured) == 2
    assert b"SignatureNonce=" in captured[0]
    assert b"x-acs-signature-nonce:" in captured[1].lower()
    # Replayed at once: refused from memory, as before.
    for raw in captured:
        assert gateway_code(send_raw(hub.http_port, raw)) == (400, "SignatureNonceUsed")

    # The hub restarts on the same data directory; kill -9 gives it no chance to flush
    # anything, so what makes the replay fail was on disk before the first 200.
    hub.stop(crash=crash)
    hub = Hub(data_dir)
    device = Device(hub)
    try:
        for raw in captured:
            assert gateway_code(send_raw(hub.http_port, raw)) == (400, "SignatureNonceUsed")
        # A fresh call goes through, and it is the first thing the device gets: the
        # replays delivered nothing.
        assert pub_v1(f"127.0.0.1:{hub.http_port}", hub, "fresh")["Success"] is True
        assert device.next() == b"fresh"
        assert device.messages.empty()
    finally:
        device.stop()
        hub.stop()


# --------------------------------------------------------------------------- the store


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _rows(path: Path) -> list[tuple[str, str, float]]:
    """The file's rows, read with a connection of our own (the store is closed)."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT access_key_id, nonce, expires_at FROM nonces").fetchall()
    conn.close()
    return sorted(
        (bytes(a).decode(), bytes(n).decode("utf-8", "surrogatepass"), e) for a, n, e in rows
    )


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


def test_used_nonces_load_back_and_expired_ones_are_purged(tmp_path: Path) -> None:
    clock = Clock(1_000_000.0)

    async def first_run() -> None:
        store = NonceStore.open(tmp_path, wall=clock)
        store.start(asyncio.get_running_loop())
        await store.use("ak", "long", clock.now + 900)
        await store.use("ak", "short", clock.now + 10)
        await store.use("other", "long", clock.now + 900)
        await store.use("ak", "\udcff", clock.now + 900)  # a V3 header may hold any str
        await store.close()

    _run(first_run())
    assert len(_rows(tmp_path / FILE_NAME)) == 4

    # The restart, 60 s later: "short" has expired, the others have not.
    clock.now += 60
    store = NonceStore.open(tmp_path, wall=clock)
    cache = NonceCache()
    assert store.load(cache) == 3
    now = clock.now
    assert not cache.use("ak", "long", now + 900, now)  # a replay is refused
    assert not cache.use("other", "long", now + 900, now)
    assert not cache.use("ak", "\udcff", now + 900, now)
    assert cache.use("ak", "short", now + 900, now)  # expired: usable again
    assert cache.use("third", "long", now + 900, now)  # per AccessKeyId
    _run(store.close())
    left = {(key, nonce) for key, nonce, _ in _rows(tmp_path / FILE_NAME)}
    assert left == {("ak", "long"), ("other", "long"), ("ak", "\udcff")}


def test_writer_purges_expired_nonces_while_running(tmp_path: Path) -> None:
    clock = Clock(1_000_000.0)

    async def run() -> None:
        store = NonceStore.open(tmp_path, wall=clock)
        store.start(asyncio.get_running_loop())
        await store.use("ak", "stale", clock.now + 30)
        clock.now += 3600  # past the writer's purge interval, and past "stale"'s expiry
        # The writer purges after the batch that finds the interval over; the next batch
        # is committed after that purge.
        await store.use("ak", "n1", clock.now + 900)
        await store.use("ak", "n2", clock.now + 900)
        await store.close()

    _run(run())
    assert [nonce for _, nonce, _ in _rows(tmp_path / FILE_NAME)] == ["n1", "n2"]


def test_file_keeps_only_as_many_nonces_as_the_cache(tmp_path: Path) -> None:
    clock = Clock(1_000_000.0)

    async def run() -> None:
        store = NonceStore.open(tmp_path, wall=clock)
        store.start(asyncio.get_running_loop())
        for i in range(5):
            await store.use("ak", f"n{i}", clock.now + 100 + i)
        await store.close()

    _run(run())
    store = NonceStore.open(tmp_path, wall=clock, max_rows=2)
    cache = NonceCache(max_entries=2)
    assert store.load(cache) == 2
    assert not cache.use("ak", "n4", clock.now + 900, clock.now)
    _run(store.close())
    assert [nonce for _, nonce, _ in _rows(tmp_path / FILE_NAME)] == ["n3", "n4"]


def test_full_writer_queue_refuses_at_once(tmp_path: Path) -> None:
    async def run() -> None:
        store = NonceStore.open(tmp_path, max_pending=2)
        store.start(asyncio.get_running_loop())
        # Three requests in one loop iteration: the third finds two waiting.
        results = await asyncio.gather(
            *(store.use("ak", f"n{i}", 2e9) for i in range(3)), return_exceptions=True
        )
        assert results[:2] == [None, None]
        assert isinstance(results[2], NonceStoreUnavailable)
        assert store.refused == 1 and store.failed is None
        await store.use("ak", "n3", 2e9)  # room again once the writer caught up
        await store.close()

    _run(run())


def test_failed_writer_is_reported_once_and_refuses_instead_of_hanging(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> None:
        store = NonceStore.open(tmp_path)
        store.start(asyncio.get_running_loop())
        await store.use("ak", "before", 2e9)
        # NaN is stored as NULL: the NOT NULL constraint fails the writer's transaction.
        results = await asyncio.gather(
            store.use("ak", "poison", float("nan")),
            store.use("ak", "same batch", 2e9),
            return_exceptions=True,
        )
        assert all(isinstance(r, NonceStoreUnavailable) for r in results), results
        assert store.failed is not None and store.failed.startswith("IntegrityError")
        assert store.failures == 1
        for i in range(3):  # later requests: refused at once
            with pytest.raises(NonceStoreUnavailable, match="failed"):
                await store.use("ak", f"after {i}", 2e9)
        assert store.pending == 0
        await store.close()

    with caplog.at_level(logging.ERROR, logger="thinghub.http.aliyun.nonces"):
        _run(run())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert [nonce for _, nonce, _ in _rows(tmp_path / FILE_NAME)] == ["before"]


def test_captured_pub_replayed_on_a_hub_restored_from_a_backup_is_refused(
    data_dir: Path, tmp_path: Path
) -> None:
    """``thinghub backup`` copies ``nonces.db`` too: a hub started from the backup refuses a
    request captured before the backup, as the original hub would."""
    hub = Hub(data_dir)
    device = Device(hub)
    recorder = Recorder(hub.http_port)
    try:
        endpoint = f"127.0.0.1:{recorder.port}"
        assert pub_v1(endpoint, hub, "before the backup")["Success"] is True
        assert device.next() == b"before the backup"
    finally:
        recorder.close()
        device.stop()
    copy = tmp_path / "restored"
    done = subprocess.run(
        [str(ROOT / ".venv/bin/thinghub"), "backup", str(copy), "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert "nonces.db" in done.stdout
    hub.stop()
    restored = Hub(copy)
    try:
        for raw in recorder.captured:
            assert gateway_code(send_raw(restored.http_port, raw)) == (400, "SignatureNonceUsed")
    finally:
        restored.stop()
