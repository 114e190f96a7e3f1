"""Medians, the markdown tables and the JSON document."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench import mtls_report, signin_report, targets
from bench.scenarios import SCENARIOS, RunResult

MEDIAN_FIELDS = (
    "rate",
    "p50_ms",
    "p99_ms",
    "peak_rss_kb",
    "kb_per_conn",
    "connections",
    "broker_cpu",
    "gen_cpu",
    "lost",
    "baseline_rate",
    "requests_rate",
)


@dataclass
class Summary:
    """Median of every metric over the successful runs of one (scenario, broker)."""

    scenario: str
    broker: str
    runs: int
    ok_runs: int
    available: bool
    error: str | None = None
    median: dict[str, float | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # The sign-in scenario: the median of each named figure, and every run's failures.
    figures: dict[str, float | None] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def _median(values: Sequence[float | int | None]) -> float | None:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return statistics.median(vals) if vals else None


def summarize(scenario: str, broker: str, runs: Sequence[RunResult]) -> Summary:
    ok = [r for r in runs if r.ok]
    s = Summary(
        scenario=scenario,
        broker=broker,
        runs=len(runs),
        ok_runs=len(ok),
        available=bool(ok),
        error=None if ok else next((r.error for r in runs if r.error), "no run"),
    )
    for name in MEDIAN_FIELDS:
        s.median[name] = _median([getattr(r, name) for r in ok])
    for name in dict.fromkeys(k for r in ok for k in r.figures):
        s.figures[name] = _median([r.figures.get(name) for r in ok])
    s.failures = list(dict.fromkeys(f for r in runs for f in r.failures))
    seen: set[str] = set()
    for r in runs:
        for w in r.warnings + ([r.error] if r.error and ok else []):
            if w not in seen:
                seen.add(w)
                s.warnings.append(w)
    return s


def paired_ratio(a: Sequence[RunResult], b: Sequence[RunResult]) -> float | None:
    """The median over rounds of ``a``'s rate / ``b``'s, for the rounds both measured."""
    # Rounds where one broker was not measured leave the other's list shorter.
    pairs = zip(a, b, strict=False)
    return _median([x.rate / y.rate for x, y in pairs if x.ok and y.ok and x.rate and y.rate])


# --------------------------------------------------------------------------- format


def _num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def _mb(kb: float | None) -> str:
    return "-" if kb is None else f"{kb / 1024:,.1f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}%"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], first_num: int = 2) -> list[str]:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    num_cols = set(range(first_num, len(header)))  # right-align the figures

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, c in enumerate(cells):
            out.append(c.rjust(widths[i]) if i in num_cols else c.ljust(widths[i]))
        return "| " + " | ".join(out) + " |"

    sep = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if i in num_cols else "-" * (w + 2) for i, w in enumerate(widths)
        )
        + "|"
    )
    return [line(header), sep, *(line(r) for r in rows)]


def results_table(summaries: Sequence[Summary]) -> list[str]:
    header = [
        "Scenario",
        "Broker",
        "Throughput",
        "p50 ms",
        "p99 ms",
        "Peak RSS MB",
        "KB/conn",
        "Broker CPU",
        "Gen CPU",
    ]
    rows = []
    for s in summaries:
        sc = SCENARIOS[s.scenario]
        if sc.http or sc.signin or sc.mtls:
            continue  # http_table, signin_table, the mtls section
        if not s.available:
            rows.append([s.scenario, s.broker, "not available", "-", "-", "-", "-", "-", "-"])
            continue
        m = s.median
        rows.append(
            [
                s.scenario,
                s.broker,
                f"{_num(m['rate'])} {sc.unit}",
                _num(m["p50_ms"], 2),
                _num(m["p99_ms"], 2),
                _mb(m["peak_rss_kb"]),
                _num(m["kb_per_conn"], 2),
                _pct(m["broker_cpu"]),
                _pct(m["gen_cpu"]),
            ]
        )
    return _table(header, rows)


def ratio_table(summaries: Sequence[Summary], a: str, b: str) -> list[str]:
    """a/b ratios per scenario (throughput: higher is better; the rest: lower)."""
    by = {(s.scenario, s.broker): s for s in summaries}
    header = ["Scenario", "Throughput", "p50", "p99", "Peak RSS", "KB/conn"]
    rows = []
    for name in SCENARIOS:
        sa, sb = by.get((name, a)), by.get((name, b))
        if sa is None or sb is None:
            continue
        if not (sa.available and sb.available):
            rows.append([name, "n/a", "-", "-", "-", "-"])
            continue
        rows.append(
            [
                name,
                _ratio(sa.median["rate"], sb.median["rate"]),
                _ratio(sa.median["p50_ms"], sb.median["p50_ms"]),
                _ratio(sa.median["p99_ms"], sb.median["p99_ms"]),
                _ratio(sa.median["peak_rss_kb"], sb.median["peak_rss_kb"]),
                _ratio(sa.median["kb_per_conn"], sb.median["kb_per_conn"]),
            ]
        )
    return _table(header, rows, first_num=1)


def http_table(summaries: Sequence[Summary]) -> list[str]:
    """The HTTP API scenarios beside the do-nothing endpoint of the same runs."""
    header = [
        "Scenario",
        "Throughput",
        "Requests/s",
        "Do-nothing req/s",
        "Ratio",
        "Receipt p50 ms",
        "Receipt p99 ms",
        "Hub CPU",
        "Gen CPU",
    ]
    rows = []
    for s in summaries:
        sc = SCENARIOS[s.scenario]
        if not sc.http:
            continue
        if not s.available:
            rows.append([s.scenario, f"failed: {s.error}", *["-"] * 7])
            continue
        m = s.median
        rows.append(
            [
                s.scenario,
                f"{_num(m['rate'])} {sc.unit}",
                _num(m["requests_rate"]),
                _num(m["baseline_rate"]),
                _ratio(m["requests_rate"], m["baseline_rate"]),
                _num(m["p50_ms"], 2),
                _num(m["p99_ms"], 2),
                _pct(m["broker_cpu"]),
                _pct(m["gen_cpu"]),
            ]
        )
    return _table(header, rows, first_num=1)


def ceiling_table(summaries: Sequence[Summary]) -> list[str]:
    header = ["Scenario", "Generator ceiling", "Gen CPU", "Null broker CPU"]
    rows = []
    for s in summaries:
        sc = SCENARIOS[s.scenario]
        if not s.available:
            rows.append([s.scenario, f"failed: {s.error}", "-", "-"])
            continue
        rows.append(
            [
                s.scenario,
                f"{_num(s.median['rate'])} {sc.unit}",
                _pct(s.median["gen_cpu"]),
                _pct(s.median["broker_cpu"]),
            ]
        )
    return _table(header, rows, first_num=1)


def render(
    machine: dict[str, str],
    versions: dict[str, str],
    settings: dict[str, Any],
    ceiling: Sequence[Summary],
    summaries: Sequence[Summary],
    brokers: Sequence[str],
) -> str:
    out: list[str] = ["## ThingHub benchmark", ""]
    out.append(
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory']} RAM, "
        f"{machine['kernel']}"
    )
    out.append(f"- Generator: {machine['python']}, {machine['event_loop']}, one process")
    out.append("- Brokers: " + ", ".join(f"{b} {v}" for b, v in versions.items()))
    out.append(
        f"- Method: {settings['seconds']:g} s measured after {settings['warmup']:g} s warm-up, "
        f"median of {settings['runs']} run(s), fresh broker per run; "
        f"{settings['pinning']}; 64-byte payloads, MQTT 3.1.1"
    )
    out.append("")
    if ceiling:
        out.append("### Generator ceiling (null broker: bench/nullbroker.py, same pinning, 1 run)")
        out.append("")
        out.extend(ceiling_table(ceiling))
        out.append("")
        out.append(
            "Gen CPU near 100% = this is what the generator can push and parse on one core; "
            "lower = the null broker was the limit and the ceiling is higher still."
        )
        out.append("")
    mqtt = [
        s
        for s in summaries
        if not (
            SCENARIOS[s.scenario].http or SCENARIOS[s.scenario].signin or SCENARIOS[s.scenario].mtls
        )
    ]
    mutual = [s for s in summaries if SCENARIOS[s.scenario].mtls]
    http = [s for s in summaries if SCENARIOS[s.scenario].http]
    signin = [s for s in summaries if SCENARIOS[s.scenario].signin]
    if mqtt or not (http or signin or mutual):
        out.append("### Results (medians)")
        out.append("")
        out.extend(results_table(mqtt))
        out.append("")
    if http:
        out.append("### HTTP APIs (ThingHub only, medians)")
        out.append("")
        out.extend(http_table(http))
        out.append("")
        out.append(
            "Requests/s over the hub's do-nothing endpoint (`GET /healthz`, same connections, "
            "same run) is the ratio. Receipt = request written -> MQTT PUBLISH read by the "
            "subscriber/device (BatchPub: by the last device of the list). QoS 0, 64-byte "
            "payloads, 8 keep-alive connections, requests signed before the run. The per-"
            "account rate limits are raised for these runs (THINGHUB_API_AWS_RATE_LIMITS="
            "Publish=1000000, THINGHUB_API_ALIYUN_RATE_LIMITS=Pub=1000000,BatchPub=1000000)."
        )
        out.append("")
    for s in signin:
        if not s.available:
            out += ["### Sign-in (ThingHub only)", "", f"FAILED: {s.error}", ""]
            continue
        out.append(
            f"### Sign-in: {s.figures.get('devices') or 0:,.0f} Alibaba devices signing in, "
            f"{s.figures.get('registered') or s.figures.get('devices') or 0:,.0f} registered "
            f"(ThingHub only, medians of {s.ok_runs} run(s))"
        )
        out.append("")
        out.extend(_table(signin_report.HEADER, signin_report.wave_rows(s)))
        out.append("")
        ceil = next((c for c in ceiling if c.scenario == s.scenario), None)
        out.extend(signin_report.notes(s, ceil))
        out.append("")
    for s in mutual:
        out.extend(mtls_report.section(s))
    target_rows = targets.targets_rows(summaries)
    if target_rows:
        out.append("### Targets")
        out.append("")
        header = ["Figure", "ThingHub", "Target", "Verdict", "mosquitto"]
        out.extend(_table(header, target_rows, first_num=1))
        out.append("")
        out.append(
            "Medians over the runs; a MISSED target is reported, not fatal (2 shared cores: "
            "noisy). FAILED (refused connects, wrong statuses) makes `python -m bench` exit 1."
        )
        out.append("")
    ratios = ratio_table(summaries, "thinghub", "mosquitto")
    if "thinghub" in brokers and "mosquitto" in brokers and len(ratios) > 2:
        out.append("### ThingHub / mosquitto")
        out.append("")
        out.extend(ratios)
        out.append("")
        out.append("Throughput: higher is better; latency and memory: lower is better.")
        out.append("")
    notes = []
    for s in [*ceiling, *summaries]:
        if not s.available:
            notes.append(f"- {s.broker} / {s.scenario}: not available ({s.error})")
        notes.extend(f"- {s.broker} / {s.scenario}: {w}" for w in s.warnings[:3])
    if notes:
        out.append("### Notes")
        out.append("")
        out.extend(dict.fromkeys(notes))  # de-duplicated, order kept
        out.append("")
    return "\n".join(out)


def to_json(
    machine: dict[str, str],
    versions: dict[str, str],
    settings: dict[str, Any],
    ceiling: Sequence[Summary],
    summaries: Sequence[Summary],
    runs: Sequence[RunResult],
) -> str:
    doc = {
        "machine": machine,
        "versions": versions,
        "settings": settings,
        "ceiling": [asdict(s) for s in ceiling],
        "summary": [asdict(s) for s in summaries],
        "runs": [r.to_json() for r in runs],
    }
    return json.dumps(doc, indent=2, default=str)
