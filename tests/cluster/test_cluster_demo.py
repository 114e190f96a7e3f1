"""``make cluster`` (``python -m thinghub.cluster.demo``) as a user runs it: it prints its
nodes' endpoints and a root key, a message published on n1 reaches a subscriber on n3, and
Ctrl-C (SIGINT) stops every process it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest
import rawmqtt
from hubnodes import _unsettled
from natscluster import available

TIMEOUT = 60.0


def _get(http: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{http}{path}", timeout=10) as answer:
        return dict(json.loads(answer.read()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_make_cluster_starts_three_nodes_that_act_as_one_and_ctrl_c_stops_them_all() -> None:
    if not available():
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    demo = subprocess.Popen(
        [sys.executable, "-m", "thinghub.cluster.demo"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    pids: list[int] = []
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        endpoints: dict[str, tuple[str, str]] = {}
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
        output = "".join(lines)
        assert set(endpoints) == {"n1", "n2", "n3"}, output
        assert "THINGHUB_ROOT_ACCESS_KEY_ID=" in output and "PostgreSQL" in output
        assert len(pids) == 6 and all(_alive(pid) for pid in pids)

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
