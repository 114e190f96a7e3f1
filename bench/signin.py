"""The sign-in scenario: a crowd of Alibaba devices signing in, cold and in a reconnect storm.

    .venv/bin/python -m bench --scenario signin [--devices 100000] [--window 512] [--quick]

ThingHub only (mosquitto has no Alibaba sign-in). One run:

1. **Registration.** A hub is started with a known root key and the registration calls'
   rate limits raised (bench/aliyun_devices.py); ``devices`` devices are registered through the
   Alibaba API (``BatchRegisterDevice`` + ``QueryPageByApplyId`` for the secrets). Its time is
   reported, not judged.
2. **Rounds.** For MQTT 3.1.1 and then 5.0, and for the signed-in devices and then as many
   anonymous clients: the hub is (re)started on the same data directory (a cold start: empty
   caches, every device OFFLINE), a paced QoS 0 stream starts through it
   (bench/latency_stream.py: ~2,000 messages/s, every message timed), and after a baseline:

   * **cold**: every client connects, ``window`` connects in flight (bench/connstorm.py), each
     CONNECT pre-encoded; the Alibaba ones carry the HMAC-SHA1 sign-in (reference
     ``alibaba-iot-api.md`` §3). The figure is CONNACK 0 per second.
   * **storm**: every connection is dropped at once without DISCONNECT (RST), and every client
     connects again at once, measured the same way.
   * signed-in rounds: with everybody connected, every device must read ONLINE through
     ``BatchGetDeviceState`` (polled until it does, up to ``STATUS_DEADLINE_S``); then every
     device sends DISCONNECT, the hub is stopped with SIGTERM and must exit by itself, and
     every device must be OFFLINE in ``registry.db`` (read-only, the hub stopped).

   The anonymous rounds give the ratio signed-in / anonymous on the same hub and data.
3. Wrong statuses and failed connects fail the scenario (non-zero exit, FAILED in the report);
   figures below their targets (bench/targets.py) do not: the report marks them MISSED.

Descriptors: every connection is a descriptor in the hub and one in the generator, so the
clients are capped at what RLIMIT_NOFILE allows both (raised to the hard limit; the hub keeps
``mqtt.reserved_file_descriptors`` free). All ``devices`` are registered whatever the cap (the
hub reads and caches a registry of that size); the first ones, as many as the cap allows,
connect; the report says when they were fewer.

Like the rest of the harness it never imports ThingHub: HTTP and MQTT to the hub, and a
read-only look at its registry file once it has stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import brokers
from bench.aliyun_devices import RATE_LIMITS, ApiPool, register_devices, states
from bench.aliyun_pub import SetupError, device_credentials
from bench.connstorm import Fleet, WaveResult, connect_packet, source_addresses
from bench.http_publish import KeyedThingHub, Target, run_loop
from bench.latency_stream import Latency, LatencyStream, Samples

DEFAULT_DEVICES = 100_000
QUICK_DEVICES = 2_000
WINDOW = 512
STREAM_RATE = 2_000.0
SETTLE_S = 1.0  # between the cold wave and the storm: the stream shows the hub at rest
STATUS_DEADLINE_S = 30.0
# Descriptors the generator and the hub keep beside the connections (stores, listeners, the
# stream, the API connections, the hub's reserved_file_descriptors of 256).
FD_MARGIN = 1_000
VERSIONS = (4, 5)
MODES = ("signed", "anonymous")


def wave_deadline(count: int) -> float:
    """Generous: a wave slower than 200 connects/s after a minute has failed anyway."""
    return 60.0 + count / 200


# --------------------------------------------------------------------------- the hub


class SignInHub(KeyedThingHub):
    """A ThingHub on a data directory that outlives it (restarts keep the registry), sized for
    ``devices`` connections from many loopback addresses, stopped gracefully."""

    def __init__(
        self,
        cpu: int | None,
        data_dir: Path,
        devices: int,
        key_id: str,
        secret: str,
        binary: str | None = None,
    ) -> None:
        room = str(devices + FD_MARGIN)
        env = {
            **RATE_LIMITS,
            "THINGHUB_MQTT_MAX_CONNECTIONS": room,
            "THINGHUB_MQTT_MAX_PENDING_CONNECTS": room,
            # Every client comes from 127.0.0.x: the per-address bound is for real networks.
            "THINGHUB_MQTT_MAX_CONNECTIONS_PER_ADDRESS": "0",
        }
        super().__init__(cpu, key_id, secret, env, binary)
        self.devices_dir = data_dir

    def data_dir(self, workdir: Path) -> Path:
        # Every round starts a hub on the same data: the devices registered once.
        return self.devices_dir

    def target(self) -> Target:
        return Target(brokers.HOST, self.http_port, self.port, self.key_id, self.secret)

    def stop_gracefully(self, timeout_s: float) -> str | None:
        """SIGTERM and wait; None if it exited 0 by itself, else what went wrong (it is then
        killed). A hub killed mid-shutdown would leave presence half written."""
        p = self.proc
        problem: str | None = "not running"
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                code = p.wait(timeout_s)
                problem = None if code == 0 else f"exited with code {code}: {self.log_tail()}"
            except subprocess.TimeoutExpired:
                problem = f"did not stop within {timeout_s:.0f} s of SIGTERM (killed)"
        elif p is not None:
            problem = f"had exited with code {p.returncode}: {self.log_tail()}"
        self.stop()
        return problem


def offline_check(data_dir: Path, product_key: str, connected: set[str]) -> tuple[int, int]:
    """(devices of the product, devices with a wrong status) in a stopped hub's registry.db.
    Those that connected must be OFFLINE: what QueryDeviceDetail reports for an enabled device
    that signed in before and is not connected (registry/_base.py ``_status``: not disabled,
    not online, activated); the others never signed in: UNACTIVE, not activated."""
    uri = (data_dir / "registry.db").resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        rows = conn.execute(
            "SELECT device_name, online != 0 OR disabled != 0, activated_at IS NOT NULL "
            "FROM devices WHERE product_key = ?",
            (product_key,),
        ).fetchall()
    finally:
        conn.close()
    wrong = sum(1 for name, up, activated in rows if up or bool(activated) != (name in connected))
    return len(rows), wrong


def device_cap(wanted: int) -> tuple[int, str | None]:
    """How many clients the descriptor limits allow (the hub is raised to the same hard
    limit as this process by bench/brokers.py), and a note when that is fewer."""
    nofile = brokers.raise_nofile()
    cap = nofile - FD_MARGIN
    if wanted <= cap:
        return wanted, None
    return max(1, cap), (
        f"{wanted:,} devices registered, the first {max(1, cap):,} connect: RLIMIT_NOFILE "
        f"(hard) is {nofile:,} here, and each connection takes a descriptor in the hub and "
        "one in the generator"
    )


# --------------------------------------------------------------------------- packets


def signed_packets(pk: str, devices: Sequence[tuple[str, str]], version: int) -> list[bytes]:
    """The devices' CONNECTs, HMAC computed now (before any clock starts)."""
    out = []
    for dn, secret in devices:
        client_id, username, password = device_credentials(pk, dn, secret)
        out.append(connect_packet(version, client_id, username, password))
    return out


def anonymous_packets(count: int, version: int) -> list[bytes]:
    token = secrets.token_hex(3)
    return [connect_packet(version, f"benchanon{token}{i}") for i in range(count)]


# --------------------------------------------------------------------------- one round


@dataclass
class Round:
    mode: str  # "signed" or "anonymous"
    version: int
    cold: WaveResult
    storm: WaveResult
    baseline: Latency
    during_cold: Latency
    during_storm: Latency
    stream_skipped: int = 0
    stream_errors: list[str] = field(default_factory=list)
    wrong_online: int | None = None
    online_after_s: float | None = None
    wrong_offline: int | None = None
    not_closed: int = 0
    kb_per_conn: float | None = None
    peak_rss_kb: int | None = None
    stop_problem: str | None = None


async def _wait_online(
    api: ApiPool, pk: str, names: Sequence[str], deadline_s: float
) -> tuple[int, float]:
    """Poll BatchGetDeviceState until every device reads ONLINE or the deadline passes;
    (devices still not ONLINE, seconds it took)."""
    started = time.monotonic()
    wrong = list(names)
    while True:
        got = await states(api, pk, wrong)
        wrong = [dn for dn in wrong if got.get(dn) != "ONLINE"]
        elapsed = time.monotonic() - started
        if not wrong or elapsed >= deadline_s:
            return len(wrong), elapsed
        await asyncio.sleep(0.2)


async def _round(
    hub: SignInHub,
    mode: str,
    version: int,
    packets: Sequence[bytes],
    pk: str,
    names: Sequence[str],
    window: int,
    baseline_s: float,
    workdir: Path,
) -> Round:
    probe = hub.probe
    stream = LatencyStream(hub.port, workdir, STREAM_RATE)
    await stream.start()
    fleet: Fleet | None = None
    try:
        baseline_from = time.perf_counter_ns()
        await asyncio.sleep(baseline_s)
        fleet = Fleet(brokers.HOST, hub.port, packets, window=window)
        deadline = wave_deadline(len(packets))
        rss0 = probe.rss_kb() if probe is not None else None
        cold = await fleet.connect_all("cold", deadline, probe)
        rss1 = probe.rss_kb() if probe is not None else None
        await asyncio.sleep(SETTLE_S)
        await fleet.drop_all()
        storm = await fleet.connect_all("storm", deadline, probe)
        wrong_online = online_s = None
        if mode == "signed":
            api = ApiPool(hub.target())
            try:
                wrong_online, online_s = await _wait_online(api, pk, names, STATUS_DEADLINE_S)
            finally:
                await api.close()
        peak = probe.peak_rss_kb() if probe is not None else None
        not_closed = await fleet.disconnect_all()
        fleet = None
        samples: Samples = await stream.stop()
    finally:
        if fleet is not None:
            await fleet.drop_all(5.0)
        await stream.kill()
    kb = (
        (rss1 - rss0) / cold.connected
        if rss0 is not None and rss1 is not None and cold.connected
        else None
    )
    return Round(
        mode=mode,
        version=version,
        cold=cold,
        storm=storm,
        baseline=samples.window(baseline_from, cold.started_ns),
        during_cold=samples.window(cold.started_ns, cold.ended_ns),
        during_storm=samples.window(storm.started_ns, storm.ended_ns),
        stream_skipped=samples.skipped,
        stream_errors=samples.errors,
        wrong_online=wrong_online,
        online_after_s=online_s,
        not_closed=not_closed,
        kb_per_conn=kb,
        peak_rss_kb=peak,
    )


async def _register(target: Target, count: int) -> tuple[str, list[tuple[str, str]], int]:
    api = ApiPool(target)
    try:
        pk, devices = await register_devices(api, count)
    finally:
        await api.close()
    return pk, devices, api.calls


async def _ceiling(
    port: int, packets: Sequence[bytes], window: int, probe: brokers.TreeProbe | None
) -> tuple[WaveResult, ...]:
    """The generator's own ceiling: the same waves against bench/nullbroker.py."""
    fleet = Fleet(brokers.HOST, port, packets, window=window)
    try:
        cold = await fleet.connect_all("cold", wave_deadline(len(packets)), probe)
        await fleet.drop_all()
        storm = await fleet.connect_all("storm", wave_deadline(len(packets)), probe)
    finally:
        await fleet.drop_all(5.0)
    return cold, storm


# --------------------------------------------------------------------------- the run


def _wave_figures(prefix: str, w: WaveResult) -> dict[str, float | None]:
    return {
        f"{prefix}.rate": round(w.rate, 1),
        f"{prefix}.elapsed_s": round(w.elapsed_s, 3),
        f"{prefix}.connected": w.connected,
        f"{prefix}.errors": w.errors,
        f"{prefix}.hub_cpu": None if w.hub_cpu is None else round(w.hub_cpu, 1),
        f"{prefix}.gen_cpu": round(w.gen_cpu, 1),
    }


def _latency_figures(prefix: str, lat: Latency) -> dict[str, float | None]:
    return {
        f"{prefix}.p50_ms": lat.p50_ms,
        f"{prefix}.p99_ms": lat.p99_ms,
        f"{prefix}.max_ms": lat.max_ms,
        f"{prefix}.sent": lat.sent,
        f"{prefix}.lost": lat.lost,
    }


def _figures(rounds: Sequence[Round]) -> dict[str, float | None]:
    """Flat figures (the report's medians are taken per name), and the headline ones."""
    f: dict[str, float | None] = {}
    for r in rounds:
        key = f"{r.mode}.v{r.version}"
        f.update(_wave_figures(f"{key}.cold", r.cold))
        f.update(_wave_figures(f"{key}.storm", r.storm))
        f.update(_latency_figures(f"{key}.baseline", r.baseline))
        f.update(_latency_figures(f"{key}.cold", r.during_cold))
        f.update(_latency_figures(f"{key}.storm", r.during_storm))
        f[f"{key}.kb_per_conn"] = None if r.kb_per_conn is None else round(r.kb_per_conn, 2)
        f[f"{key}.stream_skipped"] = r.stream_skipped
        if r.mode == "signed":
            f[f"{key}.wrong_online"] = r.wrong_online
            f[f"{key}.online_after_s"] = r.online_after_s
            f[f"{key}.wrong_offline"] = r.wrong_offline
    signed = [r for r in rounds if r.mode == "signed"]
    anon = {r.version: r for r in rounds if r.mode == "anonymous"}
    rates = [w.rate for r in signed for w in (r.cold, r.storm)]
    ratios = []
    for r in signed:
        a = anon.get(r.version)
        if a is None:
            continue
        for phase in ("cold", "storm"):
            f[f"ratio.v{r.version}.{phase}"] = ratio = _ratio(
                getattr(r, phase).rate, getattr(a, phase).rate
            )
            if ratio is not None:
                ratios.append(ratio)
    storm_p99 = [r.during_storm.p99_ms for r in signed if r.during_storm.p99_ms is not None]
    base_p99 = [r.baseline.p99_ms for r in signed if r.baseline.p99_ms is not None]
    f["rate"] = round(min(rates), 1) if rates else None
    f["ratio"] = round(min(ratios), 3) if ratios else None
    f["storm_p99_ms"] = max(storm_p99) if storm_p99 else None
    f["baseline_p99_ms"] = max(base_p99) if base_p99 else None
    f["wrong_statuses"] = float(sum((r.wrong_online or 0) + (r.wrong_offline or 0) for r in signed))
    f["failed_connects"] = float(sum(w.errors for r in rounds for w in (r.cold, r.storm)))
    return f


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b > 0 else None


def _failures(rounds: Sequence[Round]) -> list[str]:
    out: list[str] = []
    for r in rounds:
        what = f"{r.mode} MQTT {'5.0' if r.version == 5 else '3.1.1'}"
        out.extend(
            f"{what} {w.name}: {w.errors} of {w.attempted} connects failed "
            f"(first: {'; '.join(w.first_errors[:2])})"
            for w in (r.cold, r.storm)
            if w.errors
        )
        if r.wrong_online:
            out.append(f"{what}: {r.wrong_online} devices not ONLINE with everybody connected")
        if r.wrong_offline:
            out.append(f"{what}: {r.wrong_offline} devices not OFFLINE after a graceful stop")
        if r.stop_problem:
            out.append(f"{what}: the hub {r.stop_problem}")
        if r.not_closed:
            out.append(f"{what}: the hub left {r.not_closed} connections open after DISCONNECT")
        out.extend(f"{what}: QoS 0 stream: {e}" for e in r.stream_errors)
    return out


def run(
    devices: int = DEFAULT_DEVICES,
    *,
    window: int = WINDOW,
    baseline_s: float = 5.0,
    cpus: tuple[int | None, int | None] = (None, None),
    binary: str | None = None,
    ceiling: bool = False,
) -> dict[str, Any]:
    """One run (hub started and stopped here); the dict bench/runner.py turns into a
    RunResult: ``figures``, ``failures``, ``notes``, ``ceiling`` (or None)."""
    hub_cpu, gen_cpu = cpus
    if gen_cpu is not None:
        os.sched_setaffinity(0, {gen_cpu})
    count, note = device_cap(devices)
    notes = [note] if note else []
    failures: list[str] = []
    key_id = "LTAIBENCH" + secrets.token_hex(6).upper()
    secret = secrets.token_urlsafe(30)
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="bench-signin-") as tmp:
        workdir = Path(tmp)
        data_dir = workdir / "data"
        data_dir.mkdir()
        hub = SignInHub(hub_cpu, data_dir, count, key_id, secret, binary)
        stop_s = 60.0 + count / 500
        hub.start()
        try:
            t0 = time.perf_counter()
            pk, registered, calls = run_loop(_register(hub.target(), devices))
            register_s = time.perf_counter() - t0
        finally:
            problem = hub.stop_gracefully(stop_s)
        if problem:
            failures.append(f"after registration the hub {problem}")
        creds = registered[:count]
        names = [dn for dn, _ in creds]
        for version in VERSIONS:
            for mode in MODES:
                packets = (
                    signed_packets(pk, creds, version)
                    if mode == "signed"
                    else anonymous_packets(count, version)
                )
                hub.start()
                try:
                    r = run_loop(
                        _round(hub, mode, version, packets, pk, names, window, baseline_s, workdir)
                    )
                finally:
                    problem = hub.stop_gracefully(stop_s)
                r.stop_problem = problem
                if mode == "signed" and problem is None:
                    total, r.wrong_offline = offline_check(data_dir, pk, set(names))
                    if total != devices:
                        failures.append(f"registry.db holds {total} of the {devices} devices")
                rounds.append(r)
    figures = _figures(rounds)
    figures.update(
        devices=count,
        registered=devices,
        window=window,
        sources=len(source_addresses(count)),
        register_s=round(register_s, 2),
        register_calls=calls,
        peak_rss_kb=max((r.peak_rss_kb or 0 for r in rounds), default=None) or None,
        hub_cpu=_mean([w.hub_cpu for r in rounds if r.mode == "signed" for w in (r.cold, r.storm)]),
        gen_cpu=_mean([w.gen_cpu for r in rounds if r.mode == "signed" for w in (r.cold, r.storm)]),
    )
    ceiling_figures = None
    if ceiling:
        ceiling_figures = _measure_ceiling(hub_cpu, pk, creds, window)
    return {
        "figures": figures,
        "failures": failures + _failures(rounds),
        "notes": notes,
        "ceiling": ceiling_figures,
    }


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(sum(vals) / len(vals), 1) if vals else None


def _measure_ceiling(
    cpu: int | None, pk: str, creds: Sequence[tuple[str, str]], window: int
) -> dict[str, float | None]:
    null = brokers.NullBroker(cpu)
    null.start()
    try:
        packets = signed_packets(pk, creds, 4)
        cold, storm = run_loop(_ceiling(null.port, packets, window, null.probe))
    finally:
        null.stop()
    figures = {**_wave_figures("cold", cold), **_wave_figures("storm", storm)}
    figures["rate"] = round(min(cold.rate, storm.rate), 1)
    figures["gen_cpu"] = _mean([cold.gen_cpu, storm.gen_cpu])
    figures["hub_cpu"] = _mean([cold.hub_cpu, storm.hub_cpu])
    figures["errors"] = cold.errors + storm.errors
    return figures


def setup_errors() -> tuple[type[BaseException], ...]:
    """What a run may raise when the hub misbehaves (reported as a failed run)."""
    return (OSError, SetupError, ConnectionError, TimeoutError, sqlite3.Error, KeyError)
