"""The mutual-TLS sign-in scenario's section of the report (the figures are bench/mtls.py's)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench import targets

if TYPE_CHECKING:
    from bench.report import Summary

HEADER = ["Wave", "ThingHub connects/s", "mosquitto connects/s", "Ratio", "Hub CPU", "mosq CPU"]


def _n(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}%"


def rows(s: Summary) -> list[list[str]]:
    f = s.figures
    out = []
    for wave in ("cold", "storm"):
        ratio = f.get(f"ratio.{wave}")
        missed = ratio is not None and ratio < targets.MTLS_RATIO
        out.append(
            [
                wave,
                _n(f.get(f"thinghub.{wave}.rate")),
                _n(f.get(f"mosquitto.{wave}.rate")),
                _n(ratio, 2) + (" (missed)" if missed else ""),
                _pct(f.get(f"thinghub.{wave}.hub_cpu")),
                _pct(f.get(f"mosquitto.{wave}.hub_cpu")),
            ]
        )
    return out


def section(s: Summary) -> list[str]:
    from bench.report import _table

    if not s.available:
        return ["### Mutual-TLS sign-in", "", f"FAILED: {s.error}", ""]
    f = s.figures
    lines = [
        f"### Mutual-TLS sign-in: {f.get('devices') or 0:,.0f} AWS IoT devices with client "
        f"certificates (medians of {s.ok_runs} run(s))",
        "",
        *_table(HEADER, rows(s), first_num=1),
        "",
        "Each connect is a TCP connect, a TLS 1.3 handshake with the device's certificate "
        "(ECDSA P-256, signed by a CA registered through the AWS IoT API) and an MQTT 3.1.1 "
        "CONNECT; ThingHub also looks the certificate up and resolves its policy "
        "(iot:Connect on client/${iot:ClientId}). mosquitto: require_certificate true, the "
        "same CA. Cold: the first sign-in of every device; storm: all dropped (RST) and back "
        f"at once. Registration through the API: {_n(f.get('register_calls'))} calls in "
        f"{_n(f.get('register_s'), 1)} s (not judged).",
    ]
    if s.failures:
        lines += ["", f"**FAILED**: {'; '.join(s.failures)}"]
    return [*lines, ""]
