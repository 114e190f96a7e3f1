"""Command line and orchestration: which broker, which scenario, how many runs."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bench import brokers, mtls, report, signin
from bench.brokers import BROKERS, Broker, BrokerUnavailable
from bench.mqttload import SetupError, run_idle, run_stream
from bench.scenarios import IDLE_CONNECTIONS, SCENARIOS, RunResult, Scenario

T = TypeVar("T")
MAX_SECONDS = 300.0  # clients use keep-alive 600 and never ping
HTTP_BASELINE_S = 5.0  # the do-nothing endpoint's share of an HTTP run


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """A fresh event loop per run (uvloop when available)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="MQTT broker benchmark: ThingHub vs mosquitto (127.0.0.1 only).",
    )
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up seconds (default: auto)")
    ap.add_argument("--runs", type=int, default=3, help="runs per scenario; the median is shown")
    ap.add_argument(
        "--scenario",
        nargs="+",
        action="extend",
        choices=list(SCENARIOS),
        help="scenarios to run (default: all)",
    )
    ap.add_argument(
        "--broker",
        nargs="+",
        action="extend",
        choices=list(BROKERS),
        help="brokers to test (default: thinghub mosquitto)",
    )
    ap.add_argument("--json", type=Path, help="also write the results as JSON to FILE")
    ap.add_argument(
        "--connections", type=int, default=IDLE_CONNECTIONS, help="idle10k connection count"
    )
    ap.add_argument(
        "--devices",
        type=int,
        help=f"signin: devices registered and signed in (default {signin.DEFAULT_DEVICES:,}; "
        f"{signin.QUICK_DEVICES:,} with --quick)",
    )
    ap.add_argument(
        "--window", type=int, default=signin.WINDOW, help="signin: connects in flight at once"
    )
    ap.add_argument(
        "--mtls-devices",
        type=int,
        help=f"mtls: devices with client certificates (default {mtls.DEFAULT_DEVICES:,}; "
        f"{mtls.QUICK_DEVICES:,} with --quick)",
    )
    ap.add_argument("--no-ceiling", action="store_true", help="skip the null-broker ceiling")
    ap.add_argument("--no-pin", action="store_true", help="do not pin broker/generator to CPUs")
    ap.add_argument("--quick", action="store_true", help="smoke test: --seconds 1 --runs 1")
    ap.add_argument("--thinghub", help="ThingHub executable (default: next to this python)")
    ap.add_argument("--mosquitto", help="mosquitto executable (default: from PATH)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.runs = 1.0, 1
    if not 0 < args.seconds <= MAX_SECONDS:
        ap.error(f"--seconds must be in (0, {MAX_SECONDS:g}]")
    if not 1 <= args.runs <= 100:
        ap.error("--runs must be in [1, 100]")
    if not 1 <= args.connections <= 1_000_000:
        ap.error("--connections must be in [1, 1000000]")
    if args.devices is None:
        args.devices = signin.QUICK_DEVICES if args.quick else signin.DEFAULT_DEVICES
    if not 1 <= args.devices <= 1_000_000:
        ap.error("--devices must be in [1, 1000000]")
    if args.mtls_devices is None:
        args.mtls_devices = mtls.QUICK_DEVICES if args.quick else mtls.DEFAULT_DEVICES
    if not 1 <= args.mtls_devices <= 1_000_000:
        ap.error("--mtls-devices must be in [1, 1000000]")
    if not 1 <= args.window <= 100_000:
        ap.error("--window must be in [1, 100000]")
    if args.warmup is None:
        args.warmup = min(2.0, max(0.5, args.seconds * 0.2))
    args.scenario = list(dict.fromkeys(args.scenario or SCENARIOS))
    args.broker = list(dict.fromkeys(args.broker or ["thinghub", "thinghub-traced", "mosquitto"]))
    return args


#: ThingHub with its delivery trace on: measured beside ``thinghub`` in the message streams
TRACED = brokers.TracedThingHub.name


def make_broker(name: str, cpu: int | None, args: argparse.Namespace) -> Broker:
    if name == "thinghub":
        return brokers.ThingHub(cpu, args.thinghub)
    if name == "thinghub-traced":
        return brokers.TracedThingHub(cpu, args.thinghub)
    if name == "mosquitto":
        return brokers.Mosquitto(cpu, args.mosquitto)
    return brokers.NullBroker(cpu)


def one_run(
    sc: Scenario,
    broker: Broker,
    seconds: float,
    warmup: float,
    connections: int,
) -> tuple[RunResult, bool]:
    """(result, broker_unavailable).  Always stops the broker."""
    try:
        broker.start()
    except BrokerUnavailable as e:
        return RunResult(sc.name, broker.name, ok=False, error=str(e)), True
    try:
        port, probe = broker.port, broker.probe
        if sc.spec is not None:
            r = run_loop(run_stream(sc.spec, brokers.HOST, port, seconds, warmup, probe))
            return RunResult.from_stream(sc.name, broker.name, r), False
        # Idle connections: generous deadline, scaled with the count.
        overflows0 = brokers.listen_overflows()
        ir = run_loop(
            run_idle(
                connections,
                brokers.HOST,
                port,
                probe,
                settle=min(1.0, max(0.3, seconds / 2)),
                deadline=30.0 + connections / 500,
            )
        )
        res = RunResult.from_idle(sc.name, broker.name, ir)
        overflows1 = brokers.listen_overflows()
        if overflows0 is not None and overflows1 is not None and overflows1 > overflows0:
            # Dropped SYNs are retried after 1 s: the connect rate is then understated.
            res.warnings.append(
                f"accept queue overflowed {overflows1 - overflows0} times (listen backlog "
                "too small for the connect burst)"
            )
        return res, False
    except (OSError, SetupError, TimeoutError) as e:
        tail = broker.log_tail()
        alive = broker.proc is not None and broker.proc.poll() is None
        why = (str(e) or f"{type(e).__name__} (timed out)") + (
            "" if alive else f" (broker died: {tail})"
        )
        return RunResult(sc.name, broker.name, ok=False, error=why), False
    finally:
        broker.stop()


def http_run(
    sc: Scenario,
    seconds: float,
    warmup: float,
    cpus: tuple[int | None, int | None],
    binary: str | None,
) -> RunResult:
    """One run of an HTTP API scenario (its own fresh hub, rate limits raised). ``cpus``:
    (hub, generator), as main() pinned them (this process may now see only its own CPU)."""
    from bench import aliyun_pub, http_publish

    baseline = min(seconds, HTTP_BASELINE_S)
    try:
        if sc.name == "aws-publish":
            doc = http_publish.run(
                seconds, warmup=warmup, binary=binary, baseline_seconds=baseline, cpus=cpus
            )
            phase = doc["publish"]
            rate = phase["rate"]
        else:
            action = "Pub" if sc.name == "aliyun-pub" else "BatchPub"
            doc = aliyun_pub.run(
                seconds,
                cpus=cpus,
                actions=(action,),
                warmup=warmup,
                binary=binary,
                baseline_seconds=baseline,
            )
            phase = doc[action]
            rate = phase["rate"] if action == "Pub" else phase["deliveries_rate"]
    except BrokerUnavailable as e:
        return RunResult(sc.name, "thinghub", ok=False, error=str(e))
    except (OSError, aliyun_pub.SetupError, asyncio.IncompleteReadError, TimeoutError) as e:
        return RunResult(sc.name, "thinghub", ok=False, error=str(e) or type(e).__name__)
    warnings = list(doc.get("notes", []))
    if phase["errors"]:
        warnings.append(f"{phase['errors']} failed requests, first: {phase.get('first_error')}")
    if phase.get("pool_exhausted"):
        warnings.append("the pool of pre-signed requests ran out before the time was up")
    return RunResult(
        sc.name,
        "thinghub",
        ok=phase["requests"] > 0,
        error=None if phase["requests"] else "no request completed",
        rate=rate,
        p50_ms=phase["receipt_p50_ms"],
        p99_ms=phase["receipt_p99_ms"],
        peak_rss_kb=doc.get("peak_rss_kb"),
        broker_cpu=phase["hub_cpu"],
        gen_cpu=phase["gen_cpu"],
        sent=phase["requests"],
        delivered=phase["delivered"],
        latency_samples=phase["probes"],
        baseline_rate=doc["healthz"]["rate"],
        requests_rate=phase["rate"],
        warnings=warnings,
    )


def signin_run(
    args: argparse.Namespace, cpus: tuple[int | None, int | None], ceiling: bool
) -> tuple[RunResult, RunResult | None]:
    """One run of the sign-in scenario (its own hubs); the generator ceiling with it when
    ``ceiling``: (result, ceiling result or None)."""
    try:
        doc = signin.run(
            args.devices,
            window=args.window,
            baseline_s=min(args.seconds, 5.0),
            cpus=cpus,
            binary=args.thinghub,
            ceiling=ceiling,
        )
    except BrokerUnavailable as e:
        return RunResult("signin", "thinghub", ok=False, error=str(e)), None
    except signin.setup_errors() as e:
        return RunResult("signin", "thinghub", ok=False, error=str(e) or type(e).__name__), None
    f = doc["figures"]
    result = RunResult(
        "signin",
        "thinghub",
        ok=True,
        rate=f["rate"],
        p99_ms=f["storm_p99_ms"],
        peak_rss_kb=f["peak_rss_kb"],
        connections=f["devices"],
        broker_cpu=f["hub_cpu"],
        gen_cpu=f["gen_cpu"],
        warnings=doc["notes"],
        figures=f,
        failures=doc["failures"],
    )
    c = doc["ceiling"]
    top = None
    if c is not None:
        top = RunResult(
            "signin",
            "null",
            ok=c["errors"] == 0,
            error=None if c["errors"] == 0 else f"{c['errors']} connects failed",
            rate=c["rate"],
            gen_cpu=c["gen_cpu"],
            broker_cpu=c["hub_cpu"],
            figures=c,
        )
    return result, top


def mtls_run(args: argparse.Namespace, cpus: tuple[int | None, int | None]) -> RunResult:
    """One run of the mutual-TLS sign-in scenario: ThingHub, and mosquitto beside it when it
    is one of the brokers asked for."""
    try:
        doc = mtls.run(
            args.mtls_devices,
            window=min(args.window, mtls.WINDOW),
            cpus=cpus,
            binary=args.thinghub,
            mosquitto=args.mosquitto if "mosquitto" in args.broker else None,
            with_mosquitto="mosquitto" in args.broker,
        )
    except BrokerUnavailable as e:
        return RunResult("mtls", "thinghub", ok=False, error=str(e))
    except mtls.setup_errors() as e:
        return RunResult("mtls", "thinghub", ok=False, error=str(e) or type(e).__name__)
    f = doc["figures"]
    return RunResult(
        "mtls",
        "thinghub",
        ok=f.get("rate") is not None,
        error=None if f.get("rate") is not None else "no wave measured",
        rate=f.get("rate"),
        connections=int(f["devices"] or 0),
        broker_cpu=f.get("thinghub.cold.hub_cpu"),
        gen_cpu=f.get("thinghub.cold.gen_cpu"),
        warnings=doc["notes"],
        figures=f,
        failures=doc["failures"],
    )


def describe(r: RunResult, unit: str) -> str:
    if not r.ok:
        return f"FAILED: {r.error}"
    parts = [f"{r.rate or 0:,.0f} {unit}"]
    if r.p50_ms is not None and r.p99_ms is not None:
        parts.append(f"p50 {r.p50_ms:.2f} ms p99 {r.p99_ms:.2f} ms")
    if r.kb_per_conn is not None:
        parts.append(f"{r.kb_per_conn:.2f} KB/conn ({r.connections} conns)")
    if r.peak_rss_kb is not None:
        parts.append(f"peak RSS {r.peak_rss_kb / 1024:.1f} MB")
    parts.append(f"broker CPU {r.broker_cpu or 0:.0f}% gen CPU {r.gen_cpu or 0:.0f}%")
    if r.baseline_rate is not None:
        parts.append(f"do-nothing endpoint {r.baseline_rate:,.0f} req/s")
    if r.lost:
        parts.append(f"lost {r.lost}")
    if r.failures:
        parts.append(f"FAILED: {'; '.join(r.failures[:3])}")
    return ", ".join(parts)


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    atexit.register(brokers.stop_all)
    signal.signal(signal.SIGTERM, _on_sigterm)

    nofile = brokers.raise_nofile()
    connections = args.connections
    notes: list[str] = []
    if connections > nofile - 200:
        connections = max(1, nofile - 200)
        notes.append(f"RLIMIT_NOFILE is {nofile}: idle scenario reduced to {connections} conns")
    broker_cpu, gen_cpu = brokers.cpu_plan(not args.no_pin)
    if gen_cpu is not None:
        os.sched_setaffinity(0, {gen_cpu})
        pinning = f"broker pinned to CPU {broker_cpu}, generator to CPU {gen_cpu}"
    else:
        pinning = "no CPU pinning"

    machine = brokers.machine_info()
    versions = {name: make_broker(name, None, args).version() for name in args.broker}
    settings: dict[str, Any] = {
        "seconds": args.seconds,
        "warmup": args.warmup,
        "runs": args.runs,
        "pinning": pinning,
        "idle_connections": connections,
        "signin_devices": args.devices,
        "signin_window": args.window,
        "mtls_devices": args.mtls_devices,
        "scenarios": args.scenario,
        "brokers": args.broker,
    }
    log(
        f"bench: {machine['cpu']} x{machine['cores']}, {machine['python']}, "
        f"{machine['event_loop']}; {pinning}"
    )
    log("bench: brokers " + ", ".join(f"{b} {v}" for b, v in versions.items()))

    all_runs: list[RunResult] = []
    ceiling: list[report.Summary] = []
    summaries: list[report.Summary] = []
    interrupted = False
    t_start = time.monotonic()
    try:
        if not args.no_ceiling:
            cs = min(args.seconds, 5.0)
            for name in args.scenario:
                sc = SCENARIOS[name]
                if sc.http or sc.signin or sc.mtls:
                    continue  # no null-broker equivalent; signin measures its own
                r, _ = one_run(
                    sc, make_broker("null", broker_cpu, args), cs, args.warmup, connections
                )
                log(f"  ceiling  {name:<11} {describe(r, sc.unit)}")
                ceiling.append(report.summarize(name, "null", [r]))

        unavailable: dict[str, str] = {}
        for name in args.scenario:
            sc = SCENARIOS[name]
            if sc.signin:
                if "thinghub" not in args.broker or "thinghub" in unavailable:
                    continue  # the Alibaba sign-in is ThingHub's
                signin_runs: list[RunResult] = []
                for i in range(args.runs):
                    want_ceiling = i == 0 and not args.no_ceiling
                    r, top = signin_run(args, (broker_cpu, gen_cpu), want_ceiling)
                    signin_runs.append(r)
                    all_runs.append(r)
                    log(f"  thinghub  {name:<11} run {i + 1}: {describe(r, sc.unit)}")
                    if top is not None:
                        log(f"  ceiling  {name:<11} {describe(top, sc.unit)}")
                        ceiling.append(report.summarize(name, "null", [top]))
                summaries.append(report.summarize(name, "thinghub", signin_runs))
                continue
            if sc.mtls:
                if "thinghub" not in args.broker or "thinghub" in unavailable:
                    continue  # ThingHub beside mosquitto, inside each run
                mtls_runs: list[RunResult] = []
                for i in range(args.runs):
                    r = mtls_run(args, (broker_cpu, gen_cpu))
                    mtls_runs.append(r)
                    all_runs.append(r)
                    log(f"  thinghub  {name:<11} run {i + 1}: {describe(r, sc.unit)}")
                summaries.append(report.summarize(name, "thinghub", mtls_runs))
                continue
            if sc.http:
                if "thinghub" not in args.broker or "thinghub" in unavailable:
                    continue  # ThingHub's own APIs: nothing to compare with
                http_runs: list[RunResult] = []
                for i in range(args.runs):
                    r = http_run(
                        sc, args.seconds, args.warmup, (broker_cpu, gen_cpu), args.thinghub
                    )
                    http_runs.append(r)
                    all_runs.append(r)
                    log(f"  thinghub  {name:<11} run {i + 1}: {describe(r, sc.unit)}")
                summaries.append(report.summarize(name, "thinghub", http_runs))
                continue
            runs: dict[str, list[RunResult]] = {b: [] for b in args.broker}
            # Brokers alternate within each run so slow drift hits both alike.
            for i in range(args.runs):
                for bname in args.broker:
                    if bname in unavailable or (bname == TRACED and not sc.traced):
                        continue
                    broker = make_broker(bname, broker_cpu, args)
                    r, gone = one_run(sc, broker, args.seconds, args.warmup, connections)
                    if gone:
                        unavailable[bname] = r.error or "not available"
                        log(f"  {bname}: not available ({r.error}); skipping it")
                        continue
                    runs[bname].append(r)
                    all_runs.append(r)
                    log(f"  {bname:<15} {name:<11} run {i + 1}: {describe(r, sc.unit)}")
            for bname in args.broker:
                if bname == TRACED and not sc.traced:
                    continue
                if bname in unavailable and not runs[bname]:
                    summaries.append(report.Summary(name, bname, 0, 0, False, unavailable[bname]))
                else:
                    summaries.append(report.summarize(name, bname, runs[bname]))
                    if bname == TRACED and "thinghub" in runs:
                        # Each traced run beside the plain run of the same round: the median
                        # of those ratios, which slow drift of the machine does not move.
                        summaries[-1].figures["paired_ratio"] = report.paired_ratio(
                            runs[TRACED], runs["thinghub"]
                        )
    except (KeyboardInterrupt, SystemExit):
        interrupted = True
        log("bench: interrupted; stopping brokers and printing what was measured")
    finally:
        brokers.stop_all()

    settings["elapsed_s"] = round(time.monotonic() - t_start, 1)
    text = report.render(machine, versions, settings, ceiling, summaries, args.broker)
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    print(text)
    if args.json:
        args.json.write_text(
            report.to_json(machine, versions, settings, ceiling, summaries, all_runs)
        )
        log(f"bench: JSON written to {args.json}")
    if interrupted:
        return 130
    # Wrong, not slow: refused sign-ins or wrong device statuses (bench/signin.py).
    failed = [
        s
        for s in summaries
        if s.failures
        or ((SCENARIOS[s.scenario].signin or SCENARIOS[s.scenario].mtls) and not s.available)
    ]
    for s in failed:
        log(f"bench: {s.scenario} FAILED: {'; '.join(s.failures) or s.error}")
    return 1 if failed else 0
