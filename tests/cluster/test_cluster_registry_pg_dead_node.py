"""Devices of a node that died are shown OFFLINE by the others (registry/pg_store.py, "Nodes
that die"): two real ``thinghub serve --registry postgresql://... --node-id N`` nodes on one
real PostgreSQL (pgserver.py; no NATS), a device signed in on node 2 with a raw MQTT socket,
statuses read on node 1 with the Alibaba SDK (GetDeviceStatus, BatchGetDeviceState,
QueryDeviceDetail).

Short settings here: a heartbeat every HEARTBEAT_S, a node late after NODE_TIMEOUT_S. What a
user sees: node 2 killed with SIGKILL (by its PID), node 1 says OFFLINE within
NODE_TIMEOUT_S + HEARTBEAT_S; node 2 started again, the device signs in there and node 1
says ONLINE. Node 2 paused (SIGSTOP) past the timeout, its device is shown OFFLINE; resumed,
it writes its still connected device ONLINE again by itself.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pgserver
import pytest
from aliyunsdkiot.request.v20180120.BatchGetDeviceStateRequest import BatchGetDeviceStateRequest
from aliyunsdkiot.request.v20180120.GetDeviceStatusRequest import GetDeviceStatusRequest
from aliyunsdkiot.request.v20180120.QueryDeviceDetailRequest import QueryDeviceDetailRequest
from aliyunsdkiot.request.v20180120.RegisterDeviceRequest import RegisterDeviceRequest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from thinghub.cli import main as cli_main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "security"))
import rawmqtt
from hubprocess import HubProcess
from sec_paho_device import api
from sechub import KEY_ID, SECRET, Device

pytestmark = pytest.mark.thinghub_only

TIMEOUT = 20.0
HEARTBEAT_S = 0.5
NODE_TIMEOUT_S = 1.5
# What the bound leaves for the rest of the path: the notification to node 1's copy and
# this test's API calls (a few tens of milliseconds on a busy machine).
SLACK_S = 0.7


class PgNode(HubProcess):
    """``thinghub serve --registry URL --node-id N`` with short heartbeats."""

    def __init__(self, name: str, url: str, data_dir: Path, node_id: int) -> None:
        self.name = name
        super().__init__(
            data_dir,
            (KEY_ID, SECRET),
            defaults={
                "THINGHUB_MQTT_SYS_INTERVAL": "0",
                "THINGHUB_REGISTRY_NODE_HEARTBEAT": str(HEARTBEAT_S),
                "THINGHUB_REGISTRY_NODE_TIMEOUT": str(NODE_TIMEOUT_S),
            },
            args=("--registry", url, "--node-id", str(node_id)),
            timeout=TIMEOUT,
        )

    def raw(self) -> rawmqtt.RawClient:
        return rawmqtt.RawClient(self.host, self.mqtt_port, version=5, timeout=TIMEOUT)

    def kill(self) -> None:
        """SIGKILL, by the PID this test started."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(TIMEOUT)
        self.stop()  # it is gone: this closes its output


def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT, what: str = "") -> float:
    """Seconds it took ``condition`` to hold."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def pg() -> Iterator[pgserver.PgServer]:
    if not pgserver.available():
        pytest.skip(f"PostgreSQL 15 is not installed in {pgserver.BIN}")
    server = pgserver.PgServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nodes(pg: pgserver.PgServer, tmp_path: Path) -> Iterator[list[PgNode]]:
    """Node 1 and node 2; a test may replace node 2 (``nodes[1] = ...``): whichever are in
    the list at the end are stopped."""
    started: list[PgNode] = []
    try:
        for number, name in enumerate(("n1", "n2"), start=1):
            started.append(PgNode(name, pg.url, tmp_path / name, number))
        yield started
    finally:
        for node in started:
            if node.proc.poll() is None:
                os.kill(node.proc.pid, signal.SIGCONT)  # a paused one, too
            node.stop()


def register(pg: pgserver.PgServer, node: PgNode, tmp: Path) -> tuple[Device, str]:
    result = CliRunner().invoke(
        cli_main,
        ["product", "create", f"p_{uuid.uuid4().hex[:8]}", "--registry", pg.url,
         "--data-dir", str(tmp / "cli"), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    product_key = str(json.loads(result.output)[0]["product_key"])
    request = RegisterDeviceRequest()
    request.set_ProductKey(product_key)
    request.set_DeviceName(f"d_{uuid.uuid4().hex[:8]}")
    data = api(node, request)["Data"]
    return Device(node, product_key, data["DeviceName"], data["DeviceSecret"]), data["IotId"]


def sign_in(node: PgNode, device: Device) -> rawmqtt.RawClient:
    """Signed in on ``node`` (a device registered elsewhere: once the change reached it)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        client = node.raw()
        client.send(device.connect_packet(5))
        reason = client.expect(rawmqtt.CONNACK).reason
        if reason == 0:
            return client
        client.close()
        assert time.monotonic() < deadline, f"refused on {node.name}: {reason:#x}"
        time.sleep(0.05)


def statuses(node: PgNode, iot_id: str) -> set[str]:
    """The device's status as node 1's three APIs say it."""
    one = GetDeviceStatusRequest()
    one.set_IotId(iot_id)
    batch = BatchGetDeviceStateRequest()
    batch.set_IotIds([iot_id])
    detail = QueryDeviceDetailRequest()
    detail.set_IotId(iot_id)
    found: list[Any] = [
        api(node, one)["Data"]["Status"],
        *(e["Status"] for e in api(node, batch)["DeviceStatusList"]["DeviceStatus"]),
        api(node, detail)["Data"]["Status"],
    ]
    return set(found)


def swept_devices(node: PgNode) -> float:
    """``thinghub_registry_swept_devices_total`` on the node's ``/metrics``."""
    with urllib.request.urlopen(f"{node.url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "thinghub_registry_swept_devices":
            return sum(sample.value for sample in family.samples)
    return 0.0


def test_devices_of_a_killed_node_are_shown_offline_then_online_once_it_is_back(
    pg: pgserver.PgServer, nodes: list[PgNode], tmp_path: Path
) -> None:
    n1, n2 = nodes
    device, iot_id = register(pg, n1, tmp_path)
    client = sign_in(n2, device)
    wait_for(lambda: statuses(n1, iot_id) == {"ONLINE"}, what="node 1 to see it ONLINE")
    n2.kill()
    # Measured from the SIGKILL.
    took = wait_for(lambda: statuses(n1, iot_id) == {"OFFLINE"}, what="node 1 to say OFFLINE")
    client.close()
    assert took < NODE_TIMEOUT_S + HEARTBEAT_S + SLACK_S, f"OFFLINE after {took:.2f} s"
    assert swept_devices(n1) >= 1  # node 1 swept it, and says so on /metrics
    # Node 2 started again on its data directory: the device signs in there again.
    nodes[1] = n2 = PgNode("n2", pg.url, tmp_path / "n2", 2)
    client = sign_in(n2, device)
    try:
        wait_for(lambda: statuses(n1, iot_id) == {"ONLINE"}, what="node 1 to see it ONLINE")
        # And it stays so: node 2 heartbeats, nobody sweeps it.
        time.sleep(NODE_TIMEOUT_S + 2 * HEARTBEAT_S)
        assert statuses(n1, iot_id) == {"ONLINE"}
    finally:
        client.close()
    wait_for(lambda: statuses(n1, iot_id) == {"OFFLINE"}, what="OFFLINE once it disconnects")


def test_a_node_paused_past_the_timeout_writes_its_devices_online_again(
    pg: pgserver.PgServer, nodes: list[PgNode], tmp_path: Path
) -> None:
    n1, n2 = nodes
    device, iot_id = register(pg, n1, tmp_path)
    client = sign_in(n2, device)
    try:
        wait_for(lambda: statuses(n1, iot_id) == {"ONLINE"}, what="node 1 to see it ONLINE")
        os.kill(n2.proc.pid, signal.SIGSTOP)  # a long pause: its heartbeats are late
        try:
            wait_for(lambda: statuses(n1, iot_id) == {"OFFLINE"}, what="OFFLINE while paused")
        finally:
            os.kill(n2.proc.pid, signal.SIGCONT)
        # Still connected to node 2, which finds it was swept and writes it ONLINE again.
        took = wait_for(lambda: statuses(n1, iot_id) == {"ONLINE"}, what="ONLINE again")
        assert took < 2 * HEARTBEAT_S + SLACK_S + 1.0, f"ONLINE again after {took:.2f} s"
        client.ping()  # the connection lived through the pause
    finally:
        client.close()


def test_postgresql_out_of_reach_past_the_timeout_takes_no_live_node_for_dead(
    pg: pgserver.PgServer, nodes: list[PgNode], tmp_path: Path
) -> None:
    """PostgreSQL stopped (by its PID) for longer than the node timeout: every heartbeat is
    late, but once it is back no node sweeps another's devices (each waits a timeout first),
    so node 2's device never shows OFFLINE on node 1."""
    n1, n2 = nodes
    device, iot_id = register(pg, n1, tmp_path)
    client = sign_in(n2, device)
    try:
        wait_for(lambda: statuses(n1, iot_id) == {"ONLINE"}, what="node 1 to see it ONLINE")
        pg.kill()
        try:
            wait_for(
                lambda: all("heartbeat cannot be written" in n.log() for n in nodes),
                what="both nodes to miss a heartbeat",
            )
            time.sleep(NODE_TIMEOUT_S + 2 * HEARTBEAT_S)  # the outage outlasts the timeout
        finally:
            pg.restart()
        wait_for(
            lambda: all("heartbeat is written again" in n.log() for n in nodes),
            what="both nodes to heartbeat again",
        )
        # Past the time a sweep would have found node 2 late, and its resync come back.
        until = time.monotonic() + NODE_TIMEOUT_S + 3 * HEARTBEAT_S
        while time.monotonic() < until:
            assert statuses(n1, iot_id) == {"ONLINE"}
            time.sleep(0.02)
        assert "devices marked offline" not in n1.log() + n2.log()
    finally:
        client.close()


def test_two_nodes_sweeping_at_once_mark_each_device_offline_once(
    pg: pgserver.PgServer, tmp_path: Path
) -> None:
    """The sweep itself, in two registry stores of this process on the same PostgreSQL (the
    hub's own code, no hub around it): devices online on a node whose heartbeat is an hour
    old, and on a node that never heartbeated, are marked offline once, whichever of the
    two sweeps first; both see it in their copies; the late node's row is marked swept."""
    from thinghub.registry import Registry
    from thinghub.registry.pg_store import PgRegistryStore

    stores = [PgRegistryStore.open_url(pg.url, tmp_path / name) for name in ("a", "b")]
    try:
        for store in stores:
            store.start_listening()
        registry = Registry(stores[0])
        account = registry.ensure_root_account().account_id
        product = registry.create_product(account, f"p_{uuid.uuid4().hex[:8]}", 0)
        late, unknown = (
            registry.register_device(account, product.product_key).iot_id for _ in range(2)
        )
        pg.psql(
            "INSERT INTO registry_nodes (node, last_seen) VALUES ('late', now() - interval '1h');"
            f"UPDATE devices SET online = 1, online_node = 'late' WHERE iot_id = '{late}';"
            f"UPDATE devices SET online = 1, online_node = 'unknown' WHERE iot_id = '{unknown}'",
            as_hub=True,
        )
        # Both start at once: each first heartbeat sweeps, in its own thread.
        barrier = threading.Barrier(2)

        def start(store: PgRegistryStore) -> None:
            barrier.wait()
            store.start_heartbeat(HEARTBEAT_S, NODE_TIMEOUT_S)

        threads = [threading.Thread(target=start, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        assert sum(s.swept_devices for s in stores) == 2
        assert [s.heartbeat_failures for s in stores] == [0, 0]
        online = pg.psql(
            f"SELECT count(*) FROM devices WHERE online = 1 AND iot_id IN ('{late}', '{unknown}')",
            as_hub=True,
        )
        assert online == "0"
        assert pg.psql("SELECT swept FROM registry_nodes WHERE node = 'late'", as_hub=True) == "1"
        for store in stores:
            wait_for(
                lambda store=store: _online_in_copy(store, late, unknown) == [0, 0],
                timeout=1.0,
                what="the copies to say offline",
            )
    finally:
        for store in stores:
            store.close()


def test_rows_of_nodes_silent_for_a_week_are_forgotten(
    pg: pgserver.PgServer, tmp_path: Path
) -> None:
    """A heartbeat's sweep deletes the ``registry_nodes`` rows of nodes silent for a week
    (nodes started on new data directories leave theirs behind), once the devices that were
    online there are marked offline, and keeps a row a day old."""
    from thinghub.registry import Registry
    from thinghub.registry.pg_store import PgRegistryStore

    store = PgRegistryStore.open_url(pg.url, tmp_path / "sweeper")
    try:
        store.start_listening()
        registry = Registry(store)
        account = registry.ensure_root_account().account_id
        product = registry.create_product(account, f"p_{uuid.uuid4().hex[:8]}", 0)
        device = registry.register_device(account, product.product_key).iot_id
        gone, recent = (f"{name}-{uuid.uuid4().hex[:6]}" for name in ("gone", "recent"))
        pg.psql(
            "INSERT INTO registry_nodes (node, last_seen, swept) VALUES "
            f"('{gone}', now() - interval '8 days', 0), ('{recent}', now() - interval '1 day', 1);"
            f"UPDATE devices SET online = 1, online_node = '{gone}' WHERE iot_id = '{device}'",
            as_hub=True,
        )
        store.start_heartbeat(HEARTBEAT_S, NODE_TIMEOUT_S)

        def rows() -> set[str]:
            listed = pg.psql(
                f"SELECT node FROM registry_nodes WHERE node IN ('{gone}', '{recent}')",
                as_hub=True,
            )
            return set(listed.split())

        wait_for(lambda: gone not in rows(), what="the silent node's row forgotten")
        assert recent in rows()
        online = pg.psql(f"SELECT online FROM devices WHERE iot_id = '{device}'", as_hub=True)
        assert online == "0"
        assert store.heartbeat_failures == 0
    finally:
        store.close()


def _online_in_copy(store: Any, *iot_ids: str) -> list[int]:
    """The ``online`` column of ``iot_ids`` in ``store``'s local copy (-1: not there yet)."""
    found = []
    for iot_id in iot_ids:
        row = store.read_row("SELECT online FROM devices WHERE iot_id = ?", (iot_id,))
        found.append(-1 if row is None else int(row[0]))
    return found
