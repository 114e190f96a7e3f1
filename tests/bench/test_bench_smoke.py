"""The short version of `make bench` inside `make test`: every scenario runs for a second
against a real hub and produces figures. It checks that the benchmark works, not how fast the
hub is (speed is for `make bench`, never for a timed test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.thinghub_only

ROOT = Path(__file__).resolve().parents[2]


def test_every_scenario_runs_against_thinghub(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "bench", "--quick", "--broker", "thinghub", "--no-ceiling",
            "--connections", "300", "--json", str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    summary = {row["scenario"]: row for row in report["summary"]}
    # The five MQTT scenarios and the HTTP APIs at least (other scenarios may join them).
    mqtt = {"fan-in", "fan-out", "qos1", "topics1000", "idle10k"}
    http = {"aws-publish", "aliyun-pub", "aliyun-batchpub"}
    assert mqtt | http <= set(summary), set(summary)
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
    assert "| fan-in" in proc.stdout and "thinghub" in proc.stdout
    assert "| aliyun-pub" in proc.stdout and "Do-nothing" in proc.stdout


def test_the_backlog_benchmark_runs(tmp_path: Path) -> None:
    """`make bench-backlog` at a fiftieth of its size: the queue comes back whole and in
    order after a SIGKILL (the benchmark checks both), and the figures are there."""
    out = tmp_path / "backlog.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.backlog", "--messages", "20000", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["drained"] == 2000 and figures["drain_s"] > 0
    assert figures["restart_s"] > 0 and figures["rss_after_restart_mb"] > 0
    assert "restart after SIGKILL" in proc.stdout
