"""ThingHub nodes of a cluster for the tests: real ``thinghub serve --cluster ... --node-name
nK`` processes, each with its own data directory and free MQTT and HTTP ports on 127.0.0.1,
the same root access key, anonymous MQTT clients allowed (they join the root account, the
same on every node). Stopped by PID (SIGTERM, then SIGKILL), also when a test fails.

``settle(nodes)`` waits, on each node's ``GET /thinghub/cluster``, until every node has the
others' filters at the version they announce: after it, a message published anywhere reaches
every matching subscription, without sleeping and hoping."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from click.testing import CliRunner

from thinghub.cli import main as cli_main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scenarios"))
import rawmqtt
from hubprocess import HubProcess

ROOT = Path(__file__).resolve().parents[2]
KEY_ID, SECRET = "LTAIclusterTests00000000", "cluster-tests-secret-0123456789ab"
TIMEOUT = 20.0
#: Quick heartbeats, as conftest.py's NODE_SETTINGS, for a node a test starts on its own (not
#: imported from conftest: another directory's conftest module can take that name when several
#: test directories run together).
QUICK = {"CLUSTER_HEARTBEAT_INTERVAL": "0.25", "CLUSTER_NODE_TIMEOUT": "3"}


#: Every node started, for conftest.py to show their logs when a test fails.
STARTED: list[HubNode] = []


class HubNode(HubProcess):
    def __init__(
        self, name: str, cluster: str, data_dir: Path, keep_lines: int = 400, **settings: Any
    ) -> None:
        """Settings as ``THINGHUB_<KEY>`` (``CLUSTER_HEARTBEAT_INTERVAL=0.5``); the last
        ``keep_lines`` lines of its output are kept for ``log()``."""
        STARTED.append(self)
        self.name = name
        self.ws_path = "/mqtt"
        super().__init__(
            data_dir,
            (KEY_ID, SECRET),
            defaults={
                "THINGHUB_MQTT_ALLOW_ANONYMOUS": "true",
                # $SYS topics are each node's own; the tests do not need them.
                "THINGHUB_MQTT_SYS_INTERVAL": "0",
            },
            settings=settings,
            args=("--cluster", cluster, "--node-name", name),
            timeout=TIMEOUT,
            keep_lines=keep_lines,
        )
        self.port = self.mqtt_port

    def __repr__(self) -> str:
        return f"HubNode({self.name}, mqtt={self.port}, http={self.http_port})"

    # --- what pahoclient.Client needs of a hub --------------------------------------------

    def port_for(self, transport: str) -> int:
        return self.http_port if transport == "websockets" else self.port

    # --- HTTP -----------------------------------------------------------------------------

    def get_json(self, path: str) -> dict[str, Any]:
        url = f"http://{self.host}:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
            return dict(json.loads(answer.read()))

    def status(self) -> dict[str, Any]:
        """This node's view of the cluster (``GET /thinghub/cluster``)."""
        return self.get_json("/thinghub/cluster")

    def messages(self) -> dict[str, int]:
        return dict(self.status()["messages"])

    def iot_data(self) -> Any:
        return boto3.client(
            "iot-data",
            endpoint_url=f"http://{self.host}:{self.http_port}",
            region_name="us-east-1",
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            config=Config(retries={"max_attempts": 1}),
        )

    def cli(self, *args: str) -> Any:
        """``thinghub ...`` on this node's data directory (its registry)."""
        result = CliRunner().invoke(cli_main, [*args, "--data-dir", str(self.data_dir), "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    def raw(self, version: int = 5) -> rawmqtt.RawClient:
        return rawmqtt.RawClient(self.host, self.port, version=version, timeout=TIMEOUT)


def sessions_ready(node: HubNode) -> bool:
    """The node's message stream and session records are ready: QoS 1/2 messages and
    persistent sessions work."""
    status = node.status()
    return bool(status["stream"]["ready"] and status["persistent_sessions"]["ready"])


def settle(nodes: list[HubNode], timeout: float = TIMEOUT) -> None:
    """Wait until every node knows every other node's filters at its current version (and no
    node forwards blindly any more), every node's session owners bucket is ready and every
    node has caught up with the retained messages."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        views = {node.name: node.status() for node in nodes}
        last = _unsettled(views)
        if not last:
            return
        time.sleep(0.05)
    raise AssertionError(f"the cluster did not settle: {last}")


def _unsettled(views: dict[str, dict[str, Any]]) -> str:
    for name, view in views.items():
        interest = view["interest"]
        if not view["nats"]["connected"]:
            return f"{name} is not connected to NATS"
        if not view["owners"]["ready"]:
            return f"{name}'s session owners bucket is not ready"
        if not view["retained"]["ready"]:
            return f"{name} has not caught up with the retained messages"
        if interest["blind"] or interest["unsynced_nodes"]:
            return f"{name} does not know every node's filters yet"
        for other, other_view in views.items():
            if other == name:
                continue
            known = interest["nodes"].get(other)
            want = other_view["interest"]["interest_version"]
            if known is None or not known["synced"] or known["version"] != want:
                return f"{name} knows {other} at {known}, which is at version {want}"
    return ""


def wait_for(condition: Any, timeout: float = TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
