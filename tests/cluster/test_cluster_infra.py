"""The cluster's ground: the real servers the fixtures start, how ``serve`` takes the cluster
settings, what it refuses, and what a node does without NATS. Without ``--cluster`` nothing
changes: the hub does not even load the NATS client."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
from hubnodes import ROOT, HubNode, settle
from natscluster import NATS_SERVER, NatsCluster, free_port
from pgserver import PgServer

from thinghub.cluster.natsserver import MIN_VERSION, find_binary, parse_version, too_old
from thinghub.cluster.numbers import CACHE_FILE, node_number
from thinghub.cluster.settings import ClusterSettings
from thinghub.config import ConfigError, load_settings

THINGHUB = str(ROOT / ".venv/bin/thinghub")


def serve(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [THINGHUB, "serve", "--mqtt-port", "0", "--http-port", "0", "--host", "127.0.0.1",
         "--data-dir", str(tmp_path), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_stream_replicas_setting_reaches_jetstream(
    nats_cluster: NatsCluster, start_node: Callable[..., HubNode]
) -> None:
    """Three nodes with ``stream_replicas = 3`` (the demo's): the owners bucket lives on all
    three NATS servers."""
    nodes = [start_node(f"r{i}", CLUSTER_STREAM_REPLICAS=3) for i in (1, 2, 3)]
    settle(nodes)

    async def replicas() -> tuple[int, int]:
        nc = await nats.connect(servers=nats_cluster.urls)
        try:
            info = await nc.jetstream().stream_info("KV_thinghub_sessions")
        finally:
            await nc.close()
        followers = len(info.cluster.replicas or []) if info.cluster else 0
        return info.config.num_replicas or 0, followers

    assert asyncio.run(replicas()) == (3, 2)


def test_a_node_names_the_nats_server_version_it_runs_on(
    nats_cluster: NatsCluster, start_node: Callable[..., HubNode]
) -> None:
    """``GET /thinghub/cluster`` shows the version the NATS server announced, the one its
    program prints, and the tests run on a version the cluster supports (2.11 or newer:
    cluster/natsserver.py), so no warning of an old server is logged."""
    node = start_node("v1")
    settle([node])
    printed = subprocess.run([NATS_SERVER, "--version"], capture_output=True, text=True).stdout
    version = parse_version(printed)
    assert version is not None and version[:2] >= MIN_VERSION, printed
    assert node.status()["nats"]["server_version"] == ".".join(map(str, version))
    assert "older than" not in node.log()


@pytest.mark.parametrize(
    ("announced", "old"),
    [("2.9.10", True), ("2.10.26", True), ("2.11.0", False), ("2.12.8", False),
     ("3.0.0", False), ("nats-server: v2.9.10", True), ("unknown", False)],
)  # fmt: skip
def test_nats_servers_before_2_11_are_too_old(announced: str, old: bool) -> None:
    assert too_old(announced) is old


def test_nats_server_picks_the_program_and_the_venvs_comes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NATS_SERVER", raising=False)
    # The dev dependencies install the official release beside this Python.
    assert find_binary() == str(Path(sys.prefix) / "bin" / "nats-server")
    chosen = tmp_path / "nats-server"
    chosen.write_text("")
    monkeypatch.setenv("NATS_SERVER", str(chosen))
    assert find_binary() == str(chosen)
    monkeypatch.setenv("NATS_SERVER", str(tmp_path / "missing"))
    assert find_binary() is None


def test_postgresql_serves_the_hub_user_over_tcp_with_its_password(postgres: PgServer) -> None:
    postgres.psql("CREATE TABLE IF NOT EXISTS probe (id int PRIMARY KEY, v text)", as_hub=True)
    postgres.psql("INSERT INTO probe VALUES (1, 'é') ON CONFLICT DO NOTHING", as_hub=True)
    assert postgres.psql("SELECT v FROM probe WHERE id = 1", as_hub=True) == "é"
    assert postgres.psql("SELECT current_user", as_hub=True) == postgres.user
    assert postgres.pid() is not None


def test_hubs_sharing_a_registry_without_a_cluster_need_a_node_id(
    postgres: PgServer, tmp_path: Path
) -> None:
    # Without NATS to claim node numbers in, two hubs on one registry could issue the same
    # MessageIds: each must be given its own number.
    result = serve("--registry", postgres.url, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "needs cluster.node_id" in result.stderr
    settings = load_settings(
        environ={}, overrides={"registry.url": postgres.url, "cluster.node_id": 7}
    )
    assert (settings.registry.url, settings.cluster.node_id) == (postgres.url, 7)


def test_cluster_settings_from_flags_environment_and_file(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[cluster]\nnats_urls = ["nats://h1:4222"]\nstream_replicas = 3\n')
    settings = load_settings(
        config,
        environ={"THINGHUB_CLUSTER_NODE_TIMEOUT": "9", "THINGHUB_CLUSTER_NODE_NAME": "env"},
        overrides={"cluster.nats_urls": "nats://a:4222,nats://b:4222", "cluster.node_name": "n7"},
    )
    cluster = settings.cluster
    assert cluster.nats_urls == ("nats://a:4222", "nats://b:4222")
    assert (cluster.node(), cluster.stream_replicas, cluster.node_timeout) == ("n7", 3, 9.0)
    assert load_settings(environ={}).cluster.enabled is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cluster.nats_urls": "http://h1:4222"}, "not a nats://host:port URL"),
        ({"cluster.nats_urls": "nats://h", "cluster.node_name": "a.b"}, "cluster.node_name"),
        ({"cluster.stream_replicas": 0}, "cluster.stream_replicas"),
        ({"cluster.batch_bytes": 2 * 1024 * 1024}, "cluster.batch_bytes"),
        ({"cluster.heartbeat_interval": 5, "cluster.node_timeout": 5}, "heartbeat_interval"),
        ({"cluster.outbound_buffer_bytes": 10}, "outbound_buffer_bytes"),
    ],
)
def test_bad_cluster_settings_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={}, overrides=overrides)


def test_serve_refuses_a_bad_cluster_url(tmp_path: Path) -> None:
    result = serve("--cluster", "h1:4222", tmp_path=tmp_path)
    assert result.returncode != 0 and "not a nats://host:port URL" in result.stderr


def test_without_a_cluster_the_nats_client_is_not_even_loaded() -> None:
    code = "import sys, thinghub.app, thinghub.cli; print('nats' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_a_node_without_nats_starts_degraded_and_refuses_sign_ins(tmp_path: Path) -> None:
    """With its number configured (or remembered from an earlier start: cluster/numbers.py)
    a node starts without NATS: degraded, serving HTTP, refusing sign-ins with 0x88 since it
    cannot make a client id unique in the cluster."""
    nowhere = f"nats://127.0.0.1:{free_port()}"
    node = HubNode(
        "lonely",
        nowhere,
        tmp_path / "hub",
        CLUSTER_CONNECT_TIMEOUT=1,
        CLUSTER_RECONNECT_WAIT=0.2,
        CLUSTER_NODE_ID=7,
    )
    try:
        health = node.get_json("/healthz")
        assert health["status"] == "degraded" and "cluster" in health["degraded"], health
        status = node.status()
        assert status["nats"]["connected"] is False and status["number"] == 7
        assert os.path.exists(tmp_path / "hub" / "broker.db")  # it serves, with its store
        with node.raw() as client:
            assert client.connect("alone", expect_reason=None).reason == 0x88
    finally:
        assert node.stop() == 0


def test_a_first_start_without_nats_waits_for_its_number_and_a_later_one_remembers_it(
    tmp_path: Path,
) -> None:
    settings = ClusterSettings(
        nats_urls=(f"nats://127.0.0.1:{free_port()}",),
        node_name="lonely",
        connect_timeout=0.5,
        reconnect_wait=0.1,
    )

    async def ask(seconds: float) -> int:
        return await asyncio.wait_for(node_number(settings, tmp_path), seconds)

    with pytest.raises(TimeoutError):
        asyncio.run(ask(1.5))  # no number known: it waits for NATS
    (tmp_path / CACHE_FILE).write_text('{"name": "lonely", "number": 12}')
    assert asyncio.run(ask(5)) == 12
    (tmp_path / CACHE_FILE).write_text('{"name": "another", "number": 12}')
    with pytest.raises(TimeoutError):
        asyncio.run(ask(1.5))  # another node's directory: not this node's number
