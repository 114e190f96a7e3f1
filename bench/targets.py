"""The targets the report prints beside the figures, and the table that judges them.

A target missed is marked MISSED in the report and never fails the run: this machine has two
cores shared with other work, so a figure is a median of noisy runs. Only what is wrong rather
than slow fails (bench/signin.py: refused connects, wrong device statuses).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from bench.scenarios import SCENARIOS

if TYPE_CHECKING:
    from bench.report import Summary

SIGNIN_RATE = 10_000.0  # signed-in connects/s, the slowest wave
SIGNIN_RATIO = 0.6  # signed-in / anonymous connects/s, the lowest wave
STORM_P99_MS = 50.0  # QoS 0 latency p99 during a reconnect storm, the worst storm
IDLE_KIB_PER_CONN = 3.0  # idle10k: hub memory per idle connection (RSS is counted in KiB)
MTLS_RATIO = 0.5  # mutual-TLS sign-ins/s, ThingHub / mosquitto, the lowest wave
TRACE_RATIO = 0.95  # message rate with the delivery trace on / off, every message stream


def at_least(target: float) -> Callable[[float], bool]:
    return lambda v: v >= target


def at_most(target: float) -> Callable[[float], bool]:
    return lambda v: v <= target


def verdict(value: float | None, ok: Callable[[float], bool]) -> str:
    if value is None:
        return "not measured"
    return "met" if ok(value) else "MISSED"


def _zero(count: float | None) -> str:
    """Wrong, not slow: anything but 0 fails the scenario (bench/signin.py)."""
    if count is None:
        return "not measured"
    return "met" if count == 0 else "FAILED"


def _fmt(v: float | None, digits: int, unit: str = "") -> str:
    return "-" if v is None else f"{v:,.{digits}f}{unit}"


def targets_rows(summaries: Sequence[Summary]) -> list[list[str]]:
    """[figure, ThingHub, target, verdict, mosquitto] rows for what was measured."""
    by = {(s.scenario, s.broker): s for s in summaries if s.available}
    rows: list[list[str]] = []
    signin = by.get(("signin", "thinghub"))
    if signin is not None:
        f = signin.figures
        wrong = f.get("wrong_statuses")
        rows += [
            [
                "Signed-in connects/s (slowest wave)",
                _fmt(f.get("rate"), 0),
                f">= {SIGNIN_RATE:,.0f}",
                verdict(f.get("rate"), at_least(SIGNIN_RATE)),
                "-",
            ],
            [
                "Signed-in / anonymous (lowest wave)",
                _fmt(f.get("ratio"), 2),
                f">= {SIGNIN_RATIO}",
                verdict(f.get("ratio"), at_least(SIGNIN_RATIO)),
                "-",
            ],
            [
                "QoS 0 p99 during the storms (worst)",
                _fmt(f.get("storm_p99_ms"), 1, " ms"),
                f"<= {STORM_P99_MS:g} ms",
                verdict(f.get("storm_p99_ms"), at_most(STORM_P99_MS)),
                "-",
            ],
            [
                "QoS 0 p99 with no storm (baseline)",
                _fmt(f.get("baseline_p99_ms"), 1, " ms"),
                *("-", "-", "-"),
            ],
            [
                "Wrong device statuses",
                _fmt(wrong, 0),
                "0",
                _zero(wrong),
                "-",
            ],
            [
                "Failed connects (every wave)",
                _fmt(f.get("failed_connects"), 0),
                "0",
                _zero(f.get("failed_connects")),
                "-",
            ],
        ]
    mutual = by.get(("mtls", "thinghub"))
    if mutual is not None:
        f = mutual.figures
        ratio, other = f.get("ratio"), f.get("mosquitto.rate")
        rows += [
            [
                "mTLS sign-ins/s (slowest wave) / mosquitto's",
                _fmt(f.get("rate"), 0) + ("" if ratio is None else f" ({ratio:.2f}x)"),
                f">= {MTLS_RATIO}x",
                verdict(ratio, at_least(MTLS_RATIO)),
                _fmt(other, 0),
            ],
            [
                "Failed mTLS connects (every wave)",
                _fmt(f.get("failed_connects"), 0),
                "0",
                _zero(f.get("failed_connects")),
                "-",
            ],
        ]
    for name in (name for name, sc in SCENARIOS.items() if sc.traced):
        traced, plain = by.get((name, "thinghub-traced")), by.get((name, "thinghub"))
        if traced is None or plain is None:
            continue
        on, off = traced.median.get("rate"), plain.median.get("rate")
        # The median of the rounds' ratios (each traced run beside the plain one of its
        # round), else the ratio of the medians.
        ratio = traced.figures.get("paired_ratio")
        if ratio is None:
            ratio = on / off if on is not None and off else None
        rows.append(
            [
                f"{name} with the trace on / off",
                _fmt(on, 0) + ("" if ratio is None else f" ({ratio:.3f}x)"),
                f">= {TRACE_RATIO}x",
                verdict(ratio, at_least(TRACE_RATIO)),
                "-",
            ]
        )
    idle = by.get(("idle10k", "thinghub"))
    if idle is not None:
        kib = idle.median.get("kb_per_conn")
        mosq = by.get(("idle10k", "mosquitto"))
        other = mosq.median.get("kb_per_conn") if mosq is not None else None
        rows.append(
            [
                "Memory per idle connection (idle10k)",
                _fmt(kib, 2, " KiB"),
                f"<= {IDLE_KIB_PER_CONN:g} KiB",
                verdict(kib, at_most(IDLE_KIB_PER_CONN)),
                "-"
                if other is None
                else f"{other:,.2f} KiB"
                + (f" (ThingHub/mosquitto {kib / other:.2f})" if kib is not None and other else ""),
            ]
        )
    return rows
