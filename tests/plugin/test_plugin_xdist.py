"""With pytest-xdist (``-n 2``) each worker has hubs of its own, on ports of their own, and
the run leaves nothing behind."""

from __future__ import annotations

import pytest
from pluginrun import REPORTING_CONFTEST, assert_nothing_left, read_reports

pytest_plugins = ["pytester"]

# Enough tests that both workers get some; each publishes through its hub to a device.
MANY = """
import pytest

@pytest.mark.parametrize("n", range(8))
def test_publish_reaches_a_device(n, iot_device, aws_iot_data):
    device = iot_device()
    device.subscribe(device.topic("get"))
    aws_iot_data.publish(topic=device.topic("get"), qos=1, payload=str(n).encode())
    assert device.expect(device.topic("get")).payload == str(n).encode()
"""


@pytest.mark.parametrize("scope", ["session", "function"])
def test_each_worker_has_its_own_hubs(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, scope: str
) -> None:
    pytester.makeconftest(REPORTING_CONFTEST)
    monkeypatch.setenv("HUB_REPORT", str(pytester.path / "hubs.jsonl"))
    pytester.makepyfile(test_many=MANY)
    result = pytester.runpytest_subprocess("-n", "2", f"--thinghub-scope={scope}")
    result.assert_outcomes(passed=8)
    reports = read_reports(pytester.path / "hubs.jsonl")
    workers = {r["worker"] for r in reports}
    assert workers == {"gw0", "gw1"}
    # A hub (by worker and data directory) always has the same ports, its own.
    hubs = {(r["worker"], r["hub"]): tuple(r["ports"]) for r in reports}
    assert all(len(set(hub_ports)) == len(hub_ports) for hub_ports in hubs.values()), hubs
    if scope == "session":
        # Both workers' hubs run side by side for the whole run: no port is shared. (Hubs of
        # one test each run one after another, and a port one freed may be the next's.)
        ports = [port for hub_ports in hubs.values() for port in hub_ports]
        assert len(ports) == len(set(ports)), hubs
    expected_hubs = 2 if scope == "session" else 8
    assert len(hubs) == expected_hubs
    assert_nothing_left(reports)
