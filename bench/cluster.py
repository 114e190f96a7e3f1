"""Cross-node scenarios: publishers on node 1, subscribers on node 2 of a ThingHub cluster.

``python -m bench.cluster`` runs fan-in (QoS 0), qos1 and qos1-persistent (bench/scenarios.py)
twice per run: against one plain ThingHub (the single-node figure of the same run), then
across two clustered nodes on one NATS server with JetStream, publishers on n1 and
subscribers on n2. The figure compared is messages per hub CPU-second: deliveries divided by
the CPU seconds of the hubs (both nodes together for the cluster), so that it does not depend
on how many cores this machine lends the processes. NATS's own CPU is shown beside it. The
issue's targets: cross-node QoS 0 at least 0.5x the single node, QoS 1 into persistent
sessions at least 0.4x.

Before the first publish the bench waits until n1 knows n2's filters (``GET
/thinghub/cluster``): from then on every message crosses, none is forwarded blindly.
Processes are not pinned to CPUs (three of them share the machine's cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
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

SCENARIO_NAMES = ("fan-in", "qos1", "qos1-persistent")
TARGETS = {"fan-in": 0.5, "qos1": None, "qos1-persistent": 0.4}
SETTLE_TIMEOUT = 20.0


class NatsServer(Broker):
    """One nats-server with JetStream, its store in the broker's temporary directory."""

    name = "nats"

    def __init__(self) -> None:
        super().__init__(None)
        self.binary = shutil.which("nats-server") or "/usr/sbin/nats-server"

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

    def cpu_seconds(self) -> float:
        if self.aside is not None:
            self.aside_readings.append(self.aside.cpu_seconds())
        return sum(p.cpu_seconds() for p in self.probes)

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


def _settled(sender: ClusterHub, receiver: ClusterHub) -> Callable[[], Awaitable[None]]:
    """Until ``sender`` knows ``receiver``'s filters at their current version."""

    def check() -> bool:
        mine, theirs = sender.cluster_status(), receiver.cluster_status()
        interest = mine["interest"]
        known = interest["nodes"].get(receiver.node_name)
        return (
            not interest["blind"]
            and known is not None
            and known["synced"]
            and known["version"] == theirs["interest"]["interest_version"]
        )

    async def wait() -> None:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while not await loop.run_in_executor(None, check):
            if time.monotonic() > deadline:
                raise TimeoutError("the cluster did not settle")
            await asyncio.sleep(0.05)

    return wait


def cross_run(scenario: str, seconds: float, warmup: float) -> Figure:
    spec = SCENARIOS[scenario].spec
    assert spec is not None
    nats = NatsServer()
    started: list[Broker] = []
    try:
        nats.start()
        started.append(nats)
        n1, n2 = ClusterHub(nats.url, "n1"), ClusterHub(nats.url, "n2")
        for hub in (n1, n2):
            hub.start()
            started.append(hub)
        assert n1.probe is not None and n2.probe is not None
        probe = SumProbe([n1.probe, n2.probe], nats.probe)
        r = run_loop(
            run_stream(
                spec,
                brokers.HOST,
                n2.port,
                seconds,
                warmup,
                probe,
                pub_port=n1.port,
                ready=_settled(n1, n2),
            )
        )
        readings = probe.aside_readings
        nats_cpu = 100.0 * (readings[-1] - readings[0]) / r.elapsed if len(readings) >= 2 else None
        return _figure(scenario, "cross-node", r, nats_cpu)
    except (BrokerUnavailable, OSError, SetupError, TimeoutError) as error:
        return Figure(scenario, "cross-node", ok=False, error=str(error) or type(error).__name__)
    finally:
        for broker in reversed(started):
            broker.stop()


def _median(figures: Sequence[Figure], field: str) -> float | None:
    values = [getattr(f, field) for f in figures if f.ok and getattr(f, field) is not None]
    return statistics.median(values) if values else None


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def report(figures: Sequence[Figure], scenarios: Sequence[str]) -> tuple[list[str], list[dict]]:
    lines = [
        "### Cross-node: publishers on n1, subscribers on n2 (one NATS server)",
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
        rows.append(row)
        lines.append(
            f"| {name} | {_num(row['single']['rate'])} | {_num(row['single']['hub_cpu'])}% "
            f"| {_num(s_eff)} | {_num(row['cross']['rate'])} | {_num(row['cross']['hub_cpu'])}% "
            f"| {_num(row['cross']['nats_cpu'])}% | {_num(c_eff)} | {_num(ratio, 2)}x "
            f"| {'-' if target is None else f'{target}x'} |"
        )
    return lines, rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scenario", nargs="+", choices=SCENARIO_NAMES)
    ap.add_argument("--quick", action="store_true", help="--seconds 1 --runs 1")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.runs = 1.0, 1
    warmup = min(2.0, max(0.5, args.seconds * 0.2))
    scenarios = list(args.scenario or SCENARIO_NAMES)
    if NatsServer().installed():
        print("nats-server is not installed (apt-get install nats-server)", file=sys.stderr)
        return 2
    figures: list[Figure] = []
    for run in range(args.runs):
        for name in scenarios:
            for setup in (single_run, cross_run):
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
