"""The sign-in scenario's section of the report (the figures are bench/signin.py's)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench import targets

if TYPE_CHECKING:
    from bench.report import Summary

VERSIONS = ((4, "3.1.1"), (5, "5.0"))
WAVES = ("cold", "storm")


def _n(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _mark(v: float | None, ok: bool) -> str:
    # A figure past its target keeps its value and says so.
    return "" if v is None or ok else " (missed)"


def wave_rows(s: Summary) -> list[list[str]]:
    f = s.figures
    rows = []
    for v, label in VERSIONS:
        for wave in WAVES:
            k, a = f"signed.v{v}.{wave}", f"anonymous.v{v}.{wave}"
            rate, ratio, p99 = f.get(f"{k}.rate"), f.get(f"ratio.v{v}.{wave}"), f.get(f"{k}.p99_ms")
            rows.append(
                [
                    wave,
                    label,
                    _n(rate) + _mark(rate, rate is not None and rate >= targets.SIGNIN_RATE),
                    _n(f.get(f"{a}.rate")),
                    _n(ratio, 2)
                    + _mark(ratio, ratio is not None and ratio >= targets.SIGNIN_RATIO),
                    "-" if f.get(f"{k}.hub_cpu") is None else f"{f[f'{k}.hub_cpu']:.0f}%",
                    _n(f.get(f"{k}.p50_ms"), 2),
                    _n(p99, 2)
                    + (
                        _mark(p99, p99 is not None and p99 <= targets.STORM_P99_MS)
                        if wave == "storm"
                        else ""
                    ),
                    _n(f.get(f"{k}.max_ms"), 2),
                    _n(f.get(f"{k}.lost")),
                ]
            )
    return rows


HEADER = [
    "Wave",
    "MQTT",
    f"Signed-in/s (>= {targets.SIGNIN_RATE:,.0f})",
    "Anonymous/s",
    f"Ratio (>= {targets.SIGNIN_RATIO})",
    "Hub CPU",
    "QoS 0 p50 ms",
    f"p99 ms (storm <= {targets.STORM_P99_MS:g})",
    "max ms",
    "lost",
]


def notes(s: Summary, ceiling: Summary | None) -> list[str]:
    f = s.figures
    out = []
    for v, label in VERSIONS:
        k = f"signed.v{v}.baseline"
        p50, p99, top = (f.get(f"{k}.{q}_ms") for q in ("p50", "p99", "max"))
        if p99 is not None:
            out.append(
                f"- QoS 0 stream with no storm (MQTT {label} round): p50 {_n(p50, 2)} ms, "
                f"p99 {_n(p99, 2)} ms, max {_n(top, 2)} ms"
            )
    kib = [f.get(f"signed.v{v}.kb_per_conn") for v, _ in VERSIONS]
    if any(k is not None for k in kib):
        out.append(
            "- Hub memory per signed-in connection (RSS growth over the cold wave): "
            + " / ".join(_n(k, 2) for k in kib)
            + " KiB (3.1.1 / 5.0)"
        )
    out.append(
        f"- Registration: {_n(f.get('registered') or f.get('devices'))} devices in "
        f"{_n(f.get('register_s'), 1)} s "
        f"({_n(f.get('register_calls'))} API calls: BatchRegisterDevice, QueryPageByApplyId)"
    )
    wrong_on = [f.get(f"signed.v{v}.wrong_online") for v, _ in VERSIONS]
    wrong_off = [f.get(f"signed.v{v}.wrong_offline") for v, _ in VERSIONS]
    after = [f.get(f"signed.v{v}.online_after_s") for v, _ in VERSIONS]
    out.append(
        "- Registry afterwards: devices not ONLINE with everybody connected (BatchGetDeviceState): "
        + " / ".join(_n(x) for x in wrong_on)
        + " (3.1.1 / 5.0; all ONLINE "
        + " / ".join(_n(x, 1) for x in after)
        + " s after the storm); not OFFLINE in registry.db after DISCONNECT and a graceful "
        "stop: " + " / ".join(_n(x) for x in wrong_off)
    )
    out.append(
        f"- Method: {_n(f.get('window'))} connects in flight from {_n(f.get('sources'))} "
        "loopback source addresses; CONNECTs pre-encoded (Alibaba HMAC-SHA1 sign-in, clean "
        "session, keep alive 1200 s; MQTT 5.0 with an empty property list); each round on a "
        "freshly started hub (same data); storm = every socket reset (no DISCONNECT), then "
        "all reconnect; QoS 0 stream of 2,000 msgs/s (64 B) timed per message in its own "
        "process; anonymous = the same count and window without credentials."
    )
    skipped = sum(
        f.get(f"{m}.v{v}.stream_skipped") or 0 for m in ("signed", "anonymous") for v, _ in VERSIONS
    )
    if skipped:
        out.append(
            f"- The QoS 0 stream skipped {skipped:,.0f} messages: its own process was not "
            "scheduled in time (the generator's lateness, not counted as latency)"
        )
    if ceiling is not None and ceiling.available:
        out.append(
            f"- Generator ceiling (the same waves against bench/nullbroker.py): "
            f"{_n(ceiling.median.get('rate'))} connects/s at "
            f"{_n(ceiling.median.get('gen_cpu'))}% of its core: hub figures near it are the "
            "generator's"
        )
    out.extend(f"- **FAILED**: {failure}" for failure in s.failures)
    return out
