"""A real hub started in-process for the fault-injection tests: ``thinghub.app.Hub`` (as
``thinghub serve`` wires it) on its own event loop thread, on loopback with free ports, its
SQLite files in the test's directory, reached with real clients (raw MQTT sockets, boto3,
the Alibaba SDK) over real sockets.

In-process so that a test can replace ONE internal method of a writer (``Fault``) and watch
what users see. Nothing else is replaced."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from aliyunsdkcore.client import AcsClient
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scenarios"))
import rawmqtt
from loophub import LoopHub

KEY_ID, SECRET = "LTAIsupervisionTests000", "supervision-tests-secret-0123456789"
TIMEOUT = 10.0


class InProcessHub(LoopHub):
    def __init__(self, data_dir: Path, *, id_lease_ms: int = 10_000, **overrides: Any) -> None:
        """``overrides``: settings by dotted key (``"mqtt.queue_page_messages"``)."""
        # Closed by ``stop``: every client a test opened (an unclosed socket is a warning).
        self._clients: list[Any] = []
        super().__init__(
            data_dir,
            (KEY_ID, SECRET),
            {"mqtt.allow_anonymous": True, **overrides},
            thread_name="suphub-loop",
            timeout=TIMEOUT,
            id_lease_ms=id_lease_ms,
        )

    def closing(self) -> None:
        for client in self._clients:
            client.close()

    # --- what users see ---------------------------------------------------------------

    def get(self, path: str) -> tuple[int, Any]:
        """GET ``path`` on the HTTP port: (status, JSON body), for errors too."""
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read())

    def wait_health(self, status: str) -> dict[str, Any]:
        """Wait (bounded) until ``/healthz`` says ``status``; its body."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            _, body = self.get("/healthz")
            if body["status"] == status:
                return dict(body)
            assert time.monotonic() < deadline, f"/healthz still says {body}"
            time.sleep(0.01)

    def raw(self, version: int = 5) -> rawmqtt.RawClient:
        client = rawmqtt.RawClient("127.0.0.1", self.mqtt_port, version=version, timeout=TIMEOUT)
        self._clients.append(client)
        return client

    def iot_data(self) -> Any:
        client = boto3.client(
            "iot-data",
            endpoint_url=f"http://127.0.0.1:{self.http_port}",
            region_name="us-east-1",
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            config=Config(retries={"max_attempts": 1}, read_timeout=2 * TIMEOUT),
        )
        self._clients.append(client)
        return client

    def acs(self) -> AcsClient:
        # No retries: each call is one request, and its answer is the one asserted.
        return AcsClient(KEY_ID, SECRET, "cn-shanghai", auto_retry=False)


class Fault:
    """Stands in for one internal method of a writer: each call (on the writer's thread)
    sets ``entered``, waits until the test sets ``release``, then raises ``error``."""

    def __init__(self, error: BaseException | None = None, *, hold: bool = True) -> None:
        self.error = error if error is not None else RuntimeError("injected")
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(2 * TIMEOUT), "the test never released the fault"
        raise self.error


class InThread:
    """Runs ``call`` on a thread (a blocking SDK call) and keeps its outcome and when it
    came."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.done_at = 0.0
        self._thread = threading.Thread(target=self._run, args=(call,))
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.result = call()
        except BaseException as error:
            self.error = error
        self.done_at = time.monotonic()

    def join(self, timeout: float = 2 * TIMEOUT) -> InThread:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the call did not return"
        return self


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for a condition another thread makes true."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def not_acknowledged(client: rawmqtt.RawClient, mid: int) -> list[rawmqtt.Packet]:
    """What ``client`` receives up to a PINGRESP (a round trip made after the fault), or up
    to its connection being closed; asserts that no success PUBACK for ``mid`` is among it."""
    client.send(rawmqtt.pingreq())
    seen: list[rawmqtt.Packet] = []
    while True:
        packet = client.recv()
        if packet is None or packet.type == rawmqtt.PINGRESP:
            break
        seen.append(packet)
        if packet.type == rawmqtt.DISCONNECT:
            assert client.recv() is None  # and then closed
            break
    acked = [p for p in seen if p.type == rawmqtt.PUBACK and p.mid == mid and p.reason < 0x80]
    assert not acked, f"acknowledged a message that was not stored: {seen}"
    return seen
