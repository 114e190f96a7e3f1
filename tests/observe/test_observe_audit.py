"""The audit log and the JSON log format on a real ``thinghub serve`` (``log.format =
"json"``, ``log.audit_rate`` 5 lines a second, 10 at once): every line is one JSON object; an
API call and a refused sign-in each get a line with their fields; a client id cannot forge a
line; a flood of refused sign-ins is cut to the rate, every refusal is still counted, and the
lines dropped are summed up in "N audit lines suppressed" lines that account for all of them."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "security"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scenarios"))

import rawmqtt
from sechub import KEY_ID, SecHub, wait_for

pytestmark = pytest.mark.thinghub_only

RATE, BURST = 5, 10
FLOOD = 200
NOT_AUTHORIZED = 0x87


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecHub]:
    running = SecHub(
        tmp_path_factory.mktemp("audit"),
        log_format="json",
        log_audit_rate=RATE,
        log_audit_burst=BURST,
        # Refused sign-ins for the flood: anonymous clients are not let in.
        mqtt_allow_anonymous=False,
        mqtt_sys_interval=0,
    )
    yield running
    running.stop()


def records(hub: SecHub) -> list[dict[str, Any]]:
    """The hub's log lines (its banner, printed on stdout, is plain text)."""
    return [json.loads(line) for line in list(hub.output) if line.startswith("{")]


def audit(hub: SecHub, event: str) -> list[dict[str, Any]]:
    return [r for r in records(hub) if r["logger"] == "thinghub.audit" and r["event"] == event]


def test_log_lines_are_json_objects(hub: SecHub) -> None:
    hub.iot_data().publish(topic="obs/audit/json", qos=0, payload=b"hello")
    wait_for(lambda: audit(hub, "api_call"), what="the API call's audit line")
    lines = [line for line in hub.output if line.startswith("{")]
    assert lines
    for line in lines:
        body = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(body), body
        assert body["time"].endswith("Z")
    (call,) = audit(hub, "api_call")
    assert call["level"] == "INFO"
    assert (call["dialect"], call["action"], call["status"]) == ("aws", "Publish", 200)
    assert call["access_key_id"] == KEY_ID and call["account"]
    assert call["result"] == ""
    assert call["message"].startswith(f"api aws Publish key={KEY_ID} ")


def test_a_refused_sign_in_cannot_forge_a_line(hub: SecHub) -> None:
    evil = 'evil\n{"level": "INFO", "message": "forged"}'
    with hub.raw() as client:
        client.send(rawmqtt.connect(evil, 5, username="nobody"))
        assert client.expect(rawmqtt.CONNACK).reason == NOT_AUTHORIZED
    wait_for(lambda: audit(hub, "signin_refused"), what="the refused sign-in's audit line")
    (refused,) = audit(hub, "signin_refused")
    assert refused["client_id"] == 'evil\\n{"level": "INFO", "message": "forged"}'
    assert refused["username"] == "nobody"
    assert refused["reason_code"] == "not_authorized"
    assert refused["peer"].startswith("127.0.0.1:")
    assert not [r for r in records(hub) if r["message"] == "forged"]


def test_a_flood_of_refused_sign_ins_is_cut_to_the_rate(hub: SecHub) -> None:
    before = hub.scrape()
    logged_before = len(audit(hub, "signin_refused"))
    started = time.monotonic()
    for n in range(FLOOD):
        with hub.raw() as client:
            client.send(rawmqtt.connect(f"flood-{n}-{uuid.uuid4().hex[:4]}", 5))
            assert client.expect(rawmqtt.CONNACK).reason == NOT_AUTHORIZED
    elapsed = time.monotonic() - started
    # Every refusal is counted...
    after = hub.scrape()
    refused = after.total("thinghub_signins_total", result="refused") - before.total(
        "thinghub_signins_total", result="refused"
    )
    assert refused == FLOOD

    # ... the lines are cut to the burst and the rate, and the summaries account for the rest.
    def accounted() -> int:
        logged = len(audit(hub, "signin_refused")) - logged_before
        suppressed = sum(int(r["suppressed"]) for r in audit(hub, "audit_suppressed"))
        return logged + suppressed

    wait_for(lambda: accounted() == FLOOD, what="summaries of every suppressed line")
    logged = len(audit(hub, "signin_refused")) - logged_before
    assert logged <= BURST + RATE * (time.monotonic() - started) + 1, (logged, elapsed)
    assert logged < FLOOD / 2
    summaries = audit(hub, "audit_suppressed")
    assert summaries and all(s["level"] == "WARNING" for s in summaries)
    assert "audit lines suppressed" in summaries[0]["message"]
    final = hub.scrape()
    assert final.value("thinghub_audit_lines_suppressed_total") == FLOOD - logged
    assert final.value("thinghub_log_records_dropped_total") == 0
    hub.assert_alive()
