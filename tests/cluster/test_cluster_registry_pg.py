"""Two real ``thinghub serve --registry postgresql://...`` nodes sharing one real PostgreSQL
(pgserver.py; no NATS: the registry alone is shared here), with real clients: the Alibaba SDK
(aliyun-python-sdk-core), boto3, raw MQTT sockets and the ``thinghub`` command line.

What a user sees: a device registered on node 1 signs in on node 2 and node 1 reports it
online; DisableThing on node 1 disconnects it on node 2 within a second; a device registered
from the command line with ``--registry`` is known to both; a shadow written on node 1 is
read on node 2. With PostgreSQL stopped (by its PID): an API write answers 503, a device the
node has not seen is refused with 0x88 (3.1.1: 3) while one in its sign-in cache still signs
in, ``/healthz`` says degraded; with PostgreSQL back, the nodes recover by themselves.
"""

from __future__ import annotations

import concurrent.futures
import json
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pgserver
import pytest
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkiot.request.v20180120.DisableThingRequest import DisableThingRequest
from aliyunsdkiot.request.v20180120.EnableThingRequest import EnableThingRequest
from aliyunsdkiot.request.v20180120.GetDeviceStatusRequest import GetDeviceStatusRequest
from aliyunsdkiot.request.v20180120.QueryDeviceDetailRequest import QueryDeviceDetailRequest
from aliyunsdkiot.request.v20180120.RegisterDeviceRequest import RegisterDeviceRequest
from botocore.config import Config
from botocore.exceptions import ClientError
from click.testing import CliRunner

from thinghub.cli import main as cli_main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "security"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scenarios"))
import rawmqtt
from hubprocess import HubProcess
from sec_paho_device import api
from sechub import KEY_ID, SECRET, Device

pytestmark = pytest.mark.thinghub_only

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 20.0
# The brief's promise: a registry change reaches every node within a second.
PROPAGATION_S = 1.0


class PgNode(HubProcess):
    """A ``thinghub serve --registry URL --node-id N`` process (hubs sharing a registry
    without a cluster each need their own MessageId node number); stopped by its PID."""

    def __init__(self, name: str, url: str, data_dir: Path, node_id: int) -> None:
        self.name = name
        super().__init__(
            data_dir,
            (KEY_ID, SECRET),
            defaults={"THINGHUB_MQTT_SYS_INTERVAL": "0"},
            args=("--registry", url, "--node-id", str(node_id)),
            timeout=TIMEOUT,
        )
        self.port = self.mqtt_port

    def raw(self, version: int = 5) -> rawmqtt.RawClient:
        return rawmqtt.RawClient(self.host, self.port, version=version, timeout=TIMEOUT)

    def health(self) -> tuple[int, dict[str, Any]]:
        url = f"http://{self.host}:{self.http_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
                return answer.status, dict(json.loads(answer.read()))
        except urllib.error.HTTPError as error:
            return error.code, dict(json.loads(error.read()))

    def iot_data(self) -> Any:
        return boto3.client(
            "iot-data",
            endpoint_url=f"http://{self.host}:{self.http_port}",
            region_name="us-east-1",
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            config=Config(retries={"max_attempts": 1}),
        )


def wait_for(condition: Any, timeout: float = TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def pg() -> Iterator[pgserver.PgServer]:
    """This module's own PostgreSQL: the tests stop and start it."""
    if not pgserver.available():
        pytest.skip(f"PostgreSQL 15 is not installed in {pgserver.BIN}")
    server = pgserver.PgServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def nodes(
    pg: pgserver.PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[PgNode]]:
    started: list[PgNode] = []
    try:
        for number, name in enumerate(("n1", "n2"), start=1):
            # One at a time: those started are stopped if a later one fails to start.
            data_dir = tmp_path_factory.mktemp(name)
            started.append(PgNode(name, pg.url, data_dir, number))
        yield started
    finally:
        for node in started:
            node.stop()


def cli(pg: pgserver.PgServer, tmp: Path, *args: str) -> Any:
    result = CliRunner().invoke(
        cli_main, [*args, "--registry", pg.url, "--data-dir", str(tmp), "--json"]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def product(pg: pgserver.PgServer, tmp: Path) -> str:
    created = cli(pg, tmp, "product", "create", f"p_{uuid.uuid4().hex[:8]}")
    return str(created[0]["product_key"])


def register(node: PgNode, product_key: str) -> tuple[Device, str]:
    request = RegisterDeviceRequest()
    request.set_ProductKey(product_key)
    request.set_DeviceName(f"d_{uuid.uuid4().hex[:8]}")
    data = api(node, request)["Data"]
    device = Device(node, product_key, data["DeviceName"], data["DeviceSecret"])
    return device, str(data["IotId"])


def status(node: PgNode, iot_id: str) -> str:
    request = GetDeviceStatusRequest()
    request.set_IotId(iot_id)
    return str(api(node, request)["Data"]["Status"])


def sign_in(node: PgNode, device: Device, version: int = 5) -> tuple[rawmqtt.RawClient, int]:
    client = node.raw(version)
    client.send(device.connect_packet(version))
    return client, client.expect(rawmqtt.CONNACK).reason


def signed_in(node: PgNode, device: Device) -> rawmqtt.RawClient:
    """Signed in on ``node``, a device registered on another node: within PROPAGATION_S."""
    deadline = time.monotonic() + PROPAGATION_S
    while True:
        client, reason = sign_in(node, device)
        if reason == 0:
            return client
        client.close()
        assert time.monotonic() < deadline, f"still refused on {node.name}: {reason:#x}"
        time.sleep(0.02)


def test_registered_on_one_node_signs_in_on_the_other_and_is_seen_online(
    pg: pgserver.PgServer, nodes: list[PgNode], tmp_path: Path
) -> None:
    n1, n2 = nodes
    device, iot_id = register(n1, product(pg, tmp_path))
    client = signed_in(n2, device)
    try:
        wait_for(lambda: status(n1, iot_id) == "ONLINE", what="node 1 to see the device online")
        detail = QueryDeviceDetailRequest()
        detail.set_IotId(iot_id)
        assert api(n1, detail)["Data"]["Status"] == "ONLINE"
    finally:
        client.close()
    wait_for(lambda: status(n1, iot_id) == "OFFLINE", what="node 1 to see it offline")


def test_disable_thing_on_one_node_disconnects_the_device_on_the_other(
    pg: pgserver.PgServer, nodes: list[PgNode], tmp_path: Path
) -> None:
    n1, n2 = nodes
    device, iot_id = register(n1, product(pg, tmp_path))
    client = signed_in(n2, device)
    disable = DisableThingRequest()
    disable.set_IotId(iot_id)
    api(n1, disable)
    started = time.monotonic()
    try:
        client.expect_closed(timeout=PROPAGATION_S + 1.0)
    finally:
        client.close()
    assert time.monotonic() - started < PROPAGATION_S
    # Refused on either node while disabled, signs in again once enabled.
    for node in nodes:
        again, reason = sign_in(node, device)
        again.close()
        assert reason != 0
    enable = EnableThingRequest()
    enable.set_IotId(iot_id)
    api(n2, enable)
    wait_for(lambda: _signs_in(n1, device), timeout=PROPAGATION_S * 3, what="sign-in on node 1")


def _signs_in(node: PgNode, device: Device) -> bool:
    client, reason = sign_in(node, device)
    client.close()
    return reason == 0


def test_command_line_registration_is_seen_by_both_nodes(
    pg: pgserver.PgServer, nodes: list[PgNode], tmp_path: Path
) -> None:
    key = product(pg, tmp_path)
    created = cli(pg, tmp_path, "device", "register", key, "cli-device")
    device = Device(nodes[0], key, "cli-device", str(created[0]["device_secret"]))
    for node in nodes:
        wait_for(
            lambda node=node: _signs_in(node, device),
            timeout=PROPAGATION_S * 3,
            what=f"the device to sign in on {node.name}",
        )
    # Disabled from the command line: disconnected on the node it is on, within a second.
    client = signed_in(nodes[1], device)
    try:
        cli(pg, tmp_path, "device", "disable", key, "cli-device")
        started = time.monotonic()
        client.expect_closed(timeout=PROPAGATION_S + 1.0)
    finally:
        client.close()
    assert time.monotonic() - started < PROPAGATION_S


def test_shadow_updates_on_both_nodes_at_once_lose_nothing(nodes: list[PgNode]) -> None:
    """Every update is applied to the shadow as the previous one left it, whichever node took
    it: each gets its own version, and the document holds every update's field."""
    thing = f"busy-{uuid.uuid4().hex[:8]}"
    per_node = 40

    def update(node: PgNode, n: int) -> int:
        payload = json.dumps({"state": {"reported": {f"{node.name}_{n}": n}}}).encode()
        answer = node.iot_data().update_thing_shadow(thingName=thing, payload=payload)
        return int(json.loads(answer["payload"].read())["version"])

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        versions = list(
            pool.map(
                lambda job: update(*job), [(node, n) for node in nodes for n in range(per_node)]
            )
        )
    total = per_node * len(nodes)
    assert sorted(versions) == list(range(1, total + 1))  # no two updates saw the same shadow
    shadow = json.loads(nodes[0].iot_data().get_thing_shadow(thingName=thing)["payload"].read())
    assert len(shadow["state"]["reported"]) == total and shadow["version"] == total


def test_shadow_written_on_one_node_is_read_on_the_other(nodes: list[PgNode]) -> None:
    n1, n2 = nodes
    thing = f"thing-{uuid.uuid4().hex[:8]}"
    document = {"state": {"reported": {"temperature": 21}}}
    n1.iot_data().update_thing_shadow(thingName=thing, payload=json.dumps(document).encode())
    answer = n2.iot_data().get_thing_shadow(thingName=thing)
    shadow = json.loads(answer["payload"].read())
    assert shadow["state"]["reported"] == {"temperature": 21}
    assert shadow["version"] == 1


def test_postgresql_out_of_reach_then_back(
    pg: pgserver.PgServer, nodes: list[PgNode], tmp_path: Path
) -> None:
    n1, n2 = nodes
    key = product(pg, tmp_path)
    known, _ = register(n1, key)
    unknown, _ = register(n1, key)
    signed_in(n2, known).close()  # now in node 2's sign-in cache
    pg.kill()
    try:
        wait_for(lambda: n2.health()[1].get("status") == "degraded", what="node 2 to say degraded")
        code, body = n2.health()
        assert code == 200 and "registry" in body["degraded"], body
        # An API write: 503, the gateway's ServiceUnavailable.
        with pytest.raises(ServerException) as refused:
            register(n2, key)
        assert refused.value.get_http_status() == 503
        # A device node 2 has not seen: 0x88 (MQTT 5), 3 (3.1.1); a cached one signs in.
        client, reason = sign_in(n2, unknown)
        client.close()
        assert reason == 0x88
        client, reason = sign_in(n2, unknown, version=4)
        client.close()
        assert reason == 3
        assert _signs_in(n2, known)
        # A shadow update: 503 too (ServiceUnavailableException).
        with pytest.raises(ClientError) as shadow_refused:
            n2.iot_data().update_thing_shadow(thingName="lamp", payload=b'{"state":{}}')
        assert shadow_refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    finally:
        pg.restart()
    wait_for(lambda: n2.health()[1].get("status") == "ok", what="node 2 to recover")
    device, _ = register(n2, key)
    thing = f"thing-{uuid.uuid4().hex[:8]}"
    n2.iot_data().update_thing_shadow(
        thingName=thing, payload=json.dumps({"state": {"desired": {"on": True}}}).encode()
    )
    answer = json.loads(n1.iot_data().get_thing_shadow(thingName=thing)["payload"].read())
    assert answer["state"]["desired"] == {"on": True}
    for node in nodes:
        wait_for(
            lambda node=node: _signs_in(node, device),
            timeout=PROPAGATION_S * 3,
            what=f"a device registered after the outage to sign in on {node.name}",
        )
    assert _signs_in(n2, unknown)


def test_nodes_starting_together_on_a_new_registry_all_start(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Each makes the demo product and device of a new registry at start (demo.py): the one
    that finds another made them first uses theirs."""
    if not pgserver.available():
        pytest.skip(f"PostgreSQL 15 is not installed in {pgserver.BIN}")
    fresh = pgserver.PgServer()
    fresh.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            starting = [
                pool.submit(PgNode, f"t{n}", fresh.url, tmp_path_factory.mktemp(f"t{n}"), 10 + n)
                for n in range(3)
            ]
            started = [future.result() for future in starting]
        for node in started:
            node.assert_alive()
            node.stop()
    finally:
        fresh.stop()
